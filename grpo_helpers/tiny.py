"""Build (offline, seeded, in seconds) a tiny Llama-architecture model with a Llama-3.1-style tokenizer."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from . import data, paths

# Llama 3.1's special tokens, in its order; the pad token is the one Unsloth uses for Llama 3.1.
BOS, EOS_TEXT, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
PAD = "<|finetune_right_pad_id|>"
SPECIAL_TOKENS = (BOS, EOS_TEXT, "<|start_header_id|>", "<|end_header_id|>", EOT, "<|eom_id|>",
                  "<|python_tag|>", PAD)
BUILD_MARKER = "grpo_tiny_build.json"


@dataclass(frozen=True)
class TinySpec:
    """Shape of the tiny model and its tokenizer (changing any field rebuilds the cache)."""

    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    rope_theta: float = 500000.0  # Llama 3's
    corpus_size: int = 3000
    seed: int = 0
    warm_start_steps: int = 0  # supervised steps on synthetic solutions (the tiny model's "instruct tuning")
    warm_start_batch_size: int = 16
    warm_start_learning_rate: float = 3e-3
    format_version: int = 1

    def fingerprint(self) -> str:
        """A short hash that names this exact build."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def llama31_chat_template() -> str:
    """The Llama-3.1-Instruct chat template (as shipped with meta-llama/Llama-3.1-8B-Instruct)."""
    return resources.files("grpo_helpers").joinpath("templates/llama31_chat_template.jinja").read_text()


def tokenizer_corpus(spec: TinySpec) -> list[str]:
    """Our own synthetic text the tokenizer is trained on: GSM8K-style problems in chat format."""
    texts = [data.SYSTEM_PROMPT]
    for row in data.synthetic_gsm8k(spec.corpus_size, seed=spec.seed):
        answer = data.extract_hash_answer(row["answer"]) or ""
        texts += [row["question"], data.format_completion(data.solution_reasoning(row["answer"]), answer)]
    texts += [" ".join(str(i) for i in range(1000)), "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024"]
    return texts


def build_tokenizer(spec: TinySpec = TinySpec()):
    """A byte-level BPE tokenizer trained on our synthetic corpus, with Llama 3.1's specials and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(tokenizer_corpus(spec), trainer)
    # Like Llama 3.1's tokenizer: plain `tokenizer(text)` prepends <|begin_of_text|>.
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, core.token_to_id(BOS))])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOT, pad_token=PAD,
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids: generate() rejects them
        model_max_length=spec.max_position_embeddings, padding_side="left",
    )
    tokenizer.chat_template = llama31_chat_template()
    return tokenizer


def build_model(tokenizer, spec: TinySpec = TinySpec()):
    """A randomly initialised (seeded) LlamaForCausalLM of the spec's shape."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, max_position_embeddings=spec.max_position_embeddings,
        rope_theta=spec.rope_theta, tie_word_embeddings=False,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS), eos_token_id=tokenizer.convert_tokens_to_ids(EOT),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in (EOT, EOS_TEXT, "<|eom_id|>")]
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=stop_ids,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=True,
                                               temperature=0.6, top_p=0.9)  # Llama 3.1's defaults
    return model


def warm_start_examples(n: int, seed: int) -> list[tuple[list[dict[str, str]], str]]:
    """(chat prompt, well-formed reply) pairs from synthetic problems the warm start learns from."""
    pairs = []
    for row in data.synthetic_gsm8k(n, seed=seed):
        reply = data.format_completion(data.solution_reasoning(row["answer"]), data.extract_hash_answer(row["answer"]) or "")
        pairs.append((data.format_prompt(row["question"]), reply))
    return pairs


def warm_start(model, tokenizer, spec: TinySpec) -> list[float]:
    """Supervised fine-tuning of the whole tiny model on synthetic solutions (loss on the reply only)."""
    import torch
    from tqdm.auto import tqdm

    if spec.warm_start_steps <= 0:
        return []
    pairs = warm_start_examples(spec.warm_start_steps * spec.warm_start_batch_size, seed=spec.seed + 1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.warm_start_learning_rate, weight_decay=0.0)
    model.train()
    losses = []
    for step in tqdm(range(spec.warm_start_steps), desc="Warm start (supervised, synthetic solutions)"):
        ids, labels = [], []
        for prompt, reply in pairs[step * spec.warm_start_batch_size:(step + 1) * spec.warm_start_batch_size]:
            prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True)
            reply_ids = tokenizer(reply + EOT, add_special_tokens=False)["input_ids"]
            ids.append(prompt_ids + reply_ids)
            labels.append([-100] * len(prompt_ids) + reply_ids)
        width = max(map(len, ids))
        # Right padding with no attention mask: causal attention never lets a real token see the
        # padding after it, and the unmasked path skips transformers' slow mask building on CPU.
        input_ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x in ids])
        label_ids = torch.tensor([y + [-100] * (width - len(y)) for y in labels])
        loss = model(input_ids=input_ids, labels=label_ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    model.eval()
    return losses


def ensure_tiny_model(directory: Path | None = None, spec: TinySpec = TinySpec(), rebuild: bool = False) -> Path:
    """The folder of the tiny model and tokenizer, built once and cached under the artifacts dir."""
    directory = Path(directory) if directory else paths.artifacts_dir() / "tiny-llama"
    marker = directory / BUILD_MARKER
    if not rebuild and marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == spec.fingerprint():
        return directory
    tokenizer = build_tokenizer(spec)
    model = build_model(tokenizer, spec)
    losses = warm_start(model, tokenizer, spec)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    marker.write_text(json.dumps({"fingerprint": spec.fingerprint(), "spec": asdict(spec),
                                  "warm_start_loss": {"first": losses[:1], "last": losses[-1:]}}, indent=2))
    warm = f", warm start loss {losses[0]:.2f} -> {losses[-1]:.2f}" if losses else ""
    print(f"Built the tiny Llama ({model.num_parameters():,} parameters, vocab {len(tokenizer)}{warm}) in {directory}")
    return directory


def ensure_llama8b_shaped(directory: Path | None = None, config_overrides: dict[str, object] | None = None, seed: int = 0,
                          max_shard_gb: float = 4.0, rebuild: bool = False) -> Path:
    """A Llama with Llama-3.1-8B's shape, seeded random fp16 weights and the tiny tokenizer, built once (16 GB!)."""
    import math
    import os
    import shutil

    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from .sizes import LLAMA_31_8B_CONFIG

    # Llama-3.1-8B's shape and RoPE; token ids and dtype come from the tokenizer and fp16 below. The weights
    # are random: for memory and time, not for answers.
    shape = {k: v for k, v in LLAMA_31_8B_CONFIG.items()
             if k not in ("_name_or_path", "model_type", "bos_token_id", "eos_token_id", "torch_dtype")}
    shape.update(config_overrides or {})
    directory = Path(directory) if directory else paths.artifacts_dir() / "llama31-8b-shaped"
    spec = TinySpec()  # the tokenizer only; its ids 0..1023 are a subset of the model's 128256 rows
    fingerprint = hashlib.sha256(json.dumps({"shape": shape, "seed": seed, "tokenizer": spec.fingerprint(),
                                             "format_version": 1}, sort_keys=True).encode()).hexdigest()[:12]
    marker = directory / BUILD_MARKER
    if not rebuild and marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
        return directory
    tokenizer = build_tokenizer(spec)
    if len(tokenizer) > shape["vocab_size"]:
        raise ValueError(f"vocab_size {shape['vocab_size']} is smaller than the tokenizer ({len(tokenizer)} tokens).")
    tokenizer.model_max_length = shape["max_position_embeddings"]
    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in (EOT, EOS_TEXT, "<|eom_id|>")]
    config = LlamaConfig(**shape, bos_token_id=tokenizer.convert_tokens_to_ids(BOS), eos_token_id=stop_ids[0],
                         pad_token_id=tokenizer.pad_token_id, dtype="float16")
    with torch.device("meta"):  # names and shapes only: no memory
        params = [(name, tuple(p.shape)) for name, p in LlamaForCausalLM(config).named_parameters()]
    n_params = sum(math.prod(size) for _, size in params)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    shard_bytes = 0
    for name, size in params:  # plan the shards first, so each is generated, written and freed in turn
        nbytes = 2 * math.prod(size)
        if shards[-1] and shard_bytes + nbytes > max_shard_gb * 1e9:  # decimal GB, as in sizes.py
            shards.append([])
            shard_bytes = 0
        shards[-1].append((name, size))
        shard_bytes += nbytes
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        generator = torch.Generator().manual_seed(seed)
        weight_map: dict[str, str] = {}
        for number, shard in enumerate(shards, 1):
            file_name = ("model.safetensors" if len(shards) == 1
                         else f"model-{number:05d}-of-{len(shards):05d}.safetensors")
            tensors = {name: torch.ones(size, dtype=torch.float16) if name.endswith("norm.weight") else
                       torch.randn(size, generator=generator).mul_(config.initializer_range).half()
                       for name, size in shard}  # HF's own init: N(0, 0.02) matrices, RMSNorm weights 1
            save_file(tensors, str(staging / file_name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, file_name))
            del tensors
        if len(shards) > 1:
            (staging / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": 2 * n_params}, "weight_map": weight_map}, indent=2))
        config.save_pretrained(staging)
        GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id,
                         do_sample=True, temperature=0.6, top_p=0.9).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / BUILD_MARKER).write_text(json.dumps({"fingerprint": fingerprint, "shape": shape, "seed": seed,
                                                        "parameters": n_params}, indent=2))
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"Built a Llama-3.1-8B-shaped model with random weights ({n_params:,} parameters, {len(shards)} "
          f"shard(s), tokenizer vocab {len(tokenizer)} of {config.vocab_size}) in {directory}")
    return directory

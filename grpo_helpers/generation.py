"""Batched generation: vLLM `fast_generate` (with a LoRA request) on the GPU path, HF `generate` otherwise.

Base and trained model are one model: on the HF path a PeftModel whose adapter is switched off
for "base" (`use_adapter=False` runs inside `model.disable_adapter()`); on the vLLM path the
engine holds the base weights and the LoRA applies only to requests that carry the
`lora_request` (`model.load_lora(adapter_dir)`), so "base" simply sends none. Same prompts, same
settings, same seeds: the adapter is the only difference.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from .chat_tokens import safe_pad_token, stop_token_ids

Messages = Sequence[dict[str, str]]


@dataclass(frozen=True)
class SamplingSettings:
    """The sampling knobs, identical for the base and the trained model in every comparison."""

    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    num_samples: int = 1
    seed: int = 3407


@dataclass(frozen=True)
class Completion:
    """One generated reply with its length in tokens and whether it hit max_new_tokens."""

    text: str
    num_tokens: int
    truncated: bool
    stop_token: str | None = None  # the end-of-turn/eos token the reply ended on (None: cut off or unknown)
    token_ids: tuple[int, ...] = ()  # the reply's tokens, up to and without the stop token


def chat_texts(tokenizer: Any, prompts: Sequence[Messages]) -> list[str]:
    """Each chat prompt rendered with the model's chat template, ending in the assistant header."""
    return [tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in prompts]


def uses_vllm(model: Any) -> bool:
    """True when Unsloth loaded this model with fast_inference (a vLLM engine is attached)."""
    return getattr(model, "vllm_engine", None) is not None  # PEFT forwards the lookup to the base


@contextlib.contextmanager
def adapter_disabled(model: Any) -> Iterator[Any]:
    """Inside the block a PeftModel runs as its base model (LoRA off); other models are unchanged."""
    disable = getattr(type(model), "disable_adapter", None)  # PeftModel's context manager
    if disable is None:
        yield model
        return
    with model.disable_adapter():
        yield model


def _vllm_completion(c: Any, tokenizer: Any, stop_ids: list[int]) -> Completion:
    ids = list(c.token_ids)
    stop = ids[-1] if c.finish_reason == "stop" and ids and ids[-1] in stop_ids else None
    kept = ids[:-1] if stop is not None else ids
    return Completion(c.text, len(ids), c.finish_reason == "length",
                      tokenizer.convert_ids_to_tokens(stop) if stop is not None else None, tuple(kept))


def _generate_vllm(model: Any, tokenizer: Any, texts: list[str], settings: SamplingSettings,
                   lora_request: Any) -> list[list[Completion]]:
    from vllm import SamplingParams

    stop_ids = stop_token_ids(tokenizer, model)  # the template's end of turn, whatever vLLM takes for eos
    params = SamplingParams(temperature=settings.temperature, top_p=settings.top_p, n=settings.num_samples,
                            max_tokens=settings.max_new_tokens, seed=settings.seed, stop_token_ids=stop_ids)
    outputs = model.fast_generate(texts, sampling_params=params, lora_request=lora_request, use_tqdm=True)
    return [[_vllm_completion(c, tokenizer, stop_ids) for c in out.outputs] for out in outputs]


@contextlib.contextmanager
def _left_padding(tokenizer: Any, stop_ids: list[int]) -> Iterator[int]:
    """Left padding with a real pad token for the block (a stop token when the tokenizer has none); yields its id."""
    padding_side, pad_token = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"  # decoder-only: pad on the left
    if tokenizer.pad_token_id is None:  # padded positions are masked out, so any real token will do
        fallback = tokenizer.convert_ids_to_tokens(stop_ids[0]) if stop_ids else None
        tokenizer.pad_token = safe_pad_token(tokenizer, stop_ids) or fallback
    try:
        yield tokenizer.pad_token_id
    finally:
        tokenizer.padding_side = padding_side
        if pad_token is None:
            tokenizer.pad_token = None


def _generate_hf(model: Any, tokenizer: Any, texts: list[str], settings: SamplingSettings,
                 batch_size: int) -> list[list[Completion]]:
    import torch
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    # Stop where the chat template ends a turn, not only at the model's eos: a converted checkpoint's
    # generation_config may name another token, and the reply would run on into a made-up next turn.
    stop_ids = stop_token_ids(tokenizer, model)
    replies: list[list[Completion]] = []
    try:
        with _left_padding(tokenizer, stop_ids) as pad_token_id:
            for start in tqdm(range(0, len(texts), batch_size), desc="Generating", unit="batch"):
                batch = texts[start:start + batch_size]
                encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False,
                                    return_token_type_ids=False).to(model.device)  # generate() rejects them
                torch.manual_seed(settings.seed + start)
                sample = settings.temperature > 0
                with torch.inference_mode():
                    out = model.generate(
                        **encoded, max_new_tokens=settings.max_new_tokens, do_sample=sample,
                        temperature=settings.temperature if sample else None, top_p=settings.top_p if sample else None,
                        num_return_sequences=settings.num_samples, pad_token_id=pad_token_id,
                        eos_token_id=stop_ids or None,
                    )
                new_tokens = out[:, encoded["input_ids"].shape[1]:].tolist()
                completions = []
                for ids in new_tokens:
                    end = next((i for i, t in enumerate(ids) if t in stop_ids), None)
                    kept = ids if end is None else ids[:end]
                    completions.append(Completion(
                        tokenizer.decode(kept, skip_special_tokens=True), len(kept),
                        end is None and len(ids) >= settings.max_new_tokens,
                        tokenizer.convert_ids_to_tokens(ids[end]) if end is not None else None, tuple(kept)))
                k = settings.num_samples
                replies += [completions[i * k:(i + 1) * k] for i in range(len(batch))]
    finally:
        model.train(was_training)
    return replies


def generate_completions(model: Any, tokenizer: Any, prompts: Sequence[Messages], settings: SamplingSettings,
                         batch_size: int = 16, lora_request: Any = None,
                         use_adapter: bool = True) -> list[list[Completion]]:
    """`settings.num_samples` Completions per chat prompt; `use_adapter=False` generates with the base model."""
    texts = chat_texts(tokenizer, prompts)
    if uses_vllm(model):
        return _generate_vllm(model, tokenizer, texts, settings, lora_request if use_adapter else None)
    with contextlib.nullcontext() if use_adapter else adapter_disabled(model):
        return _generate_hf(model, tokenizer, texts, settings, batch_size)


def generate_samples(model: Any, tokenizer: Any, prompts: Sequence[Messages], settings: SamplingSettings,
                     batch_size: int = 16, lora_request: Any = None, use_adapter: bool = True) -> list[list[str]]:
    """`settings.num_samples` replies per chat prompt, batched (vLLM when loaded with it, else HF)."""
    return [[c.text for c in group] for group in
            generate_completions(model, tokenizer, prompts, settings, batch_size, lora_request, use_adapter)]


def generate_replies(model: Any, tokenizer: Any, prompts: Sequence[Messages], settings: SamplingSettings,
                     batch_size: int = 16, lora_request: Any = None, use_adapter: bool = True) -> list[str]:
    """One reply per chat prompt (the first sample of each)."""
    return [s[0] for s in generate_samples(model, tokenizer, prompts, settings, batch_size, lora_request, use_adapter)]

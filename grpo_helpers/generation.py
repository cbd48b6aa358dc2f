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


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _generate_vllm(model: Any, texts: list[str], settings: SamplingSettings, lora_request: Any) -> list[list[Completion]]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=settings.temperature, top_p=settings.top_p, n=settings.num_samples,
                            max_tokens=settings.max_new_tokens, seed=settings.seed)
    outputs = model.fast_generate(texts, sampling_params=params, lora_request=lora_request, use_tqdm=True)
    return [[Completion(c.text, len(c.token_ids), c.finish_reason == "length") for c in out.outputs]
            for out in outputs]


def _generate_hf(model: Any, tokenizer: Any, texts: list[str], settings: SamplingSettings,
                 batch_size: int) -> list[list[Completion]]:
    import torch
    from tqdm.auto import tqdm

    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"  # decoder-only: pad on the left
    was_training = model.training
    model.eval()
    stop_ids = _stop_ids(model, tokenizer)
    replies: list[list[Completion]] = []
    try:
        for start in tqdm(range(0, len(texts), batch_size), desc="Generating", unit="batch"):
            batch = texts[start:start + batch_size]
            encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            torch.manual_seed(settings.seed + start)
            sample = settings.temperature > 0
            with torch.inference_mode():
                out = model.generate(
                    **encoded, max_new_tokens=settings.max_new_tokens, do_sample=sample,
                    temperature=settings.temperature if sample else None, top_p=settings.top_p if sample else None,
                    num_return_sequences=settings.num_samples, pad_token_id=tokenizer.pad_token_id,
                )
            new_tokens = out[:, encoded["input_ids"].shape[1]:].tolist()
            completions = []
            for ids in new_tokens:
                end = next((i for i, t in enumerate(ids) if t in stop_ids), None)
                kept = ids if end is None else ids[:end]
                completions.append(Completion(tokenizer.decode(kept, skip_special_tokens=True), len(kept),
                                              end is None and len(ids) >= settings.max_new_tokens))
            k = settings.num_samples
            replies += [completions[i * k:(i + 1) * k] for i in range(len(batch))]
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return replies


def generate_completions(model: Any, tokenizer: Any, prompts: Sequence[Messages], settings: SamplingSettings,
                         batch_size: int = 16, lora_request: Any = None,
                         use_adapter: bool = True) -> list[list[Completion]]:
    """`settings.num_samples` Completions per chat prompt; `use_adapter=False` generates with the base model."""
    texts = chat_texts(tokenizer, prompts)
    if uses_vllm(model):
        return _generate_vllm(model, texts, settings, lora_request if use_adapter else None)
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

"""Batched generation: vLLM `fast_generate` (with a LoRA request) on the GPU path, HF `generate` otherwise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

Messages = Sequence[dict[str, str]]


@dataclass(frozen=True)
class SamplingSettings:
    """The sampling knobs, identical for the base and the trained model in every comparison."""

    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    num_samples: int = 1
    seed: int = 3407


def chat_texts(tokenizer: Any, prompts: Sequence[Messages]) -> list[str]:
    """Each chat prompt rendered with the model's chat template, ending in the assistant header."""
    return [tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in prompts]


def uses_vllm(model: Any) -> bool:
    """True when Unsloth loaded this model with fast_inference (a vLLM engine is attached)."""
    return getattr(model, "vllm_engine", None) is not None  # PEFT forwards the lookup to the base


def _generate_vllm(model: Any, texts: list[str], settings: SamplingSettings, lora_request: Any) -> list[list[str]]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=settings.temperature, top_p=settings.top_p, n=settings.num_samples,
                            max_tokens=settings.max_new_tokens, seed=settings.seed)
    outputs = model.fast_generate(texts, sampling_params=params, lora_request=lora_request, use_tqdm=True)
    return [[choice.text for choice in out.outputs] for out in outputs]


def _generate_hf(model: Any, tokenizer: Any, texts: list[str], settings: SamplingSettings,
                 batch_size: int) -> list[list[str]]:
    import torch
    from tqdm.auto import tqdm

    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"  # decoder-only: pad on the left
    was_training = model.training
    model.eval()
    replies: list[list[str]] = []
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
            new_tokens = out[:, encoded["input_ids"].shape[1]:]
            decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            k = settings.num_samples
            replies += [decoded[i * k:(i + 1) * k] for i in range(len(batch))]
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return replies


def generate_samples(model: Any, tokenizer: Any, prompts: Sequence[Messages], settings: SamplingSettings,
                     batch_size: int = 16, lora_request: Any = None) -> list[list[str]]:
    """`settings.num_samples` replies per chat prompt, batched (vLLM when loaded with it, else HF)."""
    texts = chat_texts(tokenizer, prompts)
    if uses_vllm(model):
        return _generate_vllm(model, texts, settings, lora_request)
    return _generate_hf(model, tokenizer, texts, settings, batch_size)


def generate_replies(model: Any, tokenizer: Any, prompts: Sequence[Messages], settings: SamplingSettings,
                     batch_size: int = 16, lora_request: Any = None) -> list[str]:
    """One reply per chat prompt (the first sample of each)."""
    return [s[0] for s in generate_samples(model, tokenizer, prompts, settings, batch_size, lora_request)]

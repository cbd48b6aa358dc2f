"""Load the model through Unsloth's FastLanguageModel (4-bit, LoRA) and report its size and memory."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from . import runtime, tiny
from .profiles import TINY_MODEL_NAME, Profile

if TYPE_CHECKING:
    from pathlib import Path


def import_unsloth() -> Any:
    """Import Unsloth before transformers/TRL touch the model (it patches them), and return it."""
    import unsloth  # noqa: F401  (the import itself applies Unsloth's patches)

    return unsloth


def model_path(profile: Profile) -> str:
    """The Hub id to download, or the local folder of the tiny model (built on first use)."""
    if profile.model_name == TINY_MODEL_NAME:
        return str(tiny.ensure_tiny_model(spec=tiny.TinySpec(warm_start_steps=profile.warm_start_steps)))
    return profile.model_name


def load_base_model(profile: Profile) -> tuple[Any, Any]:
    """(model, tokenizer) for the profile, without LoRA: 4-bit and vLLM as the profile says."""
    if profile.requires_gpu:
        runtime.require_cuda(f"Loading {profile.model_name}")
    import_unsloth()
    import torch
    from unsloth import FastLanguageModel

    kwargs: dict[str, Any] = {}
    if profile.fast_inference:  # vLLM's own knobs; the CPU backend has no vLLM
        kwargs = {"max_lora_rank": profile.lora_rank, "gpu_memory_utilization": profile.gpu_memory_utilization}
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_path(profile),
        max_seq_length=profile.max_seq_length,
        load_in_4bit=profile.load_in_4bit,
        fast_inference=profile.fast_inference,
        dtype=getattr(torch, profile.dtype),
        **kwargs,
    )
    return model, tokenizer


def add_lora(model: Any, profile: Profile) -> Any:
    """Attach fresh LoRA adapters as the profile says (rank, alpha, target projections)."""
    from unsloth import FastLanguageModel

    return FastLanguageModel.get_peft_model(
        model,
        r=profile.lora_rank,
        lora_alpha=profile.lora_alpha,
        target_modules=list(profile.lora_target_modules),
        use_gradient_checkpointing=profile.use_gradient_checkpointing,
        random_state=profile.seed,
    )


def load_model(profile: Profile) -> tuple[Any, Any]:
    """(model with fresh LoRA adapters, tokenizer): what notebook 01 shows and notebook 03 trains."""
    model, tokenizer = load_base_model(profile)
    return add_lora(model, profile), tokenizer


def parameter_counts(model: Any) -> dict[str, float]:
    """Trainable and total parameters (4-bit weights counted as the numbers they store)."""
    trainable = total = 0
    for param in model.parameters():
        count = param.numel()
        if param.__class__.__name__ == "Params4bit":  # packed two 4-bit numbers per byte
            count *= 2
        total += count
        trainable += count if param.requires_grad else 0
    return {"trainable": trainable, "total": total, "trainable_percent": 100.0 * trainable / max(total, 1)}


def memory_report(model: Any | None = None) -> dict[str, float | str]:
    """Memory in use now: GPU allocated/reserved/total (GB) on CUDA, process RSS on CPU."""
    import psutil
    import torch

    report: dict[str, float | str] = {"process_rss_gb": round(psutil.Process(os.getpid()).memory_info().rss / 1024**3, 2)}
    if torch.cuda.is_available():
        report.update(
            device=torch.cuda.get_device_name(0),
            gpu_allocated_gb=round(torch.cuda.memory_allocated() / 1024**3, 2),
            gpu_reserved_gb=round(torch.cuda.memory_reserved() / 1024**3, 2),
            gpu_peak_gb=round(torch.cuda.max_memory_allocated() / 1024**3, 2),
            gpu_total_gb=round(torch.cuda.get_device_properties(0).total_memory / 1024**3, 2),
        )
    else:
        report["device"] = "cpu"
    if model is not None and hasattr(model, "get_memory_footprint"):
        report["model_weights_gb"] = round(model.get_memory_footprint() / 1024**3, 4)
    return report


def describe_model(model: Any) -> str:
    """A two-line summary: parameters (trainable share) and memory."""
    counts = parameter_counts(model)
    mem = memory_report(model)
    where = (f"GPU {mem['gpu_allocated_gb']} GB allocated of {mem['gpu_total_gb']} GB" if "gpu_total_gb" in mem
             else f"CPU process RSS {mem['process_rss_gb']} GB")
    return (f"Parameters: {counts['total']:,.0f} total, {counts['trainable']:,.0f} trainable LoRA "
            f"({counts['trainable_percent']:.2f}%)\nMemory: weights {mem.get('model_weights_gb', '?')} GB; {where}")


def save_adapter(model: Any, tokenizer: Any, directory: "Path | str") -> str:
    """Save only the LoRA adapter (tens of MB) and the tokenizer to `directory`."""
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return str(directory)

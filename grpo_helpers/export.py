"""Export the trained model: the LoRA adapter, a merged 16-bit model, or GGUF, saying what each needs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import runtime
from .modeling import save_adapter

EXPORT_KINDS = ("lora", "merged_16bit", "gguf")
EXPORT_NEEDS = {
    "lora": "nothing: the adapter alone (tens of MB for the 8B model), loaded on top of the base model",
    "merged_16bit": ("the LoRA merged into 16-bit weights (~16 GB for the 8B model: too big for a free 15 GB "
                     "Drive). On a GPU, Unsloth downloads the 16-bit base weights from the Hub to merge "
                     "into (network); on CPU it merges in memory, but only into a model loaded without 4-bit"),
    "gguf": ("llama.cpp: Unsloth installs build tools (apt), pip packages (gguf, protobuf, sentencepiece) and "
             "clones + builds llama.cpp under ~/.unsloth (network, several minutes), then merges and converts; "
             "q4_k_m for the 8B model is ~4.9 GB"),
}


@dataclass(frozen=True)
class ExportResult:
    """What one export did: where it wrote, how big, how long, or why it could not."""

    kind: str
    ok: bool
    path: str | None
    size_mb: float
    seconds: float
    message: str


def _folder_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1024**2, 2)


def _export_precheck(model: Any, kind: str) -> str | None:
    """Why this export cannot work here (None when it may)."""
    import torch

    four_bit = any(type(m).__name__ == "Linear4bit" for m in model.modules())
    if kind in ("merged_16bit", "gguf") and four_bit and not torch.cuda.is_available():
        return ("Unsloth's CPU backend cannot merge LoRA into 4-bit weights. Load the model with "
                "load_in_4bit=False (the tiny profile does), or export on the GPU.")
    if kind == "gguf" and not runtime.host_reachable("github.com"):
        return "no network (github.com unreachable): llama.cpp cannot be downloaded and built here."
    return None


def export_model(model: Any, tokenizer: Any, kind: str, directory: Path | str, gguf_method: str = "q4_k_m") -> ExportResult:
    """Save the trained model as `kind` ("lora", "merged_16bit", "gguf"); never raises, says why on failure."""
    if kind not in EXPORT_KINDS:
        raise ValueError(f"kind must be one of {EXPORT_KINDS}, not {kind!r}")
    directory = Path(directory).expanduser()
    start = time.monotonic()
    problem = _export_precheck(model, kind)
    if problem:
        return ExportResult(kind, False, None, 0.0, 0.0, f"Not exported: {problem} It needs {EXPORT_NEEDS[kind]}.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if kind == "lora":
            save_adapter(model, tokenizer, directory)
        elif kind == "merged_16bit":
            model.save_pretrained_merged(str(directory), tokenizer, save_method="merged_16bit")
        else:
            model.save_pretrained_gguf(str(directory), tokenizer, quantization_method=gguf_method)
    except Exception as exc:  # an optional export must not end the notebook
        return ExportResult(kind, False, str(directory), 0.0, round(time.monotonic() - start, 1),
                            f"Export failed: {type(exc).__name__}: {str(exc)[:500]} (it needs {EXPORT_NEEDS[kind]}).")
    seconds = round(time.monotonic() - start, 1)
    size = _folder_mb(directory)
    return ExportResult(kind, True, str(directory), size, seconds, f"Saved {kind} to {directory} ({size} MB, {seconds} s).")

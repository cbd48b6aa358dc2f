"""What machine this is (Colab or not, GPU, VRAM, compute capability, bf16) and friendly errors."""

from __future__ import annotations

import os
import platform
import socket
import sys
from dataclasses import dataclass

CHANGE_RUNTIME_HINT = ("On Colab: Runtime > Change runtime type > Hardware accelerator: T4 GPU > Save, "
                       "then run the notebook again from the top. Elsewhere: set GRPO_PROFILE=tiny to "
                       "run the tiny CPU model instead.")


class NotebookStop(RuntimeError):
    """An error a notebook shows as its message alone: it says what happened and what to do."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [f"{type(self).__name__}: {self}"]


class GPURequiredError(NotebookStop):
    """A step needs a CUDA GPU and this runtime has none."""


@dataclass(frozen=True)
class RuntimeInfo:
    """A snapshot of the machine the notebook runs on."""

    is_colab: bool
    python: str
    torch_version: str
    cuda_available: bool
    gpu_name: str | None
    vram_gb: float | None
    compute_capability: tuple[int, int] | None
    bf16_supported: bool
    cpu_count: int

    @property
    def is_t4_class(self) -> bool:
        """True for Turing-or-older GPUs (no bf16; newer vLLM releases have no attention backend for them)."""
        return self.compute_capability is not None and self.compute_capability < (8, 0)


def is_colab() -> bool:
    """True inside a Google Colab runtime."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def host_reachable(host: str, timeout_s: float = 3.0) -> bool:
    """True when `host` answers on port 443 within the timeout (False offline)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def cuda_available() -> bool:
    """True when torch sees a CUDA GPU (False when torch is not installed yet)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def describe_runtime() -> RuntimeInfo:
    """Read GPU name, VRAM, compute capability and bf16 support off this machine."""
    import torch

    gpu_name = vram = capability = None
    bf16 = False
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu_name, vram = props.name, round(props.total_memory / 1024**3, 1)
        capability = (props.major, props.minor)
        bf16 = capability >= (8, 0)
    return RuntimeInfo(
        is_colab=is_colab(),
        python=platform.python_version(),
        torch_version=torch.__version__,
        cuda_available=gpu_name is not None,
        gpu_name=gpu_name,
        vram_gb=vram,
        compute_capability=capability,
        bf16_supported=bf16,
        cpu_count=os.cpu_count() or 1,
    )


def runtime_verdict(info: RuntimeInfo) -> str:
    """One plain sentence on what this runtime can do with these notebooks."""
    if not info.cuda_available:
        where = "Colab CPU runtime" if info.is_colab else "CPU-only machine"
        return (f"No GPU: this is a {where}. The notebooks will run the tiny CPU model (a rehearsal, "
                f"minutes). For the real Llama-3.1-8B run: {CHANGE_RUNTIME_HINT}")
    cc = ".".join(map(str, info.compute_capability or ()))
    if info.vram_gb is not None and info.vram_gb < 14:
        return (f"{info.gpu_name} with {info.vram_gb} GB is too small for the 8B model in 4-bit plus "
                f"vLLM (needs ~15 GB). Pick a T4 or larger GPU.")
    precision = "bf16" if info.bf16_supported else "fp16 only (no bf16)"
    vllm = "the pinned vLLM (the last with a T4 attention backend)" if info.is_t4_class else "a current vLLM"
    return (f"Good: {info.gpu_name}, {info.vram_gb} GB, compute capability {cc}, {precision}. "
            f"The 't4' profile fits; generation uses {vllm}.")


def require_cuda(what: str = "this step") -> None:
    """Raise GPURequiredError with the steps to get a T4 when there is no CUDA GPU."""
    if not cuda_available():
        raise GPURequiredError(f"{what} needs a CUDA GPU, and this runtime has none. {CHANGE_RUNTIME_HINT}")

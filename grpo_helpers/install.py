"""The Colab install plan: which pins for which GPU, in one tested place (no torch import here)."""

from __future__ import annotations

import hashlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO_URL = "https://github.com/grpo-notebooks/grpo-t4-notebooks"

# vLLM 0.11.2 is the last release with an attention backend for compute capability 7.5 (T4);
# it brings torch 2.9.0. Newer GPUs take 0.13.0, the newest that still accepts transformers < 5.
VLLM_FOR_T4 = "0.11.2"
VLLM_FOR_NEWER_GPUS = "0.13.0"

# Installed with --no-deps: their metadata pins certifi>=2026.10.19 and drags in torchvision.
UNSLOTH_PINS = {"unsloth": "2026.10.9", "unsloth-zoo": "2026.10.9"}

# The Python stack on top of Colab's own numpy/pandas/matplotlib/ipywidgets. Every package here
# that requirements.txt also names must carry the same version (tests/test_install.py).
SHARED_PINS = {
    "transformers": "4.56.2",
    "trl": "0.22.2",
    "peft": "0.18.1",
    "accelerate": "1.10.1",
    "datasets": "4.3.0",
    "bitsandbytes": "0.49.2",
    "math-verify": "0.9.0",
    "latex2sympy2-extended": "1.11.0",
    "tyro": "1.0.17",
    "msgspec": "0.22.0",
    "hf-transfer": "0.1.9",
    "sentencepiece": "0.2.3",
}
# GPU-only needs of Unsloth's CUDA path (never installed on the CPU machines).
GPU_ONLY_PINS = {"cut-cross-entropy": "25.1.1", "torchao": "0.14.1"}

STAMP = Path("/content/.grpo_stack_installed")


def vllm_version(compute_capability: tuple[int, int] | None) -> str | None:
    """The vLLM release for this GPU (None without a GPU: generation falls back to HF generate)."""
    if compute_capability is None:
        return None
    return VLLM_FOR_T4 if compute_capability < (8, 0) else VLLM_FOR_NEWER_GPUS


def colab_install_plan(compute_capability: tuple[int, int] | None) -> list[list[str]]:
    """The pip commands (argument lists, without `python -m pip`) that set up a Colab runtime."""
    pins = lambda table: [f"{name}=={version}" for name, version in table.items()]  # noqa: E731
    plan: list[list[str]] = []
    vllm = vllm_version(compute_capability)
    if vllm:  # first: vLLM chooses the torch build; everything after must not move it
        plan.append(["install", "-q", f"vllm=={vllm}"])
        plan.append(["install", "-q", "--no-deps", *pins(GPU_ONLY_PINS)])
    plan.append(["install", "-q", "--no-deps", *pins(UNSLOTH_PINS)])
    plan.append(["install", "-q", *pins(SHARED_PINS)])
    plan.append(["install", "-q", "--no-deps", f"git+{REPO_URL}"])
    return plan


def read_requirements(path: str | Path) -> dict[str, str]:
    """`name==version` pins of a requirements file, names normalised (PEP 503)."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)", line)
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def normalise(name: str) -> str:
    """PEP 503 package-name normalisation ('Unsloth_Zoo' -> 'unsloth-zoo')."""
    return re.sub(r"[-_.]+", "-", name).lower()


def plan_pins(plan: list[list[str]]) -> dict[str, str]:
    """Every `name==version` pinned anywhere in a plan."""
    pins = {}
    for command in plan:
        for arg in command:
            if "==" in arg and not arg.startswith("-"):
                name, version = arg.split("==", 1)
                pins[normalise(name)] = version
    return pins


def gpu_compute_capability() -> tuple[int, int] | None:
    """Compute capability of GPU 0 from nvidia-smi (no torch import), None without a GPU."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.split()
        major, minor = out[0].split(".")
        return int(major), int(minor)
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None


def install_colab_stack(force: bool = False, dry_run: bool = False) -> list[list[str]]:
    """Run the plan for this runtime's GPU once per runtime (a stamp file skips repeats)."""
    from tqdm.auto import tqdm

    plan = colab_install_plan(gpu_compute_capability())
    digest = hashlib.sha256(repr(plan).encode()).hexdigest()
    if not force and STAMP.exists() and STAMP.read_text() == digest:
        print("The pinned stack is already installed in this runtime.")
        return plan
    if gpu_compute_capability() is None:
        print("No GPU in this runtime: installing the CPU stack only (the notebooks will use the tiny "
              "profile). For the real run: Runtime > Change runtime type > T4 GPU, then rerun.")
    for command in tqdm(plan, desc="Installing the pinned stack", unit="step"):
        print("pip " + shlex.join(command))
        if not dry_run:
            subprocess.run([sys.executable, "-m", "pip", *command], check=True)
    if not dry_run:
        STAMP.write_text(digest)
        print("Done. If Colab offers to restart the session, accept, then run the notebook from the top.")
    return plan


KEY_PACKAGES = ("torch", "vllm", "unsloth", "unsloth-zoo", "transformers", "trl", "peft", "bitsandbytes",
                "accelerate", "datasets", "math-verify")


def installed_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str | None]:
    """The installed version of each package (None when it is not installed)."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions

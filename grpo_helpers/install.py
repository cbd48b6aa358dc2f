"""The Colab install plan and the notebooks' bootstrap: which pins, for which notebook and GPU, once.

Cell 1 of every notebook is `bootstrap_cell(kit)`: it installs grpo_helpers itself at RELEASE_REF
(unless it is importable already), then calls `bootstrap(kit)`, which on Colab runs
`colab_install_plan` with uv and does nothing anywhere else. No torch import here: torch may be
about to change under us.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import __version__, runtime

# The one place that names where the notebooks and helpers live, and which release they belong to.
# The badges, every bootstrap cell and the README carry copies; tests/test_install.py keeps them
# in step (`python scripts/sync_release.py` rewrites them after a change here).
REPO_URL = "https://github.com/grpo-notebooks/grpo-t4-notebooks"
RELEASE_REF = f"v{__version__}"  # the git tag of this release
REPO_ENV, REF_ENV = "GRPO_REPO", "GRPO_REF"  # a fork or branch: set these before cell 1

# vLLM 0.11.2 is the last release with an attention backend for compute capability 7.5 (T4).
# Newer GPUs take 0.13.0, the newest that still accepts transformers < 5. Both require torch
# 2.9.0 and the torchvision/torchaudio built with it (their metadata pins all three).
VLLM_FOR_T4 = "0.11.2"
VLLM_FOR_NEWER_GPUS = "0.13.0"
VLLM_TORCH = {"torch": "2.9.0", "torchvision": "0.24.0", "torchaudio": "2.9.0"}

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
# Notebooks 02 and 03 (rewards, advantage and loss checked against TRL on the tiny CPU model) need only these:
# no vLLM, no Unsloth, no CUDA wheels, and Colab's own torch stays.
LIGHT_PINS = {name: SHARED_PINS[name] for name in
              ("transformers", "trl", "peft", "accelerate", "datasets", "math-verify", "latex2sympy2-extended")}
# GPU-only needs of Unsloth's CUDA path (never installed on the CPU machines).
GPU_ONLY_PINS = {"cut-cross-entropy": "25.1.1", "torchao": "0.14.1"}

KITS = {"full": "the GPU stack: vLLM, Unsloth, TRL (notebooks 00, 01, 04, 05)",
        "light": "TRL and transformers only, Colab's torch kept (notebooks 02, 03)"}
STAMP = Path("/content/.grpo_stack_installed")


NOTEBOOK_KITS = {"00_setup": "full", "01_load_model": "full", "02_rewards": "light", "03_objective": "light",
                 "04_train_grpo": "full", "05_before_after": "full"}


def colab_url(notebook: str, repo_url: str = REPO_URL, ref: str = RELEASE_REF) -> str:
    """The 'Open in Colab' address of a notebook ('00_setup.ipynb') at this release."""
    return f"{repo_url.replace('https://github.com/', 'https://colab.research.google.com/github/')}/blob/{ref}/notebooks/{notebook}"


def raw_url(path: str, repo_url: str = REPO_URL, ref: str = RELEASE_REF) -> str:
    """The raw address of a file of the repository at this release (images the notebooks show)."""
    return f"{repo_url.replace('https://github.com/', 'https://raw.githubusercontent.com/')}/{ref}/{path}"


class BootstrapError(runtime.NotebookStop):
    """The install could not finish; the message says what happened and what to do."""


@dataclass(frozen=True)
class InstallStep:
    """One `uv pip install` of the plan: what it installs, how, and why."""

    requirements: tuple[str, ...]
    no_deps: bool = False
    reinstall: tuple[str, ...] = ()  # same version installed, but another build: replace it
    why: str = ""

    def uv_args(self) -> list[str]:
        """The arguments after `uv pip install` (the rehearsal passes exactly these too)."""
        return [*(["--no-deps"] if self.no_deps else []),
                *(f"--reinstall-package={name}" for name in self.reinstall), *self.requirements]


def normalise(name: str) -> str:
    """PEP 503 package-name normalisation ('Unsloth_Zoo' -> 'unsloth-zoo')."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(table: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(f"{name}=={version}" for name, version in table.items())


def vllm_version(compute_capability: tuple[int, int] | None) -> str | None:
    """The vLLM release for this GPU (None without a GPU: generation falls back to HF generate)."""
    if compute_capability is None:
        return None
    return VLLM_FOR_T4 if compute_capability < (8, 0) else VLLM_FOR_NEWER_GPUS


def colab_install_plan(compute_capability: tuple[int, int] | None, kit: str = "full",
                       installed: Mapping[str, str] | None = None) -> list[InstallStep]:
    """The install steps for a notebook's kit on this GPU, given what the runtime has installed."""
    if kit not in KITS:
        raise ValueError(f"Unknown kit {kit!r}; valid kits: {', '.join(KITS)}")
    if kit == "light":
        return [InstallStep(_pins(LIGHT_PINS), why="the transformers/TRL API the notebooks are written for")]
    have = {normalise(name): version for name, version in (installed or {}).items()}
    plan: list[InstallStep] = []
    vllm = vllm_version(compute_capability)
    if vllm:  # first: vLLM chooses the torch build; everything after must not move it
        # Colab's 2026.01 image has torch 2.9.0+cu126: the version vLLM asks for, but not the
        # CUDA 12.8 build its wheels are compiled against, so those get replaced.
        other_build = tuple(name for name, version in VLLM_TORCH.items()
                            if have.get(name, version) != version and have[name].split("+")[0] == version)
        plan.append(InstallStep((f"vllm=={vllm}", *_pins(VLLM_TORCH)), reinstall=other_build,
                                why=f"vLLM {vllm} and the torch {VLLM_TORCH['torch']} (CUDA 12.8) it is built for"))
        plan.append(InstallStep(_pins(GPU_ONLY_PINS), no_deps=True, why="Unsloth's CUDA kernels"))
    plan.append(InstallStep(_pins(UNSLOTH_PINS), no_deps=True,
                            why="Unsloth; --no-deps: its metadata asks for a torchvision/certifi we choose ourselves"))
    plan.append(InstallStep(_pins(SHARED_PINS), why="TRL, transformers, PEFT and the rest, pinned as CI tests them"))
    return plan


def plan_digest(plan: list[InstallStep]) -> str:
    """sha256 of what a plan installs (its steps' uv arguments, in order): the bootstrap's stamp, the API record's key."""
    return hashlib.sha256(json.dumps([step.uv_args() for step in plan]).encode()).hexdigest()


def plan_pins(plan: list[InstallStep]) -> dict[str, str]:
    """Every `name==version` pinned anywhere in a plan, names normalised."""
    pins = {}
    for step in plan:
        for requirement in step.requirements:
            name, version = requirement.split("==", 1)
            pins[normalise(name)] = version
    return pins


def read_requirements(path: str | Path) -> dict[str, str]:
    """`name==version` pins of a requirements file, names normalised (PEP 503)."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)", line)
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def bootstrap_cell(kit: str) -> str:
    """The source of cell 1 of a notebook that needs `kit` (the tests compare every notebook with it)."""
    return f'''# Bootstrap: on Colab, install grpo_helpers ({RELEASE_REF}) and the pinned stack, once per runtime.
# Where grpo_helpers is importable already (a clone, CI) it does nothing. A fork: set the
# environment variables {REPO_ENV} (repository URL) and {REF_ENV} (tag, branch or commit) first.
import importlib.util, os, subprocess, sys
REPO = os.environ.get("{REPO_ENV}", "{REPO_URL}")
REF = os.environ.get("{REF_ENV}", "{RELEASE_REF}")
if importlib.util.find_spec("grpo_helpers") is None:
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", f"git+{{REPO}}@{{REF}}"],
                         capture_output=True, text=True, env={{**os.environ, "GIT_TERMINAL_PROMPT": "0"}})
    if pip.returncode:
        lines = [line.strip() for line in pip.stderr.splitlines() if line.strip()]
        why = [line for line in lines if line.startswith(("fatal:", "error: pathspec", "ERROR:"))] or lines[-1:] or ["?"]
        raise SystemExit(f"Could not install grpo_helpers from {{REPO}} at {{REF}}: {{why[0]}}\\n"
                         "Check this runtime is online, that the repository is public and the ref exists; "
                         "for a fork set {REPO_ENV}/{REF_ENV} (README, 'A fork or a branch'), then run this cell again.")
from grpo_helpers.install import bootstrap
bootstrap("{kit}", REF)
'''


def plan_table(plan: list[InstallStep]) -> list[dict[str, str]]:
    """One row per step (the command and why), for showing the plan in a notebook."""
    return [{"uv pip install": shlex.join(step.uv_args()), "why": step.why} for step in plan]


def gpu_compute_capability() -> tuple[int, int] | None:
    """Compute capability of GPU 0 from nvidia-smi (no torch import), None without a GPU."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.split()
        major, minor = out[0].split(".")
        return int(major), int(minor)
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None


def installed_distributions() -> dict[str, str]:
    """Every installed distribution of this interpreter, name (normalised) -> version."""
    return {normalise(dist.metadata["Name"]): dist.version for dist in metadata.distributions()
            if dist.metadata["Name"]}


def changed_packages(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, tuple[str | None, str | None]]:
    """Packages whose version differs between two `installed_distributions()`: name -> (from, to)."""
    return {name: (before.get(name), after.get(name)) for name in sorted(set(before) | set(after))
            if before.get(name) != after.get(name)}


def imported_distributions() -> set[str]:
    """Distributions (normalised) that some module already imported in this process belongs to."""
    owners = metadata.packages_distributions()
    loaded = {name.partition(".")[0] for name in list(sys.modules)}
    return {normalise(dist) for module in loaded for dist in owners.get(module, ())}


def _uv() -> list[str]:
    """The uv command (Colab ships it; otherwise pip installs it first, as Unsloth's notebooks do)."""
    if shutil.which("uv"):
        return ["uv"]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "uv"], check=True, capture_output=True)
    return [sys.executable, "-m", "uv"]


def _read_stamp() -> dict[str, str]:
    try:
        return json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return {}


def bootstrap(kit: str = "full", ref: str = RELEASE_REF) -> list[InstallStep]:
    """Cell 1's work: on Colab install `kit`'s plan once per runtime (restarting if needed); else nothing."""
    if not runtime.is_colab():
        return []
    if ref != RELEASE_REF and REF_ENV not in os.environ:
        print(f"Note: this runtime has grpo_helpers {RELEASE_REF}, the notebook belongs to {ref}. If a cell "
              "fails, use Runtime > Disconnect and delete runtime, then run the notebook again.")
    capability = gpu_compute_capability()
    before = installed_distributions()
    plan = colab_install_plan(capability, kit, installed=before)
    digest = plan_digest(plan)
    stamp = _read_stamp()
    if stamp.get(kit) == digest or (kit == "light" and "full" in stamp):
        print(f"The pinned stack ({kit}) is already installed in this runtime.")
        return plan
    if capability is None and kit == "full":
        print("No GPU in this runtime: installing without vLLM (the notebooks will use the tiny CPU profile). "
              f"For the real run: {runtime.CHANGE_RUNTIME_HINT}")
    run_plan(plan, kit)
    changed = changed_packages(before, installed_distributions())
    STAMP.write_text(json.dumps({**stamp, kit: digest}))
    loaded = sorted(set(changed) & imported_distributions())
    if loaded:
        print(f"Installed. {', '.join(loaded)} changed after this runtime had loaded it, so the runtime restarts "
              "now (Colab will say it crashed: expected). Then run the notebook again: this cell skips the "
              "install and the notebook carries on.")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # Colab's own way to restart a runtime
    return plan


def run_plan(plan: list[InstallStep], kit: str) -> None:
    """Run the steps with uv into this interpreter, a progress bar over them, a short error on failure."""
    from tqdm.auto import tqdm

    uv = _uv()
    for step in tqdm(plan, desc=f"Installing the pinned stack ({kit}, ~3 min)", unit="step"):
        command = [*uv, "pip", "install", "--python", sys.executable, *step.uv_args()]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
            raise BootstrapError(f"`{shlex.join(command[len(uv):])}` failed ({step.why}):\n{tail}\n"
                                 "Check the runtime is online and has disk space (the GPU stack needs ~8 GB), then "
                                 "Runtime > Disconnect and delete runtime and run the notebook again.")


KEY_PACKAGES = ("torch", "vllm", "unsloth", "unsloth-zoo", "transformers", "trl", "peft", "bitsandbytes",
                "accelerate", "datasets", "math-verify")


def installed_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str | None]:
    """The installed version of each package (None when it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions

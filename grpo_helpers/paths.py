"""Where artifacts live: $GRPO_ARTIFACTS, else Google Drive when mounted on Colab, else ./outputs.

Exports are the exception: on Colab they go to the local disk (/content/export), never to Drive,
where a merged 8B model alone would not fit a free 15 GB account.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import runtime

ARTIFACTS_ENV = "GRPO_ARTIFACTS"
DRIVE_ROOT = Path("/content/drive")
DRIVE_ARTIFACTS = DRIVE_ROOT / "MyDrive" / "grpo-notebooks"
COLAB_EXPORT_ROOT = Path("/content/export")  # Colab's local disk: much larger than a free Drive, gone with the runtime


def project_root() -> Path:
    """The repository root when running from a checkout (notebooks/ or the root), else the cwd."""
    cwd = Path.cwd()
    for candidate in (cwd, *cwd.parents):
        if (candidate / "pyproject.toml").exists() and (candidate / "grpo_helpers").is_dir():
            return candidate
    return cwd


def artifacts_dir() -> Path:
    """The folder every notebook saves to and reads from (created if missing)."""
    if os.environ.get(ARTIFACTS_ENV, "").strip():
        root = Path(os.environ[ARTIFACTS_ENV]).expanduser()
    elif (DRIVE_ROOT / "MyDrive").is_dir():
        root = DRIVE_ARTIFACTS
    else:
        root = project_root() / "outputs"
    root.mkdir(parents=True, exist_ok=True)
    return root


def profile_dir(profile_name: str) -> Path:
    """Artifacts of one profile, so a tiny rehearsal never overwrites the real T4 run."""
    path = artifacts_dir() / profile_name
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoints_dir(profile_name: str) -> Path:
    """Trainer checkpoints (resumed from after a disconnect)."""
    return profile_dir(profile_name) / "checkpoints"


def adapter_dir(profile_name: str) -> Path:
    """The final LoRA adapter saved by notebook 04."""
    return profile_dir(profile_name) / "lora_adapter"


def export_dir(profile_name: str) -> Path:
    """Where exports go (not created here): /content/export/<profile> on Colab, else <artifacts>/<profile>/export."""
    if runtime.is_colab():
        return COLAB_EXPORT_ROOT / profile_name
    return profile_dir(profile_name) / "export"


def mount_drive(enabled: bool = True) -> Path:
    """On Colab, mount Google Drive so checkpoints survive a disconnect; return the artifacts dir."""
    if enabled and not os.environ.get(ARTIFACTS_ENV):
        try:
            from google.colab import drive  # type: ignore[import-not-found]
        except ImportError:
            print("Not on Colab: artifacts stay on this machine.")
        else:
            drive.mount(str(DRIVE_ROOT))
    path = artifacts_dir()
    print(f"Artifacts folder: {path}")
    return path

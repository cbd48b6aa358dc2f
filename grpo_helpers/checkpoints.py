"""Checkpoints that belong to one run: run.json, completeness checks, moving aside, metrics truncation.

Resume only ever continues the same run: every checkpoint carries a run.json naming its run (a
fingerprint of the settings that shape the optimisation, not of bookkeeping such as max_steps), and
before training every checkpoint of another run is moved aside (never deleted) into a sibling
`checkpoints-previous/<timestamp>/` folder, so neither a step number nor a modification time can make
a resume, or the Trainer's rotation, touch another run.

Under accelerate launch only the main process moves or rewrites anything; the others wait for it and
then see the same checkpoints.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any, Sequence

from . import backends, paths

RUN_FILE = "run.json"  # in every checkpoint: which run it belongs to
CHECKPOINT_PREFIX = "checkpoint-"
PREVIOUS_SUFFIX = "-previous"  # <checkpoints>-previous/<timestamp>/: what was moved aside
REQUIRED_STATE_FILES = ("optimizer.pt", "scheduler.pt")  # the Trainer's, needed to continue the same run
OPTIMIZER_FILE = "optimizer.pt"
# Under DeepSpeed the Trainer saves the optimizer with the engine's save_checkpoint instead of optimizer.pt
# (transformers 4.56.2 Trainer._save_optimizer_and_scheduler): a `latest` file naming a `global_stepN/` folder.
DEEPSPEED_LATEST_FILE = "latest"
DRIVE_TRASH_NOTE = ("Checkpoints are on Google Drive: the Trainer keeps the newest {keep} and deletes older ones, "
                    "and Drive keeps what is deleted in its Trash, still counting against the 15 GB quota, for "
                    "30 days. To free that space, empty it: drive.google.com > Trash > Empty trash.")


def checkpoint_run_id(folder: str | Path) -> str | None:
    """The run a checkpoint belongs to, from its run.json (None: an old-format or unreadable one)."""
    try:
        return json.loads((Path(folder) / RUN_FILE).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def write_run_file(folder: Path, run: dict[str, Any], global_step: int) -> None:
    """Write run.json (run id, identity, step) into a checkpoint folder, creating it if needed."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {"run_id": run["run_id"], "global_step": global_step,
              "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"), "identity": run["identity"]}
    (folder / RUN_FILE).write_text(json.dumps(record, indent=2, default=str))


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is incomplete (None: its size is where its header's last tensor ends)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            if size < 8 or header_size > size - 8:
                return f"{path.name} is truncated ({size:,} bytes, shorter than its header)"
            header = json.loads(handle.read(header_size))
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        return f"{path.name} has an unreadable header ({type(exc).__name__})"
    expected = 8 + header_size + end
    return None if size == expected else f"{path.name} is {size:,} bytes where its header says {expected:,}"


def torch_file_problem(path: Path) -> str | None:
    """Why a torch.save file is incomplete: empty, or a zip archive cut off before its end record."""
    if path.stat().st_size == 0:
        return f"{path.name} is empty"
    with path.open("rb") as handle:
        is_zip = handle.read(4) == b"PK\x03\x04"
    return f"{path.name} is truncated" if is_zip and not zipfile.is_zipfile(path) else None


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why a checkpoint cannot be resumed from, None when it is complete (headers and sizes only: cheap on Drive)."""
    folder = Path(folder)
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except FileNotFoundError:
        return "no trainer_state.json"
    except (OSError, ValueError):
        return "trainer_state.json is unreadable"
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*model*.bin")):
        return "no model weights"
    deepspeed_folder = deepspeed_state_folder(folder)
    missing = [name for name in REQUIRED_STATE_FILES if not (folder / name).is_file()
               and not (name == OPTIMIZER_FILE and deepspeed_folder is not None)]
    if missing:
        return f"no {' or '.join(missing)}"
    state_files = sorted(deepspeed_folder.iterdir()) if deepspeed_folder is not None else []
    if deepspeed_folder is not None and not any(path.suffix == ".pt" for path in state_files):
        return f"no DeepSpeed state files in {deepspeed_folder.name}"
    for path in [*sorted(folder.iterdir()), *state_files]:
        problem = (safetensors_problem(path) if path.suffix == ".safetensors"
                   else torch_file_problem(path) if path.suffix in (".pt", ".pth", ".bin") else None)
        if problem:
            return problem
    return None


def deepspeed_state_folder(folder: Path) -> Path | None:
    """The `global_stepN/` folder a DeepSpeed checkpoint's `latest` file names (None: not a DeepSpeed checkpoint)."""
    try:
        tag = (folder / DEEPSPEED_LATEST_FILE).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    state = folder / tag
    return state if tag.startswith("global_step") and state.is_dir() else None


def checkpoint_step(folder: str | Path) -> int:
    """The global step of a `checkpoint-N` folder (N)."""
    return int(Path(folder).name[len(CHECKPOINT_PREFIX):])


def checkpoint_folders(directory: str | Path) -> list[Path]:
    """The `checkpoint-N` folders in `directory`, highest step first (complete or not, any run)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob(f"{CHECKPOINT_PREFIX}*")
             if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=checkpoint_step, reverse=True)


def latest_checkpoint(directory: str | Path, run_id: str | None = None) -> str | None:
    """The newest complete `checkpoint-N` in `directory` of run `run_id` (of any run when None); None if none.

    Complete: trainer_state.json readable, weights whose size matches their header, optimizer.pt (or under
    DeepSpeed a `latest` file and its `global_stepN/` folder) and scheduler.pt present and whole; a disconnect can leave a checkpoint half-written or half-uploaded."""
    for folder in checkpoint_folders(directory):
        if (run_id is None or checkpoint_run_id(folder) == run_id) and checkpoint_problem(folder) is None:
            return str(folder)
    return None


def aside_folder(output_dir: Path) -> Path:
    """A fresh `<output_dir>-previous/<timestamp>` path (created on first use) for what one call moves aside."""
    root = output_dir.parent / f"{output_dir.name}{PREVIOUS_SUFFIX}"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, n = root / stamp, 2
    while candidate.exists():
        candidate, n = root / f"{stamp}-{n}", n + 1
    return candidate


def set_aside(items: Sequence[Path], destination: Path, reason: str) -> None:
    """Move files/folders into `destination` (never deleting them), with one line saying what, why and where.

    Only the main process moves; in the others this does nothing."""
    items = [Path(item) for item in items if Path(item).exists()]
    if not items or not backends.is_main_process():
        return
    destination.mkdir(parents=True, exist_ok=True)
    for item in items:
        target, n = destination / item.name, 2
        while target.exists():
            target, n = destination / f"{item.name}.{n}", n + 1
        shutil.move(str(item), str(target))
    print(f"Moved {', '.join(item.name for item in items)} ({reason}) aside to {destination} (not deleted).")


def prepare_checkpoints(output_dir: Path, run_id: str, resume: bool, destination: Path,
                        extras: Sequence[Path] = ()) -> list[str]:
    """Move aside every checkpoint a resume must not use; return this run's complete ones, newest first.

    resume=False moves all of them and `extras` (the old metrics.csv and curves); otherwise those of other
    runs (or of none: saved before checkpoints named their run) and this run's incomplete ones. Under
    several processes the main one moves and the others, once it is done, list what is left."""
    if not backends.is_main_process():
        backends.wait_for_everyone()
        return [str(f) for f in checkpoint_folders(output_dir) if resume and checkpoint_run_id(f) == run_id
                and checkpoint_problem(f) is None]
    complete = _prepare_in_main(output_dir, run_id, resume, destination, extras)
    backends.wait_for_everyone()
    return complete


def _prepare_in_main(output_dir: Path, run_id: str, resume: bool, destination: Path,
                     extras: Sequence[Path]) -> list[str]:
    folders = checkpoint_folders(output_dir)
    if not resume:
        set_aside([*folders, *extras], destination, "resume=False: a new run starts")
        return []
    mine = [folder for folder in folders if checkpoint_run_id(folder) == run_id]
    set_aside([folder for folder in folders if folder not in mine], destination,
              "another run's: other settings, or saved before checkpoints named their run")
    complete = []
    for folder in mine:
        problem = checkpoint_problem(folder)
        if problem:
            set_aside([folder], destination, f"incomplete, {problem}: cut off by a disconnect? an earlier one is used")
        else:
            complete.append(str(folder))
    return complete


def truncate_metrics(path: Path, last_step: int) -> int:
    """Drop metrics.csv rows after `last_step` (and torn ones) before a resume redoes those steps; how many.

    Only the main process rewrites the file (the others return 0)."""
    if not path.is_file() or not backends.is_main_process():
        return 0
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return 0
    header, body = rows[0], rows[1:]
    kept = [row for row in body if len(row) == len(header) and _row_step(row) <= last_step]
    if len(kept) < len(body):
        partial = path.with_name(path.name + ".partial")
        with partial.open("w", newline="") as handle:
            csv.writer(handle).writerows([header, *kept])
        os.replace(partial, path)
    return len(body) - len(kept)


def _row_step(row: list[str]) -> float:
    """A metrics.csv row's step (infinite for a line torn by a hard disconnect, so it is dropped)."""
    try:
        return float(row[0])
    except ValueError:
        return float("inf")


def on_drive(path: str | Path) -> bool:
    """True when `path` is inside the mounted Google Drive (paths.DRIVE_ROOT)."""
    return Path(os.path.abspath(path)).is_relative_to(paths.DRIVE_ROOT)

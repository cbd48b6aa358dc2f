"""Export the trained model (LoRA adapter, merged 16-bit, GGUF): sized first, refused when the disk is short,
removed again when it fails midway."""

from __future__ import annotations

import fnmatch
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import paths, runtime, sizes
from .modeling import save_adapter
from .profiles import T4, Profile

EXPORT_KINDS = ("lora", "merged_16bit", "gguf")
EXPORT_FOLDERS = {"lora": "lora_adapter", "merged_16bit": "merged_16bit", "gguf": "gguf"}  # under the export dir
GGUF_MERGE_FOLDER = "merged_16bit"  # save_pretrained_gguf merges into <dir>/merged_16bit, GGUF files: <that>_gguf
SAFETY_FRACTION = 0.10  # refuse unless the disk has 10% more than the export writes ...
SAFETY_FLOOR_BYTES = 500_000_000  # ... and at least 0.5 GB more, so checkpoints and the notebook keep room
LEFTOVER_PATTERNS = ("*.gguf", "_unsloth_*")  # what Unsloth may leave in the working directory mid-export


def export_needs(kind: str, config: sizes.ConfigLike = sizes.LLAMA_31_8B_CONFIG, rank: int = T4.lora_rank,
                 targets: Sequence[str] = T4.lora_target_modules, gguf_method: str = "q4_k_m") -> str:
    """What an export writes and needs, with its sizes computed for `config` (Llama-3.1-8B by default)."""
    model, fmt = sizes.model_label(config), sizes.format_bytes
    if kind == "lora":
        adapter = fmt(sizes.adapter_bytes(config, rank, targets))
        return (f"nothing: the adapter alone ({adapter} for {model}: rank {rank} on {len(targets)} projections, "
                "fp32), loaded on top of the base model")
    merged = fmt(sizes.merged_16bit_bytes(config))
    if kind == "merged_16bit":
        return (f"the LoRA merged into 16-bit weights ({merged} for {model}; "
                f"{fmt(sizes.merge_peak_bytes(config))} free while writing). On a GPU, Unsloth downloads the 16-bit "
                "base weights from the Hub into the target to merge into (network); on CPU it merges in memory, but "
                "only into a model loaded without 4-bit")
    return ("llama.cpp: Unsloth installs build tools (apt), pip packages (gguf, protobuf, sentencepiece) and clones + "
            f"builds llama.cpp under ~/.unsloth (network, several minutes). Then it writes the 16-bit merge ({merged}) "
            f"into the target, an f16 GGUF ({fmt(sizes.gguf_bytes(config, 'f16'))}, first in the working directory, "
            f"then next to the target in <target>_gguf), quantises it to {gguf_method} "
            f"({fmt(sizes.gguf_bytes(config, gguf_method))}, an estimate) and deletes the f16 file: "
            f"{fmt(sizes.gguf_peak_bytes(config, gguf_method))} at the peak, "
            f"{fmt(sizes.gguf_kept_bytes(config, gguf_method))} kept (the merge stays)")


EXPORT_NEEDS = {kind: export_needs(kind) for kind in EXPORT_KINDS}  # for Llama-3.1-8B on the t4 profile


@dataclass(frozen=True)
class ExportResult:
    """What one export did: where it wrote, how big, how long, or why it could not."""

    kind: str
    ok: bool
    path: str | None
    size_mb: float
    seconds: float
    message: str
    needed_gb: float | None = None  # free space it asked for (with the margin), when it checked
    free_gb: float | None = None  # free space it found there


@dataclass(frozen=True)
class DiskNeed:
    """Bytes an export will write onto the filesystem holding `path`."""

    path: Path
    bytes: int
    what: str


@dataclass(frozen=True)
class Shortfall:
    """A filesystem without room for what an export writes there."""

    need: DiskNeed
    required: int  # need.bytes plus the safety margin
    free: int
    mount: Path


def existing_parent(path: Path | str) -> Path:
    """The path itself when it exists, else its nearest existing ancestor (the filesystem a write lands on)."""
    probe = Path(os.path.abspath(os.path.expanduser(str(path))))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def free_bytes(path: Path | str) -> int | None:
    """Free bytes on the filesystem that would hold `path` (None when it cannot be measured)."""
    try:
        return int(shutil.disk_usage(existing_parent(path)).free)
    except OSError:
        return None


def mount_point(path: Path | str) -> Path:
    """The mount point of the filesystem that would hold `path`."""
    probe = existing_parent(path)
    while not os.path.ismount(probe) and probe != probe.parent:
        probe = probe.parent
    return probe


def safety_margin(n_bytes: int) -> int:
    """Room to leave besides the export: 10% of it, at least 0.5 GB."""
    return max(SAFETY_FLOOR_BYTES, int(n_bytes * SAFETY_FRACTION))


def _same_filesystem(a: Path, b: Path) -> bool:
    """True when both paths (or their nearest existing ancestors) are on one filesystem."""
    try:
        return os.stat(existing_parent(a)).st_dev == os.stat(existing_parent(b)).st_dev
    except OSError:
        return True  # cannot tell: charge everything to the target, as before


def lora_shape(model: Any, profile: Profile | None = None) -> tuple[int, tuple[str, ...]]:
    """LoRA rank and target projections: the loaded adapter's own, else the profile's."""
    config = (getattr(model, "peft_config", None) or {}).get("default")
    if config is not None and not isinstance(config.target_modules, str):
        return int(config.r), tuple(sorted(config.target_modules))
    profile = profile or T4
    return profile.lora_rank, tuple(profile.lora_target_modules)


def planned_writes(model: Any, kind: str, directory: Path, gguf_method: str = "q4_k_m",
                   profile: Profile | None = None) -> list[DiskNeed]:
    """Where the export writes and how much at its peak, from the model's config (tokenizer files included)."""
    config, tokenizer = model.config, sizes.TOKENIZER_FILES_BYTES
    if kind == "lora":
        rank, targets = lora_shape(model, profile)
        return [DiskNeed(directory, sizes.adapter_bytes(config, rank, targets) + tokenizer, "the LoRA adapter (fp32)")]
    if kind == "merged_16bit":
        return [DiskNeed(directory, sizes.merge_peak_bytes(config) + tokenizer,
                         "the 16-bit merge, plus one shard rewritten through a temporary file")]
    needs = [DiskNeed(directory, sizes.gguf_peak_bytes(config, gguf_method) + tokenizer,
                      f"the 16-bit merge, the f16 GGUF and the {gguf_method} GGUF, all on disk at the peak")]
    staged = sizes.gguf_intermediate_bytes(config, gguf_method) - sizes.merged_16bit_bytes(config)
    if staged and not _same_filesystem(Path.cwd(), directory):  # llama.cpp writes the f16 GGUF in the cwd first
        needs.append(DiskNeed(Path.cwd(), staged, "the f16 GGUF, written in the working directory before it is moved"))
    return needs


def find_shortfall(needs: Sequence[DiskNeed]) -> Shortfall | None:
    """The first filesystem without room for its part of the export plus the margin (None: all fit)."""
    for need in needs:
        free = free_bytes(need.path)
        required = need.bytes + safety_margin(need.bytes)
        if free is not None and free < required:
            return Shortfall(need, required, free, mount_point(need.path))
    return None


def _where(mount: Path) -> str:
    """A mount point, named for a human."""
    drive = mount == paths.DRIVE_ROOT or paths.DRIVE_ROOT in mount.parents
    return f"{mount} (Google Drive)" if drive else str(mount)


def shortfall_message(kind: str, short: Shortfall) -> str:
    """The refusal: the numbers, then what to do."""
    fmt, local = sizes.format_bytes, paths.COLAB_EXPORT_ROOT
    if runtime.is_colab() and not _same_filesystem(short.need.path, local):
        elsewhere = f"set EXPORT_DIR = None or {str(local)!r} (Colab's local disk, {fmt(free_bytes(local) or 0)} free)"
    else:
        elsewhere = f"point EXPORT_DIR at a disk with more room (on Colab: {local}, the local disk)"
    return (f"Not exported, nothing written: {kind} needs {fmt(short.required)} free for {short.need.path} "
            f"({short.need.what}: {fmt(short.need.bytes)}, plus a {fmt(short.required - short.need.bytes)} safety "
            f"margin), and {_where(short.mount)} has {fmt(short.free)} free. To export: {elsewhere}, free space on "
            f"{short.mount}, or skip this export.")


@dataclass(frozen=True)
class _Before:
    """What existed before an export, so a failure removes only what the export created."""

    created_root: Path | None  # the top-most folder the export creates (None: the target existed)
    entries: frozenset[str]  # the target's contents before
    cwd: Path
    cwd_entries: frozenset[str]


def _list(folder: Path) -> frozenset[str]:
    """Names in a folder (empty when it is missing or unreadable)."""
    try:
        return frozenset(os.listdir(folder))
    except OSError:
        return frozenset()


def _snapshot(directory: Path) -> _Before:
    """Record what exists before the export writes."""
    created = None
    probe = directory
    while not probe.exists() and probe != probe.parent:
        created, probe = probe, probe.parent
    return _Before(created, _list(directory), Path.cwd(), _list(Path.cwd()))


def _remove(path: Path) -> None:
    """Delete a file or folder, ignoring what is already gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_new(before: _Before, directory: Path) -> list[Path]:
    """Delete what the export created (its folders, new files in an existing target, leftovers in the cwd)."""
    if before.created_root is not None:
        doomed = [before.created_root] if before.created_root.exists() else []
    else:
        doomed = [directory / name for name in _list(directory) - before.entries]
    doomed += [before.cwd / name for name in _list(before.cwd) - before.cwd_entries
               if any(fnmatch.fnmatch(name, pattern) for pattern in LEFTOVER_PATTERNS)]
    for path in doomed:
        _remove(path)
    return doomed


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


def _needs_text(model: Any, kind: str, gguf_method: str, profile: Profile | None) -> str:
    """export_needs for the loaded model, or for the 8B when its config cannot be sized."""
    try:
        rank, targets = lora_shape(model, profile)
        return export_needs(kind, model.config, rank, targets, gguf_method)
    except (AttributeError, KeyError, TypeError, ValueError):
        return EXPORT_NEEDS[kind]


def _write(model: Any, tokenizer: Any, kind: str, directory: Path, gguf_method: str) -> Path:
    """Run the export into `directory`; returns the folder holding the result."""
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "lora":
        save_adapter(model, tokenizer, directory)
        return directory
    if kind == "merged_16bit":
        model.save_pretrained_merged(str(directory), tokenizer, save_method="merged_16bit")
        return directory
    merge_dir = directory / GGUF_MERGE_FOLDER
    model.save_pretrained_gguf(str(merge_dir), tokenizer, quantization_method=gguf_method)
    return Path(f"{merge_dir}_gguf")


def _saved_message(kind: str, directory: Path, result: Path, seconds: float) -> str:
    """What a finished export wrote, file sizes measured."""
    size = sizes.format_bytes(sizes.disk_bytes(result))
    if kind != "gguf":
        return f"Saved {kind} to {result} ({size}, {seconds} s)."
    files = ", ".join(f"{p.name} ({sizes.format_bytes(p.stat().st_size)})" for p in sorted(result.glob("*.gguf")))
    merge = directory / GGUF_MERGE_FOLDER
    return (f"Saved gguf to {result}: {files or 'no .gguf file found'} ({seconds} s). The 16-bit merge it was "
            f"converted from stays in {merge} ({sizes.format_bytes(sizes.disk_bytes(merge))}): delete it if you "
            "only need the GGUF.")


def export_model(model: Any, tokenizer: Any, kind: str, directory: Path | str, gguf_method: str = "q4_k_m",
                 profile: Profile | None = None) -> ExportResult:
    """Save the model as "lora", "merged_16bit" or "gguf" if the disk has room; never raises; cleans up a failure."""
    if kind not in EXPORT_KINDS:
        raise ValueError(f"kind must be one of {EXPORT_KINDS}, not {kind!r}")
    directory = Path(os.path.abspath(Path(directory).expanduser()))
    start = time.monotonic()
    problem = _export_precheck(model, kind)
    if problem:
        return ExportResult(kind, False, None, 0.0, 0.0,
                            f"Not exported: {problem} It needs {_needs_text(model, kind, gguf_method, profile)}.")
    try:
        needs = planned_writes(model, kind, directory, gguf_method, profile)
    except (AttributeError, KeyError, TypeError, ValueError):
        needs = []  # a model sizes cannot read: export without the check rather than not at all
    short = find_shortfall(needs)
    if short is not None:
        return ExportResult(kind, False, None, 0.0, 0.0, shortfall_message(kind, short),
                            round(short.required / 1e9, 2), round(short.free / 1e9, 2))
    needed_gb = round(sum(n.bytes + safety_margin(n.bytes) for n in needs) / 1e9, 2) if needs else None
    before = _snapshot(directory)
    try:
        result = _write(model, tokenizer, kind, directory, gguf_method)
    except BaseException as exc:  # an optional export must not end the notebook, nor leave half a model behind
        removed = remove_new(before, directory)
        if not isinstance(exc, Exception):
            raise  # Ctrl-C / interrupt: cleaned up, then stop as asked
        cleaned = f" Removed what it had written ({', '.join(map(str, removed))})." if removed else ""
        return ExportResult(kind, False, None, 0.0, round(time.monotonic() - start, 1),
                            f"Export failed: {type(exc).__name__}: {str(exc)[:500]}.{cleaned} "
                            f"(It needs {_needs_text(model, kind, gguf_method, profile)}.)", needed_gb)
    seconds = round(time.monotonic() - start, 1)
    return ExportResult(kind, True, str(result), round(sizes.disk_bytes(result) / 1e6, 2), seconds,
                        _saved_message(kind, directory, result, seconds), needed_gb, None)


def export_flagged(model: Any, tokenizer: Any, wanted: Mapping[str, bool], directory: Path | str,
                   profile: Profile | None = None, gguf_method: str = "q4_k_m") -> list[str]:
    """Each kind switched on in `wanted` exported into directory/EXPORT_FOLDERS[kind]; one line per kind."""
    unknown = sorted(set(wanted) - set(EXPORT_KINDS))
    if unknown:
        raise ValueError(f"unknown export kinds {unknown}; the kinds are {EXPORT_KINDS}")
    return [export_model(model, tokenizer, kind, Path(directory) / EXPORT_FOLDERS[kind], gguf_method, profile).message
            if wanted.get(kind) else f"{kind}: off (EXPORT_{kind.upper()} = False)" for kind in EXPORT_KINDS]

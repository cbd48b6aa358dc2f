"""GRPO training: the config from the profile, live curves + metrics.csv, checkpoints and resume.

Resume only ever continues the same run: every checkpoint carries a run.json naming its run (a
fingerprint of the settings that shape the optimisation, not of bookkeeping such as max_steps), and
before training every checkpoint of another run is moved aside (never deleted) into a sibling
`checkpoints-previous/<timestamp>/` folder, so neither a step number nor a modification time can make
a resume, or the Trainer's rotation, touch another run.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import hashlib
import json
import os
import shutil
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from . import paths
from .chat_tokens import align_special_tokens
from .generation import uses_vllm
from .modeling import ADAPTER_INFO_FILE, import_unsloth, require_vllm, save_adapter
from .profiles import Profile

RewardFunc = Callable[..., list[float]]
METRICS_FILE = "metrics.csv"
CURVES_FILE = "reward_curves.png"
RUN_FILE = "run.json"  # in every checkpoint: which run it belongs to
CHECKPOINT_PREFIX = "checkpoint-"
PREVIOUS_SUFFIX = "-previous"  # <checkpoints>-previous/<timestamp>/: what was moved aside
REQUIRED_STATE_FILES = ("optimizer.pt", "scheduler.pt")  # the Trainer's, needed to continue the same run
# GRPOConfig values that do not change the optimisation: a run with other values is the same run. use_vllm,
# use_cpu and gradient_checkpointing say how a step is computed, not what: falling back from vLLM to HF
# generate (fast_inference=False) continues the same run.
BOOKKEEPING = frozenset({
    "output_dir", "max_steps", "logging_steps", "logging_first_step", "logging_strategy", "logging_dir",
    "save_strategy", "save_steps", "save_total_limit", "save_only_model", "report_to", "run_name",
    "disable_tqdm", "dataloader_num_workers", "use_cpu", "use_vllm", "gradient_checkpointing",
    "log_completions", "num_completions_to_print", "push_to_hub", "hub_model_id",
})
DRIVE_TRASH_NOTE = ("Checkpoints are on Google Drive: the Trainer keeps the newest {keep} and deletes older ones, "
                    "and Drive keeps what is deleted in its Trash, still counting against the 15 GB quota, for "
                    "30 days. To free that space, empty it: drive.google.com > Trash > Empty trash.")


def grpo_config_values(profile: Profile, output_dir: str | Path, reward_weights: Sequence[float] | None = None,
                       model: Any = None) -> dict[str, Any]:
    """GRPOConfig keyword arguments for the profile (before dropping what this TRL lacks).

    `use_vllm` follows the loaded model when one is given (it has a vLLM engine or not), else the profile."""
    import torch

    on_gpu = torch.cuda.is_available()
    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": profile.per_device_train_batch_size,
        "gradient_accumulation_steps": profile.gradient_accumulation_steps,
        "num_generations": profile.num_generations,
        "max_prompt_length": profile.max_prompt_length,
        "max_completion_length": profile.max_completion_length,
        "learning_rate": profile.learning_rate,
        "adam_beta1": 0.9,
        "adam_beta2": 0.99,  # DeepSeekMath's GRPO betas
        "weight_decay": profile.weight_decay,
        "warmup_ratio": profile.warmup_ratio,
        "lr_scheduler_type": profile.lr_scheduler_type,
        "optim": profile.optim,
        "max_grad_norm": profile.max_grad_norm,
        "beta": profile.beta,
        "temperature": profile.temperature,
        "max_steps": profile.max_steps,
        "logging_steps": profile.logging_steps,
        "save_strategy": "steps",
        "save_steps": profile.save_steps,
        "save_total_limit": profile.save_total_limit,
        "seed": profile.seed,
        "fp16": on_gpu and profile.dtype == "float16",
        "bf16": on_gpu and profile.dtype == "bfloat16",
        "use_cpu": not on_gpu,
        # Unsloth's trainer uses the model's own vLLM engine
        "use_vllm": uses_vllm(model) if model is not None else profile.fast_inference,
        "reward_weights": list(reward_weights) if reward_weights is not None else None,
        # Unsloth sets up LoRA checkpointing in get_peft_model; the Trainer's own (reentrant) kind on
        # top of it leaves the loss without gradients under TRL 0.22.2 (its GRPOConfig default is True).
        "gradient_checkpointing": False,
        "report_to": "none",
        "dataloader_num_workers": 0,
    }


def build_grpo_config(profile: Profile, output_dir: str | Path, reward_weights: Sequence[float] | None = None,
                      *, model: Any = None, **overrides: Any) -> Any:
    """A GRPOConfig for the installed TRL; arguments it does not know are dropped with a warning."""
    import_unsloth()
    from trl import GRPOConfig

    values = {**grpo_config_values(profile, output_dir, reward_weights, model), **overrides}
    known = {f.name for f in dataclasses.fields(GRPOConfig)}
    dropped = sorted(k for k in values if k not in known)
    if dropped:
        warnings.warn(f"This TRL's GRPOConfig does not know {', '.join(dropped)}: dropped them.", stacklevel=2)
    return GRPOConfig(**{k: v for k, v in values.items() if k in known})


def read_metrics(path: str | Path) -> "Any":
    """metrics.csv as a DataFrame of long rows: step, epoch, name, value, wall_time."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=["step", "epoch", "name", "value", "wall_time"])
    return pd.read_csv(path)


def _make_callback_class() -> type:
    from transformers import TrainerCallback

    class LiveMetricsCallback(TrainerCallback):
        """Append every logged metric to metrics.csv and redraw the reward curves while training."""

        def __init__(self, metrics_path: Path, png_path: Path, redraw_every_s: float = 15.0, window: int = 5):
            self.metrics_path, self.png_path = Path(metrics_path), Path(png_path)
            self.redraw_every_s, self.window = redraw_every_s, window
            self._last_draw = 0.0
            self._display = None

        def on_train_begin(self, args, state, control, **kwargs):
            self._last_draw = time.monotonic()  # the first curves are drawn once there is a trend

        def on_log(self, args, state, control, logs=None, **kwargs):
            numbers = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            if not numbers:
                return
            new_file = not self.metrics_path.exists()
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
            with self.metrics_path.open("a", newline="") as handle:
                writer = csv.writer(handle)
                if new_file:
                    writer.writerow(["step", "epoch", "name", "value", "wall_time"])
                now = round(time.time(), 3)
                writer.writerows([state.global_step, state.epoch, k, v, now] for k, v in numbers.items())
            if time.monotonic() - self._last_draw >= self.redraw_every_s:
                self.redraw()

        def on_train_end(self, args, state, control, **kwargs):
            self.redraw()

        def redraw(self) -> None:
            """Draw the curves from metrics.csv: inline in a notebook, and always to the PNG."""
            import matplotlib.pyplot as plt

            from .plotting import metrics_table, plot_training_curves

            self._last_draw = time.monotonic()
            table = metrics_table(read_metrics(self.metrics_path))
            if "reward" not in table.columns:
                return
            fig = plot_training_curves(table, window=self.window)
            fig.savefig(self.png_path, dpi=110)
            if _in_notebook():
                from IPython.display import display

                if self._display is None:
                    self._display = display(fig, display_id=True)
                else:
                    self._display.update(fig)
            plt.close(fig)

    return LiveMetricsCallback


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ in ("ZMQInteractiveShell", "Shell")


def live_metrics_callback(profile: Profile, redraw_every_s: float = 15.0) -> Any:
    """The callback writing <artifacts>/<profile>/metrics.csv and reward_curves.png."""
    folder = paths.profile_dir(profile.name)
    return _make_callback_class()(folder / METRICS_FILE, folder / CURVES_FILE, redraw_every_s=redraw_every_s)


# --- which run a checkpoint belongs to --------------------------------------------------------------

def default_rewards(reward_funcs: Sequence[RewardFunc] | None,
                    reward_weights: Sequence[float] | None) -> tuple[list[RewardFunc], list[float] | None]:
    """The reward functions and weights to train with: the given ones, else rewards.DEFAULT_REWARDS and weights."""
    from . import rewards

    if reward_funcs is None:
        return list(rewards.DEFAULT_REWARDS), list(rewards.DEFAULT_REWARD_WEIGHTS)
    return list(reward_funcs), list(reward_weights) if reward_weights is not None else None


def run_identity(profile: Profile, reward_funcs: Sequence[RewardFunc] | None = None,
                 reward_weights: Sequence[float] | None = None, **config_overrides: Any) -> dict[str, Any]:
    """What makes a run the same run: model, LoRA shape, data, rewards and every setting of the optimisation."""
    funcs, weights = default_rewards(reward_funcs, reward_weights)
    values = {**grpo_config_values(profile, "", weights), **config_overrides}
    targets = profile.lora_target_modules
    return {
        "profile": profile.name,
        "model": {"name": profile.model_name, "load_in_4bit": profile.load_in_4bit,
                  "warm_start_steps": profile.warm_start_steps},
        "lora": {"rank": profile.lora_rank, "alpha": profile.lora_alpha,
                 "target_modules": targets if isinstance(targets, str) else sorted(targets)},
        "data": {"source": profile.data_source, "train_limit": profile.train_limit},
        "rewards": [getattr(f, "__name__", type(f).__name__) for f in funcs],
        "grpo_config": {k: v for k, v in sorted(values.items()) if k not in BOOKKEEPING},
    }


def run_id(identity: dict[str, Any]) -> str:
    """A short fingerprint (16 hex digits) of a run identity."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def _make_run_callback_class() -> type:
    from transformers import TrainerCallback

    class RunCallback(TrainerCallback):
        """Write run.json into every checkpoint; stop, with a checkpoint, once global_step reaches `stop_after`."""

        def __init__(self, run: dict[str, Any], stop_after: int | None = None):
            self.run, self.stop_after = run, stop_after
            self.began = False  # True once the Trainer has loaded the checkpoint and starts stepping
            self.progress: list[Any] = []  # the trainer's callbacks, for the notebook progress bar fix below

        def on_train_begin(self, args, state, control, **kwargs):
            self.began = True

        def on_train_end(self, args, state, control, **kwargs):
            # transformers 4.56's notebook progress bar divides by None at the end of a run stopped before
            # max_steps after 2+ steps (a stop_after run in Colab); without an ETA it draws the bar plainly.
            if state.global_step < state.max_steps:
                for tracker in (getattr(cb, "training_tracker", None) for cb in self.progress):
                    if hasattr(tracker, "predicted_remaining"):
                        tracker.predicted_remaining = None

        def on_step_end(self, args, state, control, **kwargs):
            if self.stop_after is not None and state.global_step >= self.stop_after:
                control.should_save = control.should_training_stop = True
            if control.should_save:  # before the Trainer writes the checkpoint: no window without run.json
                self._write(args, state)

        def on_save(self, args, state, control, **kwargs):
            self._write(args, state)

        def _write(self, args, state) -> None:
            write_run_file(Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}", self.run,
                           state.global_step)

    return RunCallback


def run_callback(run: dict[str, Any], stop_after: int | None = None) -> Any:
    """The callback that writes run.json into each checkpoint and stops (checkpointed) at `stop_after`."""
    return _make_run_callback_class()(run, stop_after)


# --- complete checkpoints ---------------------------------------------------------------------------

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
    missing = [name for name in REQUIRED_STATE_FILES if not (folder / name).is_file()]
    if missing:
        return f"no {' or '.join(missing)}"
    for path in sorted(folder.iterdir()):
        problem = (safetensors_problem(path) if path.suffix == ".safetensors"
                   else torch_file_problem(path) if path.suffix in (".pt", ".pth", ".bin") else None)
        if problem:
            return problem
    return None


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

    Complete: trainer_state.json readable, weights whose size matches their header, optimizer.pt and
    scheduler.pt present and whole; a disconnect can leave a checkpoint half-written or half-uploaded."""
    for folder in checkpoint_folders(directory):
        if (run_id is None or checkpoint_run_id(folder) == run_id) and checkpoint_problem(folder) is None:
            return str(folder)
    return None


def checkpoints_dir_for(profile: Profile, config_overrides: dict[str, Any]) -> Path:
    """Where the trainer checkpoints: an `output_dir` override, else <artifacts>/<profile>/checkpoints."""
    return Path(config_overrides.get("output_dir") or paths.checkpoints_dir(profile.name))


def resume_step(profile: Profile, model: Any = None, reward_funcs: Sequence[RewardFunc] | None = None,
                reward_weights: Sequence[float] | None = None, **config_overrides: Any) -> int:
    """The step train_grpo(resume=True) with these arguments would continue from (0: it would start afresh).

    `model` is accepted to mirror train_grpo's arguments; the run identity does not depend on it."""
    identity = run_identity(profile, reward_funcs, reward_weights, **config_overrides)
    checkpoint = latest_checkpoint(checkpoints_dir_for(profile, config_overrides), run_id(identity))
    return checkpoint_step(checkpoint) if checkpoint else 0


# --- moving aside what a resume must not touch ------------------------------------------------------

def aside_folder(output_dir: Path) -> Path:
    """A fresh `<output_dir>-previous/<timestamp>` path (created on first use) for what one call moves aside."""
    root = output_dir.parent / f"{output_dir.name}{PREVIOUS_SUFFIX}"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, n = root / stamp, 2
    while candidate.exists():
        candidate, n = root / f"{stamp}-{n}", n + 1
    return candidate


def set_aside(items: Sequence[Path], destination: Path, reason: str) -> None:
    """Move files/folders into `destination` (never deleting them), with one line saying what, why and where."""
    items = [Path(item) for item in items if Path(item).exists()]
    if not items:
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
    runs (or of none: saved before checkpoints named their run) and this run's incomplete ones."""
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
    """Drop metrics.csv rows after `last_step` (and torn ones) before a resume redoes those steps; how many."""
    if not path.is_file():
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


def build_trainer(model: Any, tokenizer: Any, train_dataset: Any, profile: Profile,
                  reward_funcs: Sequence[Callable[..., list[float]]] | None = None,
                  reward_weights: Sequence[float] | None = None, callbacks: Sequence[Any] = (),
                  **config_overrides: Any) -> Any:
    """A TRL GRPOTrainer for the profile, checkpointing to <artifacts>/<profile>/checkpoints.

    vLLM is used when the model has a vLLM engine; a profile asking for vLLM without one is a
    VLLMUnavailableError, not a silently ~10x slower run."""
    require_vllm(model, profile)
    import_unsloth()
    from trl import GRPOTrainer

    reward_funcs, reward_weights = default_rewards(reward_funcs, reward_weights)
    config = build_grpo_config(profile, paths.checkpoints_dir(profile.name), reward_weights, model=model,
                               **config_overrides)
    align_sampling_defaults(model, config)
    # TRL stops and masks each completion at tokenizer.eos_token_id (one id) and Unsloth's loss takes
    # every pad id in a prompt for padding: both must match the chat template (chat_tokens.py).
    for change in align_special_tokens(tokenizer, model):
        print(f"Tokenizer: {change}")
    return GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=list(reward_funcs), args=config,
                       train_dataset=train_dataset, callbacks=list(callbacks))


def align_sampling_defaults(model: Any, config: Any) -> None:
    """Make HF generate sample at the config's temperature/top_p, as the GRPO loss assumes.

    transformers replaces generation settings left at their global defaults (temperature 1.0,
    top_p 1.0) with the model's own (Llama 3.1 ships 0.6 / 0.9), so TRL's HF-generate path would
    sample at 0.6 while scoring log-probs at the config's temperature: off-policy without a word.
    """
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.temperature = config.temperature
        generation_config.top_p = getattr(config, "top_p", 1.0)
        generation_config.top_k = getattr(config, "top_k", None) or 0  # 0 = off


@dataclass(frozen=True)
class TrainingResult:
    """What a training run left behind.

    Stopped by `stop_after` before max_steps: `stopped_early` is True and `adapter_dir` None (no adapter or
    card saved); `checkpoint` is where `train_grpo(..., resume=True)` continues this run."""

    adapter_dir: Path | None
    resumed_from: str | None
    global_step: int
    metrics_csv: Path
    curves_png: Path
    summary: dict[str, Any]
    stopped_early: bool = False
    run_id: str | None = None
    checkpoint: str | None = None  # the newest complete checkpoint of this run after training


def reward_summary(metrics_csv: str | Path, window: int = 10) -> dict[str, float]:
    """Mean total and per-function reward over the first and the last `window` logged steps."""
    from .plotting import metrics_table

    table = metrics_table(read_metrics(metrics_csv))
    summary: dict[str, float] = {}
    for column in [c for c in table.columns if c == "reward" or (c.startswith("rewards/") and c.endswith("/mean"))]:
        series = table[column].dropna()
        if len(series):
            summary[f"{column} first {window}"] = round(float(series.head(window).mean()), 4)
            summary[f"{column} last {window}"] = round(float(series.tail(window).mean()), 4)
    return summary


def training_summary(trainer: Any, profile: Profile, resumed_from: str | None, metrics_csv: Path,
                     run: dict[str, Any]) -> dict[str, Any]:
    """The adapter card: run, steps, rewards, the config as trained and the package versions."""
    from .install import installed_versions

    return {
        "profile": profile.name,
        "base_model": profile.model_name,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.args.max_steps,
        "resumed_from": resumed_from,
        "run_id": run["run_id"],
        "run": run["identity"],
        "rewards": [getattr(f, "__name__", str(f)) for f in trainer.reward_funcs],
        "reward_weights": list(trainer.args.reward_weights or []),
        "reward_summary": reward_summary(metrics_csv),
        "grpo_config": {k: getattr(trainer.args, k) for k in grpo_config_values(profile, "")
                        if k != "output_dir" and hasattr(trainer.args, k)},  # as trained, overrides included
        "versions": installed_versions(),
        "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line: `Type: message`."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _start_from(checkpoint: str | None, metrics: Any, destination: Path) -> None:
    """Before an attempt: metrics.csv cut back to the checkpoint's step, or moved aside for a run from scratch."""
    if checkpoint is None:
        set_aside([metrics.metrics_path, metrics.png_path], destination, "a run from scratch gets new curves")
        return
    step = checkpoint_step(checkpoint)
    dropped = truncate_metrics(metrics.metrics_path, step)
    redo = f"; dropped {dropped} metrics.csv rows after step {step}, redone now" if dropped else ""
    print(f"Resuming from {checkpoint} (the newest complete checkpoint of this run){redo}.")


def _train_from_newest(build: Callable[[], tuple[Any, Any]], candidates: list[str], metrics: Any,
                       destination: Path) -> tuple[Any, str | None]:
    """Train from the newest checkpoint that loads (none: from scratch); one that fails to load is moved aside."""
    remaining = list(candidates)
    while True:
        checkpoint = remaining.pop(0) if remaining else None
        _start_from(checkpoint, metrics, destination)
        trainer, run_cb = build()
        try:
            trainer.train(resume_from_checkpoint=checkpoint)
            return trainer, checkpoint
        except Exception as exc:
            if checkpoint is None or run_cb.began:  # training itself failed: not a loading problem
                raise
            set_aside([Path(checkpoint)], destination, f"failed to load: {_one_line(exc)}")
            if not remaining:  # the model may hold half-loaded weights: not a clean start from scratch
                raise RuntimeError(
                    f"No checkpoint of this run could be loaded (moved aside to {destination}). Restart the "
                    "runtime (Colab: Runtime > Restart session) and run this notebook again: training starts "
                    "from scratch.") from exc
            print(f"Falling back to {remaining[0]}.")
            del trainer
            gc.collect()


def train_grpo(model: Any, tokenizer: Any, train_dataset: Any, profile: Profile,
               reward_funcs: Sequence[Callable[..., list[float]]] | None = None,
               reward_weights: Sequence[float] | None = None, resume: bool = True,
               redraw_every_s: float = 15.0, callbacks: Sequence[Any] = (), stop_after: int | None = None,
               **config_overrides: Any) -> TrainingResult:
    """Train with GRPO, continuing this run from its newest complete checkpoint, then save the adapter and card.

    resume=False moves every checkpoint and the old curves aside and starts a new run. `stop_after`
    trains as usual (same config, max_steps and LR schedule) but stops once global_step reaches it (after
    at least one step), saving a checkpoint and no adapter: the result has stopped_early=True and
    adapter_dir=None, and a later call with resume=True continues this run to max_steps."""
    require_vllm(model, profile)  # before anything is moved or written
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after must be a step number >= 1 (or None), not {stop_after!r}")
    reward_funcs, reward_weights = default_rewards(reward_funcs, reward_weights)
    identity = run_identity(profile, reward_funcs, reward_weights, **config_overrides)
    run = {"run_id": run_id(identity), "identity": identity}
    output_dir = checkpoints_dir_for(profile, config_overrides)
    metrics = live_metrics_callback(profile, redraw_every_s)
    destination = aside_folder(output_dir)
    candidates = prepare_checkpoints(output_dir, run["run_id"], resume, destination,
                                     [metrics.metrics_path, metrics.png_path])
    if on_drive(output_dir):
        print(DRIVE_TRASH_NOTE.format(keep=config_overrides.get("save_total_limit", profile.save_total_limit)))

    def build() -> tuple[Any, Any]:
        run_cb = run_callback(run, stop_after)
        trainer = build_trainer(model, tokenizer, train_dataset, profile, reward_funcs, reward_weights,
                                callbacks=[metrics, run_cb, *callbacks], **config_overrides)
        run_cb.progress = list(trainer.callback_handler.callbacks)  # the progress bar comes after run_cb
        return trainer, run_cb

    trainer, checkpoint = _train_from_newest(build, candidates, metrics, destination)
    step, newest = trainer.state.global_step, latest_checkpoint(output_dir, run["run_id"])
    summary = training_summary(trainer, profile, checkpoint, metrics.metrics_path, run)
    if stop_after is not None and step < trainer.args.max_steps:
        print(f"Stopped at step {step} of {trainer.args.max_steps} (stop_after={stop_after}), checkpoint {newest}; "
              "no adapter saved yet: train_grpo(..., resume=True) continues this run.")
        return TrainingResult(None, checkpoint, step, metrics.metrics_path, metrics.png_path, summary,
                              stopped_early=True, run_id=run["run_id"], checkpoint=newest)
    adapter = paths.adapter_dir(profile.name)
    save_adapter(trainer.model, tokenizer, adapter)
    (adapter / ADAPTER_INFO_FILE).write_text(json.dumps(summary, indent=2, default=str))
    print(f"Saved the LoRA adapter and {ADAPTER_INFO_FILE} to {adapter}")
    return TrainingResult(adapter, checkpoint, step, metrics.metrics_path, metrics.png_path, summary,
                          run_id=run["run_id"], checkpoint=newest)

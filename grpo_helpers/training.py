"""GRPO training: the config from the profile, live curves + metrics.csv, checkpoints and resume."""

from __future__ import annotations

import csv
import dataclasses
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from . import paths
from .chat_tokens import align_special_tokens
from .modeling import ADAPTER_INFO_FILE, import_unsloth
from .profiles import Profile

METRICS_FILE = "metrics.csv"
CURVES_FILE = "reward_curves.png"


def grpo_config_values(profile: Profile, output_dir: str | Path, reward_weights: Sequence[float] | None = None) -> dict[str, Any]:
    """GRPOConfig keyword arguments for the profile (before dropping what this TRL lacks)."""
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
        "use_vllm": profile.fast_inference,  # Unsloth's trainer uses the model's own vLLM engine
        "reward_weights": list(reward_weights) if reward_weights is not None else None,
        # Unsloth sets up LoRA checkpointing in get_peft_model; the Trainer's own (reentrant) kind on
        # top of it leaves the loss without gradients under TRL 0.22.2 (its GRPOConfig default is True).
        "gradient_checkpointing": False,
        "report_to": "none",
        "dataloader_num_workers": 0,
    }


def build_grpo_config(profile: Profile, output_dir: str | Path, reward_weights: Sequence[float] | None = None,
                      **overrides: Any) -> Any:
    """A GRPOConfig for the installed TRL; arguments it does not know are dropped with a warning."""
    import_unsloth()
    from trl import GRPOConfig

    values = {**grpo_config_values(profile, output_dir, reward_weights), **overrides}
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


def latest_checkpoint(directory: str | Path) -> str | None:
    """The newest complete `checkpoint-N` folder in `directory` (None when there is none).

    A disconnect can cut a checkpoint off half-written; the Trainer writes trainer_state.json
    last, so a folder without it is skipped rather than crashing the resume."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    steps = [(int(p.name.split("-")[1]), p) for p in directory.glob("checkpoint-*")
             if p.name.split("-")[1].isdigit() and p.is_dir()]
    for _, folder in sorted(steps, reverse=True):
        if (folder / "trainer_state.json").is_file():
            return str(folder)
    return None


def build_trainer(model: Any, tokenizer: Any, train_dataset: Any, profile: Profile,
                  reward_funcs: Sequence[Callable[..., list[float]]] | None = None,
                  reward_weights: Sequence[float] | None = None, callbacks: Sequence[Any] = (),
                  **config_overrides: Any) -> Any:
    """A TRL GRPOTrainer for the profile, checkpointing to <artifacts>/<profile>/checkpoints."""
    import_unsloth()
    from trl import GRPOTrainer

    from . import rewards

    if reward_funcs is None:
        reward_funcs, reward_weights = rewards.DEFAULT_REWARDS, rewards.DEFAULT_REWARD_WEIGHTS
    config = build_grpo_config(profile, paths.checkpoints_dir(profile.name), reward_weights, **config_overrides)
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
    """What a training run left behind."""

    adapter_dir: Path
    resumed_from: str | None
    global_step: int
    metrics_csv: Path
    curves_png: Path
    summary: dict[str, Any]


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


def train_grpo(model: Any, tokenizer: Any, train_dataset: Any, profile: Profile,
               reward_funcs: Sequence[Callable[..., list[float]]] | None = None,
               reward_weights: Sequence[float] | None = None, resume: bool = True,
               redraw_every_s: float = 15.0, callbacks: Sequence[Any] = (),
               **config_overrides: Any) -> TrainingResult:
    """Train with GRPO, resuming from the newest checkpoint, then save the adapter and its JSON card."""
    from .install import installed_versions
    from .modeling import save_adapter

    callback = live_metrics_callback(profile, redraw_every_s)
    trainer = build_trainer(model, tokenizer, train_dataset, profile, reward_funcs, reward_weights,
                            callbacks=[callback, *callbacks], **config_overrides)
    checkpoint = latest_checkpoint(trainer.args.output_dir) if resume else None
    if checkpoint:
        print(f"Resuming from {checkpoint} (the newest checkpoint): earlier steps are not redone.")
    else:
        callback.metrics_path.unlink(missing_ok=True)  # a fresh run gets fresh curves
    trainer.train(resume_from_checkpoint=checkpoint)
    adapter = paths.adapter_dir(profile.name)
    save_adapter(trainer.model, tokenizer, adapter)
    summary = {
        "profile": profile.name,
        "base_model": profile.model_name,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.args.max_steps,
        "resumed_from": checkpoint,
        "rewards": [getattr(f, "__name__", str(f)) for f in trainer.reward_funcs],
        "reward_weights": list(trainer.args.reward_weights or []),
        "reward_summary": reward_summary(callback.metrics_path),
        "grpo_config": {k: getattr(trainer.args, k) for k in grpo_config_values(profile, "")
                        if k != "output_dir" and hasattr(trainer.args, k)},  # as trained, overrides included
        "versions": installed_versions(),
        "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (adapter / ADAPTER_INFO_FILE).write_text(json.dumps(summary, indent=2, default=str))
    print(f"Saved the LoRA adapter and {ADAPTER_INFO_FILE} to {adapter}")
    return TrainingResult(adapter, checkpoint, trainer.state.global_step, callback.metrics_path,
                          callback.png_path, summary)

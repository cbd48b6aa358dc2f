"""GRPO training: the GRPOConfig from the profile, the TRL trainer, and a resumable run saved as an adapter.

Which checkpoints belong to a run, and what is moved aside before training, is `checkpoints`; the
Trainer callbacks (live metrics, run.json) are `callbacks`.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from . import paths, rewards
from .callbacks import live_metrics_callback, read_metrics, run_callback
from .chat_tokens import align_special_tokens
from .checkpoints import (DRIVE_TRASH_NOTE, aside_folder, checkpoint_step, latest_checkpoint, on_drive,
                          prepare_checkpoints, set_aside, truncate_metrics)
from .generation import uses_vllm
from .install import installed_versions
from .modeling import ADAPTER_INFO_FILE, import_unsloth, require_vllm, save_adapter
from .plotting import metrics_table
from .profiles import Profile, ProfileError

RewardFunc = Callable[..., list[float]]
# GRPOConfig values that do not change the optimisation: a run with other values is the same run. use_vllm,
# use_cpu and gradient_checkpointing say how a step is computed, not what: falling back from vLLM to HF
# generate (fast_inference=False) continues the same run.
BOOKKEEPING = frozenset({
    "output_dir", "max_steps", "logging_steps", "logging_first_step", "logging_strategy", "logging_dir",
    "save_strategy", "save_steps", "save_total_limit", "save_only_model", "report_to", "run_name",
    "disable_tqdm", "dataloader_num_workers", "use_cpu", "use_vllm", "gradient_checkpointing",
    "log_completions", "num_completions_to_print", "push_to_hub", "hub_model_id",
})


def grpo_config_values(profile: Profile, output_dir: str | Path, reward_weights: Sequence[float] | None = None,
                       model: Any = None) -> dict[str, Any]:
    """GRPOConfig keyword arguments for the profile; TRL's defaults fill the rest.

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
        "adam_beta1": profile.adam_beta1,
        "adam_beta2": profile.adam_beta2,
        "weight_decay": profile.weight_decay,
        "warmup_ratio": profile.warmup_ratio,
        "lr_scheduler_type": profile.lr_scheduler_type,
        "optim": profile.optim,
        "max_grad_norm": profile.max_grad_norm,
        "loss_type": profile.loss_type,
        "epsilon": profile.epsilon,
        "num_iterations": profile.num_iterations,
        "scale_rewards": profile.scale_rewards,
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
    """TRL's GRPOConfig for the profile; an override GRPOConfig does not have is a ProfileError naming the valid ones."""
    import_unsloth()
    from trl import GRPOConfig

    known = {f.name for f in dataclasses.fields(GRPOConfig)}
    unknown = sorted(k for k in overrides if k not in known)
    if unknown:
        raise ProfileError(f"GRPOConfig (TRL {_trl_version()}) has no field {', '.join(map(repr, unknown))}. "
                           f"Valid names: {', '.join(sorted(known))}.")
    return GRPOConfig(**{**grpo_config_values(profile, output_dir, reward_weights, model), **overrides})


def _trl_version() -> str:
    import trl

    return trl.__version__


def default_rewards(reward_funcs: Sequence[RewardFunc] | None,
                    reward_weights: Sequence[float] | None) -> tuple[list[RewardFunc], list[float] | None]:
    """The reward functions and weights to train with: the given ones, else rewards.DEFAULT_REWARDS and weights."""
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






# --- complete checkpoints ---------------------------------------------------------------------------



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

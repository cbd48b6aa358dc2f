"""GRPO training: TRL's GRPOConfig from the profile, TRL's GRPOTrainer, and a resumable run saved as an adapter.

Notebook 04 builds the three in view: `grpo_config.build_grpo_config` (every field: `grpo_config.config_table`),
`build_trainer`, then `train_grpo(..., trainer=trainer)`. Which checkpoints are a run's: `checkpoints`; the
callbacks: `callbacks` and `watch`."""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from . import backends, paths, rewards
from .callbacks import live_metrics_callback, read_metrics, run_callback
from .chat_tokens import align_special_tokens
from .grpo_config import BOOKKEEPING, build_grpo_config, config_overrides, grpo_config_values, plain_value
from .checkpoints import (DRIVE_TRASH_NOTE, aside_folder, checkpoint_step, latest_checkpoint, on_drive,
                          prepare_checkpoints, set_aside, truncate_metrics)
from .install import installed_versions
from .modeling import ADAPTER_INFO_FILE, prepare_backend, require_vllm, save_adapter
from .plotting import metrics_table
from .profiles import Profile
from .runtime import NotebookStop
from .watch import watch_callback

RewardFunc = Callable[..., list[float]]
OWN_CALLBACKS = ("LiveMetricsCallback", "RunCallback")  # what build_trainer attaches (callbacks.py)
ATTACHED = (*OWN_CALLBACKS, "WatchCallback")  # ... and the watch (watch.py), when the profile has one


def default_rewards(reward_funcs: Sequence[RewardFunc] | None,
                    reward_weights: Sequence[float] | None) -> tuple[list[RewardFunc], list[float] | None]:
    """The reward functions and weights to train with: the given ones, else rewards.DEFAULT_REWARDS and weights."""
    if reward_funcs is None:
        return list(rewards.DEFAULT_REWARDS), list(rewards.DEFAULT_REWARD_WEIGHTS)
    return list(reward_funcs), list(reward_weights) if reward_weights is not None else None


def run_identity(profile: Profile, reward_funcs: Sequence[RewardFunc] | None = None,
                 reward_weights: Sequence[float] | None = None, config: Any = None,
                 **config_overrides_: Any) -> dict[str, Any]:
    """What makes a run the same run: model, LoRA shape, data, rewards and every setting of the optimisation,
    from `config` when given (a GRPOConfig, changes made to it included), else the profile's with the overrides."""
    funcs, weights = default_rewards(reward_funcs, reward_weights)
    if config is None:
        config = build_grpo_config(profile, config_overrides_.pop("output_dir", None), weights, **config_overrides_)
    values = {**{k: getattr(config, k) for k in grpo_config_values(profile, "")}, **config_overrides(config, profile)}
    targets = profile.lora_target_modules
    return {
        "profile": profile.name,
        "model": {"name": profile.model_name, "load_in_4bit": profile.load_in_4bit,
                  "warm_start_steps": profile.warm_start_steps},
        "lora": {"rank": profile.lora_rank, "alpha": profile.lora_alpha,
                 "target_modules": targets if isinstance(targets, str) else sorted(targets)},
        "data": {"source": profile.data_source, "train_limit": profile.train_limit},
        "rewards": [getattr(f, "__name__", type(f).__name__) for f in funcs],
        "processes": backends.world_size(),  # a step's batch is per_device_train_batch_size x processes
        "grpo_config": {k: plain_value(v) if not isinstance(v, list) else v
                        for k, v in sorted(values.items()) if k not in BOOKKEEPING},
    }


def run_id(identity: dict[str, Any]) -> str:
    """A short fingerprint (16 hex digits) of a run identity."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resume_step(profile: Profile, model: Any = None, reward_funcs: Sequence[RewardFunc] | None = None,
                reward_weights: Sequence[float] | None = None, config: Any = None, **config_overrides_: Any) -> int:
    """The step train_grpo(resume=True) with these arguments would continue from (0: afresh); `model` is unused."""
    funcs, weights = default_rewards(reward_funcs, reward_weights)
    if config is None:
        config = build_grpo_config(profile, config_overrides_.pop("output_dir", None), weights, **config_overrides_)
    checkpoint = latest_checkpoint(Path(config.output_dir), run_id(run_identity(profile, funcs, weights, config)))
    return checkpoint_step(checkpoint) if checkpoint else 0


def build_trainer(model: Any, tokenizer: Any, train_dataset: Any, profile: Profile,
                  reward_funcs: Sequence[RewardFunc] | None = None, reward_weights: Sequence[float] | None = None,
                  callbacks: Sequence[Any] = (), config: Any = None, redraw_every_s: float = 15.0,
                  **config_overrides_: Any) -> Any:
    """TRL's GRPOTrainer for the profile (or for `config`), with the live-curves, run-file and watch callbacks.
    A profile asking for vLLM with a model that has no vLLM engine is a VLLMUnavailableError, not a ~10x slower run."""
    require_vllm(model, profile)
    prepare_backend(profile)
    from trl import GRPOTrainer

    reward_funcs, reward_weights = default_rewards(reward_funcs, reward_weights)
    if config is None:
        config = build_grpo_config(profile, config_overrides_.pop("output_dir", None), reward_weights, model=model,
                                   **config_overrides_)
    elif config_overrides_:
        raise ValueError("build_trainer takes a config or config overrides, not both: pass the overrides to "
                         "build_grpo_config, or set them on the config.")
    identity = run_identity(profile, reward_funcs, reward_weights, config)
    run = run_callback({"run_id": run_id(identity), "identity": identity, "config": config})
    align_sampling_defaults(model, config)
    # TRL stops and masks each completion at tokenizer.eos_token_id (one id) and Unsloth's loss takes
    # every pad id in a prompt for padding: both must match the chat template (chat_tokens.py).
    for change in align_special_tokens(tokenizer, model):
        print(f"Tokenizer: {change}")
    # A copy: trainers change their args (Unsloth's sets top_k, use_vllm, ...); the run is the config as given.
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=list(reward_funcs),
                          args=copy.copy(config), train_dataset=train_dataset,
                          callbacks=[live_metrics_callback(profile, redraw_every_s), run,
                                     *filter(None, [watch_callback(profile, model, tokenizer)]), *callbacks])
    run.progress = list(trainer.callback_handler.callbacks)  # the progress bar comes after the run callback
    backends.finish_trainer(trainer, profile)  # "trl" backend: LoRA trainable after TRL's 4-bit preparation
    return trainer


def align_sampling_defaults(model: Any, config: Any) -> None:
    """Make HF generate sample at the config's temperature/top_p, as the GRPO loss assumes.

    transformers replaces settings left at their global defaults (temperature 1.0, top_p 1.0) with the model's
    own (Llama 3.1: 0.6 / 0.9): TRL would sample at 0.6 and score at the config's temperature, off-policy."""
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.temperature = config.temperature
        generation_config.top_p = getattr(config, "top_p", 1.0)
        generation_config.top_k = getattr(config, "top_k", None) or 0  # 0 = off


@dataclass(frozen=True)
class TrainingResult:
    """What a training run left behind. Stopped by `stop_after` before max_steps: `stopped_early` is True and
    `adapter_dir` None (no adapter or card yet); `checkpoint` is where `train_grpo(..., resume=True)` continues."""

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


class RewardDidNotRise(NotebookStop):
    """The reward at the end of training is not clearly above its start."""


def check_reward_rose(metrics_csv: str | Path) -> str:
    """One line comparing the mean logged reward of the run's first and last quarter; RewardDidNotRise unless the
    rise is more than twice its noise (the standard error of the difference, from the step-to-step spread)."""
    series = [float(v) for v in metrics_table(read_metrics(metrics_csv)).get("reward", []) if not math.isnan(v)]
    steps = len(series) // 4
    if steps < 2:
        raise ValueError(f"{metrics_csv} has {len(series)} logged rewards; comparing quarters needs at least 8.")
    first, last = series[:steps], series[-steps:]
    noise = math.sqrt((statistics.variance(first) + statistics.variance(last)) / steps)
    rise = statistics.mean(last) - statistics.mean(first)
    line = f"Mean reward, first {steps} logged steps {sum(first) / steps:.3f}, last {steps} {sum(last) / steps:.3f}: " \
           f"{rise:+.3f} (noise {noise:.3f})."
    if rise <= 2 * noise:
        raise RewardDidNotRise(line + " The adapter is saved but has likely learnt little. frac_reward_zero_std "
                               "near 1: raise temperature or num_generations; else learning_rate or MAX_STEPS.")
    return line


def training_summary(trainer: Any, profile: Profile, resumed_from: str | None, metrics_csv: Path,
                     run: dict[str, Any]) -> dict[str, Any]:
    """The adapter card: run, steps, rewards, the config as trained and the package versions."""
    fields = [*grpo_config_values(profile, ""), *run["identity"]["grpo_config"]]  # no GRPOConfig built after training
    return {
        "profile": profile.name, "base_model": profile.model_name,
        "global_step": trainer.state.global_step, "max_steps": trainer.args.max_steps, "resumed_from": resumed_from,
        "run_id": run["run_id"], "run": run["identity"],
        "rewards": [getattr(f, "__name__", str(f)) for f in trainer.reward_funcs],
        "reward_weights": list(trainer.args.reward_weights or []),
        "reward_summary": reward_summary(metrics_csv),
        "grpo_config": {k: getattr(trainer.args, k) for k in dict.fromkeys(fields)
                        if k != "output_dir" and hasattr(trainer.args, k)},  # as trained, overrides included
        "versions": installed_versions(), "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _own_callbacks(trainer: Any) -> tuple[Any, Any]:
    """The live-metrics and run callbacks build_trainer attached to `trainer`."""
    found = {type(cb).__name__: cb for cb in trainer.callback_handler.callbacks}
    if not set(OWN_CALLBACKS) <= set(found):
        raise ValueError("train_grpo(trainer=...) takes a trainer from training.build_trainer (curves, run file).")
    return found[OWN_CALLBACKS[0]], found[OWN_CALLBACKS[1]]


def _start_from(checkpoint: str | None, metrics: Any, destination: Path) -> None:
    """Before an attempt: metrics.csv cut back to the checkpoint's step, or moved aside for a run from scratch."""
    if checkpoint is None:
        set_aside([metrics.metrics_path, metrics.png_path], destination, "a run from scratch gets new curves")
        return
    step = checkpoint_step(checkpoint)
    dropped = truncate_metrics(metrics.metrics_path, step)
    redo = f"; dropped {dropped} metrics.csv rows after step {step}, redone now" if dropped else ""
    print(f"Resuming from {checkpoint} (the newest complete checkpoint of this run){redo}.")


def _train_from_newest(trainer: Any, rebuild: Callable[[Any], Any], candidates: list[str],
                       destination: Path) -> tuple[Any, str | None]:
    """Train from the newest checkpoint that loads (none: from scratch); one that fails to load is moved aside,
    and the next attempt gets `rebuild(trainer)`, a fresh trainer (a failed load can leave one half set up)."""
    remaining = list(candidates)
    while True:
        if not hasattr(trainer.accelerator.state, "distributed_type"):  # a GRPOConfig or Trainer made since reset it
            trainer = rebuild(trainer)
        checkpoint = remaining.pop(0) if remaining else None
        _start_from(checkpoint, _own_callbacks(trainer)[0], destination)
        try:
            trainer.train(resume_from_checkpoint=checkpoint)
            return trainer, checkpoint
        except Exception as exc:
            if checkpoint is None or _own_callbacks(trainer)[1].began:  # training itself failed: not a loading problem
                backends.release_engine(trainer)  # a next train_grpo in this process builds its own
                raise
            one_line = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
            set_aside([Path(checkpoint)], destination, f"failed to load: {one_line}")
            if not remaining:  # the model may hold half-loaded weights: not a clean start from scratch
                backends.release_engine(trainer)
                raise RuntimeError(
                    f"No checkpoint of this run could be loaded (moved aside to {destination}). Restart the "
                    "runtime (Colab: Runtime > Restart session) and run this notebook again: training starts "
                    "from scratch.") from exc
            print(f"Falling back to {remaining[0]}.")
            trainer = rebuild(trainer)
            gc.collect()


def train_grpo(model: Any, tokenizer: Any, train_dataset: Any, profile: Profile,
               reward_funcs: Sequence[RewardFunc] | None = None, reward_weights: Sequence[float] | None = None,
               resume: bool = True, redraw_every_s: float | None = None, callbacks: Sequence[Any] = (),
               stop_after: int | None = None, trainer: Any = None, **config_overrides_: Any) -> TrainingResult:
    """Train with GRPO, continuing this run from its newest complete checkpoint, then save the adapter and card.

    `trainer`: one from build_trainer, used once (else built from the profile, rewards and overrides).
    resume=False moves every checkpoint and the old curves aside: a new run. `stop_after` trains as usual (same
    max_steps and LR schedule) but stops, checkpointed, once global_step reaches it: no adapter yet
    (stopped_early=True, adapter_dir=None), and a later call with resume=True continues this run."""
    require_vllm(model, profile)  # before anything is moved or written
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after must be a step number >= 1 (or None), not {stop_after!r}")
    if trainer is None:
        trainer = build_trainer(model, tokenizer, train_dataset, profile, reward_funcs, reward_weights, callbacks,
                                redraw_every_s=15.0 if redraw_every_s is None else redraw_every_s, **config_overrides_)
    elif reward_funcs or reward_weights or callbacks or config_overrides_ or redraw_every_s is not None:
        raise ValueError("With trainer=..., rewards, callbacks, config and redraw_every_s come from the trainer: "
                         "pass them to training.build_trainer instead.")
    metrics, run_cb = _own_callbacks(trainer)
    if run_cb.began:
        raise ValueError("This trainer has trained already; build a new one with training.build_trainer.")
    run_cb.stop_after, run, config = stop_after, run_cb.run, run_cb.run["config"]
    output_dir = Path(config.output_dir)
    destination = aside_folder(output_dir)
    candidates = prepare_checkpoints(output_dir, run["run_id"], resume, destination,
                                     [metrics.metrics_path, metrics.png_path])
    if on_drive(output_dir):
        print(DRIVE_TRASH_NOTE.format(keep=config.save_total_limit))

    def rebuild(old: Any) -> Any:
        backends.release_engine(old)  # TRL's vLLM server takes one trainer's communicator at a time
        extra = [cb for cb in old.callback_handler.callbacks if type(cb).__name__ not in ATTACHED
                 and not type(cb).__module__.startswith(("transformers.", "trl.", "unsloth"))]
        fresh = build_trainer(model, tokenizer, train_dataset, profile, old.reward_funcs, config.reward_weights, extra,
                              config=config, redraw_every_s=metrics.redraw_every_s)
        _own_callbacks(fresh)[1].stop_after = stop_after
        return fresh

    trainer, checkpoint = _train_from_newest(trainer, rebuild, candidates, destination)
    backends.release_engine(trainer)  # trained: the next trainer in this process (pre-flight, then the run) generates
    step, newest = trainer.state.global_step, latest_checkpoint(output_dir, run["run_id"])
    summary = training_summary(trainer, profile, checkpoint, metrics.metrics_path, run)
    if stop_after is not None and step < trainer.args.max_steps:
        print(f"Stopped at step {step} of {trainer.args.max_steps} (stop_after={stop_after}), checkpoint {newest}; "
              "no adapter saved yet: train_grpo(..., resume=True) continues this run.")
        return TrainingResult(None, checkpoint, step, metrics.metrics_path, metrics.png_path, summary,
                              stopped_early=True, run_id=run["run_id"], checkpoint=newest)
    adapter = paths.adapter_dir(profile.name)
    if backends.deepspeed_zero_stage() == 3:  # partitioned weights: every process gathers, the main one saves
        backends.save_zero3_adapter(trainer.model, tokenizer, adapter)
    elif backends.is_main_process():  # one writer under accelerate launch; DDP keeps every process's weights equal
        save_adapter(trainer.model, tokenizer, adapter)
    if backends.is_main_process():
        (adapter / ADAPTER_INFO_FILE).write_text(json.dumps(summary, indent=2, default=str))
        print(f"Saved the LoRA adapter and {ADAPTER_INFO_FILE} to {adapter}")
    backends.wait_for_everyone()
    return TrainingResult(adapter, checkpoint, step, metrics.metrics_path, metrics.png_path, summary,
                          run_id=run["run_id"], checkpoint=newest)

"""Accuracy watched while training: a fixed set of held-out questions, scored greedily every N steps.

A reward curve alone can hide reward hacking: the reward climbs (or saturates) while the task gets
worse. The watch scores `profile.watch_questions` GSM8K test questions with notebook 05's scoring
(evaluation.score_reply: greedy, `eval_max_new_tokens`, the same system prompt) at step 0, every
`profile.watch_every_steps` steps and at the last step, and appends the rows `eval/strict_accuracy`,
`eval/lenient_accuracy`, `eval/format_rate` and `eval/watch_seconds` (its cost) to metrics.csv in the
live metrics callback's long format, so the live figure draws them beside the reward.

Which weights: on the HF path the PeftModel generates with its adapter on, as the last optimizer
step left it. On the vLLM path the engine holds only the base weights; Unsloth's
`model.load_lora(name, load_tensors=True)` builds a LoRARequest from the adapter tensors in memory at
that moment (what Unsloth's GRPO trainer does before each of its own generations), so vLLM answers
with the current LoRA. In standby mode Unsloth's patched `LLM.generate` wakes the engine; the watch
puts it back to sleep, as the trainer does after generating. The torch random state (CPU and CUDA) is
restored afterwards: on the HF path the run samples exactly what it would without the watch (tested on
CPU); vLLM's greedy requests carry their own seed and draw nothing from the run's stream.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import data, evaluation, paths
from .callbacks import METRICS_FILE, append_metric_rows
from .generation import SamplingSettings, uses_vllm
from .profiles import Profile

WATCH_PREFIX = "eval/"
WATCH_METRICS = tuple(WATCH_PREFIX + m for m in evaluation.RATE_METRICS)  # eval/strict_accuracy, ...
WATCH_SECONDS = WATCH_PREFIX + "watch_seconds"
WATCH_LORA_DIR = Path(tempfile.gettempdir()) / "grpo_watch_lora"  # where Unsloth's load_lora writes the LoRA config


def watch_dataset(profile: Profile) -> list[dict[str, Any]]:
    """The last `watch_questions` questions of the whole test split: held out, and not notebook 05's first ones."""
    test = data.load_gsm8k("test", profile.replace(test_limit=None))
    first = max(0, len(test) - profile.watch_questions)
    return [{**test[i], "index": i} for i in range(first, len(test))]


def watch_steps(profile: Profile, max_steps: int | None = None) -> list[int]:
    """The steps the watch scores at: 0, every watch_every_steps, and the last."""
    last = profile.max_steps if max_steps is None else max_steps
    return sorted({0, last} | set(range(profile.watch_every_steps, last, profile.watch_every_steps)))


def _sleep_if_standby(model: Any) -> None:
    """Put a vLLM engine in sleep mode back to sleep (Unsloth's standby), as the GRPO trainer does after generating."""
    engine = getattr(model, "vllm_engine", None)
    config = getattr(getattr(getattr(engine, "llm_engine", None), "vllm_config", None), "model_config", None)
    if getattr(config, "enable_sleep_mode", False):
        engine.sleep(int(os.environ.get("VLLM_SLEEP_MODE", "1")))


def score_held_out(model: Any, tokenizer: Any, questions: Sequence[Mapping[str, Any]], settings: SamplingSettings,
                   batch_size: int = 16) -> dict[str, float]:
    """eval/strict_accuracy, eval/lenient_accuracy and eval/format_rate of the model as it is now."""
    import torch

    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []  # this process's GPU only
    with torch.random.fork_rng(devices=devices):  # the training run's random stream is left as it was
        lora_request = None
        if uses_vllm(model):
            lora_request = model.load_lora(str(WATCH_LORA_DIR), load_tensors=True)  # the LoRA tensors as of now
        try:
            rows = evaluation.evaluate_gsm8k(model, tokenizer, questions, settings, batch_size, lora_request)
        finally:
            if uses_vllm(model):
                _sleep_if_standby(model)
    summary = evaluation.summarize(rows)
    return {WATCH_PREFIX + m: summary[m] for m in evaluation.RATE_METRICS}


def _make_watch_class() -> type:
    from transformers import TrainerCallback

    class WatchCallback(TrainerCallback):
        """Score the held-out questions at step 0, every `every` steps and at the last step; rows into metrics.csv."""

        def __init__(self, model: Any, tokenizer: Any, questions: list[dict[str, Any]], settings: SamplingSettings,
                     profile: Profile, batch_size: int, metrics_path: Path):
            self.model, self.tokenizer, self.questions, self.settings = model, tokenizer, questions, settings
            self.profile, self.batch_size, self.metrics_path = profile, batch_size, metrics_path
            self._due: set[int] = set()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Fix the schedule for this run's max_steps; watch at step 0 (main process only, as the live metrics).

            A resumed run has its earlier watches in metrics.csv already."""
            self._due = set(watch_steps(self.profile, state.max_steps))
            if state.global_step == 0 and state.is_world_process_zero:
                self.watch(state)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Watch when this step is one of watch_steps (main process only)."""
            if state.global_step in self._due and state.is_world_process_zero:
                self.watch(state)

        def watch(self, state: Any) -> dict[str, float]:
            """Score now, append the rows to metrics.csv and the trainer's log history, print one line."""
            start = time.monotonic()
            values = score_held_out(self.model, self.tokenizer, self.questions, self.settings, self.batch_size)
            values[WATCH_SECONDS] = round(time.monotonic() - start, 2)
            append_metric_rows(self.metrics_path, state.global_step, state.epoch or 0.0, values)
            state.log_history.append({**values, "step": state.global_step})
            strict, lenient, form = (values[m] for m in WATCH_METRICS)
            print(f"Watch at step {state.global_step}: strict {strict:.0%}, lenient {lenient:.0%}, format "
                  f"{form:.0%} on {len(self.questions)} held-out questions ({values[WATCH_SECONDS]:.1f} s)")
            return values

    return WatchCallback


def watch_callback(profile: Profile, model: Any, tokenizer: Any,
                   questions: Sequence[Mapping[str, Any]] | None = None) -> Any:
    """The TrainerCallback watching held-out accuracy during training; None when profile.watch_questions is 0."""
    if profile.watch_questions <= 0:
        return None
    if profile.watch_every_steps < 1:
        raise ValueError(f"watch_every_steps must be 1 or more, not {profile.watch_every_steps}: set it with "
                         "profile.replace(watch_every_steps=...), or watch_questions=0 to turn the watch off.")
    records = [dict(q) for q in questions] if questions is not None else watch_dataset(profile)
    settings = SamplingSettings(max_new_tokens=profile.eval_max_new_tokens, temperature=0.0, seed=profile.seed)
    print(f"Watching held-out accuracy while training: {len(records)} test questions, greedy, at step 0, every "
          f"{profile.watch_every_steps} steps and at the last (profile.watch_questions, watch_every_steps).")
    return _make_watch_class()(model, tokenizer, records, settings, profile, profile.eval_batch_size, paths.profile_dir(profile.name) / METRICS_FILE)

"""The pre-flight before the long run: a few real GRPO steps, measured, then a verdict on time and memory.

The steps are checkpointed as steps of the same run, so training continues from them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from transformers import TrainerCallback

from . import training
from .modeling import memory_in_use_gb, torch_peak_gb
from .profiles import Profile
from .runtime import NotebookStop

class PreflightError(NotebookStop):
    """The long run will not fit this runtime as configured; the message says what to change."""


MEMORY_HEADROOM = 0.95  # a peak above this share of the device's memory is one long answer from an OOM
SESSION_MARGIN = 0.85  # plan to finish within this share of the session budget (reconnects, evaluation)


class StepMeter(TrainerCallback):
    """Times every optimizer step and samples memory at each step's end (GPU: device-wide, CPU: RSS)."""

    def __init__(self) -> None:
        self.step_seconds: list[float] = []
        self.device_used_gb: list[float] = []
        self._started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_seconds.append(time.monotonic() - self._started)
        self.device_used_gb.append(memory_in_use_gb()[0])


@dataclass(frozen=True)
class PreflightReport:
    """What the pre-flight measured and what it concludes."""

    profile: str
    steps_measured: int
    seconds_per_step: float
    steps_done: int
    max_steps: int
    peak_in_use_gb: float
    total_gb: float
    torch_peak_gb: float | None
    session_budget_hours: float
    advice: list[str] = field(default_factory=list)

    @property
    def projected_hours(self) -> float:
        """Hours the remaining steps take at the measured pace."""
        return self.seconds_per_step * max(self.max_steps - self.steps_done, 0) / 3600

    @property
    def fits(self) -> bool:
        """True when time and memory both look safe for the long run."""
        return not self.advice

    def stop_if_unfit(self) -> None:
        """Raise PreflightError with the summary when time or memory will not fit (a notebook's stop)."""
        if not self.fits:
            raise PreflightError(self.summary() + "\nTo train anyway, set PREFLIGHT = False.")

    def summary(self) -> str:
        """A few lines a notebook prints: pace, memory, projection, verdict and what to change."""
        where = "GPU (whole device)" if self.torch_peak_gb is not None else "CPU (this process)"
        torch_part = f"; torch's own peak {self.torch_peak_gb:.1f} GB" if self.torch_peak_gb is not None else ""
        lines = [
            f"Pre-flight on profile {self.profile!r}: {self.steps_measured} GRPO steps measured, "
            f"{self.seconds_per_step:.1f} s per step.",
            f"Memory, {where}: {self.peak_in_use_gb:.1f} GB in use at its highest step end, of "
            f"{self.total_gb:.1f} GB{torch_part}.",
            f"Projected: {self.max_steps - self.steps_done} more steps x {self.seconds_per_step:.1f} s = "
            f"{self.projected_hours:.2f} h (session budget {self.session_budget_hours:g} h).",
        ]
        if self.fits:
            lines.append("Verdict: fits. Training continues from the pre-flight's checkpoint.")
        else:
            lines += ["Verdict: does NOT fit as configured. Change the parameters cell, then run again:",
                      *(f"  - {item}" for item in self.advice)]
        return "\n".join(lines)


def verdict(profile: Profile, seconds_per_step: float, steps_done: int, peak_in_use_gb: float,
            total_gb: float) -> list[str]:
    """What to change, in order of effect (empty when time and memory fit)."""
    advice = []
    remaining_h = seconds_per_step * max(profile.max_steps - steps_done, 0) / 3600
    budget_h = profile.session_budget_hours * SESSION_MARGIN
    if remaining_h > budget_h:
        fitting = steps_done + int(budget_h * 3600 / max(seconds_per_step, 1e-9))
        advice.append(f"time: {remaining_h:.1f} h left is more than {budget_h:.1f} h ({SESSION_MARGIN:.0%} of the "
                      f"{profile.session_budget_hours:g} h session). Set MAX_STEPS = {fitting}, or lower "
                      f"num_generations ({profile.num_generations}) or max_completion_length "
                      f"({profile.max_completion_length}): a step costs about their product. Checkpoints let a "
                      "second session finish the run.")
    if peak_in_use_gb > MEMORY_HEADROOM * total_gb:
        advice.append(f"memory: {peak_in_use_gb:.1f} of {total_gb:.1f} GB in use. Lower max_completion_length "
                      f"({profile.max_completion_length}) or num_generations ({profile.num_generations})"
                      + (f", or gpu_memory_utilization ({profile.gpu_memory_utilization})"
                         if profile.fast_inference else "") + ".")
    return advice


def run_preflight(model: Any, tokenizer: Any, train_dataset: Any, profile: Profile, resume: bool = True,
                  reward_funcs: Sequence[Callable[..., list[float]]] | None = None,
                  redraw_every_s: float = 15.0) -> PreflightReport:
    """Train `profile.preflight_steps` real steps (checkpointed), measure them and judge the long run."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    meter = StepMeter()
    start_step = training.resume_step(profile, model, reward_funcs=reward_funcs) if resume else 0
    result = training.train_grpo(model, tokenizer, train_dataset, profile, reward_funcs=reward_funcs, resume=resume,
                                 redraw_every_s=redraw_every_s, callbacks=[meter],
                                 stop_after=start_step + profile.preflight_steps)
    timed = meter.step_seconds[1:] or meter.step_seconds  # the first step also pays for compilation and warm-up
    seconds = sum(timed) / len(timed) if timed else math.nan
    peak = max(meter.device_used_gb, default=0.0)
    total = memory_in_use_gb()[1]
    return PreflightReport(profile.name, len(meter.step_seconds), seconds, result.global_step, profile.max_steps,
                           peak, total, torch_peak_gb(), profile.session_budget_hours,
                           verdict(profile, seconds, result.global_step, peak, total))

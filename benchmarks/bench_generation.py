"""Batched against one-by-one generation on the tiny model, and the sandbox's overhead per program.

    python benchmarks/bench_generation.py [--questions 32] [--repeats 3] [--threads N] [--sandbox-runs 30]

Generation: the same GSM8K-style prompts, the same greedy settings, through
grpo_helpers.generation.generate_completions (the HF path notebook 05 uses on CPU) once with
batch_size = all questions and once with batch_size = 1, interleaved `--repeats` times; prints
the median wall time of each, the ratio, and how many replies are identical both ways (left
padding can change a greedy reply by a rounding difference).
Sandbox: median and p90 of run_python("print(1)"), of a bare `python -c "print(1)"` and of the
reference BBP program notebook 05 calibrates with.
Uses $GRPO_ARTIFACTS (else ./outputs) to cache the tiny model.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _p90(values: list[float]) -> float:
    """The 90th percentile (the largest value when there are few)."""
    return statistics.quantiles(values, n=10)[-1] if len(values) >= 2 else values[0]


def bench_generation(questions: int, repeats: int) -> None:
    """Batched vs one-by-one HF generation on the tiny profile's model."""
    import torch

    from grpo_helpers import data, modeling
    from grpo_helpers.generation import SamplingSettings, generate_completions
    from grpo_helpers.profiles import get_profile

    profile = get_profile("tiny", quiet=True)
    model, tokenizer = modeling.load_base_model(profile)
    prompts = [data.format_prompt(r["question"]) for r in data.synthetic_gsm8k(questions, seed=99)]
    settings = SamplingSettings(max_new_tokens=profile.eval_max_new_tokens, seed=profile.seed)
    generate_completions(model, tokenizer, prompts[:2], settings, batch_size=2)  # warm-up
    timings: dict[str, list[float]] = {"batched": [], "one_by_one": []}
    replies: dict[str, list[str]] = {}
    for _ in range(repeats):  # interleaved: both see the same machine load
        for name, batch_size in (("batched", questions), ("one_by_one", 1)):
            start = time.perf_counter()
            out = generate_completions(model, tokenizer, prompts, settings, batch_size=batch_size)
            timings[name].append(time.perf_counter() - start)
            replies[name] = [group[0].text for group in out]
            tokens = sum(group[0].num_tokens for group in out)
    same = sum(a == b for a, b in zip(replies["batched"], replies["one_by_one"]))
    print(f"tiny model, {questions} prompts, greedy, max_new_tokens={settings.max_new_tokens}, "
          f"{tokens} tokens generated, torch threads={torch.get_num_threads()}, {repeats} repeats")
    print(f"{'':28}{'median s':>10}{'min s':>10}{'tokens/s':>10}")
    for name, values in timings.items():
        print(f"{name:28}{statistics.median(values):10.2f}{min(values):10.2f}{tokens / statistics.median(values):10.0f}")
    ratio = statistics.median(timings["one_by_one"]) / statistics.median(timings["batched"])
    print(f"{'ratio one_by_one / batched':28}{ratio:10.1f}")
    print(f"identical replies both ways: {same}/{questions}")


def bench_sandbox(runs: int) -> None:
    """Time run_python on print(1) and on the reference BBP program, against a bare interpreter."""
    from grpo_helpers import pi_eval, pi_programs, sandbox

    bbp = pi_programs.extract_python_code(pi_eval.REFERENCE_PI_REPLIES["BBP series (correct)"])
    report = sandbox.isolation_report()
    rows: dict[str, list[float]] = {"run_python('print(1)')": [], "bare python -c 'print(1)'": [],
                                    "run_python(BBP program, site)": []}
    for _ in range(runs):
        start = time.perf_counter()
        assert sandbox.run_python("print(1)").stdout == "1\n"
        rows["run_python('print(1)')"].append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True, check=True)
        rows["bare python -c 'print(1)'"].append(time.perf_counter() - start)
        start = time.perf_counter()
        assert sandbox.run_python(bbp, site_packages=True).stdout.startswith("3.14159265358979")
        rows["run_python(BBP program, site)"].append(time.perf_counter() - start)
    print(f"sandbox, {runs} runs each; isolation: "
          + ", ".join(k for k, v in report.items() if v is True and k != "running_as_root"))
    print(f"{'':32}{'median ms':>10}{'p90 ms':>10}")
    for name, values in rows.items():
        print(f"{name:32}{statistics.median(values) * 1e3:10.1f}{_p90(values) * 1e3:10.1f}")
    overhead = statistics.median(rows["run_python('print(1)')"]) - statistics.median(rows["bare python -c 'print(1)'"])
    print(f"{'sandbox overhead per run':32}{overhead * 1e3:10.1f}")


def main() -> None:
    """Run both benchmarks and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--sandbox-runs", type=int, default=30)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(f"python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    bench_generation(args.questions, args.repeats)
    bench_sandbox(args.sandbox_runs)


if __name__ == "__main__":
    main()

"""Overhead of grpo_helpers.sandbox.run_python against a bare subprocess, side by side.

    python benchmarks/bench_sandbox.py [--runs 50] [--compare-with OLD_SANDBOX.py]

Prints median and p90 wall time of run_python("print(1)") and of
subprocess.run([sys.executable, "-c", "print(1)"]), interleaved in the same run, and their ratio.
A third row runs the bare interpreter with the sandbox's flags (-I -S: no site-packages, which
is most of a plain start-up), so the ratio to it is the cost of the isolation itself, and the
last row that cost per run in milliseconds. --compare-with times another version of the
sandbox module in the same loop (e.g. `git show v0.2.0:grpo_helpers/sandbox.py > /tmp/old.py`,
when that version is a single stdlib-only file), for a before/after on the same machine load.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo_helpers.sandbox import isolation_report, run_python  # noqa: E402


def _p90(values: list[float]) -> float:
    """The 90th percentile."""
    return statistics.quantiles(values, n=10)[-1]


def main() -> None:
    """Time both ways of running print(1) and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--compare-with", type=Path, help="another sandbox module file, timed alongside")
    args = parser.parse_args()

    report = isolation_report()  # also warms the caches
    run_python("print(1)")
    subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True, check=True)
    other = None
    if args.compare_with:
        spec = importlib.util.spec_from_file_location("compared_sandbox", args.compare_with)
        assert spec is not None and spec.loader is not None, args.compare_with
        other = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
        spec.loader.exec_module(other)
        other.run_python("print(1)")

    sandbox: list[float] = []
    compared: list[float] = []
    bare: list[float] = []
    bare_isolated: list[float] = []
    for _ in range(args.runs):  # interleaved, so all see the same machine load
        start = time.perf_counter()
        result = run_python("print(1)")
        sandbox.append(time.perf_counter() - start)
        assert result.stdout == "1\n", result
        if other is not None:
            start = time.perf_counter()
            assert other.run_python("print(1)").stdout == "1\n"
            compared.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True, check=True)
        bare.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-S", "-c", "print(1)"], capture_output=True, check=True)
        bare_isolated.append(time.perf_counter() - start)

    print(f"python {platform.python_version()} on {platform.platform()}, {args.runs} runs each")
    print("isolation: " + ", ".join(f"{k}={v}" for k, v in report.items() if isinstance(v, bool)))
    print(f"layers: {report['layers']}")
    print(f"{'':36}{'median ms':>10}{'p90 ms':>10}")
    rows = [("run_python('print(1)')", sandbox), ("subprocess.run(python -c ...)", bare),
            ("subprocess.run(python -I -S -c)", bare_isolated)]
    if compared:
        rows.insert(1, (f"{args.compare_with.name}: run_python", compared))
    for name, values in rows:
        print(f"{name:36}{statistics.median(values) * 1e3:10.1f}{_p90(values) * 1e3:10.1f}")
    for name, values in (("ratio sandbox / bare", bare), ("ratio sandbox / bare -I -S", bare_isolated)):
        print(f"{name:36}{statistics.median(sandbox) / statistics.median(values):10.2f}"
              f"{_p90(sandbox) / _p90(values):10.2f}")
    for name, values in [("overhead per run (ms), this sandbox", sandbox)] + (
            [(f"overhead per run (ms), {args.compare_with.name}", compared)] if compared else []):
        print(f"{name:36}{(statistics.median(values) - statistics.median(bare_isolated)) * 1e3:10.1f}"
              f"{(_p90(values) - _p90(bare_isolated)) * 1e3:10.1f}")


if __name__ == "__main__":
    main()

"""Overhead of grpo_helpers.sandbox.run_python against a bare subprocess, side by side.

    python benchmarks/bench_sandbox.py [--runs 50]

Prints median and p90 wall time of run_python("print(1)") and of
subprocess.run([sys.executable, "-c", "print(1)"]), interleaved in the same run, and their ratio.
A third row runs the bare interpreter with the sandbox's flags (-I -S: no site-packages, which
is most of a plain start-up), so the ratio to it is the cost of the isolation itself.
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args()

    report = isolation_report()  # also warms the caches
    run_python("print(1)")
    subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True, check=True)

    sandbox: list[float] = []
    bare: list[float] = []
    bare_isolated: list[float] = []
    for _ in range(args.runs):  # interleaved, so all see the same machine load
        start = time.perf_counter()
        result = run_python("print(1)")
        sandbox.append(time.perf_counter() - start)
        assert result.stdout == "1\n", result
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True, check=True)
        bare.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-S", "-c", "print(1)"], capture_output=True, check=True)
        bare_isolated.append(time.perf_counter() - start)

    print(f"python {platform.python_version()} on {platform.platform()}, {args.runs} runs each")
    print("isolation: " + ", ".join(f"{k}={v}" for k, v in report.items() if isinstance(v, bool)))
    print(f"{'':32}{'median ms':>10}{'p90 ms':>10}")
    rows = (("run_python('print(1)')", sandbox), ("subprocess.run(python -c ...)", bare),
            ("subprocess.run(python -I -S -c)", bare_isolated))
    for name, values in rows:
        print(f"{name:32}{statistics.median(values) * 1e3:10.1f}{_p90(values) * 1e3:10.1f}")
    for name, values in (("ratio sandbox / bare", bare), ("ratio sandbox / bare -I -S", bare_isolated)):
        print(f"{name:32}{statistics.median(sandbox) / statistics.median(values):10.2f}"
              f"{_p90(sandbox) / _p90(values):10.2f}")


if __name__ == "__main__":
    main()

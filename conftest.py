"""Repo-wide pytest hooks: print how long each notebook took to execute."""

from __future__ import annotations

_notebook_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report):
    if report.when == "call" and report.nodeid.endswith(".ipynb"):
        _notebook_seconds[report.nodeid] = report.duration


def pytest_terminal_summary(terminalreporter):
    if _notebook_seconds:
        terminalreporter.section("notebook run times")
        for nodeid, seconds in _notebook_seconds.items():
            terminalreporter.write_line(f"{seconds:7.1f} s  {nodeid}")

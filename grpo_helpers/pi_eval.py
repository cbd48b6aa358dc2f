"""The pi before/after: prompts that name a method, each reply's program judged and run in the sandbox.

Per sampled reply: the Python code block is extracted, classified (which method), checked for
cheating (math.pi and friends), run in the sandbox, and its output scored digit by digit.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from . import data, memory_cap, pi_programs, rewards, sandbox
from .evaluation import OUTPUT_EXCERPT_CHARS, SIDES
from .generation import SamplingSettings, generate_completions

if TYPE_CHECKING:
    import pandas as pd

PI_RESULTS_FILE = "pi_comparison.json"

@dataclass(frozen=True)
class PiPrompt:
    """A request for a pi program that names the method it wants."""

    id: str
    method: str  # what classify_pi_method should find in a program that follows the request
    text: str


PI_PROMPTS: tuple[PiPrompt, ...] = (
    PiPrompt("bbp", "bbp", "Write a Python program that calculates pi with the Bailey-Borwein-Plouffe formula "
                           "and prints only the value of pi, to 15 decimal places."),
    PiPrompt("machin", "machin", "Write a Python program that calculates pi with Machin's formula and prints "
                                 "only the value of pi, to 15 decimal places."),
    PiPrompt("leibniz", "leibniz", "Write a Python program that estimates pi with the Leibniz series and prints "
                                   "only the estimate."),
    PiPrompt("monte_carlo", "monte_carlo", "Write a Python program that estimates pi with a Monte Carlo simulation "
                                           "and prints only the estimate."),
)

# Hand-written replies with known outcomes: they calibrate the pipeline on every profile (the tiny
# model writes no code) and the tests score them.
_BBP_PROGRAM = '''from fractions import Fraction

def bbp_pi(terms):
    total = Fraction(0)
    for k in range(terms):
        total += Fraction(1, 16 ** k) * (Fraction(4, 8 * k + 1) - Fraction(2, 8 * k + 4)
                                         - Fraction(1, 8 * k + 5) - Fraction(1, 8 * k + 6))
    return total

pi = bbp_pi(14)
print(f"{float(pi):.15f}")
'''
_MONTE_CARLO_PROGRAM = '''import random

random.seed(0)
n = 200_000
inside = sum(1 for _ in range(n) if random.random() ** 2 + random.random() ** 2 <= 1.0)
print(4 * inside / n)
'''
REFERENCE_PI_REPLIES: dict[str, str] = {
    "BBP series (correct)": ("<reasoning>\nThe BBP formula sums 16^-k (4/(8k+1) - 2/(8k+4) - 1/(8k+5) - 1/(8k+6)); "
                             "exact fractions avoid rounding.\n```python\n" + _BBP_PROGRAM + "```\n</reasoning>\n"
                             "<answer>\n3.141592653589793\n</answer>"),
    "Monte Carlo": "Here is a simulation:\n```python\n" + _MONTE_CARLO_PROGRAM + "```",
    "math.pi (cheat)": "```python\nimport math\nprint(f'{math.pi:.15f}')\n```",
}


def pi_messages(prompt: PiPrompt | str, system_prompt: str = data.SYSTEM_PROMPT) -> list[dict[str, str]]:
    """The chat messages for a pi prompt: the same system prompt as GSM8K, then the request."""
    return data.format_prompt(prompt.text if isinstance(prompt, PiPrompt) else prompt, system_prompt)


def extract_program(reply: str) -> tuple[str | None, str | None]:
    """(code, where): a fenced code block ("fenced"), else an <answer> that is a Python program ("answer_tag")."""
    code = pi_programs.extract_python_code(reply)
    if code is not None:
        return code, "fenced"
    answer = rewards.extract_xml_answer(reply)
    if answer and "print" in answer:
        try:
            ast.parse(answer)
        except (SyntaxError, ValueError):
            return None, None
        return answer + "\n", "answer_tag"
    return None, None


def score_pi_reply(reply: str, asked_method: str | None = None, timeout_s: float = 10.0,
                   memory_mb: int = 1024) -> dict[str, Any]:
    """Extract, classify, check for cheating, run in the sandbox and count pi's digits for one reply."""
    code, where = extract_program(reply)
    row: dict[str, Any] = {"has_code": code is not None, "code_source": where, "method": None,
                           "follows_method": False, "cheat_reason": None, "ran_ok": False, "timed_out": False,
                           "returncode": None, "digits_correct": 0, "honest_digits": 0, "stdout": "",
                           "stderr": "", "run_seconds": 0.0, "code": code}
    if code is None:
        return row
    method = pi_programs.classify_pi_method(code)
    cheat = pi_programs.pi_cheat_reason(code)
    result = sandbox.run_python(code, timeout_s=timeout_s, memory_mb=memory_mb, site_packages=True)
    digits = pi_programs.pi_digits_correct(result.stdout)
    row.update(method=method, follows_method=asked_method is not None and method == asked_method, cheat_reason=cheat,
               ran_ok=result.ok, timed_out=result.timed_out, returncode=result.returncode, digits_correct=digits,
               honest_digits=digits if result.ok and cheat is None else 0,
               stdout=result.stdout[:OUTPUT_EXCERPT_CHARS], stderr=result.stderr[-OUTPUT_EXCERPT_CHARS:],
               run_seconds=round(result.duration_s, 3))
    return row


def score_pi_replies(items: Sequence[tuple[str, str | None]], timeout_s: float = 10.0, memory_mb: int = 1024,
                     workers: int | None = None) -> list[dict[str, Any]]:
    """score_pi_reply for many (reply, asked_method) pairs, several sandboxes at once, in order.

    Each sandbox may hold up to memory_mb (all its processes together), so by default at most
    8 run at once, one per CPU core, and only as many as fit in half the memory available when
    it starts (MemAvailable): workers x memory_mb stays within that half, at least 1 worker
    (with the default 1024 MB: 4 on a runtime with 8 GB available). workers overrides it.
    """
    from tqdm.auto import tqdm

    workers = workers or memory_cap.concurrent_runs_affordable(memory_mb, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(score_pi_reply, reply, method, timeout_s, memory_mb) for reply, method in items]
        return [f.result() for f in tqdm(futures, desc="Running programs in the sandbox", unit="program")]


def run_pi_comparison(model: Any, tokenizer: Any, settings: SamplingSettings,
                      prompts: Sequence[PiPrompt] = PI_PROMPTS, batch_size: int = 8, lora_request: Any = None,
                      system_prompt: str = data.SYSTEM_PROMPT, timeout_s: float = 10.0,
                      memory_mb: int = 1024) -> dict[str, Any]:
    """k samples per pi prompt from base and trained model (same prompts, settings, seeds), each program run."""
    messages = [pi_messages(p, system_prompt) for p in prompts]
    rows: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    for side in SIDES:
        start = time.monotonic()
        generated = generate_completions(model, tokenizer, messages, settings, batch_size, lora_request,
                                         use_adapter=side == "trained")
        seconds[f"generate_{side}"] = round(time.monotonic() - start, 1)
        rows += [{"model": side, "prompt_id": p.id, "asked_method": p.method, "sample": i, "reply": c.text,
                  "length_tokens": c.num_tokens, "truncated": c.truncated}
                 for p, group in zip(prompts, generated) for i, c in enumerate(group)]
    start = time.monotonic()
    scores = score_pi_replies([(r["reply"], r["asked_method"]) for r in rows], timeout_s, memory_mb)
    seconds["sandbox"] = round(time.monotonic() - start, 1)
    for row, score in zip(rows, scores):
        row.update(score)
    return {"settings": dataclasses.asdict(settings), "system_prompt": system_prompt,
            "prompts": [dataclasses.asdict(p) for p in prompts], "timeout_s": timeout_s,
            "rows": rows, "seconds": seconds}


def pi_summary(rows: Iterable[Mapping[str, Any]]) -> "pd.DataFrame":
    """Per model and prompt: share that wrote code, ran, used the asked method, cheated; digits of pi."""
    import pandas as pd

    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return frame
    grouped = frame.groupby(["prompt_id", "model"], sort=False)
    table = grouped.agg(samples=("sample", "size"), wrote_code=("has_code", "mean"), ran_ok=("ran_ok", "mean"),
                        used_asked_method=("follows_method", "mean"),
                        cheated=("cheat_reason", lambda s: float(s.notna().mean())),
                        mean_digits=("digits_correct", "mean"), best_honest_digits=("honest_digits", "max"))
    table["methods"] = grouped["method"].agg(
        lambda s: ", ".join(f"{m} x{n}" for m, n in Counter(s.fillna("no code")).most_common()))
    return table.round(2)


def _outcome_key(row: Mapping[str, Any]) -> tuple[int, int, bool, bool, bool]:
    return (row["honest_digits"], row["digits_correct"], row["follows_method"], row["ran_ok"], row["has_code"])


def representative_pair(rows: Sequence[Mapping[str, Any]], prompt_id: str = "bbp") -> dict[str, Mapping[str, Any]]:
    """For each model, its median sample on this prompt by measured outcome (typical, not the best)."""
    pair = {}
    for side in SIDES:
        samples = sorted((r for r in rows if r["model"] == side and r["prompt_id"] == prompt_id),
                         key=lambda r: (_outcome_key(r), r["sample"]))
        if samples:
            pair[side] = samples[(len(samples) - 1) // 2]
    return pair


def pi_facts(row: Mapping[str, Any]) -> dict[str, Any]:
    """The measured numbers of one pi sample, for a side-by-side display."""
    ran = "yes" if row["ran_ok"] else ("timed out" if row["timed_out"] else ("no code" if not row["has_code"]
                                                                             else f"no (exit {row['returncode']})"))
    return {"wrote code": row["has_code"], "method": row["method"] or "-", "ran": ran,
            "digits of pi right": row["digits_correct"], "cheated": row["cheat_reason"] or "no",
            "printed": (row["stdout"].strip().splitlines() or ["-"])[0][:60]}

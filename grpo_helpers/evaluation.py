"""Measure what GRPO changed on GSM8K: accuracy before/after, pass@k, the questions that flipped.

Base and trained model answer the same questions with the same system prompt, sampling settings
and seeds; the adapter is the only difference (see generation.py for how, on each path).

GSM8K, per reply:
  strict_correct   the whole reply is in the trained format (strict_format_reward) AND the last
                   number inside <answer>...</answer> equals the gold answer
  lenient_correct  the last number anywhere in the reply equals the gold answer (format ignored)
  answer_correct   the number inside <answer> is right, whatever the layout (correctness_reward)
  format_ok        strict_format_reward: "<reasoning>\\n...\\n</reasoning>\\n<answer>\\n...\\n</answer>"

Uncertainty: every rate over n questions gets a Wilson interval; a before/after change gets an exact
McNemar test on the questions that flipped (paired: same questions on both sides) and Newcombe's
interval for a paired difference. With k samples per question, pass@k and maj@k (majority vote)
are per-question outcomes, so they get the same treatment.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from . import paths, rewards
from .generation import SamplingSettings, generate_completions

if TYPE_CHECKING:
    import pandas as pd

    from .profiles import Profile

SIDES = ("base", "trained")
GSM8K_RESULTS_FILE = "gsm8k_before_after.json"
GSM8K_SAMPLED_FILE = "gsm8k_sampled.json"  # the optional sampling mode: k samples per question
RATE_METRICS = ("strict_accuracy", "lenient_accuracy", "format_rate")
OUTPUT_EXCERPT_CHARS = 400
CONFIDENCE = 0.95  # of every interval shown
SIGNIFICANCE_LEVEL = 0.05  # a McNemar p below it: the change is told apart from noise
OUTCOME_KEYS = {"strict_accuracy": "strict_correct", "lenient_accuracy": "lenient_correct", "format_rate": "format_ok"}
_PER_QUESTION = re.compile(r"(pass|maj)@(\d+)_(strict|lenient)")


# --- GSM8K -----------------------------------------------------------------------------------------

def score_reply(reply: str, gold: Any) -> dict[str, bool]:
    """strict_correct, lenient_correct, answer_correct and format_ok of one reply against the gold answer."""
    format_ok = rewards.strict_format_reward(completions=[reply])[0] == 1.0
    answer_correct = rewards.correctness_reward(completions=[reply], answer=[gold])[0] == 1.0
    gold_value = rewards.parse_number(str(gold)) if gold is not None else None
    lenient = rewards.numbers_equal(rewards.parse_number(reply if isinstance(reply, str) else ""), gold_value)
    return {"strict_correct": format_ok and answer_correct, "lenient_correct": lenient,
            "answer_correct": answer_correct, "format_ok": format_ok}


def _records(dataset: Any, limit: int | None) -> list[dict[str, Any]]:
    rows = [dict(r) for r in (dataset if limit is None else (dataset[i] for i in range(min(limit, len(dataset)))))]
    for i, row in enumerate(rows):
        row.setdefault("index", i)
    return rows


def evaluate_gsm8k(model: Any, tokenizer: Any, dataset: Any, settings: SamplingSettings, batch_size: int = 16,
                   lora_request: Any = None, use_adapter: bool = True, limit: int | None = None) -> list[dict[str, Any]]:
    """One row per (question, sample): the reply, its length and its scores; `use_adapter=False` = base model."""
    records = _records(dataset, limit)
    generated = generate_completions(model, tokenizer, [r["prompt"] for r in records], settings, batch_size,
                                     lora_request, use_adapter)
    rows = []
    for record, completions in zip(records, generated):
        for sample, completion in enumerate(completions):
            rows.append({"index": record["index"], "sample": sample, "question": record.get("question", ""),
                         "gold": record["answer"], "reply": completion.text, "length_tokens": completion.num_tokens,
                         "truncated": completion.truncated, **score_reply(completion.text, record["answer"])})
    return rows


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021): 1 - C(n-c, k) / C(n, k)."""
    if not 0 < k <= n:
        raise ValueError(f"need 0 < k <= n, got k={k}, n={n}")
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Accuracies (strict, lenient, answer), format rate, mean length, truncation; pass@k with k samples each."""
    if not rows:
        return {"n_questions": 0, "n_samples": 0}

    def mean(key: str) -> float:
        return round(statistics.fmean(float(r[key]) for r in rows), 4)

    summary = {"n_questions": len({r["index"] for r in rows}), "n_samples": len(rows),
               "strict_accuracy": mean("strict_correct"), "lenient_accuracy": mean("lenient_correct"),
               "answer_accuracy": mean("answer_correct"), "format_rate": mean("format_ok"),
               "mean_length_tokens": round(statistics.fmean(r["length_tokens"] for r in rows), 1),
               "truncated_rate": mean("truncated")}
    by_question: dict[Any, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_question.setdefault(row["index"], []).append(row)
    k = min(len(group) for group in by_question.values())
    if k > 1:
        for key, name in (("strict_correct", "strict"), ("lenient_correct", "lenient")):
            summary[f"pass@{k}_{name}"] = round(statistics.fmean(
                pass_at_k(len(g), sum(bool(r[key]) for r in g), k) for g in by_question.values()), 4)
            summary[f"maj@{k}_{name}"] = round(statistics.fmean(
                majority_correct(g, strict=name == "strict") for g in by_question.values()), 4)
    return summary


def _vote(row: Mapping[str, Any], strict: bool) -> float | None:
    """The number a reply votes for: inside <answer> of an in-format reply (strict), else its last number."""
    if strict:
        return rewards.parse_number(rewards.extract_xml_answer(row["reply"]) or "") if row["format_ok"] else None
    return rewards.parse_number(row["reply"] if isinstance(row["reply"], str) else "")


def majority_correct(samples: Sequence[Mapping[str, Any]], strict: bool = True) -> bool:
    """maj@k for one question: the most common answer of its samples (ties: the first seen) equals the gold.

    strict: a reply out of the trained format votes for "no answer"; lenient: each reply's last number."""
    if not samples:
        return False
    winner = Counter(_vote(r, strict) for r in samples).most_common(1)[0][0]
    gold = rewards.parse_number(str(samples[0]["gold"])) if samples[0]["gold"] is not None else None
    return rewards.numbers_equal(winner, gold)


def compare_before_after(model: Any, tokenizer: Any, dataset: Any, settings: SamplingSettings, batch_size: int = 16,
                         lora_request: Any = None, limit: int | None = None) -> dict[str, Any]:
    """Base and trained model on the SAME questions, settings and seeds: rows, summaries and timings per side."""
    records = _records(dataset, limit)
    result: dict[str, Any] = {"settings": dataclasses.asdict(settings), "n_questions": len(records),
                              "question_indices": [r["index"] for r in records],
                              "system_prompt": records[0]["prompt"][0]["content"] if records else None,
                              "rows": {}, "summary": {}, "seconds": {}}
    for side in SIDES:
        start = time.monotonic()
        rows = evaluate_gsm8k(model, tokenizer, records, settings, batch_size, lora_request, use_adapter=side == "trained")
        result["seconds"][side] = round(time.monotonic() - start, 1)
        result["rows"][side], result["summary"][side] = rows, summarize(rows)
    return result


def sampled_comparison(model: Any, tokenizer: Any, dataset: Any, profile: "Profile", samples: int,
                       limit: int | None = None, lora_request: Any = None) -> dict[str, Any]:
    """compare_before_after with `samples` answers per question at the profile's temperature (pass@k, maj@k)."""
    settings = SamplingSettings(max_new_tokens=profile.eval_max_new_tokens, temperature=profile.temperature,
                                num_samples=samples, seed=profile.seed)
    batch = max(1, profile.eval_batch_size // samples)  # eval_batch_size replies per generate call, as greedy
    return compare_before_after(model, tokenizer, dataset, settings, batch, lora_request, limit)


def summary_table(result: Mapping[str, Any]) -> "pd.DataFrame":
    """One row per metric, columns base / trained / change."""
    import pandas as pd

    table = pd.DataFrame(result["summary"])
    table["change"] = table["trained"] - table["base"]
    return table


def flipped_questions(before_rows: Sequence[Mapping[str, Any]], after_rows: Sequence[Mapping[str, Any]],
                      key: str = "strict_correct") -> list[dict[str, Any]]:
    """Questions whose first sample changed outcome: "fixed" (wrong -> right) first, then "broken"."""
    after = {(r["index"], r["sample"]): r for r in after_rows}
    flips = []
    for before in before_rows:
        other = after.get((before["index"], before["sample"]))
        if before["sample"] != 0 or other is None or bool(before[key]) == bool(other[key]):
            continue
        flips.append({"index": before["index"], "change": "fixed" if other[key] else "broken",
                      "question": before["question"], "gold": before["gold"],
                      "before_reply": before["reply"], "after_reply": other["reply"]})
    return sorted(flips, key=lambda f: (f["change"] != "fixed", f["index"]))


def flips_table(flips: Sequence[Mapping[str, Any]], max_chars: int = 160) -> "pd.DataFrame":
    """The flipped questions as a table, replies shortened to `max_chars`."""
    import pandas as pd

    def short(text: str) -> str:
        text = " ".join(str(text).split())
        return text if len(text) <= max_chars else text[:max_chars - 1] + "…"

    columns = ["index", "change", "gold", "question", "before_reply", "after_reply"]
    return pd.DataFrame([{c: short(f[c]) if c in ("question", "before_reply", "after_reply") else f[c] for c in columns}
                         for f in flips], columns=columns)


# --- uncertainty and significance --------------------------------------------------------------------

def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a rate successes / n; (0, 1) when n is 0 (nothing measured)."""
    if n < 0 or not 0 <= successes <= n or not 0 < confidence < 1:
        raise ValueError(f"need 0 <= successes <= n and 0 < confidence < 1, got {successes}/{n} at {confidence}")
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    rate, shrink = successes / n, 1 + z * z / n
    center = (rate + z * z / (2 * n)) / shrink
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / shrink
    return max(0.0, center - half), min(1.0, center + half)


def mcnemar_p_value(fixed: int, broken: int) -> float:
    """Exact two-sided McNemar p: how likely this split of flipped questions is if training changed nothing.

    Under "no change" each flip is fixed or broken with probability 1/2: p = 2 P(X <= min) for X ~ B(flips, 1/2)."""
    if fixed < 0 or broken < 0:
        raise ValueError(f"flip counts cannot be negative, got fixed={fixed}, broken={broken}")
    flips = fixed + broken
    if flips == 0:
        return 1.0
    tail = sum(math.comb(flips, i) for i in range(min(fixed, broken) + 1))
    return min(1.0, 2 * tail / 2 ** flips)  # exact integers; one rounding at the end


def paired_difference_interval(both: int, fixed: int, broken: int, neither: int,
                               confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Interval for (after rate - before rate) on the same questions: Newcombe's (1998) square-and-add method.

    both: right before and after; fixed: wrong -> right; broken: right -> wrong; neither: wrong on both.
    It combines the two Wilson intervals with phi, their correlation (shrunk towards 0 by n/2, as Newcombe does)."""
    n = both + fixed + broken + neither
    if n == 0:
        return -1.0, 1.0
    before, after = (both + broken) / n, (both + fixed) / n
    low_b, high_b = wilson_interval(both + broken, n, confidence)
    low_a, high_a = wilson_interval(both + fixed, n, confidence)
    margins = (both + broken) * (fixed + neither) * (both + fixed) * (broken + neither)
    agreement = both * neither - fixed * broken
    shrunk = agreement - n / 2 if agreement > n / 2 else min(agreement, 0)
    phi = shrunk / math.sqrt(margins) if margins else 0.0
    down = math.sqrt(max(0.0, (after - low_a) ** 2 - 2 * phi * (after - low_a) * (high_b - before)
                         + (high_b - before) ** 2))
    up = math.sqrt(max(0.0, (high_a - after) ** 2 - 2 * phi * (high_a - after) * (before - low_b)
                       + (before - low_b) ** 2))
    change = after - before
    return max(-1.0, change - down), min(1.0, change + up)


def paired_metrics(result: Mapping[str, Any]) -> tuple[str, ...]:
    """The per-question metrics of a comparison: strict/lenient/format greedy; maj@k and pass@k with k samples."""
    k = int(result["settings"]["num_samples"])
    if k == 1:
        return RATE_METRICS
    return tuple(f"{kind}@{k}_{name}" for name in ("strict", "lenient") for kind in ("maj", "pass"))


def question_outcomes(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[Any, bool]:
    """One True/False per question for `metric`: a rate of RATE_METRICS (one sample each), pass@k_* or maj@k_*."""
    by_question: dict[Any, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_question.setdefault(row["index"], []).append(row)
    sizes = {len(g) for g in by_question.values()}
    match = _PER_QUESTION.fullmatch(metric)
    if metric in OUTCOME_KEYS and sizes <= {1}:
        return {i: bool(g[0][OUTCOME_KEYS[metric]]) for i, g in by_question.items()}
    if match and sizes <= {int(match[2])}:
        kind, strict = match[1], match[3] == "strict"
        key = "strict_correct" if strict else "lenient_correct"
        return {i: any(bool(r[key]) for r in g) if kind == "pass" else majority_correct(g, strict)
                for i, g in by_question.items()}
    raise ValueError(f"{metric!r} is not a per-question outcome of rows with {sorted(sizes)} samples per question: "
                     f"use {RATE_METRICS} with one sample, pass@k_strict/maj@k_lenient (and so on) with k.")


def compare_metric(base_rows: Sequence[Mapping[str, Any]], trained_rows: Sequence[Mapping[str, Any]], metric: str,
                   confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Rates with Wilson intervals, the change with its paired interval, the flips and McNemar's p for one metric."""
    before, after = question_outcomes(base_rows, metric), question_outcomes(trained_rows, metric)
    if set(before) != set(after):
        raise ValueError(f"base and trained rows cover different questions ({len(before)} vs {len(after)}); "
                         "compare results of one compare_before_after call.")
    pairs = [(before[i], after[i]) for i in before]
    both, fixed = pairs.count((True, True)), pairs.count((False, True))
    broken, neither = pairs.count((True, False)), pairs.count((False, False))
    n = len(pairs)
    row: dict[str, Any] = {"metric": metric, "n": n}
    for side, hits in (("base", both + broken), ("trained", both + fixed)):
        low, high = wilson_interval(hits, n, confidence)
        row.update({side: hits / n if n else math.nan, f"{side}_low": low, f"{side}_high": high})
    low, high = paired_difference_interval(both, fixed, broken, neither, confidence)
    row.update(change=(fixed - broken) / n if n else math.nan, change_low=low, change_high=high, fixed=fixed,
               broken=broken, p_value=mcnemar_p_value(fixed, broken))
    return row


def significance_table(result: Mapping[str, Any], confidence: float = CONFIDENCE) -> "pd.DataFrame":
    """compare_metric for each paired metric of a compare_before_after result: one row per metric."""
    import pandas as pd

    rows = [compare_metric(result["rows"]["base"], result["rows"]["trained"], m, confidence)
            for m in paired_metrics(result)]
    return pd.DataFrame(rows).set_index("metric")


def metric_label(metric: str) -> str:
    """A metric's name in a sentence: "strict accuracy", "maj@8 strict accuracy"."""
    match = _PER_QUESTION.fullmatch(metric)
    if match:
        return f"{match[1]}@{match[2]} {match[3]} accuracy"
    return metric.replace("_", " ")


def change_sentence(row: Mapping[str, Any], level: float = SIGNIFICANCE_LEVEL) -> str:
    """The before/after verdict of one compare_metric row in words: rates, change, flips, p, noise or not."""
    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    n, label = row["n"], metric_label(row["metric"])
    text = (f"{label.capitalize()} went from {pct(row['base'])} (95% CI {pct(row['base_low'])}-"
            f"{pct(row['base_high'])}) to {pct(row['trained'])} ({pct(row['trained_low'])}-{pct(row['trained_high'])})"
            f" on {n} questions: {100 * row['change']:+.1f} points (95% CI {100 * row['change_low']:+.1f} to "
            f"{100 * row['change_high']:+.1f}), {row['fixed']} question{'' if row['fixed'] == 1 else 's'} fixed and "
            f"{row['broken']} broken")
    if row["fixed"] + row["broken"] == 0:
        return text + f". No question changed outcome: at n = {n} there is no change to tell from noise."
    text += f", exact McNemar p = {row['p_value']:.3g}. "
    if row["p_value"] < level:
        return text + f"At n = {n} this change is distinguishable from noise (p < {level})."
    includes_zero = "; the interval includes no change" if row["change_low"] <= 0 <= row["change_high"] else ""
    return text + (f"At n = {n} this is not distinguishable from noise (p >= {level}){includes_zero}; more "
                   "questions would narrow it.")


def verdict(result: Mapping[str, Any], metric: str | None = None) -> str:
    """change_sentence for one metric (default: the first paired one, strict) of a compare_before_after result."""
    metric = metric or paired_metrics(result)[0]
    return change_sentence(compare_metric(result["rows"]["base"], result["rows"]["trained"], metric))


# --- how long an evaluation will take ----------------------------------------------------------------

@dataclass(frozen=True)
class TimeEstimate:
    """The projected time of a before/after run, from one timed warm-up batch."""

    questions: int  # questions the run will score, on each model
    warmup_questions: int
    warmup_seconds: float
    seconds: float  # projected for both models

    def message(self) -> str:
        """One line for the notebook."""
        return (f"Estimated time: ~{self.seconds / 60:.1f} min for {self.questions} questions x {len(SIDES)} models "
                f"(a warm-up batch of {self.warmup_questions} took {self.warmup_seconds:.1f} s; with vLLM, larger "
                "batches run faster per question, so this is an upper estimate).")


def estimate_eval_seconds(model: Any, tokenizer: Any, dataset: Any, settings: SamplingSettings, questions: int,
                          batch_size: int = 16, lora_request: Any = None) -> TimeEstimate:
    """Time one batch of the first questions (adapter on) and project `questions` on both models."""
    if questions < 1:
        raise ValueError(f"questions must be at least 1, got {questions}")
    records = _records(dataset, min(batch_size, questions))
    start = time.monotonic()
    evaluate_gsm8k(model, tokenizer, records, settings, batch_size, lora_request)
    seconds = time.monotonic() - start
    return TimeEstimate(questions, len(records), round(seconds, 2),
                        round(seconds / len(records) * questions * len(SIDES), 1))


# --- results on disk -----------------------------------------------------------------------------

def results_path(profile: "Profile", file_name: str = GSM8K_RESULTS_FILE) -> Path:
    """Where a results JSON of this profile lives: <artifacts>/<profile>/<file_name>."""
    return paths.profile_dir(profile.name) / file_name


def save_results(results: Mapping[str, Any], path: Path | str) -> Path:
    """Write results as JSON (what the notebook showed, for later comparison); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"saved_at": time.strftime("%Y-%m-%d %H:%M:%S"), **results}
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


def load_results(path: Path | str) -> dict[str, Any]:
    """Read results saved by save_results."""
    return json.loads(Path(path).read_text())

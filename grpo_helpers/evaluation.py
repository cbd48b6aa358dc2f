"""Measure what GRPO changed on GSM8K: accuracy before/after, pass@k, the questions that flipped.

Base and trained model answer the same questions with the same system prompt, sampling settings
and seeds; the adapter is the only difference (see generation.py for how, on each path).

GSM8K, per reply:
  strict_correct   the whole reply is in the trained format (strict_format_reward) AND the last
                   number inside <answer>...</answer> equals the gold answer
  lenient_correct  the last number anywhere in the reply equals the gold answer (format ignored)
  answer_correct   the number inside <answer> is right, whatever the layout (correctness_reward)
  format_ok        strict_format_reward: "<reasoning>\\n...\\n</reasoning>\\n<answer>\\n...\\n</answer>"
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from . import paths, rewards
from .generation import SamplingSettings, generate_completions

if TYPE_CHECKING:
    import pandas as pd

    from .profiles import Profile

SIDES = ("base", "trained")
GSM8K_RESULTS_FILE = "gsm8k_before_after.json"
RATE_METRICS = ("strict_accuracy", "lenient_accuracy", "format_rate")
OUTPUT_EXCERPT_CHARS = 400


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
    return summary


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

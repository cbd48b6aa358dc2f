"""The reward functions GRPO trains on (TRL's signature), and reading a completion's answer.

Every reward takes `(prompts, completions, **kwargs)` with the dataset's columns in kwargs
(`answer` holds the gold number), accepts completions as strings or as chat messages, returns one
float per completion and never raises: a reward that crashes kills a three-hour Colab run, so a
completion that cannot be scored scores 0.0 instead, alone (the rest of the batch is scored as
usual, and TRL always gets one float per completion). Everything runs in linear time: tags are
found with `str.find`/`str.count`, numbers by answers.py, whose regexes cannot backtrack.

Each reward returns values on a 0..1 scale (so its curve in TRL's logs reads as "share of the
group that ...") and `DEFAULT_REWARD_WEIGHTS` sets how much each one counts.

The answer is read as a careful grader reads it (answers.read_answer): exactly one number, in any
usual notation ("1 234", "1e3", "3 1/2", "\\frac12", "½", "forty-two"), the result of a worked
answer ("48 + 24 = 72"); "41 or 42", "10-12" or "3:4" is ambiguous and scores 0, so listing
candidates does not pay. math-verify is not used here: it is 30-50x slower per answer and can spend
seconds on one answer (5 s timeouts on 200 KB of numbers and on 122 characters of nested
parentheses, see benchmarks/bench_rewards.py --math-verify), and its SIGALRM timeout fails outside
the main thread; tests/test_answers.py holds our reading against it, case by case.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from . import data
from .answers import as_fraction, numbers_equal, parse_bare_number, parse_number, read_answer

if TYPE_CHECKING:
    from fractions import Fraction

    import pandas

RewardFunc = Callable[..., list[float]]

REASONING_OPEN, REASONING_CLOSE = "<reasoning>", "</reasoning>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
FORMAT_TAGS = (REASONING_OPEN, REASONING_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
TRAILING_TEXT_PENALTY_PER_CHAR = 0.001
TRAILING_TEXT_PENALTY_CAP = 0.5


# --- reading a completion -------------------------------------------------------------------------

def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or the content of chat messages; "" for anything else."""
    if isinstance(completion, (list, tuple)) and completion:
        completion = completion[-1]  # TRL's chat completions: [{"role": "assistant", "content": ...}]
    if isinstance(completion, dict):
        completion = completion.get("content")
    return completion if isinstance(completion, str) else ""


def extract_xml_answer(text: str) -> str | None:
    """The stripped text between the last <answer> and the </answer> after it; None if there is none."""
    if not isinstance(text, str):
        return None
    start = text.rfind(ANSWER_OPEN)
    if start < 0:
        return None
    start += len(ANSWER_OPEN)
    # An unclosed answer is usually a completion cut off at max length: "<answer>\n12" may be "125".
    end = text.find(ANSWER_CLOSE, start)
    return text[start:end].strip() if end >= 0 else None


# --- per-completion scores (0..1) -----------------------------------------------------------------

def _gold_value(gold: Any) -> Fraction | None:
    return read_answer(gold) if isinstance(gold, str) else as_fraction(gold)


def _is_correct(text: str, gold: Any) -> float:
    return 1.0 if numbers_equal(read_answer(extract_xml_answer(text) or ""), _gold_value(gold)) else 0.0


def _is_numeric_answer(text: str) -> float:
    answer = extract_xml_answer(text)
    return 1.0 if answer is not None and parse_bare_number(answer) is not None else 0.0


def _is_strict_format(text: str) -> float:
    body = text.strip()
    head, tail = REASONING_OPEN + "\n", "\n" + ANSWER_CLOSE
    if not (body.startswith(head) and body.endswith(tail)):
        return 0.0
    if any(body.count(tag) != 1 for tag in FORMAT_TAGS):
        return 0.0
    middle = body[len(head):-len(tail)]
    reasoning, separator, answer = middle.partition(f"\n{REASONING_CLOSE}\n{ANSWER_OPEN}\n")
    return 1.0 if separator and reasoning.strip() and answer.strip() else 0.0


def _is_soft_format(text: str) -> float:
    body = text.lstrip()
    if not body.startswith(REASONING_OPEN):
        return 0.0
    reasoning_end = body.find(REASONING_CLOSE, len(REASONING_OPEN))
    if reasoning_end < 0:
        return 0.0
    after_reasoning = body[reasoning_end + len(REASONING_CLOSE):].lstrip()
    if not after_reasoning.startswith(ANSWER_OPEN):
        return 0.0
    return 1.0 if after_reasoning.find(ANSWER_CLOSE, len(ANSWER_OPEN)) >= 0 else 0.0


def _tag_count_score(text: str) -> float:
    score = sum(0.25 for tag in FORMAT_TAGS if text.count(tag) == 1)
    end = text.rfind(ANSWER_CLOSE)
    if end >= 0:
        trailing = len(text[end + len(ANSWER_CLOSE):].strip())
        score -= min(TRAILING_TEXT_PENALTY_CAP, TRAILING_TEXT_PENALTY_PER_CHAR * trailing)
    return score


def _broadcast(values: Any, n: int) -> list[Any]:
    try:
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            return [values] * n  # one gold for every completion
        values = list(values)
    except Exception:
        return [None] * n  # golds that cannot be read: every completion scores 0, none is lost
    return (values + [None] * n)[:n]


def _one_text(completion: Any) -> str:
    try:
        return completion_text(completion)
    except Exception:
        return ""  # a completion object that raises scores 0, alone


def _completion_texts(completions: Any) -> list[str]:
    """One text per completion, "" for each that cannot be read: never fewer texts than completions."""
    try:
        if completions is None:
            return []
        if isinstance(completions, (str, dict)):
            return [_one_text(completions)]
        items = list(completions)
    except Exception:
        try:
            return [""] * len(completions)  # a container that cannot be iterated but has a length
        except Exception:
            return []
    return [_one_text(c) for c in items]


def _safe_score(score: Callable[..., float], *args: Any) -> float:
    # Defence in depth: one unscorable completion costs its own reward, not the whole run.
    try:
        value = float(score(*args))
    except Exception:
        return 0.0
    return value if math.isfinite(value) else 0.0


# --- the rewards TRL calls (their __name__ is what TRL's logs and reward curves show) ---------------

def correctness_reward(prompts: Any = None, completions: Any = None, answer: Any = None, **kwargs: Any) -> list[float]:
    """1.0 when <answer>...</answer> states exactly one number and it equals the gold answer, else 0.0."""
    texts = _completion_texts(completions)
    return [_safe_score(_is_correct, text, gold) for text, gold in zip(texts, _broadcast(answer, len(texts)))]


def numeric_answer_reward(prompts: Any = None, completions: Any = None, **kwargs: Any) -> list[float]:
    """1.0 when <answer>...</answer> holds one bare number ("42", "$1,234", "-3", "1/2", "1 234"), else 0.0."""
    return [_safe_score(_is_numeric_answer, text) for text in _completion_texts(completions)]


def strict_format_reward(prompts: Any = None, completions: Any = None, **kwargs: Any) -> list[float]:
    """1.0 when the whole reply is "<reasoning>\\n...\\n</reasoning>\\n<answer>\\n...\\n</answer>" (any lines)."""
    return [_safe_score(_is_strict_format, text) for text in _completion_texts(completions)]


def soft_format_reward(prompts: Any = None, completions: Any = None, **kwargs: Any) -> list[float]:
    """1.0 when the reply opens with <reasoning>...</reasoning> followed by <answer>...</answer>, any spacing."""
    return [_safe_score(_is_soft_format, text) for text in _completion_texts(completions)]


def tag_count_reward(prompts: Any = None, completions: Any = None, **kwargs: Any) -> list[float]:
    """0.25 per format tag present exactly once, minus 0.001 per character after </answer> (at most 0.5)."""
    return [_safe_score(_tag_count_score, text) for text in _completion_texts(completions)]


DEFAULT_REWARDS: list[RewardFunc] = [
    correctness_reward, numeric_answer_reward, strict_format_reward, soft_format_reward, tag_count_reward]
# Correctness is what we want, so it outweighs every format reward together: the best-formatted
# wrong answer totals 1.5, a correct answer at least 2.0 - 0.25 * 0.5 = 1.875, so GRPO always ranks
# a right answer above a wrong one. The format rewards still matter: while few answers in a group
# are right they are the only rewards that differ inside the group, hence the only gradient.
# Strict is the target layout and counts double the soft one and the tag count, which are the
# stepping stones that give partial credit early on. A bare number makes the answer unambiguous.
DEFAULT_REWARD_WEIGHTS: list[float] = [2.0, 0.5, 0.5, 0.25, 0.25]
MAX_TOTAL_REWARD: float = sum(DEFAULT_REWARD_WEIGHTS)  # every reward's best score is 1.0


def describe_rewards(reward_funcs: Sequence[RewardFunc] = DEFAULT_REWARDS,
                     weights: Sequence[float] = DEFAULT_REWARD_WEIGHTS) -> "pandas.DataFrame":
    """A table of the rewards: name (as TRL logs it), weight, and what each one checks."""
    import pandas as pd

    return pd.DataFrame({"reward": [f.__name__ for f in reward_funcs], "weight": list(weights),
                         "checks": [(f.__doc__ or "").strip().splitlines()[0] for f in reward_funcs]})


def example_completions(reasoning: str, answer: str) -> dict[str, str]:
    """Six replies to one question, from perfect to broken: a hand-made "group" for the demos."""
    gold = parse_number(answer)
    wrong = str(int(gold) + 7) if gold is not None and gold.denominator == 1 else "7"
    perfect = data.format_completion(reasoning, answer)
    one_line = " ".join(reasoning.split())
    chatty = data.format_completion(reasoning, f"${answer} dollars") + "\nHope this helps!"
    return {
        "correct, strict format": perfect,
        "correct, one-line tags": f"<reasoning>{one_line}</reasoning> <answer>{answer}</answer>",
        "correct as '$N dollars', chatty end": chatty,
        "wrong number, strict format": data.format_completion(reasoning, wrong),
        "right number, no tags": f"{reasoning}\nThe answer is {answer}.",
        "cut off inside <answer>": perfect[: perfect.rindex(ANSWER_CLOSE)],
    }


def score_completions(completions: Sequence[Any], answers: Sequence[Any] | Any,
                      reward_funcs: Sequence[RewardFunc] = DEFAULT_REWARDS,
                      weights: Sequence[float] | None = None,
                      labels: Sequence[str] | None = None) -> "pandas.DataFrame":
    """One row per completion, one column per reward (unweighted) and the weighted `total`."""
    import pandas as pd

    if weights is None:
        weights = DEFAULT_REWARD_WEIGHTS if list(reward_funcs) == DEFAULT_REWARDS else [1.0] * len(reward_funcs)
    if len(weights) != len(reward_funcs):
        raise ValueError(f"{len(weights)} weights for {len(reward_funcs)} reward functions")
    completions = list(completions)
    prompts = [None] * len(completions)
    table = pd.DataFrame({func.__name__: func(prompts=prompts, completions=completions, answer=answers)
                          for func in reward_funcs}, index=list(labels) if labels is not None else None)
    table["total"] = sum(table[func.__name__] * weight for func, weight in zip(reward_funcs, weights))
    return table

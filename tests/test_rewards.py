"""The rewards: TRL's contract, hostile and arbitrary input, issue 14's tricky answers, every real GSM8K gold."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_helpers import answers, data, rewards
from grpo_helpers.answers import read_answer
from grpo_helpers.rewards import (DEFAULT_REWARD_WEIGHTS, DEFAULT_REWARDS, MAX_TOTAL_REWARD, correctness_reward,
                                  extract_xml_answer, numeric_answer_reward, score_completions, soft_format_reward,
                                  strict_format_reward, tag_count_reward)

REASONING = "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether."
PERFECT = data.format_completion(REASONING, "72")

# --- the tricky-case tables ------------------------------------------------------------------------

# (case, completion, gold, correctness, numeric_answer, strict_format, soft_format, tag_count). The answer
# must state exactly one number (answers.read_answer; tests/test_answers.py has the grammar): a worked
# answer counts by its result, two candidates score 0, so listing them does not pay.
REWARD_CASES = [
    ("perfect, multi-line reasoning", PERFECT, "72", 1, 1, 1, 1, 1),
    ("perfect, outer whitespace", "\n " + PERFECT + "\n", "72", 1, 1, 1, 1, 1),
    ("one-line tags", f"<reasoning>{REASONING}</reasoning><answer>72</answer>", "72", 1, 1, 0, 1, 1),
    ("tags on separate lines, no inner newlines", "<reasoning>r</reasoning>\n\n<answer>72</answer>", "72",
     1, 1, 0, 1, 1),
    ("dollars and thousands", data.format_completion(REASONING, "$1,234"), "1234", 1, 1, 1, 1, 1),
    ("trailing zeros", data.format_completion(REASONING, "72.00"), "72", 1, 1, 1, 1, 1),
    ("units", data.format_completion(REASONING, "72 clips"), "72", 1, 0, 1, 1, 1),
    ("sentence", data.format_completion(REASONING, "Natalia sold 72 clips."), "72", 1, 0, 1, 1, 1),
    ("negative gold", data.format_completion(REASONING, "-3"), "-3", 1, 1, 1, 1, 1),
    ("fraction vs decimal gold", data.format_completion(REASONING, "1/2"), "0.5", 1, 1, 1, 1, 1),
    ("LaTeX fraction", data.format_completion(REASONING, r"\frac{144}{2}"), "72", 1, 1, 1, 1, 1),
    ("boxed", data.format_completion(REASONING, r"\boxed{72}"), "72", 1, 0, 1, 1, 1),
    ("wrong number", data.format_completion(REASONING, "73"), "72", 0, 1, 1, 1, 1),
    ("worked answer: its result counts", data.format_completion(REASONING, "48 + 24 = 72"), "72", 1, 0, 1, 1, 1),
    ("two candidates, gold first", data.format_completion(REASONING, "72 or 24"), "72", 0, 0, 1, 1, 1),
    ("two candidates, gold last", data.format_completion(REASONING, "24 or 72"), "72", 0, 0, 1, 1, 1),
    ("a sentence with two numbers", data.format_completion(REASONING, "48 in April, 72 in all"), "72", 0, 0, 1, 1, 1),
    ("the same number twice", data.format_completion(REASONING, "72 (seventy-two)"), "72", 1, 0, 1, 1, 1),
    ("200 chars after </answer>", PERFECT + "\n" + "x" * 200, "72", 1, 1, 0, 1, 0.8),
    ("2000 chars after </answer>: penalty capped", PERFECT + "x" * 2000, "72", 1, 1, 0, 1, 0.5),
    ("cut off inside <answer>", PERFECT[:-len("\n</answer>")], "72", 0, 0, 0, 0, 0.75),
    ("no tags at all", f"{REASONING}\nThe answer is 72.", "72", 0, 0, 0, 0, 0),
    ("answer only", "<answer>72</answer>", "72", 1, 1, 0, 0, 0.5),
    ("empty answer", data.format_completion(REASONING, ""), "72", 0, 0, 0, 1, 1),
    ("empty reasoning", "<reasoning>\n\n</reasoning>\n<answer>\n72\n</answer>", "72", 1, 1, 0, 1, 1),
    ("two answers: the last counts", "<reasoning>\nr\n</reasoning>\n<answer>\n5\n</answer>\n<answer>\n72\n</answer>",
     "72", 1, 1, 0, 1, 0.5),
    ("nested answer tags", "<reasoning>\nr\n</reasoning>\n<answer>\n<answer>72</answer>\n</answer>", "72",
     1, 1, 0, 1, 0.5),
    ("tag quoted inside reasoning", "<reasoning>\nI will use <answer> tags.\n</reasoning>\n<answer>\n72\n</answer>",
     "72", 1, 1, 0, 1, 0.75),
    ("answer before reasoning", "<answer>\n72\n</answer>\n<reasoning>\nr\n</reasoning>", "72", 1, 1, 0, 0, 0.974),
    ("huge number", data.format_completion(REASONING, "9" * 200), "72", 0, 0, 1, 1, 1),
    ("gold missing", PERFECT, None, 0, 1, 1, 1, 1),
    ("gold in words", PERFECT, "seventy-two", 1, 1, 1, 1, 1),
    ("gold not a number", PERFECT, "many", 0, 1, 1, 1, 1),
    ("gold ambiguous", PERFECT, "72 or 73", 0, 1, 1, 1, 1),
    ("chat message", [{"role": "assistant", "content": PERFECT}], "72", 1, 1, 1, 1, 1),
    ("None", None, "72", 0, 0, 0, 0, 0),
    ("not text", 72, "72", 0, 0, 0, 0, 0),
]
REWARD_NAMES = ["correctness_reward", "numeric_answer_reward", "strict_format_reward", "soft_format_reward",
                "tag_count_reward"]


@pytest.mark.parametrize("row", REWARD_CASES, ids=[row[0] for row in REWARD_CASES])
def test_reward_cases(row):
    _, completion, gold, *expected = row
    scores = {func.__name__: func([None], [completion], answer=[gold])[0] for func in DEFAULT_REWARDS}
    assert scores == pytest.approx(dict(zip(REWARD_NAMES, expected)))


def test_the_default_rewards_are_named_for_the_logs():
    assert [f.__name__ for f in DEFAULT_REWARDS] == REWARD_NAMES
    assert all(f.__doc__ for f in DEFAULT_REWARDS)


def test_multi_line_reasoning_is_what_the_usual_regex_misses():
    # Unsloth's GRPO notebook: no re.DOTALL, so "." stops at the first newline of the reasoning.
    unsloth_strict = r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$"
    reply = PERFECT + "\n"
    assert re.match(unsloth_strict, reply) is None
    assert re.match(unsloth_strict, reply, flags=re.DOTALL) is not None
    assert strict_format_reward(None, [reply]) == [1.0]


def test_extract_xml_answer():
    assert extract_xml_answer(PERFECT) == "72"
    assert extract_xml_answer("<answer> 1,234 </answer> trailing") == "1,234"
    assert extract_xml_answer("<answer>5</answer><answer>6</answer>") == "6"
    assert extract_xml_answer("<answer></answer>") == ""
    for no_answer in ["", "72", "<answer>72", "</answer>72<answer>", None, 72, ["<answer>1</answer>"]]:
        assert extract_xml_answer(no_answer) is None


# Issue 14's findings, each through correctness_reward: (answer, gold, its score now).
ISSUE_14_ANSWERS = [
    # scored 0 though right
    ("1 234", "1234", 1), ("1\u00a0234", "1234", 1), ("1\u202f234", "1234", 1), ("1\u2009234", "1234", 1),
    ("1e3", "1000", 1), ("4.2e1", "42", 1), ("forty-two", "42", 1), ("3 1/2", "3.5", 1), (r"\frac12", "0.5", 1),
    ("½", "0.5", 1), ("１２３", "123", 1), ("١٢٣", "123", 1), ("۱۲۳", "123", 1), ("-(5)", "-5", 1),
    # scored 1.0 though not an answer
    ("41 or 42", "42", 0), ("10-12", "12", 0), ("3:4", "4", 0), ("42 apples in 7 boxes", "7", 0),
    # scored 1.0 though wrong: tolerances too loose
    ("12345678.01", "12345678", 0), ("0.000000001", "0", 0),
]


@pytest.mark.parametrize(("answer", "gold", "score"), ISSUE_14_ANSWERS, ids=lambda v: repr(v)[:24])
def test_issue_14_answers(answer, gold, score):
    assert correctness_reward(None, [data.format_completion(REASONING, answer)], [gold]) == [score]


def test_the_readers_evaluation_uses_stay_importable_from_rewards():
    assert (rewards.parse_number, rewards.numbers_equal, rewards.parse_bare_number) == (
        answers.parse_number, answers.numbers_equal, answers.parse_bare_number)
    assert rewards.numbers_equal(rewards.parse_number("so 1 234 in all"), rewards.parse_number("1234"))
    assert rewards.parse_number(PERFECT) == 72  # evaluation's lenient score: the last number of a whole reply
    assert rewards.parse_number(f"{REASONING}\nThe answer is 72.") == 72


# --- TRL's contract ----------------------------------------------------------------------------------

def test_the_trl_call_with_dataset_columns_and_chat_messages():
    completions = [PERFECT, data.format_completion(REASONING, "73")]
    chat = [[{"role": "assistant", "content": c}] for c in completions]
    columns = {"answer": ["72", "72"], "question": ["q", "q"], "solution": ["s", "s"], "trainer_state": object()}
    for func in DEFAULT_REWARDS:
        as_text = func(prompts=[[{"role": "user", "content": "q"}]] * 2, completions=completions,
                       completion_ids=[[1], [2]], **columns)
        assert func(prompts=None, completions=chat, completion_ids=None, **columns) == as_text
        assert len(as_text) == 2 and all(type(x) is float for x in as_text)
    assert correctness_reward(None, completions, ["72", "72"]) == [1.0, 0.0]


def test_odd_batches_never_raise():
    assert correctness_reward(None, None, None) == []
    assert correctness_reward(None, [], []) == []
    assert correctness_reward(None, [PERFECT, PERFECT], ["72"]) == [1.0, 0.0]  # a missing gold scores 0
    assert correctness_reward(None, [PERFECT], 72) == [1.0]  # one gold for all
    assert correctness_reward(None, [PERFECT], [72.0]) == [1.0]
    assert correctness_reward(None, [PERFECT, PERFECT], np.array([72, 73])) == [1.0, 0.0]  # numpy golds
    assert correctness_reward(None, [PERFECT], [float("nan")]) == [0.0]
    assert correctness_reward(None, [PERFECT], [True]) == [0.0]
    assert correctness_reward(None, PERFECT, "72") == [1.0]  # a bare string is one completion
    odd = [None, 1, 2.5, b"<answer>72</answer>", [], [[]], {}, {"content": None}, [{"content": ["72"]}],
           [[[[[[PERFECT]]]]]], [{"role": "assistant"}], object()]
    for func in DEFAULT_REWARDS:
        assert func(None, odd, answer=["72"] * len(odd)) == [0.0] * len(odd)


# --- one bad completion scores 0, never the batch -----------------------------------------------------

class RaisingStr:
    def __str__(self):
        raise RuntimeError("__str__")

    __repr__ = __str__


class RaisingGet(dict):
    def get(self, *args):
        raise RuntimeError("get")


class RaisingGetItem(list):
    def __getitem__(self, index):
        raise RuntimeError("__getitem__")


class RaisingIter(list):
    def __iter__(self):
        raise RuntimeError("__iter__")


class RaisingLen(list):
    def __len__(self):
        raise RuntimeError("__len__")


class HostileStr(str):
    def _raise(self, *args):
        raise RuntimeError("str method")

    find = rfind = count = strip = lstrip = startswith = endswith = partition = isascii = _raise


class RaisingClass:
    @property
    def __class__(self):
        raise RuntimeError("__class__")


class RaisingFloat(float):
    def __float__(self):
        raise RuntimeError("__float__")


def hostile_completions() -> list:
    """Completion objects that raise at every step of being read, and other junk: each must score 0."""
    nested = PERFECT
    for _ in range(1000):
        nested = [nested]
    return [RaisingStr(), RaisingGet(content=PERFECT), RaisingGetItem([{"content": PERFECT}]),
            [RaisingGet(content=PERFECT)], RaisingLen([{"content": PERFECT}]), HostileStr(PERFECT),
            {"content": HostileStr(PERFECT)}, RaisingClass(), None, nested, [[None]], "x" * 1_000_000,
            "7" * 1_000_000]


def test_one_bad_completion_scores_0_never_the_batch():
    bad = hostile_completions()
    batch = [PERFECT, *bad, PERFECT]
    for func in DEFAULT_REWARDS:
        scores = func(prompts=[None] * len(batch), completions=batch, answer=["72"] * len(batch))
        assert scores == [1.0] + [0.0] * len(bad) + [1.0], func.__name__
    assert correctness_reward(None, [RaisingGet(), PERFECT], ["72", "72"]) == [0.0, 1.0]  # the issue's finding


def test_bad_golds_and_containers_score_0_and_keep_the_length():
    assert correctness_reward(None, [PERFECT, PERFECT], [RaisingStr(), "72"]) == [0.0, 1.0]
    assert correctness_reward(None, [PERFECT, PERFECT], [RaisingFloat(72), 72.0]) == [0.0, 1.0]
    assert correctness_reward(None, [PERFECT, PERFECT], [RaisingClass(), "72"]) == [0.0, 1.0]
    for golds in [RaisingIter(["72", "72"]), RaisingClass(), RaisingLen(["72", "72"])]:
        assert correctness_reward(None, [PERFECT, PERFECT], golds) == [0.0, 0.0]
    for func in DEFAULT_REWARDS:  # a batch that cannot be iterated but has a length: one 0 per completion
        assert func(None, RaisingIter([PERFECT, PERFECT])) == [0.0, 0.0]
        assert func(None, RaisingClass()) == []  # nothing to count: no completion, no score


# --- linear time on hostile text -----------------------------------------------------------------------

def adversarial_completions(size: int = 200_000) -> dict[str, str]:
    """Completions of about `size` characters built to break naive parsers (the tests run them, the benchmark times)."""
    def fill(unit: str) -> str:
        return unit * (size // len(unit))

    return {
        "repeated <reasoning>": fill("<reasoning>"),
        "repeated <answer>": fill("<answer>"),
        "nested unclosed tags": fill("<reasoning><answer>"),
        "closed answer of many numbers": f"<answer>{fill('1 ')}</answer>",
        "one huge number": fill("9"),
        "one huge number in <answer>": f"<answer>{fill('9')}</answer>",
        "thousands commas": f"<answer>{fill('1,')}</answer>",
        "thousands spaces": f"<answer>{fill('123 ')}</answer>",
        "fractions": f"<answer>{fill('1/')}</answer>",
        "mixed numbers": f"<answer>{fill('1 1/')}</answer>",
        "exponents": f"<answer>{fill('1e1')}</answer>",
        "minus signs": f"<answer>{fill('-')}</answer>",
        "negative parentheses": f"<answer>{fill('-(1')}</answer>",
        "LaTeX fractions": f"<answer>{fill(chr(92) + 'frac{1}{')}</answer>",
        "unicode digits and fractions": f"<answer>{fill('١½' + chr(0xA0))}</answer>",
        "number words": f"<answer>{fill('forty-two and ')}</answer>",
        "words, no number": f"<answer>{fill('the quick brown fox ')}</answer>",
        "equals signs": f"<answer>{fill('1=')}</answer>",
        "strict separators": "<reasoning>\n" + fill("\n</reasoning>\n<answer>\n") + "\n</answer>",
        "whitespace": "<reasoning>\n" + fill(" ") + "\n</reasoning>\n<answer>\n5 " + " " * 1000,
    }


ADVERSARIAL = adversarial_completions()


@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_adversarial_completions_score_without_hanging(text):
    # Not a timing test (benchmarks/bench_rewards.py measures): a quadratic or backtracking
    # implementation would take minutes here, a linear one takes milliseconds.
    for func in DEFAULT_REWARDS:
        (score,) = func(None, [text], answer=["5"])
        assert math.isfinite(score)
    for read in (answers.parse_number, answers.read_answer, answers.parse_bare_number):
        assert read(text) is None or math.isfinite(read(text))


# --- arbitrary input (hypothesis) ----------------------------------------------------------------------

FRAGMENTS = ["<reasoning>", "</reasoning>", "<answer>", "</answer>", "\n", " ", "72", "-3", "1,234", "$", "/",
             ".", ",", "x", r"\frac{1}{2}", "{,}", "9" * 45, "\u2212", "%", "(", ")", "1 234", "\u00a0", "1e3", "½",
             "٣", "forty", "-two", " and ", " or ", "=", "-(", r"\frac12", "^"]
tag_soup = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)
any_text = st.one_of(st.text(), tag_soup)
completion = st.one_of(any_text, any_text.map(lambda t: [{"role": "assistant", "content": t}]), st.none(),
                       st.integers(), st.lists(st.text(), max_size=2),
                       st.dictionaries(st.text(), st.text(), max_size=2),
                       # the hostile objects, less the huge strings and the one hypothesis itself cannot handle
                       st.sampled_from([c for c in hostile_completions() if type(c) not in (str, RaisingClass)]))
gold = st.one_of(st.none(), st.integers(-10**6, 10**6).map(str), st.text(max_size=10), st.integers(), st.floats(),
                 st.sampled_from([RaisingStr(), RaisingFloat(72)]))


@settings(max_examples=300, deadline=None)
@given(st.lists(completion, max_size=8), st.lists(gold, max_size=10))
def test_rewards_return_one_finite_float_per_completion(completions, golds):
    for func in DEFAULT_REWARDS:
        scores = func(prompts=[None] * len(completions), completions=completions, answer=golds)
        assert len(scores) == len(completions)
        assert all(type(s) is float and math.isfinite(s) for s in scores)


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_reward_ranges_and_implications(text):
    strict, soft, tags = (f(None, [text])[0] for f in (strict_format_reward, soft_format_reward, tag_count_reward))
    assert strict in (0.0, 1.0) and soft in (0.0, 1.0) and -0.5 <= tags <= 1.0
    assert strict <= soft, "strict format implies soft format"
    if strict:
        assert tags == 1.0
    answer = extract_xml_answer(text)
    assert answer is None or isinstance(answer, str)
    if numeric_answer_reward(None, [text])[0]:
        assert correctness_reward(None, [text], [read_answer(answer)])[0] == 1.0


# --- weights and the helpers -----------------------------------------------------------------------

def test_weights_rank_any_correct_answer_above_any_wrong_one():
    assert len(DEFAULT_REWARD_WEIGHTS) == len(DEFAULT_REWARDS)
    assert MAX_TOTAL_REWARD == sum(DEFAULT_REWARD_WEIGHTS) == 3.5
    correctness_weight, *format_weights = DEFAULT_REWARD_WEIGHTS
    best_wrong = sum(format_weights)
    worst_right = correctness_weight - format_weights[-1] * rewards.TRAILING_TEXT_PENALTY_CAP
    assert worst_right > best_wrong
    worst = score_completions(["<answer>so 72</answer><answer>so 72</answer>" + "x" * 5000], ["72"])["total"][0]
    best_wrong_seen = score_completions([data.format_completion(REASONING, "73")], ["72"])["total"][0]
    assert worst == worst_right and best_wrong_seen == best_wrong


def test_score_completions_table():
    examples = rewards.example_completions(REASONING, "72")
    table = score_completions(list(examples.values()), "72", labels=list(examples))
    assert list(table.columns) == REWARD_NAMES + ["total"]
    assert list(table.index) == list(examples)
    assert table["total"].iloc[0] == MAX_TOTAL_REWARD
    plain = score_completions([PERFECT], ["72"], reward_funcs=[correctness_reward, tag_count_reward])
    assert plain["total"][0] == 2.0  # unweighted sum for a custom list
    with pytest.raises(ValueError):
        score_completions([PERFECT], ["72"], reward_funcs=[correctness_reward], weights=[1.0, 2.0])
    assert list(rewards.describe_rewards()["reward"]) == REWARD_NAMES


# --- every real GSM8K gold ------------------------------------------------------------------------

def _gold_rows(gsm8k_dir):
    for split in ("train", "test"):
        with (gsm8k_dir / f"{split}.jsonl").open(encoding="utf-8") as handle:
            for line in handle:
                solution = json.loads(line)["answer"]
                yield data.solution_reasoning(solution), data.extract_hash_answer(solution)


def test_every_real_gsm8k_answer_gets_full_marks_and_no_credit_when_changed(gsm8k_dir):
    reasonings, golds = zip(*_gold_rows(gsm8k_dir))
    assert len(golds) == 8792
    values = [int(g) for g in golds]
    assert [read_answer(g) for g in golds] == values
    assert [answers.parse_bare_number(g) for g in golds] == values == [answers.parse_number(g) for g in golds]
    right = [data.format_completion(r, g) for r, g in zip(reasonings, golds)]
    wrong = [data.format_completion(r, str(int(g) + 1)) for r, g in zip(reasonings, golds)]
    totals = score_completions(right, golds)["total"]
    assert (totals == MAX_TOTAL_REWARD).all(), right[int(totals.idxmin())]
    assert correctness_reward(None, wrong, golds) == [0.0] * len(golds)
    # The same gold written the usual other ways still counts.
    for style in ["{:,d}", "${:,d}", "{:d}.00", "{:d} dollars", "The answer is {:d}."]:
        styled = [f"<answer>{style.format(int(g))}</answer>" for g in golds]
        assert correctness_reward(None, styled, golds) == [1.0] * len(golds), style

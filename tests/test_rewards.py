"""The rewards: TRL's contract, arbitrary input, tricky answers, every real GSM8K gold."""

from __future__ import annotations

import json
import math
import re
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_helpers import data, rewards
from grpo_helpers.rewards import (DEFAULT_REWARD_WEIGHTS, DEFAULT_REWARDS, MAX_TOTAL_REWARD, correctness_reward,
                                  extract_xml_answer, numeric_answer_reward, parse_bare_number,
                                  parse_number, score_completions, soft_format_reward, strict_format_reward,
                                  tag_count_reward)

REASONING = "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether."
PERFECT = data.format_completion(REASONING, "72")

# --- the tricky-case tables ------------------------------------------------------------------------

# (text, what parse_number reads). Several numbers: the LAST one counts, because a worked answer
# ends with its result ("1234 - 1200 = 34", "so x = 34"); listing candidates does not pay, since
# only one of them is ever compared. numeric_answer_reward then pays only for a single bare number.
PARSE_CASES = [
    ("1234", 1234.0), ("1,234", 1234.0), ("1234.00", 1234.0), ("$1,234", 1234.0), ("1234.", 1234.0),
    ("-3", -3.0), ("\u22123", -3.0), ("1/2", 0.5), ("1 / 2", 0.5), ("3 apples", 3.0), ("50%", 50.0),
    (".5", 0.5), ("-$5", -5.0), ("$-5", -5.0), ("(-5)", -5.0), ("1,234,567", 1234567.0), ("  42\n", 42.0),
    ("The answer is 72.", 72.0), ("**72**", 72.0), (r"\boxed{72}", 72.0), (r"\frac{3}{4}", 0.75),
    (r"\dfrac{144}{2}", 72.0), ("1{,}234", 1234.0), ("-0", 0.0),
    # several numbers: the last one
    ("12 or 15", 15.0), ("1234 - 1200 = 34", 34.0), ("10-12", 12.0), ("x-5", 5.0), ("3 + 4", 4.0),
    # known limits, pinned so a change is deliberate
    ("1 234", 234.0),  # space as thousands separator: two numbers
    ("12,15", 15.0),  # not a thousands group: two numbers
    ("1e3", 3.0),  # no scientific notation (no GSM8K answer needs it)
    # no number at all
    ("", None), ("three", None), ("$", None), ("-", None), ("1/0", None), ("9" * 41, None), ("9" * 200_000, None),
]

# (case, completion, gold, correctness, numeric_answer, strict_format, soft_format, tag_count)
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
    ("several numbers, last is gold", data.format_completion(REASONING, "48 + 24 = 72"), "72", 1, 0, 1, 1, 1),
    ("several numbers, gold not last", data.format_completion(REASONING, "72 or 24"), "72", 0, 0, 1, 1, 1),
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
    ("gold not a number", PERFECT, "seventy-two", 0, 1, 1, 1, 1),
    ("chat message", [{"role": "assistant", "content": PERFECT}], "72", 1, 1, 1, 1, 1),
    ("None", None, "72", 0, 0, 0, 0, 0),
    ("not text", 72, "72", 0, 0, 0, 0, 0),
]
REWARD_NAMES = ["correctness_reward", "numeric_answer_reward", "strict_format_reward", "soft_format_reward",
                "tag_count_reward"]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES, ids=lambda v: repr(v)[:30])
def test_parse_number_cases(text, expected):
    assert parse_number(text) == expected


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


def test_parse_bare_number():
    for bare in ["72", " $1,234 ", "-3", "1/2", "72.", "50%", "1234.00"]:
        assert parse_bare_number(bare) is not None, bare
    for not_bare in ["72 clips", "12 or 15", "", "x", "1e3", "9" * 100, None]:
        assert parse_bare_number(not_bare) is None, not_bare


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


ADVERSARIAL = {
    "<reasoning> x 20000": "<reasoning>" * 20_000,
    "<answer> x 25000": "<answer>" * 25_000,
    "nested unclosed tags": ("<reasoning><answer>" * 11_000)[:200_000],
    "closed answer of 100000 numbers": "<answer>" + "1 " * 100_000 + "</answer>",
    "200000 nines": "9" * 200_000,
    "200000 nines in <answer>": "<answer>" + "9" * 200_000 + "</answer>",
    "thousands commas": "<answer>" + "1," * 100_000 + "</answer>",
    "fractions": "<answer>" + "1/" * 100_000 + "</answer>",
    "minus signs": "<answer>" + "-" * 200_000 + "</answer>",
    "LaTeX fractions": "<answer>" + r"\frac{1}{" * 25_000 + "</answer>",
    "strict separators": "<reasoning>\n" + "\n</reasoning>\n<answer>\n" * 9_000 + "\n</answer>",
    "whitespace": "<reasoning>\n" + " " * 200_000 + "\n</reasoning>\n<answer>\n5 " + " " * 1000,
}


@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_adversarial_completions_score_without_hanging(text):
    # Not a timing test (benchmarks/bench_rewards.py measures): a quadratic or backtracking
    # implementation would take minutes here, a linear one takes milliseconds.
    for func in DEFAULT_REWARDS:
        (score,) = func(None, [text], answer=["5"])
        assert math.isfinite(score)
    assert parse_number(text) is None or math.isfinite(parse_number(text))


# --- arbitrary input (hypothesis) ----------------------------------------------------------------------

FRAGMENTS = ["<reasoning>", "</reasoning>", "<answer>", "</answer>", "\n", " ", "72", "-3", "1,234", "$", "/",
             ".", ",", "x", r"\frac{1}{2}", "{,}", "9" * 45, "\u2212", "%", "(", ")"]
tag_soup = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)
any_text = st.one_of(st.text(), tag_soup)
completion = st.one_of(any_text, any_text.map(lambda t: [{"role": "assistant", "content": t}]), st.none(),
                       st.integers(), st.lists(st.text(), max_size=2),
                       st.dictionaries(st.text(), st.text(), max_size=2))
gold = st.one_of(st.none(), st.integers(-10**6, 10**6).map(str), st.text(max_size=10), st.integers(), st.floats())


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
        assert correctness_reward(None, [text], [parse_number(answer)])[0] == 1.0


def _last_number_by_full_scan(text: str) -> float | None:
    last = deque(rewards._NUMBER.finditer(rewards._normalise_latex(text)), maxlen=1)
    return rewards._number_value(last[0]) if last else None


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet="0123456789,./-$ x\u2212", max_size=600)))
def test_parse_number_reads_the_tail_like_a_full_scan(text):
    assert parse_number(text) == _last_number_by_full_scan(text)


@settings(max_examples=300, deadline=None)
@given(st.integers(-10**9, 10**9), st.sampled_from(["{:d}", "{:,d}", "${:,d}", "{:d}.00", "{:d}.", "{:d} apples"]))
def test_a_number_written_any_usual_way_reads_back(value, style):
    text = style.format(value) if value >= 0 or style[0] != "$" else "-" + style.format(-value)
    assert parse_number(text) == value


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
    right = [data.format_completion(r, g) for r, g in zip(reasonings, golds)]
    wrong = [data.format_completion(r, str(int(g) + 1)) for r, g in zip(reasonings, golds)]
    totals = score_completions(right, golds)["total"]
    assert (totals == MAX_TOTAL_REWARD).all(), right[int(totals.idxmin())]
    assert correctness_reward(None, wrong, golds) == [0.0] * len(golds)
    # The same gold written the usual other ways still counts.
    for style in ["{:,d}", "${:,d}", "{:d}.00", "{:d} dollars", "The answer is {:d}."]:
        styled = [f"<answer>{style.format(int(g))}</answer>" for g in golds]
        assert correctness_reward(None, styled, golds) == [1.0] * len(golds), style


# --- math-verify, the reference for LaTeX-aware equivalence ------------------------------------------

# Where both apply, math-verify and parse_number agree; the rows after that are where they differ on
# purpose. math-verify stays out of the reward path: it is ~50x slower per answer, takes 0.35 s to
# 5 s (its timeout) on a 200 KB answer and 19 s untimed on 122 characters of nested parentheses
# (`python benchmarks/bench_rewards.py --math-verify`); its timeout is a whole-second SIGALRM that
# fails outside the main thread.
AGREE_WITH_MATH_VERIFY = ["1,234", "1234.00", "$1,234", "1234.", "12 or 1234", r"\boxed{1234}", "1234 apples",
                          "The answer is 1234", r"$\frac{2468}{2}$", r"$1{,}234$", "72", "-3", "1/2", "1e3"]


@pytest.mark.parametrize("text", AGREE_WITH_MATH_VERIFY)
def test_parse_number_agrees_with_math_verify(text):
    math_verify = pytest.importorskip("math_verify")
    expected = math_verify.verify(math_verify.parse("1234"), math_verify.parse(text), timeout_seconds=None)
    assert rewards.numbers_equal(parse_number(text), 1234.0) == expected


def test_where_parse_number_and_math_verify_differ_on_purpose():
    math_verify = pytest.importorskip("math_verify")
    # "1 234": math-verify joins space-grouped digits, we read two numbers (a reply "1 234" is ambiguous).
    assert math_verify.verify(math_verify.parse("1234"), math_verify.parse("1 234"), timeout_seconds=None)
    assert parse_number("1 234") == 234.0
    # "\dfrac" without $ delimiters: math-verify finds nothing, we read the fraction.
    assert math_verify.parse(r"\dfrac{10}{2}") == []
    assert parse_number(r"\dfrac{10}{2}") == 5.0

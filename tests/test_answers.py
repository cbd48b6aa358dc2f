"""Reading the one number an answer gives: the grammar, ambiguity, exact comparison, math-verify as reference."""

from __future__ import annotations

import logging
from collections import deque
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_helpers import answers
from grpo_helpers.answers import as_fraction, numbers_equal, parse_bare_number, parse_number, read_answer

# --- read_answer: exactly one value, or None ----------------------------------------------------------

# (answer, the value read_answer gives; None: no number, or ambiguous)
READ_CASES = [
    # thousands: commas, spaces, no-break, narrow no-break and thin spaces, LaTeX; groups of 3 only
    ("1234", 1234), ("1,234", 1234), ("1 234", 1234), ("1\u00a0234", 1234), ("1\u202f234", 1234),
    ("1\u2009234", 1234), ("12 345 678", 12345678), (r"1\,234", 1234), ("1{,}234", 1234),
    ("$1,234.50", Fraction(2469, 2)),
    ("1 23", None), ("1 2345", None), ("12,15", None), ("3,5", None),
    # scientific notation; a scale word after digits
    ("1e3", 1000), ("4.2e1", 42), ("4.2E+1", 42), ("1.5e-3", Fraction(3, 2000)), ("1e100", None),
    ("1.5 million", 1500000), ("2 dozen", 24), ("5 hundred thousand", 500000),
    # fractions and mixed numbers: plain, LaTeX, unicode
    ("1/2", Fraction(1, 2)), ("1 / 2", Fraction(1, 2)), ("3 1/2", Fraction(7, 2)), ("-3 1/2", Fraction(-7, 2)),
    (r"\frac12", Fraction(1, 2)), (r"\frac{1}{2}", Fraction(1, 2)), (r"\dfrac{1}{2}", Fraction(1, 2)),
    (r"\tfrac{3}{4}", Fraction(3, 4)), (r"-\frac{1}{2}", Fraction(-1, 2)), (r"3\frac12", Fraction(7, 2)),
    ("½", Fraction(1, 2)), ("¼", Fraction(1, 4)), ("¾", Fraction(3, 4)), ("⅓", Fraction(1, 3)), ("3½", Fraction(7, 2)),
    ("3 ½", Fraction(7, 2)), ("-½", Fraction(-1, 2)), ("1/0", None),
    # the digits of other scripts
    ("１２３", 123), ("١٢٣", 123), ("۱۲۳", 123), ("٣٫٥", Fraction(7, 2)), ("१२३", 123), ("１，２３４", 1234),
    # signs
    ("-3", -3), ("\u22123", -3), ("\u20133", -3), ("-(5)", -5), ("\u2212(5)", -5), ("(-5)", -5), ("-$5", -5),
    ("$-5", -5), ("negative 5", -5), ("minus five", -5), ("-0", 0),
    # words, only where no digits are
    ("forty-two", 42), ("Forty two", 42), ("one hundred and five", 105), ("twelve", 12), ("zero", 0),
    ("three thousand four hundred and fifty-six", 3456), ("nineteen hundred", 1900), ("two dozen", 24),
    ("one million two hundred thousand", 1200000), ("72 (seventy-two)", 72), ("hundred", None), ("one two", None),
    ("five and six", None), ("two and a half", None), ("one third", None), ("twenty-one", 21),
    # ambiguous: two values
    ("41 or 42", None), ("10-12", None), ("10\u201312", None), ("10 to 12", None), ("between 10 and 12", None),
    ("3:4", None), ("42 apples in 7 boxes", None), ("ten or eleven", None), ("72 72 72 72", 72),
    ("72 72 72 72 72", None),
    # worked answers: the result after the last "="
    ("48 + 24 = 72", 72), ("x = 72", 72), ("1234 - 1200 = 34", 34), ("72 = 48 + 24", None),
    ("1/2 = 0.5", Fraction(1, 2)),
    ("forty plus two = forty-two", 42),
    # what would change the number in a way we do not read
    ("10^3", None), ("10²", None), ("3x4", None), (r"\sqrt{4}", None), ("√4", None), ("2π", None), ("±5", None),
    # units and names are not numbers
    ("5 m^2", 5), (r"5 \text{m}^2", 5), ("25 m²", 25), ("5 cm^{2}", 5), ("CO2", None), ("x_1", None),
    # the usual ways
    ("The answer is 72.", 72), ("**72**", 72), (r"\boxed{72}", 72), ("$72$", 72), ("72 apples", 72), ("50%", 50),
    ("72.", 72), ("72.00", 72), ("1.2.3", None), ("", None), ("none", None), ("9" * 41, None),
    ("9" * 40, int("9" * 40)),
]


@pytest.mark.parametrize(("text", "expected"), READ_CASES, ids=lambda v: repr(v)[:30])
def test_read_answer(text, expected):
    assert read_answer(text) == expected
    assert read_answer(text) is None or isinstance(read_answer(text), Fraction)


def test_read_answer_of_no_text():
    for not_text in [None, 72, b"72", ["72"]]:
        assert read_answer(not_text) is None


# --- parse_number: the last number of free text (evaluation's lenient score) ------------------------------

PARSE_CASES = [
    ("1234", 1234), ("1,234", 1234), ("1234.00", 1234), ("$1,234", 1234), ("1234.", 1234), ("-3", -3), ("\u22123", -3),
    ("1/2", 0.5), ("1 / 2", 0.5), ("3 apples", 3), ("50%", 50), (".5", 0.5), ("-$5", -5), ("$-5", -5), ("(-5)", -5),
    ("1,234,567", 1234567), ("  42\n", 42), ("The answer is 72.", 72), ("**72**", 72), (r"\boxed{72}", 72),
    (r"\frac{3}{4}", 0.75), (r"\dfrac{144}{2}", 72), ("1{,}234", 1234), ("-0", 0), ("1 234", 1234), ("1e3", 1000),
    ("3 1/2", 3.5), ("½", 0.5), ("١٢٣", 123), ("-(5)", -5), ("area 25 m2", 25), ("it is 1.5 million", 1500000),
    # several numbers: the last one (no ambiguity check in free text)
    ("12 or 15", 15), ("1234 - 1200 = 34", 34), ("10-12", 12), ("x-5", 5), ("3 + 4", 4), ("12,15", 15), ("1 23", 23),
    # no number at all
    ("", None), ("three", None), ("$", None), ("-", None), ("1/0", None), ("9" * 41, None), ("9" * 200_000, None),
    ("x5", None),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES, ids=lambda v: repr(v)[:30])
def test_parse_number_cases(text, expected):
    assert parse_number(text) == expected


def test_parse_bare_number():
    for bare, value in [("72", 72), (" $1,234 ", 1234), ("-3", -3), ("1/2", 0.5), ("72.", 72), ("50%", 50),
                        ("1234.00", 1234), ("1e3", 1000), ("1 234", 1234), ("3 1/2", 3.5), ("½", 0.5), ("١٢", 12),
                        ("-(5)", -5), (r"\frac12", 0.5)]:
        assert parse_bare_number(bare) == value, bare
    for not_bare in ["72 clips", "12 or 15", "", "x", "9" * 100, None, "forty-two", r"\boxed{72}", "1.5 million"]:
        assert parse_bare_number(not_bare) is None, not_bare


def _last_number_by_full_scan(text: str) -> Fraction | None:
    text = answers.normalise(text)
    last = deque(answers._NUMBER.finditer(text), maxlen=1)
    return answers._match_value(text, last[0]) if last else None


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet="0123456789,./-$ xe^E+\u2212\u00a0\n½(", max_size=1200)))
def test_parse_number_read_from_the_end_is_a_full_scan(text):
    assert parse_number(text) == _last_number_by_full_scan(text)


@settings(max_examples=300, deadline=None)
@given(st.integers(-10**9, 10**9), st.sampled_from(["{:d}", "{:,d}", "${:,d}", "{:d}.00", "{:d}.", "{:d} apples",
                                                    "{:,d}".replace(",", "_")]))
def test_a_number_written_any_usual_way_reads_back(value, style):
    text = style.format(value) if value >= 0 or style[0] != "$" else "-" + style.format(-value)
    text = text.replace("_", "\u202f")  # narrow no-break spaces as thousands separators
    assert parse_number(text) == value
    assert read_answer(text) == value


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_a_bare_number_is_the_answer_it_reads_as(text):
    bare = parse_bare_number(text)
    if bare is not None:
        assert read_answer(text) == bare == parse_number(text)


# --- comparing -----------------------------------------------------------------------------------------

def test_numbers_equal_is_exact_except_for_golds_with_no_exact_decimal():
    assert numbers_equal(read_answer("72.00"), 72) and numbers_equal(Fraction(1, 2), 0.5)
    assert not numbers_equal(read_answer("12345678.01"), 12345678)
    assert not numbers_equal(read_answer("0.000000001"), 0)
    assert not numbers_equal(read_answer("1e-12"), 0)
    assert not numbers_equal(12345678901234567, 12345678901234568)  # floats would call these equal
    assert numbers_equal(read_answer("0.333333"), Fraction(1, 3))  # 1/3 can only be written rounded
    assert not numbers_equal(read_answer("0.33333"), Fraction(1, 3))
    assert not numbers_equal(read_answer("1/3"), read_answer("0.333333"))  # a decimal gold is exact
    assert numbers_equal(0.1, read_answer("0.1"))  # a float means the decimal it was written as
    for missing in [None, "72", float("nan"), float("inf"), True, object()]:
        assert not numbers_equal(missing, 72) and not numbers_equal(72, missing)


def test_as_fraction():
    assert as_fraction(np.int64(3)) == 3 and as_fraction(np.float32(0.5)) == Fraction(1, 2)
    assert as_fraction(0.1) == Fraction(1, 10) and as_fraction(Fraction(2, 3)) == Fraction(2, 3)
    assert as_fraction(1e300) == 10**300
    for not_a_number in [None, "1", True, float("nan"), -float("inf"), [1]]:
        assert as_fraction(not_a_number) is None


# --- math-verify, the reference where it has an opinion ----------------------------------------------

# (answer, gold, do we call them equal, why math-verify says otherwise: None where it agrees or has no
# opinion, i.e. parses nothing). GSM8K's golds are integers; every row is a way a model writes one.
EQUIVALENCES = [
    ("1 234", "1234", True, None), ("12 345 678", "12345678", True, None), ("1 23", "123", False, None),
    ("1\u00a0234", "1234", True, "it reads only the last group (234) after a no-break space"),
    ("1\u202f234", "1234", True, "it reads only the last group (234) after a narrow no-break space"),
    ("1\u2009234", "1234", True, "it reads only the last group (234) after a thin space"),
    ("1,234", "1234", True, None), ("$1,234", "1234", True, None), ("1234.00", "1234", True, None),
    ("1{,}234", "1234", True, "outside $...$ it stops at the LaTeX group {,} and reads 1"),
    (r"1\,234", "1234", True, r"outside $...$ it stops at the LaTeX thin space \, and reads 1"),
    ("1e3", "1000", True, "it has no e-notation: 1e3 reads as 1"),
    ("4.2e1", "42", True, "it has no e-notation: 4.2e1 reads as 4.2"),
    ("4.2E+1", "42", True, "it has no e-notation: 4.2E+1 reads as 4.2"),
    ("1.5e-3", "0.0015", True, "it has no e-notation: 1.5e-3 reads as 1.5"),
    ("1.5 million", "1500000", True, "it ignores the scale word and reads 1.5"),
    ("forty-two", "42", True, None), ("one hundred and five", "105", True, None), ("twelve", "12", True, None),
    ("three thousand four hundred and fifty-six", "3456", True, None), ("two and a half", "2.5", False, None),
    ("3 1/2", "3.5", True, "it reads the mixed number 3 1/2 as 1 (3 times 1/2 is not what a person means)"),
    (r"\frac12", "0.5", True, None), (r"\frac{1}{2}", "0.5", True, None), (r"\dfrac{1}{2}", "0.5", True, None),
    (r"$\dfrac{1}{2}$", "0.5", True, None), ("½", "0.5", True, None), ("¾", "0.75", True, None),
    ("3½", "3.5", True, "it reads 3 and drops the ½"), ("1/2", "0.5", True, None),
    (r"-\frac{1}{2}", "-0.5", True, None),
    ("１２３", "123", True, None), ("١٢٣", "123", True, None), ("۱۲۳", "123", True, None), ("٣٫٥", "3.5", True, None),
    ("-(5)", "-5", True, None), ("\u22125", "-5", True, None), ("(-5)", "-5", True, None), ("-3", "-3", True, None),
    ("negative 5", "-5", True, "it reads the digits and drops the word: 5"),
    ("41 or 42", "42", False, "it takes the last candidate: a list of guesses would score"),
    ("10 to 12", "12", False, "it takes the end of the range"),
    ("42 apples in 7 boxes", "7", False, "it takes the last number of the sentence"),
    ("12 or 15", "15", False, "it takes the last candidate"),
    ("72 = 48 + 24", "72", False, "it reads the side after '=' as the sum 48 + 24 = 72; we read the result "
                                  "after the last '=', and here that side states two numbers"),
    ("10-12", "12", False, None), ("3:4", "4", False, None), ("12,15", "15", False, None), ("3,5", "5", False, None),
    ("12345678.01", "12345678", False, None), ("0.000000001", "0", False, None), ("12345679", "12345678", False, None),
    ("0.999999", "1", False, None), ("0.333333", "1/3", True, None),
    ("1/3", "0.333333", False, "it rounds to the gold's precision; we take a decimal gold as exact"),
    ("72.0", "72", True, None), ("72.", "72", True, None), ("48 + 24 = 72", "72", True, None),
    ("1234 - 1200 = 34", "34", True, None), ("x = 72", "72", True, None), ("The answer is 72.", "72", True, None),
    ("72 apples", "72", True, None), (r"\boxed{72}", "72", True, None), ("$72$", "72", True, None),
    ("**72**", "72", True, None), ("72 (seventy-two)", "72", True, None), ("5 m^2", "5", True, None),
    ("10^3", "1000", False, "it computes powers; we do not read them (a number after ^ may be a unit's exponent), "
                            "so the answer states 10 and 3 and scores 0"),
    (r"\sqrt{4}", "2", False, None), ("50%", "50", True, None), ("three", "3", True, None),
]


@pytest.fixture(scope="module")
def math_verify():
    module = pytest.importorskip("math_verify")
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return module


@pytest.mark.parametrize("row", EQUIVALENCES, ids=[repr(row[0])[:30] for row in EQUIVALENCES])
def test_equivalences_against_math_verify(row, math_verify):
    answer, gold, equal, why_math_verify_differs = row
    assert numbers_equal(read_answer(answer), read_answer(gold)) == equal
    parsed = math_verify.parse(answer, parsing_timeout=None)
    if not parsed:
        assert why_math_verify_differs is None  # no opinion: nothing to differ from
        return
    verdict = math_verify.verify(math_verify.parse(gold, parsing_timeout=None), parsed, timeout_seconds=None)
    if why_math_verify_differs is None:
        assert verdict == equal
    else:
        assert verdict != equal, f"math-verify now agrees: drop the reason {why_math_verify_differs!r}"

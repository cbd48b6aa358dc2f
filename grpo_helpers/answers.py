"""Read the one number an answer gives, the way a careful grader reads it.

Two readers share one grammar of numbers:
- `read_answer(text)`, for what a reply puts inside <answer>...</answer> (correctness_reward): the
  answer must state exactly one value, else it is ambiguous and reads as None (scored 0). "41 or
  42", ranges ("10-12", "10 to 12"), ratios ("3:4") and "42 apples in 7 boxes" state two values.
  The same value said again counts once ("72 (seventy-two)"), up to MAX_MENTIONS times; more is a
  list, not an answer. A worked answer is read after its last "=": a grader takes "48 + 24 = 72"
  as 72, the result, while "72 = 48 + 24" states 48 and 24 (None). Numbers in words count only in
  an answer with no number in digits ("forty-two", "one hundred and five"). What would change a
  number in ways we do not read ("√2", "2π", "±5", "10²", "3x4", "two and a half") is None too.
- `parse_number(text)`, for free text such as a whole reply (evaluation's lenient score): the
  last number anywhere, in the same grammar; no words, no ambiguity check.

The grammar, after normalisation: thousands grouped by commas or by single spaces, no-break spaces
(U+00A0, U+202F) or thin spaces (U+2009, LaTeX "\\,"), only when every group has 3 digits ("1 234"
is 1234, "1 23" two numbers); decimals; scientific notation ("1e3", "4.2E+1"); fractions ("1/2",
"\\frac12", "\\dfrac{1}{2}", "½"); mixed numbers ("3 1/2", "3½"); the decimal digits of any script
(fullwidth, Arabic-Indic...); a unicode minus or dash, "-(5)"; "$", "%", and a scale word after
digits ("1.5 million"). A number glued to a letter is part of a name or a unit ("m2", "x_1", "m^2").

Values are exact (fractions.Fraction) and `numbers_equal` compares them exactly, so 12345678.01 is
not 12345678 and 0.000000001 is not 0 (a float tolerance accepted both). Only a gold with no exact
decimal form (1/3) is matched within a relative 1e-6 ("0.333333"), as it can only be written
rounded; there is no absolute slack. GSM8K's golds are all integers: for them, equal means equal.
`parse_bare_number` (numeric_answer_reward) accepts one number in digits and nothing else.

Known limits, all on the safe side or rare in an answer tag: powers are not read ("10^3" states 10
and 3: None); "x = 5, y = 7" reads 7 (the last "="); "1.234" is a decimal, never a German 1234;
a unit glued after digits is dropped ("2.5k" reads 2.5).

Linear time on any input: repeats of digits and digit groups are possessive and every other part
is one bounded step, so a failed attempt costs one pass over one run of digits; each normalisation
runs only when its trigger is there; read_answer stops at its second value or its fifth mention;
parse_number reads back from the end, a growing window at a time (`_last_number_match`).
"""

from __future__ import annotations

import functools
import math
import numbers
import re
import unicodedata
from collections import deque
from collections.abc import Iterable, Iterator
from fractions import Fraction
from typing import Any

MAX_NUMBER_CHARS = 40  # per part of a number; GSM8K's answers have at most 8 digits
MAX_EXPONENT_DIGITS = 2  # 1e99 at most: keeps Fraction and float() small
MAX_MENTIONS = 4  # times one answer may repeat its value
RELATIVE_TOLERANCE = Fraction(1, 10**6)  # only for golds with no exact decimal form
_TAIL_CHARS = 256

# One number (on normalised, ASCII text). Runs of digits and of digit groups are possessive (never
# given back: a number never ends before a digit), and every other part is one bounded step, so a
# failed attempt costs one pass over one run of digits.
_NUMBER_PATTERN = r"""
    (?<![A-Za-z0-9_.])(?<![A-Za-z}]\^)(?<![A-Za-z}]\^\{)     # not inside a name, a unit or a longer number
    (?:(?<!\))(?P<minus>-))?\$?                                 # a sign, not a subtraction ("(3)-5")
    (?:(?P<whole>\d++)\ (?P<part>\d++)\ ?/\ ?(?P<parts>\d++)      # 3 1/2
      |(?P<num>(?:\d{1,3}(?:,\d{3})++|\d{1,3}(?:\ \d{3})++|\d++)(?:\.\d++)?|\.\d++)  # 1,234 / 1 234 / 12.5
       (?:[eE](?P<exp>[-+]?\d++))?                              # 1e3, 4.2E+1
       (?:\ ?/\ ?(?P<den>\d++(?:\.\d++)?))?)                    # /4
    (?![0-9]|\.[0-9])                                           # not the start of "1.2.3" or "1 2345"
"""
_NUMBER = re.compile(_NUMBER_PATTERN, re.ASCII | re.VERBOSE)
_BARE_NUMBER = re.compile(rf"\s*(?:{_NUMBER_PATTERN})%?\.?\s*", re.ASCII | re.VERBOSE)
# Characters _NUMBER never matches: no number crosses one, so a scan may start at one.
_NOT_IN_A_NUMBER = re.compile(r"[^0-9,. /$eE+\-]")
_SCALES = {"hundred": 100, "dozen": 12, "thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_SCALE_AFTER = re.compile(r" (hundred|thousand|million|billion|trillion|dozen)\b", re.ASCII | re.IGNORECASE)
# What changes a number in a way we do not read: the answer is then None (on lowercased text).
_UNREADABLE_SYMBOLS = "√∛∜π±∓∞"  # √2, 2π, ±5
_SUPERSCRIPTS = "⁰¹²³⁴⁵⁶⁷⁸⁹"
_POWER = re.compile(f"[0-9][{_SUPERSCRIPTS}]")  # 10²
_UNREADABLE_LATEX = re.compile(r"\\(?:sqrt|pi|pm|mp|infty)(?![a-z])")
_TIMES = re.compile(r"[0-9]x[0-9]")  # 3x4
_FRACTION_WORDS = ("half halves third thirds quarter quarters fourth fourths fifth fifths sixth sixths seventh "
                   "sevenths eighth eighths ninth ninths tenth tenths hundredth hundredths thousandth thousandths "
                   "point")


def _words_pattern(words: Iterable[str]) -> re.Pattern[str]:
    # Whole lowercase words; the lookahead on first letters lets the scan skip other text quickly.
    words = sorted(words, key=len, reverse=True)
    return re.compile(rf"(?=[{''.join(sorted({w[0] for w in words}))}])\b(?:{'|'.join(words)})\b", re.ASCII)


_FRACTION_WORD = _words_pattern(_FRACTION_WORDS.split())  # "two and a half"

# --- normalisation: unicode, LaTeX and "-(5)" into the plain ASCII the grammar reads ---------------

_MARK = "\ufdd0"  # a noncharacter: where a vulgar fraction was ("3½" -> "3 1/2", "-½" -> "-1/2")
_TRANSLATION = {
    **{ord(c): " " for c in "\u00a0\u2007\u2008\u2009\u200a\u202f\u205f\u3000"},  # no-break, thin... spaces
    **{ord(c): "-" for c in "\u2010\u2011\u2012\u2013\u2212\ufe63\uff0d"},  # hyphens, dashes, minus signs
    **{ord(c): t for c, t in zip("＄％＋，．／＝（）٪٫٬⁄∕", "$%+,./=()%.,//")},  # fullwidth, Arabic, slashes
    **{ord(c): _MARK + unicodedata.normalize("NFKC", c).replace("\u2044", "/") + " " for c in "½⅓⅔¼¾⅕⅖⅗⅘⅙⅚⅐⅛⅜⅝⅞⅑⅒↉"},
    ord(_MARK): " ",
}


@functools.cache
def _translation() -> dict[int, str]:
    # Plus the decimal digits of every script: built on the first text that is not ASCII (~0.1 s).
    every_digit = re.findall(r"\d", "".join(map(chr, range(0x80, 0x110000))))
    return {**_TRANSLATION, **{ord(d): str(unicodedata.decimal(d)) for d in every_digit}}


_LATEX_FRACTION = re.compile(r"\\[dtc]?frac *(?:\{ *(-?[\d.,]{1,40}) *\}|(\d)) *(?:\{ *([\d.,]{1,40}) *\}|(\d))",
                             re.ASCII)
_LATEX_MARKUP = re.compile(r"\\(?:[,;: !$%]|left(?![A-Za-z])|right(?![A-Za-z]))")
_LATEX_MARKUP_TEXT = {"\\,": " ", "\\;": " ", "\\:": " ", "\\ ": " ", "\\!": "", "\\$": "$", "\\%": "%"}
_NEGATIVE_PARENS = re.compile(r"(?<![\w)])-\( ?(\$?[0-9][0-9.,]{0,60}) ?\)", re.ASCII)


def _latex_fraction_as_text(match: re.Match[str]) -> str:
    glued = match.start() > 0 and match.string[match.start() - 1].isdigit()  # 3\frac12: a mixed number
    return f"{' ' if glued else ''}{match[1] or match[2]}/{match[3] or match[4]}"


def normalise(text: str) -> str:
    """`text` with digits, minus signs, spaces, fractions and LaTeX numbers in the ASCII the readers parse."""
    if not text.isascii():
        text = text.translate(_translation())
        if _MARK in text:
            text = text.replace("-" + _MARK, "-").replace(" " + _MARK, " ").replace(_MARK, " ")
    if "\\" in text or "{,}" in text:
        text = _LATEX_MARKUP.sub(lambda m: _LATEX_MARKUP_TEXT.get(m[0], ""), text.replace("{,}", ","))
        text = _LATEX_FRACTION.sub(_latex_fraction_as_text, text)
    if "-(" in text:
        text = _NEGATIVE_PARENS.sub(r"-\1", text)
    return text


# --- one number's value ----------------------------------------------------------------------------

def _match_value(text: str, match: re.Match[str]) -> Fraction | None:
    if match["whole"] is not None:
        parts = match["whole"], match["part"], match["parts"]
        if max(map(len, parts)) > MAX_NUMBER_CHARS or not int(parts[2]):
            return None
        value = int(parts[0]) + Fraction(int(parts[1]), int(parts[2]))
    else:
        number, exponent, denominator = match["num"].replace(",", "").replace(" ", ""), match["exp"], match["den"]
        if len(number) > MAX_NUMBER_CHARS or len(denominator or "") > MAX_NUMBER_CHARS:
            return None
        value = Fraction(int(number)) if number.isdigit() else Fraction(number)
        if exponent is not None:
            if len(exponent.lstrip("+-")) > MAX_EXPONENT_DIGITS:
                return None
            value *= Fraction(10) ** int(exponent)
        if denominator is not None:
            if not Fraction(denominator):
                return None
            value /= Fraction(denominator)
    position = match.end()
    for _ in range(3):  # "1.5 million", "2 dozen", "5 hundred thousand"
        scale = _SCALE_AFTER.match(text, position)
        if scale is None:
            break
        value, position = value * _SCALES[scale[1].lower()], scale.end()
    return -value if match["minus"] else value


def _last_number_match(text: str) -> re.Match[str] | None:
    # The same match a scan from the start would end on, found from the end: a scan may start at a
    # character no number contains, so each window starts at its first such character (a window
    # without one grows). Windows double, so the whole is linear, and "1 1 ... 1" costs one window.
    end, window = max(text.rfind(digit) for digit in "0123456789") + 1, _TAIL_CHARS  # a number ends in a digit
    while end > 0:
        start = max(0, end - window)
        wall = _NOT_IN_A_NUMBER.search(text, start, end) if start else None
        if start and wall is None:
            window *= 2
            continue
        begin = wall.start() if wall else 0
        last = deque(_NUMBER.finditer(text, begin, end), maxlen=1)
        if last:
            return last[0]
        end, window = begin, window * 2
    return None


def parse_number(text: str) -> Fraction | None:
    """The last number in free text ("$1,234.00" -> 1234, "1/2" -> 1/2, "3 apples" -> 3); None if none."""
    if not isinstance(text, str):
        return None
    text = normalise(text)
    match = _last_number_match(text)
    return _match_value(text, match) if match else None


def parse_bare_number(text: str) -> Fraction | None:
    """The value of `text` if it is one number in digits and nothing else ("$1,234", "-3", "50%", "½")."""
    if not isinstance(text, str):
        return None
    text = normalise(text)
    match = _BARE_NUMBER.fullmatch(text)
    return _match_value(text, match) if match else None


# --- the one value of an answer ------------------------------------------------------------------

_UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
         "seventeen eighteen nineteen"
_WORDS: dict[str, tuple[str, int]] = {
    **{w: ("zero" if i == 0 else "unit" if i < 10 else "teen", i) for i, w in enumerate(_UNITS.split())},
    **{w: ("tens", 10 * i) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)},
    "hundred": ("hundred", 100), "dozen": ("dozen", 12), "minus": ("sign", -1), "negative": ("sign", -1),
    **{w: ("scale", _SCALES[w]) for w in ("thousand", "million", "billion", "trillion")},
}
_NUMBER_WORD = _words_pattern(_WORDS)
# Which word may come next inside one number ("forty-two", "one hundred and five", "two thousand ten").
_FOLLOWS = {"sign": {"zero", "unit", "teen", "tens"}, "zero": set(), "unit": {"hundred", "dozen", "scale"},
            "teen": {"hundred", "dozen", "scale"}, "tens": {"unit", "hundred", "dozen", "scale"},
            "hundred": {"unit", "teen", "tens", "scale"}, "dozen": set(), "scale": {"unit", "teen", "tens"}}


def _word_numbers(text: str) -> Iterator[Fraction | None]:
    """The numbers lowercase `text` writes in words, in order; None for a word that starts none ("hundred" alone)."""
    total = group = 0
    kind, cap, sign, previous_end = None, math.inf, 1, 0  # kind: the last word's, None between numbers
    for match in _NUMBER_WORD.finditer(text):
        word_kind, value = _WORDS[match[0]]
        gap = text[previous_end:match.start()] if match.start() - previous_end <= 7 else "|"
        gap = gap.strip(" -")
        previous_end = match.end()
        joins = kind is not None and word_kind in _FOLLOWS[kind] and (
            gap == "" or gap == "and" and kind in ("hundred", "scale") and word_kind in ("unit", "teen", "tens"))
        if joins and word_kind in ("hundred", "dozen"):
            joins = group < 100
        if joins and word_kind == "scale":
            joins = value < cap
        if not joins:
            if kind not in (None, "sign"):
                yield Fraction(sign * (total + group))
            total = group = 0
            cap, sign = math.inf, 1
            if word_kind in ("hundred", "dozen", "scale"):
                yield None
                return
        if word_kind == "sign":
            sign = -1
        elif word_kind in ("hundred", "dozen"):
            group *= value
        elif word_kind == "scale":
            total, group, cap = total + group * value, 0, value
        else:
            group += value
        kind = word_kind
    if kind not in (None, "sign"):
        yield Fraction(sign * (total + group))


def _digit_numbers(text: str, first: re.Match[str]) -> Iterator[Fraction | None]:
    for match in _NUMBER.finditer(text, first.start()):
        value = _match_value(text, match)
        before = text[max(0, match.start() - 9):match.start()]
        negated = value is not None and not match["minus"] and before.endswith(("minus ", "negative "))
        yield -value if negated else value


def _is_unreadable(text: str) -> bool:
    if not text.isascii() and (any(c in text for c in _UNREADABLE_SYMBOLS)
                               or any(c in text for c in _SUPERSCRIPTS) and _POWER.search(text)):
        return True
    if "\\" in text and _UNREADABLE_LATEX.search(text):
        return True
    return bool(_TIMES.search(text) or _FRACTION_WORD.search(text))


def _one_value(values: Iterable[Fraction | None]) -> Fraction | None:
    value, mentions = None, 0
    for number in values:
        mentions += 1
        if number is None or mentions > MAX_MENTIONS or (value is not None and number != value):
            return None
        value = number
    return value


def read_answer(text: str) -> Fraction | None:
    """The one value an answer states ("$1,234", "1 234", "48 + 24 = 72", "forty-two"); None if none or ambiguous."""
    if not isinstance(text, str):
        return None
    text = normalise(text)
    text = text[text.rfind("=") + 1:].lower()  # a worked answer: its result
    if _is_unreadable(text):
        return None
    digits = [i for i in (text.find(digit) for digit in "0123456789") if i >= 0]
    first = _NUMBER.search(text, max(0, min(digits) - 2)) if digits else None  # "-$5": 2 characters before
    return _one_value(_digit_numbers(text, first) if first else _word_numbers(text))


# --- comparing ---------------------------------------------------------------------------------------

def as_fraction(value: Any) -> Fraction | None:
    """The exact value of a number (int, float, Fraction, numpy scalar): 0.1 -> 1/10; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if isinstance(value, Fraction):
        return value
    if isinstance(value, numbers.Integral):
        return Fraction(int(value))
    value = float(value)
    return Fraction(repr(value)) if math.isfinite(value) else None  # the decimal the float was written as


def _has_exact_decimal(value: Fraction) -> bool:
    denominator = value.denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    return denominator == 1


def numbers_equal(predicted: Any, gold: Any) -> bool:
    """True when both are numbers and equal: exactly, or within a relative 1e-6 for a gold like 1/3."""
    predicted, gold = as_fraction(predicted), as_fraction(gold)
    if predicted is None or gold is None:
        return False
    if predicted == gold:
        return True
    return not _has_exact_decimal(gold) and abs(predicted - gold) <= RELATIVE_TOLERANCE * abs(gold)

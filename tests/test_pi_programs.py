"""grpo_helpers.pi_programs: pi digits scored, cheats flagged, methods classified, code extracted from replies."""

from __future__ import annotations

import time

import pytest

from grpo_helpers.pi_programs import (
    classify_pi_method,
    extract_python_code,
    pi_cheat_reason,
    pi_digits_correct,
    pi_reference_digits,
)
from grpo_helpers.sandbox import run_python

BBP_PROGRAM = '''\
from fractions import Fraction


def bbp_pi(terms):
    """Bailey-Borwein-Plouffe: sum of 16**-k (4/(8k+1) - 2/(8k+4) - 1/(8k+5) - 1/(8k+6))."""
    total = Fraction(0)
    for k in range(terms):
        total += Fraction(1, 16**k) * (
            Fraction(4, 8 * k + 1) - Fraction(2, 8 * k + 4) - Fraction(1, 8 * k + 5) - Fraction(1, 8 * k + 6)
        )
    return total


pi = bbp_pi(30)
digits = str(pi.numerator * 10**30 // pi.denominator)
print(digits[0] + "." + digits[1:])
'''

MONTE_CARLO_PROGRAM = '''\
import random

random.seed(0)
inside = 0
n = 100_000
for _ in range(n):
    x, y = random.random(), random.random()
    if x * x + y * y <= 1.0:
        inside += 1
print(4 * inside / n)
'''

LEIBNIZ_PROGRAM = '''\
total = 0.0
for k in range(1_000_000):
    total += (-1) ** k / (2 * k + 1)
print(4 * total)
'''

LEIBNIZ_SIGN_PROGRAM = '''\
s, sign = 0.0, 1.0
for d in range(1, 2_000_001, 2):
    s += sign / d
    sign = -sign
print(4 * s)
'''

MACHIN_PROGRAM = '''\
def arctan_inv(x, unity):
    total = term = unity // x
    n, sign = 1, -1
    while term:
        term //= x * x
        n += 2
        total += sign * (term // n)
        sign = -sign
    return total

unity = 10 ** 40
pi = 4 * (4 * arctan_inv(5, unity) - arctan_inv(239, unity))
print(str(pi)[0] + "." + str(pi)[1:30])
'''

CHUDNOVSKY_PROGRAM = '''\
from decimal import Decimal, getcontext
getcontext().prec = 50
C = 426880 * Decimal(10005).sqrt()
M, L, X, K, S = 1, 13591409, 1, 6, Decimal(13591409)
for i in range(1, 5):
    M = M * (K**3 - 16 * K) // i**3
    L += 545140134
    X *= -262537412640768000
    S += Decimal(M * L) / X
    K += 12
print(C / S)
'''

NILAKANTHA_PROGRAM = '''\
pi, sign = 3.0, 1.0
for n in range(2, 20000, 2):
    pi += sign * 4 / (n * (n + 1) * (n + 2))
    sign = -sign
print(pi)
'''

WALLIS_PROGRAM = '''\
product = 1.0
for k in range(1, 100000):
    product *= 4 * k**2 / (4 * k**2 - 1)
print(2 * product)
'''


# ---------------------------------------------------------------------------------------------
# Pi scoring
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3.14159", 6),
        ("3.14", 3),
        ("3", 1),
        ("3.", 1),
        ("3.15", 2),
        ("2.5", 0),
        ("no number here", 0),
        ("", 0),
        ("pi = 3.141592653589793\n", 16),
        ("The answer is 3.1415926535 (approx)", 11),
        ("-3.14159", 0),
        ("31.4159", 0),
        ("314159", 0),
        ("3.14159 and later 2.71828", 6),
        ("3.1415926535897932384626433832795028841971", 41),
    ],
)
def test_pi_digits_correct(text: str, expected: int) -> None:
    assert pi_digits_correct(text) == expected


def test_pi_reference_has_1000_verified_digits() -> None:
    digits = pi_reference_digits(1000)
    assert len(digits) == 1000
    assert digits.startswith("31415926535897932384626433832795028841971693993751")
    assert digits[762:768] == "999999"  # the Feynman point: decimal places 762-767
    assert digits.endswith("9216420198")  # digits 991-1000, the 3 counted (decimal places 990-999)
    assert pi_reference_digits(1200).startswith(digits)  # guard digits are enough


def test_pi_reference_matches_mpmath() -> None:
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 1020
    expected = mpmath.nstr(mpmath.pi, 1015, strip_zeros=False).replace(".", "")[:1000]
    assert pi_reference_digits(1000) == expected


def test_pi_digits_correct_with_all_1000_digits() -> None:
    digits = pi_reference_digits(1000)
    assert pi_digits_correct(digits[0] + "." + digits[1:]) == 1000
    longer = pi_reference_digits(1100)
    assert pi_digits_correct(longer[0] + "." + longer[1:]) == 1100


# ---------------------------------------------------------------------------------------------
# Cheating
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "import math\nprint(math.pi)",
        "import math as m\nprint(f'{m.pi:.15f}')",
        "from math import pi\nprint(pi)",
        "from math import pi as PI\nprint(PI)",
        "import numpy as np\nprint(np.pi)",
        "import numpy\nprint(numpy.pi)",
        "from mpmath import mp\nmp.dps = 50\nprint(mp.pi)",
        "import mpmath\nmpmath.mp.dps = 50\nprint(mpmath.pi)",
        "import sympy\nprint(sympy.pi.evalf(50))",
        "import sympy as sp\nprint(sp.N(sp.pi, 50))",
        "import scipy.constants\nprint(scipy.constants.pi)",
        "from scipy import constants\nprint(constants.pi)",
        "import math\nprint(math.tau / 2)",
        "from math import *\nprint(pi)",
        "import math\nprint(math.acos(-1))",
        "import math\nprint(4 * math.atan(1))",
        "import math\nprint(getattr(math, 'pi'))",
        "print(3.14159265358979)",
        "print('3.14159265358979323846264338327950288')",
        "x = 3.141592653589793\nprint(x)",
        "print(355 / 113)",
        "import math\nprint(math.pi",  # does not parse: regex fallback
        "print(3.14159265358979   # no closing paren",
    ],
)
def test_pi_cheat_reason_flags_constants(code: str) -> None:
    assert pi_cheat_reason(code) is not None


@pytest.mark.parametrize(
    "code",
    [
        BBP_PROGRAM,
        LEIBNIZ_PROGRAM,
        MACHIN_PROGRAM,
        MONTE_CARLO_PROGRAM,
        CHUDNOVSKY_PROGRAM,
        "import math\n# we do not use math.pi here\nprint(4 * sum((-1)**k / (2*k+1) for k in range(10**6)))",
        "pi = 0.0\nfor k in range(1000):\n    pi += 4 * (-1)**k / (2*k + 1)\nprint(pi)",
        "import math\nprint(4 * (4 * math.atan(1/5) - math.atan(1/239)))",
    ],
)
def test_pi_cheat_reason_accepts_computations(code: str) -> None:
    assert pi_cheat_reason(code) is None


def test_pi_cheat_reason_says_why() -> None:
    reason = pi_cheat_reason("import numpy as np\nprint(np.pi)")
    assert reason is not None and "numpy.pi" in reason


# ---------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "method"),
    [
        (BBP_PROGRAM, "bbp"),
        ("s = sum(1/16**k * (4/(8*k+1) - 2/(8*k+4) - 1/(8*k+5) - 1/(8*k+6)) for k in range(12))\nprint(s)", "bbp"),
        (MONTE_CARLO_PROGRAM, "monte_carlo"),
        ("import numpy as np\nxy = np.random.rand(2, 10**6)\nprint(4 * ((xy**2).sum(0) <= 1).mean())", "monte_carlo"),
        (LEIBNIZ_PROGRAM, "leibniz"),
        (LEIBNIZ_SIGN_PROGRAM, "leibniz"),
        (MACHIN_PROGRAM, "machin"),
        ("import math\nprint(4 * (4 * math.atan(1/5) - math.atan(1/239)))", "machin"),
        (CHUDNOVSKY_PROGRAM, "chudnovsky"),
        (NILAKANTHA_PROGRAM, "nilakantha"),
        (WALLIS_PROGRAM, "wallis"),
        ("import math\nprint(math.pi)", "library_constant"),
        ("from mpmath import mp\nmp.dps = 40\nprint(mp.pi)", "library_constant"),
        ("print('hello')", "unknown"),
        ("# BBP: 16**k, 8*k+1, 8*k+4, 8*k+5, 8*k+6 (only in a comment)\nprint(22 / 7)", "unknown"),
    ],
)
def test_classify_pi_method(code: str, method: str) -> None:
    assert classify_pi_method(code) == method


# ---------------------------------------------------------------------------------------------
# Extracting code from replies
# ---------------------------------------------------------------------------------------------


def test_extract_python_block() -> None:
    reply = "Here is the code:\n```python\nprint(1)\n```\nIt prints 1."
    assert extract_python_code(reply) == "print(1)\n"


def test_extract_bare_block_when_no_python_block() -> None:
    reply = "Code:\n```\nx = 2\nprint(x)\n```"
    assert extract_python_code(reply) == "x = 2\nprint(x)\n"


def test_extract_prefers_the_largest_python_block() -> None:
    reply = (
        "First a sketch:\n```python\nx = 1\n```\n"
        "Then some shell:\n```bash\necho aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n```\n"
        "Full program:\n```py\nimport math\n\ndef f():\n    return 3\n\nprint(f())\n```\n"
        "```\nuntagged but ignored when tagged blocks exist, however long it is ..........\n```"
    )
    assert extract_python_code(reply) == "import math\n\ndef f():\n    return 3\n\nprint(f())\n"


def test_extract_unterminated_block_runs_to_the_end() -> None:
    assert extract_python_code("```python\nprint(1)\nprint(2)") == "print(1)\nprint(2)\n"


def test_extract_none_without_a_block() -> None:
    assert extract_python_code("print(1) without any fence") is None
    assert extract_python_code("```bash\nls\n```") is None
    assert extract_python_code("```python\n```") is None
    assert extract_python_code("") is None


def test_extract_is_linear_on_hostile_input() -> None:
    hostile = ("```" * 50_000 + "\n") * 4 + "```python\n" + "x = 1\n" * 50_000 + ("`" * 100_000)
    start = time.monotonic()
    extract_python_code(hostile)
    extract_python_code("```\n" * 200_000)
    assert time.monotonic() - start < 2.0


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------


def test_bbp_program_end_to_end() -> None:
    reply = f"I will use the BBP formula.\n\n```python\n{BBP_PROGRAM}```\n\nThis prints 30 digits."
    code = extract_python_code(reply)
    assert code is not None
    assert pi_cheat_reason(code) is None
    assert classify_pi_method(code) == "bbp"
    result = run_python(code, timeout_s=10.0)
    assert result.ok, result
    assert pi_digits_correct(result.stdout) >= 15
    assert pi_digits_correct(result.stdout) >= 30

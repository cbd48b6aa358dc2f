"""Judge programs that compute pi: the code block in a reply, cheats, the method used, and digits right.

Static checks read the program (with `ast` where it parses, text patterns where it does not); the
digits are counted on what the program printed when `sandbox.run_python` ran it.
"""

from __future__ import annotations

import ast
import functools
import io
import re
import tokenize

REFERENCE_DIGITS = 1000  # always compare against at least this many digits
MAX_CHECKED_DIGITS = 10_000  # longer numbers are only checked this far


def _arctan_inverse(x: int, unity: int) -> int:
    """arctan(1/x) * unity with exact integers (Gregory series)."""
    total = term = unity // x
    x_squared, n, sign = x * x, 1, -1
    while term:
        term //= x_squared
        n += 2
        total += sign * (term // n)
        sign = -sign
    return total


@functools.lru_cache(maxsize=8)
def pi_reference_digits(n: int = REFERENCE_DIGITS) -> str:
    """The first n digits of pi, "31415926...", from Machin's formula with Python integers."""
    guard = 10
    unity = 10 ** (n - 1 + guard)
    pi = 4 * (4 * _arctan_inverse(5, unity) - _arctan_inverse(239, unity))
    return str(pi // 10**guard)[:n]


_NUMBER = re.compile(r"(-?)([0-9]+)(?:\.([0-9]*))?", re.ASCII)


def pi_digits_correct(text: str) -> int:
    """How many leading digits of pi (the 3 included) the first number in `text` gets right.

    Strict prefix match, no allowance for rounding: "3.1416" scores 4 (its 6 is not pi's 5).
    The first number is taken as printed ("3.14 after 10 terms" scores 3, but "10 terms: 3.14"
    scores 0), so prompts should ask for pi alone on the first line. A minus sign, or an integer
    part other than 3, scores 0. Checked against exact digits, at most MAX_CHECKED_DIGITS.
    """
    match = _NUMBER.search(text)
    if match is None or match.group(1) or match.group(2) != "3":
        return 0  # no number, a negative one, or an integer part other than 3
    digits = ("3" + (match.group(3) or ""))[:MAX_CHECKED_DIGITS]
    reference = pi_reference_digits(max(REFERENCE_DIGITS, len(digits)))
    correct = 0
    for got, want in zip(digits, reference):
        if got != want:
            break
        correct += 1
    return correct


# --------------------------------------------------------------------------------------------
# Pi: cheating and method heuristics
# --------------------------------------------------------------------------------------------

_PI_NAMES = {"pi", "tau"}
_TRIG_IDENTITIES = {  # function -> literal arguments that give pi (or a simple fraction of it)
    "acos": [(-1,), (0,)], "arccos": [(-1,), (0,)],
    "asin": [(1,)], "arcsin": [(1,)],
    "atan": [(1,)], "arctan": [(1,)],
    "atan2": [(0, -1), (1, 0), (1, 1)], "arctan2": [(0, -1), (1, 0), (1, 1)],
}
# A literal spelling pi to 8 digits or more (3.1415926..., "31415926...") is a copied constant.
_PI_LITERAL = re.compile(r"3\.?1415926")


def _literal_value(node: ast.AST) -> object:
    """The value of a numeric literal, also -1 written as UnaryOp(-, 1); None otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _literal_value(node.operand)
        return -inner if isinstance(inner, (int, float)) else None
    return None


def _dotted(node: ast.AST) -> list[str] | None:
    """["np", "random", "rand"] for np.random.rand; None when not a plain dotted name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _cheat_reason_ast(tree: ast.AST) -> str | None:
    """The AST-based check behind pi_cheat_reason."""
    modules: dict[str, str] = {}  # local name -> module path it refers to
    star_imports: list[str] = []
    stored = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    modules[alias.asname] = alias.name
                else:
                    root = alias.name.split(".")[0]
                    modules[root] = root
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if alias.name in _PI_NAMES:
                    return f"imports the constant {alias.name} from {node.module}"
                if alias.name == "*":
                    star_imports.append(node.module)
                else:
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in _PI_NAMES:
            parts = _dotted(node)
            if parts and parts[0] in modules:
                return f"uses the library constant {modules[parts[0]]}{'.'.join([''] + parts[1:])}"
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in _PI_NAMES:
            if star_imports and node.id not in stored:
                return f"uses {node.id} from 'from {star_imports[0]} import *'"
        if isinstance(node, ast.Call):
            parts = _dotted(node.func)
            if parts == ["getattr"] and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                    and node.args[1].value in _PI_NAMES:
                return "reads the library constant pi with getattr"
            name = parts[-1] if parts else None
            if name in _TRIG_IDENTITIES and (len(parts) > 1 and parts[0] in modules or name in modules):
                args = tuple(_literal_value(a) for a in node.args)
                if args in _TRIG_IDENTITIES[name]:
                    return f"evaluates the identity {'.'.join(parts)}{args} instead of computing pi"
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str)):
            if _PI_LITERAL.search(node.value if isinstance(node.value, str) else repr(node.value)):
                return f"contains a literal of pi's digits: {str(node.value)[:30]}"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            if (_literal_value(node.left), _literal_value(node.right)) == (355, 113):
                return "uses the approximation 355/113"
    return None


_CHEAT_PATTERNS = [
    (re.compile(r"\b(?:math|cmath|numpy|np|mpmath|mp|sympy|sp|torch|jnp|constants|scipy\.constants)\.(?:pi|tau)\b"),
     "uses a library constant pi"),
    (re.compile(r"^\s*from\s+[\w.]+\s+import\s+[^\n#]*\b(?:pi|tau)\b", re.MULTILINE),
     "imports the constant pi"),
    (re.compile(r"\ba(?:rc)?cos\(\s*-\s*1(?:\.0*)?\s*\)"), "evaluates acos(-1)"),
]


def pi_cheat_reason(code: str) -> str | None:
    """Why `code` prints a known pi constant instead of computing it, or None when it computes.

    Flags, found with `ast` (so aliases such as `import numpy as np` are followed): any `pi` or
    `tau` attribute of an imported module (math.pi, np.pi, mpmath.mp.pi, sympy.pi,
    scipy.constants.pi, torch.pi, ...), `from X import pi`, `pi` after `from X import *`,
    getattr(module, "pi"), trigonometric identities such as acos(-1) or 4*atan(1), a literal with
    pi's first 8 digits (3.1415926..., as a number or in a string) and 355/113. Any use counts,
    even one that only compares a computed value with math.pi: the printed digits could come
    from it. Comments are ignored. Code that does not parse is checked with regular expressions.
    """
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        text = _strip_comments(code)
        for pattern, reason in _CHEAT_PATTERNS:
            if pattern.search(text):
                return reason
        literal = _PI_LITERAL.search(text)
        return f"contains a literal of pi's digits: {literal.group()}..." if literal else None
    return _cheat_reason_ast(tree)


def _strip_comments(code: str) -> str:
    """`code` without comments (tokenize when it can, else drop '#...' up to each line end)."""
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(code).readline) if t.type != tokenize.COMMENT]
        return tokenize.untokenize(tokens)
    except (tokenize.TokenError, SyntaxError, ValueError):
        return re.sub(r"#[^\n]*", "", code)


def classify_pi_method(code: str) -> str:
    """Which way `code` computes pi: bbp, monte_carlo, leibniz, machin, chudnovsky, ... or unknown.

    A heuristic on the code without comments; the first rule that matches wins:
    chudnovsky  the name, or its constants 13591409 / 545140134 / 640320
    bbp         the names BBP/Bailey/Plouffe, or 16**k (pow(16, k)) with three of the terms
                8k+1, 8k+4, 8k+5, 8k+6 (or all four without 16**k)
    machin      the name, or arctan/atan of 1/5, 1/239, 1/57, 1/18, or the number 239
    nilakantha  the name, or denominators k(k+1)(k+2)
    wallis      the name, or products of 4k^2/(4k^2-1) or (2k)^2/((2k-1)(2k+1))
    monte_carlo the name, or random numbers (random, np.random, uniform)
    leibniz     the names Leibniz/Gregory/Madhava, or odd denominators 2k+1 with an alternating sign
    library_constant  pi_cheat_reason(code) found a constant and none of the above matched
    unknown     anything else
    """
    clean = _strip_comments(code)
    compact = re.sub(r"\s+", "", clean)  # arithmetic patterns are matched without spaces

    def named(pattern: str) -> bool:
        return re.search(pattern, clean, re.IGNORECASE) is not None

    def written(pattern: str) -> bool:
        return re.search(pattern, compact) is not None

    if named(r"chudnovsky") or written(r"13591409|545140134|640320"):
        return "chudnovsky"
    if named(r"bbp|bailey|plouffe") or _looks_like_bbp(compact):
        return "bbp"
    if named(r"machin(?!e)") or written(r"a(?:rc)?tan\w*\((?:1/|1\.0*/)?(?:5|239|57|18)[),]|(?<![\w.])239(?![\w.])"):
        return "machin"
    if named(r"nilakantha") or written(r"(\w+)\*\(\1\+1\)\*\(\1\+2\)|\(2\*(\w+)\)\*\(2\*\2\+1\)\*\(2\*\2\+2\)"):
        return "nilakantha"
    if named(r"wallis") or written(r"4\*(\w+)(?:\*\*2|\*\1)/\(4\*\1(?:\*\*2|\*\1)-1\)|\(2\*(\w+)\)\*\*2/\(\(2\*\2-1\)\*\(2\*\2\+1\)\)"):
        return "wallis"
    if named(r"monte.?carlo|\brandom\b|\buniform\("):
        return "monte_carlo"
    if named(r"leibniz|gregory|madhava") or _looks_like_leibniz(compact):
        return "leibniz"
    if pi_cheat_reason(code) is not None:
        return "library_constant"
    return "unknown"


def _looks_like_bbp(compact: str) -> bool:
    """16**k (or pow(16, k)) with three of 8k+1, 8k+4, 8k+5, 8k+6; or all four of them."""
    sixteen = re.search(r"16(?:\.0*)?\)?\*\*|pow\(16|<<\(?4\*", compact)
    offsets = set(re.findall(r"8\*\w+\+([1456])(?!\w)", compact))
    offsets |= set(re.findall(r"\w+\*8\+([1456])(?!\w)", compact))
    return len(offsets) == 4 or (sixteen is not None and len(offsets) >= 3)


def _looks_like_leibniz(compact: str) -> bool:
    """Odd denominators 2k+1 with an alternating sign: (-1)**k, sign = -sign, or k % 2 branches."""
    odd = re.search(r"2\*\w+\+1(?!\w)|\w+\*2\+1(?!\w)|\w+\+=2(?!\w)|range\(1,[^)]*,2\)", compact)
    alternating = re.search(r"\(-1\)\*\*|=-\w+|\*=-1|%2|-=", compact)
    return odd is not None and alternating is not None


# --------------------------------------------------------------------------------------------
# Extracting code from a model reply
# --------------------------------------------------------------------------------------------

_PYTHON_TAGS = {"python", "py", "python3", "py3"}


def extract_python_code(text: str) -> str | None:
    """The largest ```python fenced block in a reply (else the largest untagged one); None if none.

    One pass over the lines (linear time). A fence is a line starting with three or more backticks;
    a block left open at the end of the reply (a truncated generation) runs to the end. Blocks
    tagged with another language (```bash) are ignored. Ties go to the earlier block.
    """
    tagged: list[str] = []
    untagged: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if not stripped.startswith("```"):
            i += 1
            continue
        fence = "`" * (len(stripped) - len(stripped.lstrip("`")))
        tag = stripped[len(fence):].strip().split(" ")[0].lower()
        body: list[str] = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence) and not lines[i].strip().strip("`")):
            body.append(lines[i])
            i += 1
        i += 1  # skip the closing fence
        block = "\n".join(body).strip("\n")
        if tag in _PYTHON_TAGS:
            tagged.append(block)
        elif not tag:
            untagged.append(block)
    best = max(tagged or untagged, key=len, default="")
    return best + "\n" if best.strip() else None

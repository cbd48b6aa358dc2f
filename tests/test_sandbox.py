"""grpo_helpers.sandbox: hostile programs are contained and reported; pi scoring and heuristics.

Every hostile program here is bounded by construction (a fork bomb forks at most 300 times,
children sleep and exit), so a broken limit fails a test instead of taking the machine down.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from grpo_helpers.pi_programs import (
    classify_pi_method,
    extract_python_code,
    pi_cheat_reason,
    pi_digits_correct,
    pi_reference_digits,
)
from grpo_helpers.sandbox import BASE_ENV, RunResult, isolation_report, run_python

REPO_ROOT = Path(__file__).resolve().parents[1]

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


def _live_pids_of_uid(uid: int) -> list[int]:
    """Processes (not zombies) whose real uid is `uid`."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            status = Path(f"/proc/{name}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields["Uid"].split()[0] == str(uid) and fields["State"].split()[0] not in ("Z", "X"):
            pids.append(int(name))
    return pids


def _assert_nothing_left(result: RunResult) -> None:
    """After a run, no process of the sandbox's (throw-away) uid may still be alive."""
    if isolation_report()["unique_sandbox_uid"]:
        assert result.sandbox_uid is not None
        assert _live_pids_of_uid(result.sandbox_uid) == []


# ---------------------------------------------------------------------------------------------
# Ordinary programs
# ---------------------------------------------------------------------------------------------


def test_isolation_report_has_the_documented_keys() -> None:
    report = isolation_report()
    for key in ("running_as_root", "network_isolated", "filesystem_isolated", "privileges_dropped",
                "process_limit_effective", "unique_sandbox_uid", "probe_ok"):
        assert isinstance(report[key], bool), key
    assert isinstance(report["notes"], str)
    assert report["probe_ok"], report


def test_normal_code_prints_and_exits_zero() -> None:
    result = run_python("print(1 + 1)\nprint('done')")
    assert result.ok, result
    assert result.stdout == "2\ndone\n"
    assert result.stderr == ""
    assert result.returncode == 0 and not result.timed_out and not result.output_truncated


def test_result_is_frozen() -> None:
    result = run_python("pass")
    with pytest.raises(AttributeError):
        result.stdout = "x"  # type: ignore[misc]


def test_syntax_error_is_reported() -> None:
    result = run_python("print(")
    assert not result.ok
    assert result.returncode == 1
    assert "SyntaxError" in result.stderr


def test_exception_is_reported() -> None:
    result = run_python("print('before')\n1 / 0")
    assert not result.ok
    assert result.returncode == 1
    assert result.stdout == "before\n"
    assert "ZeroDivisionError" in result.stderr


def test_unicode_output() -> None:
    text = "π ≈ 3.14159 ✓ 日本語 🥧"
    result = run_python(f"print({text!r})")
    assert result.ok, result
    assert result.stdout == text + "\n"


def test_invalid_unicode_in_code_does_not_raise() -> None:
    result = run_python("print('\udc80')")
    assert not result.ok


def test_temp_dir_is_writable_and_removed_afterwards() -> None:
    code = "import os\nopen('note.txt', 'w').write('hi')\nprint(open('note.txt').read())\nprint(os.getcwd())"
    result = run_python(code)
    assert result.ok, result
    said, cwd = result.stdout.splitlines()
    assert said == "hi"
    assert not Path(cwd).exists()


def test_trivial_run_is_fast() -> None:
    run_python("print(1)")  # warm caches
    durations = [run_python("print(1)").duration_s for _ in range(5)]
    assert statistics.median(durations) < 0.5, durations


def test_concurrent_runs_from_threads() -> None:
    results: dict[int, RunResult] = {}

    def work(i: int) -> None:
        results[i] = run_python(f"print({i} * {i})")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: r.stdout for i, r in results.items()} == {i: f"{i * i}\n" for i in range(8)}


def test_site_packages_only_when_asked() -> None:
    pytest.importorskip("mpmath")
    code = "import mpmath\nmpmath.mp.dps = 30\nprint(mpmath.mpf(1) / 3)"
    assert "ModuleNotFoundError" in run_python(code).stderr
    result = run_python(code, site_packages=True)
    if not result.ok and "Permission denied" in result.stderr:
        pytest.skip("the sandbox uid cannot read this virtualenv")
    assert result.ok, result
    assert result.stdout.startswith("0.3333")


# ---------------------------------------------------------------------------------------------
# Hostile programs
# ---------------------------------------------------------------------------------------------


def test_infinite_loop_times_out() -> None:
    result = run_python("while True:\n    pass", timeout_s=1.0)
    assert result.timed_out
    assert result.returncode is None
    assert not result.ok
    assert 1.0 <= result.duration_s < 1.0 + 2.0


def test_timeout_kills_grandchildren_too() -> None:
    code = "import os\nos.fork()\nos.fork()\nwhile True:\n    pass"
    result = run_python(code, timeout_s=1.0)
    assert result.timed_out
    _assert_nothing_left(result)


def test_memory_bomb_is_stopped() -> None:
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))"
    start = time.monotonic()
    result = run_python(code, timeout_s=10.0, memory_mb=256)
    assert not result.ok
    assert not result.timed_out
    assert "MemoryError" in result.stderr or (result.returncode or 0) < 0
    assert time.monotonic() - start < 8.0


def test_single_huge_allocation_fails() -> None:
    result = run_python("x = bytearray(8 * 1024**3)", memory_mb=256)
    assert "MemoryError" in result.stderr


def test_bounded_fork_bomb_is_stopped_by_the_process_limit() -> None:
    if not isolation_report()["process_limit_effective"]:
        pytest.skip("the code would run as root here, and root ignores RLIMIT_NPROC")
    code = """\
import os, time
forked, error = 0, None
for _ in range(300):          # bounded: a broken limit fails the test, not the machine
    try:
        pid = os.fork()
    except OSError as exc:
        error = type(exc).__name__
        break
    if pid == 0:
        time.sleep(1.0)
        os._exit(0)
    forked += 1
print(forked, error)
"""
    result = run_python(code, timeout_s=10.0, max_processes=20)
    assert result.ok, result
    forked, error = result.stdout.split()
    assert int(forked) < 300
    assert int(forked) <= 20
    assert error == "BlockingIOError"  # EAGAIN from fork: the limit, not the loop, stopped it
    _assert_nothing_left(result)


def test_processes_that_leave_the_session_are_killed() -> None:
    if not isolation_report()["unique_sandbox_uid"]:
        pytest.skip("no throw-away uid here: only the process group can be killed")
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint('parent exits')"
    result = run_python(code, timeout_s=5.0)
    assert result.ok, result
    assert result.duration_s < 4.0
    _assert_nothing_left(result)


def test_thread_bomb_is_stopped() -> None:
    if not isolation_report()["process_limit_effective"]:
        pytest.skip("the code would run as root here, and root ignores RLIMIT_NPROC")
    code = (
        "import threading, time\n"
        "threads = [threading.Thread(target=time.sleep, args=(0.5,)) for _ in range(200)]\n"
        "for t in threads:\n    t.start()\n"
    )
    result = run_python(code, max_processes=10)
    assert not result.ok
    assert "can't start new thread" in result.stderr


def test_printing_gigabytes_is_capped() -> None:
    code = "import sys\nwhile True:\n    sys.stdout.write('x' * 1_000_000)"
    start = time.monotonic()
    result = run_python(code, timeout_s=30.0, max_output_bytes=64_000)
    assert time.monotonic() - start < 5.0
    assert result.output_truncated
    assert not result.ok
    assert 0 < len(result.stdout.encode()) <= 64_000


def test_stderr_is_capped_too() -> None:
    code = "import sys\nwhile True:\n    sys.stderr.write('e' * 100_000)"
    result = run_python(code, timeout_s=30.0, max_output_bytes=10_000)
    assert result.output_truncated
    assert len(result.stderr.encode()) <= 10_000


def test_parent_environment_does_not_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPO_FAKE_SECRET_TOKEN", "hf_fake_secret_value_123")
    code = "import os, json\nprint(json.dumps(dict(os.environ)))"
    result = run_python(code)
    assert result.ok, result
    env = json.loads(result.stdout)
    assert "GRPO_FAKE_SECRET_TOKEN" not in env
    assert "hf_fake_secret_value_123" not in result.stdout
    assert set(env) <= set(BASE_ENV) | {"HOME", "TMPDIR"}


def test_parent_process_environ_file_is_unreadable() -> None:
    if not (isolation_report()["running_as_root"] and isolation_report()["privileges_dropped"]):
        pytest.skip("the code runs as root or as our own user here: /proc/<ppid>/environ is readable")
    code = (
        "import os\n"
        "try:\n    open(f'/proc/{os.getppid()}/environ').read()\n    print('read')\n"
        "except PermissionError:\n    print('denied')"
    )
    result = run_python(code)
    assert result.stdout == "denied\n", result


def test_writing_into_the_repository_fails() -> None:
    report = isolation_report()
    if not (report["running_as_root"] and report["privileges_dropped"]):
        pytest.skip("the code runs as root or as our own user here, which may write to the repository")
    target = REPO_ROOT / f"sandbox-escape-{uuid.uuid4().hex}.txt"
    result = run_python(f"open({str(target)!r}, 'w').write('escaped')")
    try:
        assert not target.exists()
        assert "PermissionError" in result.stderr or "Read-only" in result.stderr
    finally:
        target.unlink(missing_ok=True)


def test_writing_to_tmp_does_not_reach_the_machine() -> None:
    if not isolation_report()["filesystem_isolated"]:
        pytest.skip("no mount namespace here: /tmp is the machine's /tmp")
    target = Path("/tmp") / f"sandbox-escape-{uuid.uuid4().hex}.txt"
    code = f"open({str(target)!r}, 'w').write('escaped')\nprint(open({str(target)!r}).read())"
    result = run_python(code)
    try:
        assert result.ok, result  # it may write, into its own private /tmp ...
        assert not target.exists()  # ... which is not the machine's
    finally:
        target.unlink(missing_ok=True)


def test_home_folders_are_hidden() -> None:
    if not isolation_report()["filesystem_isolated"]:
        pytest.skip("no mount namespace here")
    code = "import os\nprint(sorted(n for n in os.listdir('/root') if n != '.pyenv'))"
    result = run_python(code)
    assert result.ok, result
    assert result.stdout == "[]\n"


def test_network_connection_to_the_host_fails() -> None:
    if not isolation_report()["network_isolated"]:
        pytest.skip("no network namespace on this machine (needs root / CAP_SYS_ADMIN): "
                    "the sandbox could reach the network, nothing to test")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.setblocking(False)
        port = server.getsockname()[1]
        code = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
            "    print('connected')\n"
            "except OSError as exc:\n"
            "    print('blocked', exc)\n"
        )
        result = run_python(code)
        assert result.stdout.startswith("blocked"), result
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected


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


def test_running_this_file_with_python_only() -> None:
    """sandbox and pi_programs are stdlib-only: they import with -I -S (no site-packages).

    A bare interpreter, not the sandbox: the sandbox's private /tmp would hide a checkout under /tmp."""
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", "import sys\nsys.path.insert(0, " + repr(str(REPO_ROOT)) + ")\n"
         "import grpo_helpers.sandbox as s, grpo_helpers.pi_programs as p\n"
         "print(s.run_python.__name__, p.pi_digits_correct('3.14'))"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.stdout == "run_python 3\n", result

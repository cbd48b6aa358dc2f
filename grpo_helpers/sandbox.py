"""Run model-written Python in a contained child process, and judge programs that compute pi.

A language model writes a program that prints pi; `run_python` runs it and `pi_digits_correct`
scores what it printed. The sandbox is layered, and every layer that the machine refuses is
reported in the result instead of raising (see `isolation_report()` for what this machine does):

* a separate `python -I -S` process (isolated mode, no site-packages unless asked), an EMPTY
  environment plus a handful of fixed variables, and a fresh temporary working directory that is
  deleted afterwards; the code goes in a file ``main.py`` in that directory;
* `resource` limits set in the child before exec: CPU seconds, address space (`memory_mb`),
  file size, processes, open files, no core dumps;
* its own session, so the wall-clock timeout kills the whole process group;
* output read incrementally: at most `max_output_bytes` per stream are kept, and a program
  that prints past that is killed;
* when we are root (Colab, CI): a network namespace with no interfaces up (no network, not even
  localhost), a mount namespace in which /tmp, /var/tmp, /dev/shm, /run/lock are fresh empty
  tmpfs, home folders (/root, /home, /content) are hidden and the working directory is a small
  tmpfs, a private IPC namespace, and then privileges are dropped to a throw-away uid that no
  other process uses. RLIMIT_NPROC then counts exactly the sandbox's processes (root ignores it),
  and after the run every process of that uid is killed, even ones that left the process group.
  Interpreter folders inside the hidden ones (a pyenv under /root) are mounted back. Namespaces
  need CAP_SYS_ADMIN, which some containers lack: then only the privilege drop (CAP_SETUID) is
  left, and only when other users can reach the interpreter.

The set-up runs in subprocess's `preexec_fn` (between fork and exec). It imports nothing and
mostly makes system calls; calling `run_python` from several threads at once works (tested).

Not contained: CPU time of many processes together is only bounded by the wall-clock timeout
and the process limit; the sandbox can read world-readable files (e.g. the repository); without
root the network and the file system are not isolated and `/proc/<pid>/environ` of same-user
processes is readable. The result says which layers were in force.
"""

from __future__ import annotations

import ast
import ctypes
import ctypes.util
import functools
import io
import math
import os
import pwd
import re
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tokenize
from collections.abc import Callable
from dataclasses import dataclass, field

# --------------------------------------------------------------------------------------------
# Running code
# --------------------------------------------------------------------------------------------

SCRIPT_NAME = "main.py"
NOBODY_UID = 65534
# World-writable folders: inside the mount namespace they become fresh, empty, small tmpfs,
# so a write there never reaches the real machine.
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
# Home folders (secrets such as tokens live there): hidden behind an empty tmpfs.
HIDDEN_DIRS = ("/root", "/home", "/content")
# Variables the child gets; nothing is inherited from the parent. The thread caps keep
# numerical libraries (site_packages=True) within the process limit.
BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWNET = 0x40000000
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000
_MNT_DETACH = 0x2


@dataclass(frozen=True)
class RunResult:
    """What happened when a program ran in the sandbox."""

    stdout: str
    stderr: str
    returncode: int | None  # None when it timed out or never started; -N when killed by signal N
    timed_out: bool
    duration_s: float
    output_truncated: bool = False  # a stream passed max_output_bytes (the program was killed)
    network_isolated: bool = False  # ran in an empty network namespace
    filesystem_isolated: bool = False  # private /tmp etc., hidden home folders, tmpfs workdir
    privileges_dropped: bool = False  # ran as an unprivileged uid (or we were not root anyway)
    sandbox_uid: int | None = None  # the uid the code ran as
    notes: tuple[str, ...] = field(default_factory=tuple)  # isolation that was not available

    @property
    def ok(self) -> bool:
        """True when the program exited with status 0 within the time limit."""
        return self.returncode == 0 and not self.timed_out


@dataclass(frozen=True)
class _ChildConfig:
    """Everything the child needs between fork and exec, computed in the parent beforehand."""

    workdir: str
    script: bytes
    uid: int | None  # drop to this uid (and gid) when set
    gid: int | None
    limits: tuple[tuple[int, int], ...]
    namespaces: bool
    disk_mb: int
    rebind: tuple[str, ...]  # interpreter folders inside hidden folders: mounted back
    interpreter_reachable: bool  # can an unprivileged uid run the interpreter without the binds?
    status_fd: int


def _load_libc() -> ctypes.CDLL | None:
    """The C library, for unshare(2) and mount(2); None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()


def _unshare(flags: int) -> bool:
    """unshare(2) in the current process; False when not permitted."""
    return _LIBC is not None and _LIBC.unshare(flags) == 0


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> bool:
    """mount(2); False when it fails."""
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    return _LIBC is not None and _LIBC.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) == 0


def _mount_or_raise(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    """mount(2), raising OSError when it fails."""
    if not _mount(source, target, fstype, flags, data):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def _is_under(path: str, folder: str) -> bool:
    """True when path is folder or inside it."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _setup_mounts(cfg: _ChildConfig) -> bool:
    """In a fresh mount namespace: private scratch dirs, hidden homes, a tmpfs working directory.

    All or nothing: on any failure the mounts made so far are detached again and False returned.
    """
    if not _mount(None, "/", None, _MS_REC | _MS_PRIVATE, None):
        return False
    mounted: list[str] = []
    try:
        # Hold on to the interpreter's folders (e.g. a pyenv under /root) before hiding their
        # parents. Opened here, in the new namespace: mount(2) refuses a source from another one.
        kept = [(os.open(path, os.O_PATH | os.O_DIRECTORY), path) for path in cfg.rebind]
        for folder in HIDDEN_DIRS + SCRATCH_DIRS:
            if os.path.isdir(folder) and not os.path.islink(folder):
                mode = "1777" if folder in SCRATCH_DIRS else "755"
                _mount_or_raise("tmpfs", folder, "tmpfs", _MS_NOSUID | _MS_NODEV,
                                f"mode={mode},size=4m,nr_inodes=4096")
                mounted.append(folder)
        for fd, path in kept:
            os.makedirs(path, exist_ok=True)
            _mount_or_raise(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC, None)
            mounted.append(path)
            os.close(fd)
        os.makedirs(cfg.workdir, exist_ok=True)
        owner = "" if cfg.uid is None else f",uid={cfg.uid},gid={cfg.gid}"
        _mount_or_raise("tmpfs", cfg.workdir, "tmpfs", _MS_NOSUID | _MS_NODEV,
                        f"mode=700,size={cfg.disk_mb}m,nr_inodes=4096{owner}")
        mounted.append(cfg.workdir)
        fd = os.open(os.path.join(cfg.workdir, SCRIPT_NAME), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, cfg.script)
        finally:
            os.close(fd)
        os.chdir(cfg.workdir)
        return True
    except OSError:
        for path in reversed(mounted):
            if _LIBC is not None:
                _LIBC.umount2(path.encode(), _MNT_DETACH)
        return False


def _child_setup(cfg: _ChildConfig) -> None:
    """Runs in the child between fork and exec: namespaces, limits, privilege drop.

    Namespaces and the privilege drop are best effort (the status pipe tells the parent what
    worked); failing to set a resource limit raises, so the program does not start at all.
    """
    net = fs = dropped = False
    os.umask(0o022)
    if cfg.namespaces:
        net = _unshare(_CLONE_NEWNET)
        if _unshare(_CLONE_NEWNS | _CLONE_NEWIPC):
            fs = _setup_mounts(cfg)
    for which, value in cfg.limits:
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))
    if cfg.uid is not None and (fs or cfg.interpreter_reachable):
        try:
            os.setgroups([])
            os.setresgid(cfg.gid, cfg.gid, cfg.gid)
            os.setresuid(cfg.uid, cfg.uid, cfg.uid)
            dropped = True
        except OSError:
            pass
    try:
        os.write(cfg.status_fd, bytes([net, fs, dropped]))
    except OSError:
        pass


@functools.lru_cache(maxsize=None)
def _interpreter_dirs() -> tuple[str, ...]:
    """The folders the interpreter needs (install prefix, venv), outermost only."""
    exe = os.path.realpath(_python_executable())
    candidates = {os.path.dirname(exe), os.path.dirname(os.path.abspath(_python_executable()))}
    for prefix in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix):
        candidates.add(os.path.realpath(prefix))
    outermost = [p for p in candidates if not any(q != p and _is_under(p, q) for q in candidates)]
    return tuple(sorted(outermost))


@functools.lru_cache(maxsize=None)
def _python_executable() -> str:
    """The interpreter to run: this one."""
    return sys.executable or shutil.which("python3") or "python3"


@functools.lru_cache(maxsize=None)
def _interpreter_dirs_to_rebind() -> tuple[str, ...]:
    """The interpreter folders that the mount namespace would hide (under /root, /tmp, ...)."""
    hidden = HIDDEN_DIRS + SCRATCH_DIRS
    return tuple(p for p in _interpreter_dirs() if any(_is_under(p, h) for h in hidden))


@functools.lru_cache(maxsize=None)
def _interpreter_reachable() -> bool:
    """True when an unprivileged uid can reach every folder the interpreter needs."""
    return all(_world_reachable(path) for path in _interpreter_dirs())


def _world_reachable(path: str) -> bool:
    """True when every folder from / down to path is searchable by any user."""
    path = os.path.realpath(path)
    while True:
        try:
            if not os.stat(path).st_mode & 0o001:
                return False
        except OSError:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


@functools.lru_cache(maxsize=None)
def _mapped_id_ranges(kind: str) -> tuple[tuple[int, int], ...]:
    """(first, end) ranges of ids usable in this user namespace, from /proc/self/{uid,gid}_map."""
    try:
        with open(f"/proc/self/{kind}_map") as f:
            rows = [line.split() for line in f]
        return tuple((int(r[0]), int(r[0]) + int(r[2])) for r in rows if len(r) == 3)
    except OSError:
        return ((0, 2**32 - 1),)


def _pick_sandbox_uid() -> tuple[int, bool]:
    """A fresh uid no account owns (unique=True), else (65534 'nobody', False)."""
    uid_ranges, gid_ranges = _mapped_id_ranges("uid"), _mapped_id_ranges("gid")
    for start, end in uid_ranges:
        low, high = max(start, 100_000_000), min(end, 2_000_000_000)
        if high - low < 1000:
            low, high = max(start, 100_000), min(end, 4_000_000_000)
        if high - low < 1000:
            continue
        for _ in range(20):
            uid = low + secrets.randbelow(high - low)
            if any(s <= uid < e for s, e in gid_ranges) and not _id_is_known(uid):
                return uid, True
    return NOBODY_UID, False


def _id_is_known(uid: int) -> bool:
    """True when an account owns this uid."""
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def _count_tasks_of_uid(uid: int) -> int:
    """How many tasks (threads included) this uid runs: what RLIMIT_NPROC counts."""
    return sum(threads for pid in _pids() for owner, _, threads in [_proc_owner(pid)] if owner == uid)


def _pids() -> list[int]:
    """All process ids visible in /proc."""
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _proc_owner(pid: int) -> tuple[int | None, bool, int]:
    """(real uid, alive, threads) of a process from /proc/<pid>/status; (None, False, 0) if gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            fields = dict(line.split(b":", 1) for line in f if b":" in line)
        return (int(fields[b"Uid"].split()[0]), fields[b"State"].split()[0] not in (b"Z", b"X"),
                int(fields[b"Threads"]))
    except (OSError, KeyError, ValueError, IndexError):
        return None, False, 0


def _kill_all_of_uid(uid: int) -> None:
    """SIGKILL every live process whose real uid is `uid` (repeated until none is left)."""
    for _ in range(50):
        victims = [pid for pid in _pids() for owner, alive, _ in [_proc_owner(pid)] if owner == uid and alive]
        if not victims:
            return
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.001)


def _kill_group(pgid: int) -> None:
    """SIGKILL a process group, ignoring one that is already gone."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _read_streams(proc: subprocess.Popen[bytes], deadline: float, cap: int,
                  on_exit: Callable[[], None]) -> tuple[bytes, bytes, bool, bool]:
    """Read stdout/stderr until EOF, the deadline or the cap; (out, err, timed_out, truncated)."""
    assert proc.stdout is not None and proc.stderr is not None
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    truncated = timed_out = cleaned_up = False
    with selectors.DefaultSelector() as selector:
        for fd in buffers:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map() and not truncated:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = not cleaned_up  # past the deadline while the program itself still ran
                break
            for key, _ in selector.select(timeout=min(remaining, 0.1)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffer = buffers[key.fd]
                room = cap - len(buffer)
                buffer += chunk[:max(room, 0)]
                truncated = truncated or len(chunk) > room
            if not cleaned_up and proc.poll() is not None:
                # The program is done; kill anything it left behind holding our pipes open,
                # then give the pipes a moment to report EOF.
                on_exit()
                cleaned_up = True
                deadline = min(deadline, time.monotonic() + 1.0)
    return (bytes(buffers[proc.stdout.fileno()]), bytes(buffers[proc.stderr.fileno()]),
            timed_out, truncated)


def _limits(timeout_s: float, memory_mb: int, disk_mb: int, max_processes: int,
            max_open_files: int) -> tuple[tuple[int, int], ...]:
    """The resource limits for the child as (RLIMIT_*, value) pairs."""
    return (
        (resource.RLIMIT_CPU, math.ceil(timeout_s) + 1),
        (resource.RLIMIT_AS, memory_mb * 1024 * 1024),
        (resource.RLIMIT_FSIZE, disk_mb * 1024 * 1024),
        (resource.RLIMIT_NPROC, max_processes),
        (resource.RLIMIT_NOFILE, max_open_files),
        (resource.RLIMIT_CORE, 0),
    )


def run_python(code: str, timeout_s: float = 10.0, memory_mb: int = 1024, *,
               max_output_bytes: int = 64_000, max_processes: int = 64, max_open_files: int = 64,
               disk_mb: int = 64, site_packages: bool = False) -> RunResult:
    """Run `code` in a contained child interpreter and return what it printed; never raises.

    timeout_s: wall-clock limit for the whole run (CPU time is capped at about the same);
    memory_mb: address-space limit per process; max_output_bytes: kept per stream, a program
    printing more is killed; max_processes: RLIMIT_NPROC (threads count too); max_open_files:
    RLIMIT_NOFILE; disk_mb: the largest file (RLIMIT_FSIZE) and the size of the tmpfs working
    directory; site_packages: let the code import the installed packages (numpy, mpmath, ...),
    which `-S` otherwise leaves out. A bad program gives a RunResult with its stderr; isolation
    the machine refused is listed in `notes`.
    """
    start = time.monotonic()
    notes: list[str] = []
    is_root = os.geteuid() == 0
    uid = gid = None
    unique_uid = False
    if is_root:
        uid, unique_uid = _pick_sandbox_uid()
        gid = uid
        if not unique_uid:
            notes.append("no free uid range: running as 'nobody', shared with other sandboxes")
    else:
        # Not root: RLIMIT_NPROC counts every process of our user, so allow what runs already.
        max_processes += _count_tasks_of_uid(os.getuid())
        notes.append("not root: no network or file-system isolation (they need root); "
                     "the code runs as this user")

    script = code.encode("utf-8", errors="surrogatepass")  # lone surrogates: a SyntaxError later
    workdir = tempfile.mkdtemp(prefix="grpo-sandbox-")
    status_r, status_w = os.pipe()
    try:
        with open(os.path.join(workdir, SCRIPT_NAME), "wb") as f:
            f.write(script)
        if uid is not None:
            os.chown(workdir, uid, gid)
            os.chmod(workdir, 0o700)
        cfg = _ChildConfig(
            workdir=workdir, script=script, uid=uid, gid=gid,
            limits=_limits(timeout_s, memory_mb, disk_mb, max_processes, max_open_files),
            namespaces=is_root and _LIBC is not None, disk_mb=disk_mb,
            rebind=_interpreter_dirs_to_rebind(), interpreter_reachable=_interpreter_reachable(),
            status_fd=status_w,
        )
        flags = [_python_executable(), "-I", "-B", "-X", "utf8"] + ([] if site_packages else ["-S"])
        env = dict(BASE_ENV, HOME=workdir, TMPDIR=workdir)
        try:
            proc = subprocess.Popen(
                [*flags, SCRIPT_NAME], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                preexec_fn=functools.partial(_child_setup, cfg), close_fds=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return RunResult("", f"sandbox: could not start the program: {exc}", None, False,
                             time.monotonic() - start, notes=tuple(notes))
        os.close(status_w)
        status_w = -1
        status = os.read(status_r, 3).ljust(3, b"\0")
        net, fs, dropped = (bool(b) for b in status)
        if is_root and not dropped:
            why = "" if fs or cfg.interpreter_reachable else (
                f" (other users cannot reach the interpreter in {', '.join(_interpreter_dirs())})")
            notes.append(f"could not drop privileges{why}: the code ran as root, RLIMIT_NPROC not enforced")
        if is_root and not net:
            notes.append("no network namespace (needs CAP_SYS_ADMIN): network not isolated")
        if is_root and not fs:
            notes.append("no mount namespace (needs CAP_SYS_ADMIN): /tmp and home folders are the real ones")

        cleaned_up = False

        def cleanup() -> None:
            """Kill what the program left running: its process group, and every process of its uid."""
            nonlocal cleaned_up
            if not cleaned_up:
                cleaned_up = True
                _kill_group(proc.pid)
                if dropped and unique_uid:
                    _kill_all_of_uid(uid)

        try:
            out, err, timed_out, truncated = _read_streams(
                proc, start + timeout_s, max_output_bytes, cleanup)
        finally:
            cleanup()
            proc.stdout.close()
            proc.stderr.close()
            returncode = proc.wait()
        return RunResult(
            stdout=out.decode("utf-8", errors="replace"),
            stderr=err.decode("utf-8", errors="replace"),
            returncode=None if timed_out else returncode,
            timed_out=timed_out,
            duration_s=time.monotonic() - start,
            output_truncated=truncated,
            network_isolated=net,
            filesystem_isolated=fs,
            privileges_dropped=dropped or not is_root,
            sandbox_uid=uid if dropped else os.getuid(),
            notes=tuple(notes),
        )
    finally:
        os.close(status_r)
        if status_w != -1:
            os.close(status_w)
        shutil.rmtree(workdir, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def isolation_report() -> dict[str, bool | str]:
    """What isolation this machine gives `run_python` (probed once with a trivial run)."""
    result = run_python("import os; print(os.getuid())", timeout_s=10.0)
    is_root = os.geteuid() == 0
    return {
        "python": _python_executable(),
        "running_as_root": is_root,
        "probe_ok": result.ok,
        "network_isolated": result.network_isolated,
        "filesystem_isolated": result.filesystem_isolated,
        "privileges_dropped": result.privileges_dropped,
        "unique_sandbox_uid": is_root and result.privileges_dropped and result.sandbox_uid != NOBODY_UID,
        # Root ignores RLIMIT_NPROC, so the process limit holds only when the code is not root.
        "process_limit_effective": result.privileges_dropped,
        "notes": "; ".join(result.notes) or "all layers active",
    }


# --------------------------------------------------------------------------------------------
# Pi: reference digits and scoring
# --------------------------------------------------------------------------------------------

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

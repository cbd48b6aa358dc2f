"""Run model-written Python in a contained child process (judging what it computes is `pi_programs`).

A language model writes a program that prints pi; `run_python` runs it and
`pi_programs.pi_digits_correct` scores what it printed. The sandbox is layered, and every layer that the machine refuses is
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

import ctypes
import ctypes.util
import functools
import math
import os
import pwd
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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

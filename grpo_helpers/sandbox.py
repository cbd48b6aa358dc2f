"""Run model-written Python in a contained child process (judging what it computes is `pi_programs`).

A language model writes a program that prints pi; `run_python` runs it and
`pi_programs.pi_digits_correct` scores what it printed. The sandbox is layered, and every layer
that the machine refuses is reported in the result instead of raising (`isolation_report()`
says what this machine gives):

* a separate `python -I -S` process (isolated mode, no site-packages unless asked), an EMPTY
  environment plus a handful of fixed variables, and a fresh working directory that is deleted
  afterwards; the code goes in a file ``main.py`` there;
* resource limits: CPU seconds, address space per process, file size, processes, open files, no
  core dumps; its own session, so the wall-clock timeout kills the whole process group;
* the TOTAL memory of all its processes (memfd and shared memory included) capped at
  `memory_mb` by a cgroup, with `max_processes` tasks; where no cgroup can be made, a watchdog
  (`memory_cap`);
* as root (Colab, CI; `isolation`): no network (an empty network namespace), its own PID
  namespace (it sees only its own processes, and when it exits the kernel kills all it left
  behind), private /tmp, /dev/shm and IPC, hidden home folders, a tmpfs working directory, and
  a throw-away uid no other process uses; namespaces need CAP_SYS_ADMIN, which some containers
  lack: then the uid, its RLIMIT_NPROC and a kill of every process of that uid after the run;
* `no_new_privs` and a seccomp filter denying system calls a pi program never needs
  (`syscall_filter`), for root and non-root alike;
* output read incrementally: at most `max_output_bytes` per stream are kept, and a program that
  prints past that is killed; a program that closes its output still runs to its end or timeout.

Calling `run_python` from several threads at once works (tested). Not contained: CPU time of
many processes together is only bounded by the wall-clock timeout and the process limit; the
sandbox can read world-readable files (e.g. the repository); without root the network and the
file system are not isolated and `/proc/<pid>/environ` of same-user processes is readable.
"""

from __future__ import annotations

import functools
import math
import os
import resource
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import isolation, memory_cap, sandbox_uid, syscall_filter
from .isolation import SCRIPT_NAME

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
MIN_MEMORY_MB = 32  # the interpreter alone needs about 10 MB of address space
DRAIN_S = 1.0  # after the program exits: how long what it left may keep our pipes open
POLL_S = 0.05  # the longest the reader sleeps without looking at the program and its memory


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
    processes_isolated: bool = False  # own PID namespace and /proc: saw only its own processes
    privileges_dropped: bool = False  # ran as an unprivileged uid (or we were not root anyway)
    syscalls_filtered: bool = False  # no_new_privs and the seccomp filter were in force
    sandbox_uid: int | None = None  # the uid the code ran as
    memory_limit: str = ""  # what capped the total memory: "cgroup v2", "cgroup v1" or "watchdog"
    memory_peak_mb: float | None = None  # most memory all its processes held at once, as measured
    memory_exceeded: bool = False  # the total memory cap stopped it (OOM kill in its cgroup, or the watchdog)
    notes: tuple[str, ...] = field(default_factory=tuple)  # isolation that was not available

    @property
    def ok(self) -> bool:
        """True when the program exited with status 0 within the time limit."""
        return self.returncode == 0 and not self.timed_out


class _Program:
    """The running program: the Popen child itself, or the process it cloned into a PID namespace."""

    def __init__(self, popen: subprocess.Popen[bytes], cloned_pid: int | None) -> None:
        """Track the program; an exit fd (pidfd) wakes the reader when it ends."""
        self.popen = popen
        self.cloned = cloned_pid is not None
        self.pid = cloned_pid if cloned_pid is not None else popen.pid
        self.returncode: int | None = None
        try:
            self.exit_fd: int | None = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self.exit_fd = None

    def poll(self, block: bool = False) -> int | None:
        """The exit code once it has ended (-N for signal N), reaping it; None while it runs."""
        if self.returncode is None:
            if not self.cloned:
                self.returncode = self.popen.wait() if block else self.popen.poll()
            else:  # our own child (CLONE_PARENT): reaped here, not by the Popen
                try:
                    pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
                except ChildProcessError:  # SIGCHLD ignored: the status is gone; 0, as Popen says then
                    pid, status = self.pid, 0
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        """SIGKILL it; in a PID namespace the kernel then kills every process in there too."""
        if self.poll() is None:  # not reaped yet, so the pid is still this process
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass

    def finish(self) -> int:
        """Wait for the program (and the Popen child that cloned it), close the exit fd; the exit code."""
        returncode = self.poll(block=True)
        self.popen.wait()
        if self.exit_fd is not None:
            os.close(self.exit_fd)
        assert returncode is not None
        return returncode


def _check_arguments(timeout_s: float, memory_mb: int, **counts: int) -> None:
    """Raise ValueError before anything runs for a limit that would be meaningless or unlimited."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) \
            or not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a finite number of seconds above 0, got {timeout_s!r}")
    for name, value in {"memory_mb": memory_mb, **counts}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    if memory_mb < MIN_MEMORY_MB:
        raise ValueError(f"memory_mb must be at least {MIN_MEMORY_MB} (the interpreter alone needs "
                         f"about 10 MB), got {memory_mb}")


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


def _sandbox_user(is_root: bool) -> tuple[int | None, bool, list[str]]:
    """(uid to run as or None, whether no one else uses it, notes)."""
    if not is_root:
        return None, False, ["not root: no namespaces or file-system isolation (they need root); "
                             "the code runs as this user"]
    uid, unique = sandbox_uid.pick_sandbox_uid()
    return uid, unique, [] if unique else ["no free uid range: running as 'nobody', shared with other sandboxes"]


def _start(cfg: isolation.ChildConfig, site_packages: bool, status_r: int
           ) -> tuple[_Program | None, dict[str, bool], str]:
    """Start the interpreter on main.py; (program or None, active layers, why it could not start)."""
    popen, error = None, ""
    try:  # closes the status pipe's write end whatever happens: the caller gave it to us
        argv = [isolation.python_executable(), "-I", "-B", "-X", "utf8"] + ([] if site_packages else ["-S"])
        env = dict(BASE_ENV, HOME=cfg.workdir, TMPDIR=cfg.workdir)
        popen = subprocess.Popen(
            [*argv, SCRIPT_NAME], cwd=cfg.workdir, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=functools.partial(isolation.child_setup, cfg), close_fds=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        error = f"sandbox: could not start the program: {exc}"
    finally:
        os.close(cfg.status_fd)
    cloned_pid, layers = isolation.read_status(status_r)
    if popen is None:
        if cloned_pid is not None:
            try:
                os.waitpid(cloned_pid, 0)  # it failed before exec; it is our child, so reap it
            except ChildProcessError:
                pass
        return None, layers, error
    return _Program(popen, cloned_pid), layers, ""


def _notes(is_root: bool, layers: dict[str, bool], cloned: bool, cap: memory_cap.MemoryCap,
           cfg: isolation.ChildConfig) -> list[str]:
    """One line for each layer this run did not get, saying what that leaves open."""
    notes = []
    if is_root and not layers["uid"]:
        why = "" if layers["filesystem"] or cfg.interpreter_reachable else (
            f" (other users cannot reach the interpreter in {', '.join(isolation.interpreter_dirs())})")
        notes.append(f"could not drop privileges{why}: the code ran as root, RLIMIT_NPROC not enforced")
    if is_root and not layers["network"]:
        notes.append("no network namespace (needs CAP_SYS_ADMIN): network not isolated")
    if is_root and not layers["filesystem"]:
        notes.append("no mount namespace (needs CAP_SYS_ADMIN): /tmp and home folders are the real ones")
    if is_root and not layers["processes"]:
        notes.append(("a PID namespace but no fresh /proc" if cloned else "no PID namespace (needs "
                      "CAP_SYS_ADMIN)") + ": the code can list every process and read their command lines")
    if not layers["no_new_privs"]:
        notes.append("no no_new_privs: a setuid program could raise the code's privileges")
    if not layers["seccomp"]:
        notes.append("no seccomp filter (" + ("not built for this architecture" if cfg.seccomp_filter is None
                     else "the kernel refused it") + "): mount, unshare, ptrace, bpf, memfd_create... are allowed")
    if cap.version == 0:
        notes.append(f"memory: {cap.note}; a watchdog sums the sandbox's memory every "
                     f"{memory_cap.WATCH_INTERVAL_S:g} s and kills it over memory_mb (it can overshoot by what "
                     "is allocated in between" + ("" if layers["seccomp"] else "; memfd pages are not counted") + ")")
    return notes


def _collect_output(program: _Program, deadline: float, max_bytes: int, cap: memory_cap.MemoryCap,
                    kill_all: Callable[[], None]) -> tuple[bytes, bytes, bool, bool]:
    """Read stdout/stderr until the program has ended and they closed, the deadline, or the output
    cap; kill the sandbox when its memory cap says so. (out, err, timed_out, truncated)."""
    assert program.popen.stdout is not None and program.popen.stderr is not None
    buffers = {program.popen.stdout.fileno(): bytearray(), program.popen.stderr.fileno(): bytearray()}
    truncated = timed_out = exited = False
    with selectors.DefaultSelector() as selector:
        for fd in buffers:
            selector.register(fd, selectors.EVENT_READ)
        if program.exit_fd is not None:
            selector.register(program.exit_fd, selectors.EVENT_READ)
        while not truncated:
            if not exited and program.poll() is not None:
                exited = True
                kill_all()  # what it left behind may hold our pipes open
                deadline = min(deadline, time.monotonic() + DRAIN_S)
                if program.exit_fd is not None:
                    selector.unregister(program.exit_fd)
            if exited and not any(fd in selector.get_map() for fd in buffers):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = not exited  # the deadline passed while the program itself still ran
                break
            if cap.check():
                kill_all()
            for key, _ in selector.select(timeout=min(remaining, POLL_S)):
                if key.fd not in buffers:
                    continue  # the exit fd: handled at the top of the loop
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffer = buffers[key.fd]
                room = max_bytes - len(buffer)
                buffer += chunk[:max(room, 0)]
                truncated = truncated or len(chunk) > room
    return (bytes(buffers[program.popen.stdout.fileno()]), bytes(buffers[program.popen.stderr.fileno()]),
            timed_out, truncated)


def run_python(code: str, timeout_s: float = 10.0, memory_mb: int = 1024, *,
               max_output_bytes: int = 64_000, max_processes: int = 64, max_open_files: int = 64,
               disk_mb: int = 64, site_packages: bool = False) -> RunResult:
    """Run `code` in a contained child interpreter and return what it printed.

    timeout_s: wall-clock limit for the whole run (CPU time is capped at about the same);
    memory_mb: the total memory of all the program's processes together (a cgroup, else a
    watchdog), and the address space of each; max_output_bytes: kept per stream, a program
    printing more is killed; max_processes: tasks (threads count too); max_open_files:
    RLIMIT_NOFILE; disk_mb: the largest file (RLIMIT_FSIZE) and the size of the tmpfs working
    directory; site_packages: let the code import the installed packages (numpy, mpmath, ...),
    which `-S` otherwise leaves out. A limit that is not a finite positive number raises
    ValueError before anything runs; otherwise it never raises: a bad program gives a RunResult
    with its stderr, and isolation the machine refused is listed in `notes`.
    """
    _check_arguments(timeout_s, memory_mb, max_output_bytes=max_output_bytes, max_processes=max_processes,
                     max_open_files=max_open_files, disk_mb=disk_mb)
    start = time.monotonic()
    is_root = os.geteuid() == 0
    uid, unique_uid, notes = _sandbox_user(is_root)
    # Not root: RLIMIT_NPROC counts every process of our user, so allow what runs already.
    nproc = max_processes if is_root else max_processes + sandbox_uid.count_tasks_of_uid(os.getuid())
    script = code.encode("utf-8", errors="surrogatepass")  # lone surrogates: a SyntaxError later
    cap: memory_cap.MemoryCap | None = None
    workdir: str | None = None
    open_fds: list[int] = []  # pipe ends this function still has to close
    try:
        cap = memory_cap.MemoryCap(memory_mb, max_processes)
        workdir = tempfile.mkdtemp(prefix="grpo-sandbox-")
        status_r, status_w = os.pipe()
        open_fds += [status_r, status_w]
        with open(os.path.join(workdir, SCRIPT_NAME), "wb") as f:
            f.write(script)
        if uid is not None:
            os.chown(workdir, uid, uid)
            os.chmod(workdir, 0o700)
        cfg = isolation.ChildConfig(
            workdir=workdir, script=script, uid=uid, gid=uid,
            limits=_limits(timeout_s, memory_mb, disk_mb, nproc, max_open_files),
            namespaces=is_root and isolation.kernel_calls_available(), disk_mb=disk_mb,
            rebind=isolation.interpreter_dirs_to_rebind(), interpreter_reachable=isolation.interpreter_reachable(),
            cgroup_dirs=cap.dirs, seccomp_filter=syscall_filter.filter_address(), status_fd=status_w,
        )
        open_fds.remove(status_w)  # from here on _start closes it, whatever happens
        program, layers, error = _start(cfg, site_packages, status_r)
        if cap.version and not layers["cgroup"]:
            cap.use_watchdog("the program could not join its cgroup")
        notes += _notes(is_root, layers, program is not None and program.cloned, cap, cfg)
        if program is None:
            return RunResult("", error, None, False, time.monotonic() - start, notes=tuple(notes))
        dropped = layers["uid"]
        cap.watch(program.pid, program.cloned, uid if dropped and unique_uid else None,
                  (workdir, *isolation.SCRATCH_DIRS) if layers["filesystem"] else ())

        swept = False

        def kill_all() -> None:
            """Kill the program and what it left: its PID namespace, else its process group and its uid."""
            nonlocal swept
            program.kill()
            if not program.cloned and not swept:
                swept = program.returncode is not None  # once it has ended, one sweep is enough
                try:
                    os.killpg(program.popen.pid, signal.SIGKILL)
                except OSError:
                    pass
                if dropped and unique_uid and uid is not None:
                    sandbox_uid.kill_all_of_uid(uid, program.popen.pid)

        try:
            out, err, timed_out, truncated = _collect_output(program, start + timeout_s, max_output_bytes,
                                                             cap, kill_all)
        finally:
            kill_all()
            for stream in (program.popen.stdout, program.popen.stderr):
                if stream is not None:
                    stream.close()
            returncode = program.finish()
        return RunResult(
            stdout=out.decode("utf-8", errors="replace"), stderr=err.decode("utf-8", errors="replace"),
            returncode=None if timed_out else returncode, timed_out=timed_out,
            duration_s=time.monotonic() - start, output_truncated=truncated,
            network_isolated=layers["network"], filesystem_isolated=layers["filesystem"],
            processes_isolated=layers["processes"], privileges_dropped=dropped or not is_root,
            syscalls_filtered=layers["seccomp"], sandbox_uid=uid if dropped else os.getuid(),
            memory_limit=cap.kind, memory_peak_mb=cap.peak_mb(), memory_exceeded=cap.exceeded,
            notes=tuple(notes),
        )
    finally:  # also when something failed before the program started: no cgroup, folder or fd is left
        for fd in open_fds:
            os.close(fd)
        if cap is not None:
            cap.release()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def isolation_report() -> dict[str, bool | str]:
    """What isolation this machine gives `run_python` (probed once with a trivial run)."""
    result = run_python("import os; print(os.getuid())", timeout_s=10.0)
    is_root = os.geteuid() == 0
    unique_uid = is_root and result.privileges_dropped and result.sandbox_uid != sandbox_uid.NOBODY_UID
    place = memory_cap.cgroup_place()[0]
    pids_cgroup = result.memory_limit.startswith("cgroup") and place is not None and place.pids_parent is not None
    layers = {
        "own interpreter (-I -S), empty environment, resource limits": True,
        "network namespace": result.network_isolated,
        "mount and IPC namespaces (private /tmp and /dev/shm, hidden homes, tmpfs workdir)": result.filesystem_isolated,
        "PID namespace with its own /proc": result.processes_isolated,
        "throw-away uid" if unique_uid else "uid 'nobody'": is_root and result.privileges_dropped,
        "no_new_privs and seccomp filter": result.syscalls_filtered,
        f"total memory: {result.memory_limit}" + (" (memory + pids)" if pids_cgroup else ""): True,
    }
    return {
        "python": isolation.python_executable(),
        "running_as_root": is_root,
        "probe_ok": result.ok,
        "network_isolated": result.network_isolated,
        "filesystem_isolated": result.filesystem_isolated,
        "processes_isolated": result.processes_isolated,
        "privileges_dropped": result.privileges_dropped,
        "unique_sandbox_uid": unique_uid,
        # Root ignores RLIMIT_NPROC: the process limit holds when the code is not root, or by a pids cgroup.
        "process_limit_effective": result.privileges_dropped or pids_cgroup,
        "syscalls_filtered": result.syscalls_filtered,
        "memory_limit": result.memory_limit,
        "layers": "; ".join(name for name, active in layers.items() if active),
        "notes": "; ".join(result.notes) or "all layers active",
    }

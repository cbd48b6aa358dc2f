"""The kernel layers around a sandboxed program, set up in the child between fork and exec.

`sandbox.run_python` starts the interpreter with `subprocess.Popen(preexec_fn=child_setup)`.
As root with CAP_SYS_ADMIN the child first leaves the network namespace (no interface up, not
even localhost), then clones the program into new PID, mount and IPC namespaces with
CLONE_PARENT: the program is PID 1 of its own PID namespace, sees only its own processes in a
fresh /proc, and when it exits the kernel kills whatever it left behind. Being the caller's own
child, the caller reaps it and reads its real exit status (nothing waits in between). In the
program: it joins its memory cgroup (`memory_cap`), gets fresh small tmpfs over the scratch
folders and as working directory, home folders hidden, resource limits, a throw-away uid
(`sandbox_uid`), `no_new_privs` (setuid binaries give nothing) and the seccomp filter
(`syscall_filter`). Without CAP_SYS_ADMIN (some containers) the program runs in the child itself,
with the uid, limits, no_new_privs and the filter.

Every layer is best effort: what worked is written to a status pipe (`read_status`), and the
sandbox reports what did not. Only the resource limits are mandatory: failing one raises, so the
program never starts. The code here imports nothing at run time and mostly makes system calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import resource
import signal
import sys
from dataclasses import dataclass

from . import syscall_filter

SCRIPT_NAME = "main.py"
# World-writable folders: inside the mount namespace they become fresh, empty, small tmpfs,
# so a write there never reaches the real machine.
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
SCRATCH_MB = 4  # size of each of them
# Home folders (secrets such as tokens live there): hidden behind an empty tmpfs.
HIDDEN_DIRS = ("/root", "/home", "/content")
# What the child reports, in this order (see read_status).
LAYERS = ("network", "filesystem", "processes", "uid", "no_new_privs", "seccomp", "cgroup")

_CLONE_PARENT = 0x00008000
_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x2, 0x4, 0x8
_MS_BIND, _MS_REC, _MS_PRIVATE = 0x1000, 0x4000, 0x40000
_MNT_DETACH = 0x2
_PR_SET_NO_NEW_PRIVS = 38


@dataclass(frozen=True)
class ChildConfig:
    """Everything the child needs between fork and exec, computed in the parent beforehand."""

    workdir: str
    script: bytes
    uid: int | None  # drop to this uid (and gid) when set
    gid: int | None
    limits: tuple[tuple[int, int], ...]  # (RLIMIT_*, value)
    namespaces: bool  # try namespaces and mounts (we are root)
    disk_mb: int  # size of the tmpfs working directory
    rebind: tuple[str, ...]  # interpreter folders inside hidden folders: mounted back
    interpreter_reachable: bool  # can an unprivileged uid run the interpreter without the binds?
    cgroup_dirs: tuple[str, ...]  # cgroups the program joins (memory_cap)
    seccomp_filter: int | None  # address of the struct sock_fprog, or None: no filter
    status_fd: int


def _load_libc() -> ctypes.CDLL | None:
    """The C library, for unshare(2), mount(2), prctl(2) and clone(2); None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()


def kernel_calls_available() -> bool:
    """True when unshare, mount, clone and prctl can be called (Linux with a loadable C library)."""
    return _LIBC is not None


def _unshare(flags: int) -> bool:
    """unshare(2) in the current process; False when not permitted."""
    return _LIBC is not None and _LIBC.unshare(flags) == 0


def clone_program() -> int:
    """clone(2) as PID 1 of new PID, mount and IPC namespaces, a sibling (CLONE_PARENT); -1 if refused.

    Like fork: 0 in the new process, its pid in this one."""
    number = _SYS_CLONE.get(os.uname().machine)
    if _LIBC is None or number is None:
        return -1
    flags = _CLONE_PARENT | _CLONE_NEWPID | _CLONE_NEWNS | _CLONE_NEWIPC | signal.SIGCHLD
    zero = ctypes.c_ulong(0)
    return _LIBC.syscall(ctypes.c_long(number), ctypes.c_ulong(flags), zero, zero, zero, zero)


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


def is_under(path: str, folder: str) -> bool:
    """True when path is folder or inside it."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _setup_mounts(cfg: ChildConfig, own_proc: bool) -> tuple[bool, bool]:
    """In a fresh mount namespace: private scratch dirs, hidden homes, a tmpfs working directory.

    All or nothing: on any failure the mounts made so far are detached again and (False, False)
    returned. own_proc: also mount a fresh /proc (in a new PID namespace); the second value
    says whether that worked.
    """
    if not _mount(None, "/", None, _MS_REC | _MS_PRIVATE, None):  # nothing propagates to the host
        return False, False
    mounted: list[str] = []
    try:
        # Hold on to the interpreter's folders (e.g. a pyenv under /root) before hiding their
        # parents. Opened here, in the new namespace: mount(2) refuses a source from another one.
        kept = [(os.open(path, os.O_PATH | os.O_DIRECTORY), path) for path in cfg.rebind]
        for folder in HIDDEN_DIRS + SCRATCH_DIRS:
            if os.path.isdir(folder) and not os.path.islink(folder):
                mode = "1777" if folder in SCRATCH_DIRS else "755"
                _mount_or_raise("tmpfs", folder, "tmpfs", _MS_NOSUID | _MS_NODEV,
                                f"mode={mode},size={SCRATCH_MB}m,nr_inodes=4096")
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
    except OSError:
        for path in reversed(mounted):
            if _LIBC is not None:
                _LIBC.umount2(path.encode(), _MNT_DETACH)
        return False, False
    proc = own_proc and _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None)
    _cap_shared_memory(cfg.disk_mb)
    return True, proc


def _cap_shared_memory(megabytes: int) -> None:
    """System V shared memory of the new IPC namespace: at most `megabytes` in all (best effort)."""
    for name, value in (("shmmax", megabytes << 20), ("shmall", megabytes << 8)):
        try:
            with open(f"/proc/sys/kernel/{name}", "w") as f:
                f.write(str(value))
        except OSError:
            pass


def _join_cgroups(folders: tuple[str, ...]) -> bool:
    """Move this process into each cgroup ("0" is the writer itself); False if any refused.

    On cgroup v1 through `tasks`: moving only the calling thread (we have just one here) spares
    the kernel-wide lock that moving a whole process takes, and its RCU grace period (7-15 ms
    a run, measured). cgroup v2 only moves whole processes between groups (cgroup.procs)."""
    try:
        for folder in folders:
            tasks = os.path.join(folder, "tasks")
            with open(tasks if os.path.exists(tasks) else os.path.join(folder, "cgroup.procs"), "w") as f:
                f.write("0")
        return bool(folders)
    except OSError:
        return False


def _set_limits(limits: tuple[tuple[int, int], ...]) -> None:
    """setrlimit for each (RLIMIT_*, value), never above the hard limit already there; raises on failure."""
    for which, value in limits:
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))


def _drop_privileges(uid: int, gid: int) -> bool:
    """Become uid/gid with no supplementary groups; False when refused."""
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        return True
    except OSError:
        return False


def _no_new_privs() -> bool:
    """prctl(PR_SET_NO_NEW_PRIVS): execve can never grant privileges again (setuid bits, file caps)."""
    zero = ctypes.c_ulong(0)
    return _LIBC is not None and _LIBC.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), zero, zero, zero) == 0


def _report(fd: int, message: str) -> None:
    """One line to the parent through the status pipe."""
    try:
        os.write(fd, message.encode() + b"\n")
    except OSError:
        pass


def child_setup(cfg: ChildConfig) -> None:
    """Runs in the forked child before exec: namespaces, then the program's own layers."""
    os.umask(0o022)
    network = mount_ns = pid_ns = False
    if cfg.namespaces:
        network = _unshare(_CLONE_NEWNET)
        pid = clone_program()
        if pid > 0:  # this process only started the program: tell the parent its pid, and leave
            _report(cfg.status_fd, f"pid {pid}")
            os._exit(0)
        pid_ns = mount_ns = pid == 0
        if not pid_ns:
            mount_ns = _unshare(_CLONE_NEWNS | _CLONE_NEWIPC)
    cgroup = _join_cgroups(cfg.cgroup_dirs)
    filesystem, own_proc = _setup_mounts(cfg, pid_ns) if mount_ns else (False, False)
    _set_limits(cfg.limits)
    dropped = cfg.uid is not None and cfg.gid is not None and (filesystem or cfg.interpreter_reachable) \
        and _drop_privileges(cfg.uid, cfg.gid)
    no_new_privs = _no_new_privs()
    seccomp = no_new_privs and syscall_filter.install(_LIBC, cfg.seccomp_filter)
    layers = (network, filesystem, own_proc, dropped, no_new_privs, seccomp, cgroup)
    _report(cfg.status_fd, "layers " + "".join("1" if on else "0" for on in layers))


def read_status(fd: int) -> tuple[int | None, dict[str, bool]]:
    """(program pid when it was cloned into a PID namespace, {layer: active}) from the status pipe, to EOF."""
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    pid, bits = None, ""
    for line in data.decode(errors="replace").splitlines():
        kind, _, value = line.partition(" ")
        if kind == "pid" and value.isdigit():
            pid = int(value)
        elif kind == "layers":
            bits = value
    return pid, {name: bits[i:i + 1] == "1" for i, name in enumerate(LAYERS)}


# --------------------------------------------------------------------------------------------
# The interpreter's folders
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def python_executable() -> str:
    """The interpreter to run: this one."""
    return sys.executable or "/usr/bin/python3"


@functools.lru_cache(maxsize=None)
def interpreter_dirs() -> tuple[str, ...]:
    """The folders the interpreter needs (install prefix, venv), outermost only."""
    exe = os.path.realpath(python_executable())
    candidates = {os.path.dirname(exe), os.path.dirname(os.path.abspath(python_executable()))}
    for prefix in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix):
        candidates.add(os.path.realpath(prefix))
    outermost = [p for p in candidates if not any(q != p and is_under(p, q) for q in candidates)]
    return tuple(sorted(outermost))


@functools.lru_cache(maxsize=None)
def interpreter_dirs_to_rebind() -> tuple[str, ...]:
    """The interpreter folders that the mount namespace would hide (under /root, /tmp, ...)."""
    hidden = HIDDEN_DIRS + SCRATCH_DIRS
    return tuple(p for p in interpreter_dirs() if any(is_under(p, h) for h in hidden))


@functools.lru_cache(maxsize=None)
def interpreter_reachable() -> bool:
    """True when an unprivileged uid can reach every folder the interpreter needs."""
    return all(_world_reachable(path) for path in interpreter_dirs())


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

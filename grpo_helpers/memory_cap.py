"""A cap on a sandbox's total memory: a cgroup where one can be made, else a watchdog.

RLIMIT_AS bounds one process's address space, so a program with many processes, shared memory
or memfd pages passes any total. The kernel's bound for a group of processes is a memory cgroup:
`MemoryCap` makes one per run, memory.max (cgroup v2) or memory.limit_in_bytes (v1) = memory_mb
with no swap, and pids.max = max_processes, and the program joins it between fork and exec
(`isolation`). Everything the sandbox's processes use is charged there: anonymous memory, memfd
and tmpfs pages, shared memory, page tables. At the limit the kernel's OOM killer stops it (v2
kills the whole group; on v1 the sandbox kills the rest as soon as it sees the OOM kill).
Moving a process between v2 cgroups makes the kernel wait for an RCU grace period, 7-15 ms a run
here when runs are spaced out; on v1 the program moves its single thread instead, which costs
under 1 ms (`isolation._join_cgroups`).

Where: under our own cgroup (v1; v2 when the memory controller is, or can be, enabled for its
children, which v2 refuses while our cgroup holds processes), else beside it, under its parent
(v2). No cgroup where the cgroup file system is read-only (most containers) or the memory
controller is not ours: then a watchdog sums the proportional set size (PSS) of the sandbox's
processes and its tmpfs working directory every WATCH_INTERVAL_S and kills the sandbox over
memory_mb. It can overshoot by what the program allocates between two looks; memfd pages are
denied by the seccomp filter, System V shared memory is capped in the sandbox's IPC namespace,
and /tmp and /dev/shm are small tmpfs, so what it cannot see is small.

Several sandboxes at once (`pi_eval`): `concurrent_runs_affordable` says how many of memory_mb
fit in a share of the memory the machine has available.
"""

from __future__ import annotations

import functools
import os
import secrets
import time
from dataclasses import dataclass

from .isolation import is_under
from .sandbox_uid import pids

GROUP_PREFIX = "grpo-sandbox-"
CGROUP_INTERVAL_S = 0.05  # how often a run looks for an OOM kill in its cgroup
WATCH_INTERVAL_S = 0.02  # how often the watchdog sums the sandbox's memory
_LEFTOVER_GROUPS: list[str] = []  # groups that were still busy when their run ended: removed later


@dataclass(frozen=True)
class CgroupPlace:
    """Where this process can make sandbox cgroups."""

    version: int  # 2 or 1
    memory_parent: str  # folder under which a run's memory cgroup is made
    pids_parent: str | None  # v1: the pids hierarchy's folder; v2: memory_parent if pids is enabled; None: no pids


def _read(path: str) -> str:
    """A (small) file's text."""
    with open(path) as f:
        return f.read()


def _write(folder: str, name: str, value: object, optional: bool = False) -> None:
    """Write a cgroup control file; a missing optional one (no swap accounting, older kernel) is skipped."""
    path = os.path.join(folder, name)
    if optional and not os.path.exists(path):
        return
    with open(path, "w") as f:
        f.write(str(value))


def _own_cgroups() -> dict[str, str]:
    """Controller ("" for cgroup v2) -> this process's cgroup path, from /proc/self/cgroup."""
    found: dict[str, str] = {}
    for line in _read("/proc/self/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            found.setdefault(name, path)
    return found


def _cgroup_mounts() -> dict[str, tuple[str, str]]:
    """Controller ("" for cgroup v2) -> (mount point, mount root), from /proc/self/mountinfo."""
    found: dict[str, tuple[str, str]] = {}
    for line in _read("/proc/self/mountinfo").splitlines():
        fields = line.split()
        tail = fields[fields.index("-") + 1:]
        if tail[0] == "cgroup2":
            found.setdefault("", (fields[4], fields[3]))
        elif tail[0] == "cgroup":
            for option in tail[2].split(","):
                found.setdefault(option, (fields[4], fields[3]))
    return found


def _folder(mount: tuple[str, str], path: str) -> str:
    """The folder of cgroup `path` under a mount of its hierarchy."""
    point, root = mount
    if root != "/" and is_under(path, root):
        path = path[len(root):]
    return os.path.join(point, path.lstrip("/")).rstrip("/") or "/"


def _can_make_groups(parent: str, controller_file: str) -> bool:
    """True when a group made under `parent` gets its own limit file (tried with a probe group)."""
    probe = os.path.join(parent, f"{GROUP_PREFIX}probe-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.mkdir(probe)
    except OSError:
        return False
    try:
        return os.path.exists(os.path.join(probe, controller_file))
    finally:
        os.rmdir(probe)


def _v2_place(mount: tuple[str, str], path: str) -> CgroupPlace | None:
    """Under our cgroup v2 group if its children can get the memory controller, else under its parent."""
    own = _folder(mount, path)
    parents = [own] + ([os.path.dirname(own)] if own != mount[0].rstrip("/") else [])
    for parent in parents:
        try:
            enabled = _read(os.path.join(parent, "cgroup.subtree_control")).split()
            available = _read(os.path.join(parent, "cgroup.controllers")).split()
            missing = [c for c in ("memory", "pids") if c in available and c not in enabled]
            if missing:
                _write(parent, "cgroup.subtree_control", " ".join("+" + c for c in missing))
        except OSError:  # EBUSY: the group holds processes; EROFS: read-only
            continue
        if _can_make_groups(parent, "memory.max"):
            return CgroupPlace(2, parent, parent if "pids" in available else None)
    return None


def _v1_place(mounts: dict[str, tuple[str, str]], own: dict[str, str]) -> CgroupPlace | None:
    """Under our own groups of the v1 memory (and pids) hierarchies."""
    if "memory" not in mounts or "memory" not in own:
        return None
    memory = _folder(mounts["memory"], own["memory"])
    if not _can_make_groups(memory, "memory.limit_in_bytes"):
        return None
    pids_folder = _folder(mounts["pids"], own["pids"]) if "pids" in mounts and "pids" in own else None
    if pids_folder is not None and not _can_make_groups(pids_folder, "pids.max"):
        pids_folder = None
    return CgroupPlace(1, memory, pids_folder)


@functools.lru_cache(maxsize=None)
def cgroup_place() -> tuple[CgroupPlace | None, str]:
    """(where to make sandbox cgroups, "") or (None, why none can be made); probed once per process."""
    try:
        mounts, own = _cgroup_mounts(), _own_cgroups()
    except (OSError, ValueError, IndexError):
        return None, "no cgroup information in /proc (not Linux?)"
    place = None
    try:
        if "" in mounts and "" in own:
            place = _v2_place(mounts[""], own[""])
        if place is None:
            place = _v1_place(mounts, own)
    except OSError:
        place = None
    if place is None:
        return None, ("no memory cgroup can be made here (read-only cgroup file system, or the memory "
                      "controller is not delegated to us)")
    for parent in {place.memory_parent, place.pids_parent} - {None}:
        _remove_stale_groups(parent)
    return place, ""


def _remove_stale_groups(parent: str) -> None:
    """Remove sandbox groups left by processes that are gone (a crash between make and remove)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        owner = name[len(GROUP_PREFIX):].split("-")[0]
        if name.startswith(GROUP_PREFIX) and owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            try:
                os.rmdir(os.path.join(parent, name))
            except OSError:
                pass


def _counter(text: str, key: str) -> int:
    """The number after `key` on its own line in a cgroup stat file ("oom_kill 2" -> 2); 0 if absent."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


class MemoryCap:
    """One run's cap on total memory: a cgroup the program joins, else a watchdog over its processes."""

    def __init__(self, memory_mb: int, max_processes: int) -> None:
        """Make the run's cgroup(s) with their limits; without one, the cap is a watchdog (`watch`)."""
        self.limit_bytes = memory_mb << 20
        self.peak_bytes = 0
        self.exceeded = False
        self.dirs: tuple[str, ...] = ()
        self.note = ""
        self._next_look = 0.0
        self._member_key: tuple[str, object] | None = None
        self._tmpfs: tuple[str, ...] = ()
        place, self.note = cgroup_place()
        self.version = 0 if place is None else place.version
        if place is not None:
            try:
                self.dirs = self._make_groups(place, max_processes)
            except OSError as exc:
                self.version, self.note = 0, f"could not make this run's cgroup ({exc})"

    def use_watchdog(self, why: str) -> None:
        """Fall back to the watchdog for this run (its groups are still removed by `release`)."""
        self.version, self.note = 0, why

    @property
    def kind(self) -> str:
        """Which layer bounds the total: "cgroup v2", "cgroup v1" or "watchdog"."""
        return f"cgroup v{self.version}" if self.version else "watchdog"

    @property
    def limits_processes(self) -> bool:
        """True when a pids cgroup bounds the sandbox's tasks (whatever uid they run as)."""
        return any(os.path.exists(os.path.join(d, "pids.max")) for d in self.dirs)

    def _make_groups(self, place: CgroupPlace, max_processes: int) -> tuple[str, ...]:
        """mkdir the run's group(s) and write the limits; raises OSError (after cleaning up)."""
        name = f"{GROUP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        made: list[str] = []
        try:
            memory = os.path.join(place.memory_parent, name)
            os.mkdir(memory)
            made.append(memory)
            if place.version == 2:
                _write(memory, "memory.max", self.limit_bytes)
                _write(memory, "memory.swap.max", 0, optional=True)
                _write(memory, "memory.oom.group", 1, optional=True)
            else:
                _write(memory, "memory.limit_in_bytes", self.limit_bytes)
                _write(memory, "memory.memsw.limit_in_bytes", self.limit_bytes, optional=True)
            if place.pids_parent is not None:
                folder = os.path.join(place.pids_parent, name)
                if folder != memory:
                    os.mkdir(folder)
                    made.append(folder)
                _write(folder, "pids.max", max_processes)
            return tuple(made)
        except OSError:
            _remove_groups(made)
            raise

    def watch(self, program_pid: int, pid_namespace: bool, uid: int | None, tmpfs: tuple[str, ...]) -> None:
        """Without a cgroup: which processes are the sandbox's (its PID namespace, else its uid, else its
        session) and which of its tmpfs folders (seen through /proc/<pid>/root) count too."""
        if pid_namespace:
            self._member_key = ("ns", _pid_namespace(program_pid))
        elif uid is not None:
            self._member_key = ("uid", uid)
        else:
            self._member_key = ("sid", program_pid)
        self._tmpfs = tuple(f"/proc/{program_pid}/root{path}" for path in tmpfs)

    def check(self) -> bool:
        """Look (at most every interval) whether the sandbox went over its memory; True: kill it now."""
        now = time.monotonic()
        if self.exceeded or now < self._next_look:
            return self.exceeded
        self._next_look = now + (CGROUP_INTERVAL_S if self.version else WATCH_INTERVAL_S)
        if self.version:
            stats = "memory.events" if self.version == 2 else "memory.oom_control"
            self.exceeded = _counter(self._read_group(stats), "oom_kill") > 0
            usage = self._read_group("memory.current" if self.version == 2 else "memory.usage_in_bytes")
            used = int(usage) if usage.strip().isdigit() else 0
        elif self._member_key is not None:
            used = sum(_pss_bytes(pid) for pid in pids() if _is_member(pid, self._member_key))
            used += sum(_used_bytes(path) for path in self._tmpfs)
            self.exceeded = used > self.limit_bytes
        else:
            return False
        self.peak_bytes = max(self.peak_bytes, used)
        return self.exceeded

    def _read_group(self, name: str) -> str:
        """A control file of the run's memory group; "" when unreadable."""
        try:
            return _read(os.path.join(self.dirs[0], name))
        except (OSError, IndexError):
            return ""

    def peak_mb(self) -> float | None:
        """The most memory the sandbox used at once (the kernel's high-water mark where it keeps one)."""
        self._next_look = 0.0
        self.check()
        peak = self._read_group({2: "memory.peak", 1: "memory.max_usage_in_bytes"}.get(self.version, ""))
        if peak.strip().isdigit():
            self.peak_bytes = max(self.peak_bytes, int(peak))
        return round(self.peak_bytes / 2**20, 1) if self.peak_bytes else None

    def release(self) -> None:
        """Remove the run's cgroup(s); call once its processes are gone."""
        leftovers: list[str] = []
        while _LEFTOVER_GROUPS:  # pop() is atomic: a group another thread adds meanwhile is kept, not lost
            try:
                leftovers.append(_LEFTOVER_GROUPS.pop())
            except IndexError:  # another run's release took the last one
                break
        _remove_groups(leftovers, attempts=1)
        _remove_groups(list(self.dirs))


def _remove_groups(folders: list[str], attempts: int = 50) -> None:
    """rmdir cgroups, waiting briefly for exiting tasks to leave; ones still busy are retried by a later run."""
    for folder in folders:
        for attempt in range(attempts):
            try:
                os.rmdir(folder)
                break
            except FileNotFoundError:
                break
            except OSError:
                if attempt == attempts - 1:
                    _LEFTOVER_GROUPS.append(folder)
                else:
                    time.sleep(0.002)


def _pid_namespace(pid: int) -> str:
    """The identity of a process's PID namespace ("pid:[4026532...]"); "" if unreadable."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


def _is_member(pid: int, key: tuple[str, object]) -> bool:
    """True when the process belongs to the sandbox by the watchdog's rule (namespace, uid or session)."""
    kind, value = key
    try:
        if kind == "ns":
            return _pid_namespace(pid) == value != ""
        if kind == "uid":
            return os.stat(f"/proc/{pid}").st_uid == value
        return os.getsid(pid) == value
    except OSError:
        return False


def _pss_bytes(pid: int) -> int:
    """A process's proportional set size (shared pages split between their users); 0 if gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _used_bytes(folder: str) -> int:
    """Bytes in use on the file system holding `folder` (a tmpfs); 0 if unreadable."""
    try:
        stats = os.statvfs(folder)
    except OSError:
        return 0
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


def concurrent_runs_affordable(memory_mb: int, wanted: int, share: float = 0.5) -> int:
    """How many sandboxes of `memory_mb` fit at once in `share` of the memory available now (1 to `wanted`)."""
    return max(1, min(wanted, int(available_memory_mb() * share) // memory_mb))


def available_memory_mb() -> int:
    """MemAvailable from /proc/meminfo (free memory plus what the kernel can reclaim), in MB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20

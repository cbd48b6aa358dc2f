"""The sandbox's throw-away uid, and the processes that run as it: counted, killed, reaped.

As root, each run gets a uid that no account owns and no other process uses (`pick_sandbox_uid`),
so RLIMIT_NPROC counts exactly the sandbox's processes and, after the run, every process of that
uid can be killed, even ones that left the process group (where no PID namespace does it).
"""

from __future__ import annotations

import functools
import os
import pwd
import secrets
import signal
import time

NOBODY_UID = 65534


@functools.lru_cache(maxsize=None)
def _mapped_id_ranges(kind: str) -> tuple[tuple[int, int], ...]:
    """(first, end) ranges of ids usable in this user namespace, from /proc/self/{uid,gid}_map."""
    try:
        with open(f"/proc/self/{kind}_map") as f:
            rows = [line.split() for line in f]
        return tuple((int(r[0]), int(r[0]) + int(r[2])) for r in rows if len(r) == 3)
    except OSError:
        return ((0, 2**32 - 1),)


def pick_sandbox_uid() -> tuple[int, bool]:
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


def pids() -> list[int]:
    """All process ids visible in /proc."""
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def proc_owner(pid: int) -> tuple[int | None, bool, int]:
    """(real uid, alive, threads) of a process from /proc/<pid>/status; (None, False, 0) if gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            fields = dict(line.split(b":", 1) for line in f if b":" in line)
        return (int(fields[b"Uid"].split()[0]), fields[b"State"].split()[0] not in (b"Z", b"X"),
                int(fields[b"Threads"]))
    except (OSError, KeyError, ValueError, IndexError):
        return None, False, 0


def count_tasks_of_uid(uid: int) -> int:
    """How many tasks (threads included) this uid runs: what RLIMIT_NPROC counts."""
    return sum(threads for pid in pids() for owner, _, threads in [proc_owner(pid)] if owner == uid)


def kill_all_of_uid(uid: int, program_pid: int) -> None:
    """SIGKILL every live process whose real uid is `uid` until none is left, and reap those that are ours.

    Ours: orphans of the sandbox are reparented to the caller when it is PID 1 (some containers)
    or a subreaper; without the reaping each would stay a zombie. The program itself is left to
    its Popen, which reads its exit status."""
    seen: set[int] = set()
    for _ in range(50):
        members = [(pid, alive) for pid in pids() for owner, alive, _ in [proc_owner(pid)] if owner == uid]
        seen.update(pid for pid, _ in members)
        victims = [pid for pid, alive in members if alive]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if not victims:
            break
        time.sleep(0.001)
    for pid in seen - {program_pid}:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass

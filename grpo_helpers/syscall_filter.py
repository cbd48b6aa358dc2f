"""A seccomp filter for sandboxed programs: the system calls a pi program never needs fail with EPERM.

A classic-BPF program (the kernel's SECCOMP_MODE_FILTER), built here for x86_64 and aarch64 and
installed by `install` after `no_new_privs`, between fork and exec. It checks the architecture
field first: a call made through another ABI (32-bit `int 0x80`, x32) is refused as a whole,
because its numbers mean other calls. What is denied, and why a pi program loses nothing:

* mounting and changing root (mount, the new mount API, pivot_root, chroot): the sandbox's file
  system view is set up before the filter and must stay as it is;
* entering or making namespaces (unshare, setns, clone with a CLONE_NEW* flag; clone3 answers
  ENOSYS, so the C library falls back to clone, whose flags the filter can read): user namespaces
  would hand the program a fresh set of capabilities;
* reading or writing other processes (ptrace, process_vm_readv/writev), kernel keyrings (keyctl,
  add_key, request_key), BPF, perf events, userfaultfd and io_uring: large attack surface, no use;
* memfd_create and memfd_secret: anonymous files whose pages RLIMIT_AS does not count (the cgroup
  does; this keeps the fallback without one bounded too), and Python's own code never needs them;
* machine administration (kexec, kernel modules, swap, reboot, acct, quotactl, syslog,
  open_by_handle_at and name_to_handle_at, which walk around the mount view).

numpy and mpmath import and run under it (tested with site_packages=True).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import struct

# name: (x86_64 number, aarch64 number), from the kernel's unistd headers.
DENIED_SYSCALLS: dict[str, tuple[int, int]] = {
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431),
    "fsmount": (432, 432), "fspick": (433, 433), "mount_setattr": (442, 442),
    "unshare": (272, 97), "setns": (308, 268),
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "memfd_create": (319, 279), "memfd_secret": (447, 447),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294), "init_module": (175, 105),
    "finit_module": (313, 273), "delete_module": (176, 106), "swapon": (167, 224), "swapoff": (168, 225),
    "reboot": (169, 142), "acct": (163, 89), "quotactl": (179, 60), "syslog": (103, 116),
    "open_by_handle_at": (304, 265), "name_to_handle_at": (303, 264),
}
CLONE_SYSCALL = (56, 220)
CLONE3_SYSCALL = (435, 435)
# machine -> (AUDIT_ARCH_* value, column in the tables above)
ARCHITECTURES = {"x86_64": (0xC000003E, 0), "aarch64": (0xC00000B7, 1)}
CLONE_NEW_FLAGS = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_X32_SYSCALL_BIT = 0x40000000

_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF opcodes
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_NR, _ARCH, _ARG0_LOW = 0, 4, 16  # offsets in struct seccomp_data (little-endian arguments)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _assemble(program: list[tuple | str]) -> bytes:
    """Classic BPF from (opcode, k, jump-if-true, jump-if-false) rows whose jumps name labels (str rows)."""
    where, index = {}, 0
    for row in program:
        if isinstance(row, str):
            where[row] = index
        else:
            index += 1
    code, index = b"", 0
    for row in program:
        if isinstance(row, str):
            continue
        opcode, k, if_true, if_false = row
        index += 1
        jumps = [0 if label is None else where[label] - index for label in (if_true, if_false)]
        code += struct.pack("=HBBI", opcode, jumps[0], jumps[1], k)
    return code


def filter_program(machine: str) -> bytes | None:
    """The filter for a machine name (os.uname().machine) as raw BPF; None where we have no table."""
    if machine not in ARCHITECTURES:
        return None
    audit_arch, column = ARCHITECTURES[machine]
    program: list[tuple | str] = [(_LD_W_ABS, _ARCH, None, None), (_JEQ, audit_arch, None, "deny"),
                                  (_LD_W_ABS, _NR, None, None)]
    if machine == "x86_64":
        program.append((_JGE, _X32_SYSCALL_BIT, "deny", None))
    program += [(_JEQ, nr, "deny", None) for nr in sorted({row[column] for row in DENIED_SYSCALLS.values()})]
    program += [(_JEQ, CLONE3_SYSCALL[column], "enosys", None), (_JEQ, CLONE_SYSCALL[column], None, "allow"),
                (_LD_W_ABS, _ARG0_LOW, None, None), (_JSET, CLONE_NEW_FLAGS, "deny", None),
                "allow", (_RET, _RET_ALLOW, None, None),
                "deny", (_RET, _RET_ERRNO | errno.EPERM, None, None),
                "enosys", (_RET, _RET_ERRNO | errno.ENOSYS, None, None)]
    return _assemble(program)


@functools.lru_cache(maxsize=None)
def _installable(machine: str) -> tuple[_SockFprog, ctypes.Array] | None:
    """The struct sock_fprog for this machine and the buffer it points to (kept alive here)."""
    code = filter_program(machine)
    if code is None:
        return None
    buffer = ctypes.create_string_buffer(code, len(code))
    return _SockFprog(len(code) // 8, ctypes.addressof(buffer)), buffer


def filter_address() -> int | None:
    """Address of this machine's struct sock_fprog, made in the parent before fork; None if unsupported."""
    built = _installable(os.uname().machine)
    return None if built is None else ctypes.addressof(built[0])


def install(libc: ctypes.CDLL | None, address: int | None) -> bool:
    """prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, address): True when the kernel took it (needs no_new_privs)."""
    if libc is None or address is None:
        return False
    zero = ctypes.c_ulong(0)
    return libc.prctl(_PR_SET_SECCOMP, ctypes.c_ulong(_SECCOMP_MODE_FILTER), ctypes.c_ulong(address), zero, zero) == 0

"""The seccomp filter of a confined sandbox: system calls a training process never needs fail with EPERM.

Applied by the launcher (``harness.trusted.confine``) in the sandbox's process 1, after the namespaces and Landlock,
just before it runs the sandbox's command; every process the sandbox starts inherits it. It narrows what code past
the static policy can ask of the kernel:

- reaching other processes' memory or the kernel's keyrings: ``ptrace``, ``process_vm_readv``/``writev``, ``kcmp``,
  ``keyctl``, ``add_key``, ``request_key`` (a user's keyring can hold credentials);
- changing what files mean: ``mount`` and the new mount API, ``umount2``, ``pivot_root``, ``chroot``,
  ``open_by_handle_at``, ``name_to_handle_at``;
- leaving its namespaces or making new ones: ``setns``, ``unshare`` and ``clone`` with a namespace flag
  (``clone3``, whose flags a filter cannot read, answers ENOSYS, and the C library then falls back to ``clone``);
- kernel interfaces that are common exploit primitives: ``bpf``, ``perf_event_open``, ``userfaultfd``, io_uring;
- the machine: modules, kexec, reboot, swap, accounting, quotas, the kernel log;
- sockets other than Unix-domain ones, so that a sandbox has no network even where it shares the host's network
  namespace;
- System V IPC and POSIX message queues (shared memory, semaphores, message queues): each sandbox has an IPC
  namespace of its own, but the processes of one sandbox share it, and Landlock does not reach these objects.

The filter is a classic BPF program built here (a dependency-free equivalent of what libseccomp would compile) for
x86-64 and arm64; on any other architecture ``apply`` raises and the launcher reports the sandbox unconfined.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

# Syscall numbers: x86-64 (asm/unistd_64.h) and the generic table arm64 uses (asm-generic/unistd.h).
_NUMBERS = {
    "x86_64": {
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "keyctl": 250,
        "add_key": 248, "request_key": 249, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
        "open_by_handle_at": 304, "name_to_handle_at": 303, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "setns": 308, "bpf": 321,
        "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "init_module": 175, "finit_module": 313, "delete_module": 176, "kexec_load": 246,
        "kexec_file_load": 320, "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163, "quotactl": 179,
        "syslog": 103, "unshare": 272, "clone": 56, "clone3": 435, "socket": 41,
        "shmget": 29, "shmat": 30, "shmctl": 31, "shmdt": 67, "semget": 64, "semop": 65, "semctl": 66,
        "semtimedop": 220, "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "mq_open": 240, "mq_unlink": 241,
        "mq_timedsend": 242, "mq_timedreceive": 243, "mq_notify": 244, "mq_getsetattr": 245,
        "socketpair": 53, "flock": 73, "fcntl": 72, "inotify_init": 253, "inotify_init1": 294, "fanotify_init": 300,
        "memfd_create": 319,
    },
    "aarch64": {
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272, "keyctl": 219,
        "add_key": 217, "request_key": 218, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51,
        "open_by_handle_at": 265, "name_to_handle_at": 264, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "setns": 268, "bpf": 280,
        "perf_event_open": 241, "userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "init_module": 105, "finit_module": 273, "delete_module": 106, "kexec_load": 104,
        "kexec_file_load": 294, "reboot": 142, "swapon": 224, "swapoff": 225, "acct": 89, "quotactl": 60,
        "syslog": 116, "unshare": 97, "clone": 220, "clone3": 435, "socket": 198,
        "shmget": 194, "shmat": 196, "shmctl": 195, "shmdt": 197, "semget": 190, "semop": 193, "semctl": 191,
        "semtimedop": 192, "msgget": 186, "msgsnd": 189, "msgrcv": 188, "msgctl": 187, "mq_open": 180,
        "mq_unlink": 181, "mq_timedsend": 182, "mq_timedreceive": 183, "mq_notify": 184, "mq_getsetattr": 185,
        "socketpair": 199, "flock": 32, "fcntl": 25, "inotify_init1": 26, "fanotify_init": 262,  # no inotify_init
        "memfd_create": 279,
    },
}
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_SYSCALL_BIT = 0x40000000  # x86-64's x32 ABI: another numbering, refused whole

# Refused outright (the special cases follow).
DENIED = ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "keyctl", "add_key", "request_key", "mount",
          "umount2", "pivot_root", "chroot", "open_by_handle_at", "name_to_handle_at", "open_tree", "move_mount",
          "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "setns", "bpf", "perf_event_open",
          "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "init_module", "finit_module",
          "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "quotactl",
          "syslog",
          # System V IPC and POSIX message queues: Landlock's file rules do not cover them, so the two parts of the
          # forward pass, which share one IPC namespace, could pass each other what they saw through them.
          "shmget", "shmat", "shmctl", "shmdt", "semget", "semop", "semctl", "semtimedop", "msgget", "msgsnd",
          "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify",
          "mq_getsetattr")
# Namespace flags of clone and unshare: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME.
NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80
AF_UNIX = 1

# Classic BPF and seccomp constants (linux/filter.h, linux/seccomp.h).
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_ERRNO, _RET_KILL_PROCESS = 0x7FFF0000, 0x00050000, 0x80000000
_OFFSET_NR, _OFFSET_ARCH, _OFFSET_ARG0 = 0, 4, 16  # struct seccomp_data; arg0's low word (little-endian)
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2


def _stmt(code: int, k: int) -> tuple:
    return code, 0, 0, k


def _jump(code: int, k: int, jt: int, jf: int) -> tuple:
    return code, jt, jf, k


def supported_machine(machine: str | None = None) -> bool:
    return (machine or platform.machine()) in _NUMBERS


def numbers(machine: str | None = None) -> dict[str, int]:
    """The syscall numbers the filter names, for ``machine`` (this one by default)."""
    return dict(_NUMBERS[machine or platform.machine()])


def program(machine: str | None = None) -> list[tuple]:
    """The filter for ``machine`` (``platform.machine()`` by default) as (code, jt, jf, k) instructions."""
    machine = machine or platform.machine()
    if machine not in _NUMBERS:
        raise OSError(errno.ENOSYS, f"no seccomp filter for the {machine} architecture")
    nr = _NUMBERS[machine]
    eperm, enosys = _RET_ERRNO | errno.EPERM, _RET_ERRNO | errno.ENOSYS
    prog = [_stmt(_LD_W_ABS, _OFFSET_ARCH),
            _jump(_JEQ_K, _AUDIT_ARCH[machine], 1, 0),
            _stmt(_RET_K, _RET_KILL_PROCESS),  # a syscall of another ABI, whose numbers mean other calls
            _stmt(_LD_W_ABS, _OFFSET_NR)]
    if machine == "x86_64":
        prog += [_jump(_JGE_K, _X32_SYSCALL_BIT, 0, 1), _stmt(_RET_K, eperm)]
    for name in DENIED:
        prog += [_jump(_JEQ_K, nr[name], 0, 1), _stmt(_RET_K, eperm)]
    prog += [_jump(_JEQ_K, nr["clone3"], 0, 1), _stmt(_RET_K, enosys)]
    # clone and unshare: refused with a namespace flag in their first argument (the flags on both architectures).
    for name in ("clone", "unshare"):
        prog += [_jump(_JEQ_K, nr[name], 0, 4),
                 _stmt(_LD_W_ABS, _OFFSET_ARG0),
                 _jump(_JSET_K, NAMESPACE_FLAGS, 0, 1),
                 _stmt(_RET_K, eperm),
                 _stmt(_RET_K, _RET_ALLOW)]
    # socket: Unix-domain only.
    prog += [_jump(_JEQ_K, nr["socket"], 0, 3),
             _stmt(_LD_W_ABS, _OFFSET_ARG0),
             _jump(_JEQ_K, AF_UNIX, 1, 0),
             _stmt(_RET_K, _RET_ERRNO | errno.EAFNOSUPPORT)]
    prog += [_stmt(_RET_K, _RET_ALLOW)]
    return prog


# What each part of the forward pass on the CPU refuses besides (``apart_program``): every call that would let it
# meet the other part on an object both can reach without writing it. A Unix socket bound in its own folder can be
# reached through its path (Landlock checks neither ``connect`` nor ``sendto`` before its RESOLVE_UNIX right), and a
# socketpair's datagram socket can be re-bound there; a lock on, or a watch of, a file both may read carries bits.
APART_DENIED = ("socket", "socketpair", "flock", "inotify_init", "inotify_init1", "fanotify_init")
# fcntl commands refused there: record locks (F_GETLK, F_SETLK, F_SETLKW and their open-file forms), leases and
# directory notification.
FCNTL_DENIED = (5, 6, 7, 36, 37, 38, 1024, 1026)
_OFFSET_ARG1 = 24  # struct seccomp_data: args[1]'s low word


def apart_program(machine: str | None = None) -> list[tuple]:
    """A filter that each part of the forward pass on the CPU stacks on the sandbox's: ``APART_DENIED`` and the
    ``FCNTL_DENIED`` commands answer EPERM. A forward pass on the CPU needs none of them."""
    return _refusing(APART_DENIED, FCNTL_DENIED, machine)


# What every sandbox on the CPU refuses besides (``cpu_program``), none of which training on the CPU needs:
# - any socket. The sandbox's own filter allows Unix-domain sockets, which a GPU driver may need; but Landlock does not
#   check ``connect`` to a socket's path (before its RESOLVE_UNIX right), so through one a sandbox could reach any
#   service of the host that listens on a path (a container engine's, a session bus, another sandbox's). A datagram
#   socket pair can be pointed at such a path too.
# - ``memfd_create``: a memory file written and never mapped holds the host's memory outside the sandbox's resident
#   memory, which the cap counts (2.5 GiB past a 1.5 GiB cap, measured).
CPU_DENIED = ("socket", "socketpair", "memfd_create")


def cpu_program(machine: str | None = None) -> list[tuple]:
    """A filter stacked on the sandbox's on the CPU: ``CPU_DENIED`` answer EPERM."""
    return _refusing(CPU_DENIED, (), machine)


def _refusing(calls: tuple[str, ...], fcntl_commands: tuple[int, ...], machine: str | None) -> list[tuple]:
    """A filter under which ``calls`` and the ``fcntl`` commands ``fcntl_commands`` answer EPERM; all else passes."""
    machine = machine or platform.machine()
    if machine not in _NUMBERS:
        raise OSError(errno.ENOSYS, f"no seccomp filter for the {machine} architecture")
    nr, eperm = _NUMBERS[machine], _RET_ERRNO | errno.EPERM
    prog = [_stmt(_LD_W_ABS, _OFFSET_ARCH),
            _jump(_JEQ_K, _AUDIT_ARCH[machine], 1, 0),
            _stmt(_RET_K, _RET_KILL_PROCESS),
            _stmt(_LD_W_ABS, _OFFSET_NR)]
    for name in calls:
        if name in nr:  # arm64 has no inotify_init
            prog += [_jump(_JEQ_K, nr[name], 0, 1), _stmt(_RET_K, eperm)]
    if fcntl_commands:
        prog += [_jump(_JEQ_K, nr["fcntl"], 0, 1 + 2 * len(fcntl_commands)), _stmt(_LD_W_ABS, _OFFSET_ARG1)]
        for command in fcntl_commands:
            prog += [_jump(_JEQ_K, command, 0, 1), _stmt(_RET_K, eperm)]
    return prog + [_stmt(_RET_K, _RET_ALLOW)]


def apply(prog: list[tuple] | None = None) -> None:
    """Install the filter (``program()`` unless another is given) on this thread and what it starts; filters
    stack, the strictest answer wins. Raises OSError when the kernel refuses."""
    prog = prog or program()
    raw = b"".join(struct.pack("=HBBI", *instruction) for instruction in prog)
    buffer = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog), ctypes.cast(buffer, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    for args in ((PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
                 (PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0)):
        if libc.prctl(*[ctypes.c_ulong(a) for a in args]) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"seccomp refused: {errno.errorcode.get(code, code)}")

"""A private, read-only root for the sandbox, built from the same allow-list as its Landlock rules.

Landlock confines a sandbox's files where the kernel has it and the device works under it. On one GPU machine
measured, the CUDA driver failed under every Landlock ruleset (``results/bench/NOTES.md``), and a sandbox there could
read every file of the user's (the scored split, secrets) and write the package's own source. This layer does not
depend on Landlock: in a mount namespace of its own, the sandbox's first process mounts an empty file system as the
new root, binds into it only the read roots (read-only) and the write roots (writable) of ``confine.file_rules``,
mounts a fresh ``/proc`` that shows the sandbox's own processes only, and makes it the root (``pivot_root``). Nothing
else of the host is reachable: not by path, not through ``/proc/<pid>/root`` of a host process. Because the sandbox's
uid may be the host's root, every bind is also ``nosuid`` and ``nodev`` but those of the device files named (which
are read-only binds: a write reaches the device, a ``chmod`` does not reach the host's file), and of ``/proc`` and
``/sys`` what belongs to the host rather than to the sandbox is read-only, masked or covered (``PROC_READ_ONLY``,
``PROC_MASKED``, ``SYS_COVERED``).

The process then moves into a further user and mount namespace. Its mounts, copied there from a more privileged
namespace, are locked by the kernel: none can be unmounted to uncover what is beneath, nor made writable. The uid
is mapped to itself at each step, so files keep their owners.

Every step needs only what an unprivileged user namespace grants (Linux 5.12+, for ``mount_setattr``). Where a
step fails (a container whose ``/proc`` is partly masked refuses a fresh one), the layer does not apply, and the
ledger records why (``confine.device_layers``).
"""

from __future__ import annotations

import ctypes
import os
import platform
import stat

CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 4096, 16384, 1 << 18
MNT_DETACH = 2
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
SYS_MOUNT_SETATTR = 442  # the same number on x86-64 and arm64
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "arm64": 41}
KEYCTL_SYSCALL = {"x86_64": 250, "aarch64": 219, "arm64": 219}
KEYCTL_JOIN_SESSION_KEYRING = 1  # with no name: a new, anonymous session keyring
OLD_ROOT = ".old-root"  # where pivot_root puts the host's root, detached at once
# The empty root holds folders and mount points only.
ROOT_TMPFS = "mode=0755,size=4m,nr_inodes=65536"
# Of the fresh /proc, what a process whose uid is the host's root could write to change the host: the sysctls (a
# core pattern or a modprobe path makes the kernel run a program as root), the magic SysRq key, IRQ affinities, the
# bus, file-system, ACPI, sound, SCSI and driver knobs (the folders container runtimes mask or make read-only). Bound
# read-only over themselves; the rest of /proc stays writable for the process's own entries (its id maps are
# written there).
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs", "acpi", "asound", "scsi", "driver", "latency_stats")
# What of /proc a uid that is the host's root could read of the host: physical page flags and counts, kernel
# memory maps, timers, the key list (which names every keyring readable by that uid). Masked by the null device.
PROC_MASKED = ("kpageflags", "kpagecount", "kpagecgroup", "slabinfo", "timer_list", "vmallocinfo", "keys",
               "sched_debug", "kcore")
# Mounts beneath /sys that carry the host's state rather than the hardware's: pinned BPF maps and programs, the
# debug and tracing file systems, the LSM's. Covered by an empty, read-only file system.
SYS_COVERED = ("/sys/fs/bpf", "/sys/kernel/debug", "/sys/kernel/tracing", "/sys/kernel/security")
# /dev/shm, where a sandbox may write it (on CUDA, where the driver uses it): a file system of the sandbox's own,
# not the host's, which every process shares and which outlives the sandbox. Its pages count against no cap: a size.
PRIVATE_SHM = ("/dev/shm", "mode=1777,size=1g")
# System links that name a folder by another path (/var/run is /run): kept as links, granting nothing by themselves.
SYSTEM_LINKS = ("/var/run", "/var/lock")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _check(rc: int, step: str) -> None:
    if rc != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"private root: {step}: {os.strerror(errno)}")


def _mount(libc, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    rc = libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(), ctypes.c_ulong(flags),
                    data and data.encode())
    _check(rc, f"mount {source or fstype} on {target}")


def _restrict(libc, path: str, attributes: int, recursive: bool = True) -> None:
    """Set ``attributes`` (``MOUNT_ATTR_*``) on the mount at ``path`` (and every mount beneath it)."""
    attr = _MountAttr(attributes, 0, 0, 0)
    rc = libc.syscall(SYS_MOUNT_SETATTR, ctypes.c_int(AT_FDCWD), path.encode(),
                      ctypes.c_uint(AT_RECURSIVE if recursive else 0), ctypes.byref(attr),
                      ctypes.c_size_t(ctypes.sizeof(attr)))
    _check(rc, f"restrict {path}")


def map_ids(uid: int, gid: int) -> None:
    """Map this process's ids to themselves in the user namespace it has just entered."""
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")


def plan(read_roots, write_roots) -> list[tuple[str, bool]]:
    """(path, writable) of each bind, outermost first. As under Landlock, a path's rights are those of every root
    it lies beneath: a root inside a writable one is not bound again, nor a read root inside another; a write root
    inside a read root is bound writable over it. A device file is always bound by itself: every other bind is
    ``nodev`` (a read-only mount does not stop writes to a device, so a folder such as ``/dev`` would otherwise give
    every device in it). Paths are resolved (a root that is a symbolic link is bound where it points; ``enter``
    recreates the link); ``/proc`` is never bound (the sandbox gets a fresh one); a path that does not exist here is
    left out."""
    rights: dict[str, bool] = {}
    for path, writable in [(p, False) for p in read_roots] + [(p, True) for p in write_roots]:
        if not os.path.exists(path):
            continue
        real = os.path.realpath(path)
        if real == "/" or real == "/proc" or real.startswith("/proc/"):
            continue
        rights[real] = rights.get(real, False) or writable
    binds: list[tuple[str, bool]] = []
    for real, writable in sorted(rights.items(), key=lambda item: (item[0].count("/"), item[0])):
        outer = [w for bound, w in binds if real.startswith(bound.rstrip("/") + "/")]
        if outer and (outer[-1] or not writable) and not _is_device(real):
            continue
        binds.append((real, writable))
    return binds


def enter(read_roots, write_roots, mountpoint: str) -> None:
    """Make this process's root a private one holding only the read roots (read-only) and the write roots
    (writable), with a fresh ``/proc``, in a new mount namespace; then lock it (see the module's note).
    ``mountpoint``: an empty folder for the new root while it is built (the host never sees it mounted). This
    process must be the first of a new PID namespace, with the capabilities of its user namespace. Raises OSError
    naming the step that failed."""
    machine = platform.machine()
    if machine not in SYS_PIVOT_ROOT or machine not in KEYCTL_SYSCALL:
        raise OSError(0, f"private root: no system call numbers known for {machine}")
    libc = _libc()
    uid, gid, cwd = os.getuid(), os.getgid(), os.getcwd()
    # Where the binds show it: they bind resolved paths, so a copy of the root being built (below) is found there.
    mountpoint = os.path.realpath(mountpoint)
    _check(libc.unshare(ctypes.c_int(CLONE_NEWNS)), "unshare a mount namespace")
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here reaches the host's mounts
    _mount(libc, "tmpfs", mountpoint, "tmpfs", MS_NOSUID | MS_NODEV, ROOT_TMPFS)
    for real, writable in plan(read_roots, write_roots):
        target = mountpoint + real
        if not os.path.lexists(target):  # not already inside a bind: make its mount point in the empty root
            if os.path.isdir(real):
                os.makedirs(target)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                open(target, "a").close()
        if real == PRIVATE_SHM[0] and writable:
            _mount(libc, "tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, PRIVATE_SHM[1])
            continue
        _mount(libc, real, target, None, MS_BIND | MS_REC)
        # A device file is bound read-only even when it is written: writes still reach the device, while its owner
        # and mode (the host's) cannot be changed.
        device = _is_device(real)
        _restrict(libc, target, (MOUNT_ATTR_RDONLY if device or not writable else 0) | MOUNT_ATTR_NOSUID
                  | (0 if device else MOUNT_ATTR_NODEV))
    for covered in SYS_COVERED:
        target = mountpoint + covered
        if os.path.ismount(target):
            _mount(libc, "tmpfs", target, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k")
    # A root that holds the mount point (the launcher makes it in the sandbox's own temporary folder) copied the
    # root being built into itself: that copy would stay writable after the root is made read-only. Detached.
    while os.path.ismount(mountpoint + mountpoint):
        _check(libc.umount2((mountpoint + mountpoint).encode(), ctypes.c_int(MNT_DETACH)), "detach a copy of the root")
    links = [link for path in [*read_roots, *write_roots, *SYSTEM_LINKS] for link in _links_on_the_way(str(path))]
    for link, points_to in links:
        target = mountpoint + link
        if not os.path.lexists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(points_to, target)
    os.makedirs(mountpoint + "/proc", exist_ok=True)
    _mount(libc, "proc", mountpoint + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in PROC_READ_ONLY:
        target = f"{mountpoint}/proc/{name}"
        if os.path.exists(target):
            _mount(libc, target, target, None, MS_BIND | MS_REC)
            _restrict(libc, target, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)
    for name in PROC_MASKED:
        target = f"{mountpoint}/proc/{name}"
        if os.path.exists(target):
            _mount(libc, "/dev/null", target, None, MS_BIND)
            _restrict(libc, target, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, recursive=False)
    os.chdir(mountpoint)
    os.mkdir(OLD_ROOT)
    _check(libc.syscall(SYS_PIVOT_ROOT[machine], b".", OLD_ROOT.encode()), "pivot_root")
    os.chdir("/")
    _check(libc.umount2(f"/{OLD_ROOT}".encode(), ctypes.c_int(MNT_DETACH)), "detach the host's root")
    os.rmdir(f"/{OLD_ROOT}")
    _restrict(libc, "/", MOUNT_ATTR_RDONLY, recursive=False)  # the new root's own folder: nothing is created there
    # Into a less privileged user namespace: the kernel locks every mount copied there.
    _check(libc.unshare(ctypes.c_int(CLONE_NEWUSER | CLONE_NEWNS)), "unshare the locking namespaces")
    map_ids(uid, gid)
    # A session keyring of its own: the one inherited is the evaluator's, with every key the evaluator holds.
    if libc.syscall(ctypes.c_long(KEYCTL_SYSCALL[machine]), ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING), None) < 0:
        _check(-1, "join a session keyring of its own")
    try:
        os.chdir(cwd)
    except OSError:
        os.chdir("/")


def private_shared_memory() -> None:
    """Give this process a ``/dev/shm`` of its own (``PRIVATE_SHM``) in a new mount namespace: for a sandbox under
    Landlock whose file rules let it write ``/dev/shm`` (on CUDA, where the driver uses it) and that has no private
    root, which holds one anyway. The host's, which every process of the host shares, is then out of its reach:
    Landlock refuses a sandbox any change of its mounts, unmounting this one included. Raises OSError naming the step
    that failed."""
    libc = _libc()
    _check(libc.unshare(ctypes.c_int(CLONE_NEWNS)), "unshare a mount namespace")
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here reaches the host's mounts
    _mount(libc, "tmpfs", PRIVATE_SHM[0], "tmpfs", MS_NOSUID | MS_NODEV, PRIVATE_SHM[1])


def _is_device(path: str) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


MAX_LINKS = 40  # as the kernel's own limit on the links one lookup follows


def _links_on_the_way(path: str) -> list[tuple[str, str]]:
    """Every symbolic link that resolving ``path`` goes through, one hop at a time (a link to a link included), as
    (link, what it points to): the private root binds where the path ends, and recreates these links so that the
    path as given still resolves there."""
    out, resolved = [], "/"
    pending = [part for part in path.split("/") if part not in ("", ".")]
    while pending and len(out) < MAX_LINKS:
        part = pending.pop(0)
        if part == "..":
            resolved = os.path.dirname(resolved)
            continue
        candidate = os.path.join(resolved, part)
        if not os.path.islink(candidate):
            resolved = candidate
            continue
        points_to = os.readlink(candidate)
        out.append((candidate, points_to))
        pending = [p for p in points_to.split("/") if p not in ("", ".")] + pending
        if points_to.startswith("/"):
            resolved = "/"
    return out

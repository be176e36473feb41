"""A private, read-only root for the sandbox, built from the same allow-list as its Landlock rules.

Landlock confines a sandbox's files where the kernel has it and the device works under it. On one GPU machine
measured, the CUDA driver failed under every Landlock ruleset (``results/bench/NOTES.md``), and a sandbox there could
read every file of the user's (the scored split, secrets) and write the package's own source. This layer does not
depend on Landlock: in a mount namespace of its own, the sandbox's first process mounts an empty file system as the
new root, binds into it only the read roots (read-only) and the write roots (writable) of ``confine.file_rules``,
mounts a fresh ``/proc`` that shows the sandbox's own processes only, and makes it the root (``pivot_root``). Nothing
else of the host is reachable: not by path, not through ``/proc/<pid>/root`` of a host process.

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

CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 4096, 16384, 1 << 18
MNT_DETACH = 2
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
MOUNT_ATTR_RDONLY = 0x1
SYS_MOUNT_SETATTR = 442  # the same number on x86-64 and arm64
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "arm64": 41}
OLD_ROOT = ".old-root"  # where pivot_root puts the host's root, detached at once


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


def _read_only(libc, path: str, recursive: bool) -> None:
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    rc = libc.syscall(SYS_MOUNT_SETATTR, ctypes.c_int(AT_FDCWD), path.encode(),
                      ctypes.c_uint(AT_RECURSIVE if recursive else 0), ctypes.byref(attr),
                      ctypes.c_size_t(ctypes.sizeof(attr)))
    _check(0 if rc == 0 else -1, f"read-only {path}")


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
    inside a read root is bound writable over it. Paths are resolved (a root that is a symbolic link is bound where
    it points; ``enter`` recreates the link); ``/proc`` is never bound (the sandbox gets a fresh one); a path that
    does not exist here is left out."""
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
        if outer and (outer[-1] or not writable):
            continue
        binds.append((real, writable))
    return binds


def enter(read_roots, write_roots, mountpoint: str) -> None:
    """Make this process's root a private one holding only the read roots (read-only) and the write roots
    (writable), with a fresh ``/proc``, in a new mount namespace; then lock it (see the module's note).
    ``mountpoint``: an empty folder for the new root while it is built (the host never sees it mounted). This
    process must be the first of a new PID namespace, with the capabilities of its user namespace. Raises OSError
    naming the step that failed."""
    libc = _libc()
    uid, gid, cwd = os.getuid(), os.getgid(), os.getcwd()
    _check(libc.unshare(ctypes.c_int(CLONE_NEWNS)), "unshare a mount namespace")
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here reaches the host's mounts
    _mount(libc, "tmpfs", mountpoint, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    links = []
    for real, writable in plan(read_roots, write_roots):
        target = mountpoint + real
        if not os.path.lexists(target):  # not already inside a bind: make its mount point in the empty root
            if os.path.isdir(real):
                os.makedirs(target)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                open(target, "a").close()
        _mount(libc, real, target, None, MS_BIND | MS_REC)
        if not writable:
            _read_only(libc, target, recursive=True)
    for path in [*read_roots, *write_roots]:
        links += _links_on_the_way(str(path))
    for link, points_to in links:
        target = mountpoint + link
        if not os.path.lexists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(points_to, target)
    os.makedirs(mountpoint + "/proc", exist_ok=True)
    _mount(libc, "proc", mountpoint + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir(mountpoint)
    os.mkdir(OLD_ROOT)
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(0, f"private root: no pivot_root number known for {platform.machine()}")
    _check(0 if libc.syscall(number, b".", OLD_ROOT.encode()) == 0 else -1, "pivot_root")
    os.chdir("/")
    _check(libc.umount2(f"/{OLD_ROOT}".encode(), ctypes.c_int(MNT_DETACH)), "detach the host's root")
    os.rmdir(f"/{OLD_ROOT}")
    _read_only(libc, "/", recursive=False)  # the new root's own folder: nothing can be created there
    # Into a less privileged user namespace: the kernel locks every mount copied there.
    _check(libc.unshare(ctypes.c_int(CLONE_NEWUSER | CLONE_NEWNS)), "unshare the locking namespaces")
    map_ids(uid, gid)
    try:
        os.chdir(cwd)
    except OSError:
        os.chdir("/")


def _links_on_the_way(path: str) -> list[tuple[str, str]]:
    """The symbolic links among ``path``'s folders and ``path`` itself, as (link, what it points to): the private
    root binds where they point, and recreates them so that the path as given still resolves."""
    out, prefix = [], ""
    for part in os.path.abspath(path).strip("/").split("/"):
        prefix += "/" + part
        if os.path.islink(prefix):
            out.append((prefix, os.readlink(prefix)))
            prefix = os.path.realpath(prefix)
    return out

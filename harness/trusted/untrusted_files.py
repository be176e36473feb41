"""Files a sandbox could have written, as the trusted side reads, sizes and removes them.

A program past the static policy may leave anything in the folders its sandbox could write: links to files of the
host, named pipes, folders it made unreadable or thousands deep. The trusted side sizes them while the sandbox runs
(the disk cap), reads them only after the sandbox's last process has ended (nothing changes them meanwhile), never
through a link and never blocking on a pipe, and removes the folders without ever changing or removing what a link
names.
"""

from __future__ import annotations

import contextlib
import multiprocessing.util
import os
import stat
import sys
import tempfile
from pathlib import Path

# Counted for every file and folder, even an empty one: each takes an inode and an entry, on a RAM-backed /tmp memory.
ENTRY_MIN_BYTES = 4096
MAX_DEPTH = 64  # folders a run folder may hold one inside another (the harness's caches go a few deep)
_LIST = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def read_untrusted(path: Path, limit: int, *, offset: int = 0, last: bool = False) -> bytes | None:
    """At most ``limit`` bytes of a file that a sandbox could have written, from ``offset`` or, with ``last``, its
    last ones; None when it is not a regular file. Opened without following a link and without blocking: a
    sandbox that replaced its log with a named pipe would otherwise hang this process past every limit."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        os.lseek(fd, max(0, info.st_size - limit) if last else offset, os.SEEK_SET)
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _beneath(root: Path, path: Path, last) -> bool:
    try:
        parts = Path(path).relative_to(root).parts
    except ValueError:
        return False
    here = Path(root)
    try:
        for i, part in enumerate(parts):
            here = here / part
            mode = os.lstat(here).st_mode
            if not (last(mode) if i == len(parts) - 1 else stat.S_ISDIR(mode)):
                return False
    except OSError:
        return False
    return bool(parts)


def regular_file_beneath(root: Path, path: Path) -> bool:
    """Whether ``path`` is a regular file reached from ``root`` through folders only: no link at any level below
    ``root`` (a program could have replaced a folder of its own with a link to one of the host's)."""
    return _beneath(root, path, stat.S_ISREG)


def folder_beneath(root: Path, path: Path) -> bool:
    """Whether ``path`` is a folder reached from ``root`` through folders only, itself not a link."""
    return _beneath(root, path, stat.S_ISDIR)


def files_bytes(folder: Path, pids: list[int], maps: bool = True) -> int | None:
    """Bytes of disk that the files and folders under ``folder`` take (their allocated blocks, and at least
    ``ENTRY_MIN_BYTES`` each), each counted once, and the unlinked files on the folder's file system that the
    processes ``pids`` still hold open or, where this process may read their mappings (``/proc/PID/map_files``:
    as root), map. A link is not followed: what it names outside the folder is not the sandbox's. Files of other
    file systems (a GPU driver's memory files) are not the folder's space. None when the tree cannot be counted: a
    folder that cannot be listed (a program made it unreadable) or nested deeper than ``MAX_DEPTH``; a program never
    needs either. The walk goes by descriptors, so no path grows past the system's limit. ``maps``: whether to read
    the processes' mappings too (a process with a GPU context maps thousands of regions: reading them is the
    costly part, and takes each process's memory-map lock)."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def add(st: os.stat_result, minimum: int = ENTRY_MIN_BYTES) -> None:
        nonlocal total
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += max(st.st_blocks * 512, minimum)

    def listing(fd: int) -> list[str]:
        """Counts the entries of the open folder ``fd``; the names of its folders."""
        folders = []
        with os.scandir(fd) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # removed meanwhile
                    continue
                add(st)
                if stat.S_ISDIR(st.st_mode):
                    folders.append(entry.name)
        return folders

    try:
        top = os.open(folder, _LIST)
    except FileNotFoundError:
        return 0
    except OSError:
        return None
    device = os.fstat(top).st_dev
    stack: list[tuple[int, list[str]]] = [(top, [])]  # the open folders from the top, each with its folders to walk
    try:
        stack[-1] = (top, listing(top))
        while stack:
            fd, names = stack[-1]
            if not names:
                os.close(stack.pop()[0])
                continue
            try:
                below = os.open(names.pop(), _LIST, dir_fd=fd)
            except (FileNotFoundError, NotADirectoryError):  # removed or replaced meanwhile
                continue
            stack.append((below, []))
            if len(stack) > MAX_DEPTH + 1:
                return None
            stack[-1] = (below, listing(below))
    except OSError:
        return None
    finally:
        for fd, _ in stack:
            os.close(fd)
    for pid in pids:
        unlinked = []
        try:
            unlinked += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
            if maps:
                with open(f"/proc/{pid}/maps", "rb") as f:  # a mapped file's name may be any bytes
                    unlinked += [f"/proc/{pid}/map_files/{line.split(maxsplit=1)[0].decode()}" for line in f
                                 if line.endswith(b" (deleted)\n")]
        except (OSError, ValueError):  # it ended, or its maps are not this process's to read
            pass
        for path in unlinked:
            try:
                st = os.stat(path)
            except OSError:
                continue
            if st.st_nlink == 0 and stat.S_ISREG(st.st_mode) and st.st_dev == device:
                add(st, 0)
    return total


def _enter(name: str | Path, dir_fd: int | None = None) -> int:
    """The folder ``name`` opened for listing, never through a link, made its owner's to list and empty first (a
    program may have left it unreadable or read-only). Its mode is changed through a descriptor of the folder itself
    (``/proc/self/fd``), never through a path that a link could redirect."""
    handle = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        with contextlib.suppress(OSError):
            os.chmod(f"/proc/self/fd/{handle}", 0o700)
        try:
            return os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:  # no /proc: the folder by its name, still never through a link
            return os.open(name, _LIST, dir_fd=dir_fd)
    finally:
        os.close(handle)


def _empty_but_folders(fd: int) -> list[str]:
    """Unlink every entry of the open folder ``fd`` that is not a folder (a link itself, never what it names); the
    names of the folders left in it."""
    folders = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                folders.append(entry.name)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.name, dir_fd=fd)
    return folders


def remove_tree(path: Path) -> bool:
    """Remove a folder that a sandbox could write, once every process of the sandbox has ended; True when it is
    gone. Never raises. Never follows a link, at any depth, and changes modes only through descriptors: Python's
    own removal (``shutil.rmtree``, ``TemporaryDirectory``) made the file a link named writable by its owner when
    the link's folder was read-only (CVE-2023-6597, fixed in 3.11.8 and 3.12.2), and recursed once per level, so a
    tree a few thousand folders deep raised RecursionError. Here each folder is listed once, and only the one being
    emptied is held open: going up, ``..`` is opened from the folder below and must be the folder entered."""
    try:
        fd = _enter(path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)  # not a folder (or already gone)
        return not os.path.lexists(path)
    # Per level, from the top: (its parent's identity, its name there, the folders in it still to remove).
    levels: list[tuple[tuple[int, int] | None, str, list[str]]] = []
    try:
        levels.append((None, "", _empty_but_folders(fd)))
        while True:
            if levels[-1][2]:
                child = levels[-1][2].pop()
                st = os.fstat(fd)
                below = _enter(child, fd)
                os.close(fd)
                fd = below
                levels.append(((st.st_dev, st.st_ino), child, _empty_but_folders(fd)))
                continue
            if len(levels) == 1:
                break
            parent = os.open("..", _LIST, dir_fd=fd)
            os.close(fd)
            fd = parent
            identity, name, _ = levels.pop()
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != identity:
                return False
            os.rmdir(name, dir_fd=fd)  # fails when an entry could not be unlinked: the walk stops there
    except OSError:
        return False
    finally:
        os.close(fd)
    try:
        os.rmdir(path)
    except OSError:
        return False
    return True


def _owner_tag() -> str:
    """``<boot>.<PID namespace>-<pid>-`` of this process: who made a run folder, on which boot of which machine, so
    that a later evaluator knows when the folder outlived its maker."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip().replace("-", "")[:12]
        space = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        boot, space = "", 0
    return f"{boot}.{space}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; no process at all, but not ours to judge
        return True
    return True


def remove_abandoned(prefix: str, folder: Path | None = None) -> list[Path]:
    """Remove the run folders of ``prefix`` in ``folder`` (the temporary folder) whose maker, a process of this boot
    and PID namespace, has died: a killed evaluator never ran its cleanup, and its sandboxes died with it. A folder
    made elsewhere (another machine or container sharing the folder) is not this process's to judge, nor one whose
    maker's pid is alive, whatever process holds it now, nor a name of another form. The folders removed."""
    own = _owner_tag().split("-")[0]
    removed = []
    try:
        entries = list(os.scandir(folder or tempfile.gettempdir()))
    except OSError:
        return removed
    for entry in entries:
        tag = entry.name[len(prefix):].split("-") if entry.name.startswith(prefix) else []
        if (len(tag) < 3 or tag[0] != own or not own.split(".")[0] or not (tag[1].isascii() and tag[1].isdigit())
                or _alive(int(tag[1]))):
            continue
        if remove_tree(Path(entry.path)):
            removed.append(Path(entry.path))
    return removed


def process_folder(prefix: str) -> Path:
    """A new folder in the temporary folder that lives as long as this process: named as a run folder is, removed
    when this process exits normally or, as a worker of multiprocessing's, ends (never by a child it forked, which
    inherits the handler), else by a later evaluator once this process has died (``remove_abandoned``)."""
    remove_abandoned(prefix)
    path = Path(tempfile.mkdtemp(prefix=prefix + _owner_tag()))
    maker = os.getpid()
    # A finalizer of multiprocessing's runs at an interpreter's exit and also at the end of a worker multiprocessing
    # started, which ends with os._exit and so never runs atexit's handlers: OpenEvolve evaluates in such workers.
    multiprocessing.util.Finalize(None, lambda: os.getpid() == maker and remove_tree(path), exitpriority=0)
    return path


@contextlib.contextmanager
def run_folder(prefix: str):
    """A new folder in the temporary folder for a sandbox (or a process that starts one) to write, its name tagged
    with its maker (``remove_abandoned``), removed with ``remove_tree`` afterwards; one that cannot be removed is
    named on stderr and left. The folders of ``prefix`` that dead evaluators left are removed first."""
    remove_abandoned(prefix)
    path = Path(tempfile.mkdtemp(prefix=prefix + _owner_tag()))
    try:
        yield path
    finally:
        if not remove_tree(path):
            print(f"harness: could not remove {path}, left by a sandbox", file=sys.stderr)

"""Processes that die with the process that started them.

A sandbox runs in its own process group, and a rung's training process in its own interpreter, so a killed
evaluator or Ray worker would leave them training on, holding their GPU, with nobody left to read the result.
Each asks the kernel to kill it when its parent dies.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn

# Set by the starter to its own pid: the child checks that its parent is still that process.
PARENT_PID_ENV = "HARNESS_SANDBOX_PARENT_PID"
# Set by the confinement launcher: a pipe whose write end it holds for as long as it lives. Its child is process 1
# of a new PID namespace, where getppid() is 0 whether the launcher lives or not, so the child reads the launcher's
# death as an end of file instead.
PARENT_ALIVE_FD_ENV = "HARNESS_SANDBOX_PARENT_ALIVE_FD"


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (the state first, then the parent's pid, the process
    group, ...); None when the process is gone. The name is cut at its last parenthesis: it may hold any other."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if len(fields) >= 3 else None


def die_with_parent(expected_parent: int | None = None) -> None:
    """Have the kernel SIGKILL this process when the process that started it dies (Linux). The sandbox runs in
    its own process group, so without this a killed evaluator or Ray worker would leave it training on,
    holding its GPU, with nobody left to read its result. ``expected_parent`` (default: the pid the starter
    put in the environment), or the launcher's pipe, closes the race where the parent dies before the request
    takes effect. A death signal asked for before exec does not survive it in a user namespace: the process
    must ask once running."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    alive_fd = os.environ.pop(PARENT_ALIVE_FD_ENV, None)
    if alive_fd is not None:
        fd = int(alive_fd)
        try:
            os.set_blocking(fd, False)
            if os.read(fd, 1) == b"":  # every write end closed: the launcher died before the request took effect
                os._exit(1)
        except BlockingIOError:
            pass
        finally:
            os.close(fd)
    if expected_parent is None and os.environ.get(PARENT_PID_ENV):
        expected_parent = int(os.environ[PARENT_PID_ENV])
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)


def tied(cmd: list[str]) -> list[str]:
    """``cmd`` started so that the kernel kills it when this process dies: a harness command that a kill -9 of the
    command that started it would otherwise leave running on its own (stock ``openevolve-run``, in its own session
    so that a timeout can kill its whole tree, is one). The thread that starts it must wait for it."""
    return [sys.executable, "-m", "harness.trusted.process_lifetime", str(os.getpid()), "--", *cmd]


def exit_now(code: int) -> NoReturn:
    """End this process with ``code`` at once, its output flushed, once everything it hands over is written and
    closed. An interpreter that imported torch spends about half a second tearing its modules down at a normal exit
    (0.50 s against 0.03 s on a 2-core CPU), and every process that waits for a sandbox or the scorer to end would
    wait for that too. Nothing left then needs running; an exit handler a program registered, in particular, is not
    run."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - closed, or replaced by whatever a program put there: the process ends
            pass
    os._exit(code)


if __name__ == "__main__":  # python -m harness.trusted.process_lifetime PARENT_PID -- CMD [ARG ...]  (``tied``)
    die_with_parent(int(sys.argv[1]))
    os.execvp(sys.argv[3], sys.argv[3:])

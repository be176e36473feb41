"""Reading ``/proc`` (Linux) for the tests that check which processes outlive which, and how processes end."""

import os
import time
from pathlib import Path

from harness.trusted.process_lifetime import stat_fields


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def children(pid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and (stat_fields(int(p)) or [None, None])[1] == str(pid)]


def all_gone(pids: list[int], timeout_s: float = 10.0) -> bool:
    """Whether every one of ``pids`` stops running within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while any(running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(running(p) for p in pids)


def exit_handler_site(folder: Path) -> tuple[Path, str]:
    """(a folder of markers, a PYTHONPATH under which every Python process leaves a marker ``start-<pid>`` there as
    its interpreter starts, and registers an exit handler that leaves ``exit-<pid>`` when its interpreter ends
    normally, not when it ends with ``os._exit``)."""
    site, markers = folder / "exit-handler-site", folder / "exit-markers"
    site.mkdir()
    markers.mkdir()
    (site / "sitecustomize.py").write_text(
        "import atexit, os\n"
        f"def mark(what): open(os.path.join({str(markers)!r}, f'{{what}}-{{os.getpid()}}'), 'w').close()\n"
        "mark('start')\n"
        "atexit.register(mark, 'exit')\n")
    return markers, os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))

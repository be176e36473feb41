"""Evaluation slots: which device each sandbox runs on, so that parallel evaluations never oversubscribe one.

OpenEvolve runs ``evaluator.parallel_evaluations`` worker processes; each evaluation starts one sandbox
subprocess. Before it starts, the sandbox takes a slot and holds it for its whole lifetime; the slot says
which GPU it may see (``CUDA_VISIBLE_DEVICES``). A slot is a lock file held with ``fcntl.flock``: the kernel
releases it when its holder exits or dies in any way, so a crashed evaluation never leaks a slot.

Slots come from ``HARNESS_SLOTS``, a comma-separated list with one entry per slot naming its GPU:
``"0,0,1,1"`` is two slots on each of GPUs 0 and 1, ``"cpu"`` one slot with no GPU. Without it: one slot per
visible GPU (the entries of ``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi -L``), else one CPU slot.
GPU numbers are positions in the parent's ``CUDA_VISIBLE_DEVICES`` when that is set, physical indices
otherwise; the lock files are named by the physical device, so that every process sharing the lock folder
(``HARNESS_SLOT_DIR``, default ``<harness cache>/slots``) counts the same slots.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

POLL_INTERVAL_S = 0.25
CPU = "cpu"


class SlotTimeout(RuntimeError):
    """No slot became free within the wait: an infrastructure problem, never the candidate's."""


@dataclass(frozen=True)
class Slot:
    device: str  # "cpu" or the physical GPU id given to CUDA_VISIBLE_DEVICES
    rank: int  # which of the slots on this device
    lock_path: Path

    @property
    def name(self) -> str:
        return f"{'cpu' if self.device == CPU else 'gpu' + self.device}-slot{self.rank}"

    def env(self) -> dict[str, str]:
        """Environment entries for a process that runs in this slot."""
        return {} if self.device == CPU else {"CUDA_VISIBLE_DEVICES": self.device}


def _visible_devices() -> list[str] | None:
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [d.strip() for d in value.split(",") if d.strip() and d.strip() != "-1"]


def count_gpus() -> int:
    """GPUs this process may use, without touching CUDA: CUDA_VISIBLE_DEVICES, else ``nvidia-smi -L``."""
    visible = _visible_devices()
    if visible is not None:
        return len(visible)
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def parse_slots(spec: str) -> list[str]:
    """``"0,0,1,1"`` -> ["0", "0", "1", "1"]; entries are GPU numbers or ``cpu``."""
    entries = [e.strip().lower() for e in spec.split(",") if e.strip()]
    if not entries:
        raise ValueError(f"HARNESS_SLOTS={spec!r} names no slot")
    for entry in entries:
        if entry != CPU and not entry.isdigit():
            raise ValueError(f"HARNESS_SLOTS entry {entry!r} is neither a GPU number nor 'cpu'")
    return entries


def slot_devices() -> list[str]:
    """One entry per slot, as given (logical GPU numbers or "cpu")."""
    spec = os.environ.get("HARNESS_SLOTS", "").strip()
    if spec:
        return parse_slots(spec)
    n = count_gpus()
    return [str(i) for i in range(n)] if n else [CPU]


def _physical(device: str) -> str:
    if device == CPU:
        return CPU
    visible = _visible_devices()
    if visible is None:
        return device
    index = int(device)
    if index >= len(visible):
        raise ValueError(f"slot GPU {device} does not exist: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}")
    return visible[index]


def lock_dir() -> Path:
    env = os.environ.get("HARNESS_SLOT_DIR")
    if env:
        return Path(env).expanduser()
    from harness.trusted.profiles import default_cache_dir

    return default_cache_dir() / "slots"


def all_slots(devices: list[str] | None = None, directory: Path | None = None) -> list[Slot]:
    """Every slot, ordered so that first-fit spreads the load: the first slot of each device, then the second..."""
    directory = Path(directory) if directory is not None else lock_dir()
    slots, per_device = [], {}
    for device in devices if devices is not None else slot_devices():
        physical = _physical(device)
        rank = per_device.get(physical, 0)
        per_device[physical] = rank + 1
        name = f"{'cpu' if physical == CPU else 'gpu' + physical.replace('/', '_')}-slot{rank}.lock"
        slots.append(Slot(physical, rank, directory / name))
    return sorted(slots, key=lambda s: (s.rank, s.device))


def _try_lock(slot: Slot):
    fd = os.open(slot.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    try:  # who holds it, for a person looking at the folder; the lock is what counts
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass
    return fd


@contextmanager
def acquire(timeout_s: float, devices: list[str] | None = None, directory: Path | None = None,
            poll_s: float = POLL_INTERVAL_S):
    """Wait up to ``timeout_s`` for a free slot and hold it inside the ``with``; raises SlotTimeout."""
    slots = all_slots(devices, directory)
    slots[0].lock_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    while True:
        for slot in slots:
            fd = _try_lock(slot)
            if fd is not None:
                try:
                    yield slot
                finally:
                    os.close(fd)  # closing the last descriptor releases the flock
                return
        if time.monotonic() >= deadline:
            raise SlotTimeout(f"no evaluation slot became free within {timeout_s:.0f} s ({len(slots)} slots: "
                              f"{', '.join(s.name for s in slots)}; lock folder {slots[0].lock_path.parent}). "
                              "Lower evaluator.parallel_evaluations or add slots with HARNESS_SLOTS.")
        time.sleep(poll_s)

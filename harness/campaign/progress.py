"""Where a campaign stands, for a terminal and a log file alike: one plain line at a time, every few seconds.

Evolution: iterations done per framework (the ledger's rows since the phase began), the best combined_score,
evaluations in flight (evaluation slots held), and an ETA from the measured seconds per iteration. Validation:
training jobs done (the job cache) and an ETA from the measured seconds per job.
"""

from __future__ import annotations

import fcntl
import threading
import time
from typing import Callable

from harness.trusted import ledger as ledger_mod
from harness.trusted import slots


def slots_in_use() -> int:
    """Evaluation slots held right now. A free slot is taken for an instant to see that it is free; an evaluation
    that asks for it in that instant waits one poll interval."""
    held = 0
    for slot in slots.all_slots():
        try:
            with open(slot.lock_path, "a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(f, fcntl.LOCK_UN)
                except BlockingIOError:
                    held += 1
        except OSError:
            continue
    return held


def minutes(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


class Progress:
    """Calls ``status()`` every ``interval_s`` seconds on a daemon thread and logs its line while it changes."""

    def __init__(self, log: Callable[[str], None], interval_s: float):
        self.log, self.interval_s = log, interval_s
        self._status: Callable[[], str] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = ""

    def watch(self, status: Callable[[], str]) -> "Progress":
        self._status = status
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()

    def tick(self) -> None:
        try:
            line = self._status() if self._status else ""
        except Exception as exc:  # noqa: BLE001 - progress is informative; it must never stop the campaign
            line = f"(progress unavailable: {type(exc).__name__}: {exc})"
        if line and line != self._last:
            self.log(line)
            self._last = line

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def evolution_status(frameworks: list[str], iterations: int, done_before: dict[str, int], ledger_path,
                     since: float, running: set[str], concurrency: int, finished: set[str] = frozenset()) -> str:
    """One line: per framework its iterations (done before this phase began, plus the ledger's rows since), its
    best combined_score, the slots in use, and the ETA from the seconds each iteration has taken. A framework in
    ``finished`` has no iteration left, whatever its count (its stopping rule may have ended it early); the ETA is
    the longer of the framework with the most iterations left and the work left spread over the slots."""
    try:
        rows = [r for r in ledger_mod.evaluations(ledger_path) if r["created_at"] >= since]
    except Exception:  # noqa: BLE001 - the ledger may not exist before the first evaluation
        rows = []
    parts, left, spans = [], [], []
    for fw in frameworks:
        mine = sorted((r for r in rows if r["framework"] == fw), key=lambda r: r["created_at"])
        before = done_before.get(fw, 0)
        # A fresh run evaluates the initial program first; a resumed one does not.
        done = min(iterations, before + max(0, len(mine) - (0 if before else 1)))
        left.append(0 if fw in finished else iterations - done)
        best = max((r["combined_score"] for r in mine), default=None)
        state = "running" if fw in running else ("done" if done >= iterations or fw in finished else "waiting")
        parts.append(f"{fw} {done}/{iterations}" + (f" best {best:.4f}" if best is not None else "") + f" ({state})")
        if len(mine) >= 2:
            spans.append((mine[-1]["created_at"] - mine[0]["created_at"]) / (len(mine) - 1))
    per_iteration = sum(spans) / len(spans) if spans else None
    eta = per_iteration * max(max(left, default=0), sum(left) / max(1, concurrency)) if per_iteration else None
    return (f"[evolve] {'; '.join(parts)}; {slots_in_use()} evaluation(s) in flight; ETA {minutes(eta)}")


def validation_status(done: int, total_hint: int | None, started: float, done_before: int = 0) -> str:
    """One line: the training jobs done (``done_before`` of them before this start: their time is not this start's),
    the slots in use, and the ETA from the seconds each job of this start has taken."""
    elapsed = time.time() - started
    per_job = elapsed / (done - done_before) if done > done_before else None
    left = max(0, total_hint - done) if total_hint else None
    eta = per_job * left if per_job is not None and left is not None else None
    return (f"[validate] {done} training job(s) done" + (f" of about {total_hint}" if total_hint else "")
            + f"; {slots_in_use()} in flight; ETA {minutes(eta)}")

"""The ledger under concurrent writers: processes that open a fresh ledger at the same instant (two OpenEvolve
runs of a campaign starting together) all get it. Before the retry, about one round in five failed with
"database is locked": switching a fresh file to WAL does not wait for the other process."""

import multiprocessing

from harness.trusted import ledger

ROUNDS, WRITERS = 30, 8


def _open(path, start, results):
    start.wait()
    try:
        ledger.connect(path).close()
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put(repr(exc))


def test_processes_opening_a_fresh_ledger_together_all_get_it(tmp_path):
    ctx = multiprocessing.get_context("fork")
    failures = []
    for r in range(ROUNDS):
        start, results = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_open, args=(tmp_path / f"ledger{r}.sqlite", start, results))
                 for _ in range(WRITERS)]
        for p in procs:
            p.start()
        start.set()
        for p in procs:
            p.join(timeout=120)
        failures += [x for x in (results.get(timeout=10) for _ in procs) if x != "ok"]
    assert failures == []

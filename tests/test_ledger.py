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


# The evaluations table as the ledger's first version wrote it.
FIRST_SCHEMA = """CREATE TABLE evaluations (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at REAL NOT NULL,
    framework TEXT NOT NULL, program_hash TEXT NOT NULL, code_path TEXT, verdict TEXT NOT NULL, reason TEXT NOT NULL,
    message TEXT, combined_score REAL NOT NULL, metrics_json TEXT NOT NULL, fingerprint_id TEXT, fingerprint_json TEXT,
    profile TEXT, seed INTEGER, wall_s REAL, timings_json TEXT);"""


def test_a_ledger_written_before_the_added_columns_gains_them_and_keeps_its_rows(tmp_path):
    """A ledger of an earlier version (no ``execution_json``, no ``runs_json``) opens, keeps its rows and records
    new ones with every column: a campaign that upgrades the package goes on in the same ledger."""
    import sqlite3

    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(FIRST_SCHEMA)
        conn.execute("INSERT INTO evaluations (created_at, framework, program_hash, verdict, reason, combined_score, "
                     "metrics_json) VALUES (1.0, 'ttr', 'h', 'valid', 'ok', 1.0, '{}')")
    row = {"framework": "cd", "program_hash": "g", "verdict": "rejected", "reason": "policy", "combined_score": 0.0,
           "execution": {"executor": "local"}, "runs": [{"rung": [32, 2, 2], "compiled": True}]}
    ledger.record_evaluation(row, path)
    old, new = ledger.evaluations(path)
    assert (old["framework"], old["execution"], old["runs"]) == ("ttr", {}, [])
    assert (new["framework"], new["execution"], new["runs"]) == ("cd", {"executor": "local"}, row["runs"])

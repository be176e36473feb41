"""The ledger: every evaluation, accepted or rejected, in one SQLite file (WAL mode).

One row per evaluation with the program hash, framework, verdict, reason, metrics, fingerprint,
timings, where it ran (executor, host, attempts), each rung's training (curves, timings, whether it compiled) and the
path of the exact code that ran. Baselines are cached in the same file, keyed by
fingerprint id, framework and objective, so that nothing is ever compared across fingerprints.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from pathlib import Path

from harness.trusted.frameworks import REPO_ROOT

CONNECT_TIMEOUT_S = 60.0  # how long a writer waits for another process's lock on the ledger

SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    framework TEXT NOT NULL,
    program_hash TEXT NOT NULL,
    code_path TEXT,
    verdict TEXT NOT NULL,           -- valid | rejected | flagged | infrastructure
    reason TEXT NOT NULL,
    message TEXT,
    combined_score REAL NOT NULL,
    metrics_json TEXT NOT NULL,
    fingerprint_id TEXT,
    fingerprint_json TEXT,
    profile TEXT,
    seed INTEGER,
    wall_s REAL,
    timings_json TEXT,
    execution_json TEXT,             -- where it ran: executor, host or Ray node, attempts, lost workers
    runs_json TEXT                   -- each rung's training as its sandbox reported it (never scored) + the scorer's
);
CREATE INDEX IF NOT EXISTS evaluations_fp ON evaluations(fingerprint_id, framework);
CREATE TABLE IF NOT EXISTS baselines (
    fingerprint_id TEXT NOT NULL,
    framework TEXT NOT NULL,
    objective TEXT NOT NULL,
    created_at REAL NOT NULL,
    record_json TEXT NOT NULL,
    PRIMARY KEY (fingerprint_id, framework, objective)
);
"""

# Columns of ``evaluations`` added after its first version, in order: an older ledger gets them on connecting.
ADDED_COLUMNS = ("execution_json", "runs_json")


def default_ledger_path() -> Path:
    return Path(os.environ.get("HARNESS_LEDGER", REPO_ROOT / "results" / "ledger.sqlite"))


def _initialise(conn: sqlite3.Connection) -> None:
    """WAL mode and the schema. Switching a fresh file to WAL needs it to itself, and SQLite reports "database is
    locked" at once, without waiting, when another process opens it at that moment (two OpenEvolve runs starting
    together): retry until the connect timeout."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02 + 0.08 * random.random())


def connect(path: Path | str | None = None) -> sqlite3.Connection:
    path = Path(path or default_ledger_path())
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=CONNECT_TIMEOUT_S, isolation_level=None)
    _initialise(conn)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(evaluations)")}
    for column in ADDED_COLUMNS:
        if column in columns:
            continue
        try:  # a ledger written before the column existed
            conn.execute(f"ALTER TABLE evaluations ADD COLUMN {column} TEXT")
        except sqlite3.OperationalError as exc:  # another process added it first
            if "duplicate column" not in str(exc):
                raise
    conn.row_factory = sqlite3.Row
    return conn


def record_evaluation(row: dict, path: Path | str | None = None) -> int:
    fp = row.get("fingerprint") or {}
    conn = connect(path)
    try:
        cur = conn.execute(
            "INSERT INTO evaluations (created_at, framework, program_hash, code_path, verdict, reason, message, "
            "combined_score, metrics_json, fingerprint_id, fingerprint_json, profile, seed, wall_s, timings_json, "
            "execution_json, runs_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                time.time(), row["framework"], row["program_hash"], row.get("code_path"), row["verdict"],
                row["reason"], row.get("message"), float(row["combined_score"]),
                json.dumps(row.get("metrics", {}), sort_keys=True), fp.get("id"), json.dumps(fp, sort_keys=True),
                row.get("profile"), row.get("seed"), row.get("wall_s"), json.dumps(row.get("timings", {})),
                json.dumps(row.get("execution", {}), sort_keys=True), json.dumps(row.get("runs", [])),
            ),
        )
        return int(cur.lastrowid)
    finally:
        conn.close()


def baselines(framework: str, objective: str, path: Path | str | None = None) -> dict[str, dict]:
    """Every cached baseline of a framework and objective, keyed by fingerprint id."""
    conn = connect(path)
    try:
        rows = conn.execute("SELECT fingerprint_id, record_json FROM baselines WHERE framework=? AND objective=?",
                            (framework, objective)).fetchall()
        return {row["fingerprint_id"]: json.loads(row["record_json"]) for row in rows}
    finally:
        conn.close()


def put_baseline(fingerprint_id: str, framework: str, objective: str, record: dict, path: Path | str | None = None) -> None:
    """Cache a baseline. The first one stored for a fingerprint stays: two evaluations that each trained it on
    a new worker kind at the same time must not leave later scores measured against a moved baseline."""
    conn = connect(path)
    try:
        conn.execute(
            "INSERT OR IGNORE INTO baselines (fingerprint_id, framework, objective, created_at, record_json) VALUES (?,?,?,?,?)",
            (fingerprint_id, framework, objective, time.time(), json.dumps(record, sort_keys=True)),
        )
    finally:
        conn.close()


def evaluations(path: Path | str | None = None, framework: str | None = None) -> list[dict]:
    conn = connect(path)
    try:
        query, args = "SELECT * FROM evaluations", ()
        if framework:
            query, args = query + " WHERE framework=?", (framework,)
        rows = [dict(r) for r in conn.execute(query + " ORDER BY id", args)]
    finally:
        conn.close()
    for r in rows:
        r["metrics"] = json.loads(r.pop("metrics_json"))
        r["fingerprint"] = json.loads(r.pop("fingerprint_json") or "{}")
        r["timings"] = json.loads(r.pop("timings_json") or "{}")
        r["execution"] = json.loads(r.pop("execution_json") or "{}")
        r["runs"] = json.loads(r.pop("runs_json", None) or "[]")
    return rows

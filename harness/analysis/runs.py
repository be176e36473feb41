"""Loading an OpenEvolve run and joining its programs to the ledger.

Reads the run's complete checkpoints (``checkpoints/checkpoint_N/programs/*.json``, with the ``metadata.json``
OpenEvolve writes last): the highest-numbered is the database, and a program found only in another (a checkpoint
written out of order by parallel workers) is added to it. It also reads the run's ``logs/*.log``: failed
iterations, and OpenEvolve's own early stop, exist only there. Each program is joined to its ledger row through
its artifacts (``ledger_row``, checked against the code's hash and the fingerprint the artifacts claim), or else
through the sha256 of its code under that fingerprint; a program whose claim and ledger disagree is unverifiable.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from harness.trusted import program as program_mod
from harness.trusted.frameworks import FRAMEWORKS, REPO_ROOT, framework_of
from harness.trusted.profiles import ConfigError


# OpenEvolve 0.4.0 log lines (process_parallel.py) that mark an iteration that produced no program.
_LOG_PATTERNS = [
    (re.compile(r"Iteration (\d+) error: (.*?)(?: \| tokens: .*)?$"), None),
    (re.compile(r"Iteration (\d+) (timed out after .*)$"), "timeout"),
    (re.compile(r"Error processing result from iteration (\d+): (.*)$"), "processing_error"),
    (re.compile(r"Error submitting iteration (\d+): (.*)$"), "submit_error"),
]
_LOG_SUCCESS = re.compile(r"Iteration (\d+): Program (\S+) \(parent: (\S+)\) completed")
_LOG_EARLY_STOP = re.compile(r"Early stopping (?:\(event-based\) )?triggered at iteration (\d+)")
_LOG_PARTIAL = re.compile(r"Iteration (\d+): only (\d+) of (\d+) SEARCH block")
_ERROR_KINDS = [
    ("No valid diffs", "no_valid_diffs"),
    ("SEARCH block(s) matched", "search_not_matched"),
    ("LLM generation failed", "llm_failed"),
    ("LLM returned None", "llm_none"),
    ("Diff did not change", "diff_no_change"),
    ("outside the EVOLVE-BLOCK", "outside_evolve_block"),
    ("exceeds maximum length", "too_long"),
    ("identical to the parent", "identical_rewrite"),
    ("No valid code found", "no_code_found"),
    ("changes_description", "changes_description"),
]


def classify_error(message: str) -> str:
    for needle, kind in _ERROR_KINDS:
        if needle in message:
            return kind
    return "other"


def display_path(path) -> str:
    """A path as a reader can use it: relative to the repository or the working folder when inside them."""
    path = Path(path)
    for base in (REPO_ROOT, Path.cwd()):
        try:
            return str(path.resolve().relative_to(base.resolve()))
        except (ValueError, OSError):
            continue
    return str(path)


def _number(value) -> float | None:
    """A finite float from a stored metric, or None (a string, a bool, None, NaN or an infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        value = float(value)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass
class Prog:
    id: str
    code: str
    parent_id: str | None
    generation: int
    iteration: int
    timestamp: float
    metrics: dict
    artifacts: dict
    framework: str | None
    migrant: bool = False
    island: int | None = None
    changes: str = ""
    ledger_row: dict | None = None
    join: str = "none"  # artifacts | hash | none
    join_note: str = ""

    @property
    def fingerprint_id(self) -> str | None:
        return (self.ledger_row or {}).get("fingerprint_id") or None

    @property
    def verified(self) -> bool:
        return self.ledger_row is not None and bool(self.fingerprint_id)

    @property
    def reason(self) -> str:
        if self.ledger_row:
            return self.ledger_row["reason"]
        return str(self.artifacts.get("reason") or ("ok" if self.valid else "unknown"))

    @property
    def valid(self) -> bool:
        if self.ledger_row:
            return self.ledger_row["verdict"] in ("valid", "flagged")
        return _number(self.metrics.get("valid")) == 1.0

    @property
    def flags(self) -> str | None:
        """What the evaluator flagged on a valid program (an implausibly low loss, say): its score stands, to be
        confirmed by a validation before it is trusted. None when not flagged."""
        if not self.ledger_row or self.ledger_row["verdict"] != "flagged":
            return None
        said = str(self.artifacts.get("flags") or self.ledger_row.get("message") or "").replace("\n", "; ")
        return said.removeprefix("valid; flagged: ") if said not in ("", "valid") else "no detail recorded"

    @property
    def score(self) -> float:
        """The ledger's combined_score where the program joined its row (the trusted record), else as stored."""
        value = _number(self.ledger_row["combined_score"] if self.ledger_row else self.metrics.get("combined_score"))
        return value if value is not None else 0.0

    def metric(self, key: str) -> float | None:
        for source in (self.metrics, (self.ledger_row or {}).get("metrics", {})):
            value = source.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
                return float(value)
        return None

    @property
    def objective(self) -> str | None:
        fp = (self.ledger_row or {}).get("fingerprint") or {}
        if fp.get("objective"):
            return fp["objective"]
        if self.metric("scaling_b") is not None:
            return "scaling_slope"
        if self.metric("final_loss") is not None:
            return "final_loss"
        return None

    def objective_value(self) -> float | None:
        """The final objective, lower is better: the validation loss, or the scaling slope b."""
        return self.metric("scaling_b" if self.objective == "scaling_slope" else "final_loss")

    def block(self) -> str:
        try:
            return program_mod.split(self.code).block
        except program_mod.FrozenRegionError:
            return self.code


@dataclass
class LogEvent:
    iteration: int
    kind: str
    message: str
    source: str


@dataclass
class Run:
    path: Path
    checkpoint: Path | None
    metadata: dict
    programs: dict[str, Prog]
    failures: list[LogEvent] = field(default_factory=list)  # iterations with an error and no program
    log_successes: dict[int, str] = field(default_factory=dict)  # iteration -> program id (from the logs)
    partial_matches: int = 0
    log_files: list[str] = field(default_factory=list)
    framework: str | None = None
    notes: list[str] = field(default_factory=list)
    stopped_at: int | None = None  # the iteration at which OpenEvolve's own early stopping ended the run

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def last_iteration(self) -> int:
        """The last iteration that ran. After an early stop OpenEvolve still names its final checkpoint after the
        iteration the run was to end at, so the checkpoint's number counts only where no early stop was logged."""
        its = [p.iteration for p in self.programs.values() if not p.migrant] + [e.iteration for e in self.failures]
        its += list(self.log_successes)
        planned = self.stopped_at if self.stopped_at is not None else int(self.metadata.get("last_iteration", 0) or 0)
        return max([planned] + its)

    def evolved(self) -> list[Prog]:
        """The programs that were evaluated (migrant copies left out), in iteration order."""
        return sorted((p for p in self.programs.values() if not p.migrant), key=lambda p: (p.iteration, p.timestamp))


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders, lowest number first; a checkpoint folder given itself is the only one."""
    run_dir = Path(run_dir)
    if (run_dir / "programs").is_dir() and (run_dir / "metadata.json").exists():
        return [run_dir]
    found = [p for p in (run_dir / "checkpoints").glob("checkpoint_*")
             if p.is_dir() and p.name.rsplit("_", 1)[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.rsplit("_", 1)[-1]))


def read_metadata(checkpoint: Path) -> dict | None:
    """A checkpoint's metadata.json, which OpenEvolve writes after its programs: None where it is missing or
    unreadable, as in a checkpoint whose writing was cut short."""
    try:
        metadata = json.loads((checkpoint / "metadata.json").read_text())
    except (OSError, ValueError):
        return None
    return metadata if isinstance(metadata, dict) else None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The highest-numbered complete checkpoint (its metadata.json written and readable)."""
    complete = [c for c in checkpoints(run_dir) if read_metadata(c) is not None]
    return complete[-1] if complete else None


def _run_root(run_dir: Path, checkpoint: Path | None) -> Path:
    if checkpoint is not None and checkpoint == run_dir and checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent
    return run_dir


@dataclass
class LogRecord:
    failures: list[LogEvent]  # iterations whose last outcome was an error and no program
    successes: dict[int, str]  # iteration -> program id
    partial_matches: int
    stopped_at: int | None  # OpenEvolve's early stop, where the last log that ran says it stopped


def parse_logs(paths: list[Path]) -> LogRecord:
    """What OpenEvolve's logs say of each iteration, read in the order they were written (their names carry the
    start time). One outcome per iteration, the last one logged: a resumed run repeats the iterations after its
    checkpoint, and what the resumed run did replaces what the run before it did."""
    outcomes: dict[int, LogEvent | str] = {}
    partial, stopped_at = 0, None
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            m = _LOG_SUCCESS.search(line)
            if m:
                outcomes[int(m.group(1))] = m.group(2)
                continue
            m = _LOG_EARLY_STOP.search(line)
            if m:
                stopped_at = int(m.group(1))
                continue
            if _LOG_PARTIAL.search(line):
                partial += 1
                continue
            for pattern, kind in _LOG_PATTERNS:
                m = pattern.search(line)
                if m:
                    it, msg = int(m.group(1)), m.group(2).strip()
                    outcomes[it] = LogEvent(it, kind or classify_error(msg), msg, path.name)
                    break
    if stopped_at is not None and any(it > stopped_at for it in outcomes):
        stopped_at = None  # resumed after the stop, and ran on
    return LogRecord([e for e in outcomes.values() if isinstance(e, LogEvent)],
                     {it: pid for it, pid in outcomes.items() if isinstance(pid, str)}, partial, stopped_at)


def _ledger_index(rows: list[dict]) -> tuple[dict[int, dict], dict[str, list[dict]]]:
    by_id, by_hash = {}, defaultdict(list)
    for r in rows:
        by_id[int(r["id"])] = r
        by_hash[r["program_hash"]].append(r)
    return by_id, by_hash


def _hashes(code: str, framework: str | None) -> set[str]:
    """sha256 of the code as stored, and of the program the evaluator ran (pristine outside + block)."""
    out = {program_mod.sha256(code)}
    if framework:
        try:
            out.add(program_mod.sha256(program_mod.splice(FRAMEWORKS[framework].seed_source(), code)))
        except (program_mod.FrozenRegionError, OSError):
            pass
    return out


def join_ledger(prog: Prog, by_id: dict[int, dict], by_hash: dict[str, list[dict]]) -> None:
    """Find the program's ledger row, or leave it unverifiable with a note saying why. The row must hold the
    program's code and, where the artifacts name the fingerprint the program was scored under, that fingerprint:
    a row of the same code under another fingerprint is another evaluation, under other conditions."""
    hashes = _hashes(prog.code, prog.framework)
    claimed = str(prog.artifacts.get("fingerprint_id") or "") or None
    notes = []
    row_ref = prog.artifacts.get("ledger_row")
    if row_ref not in (None, ""):
        try:
            row = by_id.get(int(row_ref))
        except (TypeError, ValueError):
            row = None
        if row is not None and row["program_hash"] in hashes:
            if claimed and claimed != row.get("fingerprint_id"):
                prog.join_note = (f"its artifacts claim fingerprint {claimed}, but the ledger row they name ({row_ref}) "
                                  f"is under {row.get('fingerprint_id')}")
                return
            prog.ledger_row, prog.join = row, "artifacts"
            return
        notes.append(f"artifacts name ledger row {row_ref}, which is " +
                     ("missing from this ledger" if row is None else "another program's (hash mismatch)"))
    matches = [r for h in hashes for r in by_hash.get(h, [])]
    if prog.framework:
        matches = [r for r in matches if r["framework"] == prog.framework] or matches
    if claimed:
        under_claim = [r for r in matches if r.get("fingerprint_id") == claimed]
        if matches and not under_claim:
            notes.append(f"no ledger row of this code under the fingerprint its artifacts claim ({claimed})")
        matches = under_claim
    if matches:
        # The evaluation closest in time to the program's creation.
        prog.ledger_row = min(matches, key=lambda r: abs(float(r["created_at"]) - prog.timestamp))
        prog.join = "hash"
        if len({r.get("fingerprint_id") for r in matches}) > 1:
            notes.append(f"{len(matches)} ledger rows with this code under different fingerprints; the closest in time "
                         "used")
    prog.join_note = "; ".join(notes)


def require_run_folder(run_dir: Path) -> Path:
    """The folder, if it holds an OpenEvolve run (its checkpoints or its logs); a ConfigError saying why not."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such folder")
    if not (run_dir / "checkpoints").is_dir() and not (run_dir / "logs").is_dir() and not (run_dir / "programs").is_dir():
        raise ConfigError(f"{run_dir}: not an OpenEvolve output folder (no checkpoints/, logs/ or programs/ inside); "
                          "give the folder passed to openevolve-run --output")
    return run_dir


def _read_programs(checkpoint: Path, notes: list[str]) -> dict[str, Prog]:
    programs = {}
    for path in sorted((checkpoint / "programs").glob("*.json")):
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            notes.append(f"{checkpoint.name}/{path.name} unreadable: {exc}")
            continue
        try:
            artifacts = json.loads(d.get("artifacts_json") or "{}")
        except ValueError:
            artifacts = {}
        meta = d.get("metadata") or {}
        code = d.get("code") or ""
        programs[d["id"]] = Prog(
            id=d["id"], code=code, parent_id=d.get("parent_id"), generation=int(d.get("generation") or 0),
            iteration=int(d.get("iteration_found") or 0), timestamp=float(d.get("timestamp") or 0.0),
            metrics=d.get("metrics") or {}, artifacts=artifacts if isinstance(artifacts, dict) else {},
            framework=framework_of(code), migrant=bool(meta.get("migrant")), island=meta.get("island"),
            changes=str(meta.get("changes") or ""),
        )
    return programs


def _date_migrants(programs: dict[str, Prog]) -> None:
    """OpenEvolve copies a migrant between islands without the iteration it was found at (its copy says 0) and with
    the original as its parent: give each copy its original's iteration."""
    for prog in programs.values():
        origin, hops = programs.get(prog.parent_id), 0
        while prog.migrant and origin is not None and origin.migrant and hops < len(programs):
            origin, hops = programs.get(origin.parent_id), hops + 1
        if prog.migrant and origin is not None:
            prog.iteration = origin.iteration


def load_run(run_dir: Path, ledger_rows: list[dict]) -> Run:
    run_dir = require_run_folder(run_dir)
    found = checkpoints(run_dir)
    complete = [c for c in found if read_metadata(c) is not None]
    checkpoint = complete[-1] if complete else None
    root = _run_root(run_dir, found[-1] if found else None)
    metadata, programs, notes = {}, {}, []
    cut_short = [c.name for c in found if c not in complete]
    if cut_short:
        notes.append(f"checkpoint(s) without a readable metadata.json, whose writing was cut short, not read: "
                     f"{', '.join(cut_short)}")
    if checkpoint is None:
        notes.append("no complete checkpoint found: the database is empty (OpenEvolve writes checkpoints only every "
                     "checkpoint_interval iterations)")
    else:
        metadata = read_metadata(checkpoint)
        programs = _read_programs(checkpoint, notes)
        # Parallel workers finish out of order, so a checkpoint named after a later iteration can be written before
        # one named after an earlier iteration, without the program of that earlier one.
        elsewhere = {}
        for other in complete[:-1]:
            for pid, prog in _read_programs(other, []).items():
                if pid not in programs and pid not in elsewhere:
                    elsewhere[pid] = prog
        if elsewhere:
            programs.update(elsewhere)
            notes.append(f"{len(elsewhere)} program(s) found only in an earlier checkpoint than {checkpoint.name} "
                         "(written out of order by parallel workers) are included")
    _date_migrants(programs)
    by_id, by_hash = _ledger_index(ledger_rows)
    for prog in programs.values():
        join_ledger(prog, by_id, by_hash)
    logs = sorted((root / "logs").glob("*.log")) if (root / "logs").is_dir() else []
    log = parse_logs(logs)
    in_db = {p.iteration for p in programs.values() if not p.migrant}
    failures = [e for e in log.failures if e.iteration not in in_db]
    fws = Counter(p.framework for p in programs.values() if p.framework)
    run = Run(root, checkpoint, metadata, programs, failures, log.successes, log.partial_matches,
              [p.name for p in logs], fws.most_common(1)[0][0] if fws else None, notes, log.stopped_at)
    if not logs:
        notes.append("no logs/*.log found: iterations that failed before evaluation cannot be counted")
    return run

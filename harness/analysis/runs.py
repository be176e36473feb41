"""Loading an OpenEvolve run and joining its programs to the ledger.

Reads the LATEST checkpoint of a run (a full snapshot: ``checkpoints/checkpoint_N/programs/*.json`` and
``metadata.json``) and the run's ``logs/*.log`` (failed iterations exist only there). Each program is joined
to its ledger row through its artifacts (``ledger_row``, checked against the code's hash), or else through
the sha256 of its code.
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
        return float(self.metrics.get("valid", 0.0) or 0.0) == 1.0

    @property
    def score(self) -> float:
        value = self.metrics.get("combined_score")
        if value is None and self.ledger_row:
            value = self.ledger_row["combined_score"]
        try:
            value = float(value)
        except (TypeError, ValueError):
            return 0.0
        return value if math.isfinite(value) else 0.0

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

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def last_iteration(self) -> int:
        its = [p.iteration for p in self.programs.values()] + [e.iteration for e in self.failures]
        its += list(self.log_successes)
        return max([int(self.metadata.get("last_iteration", 0) or 0)] + its)

    def evolved(self) -> list[Prog]:
        """The programs that were evaluated (migrant copies left out), in iteration order."""
        return sorted((p for p in self.programs.values() if not p.migrant), key=lambda p: (p.iteration, p.timestamp))


def latest_checkpoint(run_dir: Path) -> Path | None:
    run_dir = Path(run_dir)
    if (run_dir / "programs").is_dir() and (run_dir / "metadata.json").exists():
        return run_dir  # a checkpoint folder was given
    found = [p for p in (run_dir / "checkpoints").glob("checkpoint_*")
             if p.is_dir() and p.name.rsplit("_", 1)[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.rsplit("_", 1)[-1])) if found else None


def _run_root(run_dir: Path, checkpoint: Path | None) -> Path:
    if checkpoint is not None and checkpoint == run_dir and checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent
    return run_dir


def parse_logs(paths: list[Path]) -> tuple[list[LogEvent], dict[int, str], int]:
    """(error events, successes iteration -> program id, partial-match warnings) from OpenEvolve logs."""
    events, successes, partial = [], {}, 0
    seen = set()
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            m = _LOG_SUCCESS.search(line)
            if m:
                successes[int(m.group(1))] = m.group(2)
                continue
            if _LOG_PARTIAL.search(line):
                partial += 1
                continue
            for pattern, kind in _LOG_PATTERNS:
                m = pattern.search(line)
                if m:
                    it, msg = int(m.group(1)), m.group(2).strip()
                    key = (it, msg)
                    if key not in seen:
                        seen.add(key)
                        events.append(LogEvent(it, kind or classify_error(msg), msg, path.name))
                    break
    return events, successes, partial


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
    hashes = _hashes(prog.code, prog.framework)
    row_ref = prog.artifacts.get("ledger_row")
    if row_ref not in (None, ""):
        try:
            row = by_id.get(int(row_ref))
        except (TypeError, ValueError):
            row = None
        if row is not None and row["program_hash"] in hashes:
            prog.ledger_row, prog.join = row, "artifacts"
            claimed = prog.artifacts.get("fingerprint_id")
            if claimed and claimed != row.get("fingerprint_id"):
                prog.join_note = f"artifacts claim fingerprint {claimed}, the ledger row says {row.get('fingerprint_id')}"
            return
        prog.join_note = (f"artifacts name ledger row {row_ref}, which is " +
                          ("missing from this ledger" if row is None else "another program's (hash mismatch)"))
    matches = [r for h in hashes for r in by_hash.get(h, [])]
    if prog.framework:
        matches = [r for r in matches if r["framework"] == prog.framework] or matches
    if matches:
        claimed = prog.artifacts.get("fingerprint_id")
        preferred = [r for r in matches if claimed and r.get("fingerprint_id") == claimed] or matches
        # The evaluation closest in time to the program's creation.
        prog.ledger_row = min(preferred, key=lambda r: abs(float(r["created_at"]) - prog.timestamp))
        prog.join = "hash"
        if len({r.get("fingerprint_id") for r in matches}) > 1:
            prog.join_note = (prog.join_note + "; " if prog.join_note else "") + \
                f"{len(matches)} ledger rows with this code under different fingerprints; the closest in time used"


def require_run_folder(run_dir: Path) -> Path:
    """The folder, if it holds an OpenEvolve run (its checkpoints or its logs); a ConfigError saying why not."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such folder")
    if not (run_dir / "checkpoints").is_dir() and not (run_dir / "logs").is_dir() and not (run_dir / "programs").is_dir():
        raise ConfigError(f"{run_dir}: not an OpenEvolve output folder (no checkpoints/, logs/ or programs/ inside); "
                          "give the folder passed to openevolve-run --output")
    return run_dir


def load_run(run_dir: Path, ledger_rows: list[dict]) -> Run:
    run_dir = require_run_folder(run_dir)
    checkpoint = latest_checkpoint(run_dir)
    root = _run_root(run_dir, checkpoint)
    metadata, programs, notes = {}, {}, []
    if checkpoint is None:
        notes.append("no checkpoint found: the database is empty (OpenEvolve writes checkpoints only every "
                     "checkpoint_interval iterations)")
    else:
        try:
            metadata = json.loads((checkpoint / "metadata.json").read_text())
        except (OSError, ValueError) as exc:
            notes.append(f"metadata.json unreadable: {exc}")
        for path in sorted((checkpoint / "programs").glob("*.json")):
            try:
                d = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                notes.append(f"{path.name} unreadable: {exc}")
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
    by_id, by_hash = _ledger_index(ledger_rows)
    for prog in programs.values():
        join_ledger(prog, by_id, by_hash)
    logs = sorted((root / "logs").glob("*.log")) if (root / "logs").is_dir() else []
    events, successes, partial = parse_logs(logs)
    in_db = {p.iteration for p in programs.values() if not p.migrant}
    failures = [e for e in events if e.iteration not in in_db]
    fws = Counter(p.framework for p in programs.values() if p.framework)
    run = Run(root, checkpoint, metadata, programs, failures, successes, partial, [p.name for p in logs],
              fws.most_common(1)[0][0] if fws else None, notes)
    if not logs:
        notes.append("no logs/*.log found: iterations that failed before evaluation cannot be counted")
    return run

"""``harness analyze``: post-hoc analysis of OpenEvolve output folders, joined to the ledger.

    harness analyze RUN_DIR [RUN_DIR ...] [--ledger PATH] [--out DIR] [--name NAME] [--top K]

Reads the LATEST checkpoint of each run (a full snapshot: ``checkpoints/checkpoint_N/programs/*.json`` and
``metadata.json``), the run's ``logs/*.log`` (failed iterations exist only there), and the ledger. Each
program is joined to its ledger row through its artifacts (``ledger_row``, checked against the code's
hash), or else through the sha256 of its code. Writes ``report.md``, ``analysis.json`` and PNG plots.

Programs are ranked only within one fingerprint group (same hardware, software, budget, data, tokenizer
and harness code): numbers from different groups were produced under different conditions and are never
put in one ranking. Programs with no ledger row are listed as unverifiable and never ranked.

Pure reading: nothing here imports torch or runs candidate code.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from harness import ledger as ledger_mod
from harness import program as program_mod
from harness.frameworks import FRAMEWORKS, REPO_ROOT

CLASS_TO_FRAMEWORK = {fw.class_name: fw.name for fw in FRAMEWORKS.values()}
_CLASS_RE = re.compile(r"^\s*class\s+(" + "|".join(map(re.escape, CLASS_TO_FRAMEWORK)) + r")\b", re.M)
MIN_SPEARMAN_N = 5
DPI = 90

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


def framework_of(code: str) -> str | None:
    """The framework whose attention class the code defines (cd, ttr, mm), or None."""
    found = _CLASS_RE.findall(code or "")
    return CLASS_TO_FRAMEWORK[found[0]] if found else None


# ----------------------------------------------------------------------------------------------------------
# Loading


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


def load_run(run_dir: Path, ledger_rows: list[dict]) -> Run:
    run_dir = Path(run_dir)
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


# ----------------------------------------------------------------------------------------------------------
# Analyses


def fingerprint_groups(progs: list[Prog]) -> tuple[dict[str, list[Prog]], list[Prog]]:
    groups: dict[str, list[Prog]] = defaultdict(list)
    unverifiable = []
    for p in progs:
        (groups[p.fingerprint_id] if p.verified else unverifiable).append(p)
    return dict(groups), unverifiable


def rank_group(progs: list[Prog]) -> list[Prog]:
    """Valid programs of ONE fingerprint group, best first (combined_score, then earlier iteration)."""
    fps = {p.fingerprint_id for p in progs}
    if len(fps) > 1 or None in fps:
        raise ValueError(f"refusing to rank programs across fingerprints {sorted(map(str, fps))}")
    return sorted((p for p in progs if p.valid), key=lambda p: (-p.score, p.iteration, p.timestamp))


def best_so_far(progs: list[Prog]) -> list[tuple[int, float]]:
    out, best = [], -math.inf
    for p in sorted(progs, key=lambda p: (p.iteration, p.timestamp)):
        best = max(best, p.score if p.valid else 0.0)
        out.append((p.iteration, best))
    return out


_SIGNIFICANT = re.compile(r"[A-Za-z0-9_]")


def significant_lines(text: str) -> list[str]:
    """Lines that carry code: stripped, not blank, not comment-only, at least 3 word characters (so that
    lines such as ``)`` or ``else:`` are not counted as re-introductions)."""
    out = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#") or len(_SIGNIFICANT.findall(s)) < 3:
            continue
        out.append(s)
    return out


def edge_changes(parent_block: str, child_block: str) -> tuple[set[str], set[str]]:
    """(deleted, added) significant lines of one parent -> child edge (set difference of stripped lines)."""
    a, b = set(significant_lines(parent_block)), set(significant_lines(child_block))
    return a - b, b - a


def reintroductions(programs: dict[str, Prog]) -> dict:
    """How often an edit re-adds a line that an ancestor edge had deleted.

    For each edge parent -> child whose parent is in the database, the added lines are compared with the
    union of the lines deleted by every edge on the path from the root to the parent. The rate is the
    share of added lines that are such re-introductions; edges with at least one are counted too."""
    blocks = {pid: p.block() for pid, p in programs.items()}
    edges: dict[str, tuple[set, set]] = {}
    for pid, p in programs.items():
        if p.parent_id in programs and not p.migrant:
            edges[pid] = edge_changes(blocks[p.parent_id], blocks[pid])
    added_total = reintro_total = edges_with = 0
    examples = []
    for pid, (deleted, added) in edges.items():
        ancestors_deleted: set[str] = set()
        cur, seen = programs[pid].parent_id, {pid}
        while cur in programs and cur not in seen:
            seen.add(cur)
            if cur in edges:
                ancestors_deleted |= edges[cur][0]
            cur = programs[cur].parent_id
        back = added & ancestors_deleted
        added_total += len(added)
        reintro_total += len(back)
        if back:
            edges_with += 1
            for line in sorted(back)[:3]:
                examples.append({"program": pid, "iteration": programs[pid].iteration, "line": line})
    return {
        "edges": len(edges), "edges_with_reintroduction": edges_with, "added_lines": added_total,
        "reintroduced_lines": reintro_total, "rate": reintro_total / added_total if added_total else None,
        "examples": examples[:10],
    }


def spearman(progs: list[Prog]) -> dict:
    """Rank correlation of early_val_loss with the final objective over valid programs of one group."""
    from scipy.stats import spearmanr

    pts = [(p.metric("early_val_loss"), p.objective_value(), p.metric("largest_rung_loss"), p.id) for p in progs
           if p.valid and not p.migrant]
    pts = [t for t in pts if t[0] is not None and t[1] is not None]
    out = {"n": len(pts), "points": [{"id": t[3], "early": t[0], "final": t[1]} for t in pts],
           "rho": None, "p": None, "rho_same_rung": None}
    if len(pts) < MIN_SPEARMAN_N:
        out["text"] = (f"Too few points: {len(pts)} valid program(s) with both an early-training validation loss "
                       f"and a final objective (at least {MIN_SPEARMAN_N} are needed). No correlation is reported; "
                       "nothing can be said yet about whether early stopping would mislead.")
        return out
    early, final = [t[0] for t in pts], [t[1] for t in pts]
    if len(set(early)) < 2 or len(set(final)) < 2:
        out["text"] = f"Undefined: the values are constant across the {len(pts)} programs."
        return out
    res = spearmanr(early, final)
    rho, p = float(res.statistic), float(res.pvalue)
    out.update(rho=rho, p=p)
    same = [(t[0], t[2]) for t in pts if t[2] is not None]
    if len(same) >= MIN_SPEARMAN_N and len({s[1] for s in same}) > 1:
        out["rho_same_rung"] = float(spearmanr([s[0] for s in same], [s[1] for s in same]).statistic)
    if rho >= 0.8:
        judgement = "the early loss ranks programs almost as the final objective does"
    elif rho >= 0.5:
        judgement = "the early loss ranks programs only roughly like the final objective: early stopping would " \
                    "misrank some of them"
    else:
        judgement = "the early loss does NOT rank programs like the final objective: early stopping would mislead"
    p_text = f"p = {p:.3g}" if p > 0 else "p < 1e-300"
    out["text"] = f"Spearman rho = {rho:.3f} ({p_text}, n = {len(pts)}): {judgement}."
    return out


def unified_block_diff(seed: Prog | None, best: Prog, framework: str | None) -> tuple[str, str]:
    """(label of the seed used, unified diff of the EVOLVE block)."""
    if seed is not None:
        label, seed_block = f"root ancestor {seed.id[:8]} (iteration {seed.iteration})", seed.block()
    elif framework:
        label = f"pristine seed initial_programs/{framework}.py"
        seed_block = program_mod.split(FRAMEWORKS[framework].seed_source()).block
    else:
        return "none", ""
    diff = difflib.unified_diff(seed_block.splitlines(), best.block().splitlines(), fromfile="seed (EVOLVE block)",
                                tofile=f"best {best.id[:8]} (EVOLVE block)", lineterm="", n=2)
    return label, "\n".join(diff)


def root_of(prog: Prog, programs: dict[str, Prog]) -> Prog | None:
    cur, seen = prog, set()
    while cur.parent_id in programs and cur.id not in seen:
        seen.add(cur.id)
        cur = programs[cur.parent_id]
    return cur if cur.parent_id is None else None


# ----------------------------------------------------------------------------------------------------------
# Plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(fp: str | None) -> str:
    return (fp or "none")[:8]


def plot_fitness(runs: list[Run], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(len(runs), 1, figsize=(7, 2.8 * len(runs)), squeeze=False)
    for ax, run in zip(axes[:, 0], runs):
        progs = run.evolved()
        groups, unver = fingerprint_groups(progs)
        colors = plt.cm.tab10.colors
        for i, (fp, members) in enumerate(sorted(groups.items())):
            c = colors[i % 10]
            ok = [p for p in members if p.valid]
            bad = [p for p in members if not p.valid]
            ax.scatter([p.iteration for p in ok], [p.score for p in ok], color=c, s=18, label=f"valid, fp {_short(fp)}")
            ax.scatter([p.iteration for p in bad], [0.0 for _ in bad], color=c, marker="x", s=18, alpha=0.6,
                       label=f"rejected (0.0), fp {_short(fp)}")
            bsf = best_so_far(members)
            if bsf:
                ax.step([b[0] for b in bsf], [b[1] for b in bsf], where="post", color=c, lw=1.5,
                        label=f"best so far, fp {_short(fp)}")
        if unver:
            ax.scatter([p.iteration for p in unver], [p.score for p in unver], color="grey", marker="^", s=18,
                       label="unverifiable (no ledger row)")
        fails = [e.iteration for e in run.failures]
        if fails:
            ax.scatter(fails, [0.0] * len(fails), color="black", marker="|", s=60, label="failed, log only")
        ax.set_title(f"{run.name} ({run.framework or '?'})", fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel("combined_score")
        ax.legend(fontsize=6, loc="best")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def outcome_table(run: Run) -> dict[int, str]:
    """iteration -> outcome (reason code of the evaluation, or 'log:<kind>' for a log-only failure)."""
    out: dict[int, str] = {}
    for p in run.evolved():
        if p.parent_id is None and p.iteration == 0:
            continue  # the initial program is not an iteration
        out[p.iteration] = p.reason
    for e in run.failures:
        out.setdefault(e.iteration, f"log:{e.kind}")
    return out


def plot_rejections(runs: list[Run], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(len(runs), 1, figsize=(7, 2.8 * len(runs)), squeeze=False)
    for ax, run in zip(axes[:, 0], runs):
        table = outcome_table(run)
        if not table:
            ax.text(0.5, 0.5, "no iterations", ha="center", transform=ax.transAxes)
            continue
        last = max(table)
        width = max(1, math.ceil(last / 20))
        bins = list(range(1, last + 1, width))
        kinds = sorted(set(table.values()), key=lambda k: (k != "ok", k.startswith("log:"), k))
        bottom = [0] * len(bins)
        reject_colors = ["tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan",
                         "tab:blue", "gold", "navy"]
        log_colors = ["0.35", "0.55", "0.75", "0.15", "0.9"]
        n_reject = n_log = 0
        for kind in kinds:
            counts = [sum(1 for it, k in table.items() if k == kind and b <= it < b + width) for b in bins]
            if kind == "ok":
                color = "tab:green"
            elif kind.startswith("log:"):
                color, n_log = log_colors[n_log % len(log_colors)], n_log + 1
            else:
                color, n_reject = reject_colors[n_reject % len(reject_colors)], n_reject + 1
            ax.bar(bins, counts, width=width * 0.9, bottom=bottom, color=color, label=kind, align="edge",
                   hatch="//" if kind.startswith("log:") else None)
            bottom = [x + y for x, y in zip(bottom, counts)]
        ax2 = ax.twinx()
        its = sorted(table)
        valid_cum = [sum(1 for j in its[: k + 1] if table[j] == "ok") / (k + 1) for k in range(len(its))]
        ax2.plot(its, valid_cum, color="black", lw=1.2, label="cumulative validity rate")
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("validity rate")
        ax.set_title(f"{run.name}: outcome of each iteration (bins of {width})", fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel("iterations")
        ax.legend(fontsize=6, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _tree_layout(programs: dict[str, Prog]) -> dict[str, tuple[float, float]]:
    children = defaultdict(list)
    roots = []
    for p in programs.values():
        (children[p.parent_id] if p.parent_id in programs else roots).append(p.id)
    for kids in children.values():
        kids.sort(key=lambda i: (programs[i].iteration, programs[i].timestamp))
    pos, counter = {}, [0]

    def place(pid, depth=0):
        kids = children.get(pid, [])
        if depth > 2000:
            kids = []
        if not kids:
            y = counter[0]
            counter[0] += 1
        else:
            ys = [place(k, depth + 1) for k in kids]
            y = sum(ys) / len(ys)
        pos[pid] = (programs[pid].iteration, y)
        return y

    for r in sorted(roots, key=lambda i: programs[i].iteration):
        place(r)
    return pos


def plot_lineage(run: Run, best_ids: set[str], path: Path) -> bool:
    plt = _plt()
    progs = run.programs
    if not progs:
        return False
    pos = _tree_layout(progs)
    height = min(12, 1.5 + 0.18 * max(1, max(y for _, y in pos.values()) + 1))
    fig, ax = plt.subplots(figsize=(7, height))
    for p in progs.values():
        if p.parent_id in pos:
            (x0, y0), (x1, y1) = pos[p.parent_id], pos[p.id]
            ax.plot([x0, x0, x1], [y0, y1, y1], color="0.7", lw=0.8, zorder=1)
    valid = [p for p in progs.values() if p.valid and p.verified]
    scores = [p.score for p in valid]
    if valid:
        sc = ax.scatter([pos[p.id][0] for p in valid], [pos[p.id][1] for p in valid], c=scores, cmap="viridis",
                        s=30, zorder=2, edgecolors="k", linewidths=0.3)
        fig.colorbar(sc, ax=ax, label="combined_score (valid)", fraction=0.04)
    unver = [p for p in progs.values() if not p.verified]
    if unver:
        ax.scatter([pos[p.id][0] for p in unver], [pos[p.id][1] for p in unver], color="grey", marker="^", s=30,
                   zorder=2, label="unverifiable (no ledger row)")
    bad = [p for p in progs.values() if not p.valid and p.verified]
    ax.scatter([pos[p.id][0] for p in bad], [pos[p.id][1] for p in bad], color="tab:red", marker="x", s=25, zorder=2,
               label="rejected")
    for pid in best_ids:
        if pid in pos:
            ax.scatter([pos[pid][0]], [pos[pid][1]], marker="*", s=200, color="gold", edgecolors="k", zorder=3)
    ax.set_yticks([])
    ax.set_xlabel("iteration found")
    ax.set_title(f"{run.name}: lineage (parent -> child; star = best of a fingerprint group)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def plot_early_vs_final(run: Run, results: dict[str, dict], path: Path) -> bool:
    plt = _plt()
    drawn = False
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, (fp, res) in enumerate(sorted(results.items())):
        pts = res["points"]
        if not pts:
            continue
        drawn = True
        rho = f", rho {res['rho']:.2f}" if res.get("rho") is not None else ", too few points"
        ax.scatter([p["early"] for p in pts], [p["final"] for p in pts], s=20, label=f"fp {_short(fp)} (n={len(pts)}{rho})")
    ax.set_xlabel("early_val_loss (first evaluation, largest rung)")
    ax.set_ylabel("final objective (lower is better)")
    ax.set_title(f"{run.name}: early vs final", fontsize=9)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return drawn


# ----------------------------------------------------------------------------------------------------------
# The report


def _fmt(x, digits=4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        return f"{x:.{digits}f}"
    return str(x)


def text_tree(run: Run, best_ids: set[str], max_lines: int = 400) -> str:
    progs = run.programs
    children = defaultdict(list)
    roots = []
    for p in progs.values():
        (children[p.parent_id] if p.parent_id in progs else roots).append(p)
    lines = []

    def walk(p: Prog, depth: int):
        if len(lines) >= max_lines:
            return
        tag = "ok" if p.valid else p.reason
        extra = " (migrant copy)" if p.migrant else ""
        star = " ★ best" if p.id in best_ids else ""
        parent = "" if p.parent_id is None or p.parent_id in progs else f" (parent {p.parent_id[:8]} not in database)"
        lines.append(f"{'  ' * depth}- {p.id[:8]} it={p.iteration} gen={p.generation} score={p.score:.4f} [{tag}] "
                     f"fp={_short(p.fingerprint_id) if p.verified else 'UNVERIFIABLE'}{extra}{parent}{star}")
        for c in sorted(children.get(p.id, []), key=lambda c: (c.iteration, c.timestamp)):
            walk(c, depth + 1)

    for r in sorted(roots, key=lambda p: (p.iteration, p.timestamp)):
        walk(r, 0)
    if len(lines) >= max_lines:
        lines.append(f"... (truncated at {max_lines} lines)")
    return "\n".join(lines)


def analyze_run(run: Run, out_dir: Path, top: int) -> tuple[dict, list[str]]:
    """The numbers and the Markdown section of one run."""
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", run.name)
    progs = run.evolved()
    groups, unverifiable = fingerprint_groups(progs)
    md: list[str] = []
    summary: dict = {"run": display_path(run.path), "name": run.name, "framework": run.framework,
                     "checkpoint": display_path(run.checkpoint) if run.checkpoint else None,
                     "last_iteration": run.last_iteration, "programs": len(progs),
                     "migrant_copies": sum(1 for p in run.programs.values() if p.migrant), "notes": run.notes}
    valid = [p for p in progs if p.valid]
    iterations = outcome_table(run)
    n_iter = len(iterations)
    summary["validity"] = {"evaluated": len(progs), "valid": len(valid),
                           "rate_of_evaluated": len(valid) / len(progs) if progs else None,
                           "iterations_seen": n_iter,
                           "valid_iterations": sum(1 for v in iterations.values() if v == "ok"),
                           "rate_of_iterations": (sum(1 for v in iterations.values() if v == "ok") / n_iter) if n_iter else None}
    reasons = Counter(p.reason for p in progs)
    summary["reasons"] = dict(reasons)
    summary["log_failures"] = [e.__dict__ for e in sorted(run.failures, key=lambda e: e.iteration)]
    summary["log_failure_kinds"] = dict(Counter(e.kind for e in run.failures))
    after = sorted(i for i in run.log_successes if i > int(run.metadata.get("last_iteration", 0) or 0))
    missing = sorted(i for i, pid in run.log_successes.items() if pid not in run.programs and i not in after)
    summary["completed_after_checkpoint"] = after
    summary["completed_but_not_in_database"] = missing

    md.append(f"## Run `{run.name}` — framework `{run.framework or 'unknown'}`\n")
    md.append(f"- folder: `{display_path(run.path)}`")
    md.append(f"- database: `{display_path(run.checkpoint)}` (the latest checkpoint, a full snapshot)" if run.checkpoint
              else "- database: **none** (no checkpoint)")
    md.append(f"- last iteration seen: {run.last_iteration}; programs evaluated in the database: {len(progs)}"
              f" (+{summary['migrant_copies']} migrant copies, not counted)")
    md.append(f"- logs: {', '.join(f'`{n}`' for n in run.log_files) or 'none'}")
    if run.metadata.get("best_program_id"):
        md.append(f"- OpenEvolve's own `best_program_id`: `{run.metadata['best_program_id'][:8]}` (OpenEvolve "
                  "does not know fingerprints; the rankings below do)")
    if after:
        md.append(f"- {len(after)} iteration(s) completed after the latest checkpoint and are not in the database: {after}")
    if missing:
        md.append(f"- {len(missing)} iteration(s) completed per the logs but their program is not in the database "
                  f"(evicted or not admitted): {missing}")
    for note in run.notes:
        md.append(f"- note: {note}")
    md.append("")

    # Fingerprint groups
    md.append("### Fingerprint groups\n")
    groups_info = []
    for fp, members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        fpd = members[0].ledger_row.get("fingerprint") or {}
        hw = fpd.get("hardware") or {}
        info = {"id": fp, "programs": len(members), "valid": sum(p.valid for p in members),
                "profile": fpd.get("profile"), "objective": fpd.get("objective"),
                "device": hw.get("gpu") or hw.get("cpu"), "harness_code_hash": fpd.get("harness_code_hash"),
                "data_hash": (fpd.get("data_hash") or "")[:12]}
        groups_info.append(info)
    summary["fingerprint_groups"] = groups_info
    if groups_info:
        md.append("| fingerprint | programs | valid | profile | objective | device | harness code | data |")
        md.append("|---|---|---|---|---|---|---|---|")
        for g in groups_info:
            md.append(f"| `{g['id']}` | {g['programs']} | {g['valid']} | {g['profile']} | {g['objective']} | "
                      f"{g['device']} | `{g['harness_code_hash']}` | `{g['data_hash']}` |")
        md.append("")
    if len(groups) > 1:
        md.append(f"**Refusing to rank across fingerprints.** This run holds {len(groups)} fingerprint groups "
                  f"({', '.join(f'`{g}`' for g in sorted(groups))}). Their numbers were produced under different "
                  "hardware, software, budgets, data or harness code, so they are NOT comparable: every ranking "
                  "below is computed within one group only, and no program is ranked against a program of "
                  "another group.\n")
    if unverifiable:
        md.append(f"**Unverifiable: {len(unverifiable)} program(s)** have no ledger row (neither the artifacts' "
                  "`ledger_row` nor the hash of their code matches this ledger), so the conditions that produced "
                  "their numbers are unknown. They are listed, never ranked:\n")
        md.append("| program | iteration | combined_score (as stored) | note |")
        md.append("|---|---|---|---|")
        for p in unverifiable:
            md.append(f"| `{p.id[:8]}` | {p.iteration} | {p.score:.4f} | {p.join_note or 'no ledger row'} |")
        md.append("")
    summary["unverifiable"] = [p.id for p in unverifiable]
    if not groups:
        md.append("No program of this run could be verified against the ledger: nothing is ranked.\n")

    # Fitness
    plot_fitness([run], out_dir / f"{slug}_fitness.png")
    md.append("### Fitness against iteration\n")
    md.append(f"![fitness]({slug}_fitness.png)\n")
    md.append("Dots: valid programs (combined_score, 1.0 = parity with the framework's pristine seed); crosses: "
              "rejected (scored 0.0); ticks: iterations that failed before evaluation (logs only); lines: "
              "best so far, one per fingerprint group.\n")
    ranked: dict[str, list[Prog]] = {}
    best_ids = set()
    summary["groups"] = {}
    for fp, members in sorted(groups.items()):
        r = rank_group(members)
        ranked[fp] = r
        bsf = best_so_far(members)
        gsum = {"best": None, "best_so_far": bsf, "top": []}
        if r:
            best_ids.add(r[0].id)
            gsum["best"] = {"id": r[0].id, "iteration": r[0].iteration, "combined_score": r[0].score,
                            "objective_value": r[0].objective_value()}
        summary["groups"][fp] = gsum
    md.append("| fingerprint | best program | found at iteration | combined_score | objective value |")
    md.append("|---|---|---|---|---|")
    for fp, gsum in summary["groups"].items():
        b = gsum["best"]
        if b:
            md.append(f"| `{fp}` | `{b['id'][:8]}` | {b['iteration']} | {b['combined_score']:.4f} | "
                      f"{_fmt(b['objective_value'])} |")
        else:
            md.append(f"| `{fp}` | none valid | – | – | – |")
    md.append("")

    # Validity and rejections
    plot_rejections([run], out_dir / f"{slug}_rejections.png")
    v = summary["validity"]
    md.append("### Validity and rejections\n")
    rate = f" = {v['rate_of_evaluated']:.1%}" if progs else ""
    md.append(f"- validity rate of evaluated programs: **{len(valid)}/{len(progs)}{rate}**")
    if n_iter:
        md.append(f"- validity rate of iterations (log-only failures included): **{v['valid_iterations']}/{n_iter} = "
                  f"{v['rate_of_iterations']:.1%}**")
    md.append("")
    md.append(f"![rejections]({slug}_rejections.png)\n")
    md.append("| reason code | programs |")
    md.append("|---|---|")
    for reason, count in reasons.most_common():
        md.append(f"| `{reason}` | {count} |")
    md.append("")

    # Log-only failures
    md.append("### Failed iterations that exist only in the logs\n")
    if run.failures:
        kinds = Counter(e.kind for e in run.failures)
        md.append(f"{len(run.failures)} iteration(s) produced no program ("
                  + ", ".join(f"{k}: {n}" for k, n in kinds.most_common()) + "). OpenEvolve does not store them "
                  "in its database.\n")
        md.append("| iteration | kind | message |")
        md.append("|---|---|---|")
        for e in sorted(run.failures, key=lambda e: e.iteration)[:100]:
            md.append(f"| {e.iteration} | `{e.kind}` | {e.message[:160].replace('|', '/')} |")
    else:
        md.append("None found" + (" (no logs)." if not run.log_files else "."))
    if run.partial_matches:
        md.append(f"\n{run.partial_matches} iteration(s) applied only some of their SEARCH blocks (warning, still evaluated).")
    md.append("")

    # Lineage
    md.append("### Lineage\n")
    if plot_lineage(run, best_ids, out_dir / f"{slug}_lineage.png"):
        md.append(f"![lineage]({slug}_lineage.png)\n")
    else:
        md.append("No program in the database.\n")
    md.append("<details><summary>Indented tree (parent → children)</summary>\n")
    md.append("```\n" + text_tree(run, best_ids) + "\n```\n</details>\n")

    # Diff of the best program(s)
    md.append("### The best program against its seed\n")
    summary["diffs"] = {}
    for fp, r in ranked.items():
        if not r:
            continue
        best = r[0]
        seed = root_of(best, run.programs)
        label, diff = unified_block_diff(seed, best, best.framework or run.framework)
        summary["diffs"][fp] = {"best": best.id, "seed": label, "diff": diff}
        md.append(f"Fingerprint `{fp}`: best `{best.id[:8]}` (iteration {best.iteration}, combined_score "
                  f"{best.score:.4f}) against {label}:\n")
        md.append("```diff\n" + (diff or "(no difference in the block)") + "\n```\n")
    if not summary["diffs"]:
        md.append("No valid, verifiable program.\n")

    # Top programs
    md.append(f"### Top programs (ranked within each fingerprint group; top {top})\n")
    for fp, r in ranked.items():
        rows = []
        for rank, p in enumerate(r[:top], 1):
            row = {"rank": rank, "id": p.id, "iteration": p.iteration, "combined_score": p.score,
                   "objective_value": p.objective_value(), "param_ratio": p.metric("param_ratio"),
                   "flop_ratio": p.metric("flop_ratio"), "step_time_ratio": p.metric("step_time_ratio"),
                   "memory_ratio": p.metric("memory_ratio"), "early_val_loss": p.metric("early_val_loss")}
            rows.append(row)
        summary["groups"][fp]["top"] = rows
        md.append(f"Fingerprint `{fp}` ({len(r)} valid):\n")
        md.append("| rank | program | iteration | combined_score | objective | param ratio | FLOP ratio | "
                  "step-time ratio | memory ratio |")
        md.append("|---|---|---|---|---|---|---|---|---|")
        for row in rows:
            md.append(f"| {row['rank']} | `{row['id'][:8]}` | {row['iteration']} | {row['combined_score']:.4f} | "
                      f"{_fmt(row['objective_value'])} | {_fmt(row['param_ratio'], 3)} | {_fmt(row['flop_ratio'], 3)} | "
                      f"{_fmt(row['step_time_ratio'], 2)} | {_fmt(row['memory_ratio'], 2)} |")
        md.append("")

    # Early vs final
    md.append("### Does early training predict the final objective?\n")
    sp = {fp: spearman(members) for fp, members in sorted(groups.items())}
    summary["spearman"] = {fp: {k: v for k, v in res.items() if k != "points"} for fp, res in sp.items()}
    for fp, res in sp.items():
        md.append(f"- fingerprint `{fp}`: {res['text']}"
                  + (f" (against the largest rung's final loss, the same rung as the early loss: rho = "
                     f"{res['rho_same_rung']:.3f})" if res.get("rho_same_rung") is not None else ""))
    if not sp:
        md.append("- no verifiable programs.")
    if plot_early_vs_final(run, sp, out_dir / f"{slug}_early_vs_final.png"):
        md.append(f"\n![early vs final]({slug}_early_vs_final.png)")
    md.append("")

    # Re-introductions
    ri = reintroductions(run.programs)
    summary["reintroductions"] = ri
    md.append("### Re-introduced code\n")
    if ri["added_lines"]:
        md.append(f"Along the lineage, **{ri['reintroduced_lines']} of {ri['added_lines']} added lines "
                  f"({ri['rate']:.1%})** re-introduce a line that an ancestor edge had deleted; "
                  f"{ri['edges_with_reintroduction']} of {ri['edges']} parent→child edges contain at least one. "
                  "(Lines compared stripped; blank, comment-only and near-empty lines ignored.)\n")
        for ex in ri["examples"][:5]:
            md.append(f"- `{ex['program'][:8]}` (iteration {ex['iteration']}) re-adds `{ex['line'][:100]}`")
    else:
        md.append(f"No edge added any line ({ri['edges']} edges).")
    md.append("")
    return summary, md


def _per_framework_table(summaries: list[dict]) -> list[str]:
    md = ["## Per-framework comparison\n",
          "combined_score is each framework's ratio to its OWN pristine seed (1.0 = parity). Best scores are "
          "shown per fingerprint group and are comparable only between rows with the same fingerprint.\n",
          "| run | framework | iterations | evaluated | valid | validity | log-only failures | best combined_score "
          "(per fingerprint) | re-introduction rate | Spearman early/final |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        v = s["validity"]
        bests = "; ".join(f"{g['best']['combined_score']:.4f} (`{fp[:8]}`)" for fp, g in s["groups"].items() if g["best"])
        rho = "; ".join(f"{r['rho']:.2f} (`{fp[:8]}`)" if r.get("rho") is not None else f"n={r['n']}, too few (`{fp[:8]}`)"
                        for fp, r in s["spearman"].items())
        rate = s["reintroductions"]["rate"]
        md.append(f"| `{s['name']}` | {s['framework']} | {s['last_iteration']} | {v['evaluated']} | {v['valid']} | "
                  f"{_fmt(v['rate_of_evaluated'], 3) if v['rate_of_evaluated'] is not None else '–'} | "
                  f"{len(s['log_failures'])} | {bests or '–'} | {f'{rate:.1%}' if rate is not None else '–'} | {rho or '–'} |")
    fps = {fp for s in summaries for fp in s["groups"]}
    if len(fps) > 1:
        md.append(f"\n**Not comparable across fingerprints:** these runs span {len(fps)} fingerprint groups "
                  f"({', '.join(f'`{f[:8]}`' for f in sorted(fps))}); frameworks evaluated under different "
                  "fingerprints are not ranked against each other.")
    md.append("")
    return md


def analyze(run_dirs: list[Path], ledger_path: Path | None = None, out_dir: Path | None = None,
            name: str | None = None, top: int = 10) -> dict:
    """Analyse one or more runs; write ``report.md``, ``analysis.json`` and PNGs to ``out_dir``."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        from harness.profiles import ConfigError

        raise ConfigError("matplotlib is not installed (the report's plots need it): pip install -e '.[plots]'")
    run_dirs = [Path(r) for r in run_dirs]
    ledger_path = Path(ledger_path or ledger_mod.default_ledger_path())
    rows = ledger_mod.evaluations(ledger_path) if ledger_path.exists() else []
    name = name or "+".join(r.resolve().name for r in run_dirs)
    out_dir = Path(out_dir) if out_dir else REPO_ROOT / "results" / "analysis" / name
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [load_run(r, rows) for r in run_dirs]
    md = [f"# Evolution analysis: {name}\n",
          f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `harness analyze` from {len(runs)} run(s) and the "
          f"ledger `{display_path(ledger_path)}` ({len(rows)} rows{'' if ledger_path.exists() else ', FILE NOT FOUND'}).\n"]
    summaries, sections = [], []
    for run in runs:
        s, section = analyze_run(run, out_dir, top)
        summaries.append(s)
        sections += section
    md += _per_framework_table(summaries)
    md += sections
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    result = {"name": name, "ledger": display_path(ledger_path), "out_dir": display_path(out_dir), "runs": summaries}
    (out_dir / "analysis.json").write_text(json.dumps(result, indent=1, default=str))
    result["report_path"] = str(out_dir / "report.md")
    return result


def cmd_analyze(args: argparse.Namespace) -> int:
    for r in args.runs:
        if not Path(r).is_dir():
            print(f"harness analyze: {r} is not a folder", flush=True)
            return 2
    result = analyze([Path(r) for r in args.runs], Path(args.ledger) if args.ledger else None,
                     Path(args.out) if args.out else None, args.name, args.top)
    for s in result["runs"]:
        v = s["validity"]
        bests = ", ".join(f"{g['best']['combined_score']:.4f} (fp {fp[:8]})" for fp, g in s["groups"].items() if g["best"])
        print(f"{s['name']} [{s['framework']}]: {v['evaluated']} evaluated, {v['valid']} valid, "
              f"{len(s['log_failures'])} log-only failures, best {bests or 'none'}, "
              f"{len(s['fingerprint_groups'])} fingerprint group(s), {len(s['unverifiable'])} unverifiable")
    print(f"report: {result['report_path']}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("analyze", help="post-hoc analysis of OpenEvolve output folders joined to the ledger")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="OpenEvolve output folder(s), one per framework")
    p.add_argument("--ledger", help="ledger file (default: $HARNESS_LEDGER or results/ledger.sqlite)")
    p.add_argument("--out", help="report folder (default: results/analysis/<name>/)")
    p.add_argument("--name", help="report name (default: the run folders' names)")
    p.add_argument("--top", type=int, default=10, help="programs per fingerprint group in the top table")
    p.set_defaults(func=cmd_analyze)

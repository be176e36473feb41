"""What is computed from loaded runs: fingerprint groups and rankings, best so far, lineage and re-introduced
code, the early/final rank correlation, the best program's diff, the outcome of each iteration.

Programs are ranked only within one fingerprint group (same hardware, software, budget, data, tokenizer
and harness code): numbers from different groups were produced under different conditions and are never
put in one ranking. Programs with no ledger row are listed as unverifiable and never ranked.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import defaultdict

from harness.analysis.runs import Prog, Run
from harness.trusted import program as program_mod
from harness.trusted.frameworks import FRAMEWORKS

MIN_SPEARMAN_N = 5


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

"""What is computed from loaded runs: fingerprint groups and rankings, best so far, lineage and re-introduced
code, the early/final rank correlation, the best program's diff, the outcome of each iteration, and where
the users' stopping rules would have stopped a run.

Programs are ranked only within one fingerprint group (same hardware, software, budget, data, tokenizer
and harness code): numbers from different groups were produced under different conditions and are never
put in one ranking. Programs with no ledger row are listed as unverifiable and never ranked. Programs whose
EVOLVE block is the same text count once in a ranking or a correlation: a re-evaluated copy is not a second
data point.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter, defaultdict

from harness.analysis.runs import Prog, Run
from harness.trusted import program as program_mod
from harness.trusted.frameworks import FRAMEWORKS
from harness.trusted.profiles import PROFILES
from harness.trusted.scoring import of_a_compiling_profile, plain_text, trained_eagerly
from harness.validation.stats import format_p, seeded

MIN_SPEARMAN_N = 5
SPEARMAN_ALPHA = 0.05  # rho's permutation p below it, with an interval above 0, says the two go together
# The permutation test enumerates every pairing up to 9! = 362,880 (under a second); above, a fixed-seed
# Monte Carlo sample of pairings. The bootstrap of rho uses a fixed seed as well, so a report is reproducible.
EXACT_PERMUTATIONS_MAX = math.factorial(9)
MONTE_CARLO_RESAMPLES = 99_999
BOOTSTRAP_RESAMPLES = 9_999

# The users' stopping rules, flagged after the fact (nothing is stopped). PATIENCE and CONVERGENCE_THRESHOLD
# are early_stopping_patience and convergence_threshold of openevolve_configs/*.yaml.
PATIENCE = 10
CONVERGENCE_THRESHOLD = 0.001
MAX_INVALID_IN_A_ROW = 5
LOW_SCORE = 0.5  # combined_score = exp(fitness - baseline fitness): 1.0 is the baseline
MAJORITY_MIN_ITERATIONS = 10  # "most iterations" is judged only once this many iterations (or all) are seen


def fingerprint_groups(progs: list[Prog]) -> tuple[dict[str, list[Prog]], list[Prog]]:
    groups: dict[str, list[Prog]] = defaultdict(list)
    unverifiable = []
    for p in progs:
        (groups[p.fingerprint_id] if p.verified else unverifiable).append(p)
    return dict(groups), unverifiable


def block_key(p: Prog) -> str:
    """The EVOLVE block as compared for duplicates: stripped, trailing spaces of each line dropped."""
    return "\n".join(line.rstrip() for line in p.block().strip().splitlines())


def dedupe(progs: list[Prog]) -> tuple[list[Prog], dict[str, list[str]]]:
    """(one program per distinct EVOLVE block, representative id -> ids of the copies merged into it).

    The representative is the best evaluation of the block: valid first, then the highest combined_score,
    then the earliest. Copies arise when the proposer re-proposes a block or an edit is undone later."""
    kept, seen, merged = [], {}, {}
    for p in sorted(progs, key=lambda p: (not p.valid, -p.score, p.iteration, p.timestamp)):
        key = block_key(p)
        if key in seen:
            merged[seen[key]].append(p.id)
        else:
            seen[key] = p.id
            merged[p.id] = []
            kept.append(p)
    return kept, {rep: copies for rep, copies in merged.items() if copies}


def rank_group(progs: list[Prog]) -> list[Prog]:
    """Valid programs of ONE fingerprint group, one per distinct EVOLVE block, best first (combined_score,
    then earlier iteration)."""
    fps = {p.fingerprint_id for p in progs}
    if len(fps) > 1 or None in fps:
        raise ValueError(f"refusing to rank programs across fingerprints {sorted(map(str, fps))}")
    return sorted((p for p in dedupe(progs)[0] if p.valid), key=lambda p: (-p.score, p.iteration, p.timestamp))


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


def early_step(p: Prog) -> tuple[int | None, str]:
    """(training step of early_val_loss, where that step comes from).

    The evaluator records it as the metric ``early_val_step`` (harness/trusted/scoring.py, objective_metrics:
    the first point of the largest rung's validation curve). Rows written before it existed are given the
    first validation step of the profile their fingerprint names, min(eval_interval_steps, steps), as the
    training loop validates every eval_interval_steps and at the end; only if that profile is unchanged."""
    step = p.metric("early_val_step")
    if step is not None:
        return int(step), "metric early_val_step"
    fp = (p.ledger_row or {}).get("fingerprint") or {}
    profile = PROFILES.get(fp.get("profile"))
    if profile is None:
        return None, "unknown: no early_val_step metric and no known profile in the fingerprint"
    if fp.get("profile_digest") and fp["profile_digest"] != profile.digest():
        return None, f"unknown: no early_val_step metric and profile {profile.name} has changed since"
    return min(profile.eval_interval_steps, profile.steps), f"first validation of profile {profile.name}"


def _pearson(x, y, axis=-1):
    """Pearson correlation along ``axis`` (of ranks: Spearman's rho); nan where a variable is constant."""
    import numpy as np

    x = x - x.mean(axis=axis, keepdims=True)
    y = y - y.mean(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(axis=axis) / np.sqrt((x * x).sum(axis=axis) * (y * y).sum(axis=axis))


def spearman_test(early: list[float], final: list[float]) -> dict:
    """rho, its two-sided permutation p-value and a 95% bootstrap interval.

    The p-value comes from the permutation distribution of rho (the asymptotic t approximation gives absurd
    values such as p < 1e-300 for rho = 1 with a handful of points): exact when every pairing can be
    enumerated, else a fixed-seed Monte Carlo sample, whose smallest possible p is 1/(resamples + 1).
    The interval is the percentile bootstrap over paired resamples: BCa needs a jackknife that is undefined
    when rho is +-1 or the data are tied. Resamples in which a variable is constant (all copies of one
    point) have no rho and are left out; their number is recorded."""
    import warnings

    import numpy as np
    from scipy.stats import bootstrap, permutation_test, rankdata

    x, y = rankdata(early), rankdata(final)
    n = len(x)
    exact = math.factorial(n) <= EXACT_PERMUTATIONS_MAX
    resamples = math.factorial(n) if exact else MONTE_CARLO_RESAMPLES
    perm = permutation_test((x,), lambda xs, axis=-1: _pearson(xs, y, axis), permutation_type="pairings",
                            vectorized=True, n_resamples=resamples, batch=max(1, 5_000_000 // n),
                            alternative="two-sided", **seeded(permutation_test))

    def rho_of(a, b, axis=-1):
        return _pearson(rankdata(a, axis=axis), rankdata(b, axis=axis), axis)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about the undefined resamples, counted below
        boot = bootstrap((np.asarray(early, float), np.asarray(final, float)), rho_of, paired=True, vectorized=True,
                         n_resamples=BOOTSTRAP_RESAMPLES, method="percentile", batch=max(1, 2_000_000 // n),
                         **seeded(bootstrap))
    dist = np.asarray(boot.bootstrap_distribution)
    defined = dist[np.isfinite(dist)]
    low, high = (float(v) for v in np.percentile(defined, [2.5, 97.5])) if defined.size else (None, None)
    return {"rho": float(_pearson(x, y)), "p": float(perm.pvalue),
            "p_method": "exact permutation" if exact else f"Monte Carlo permutation, {resamples} resamples",
            "ci_low": low, "ci_high": high,
            "ci_method": f"percentile bootstrap, {BOOTSTRAP_RESAMPLES} paired resamples",
            "ci_undefined_resamples": int(dist.size - defined.size)}


def early_ranking_judgement(p: float, low: float | None, high: float | None) -> str:
    """What the interval of rho (not its point estimate) says about ranking programs by their early loss: at
    least 0.8, at least 0.5, or below 0.5 across the whole interval; otherwise the data cannot tell."""
    if low is not None and low >= 0.8:
        return "the early loss ranks programs almost as the final objective does (the whole interval is above 0.8)"
    if low is not None and low >= 0.5:
        return ("the early loss ranks programs at least roughly like the final objective (the whole interval is "
                "above 0.5), though early stopping may misrank some of them")
    if high is not None and high < 0.5:
        return ("the early loss does NOT rank programs like the final objective (the whole interval is below 0.5): "
                "early stopping would mislead")
    if p < SPEARMAN_ALPHA and low is not None and low > 0:
        return ("the early loss goes with the final objective, but the interval reaches below 0.5: the data cannot "
                "tell whether it ranks programs well enough for early stopping; more distinct programs would tell")
    where = "there is no interval" if low is None else "the interval reaches both below and above 0.5"
    return (f"the data cannot tell how well the early loss ranks programs ({where}): nothing can be said yet about "
            "whether early stopping would mislead; more distinct programs would tell")


def spearman(progs: list[Prog]) -> dict:
    """Rank correlation of early_val_loss with the final objective over valid programs of one group, one
    program per distinct EVOLVE block."""
    candidates = [p for p in progs if not p.migrant]
    distinct, merged = dedupe(candidates)
    pts = [(p.metric("early_val_loss"), p.objective_value(), p.metric("largest_rung_loss"), p) for p in distinct
           if p.valid]
    pts = [t for t in pts if t[0] is not None and t[1] is not None]
    n_merged = sum(len(v) for v in merged.values())
    steps = {early_step(t[3]) for t in pts}
    step_values = sorted({s for s, _ in steps if s is not None})
    out = {"n": len(pts), "duplicates_merged": n_merged,
           "points": [{"id": t[3].id, "early": t[0], "final": t[1]} for t in pts],
           "rho": None, "p": None, "p_method": None, "ci_low": None, "ci_high": None, "rho_same_rung": None,
           "early_step": step_values[0] if len(step_values) == 1 else None, "early_steps": step_values,
           "early_step_source": "; ".join(sorted({src for _, src in steps}))}
    source = out["early_step_source"]
    if len(step_values) == 1:
        step_text = f"early_val_loss taken at training step {step_values[0]} of the largest rung ({source})"
    elif step_values:
        step_text = f"early_val_loss taken at different steps across programs: {step_values} ({source})"
    else:
        step_text = f"the step of early_val_loss is {source or 'unknown'}"
    dup_text = f", {n_merged} duplicate(s) of an identical EVOLVE block merged" if n_merged else ""
    if len(pts) < MIN_SPEARMAN_N:
        out["text"] = (f"Too few points: {len(pts)} valid program(s) with both an early-training validation loss "
                       f"and a final objective (at least {MIN_SPEARMAN_N} are needed{dup_text}). No correlation is "
                       "reported; nothing can be said yet about whether early stopping would mislead.")
        return out
    early, final = [t[0] for t in pts], [t[1] for t in pts]
    if len(set(early)) < 2 or len(set(final)) < 2:
        out["text"] = f"Undefined: the values are constant across the {len(pts)} programs{dup_text}."
        return out
    out.update(spearman_test(early, final))
    rho = out["rho"]
    same = [(t[0], t[2]) for t in pts if t[2] is not None]
    if len(same) >= MIN_SPEARMAN_N and len({s[1] for s in same}) > 1:
        from scipy.stats import spearmanr

        out["rho_same_rung"] = float(spearmanr([s[0] for s in same], [s[1] for s in same]).statistic)
    judgement = early_ranking_judgement(out["p"], out["ci_low"], out["ci_high"])
    ci = (f"95% CI {out['ci_low']:.2f} to {out['ci_high']:.2f}, {out['ci_method']}" if out["ci_low"] is not None
          else "no bootstrap interval: every resample was degenerate")
    out["text"] = (f"Spearman rho = {rho:.3f} (p = {format_p(out['p'])} ({out['p_method']}); {ci}; "
                   f"n = {len(pts)} distinct programs{dup_text}); {step_text}: {judgement}.")
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


# Outcomes that say nothing of a program: the harness's machine failed (infrastructure), or the LLM service gave
# no answer. Rule (b) counts invalid programs, so these neither count nor break a run of invalid ones.
NOT_THE_PROGRAM = frozenset({"infrastructure", "log:llm_failed", "log:llm_none", "log:submit_error"})


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


def _evaluated_iterations(run: Run) -> list[Prog]:
    """The programs of the iterations, in order: the initial program is not an iteration."""
    return [p for p in run.evolved() if not (p.parent_id is None and p.iteration == 0)]


def stopping_rules(run: Run) -> list[dict]:
    """Where each of the users' stopping rules would first have stopped the run (flagged, nothing stopped).

    (a) no improvement: OpenEvolve 0.4.0's own early stopping with early_stopping_patience = PATIENCE
        (process_parallel.py): over the iterations that produced a program, in order, the best
        combined_score starts at -inf and an iteration improves it only by at least CONVERGENCE_THRESHOLD;
        rejected programs count (score 0.0), iterations that produced no program do not.
    (b) invalid in a row: more than MAX_INVALID_IN_A_ROW consecutive iterations without a valid program
        (a rejected program, or a log-only failure that produced none). An iteration whose failure was the
        machine's or the LLM service's (``NOT_THE_PROGRAM``) neither counts nor breaks the run of invalid ones.
    (c) low fitness: a valid program with combined_score < LOW_SCORE, i.e. exp(fitness - baseline fitness)
        more than 50% below the baseline (for final_loss: a perplexity more than twice the baseline's).
        Rejections score 0.0 by rule, not by fitness: they are (b)'s.
    (d) mostly non-finite: more than half of the iterations seen so far rejected as ``nonfinite``, judged
        from the MAJORITY_MIN_ITERATIONS-th iteration on (or at the last, in a shorter run)."""
    progs = _evaluated_iterations(run)
    rules = []

    best, stale, longest, fired, best_at_fire = -math.inf, 0, 0, None, None
    for p in progs:
        if p.score - best >= CONVERGENCE_THRESHOLD:
            best, stale = p.score, 0
        else:
            stale += 1
        longest = max(longest, stale)
        if stale >= PATIENCE and fired is None:
            fired, best_at_fire = p.iteration, best
    rules.append({"rule": "no_improvement",
                  "description": f"no improvement of the best combined_score (by >= {CONVERGENCE_THRESHOLD}) in "
                                 f"{PATIENCE} consecutive evaluated iterations",
                  "fired_at": fired,
                  "detail": (f"best {best_at_fire:.4f}, not improved for {PATIENCE} evaluated iterations"
                             if fired is not None else
                             f"longest stretch without improvement: {longest} evaluated iteration(s)")})

    table = outcome_table(run)
    its = sorted(table)
    streak, longest, fired = 0, 0, None
    for it in its:
        if table[it] in NOT_THE_PROGRAM:
            continue
        streak = 0 if table[it] == "ok" else streak + 1
        longest = max(longest, streak)
        if streak > MAX_INVALID_IN_A_ROW and fired is None:
            fired = it
    rules.append({"rule": "invalid_in_a_row",
                  "description": f"more than {MAX_INVALID_IN_A_ROW} invalid iterations in a row (rejected, or no "
                                 "program: log-only failure; the machine's and the LLM service's failures skipped)",
                  "fired_at": fired, "detail": f"longest run of invalid iterations: {longest}"})

    low = [p for p in progs if p.valid and p.score < LOW_SCORE]
    rules.append({"rule": "low_fitness",
                  "description": f"a valid program with combined_score < {LOW_SCORE} (fitness more than 50% below "
                                 "the baseline's)",
                  "fired_at": low[0].iteration if low else None,
                  "detail": (f"{len(low)} valid program(s) below {LOW_SCORE}, lowest {min(p.score for p in low):.4f}"
                             if low else f"no valid program below {LOW_SCORE}")})

    nonfinite, fired = 0, None
    for k, it in enumerate(its, 1):
        nonfinite += table[it] == "nonfinite"
        if fired is None and k >= min(MAJORITY_MIN_ITERATIONS, len(its)) and nonfinite > k / 2:
            fired = it
    rules.append({"rule": "mostly_nonfinite",
                  "description": "non-finite values (reason nonfinite) in most iterations",
                  "fired_at": fired,
                  "detail": f"{nonfinite} of {len(its)} iteration(s) nonfinite" if its else "no iterations"})
    return rules


def compile_fallbacks(progs: list[Prog]) -> dict:
    """Which evaluations trained under a profile that compiles (their runs name a compile mode) and which of them
    trained eagerly because torch.compile failed, from the training records in their ledger rows; and those of the
    rest with a run that did not say whether it compiled (``compiled`` recorded as neither true nor false), which
    are counted neither way."""
    compiling, eager, unknown, errors = 0, [], [], Counter()
    for p in progs:
        runs = [r for r in (p.ledger_row or {}).get("runs") or [] if of_a_compiling_profile(r)]
        if not runs:
            continue
        compiling += 1
        failed = [r for r in runs if trained_eagerly(r)]
        if failed:
            eager.append(p.id)
            errors[plain_text(str(failed[0].get("compile_error") or "no error recorded"), 120)] += 1
        elif any(not isinstance(r.get("compiled"), bool) for r in runs):
            unknown.append(p.id)
    return {"compiling_evaluations": compiling, "trained_eagerly": eager, "not_reported": unknown,
            "errors": dict(errors.most_common(5))}

"""The statistics of ``harness validate`` applied to the runs: per seed, per comparison (``compare``: Welch's
t-test, Cohen's d, wins, scaling fits, ...), and across the family of one invocation (``decide``: Holm-Bonferroni
and the verdict against the pre-registered criteria)."""

from __future__ import annotations

import math

from harness.validation import stats


def seed_table(base_runs: list[dict], cand_runs: list[dict]) -> list[dict]:
    rows = []
    for b, c in zip(base_runs, cand_runs):
        row = {"seed": b["seed"], "baseline": b["record"]["value"] if b["ok"] else None,
               "candidate": c["record"]["value"] if c["ok"] else None,
               "baseline_fp": b["fingerprint_id"], "candidate_fp": c["fingerprint_id"],
               "baseline_reason": b["reason"], "candidate_reason": c["reason"]}
        for side, run in (("baseline", b), ("candidate", c)):
            if run["ok"]:
                for r in run["record"]["runs"]:
                    row[f"{side}_loss_d{r['rung'][0]}_l{r['rung'][1]}"] = r["final_val_loss"]
        if row["baseline"] is not None and row["candidate"] is not None:
            row["diff"] = row["candidate"] - row["baseline"]
            row["candidate_better"] = row["candidate"] < row["baseline"]
        rows.append(row)
    return rows


def ladder_points(runs: list[dict]) -> list[tuple[list[float], list[float]]]:
    out = []
    for r in runs:
        if r["ok"] and len(r["record"]["runs"]) >= 2:
            out.append(([x["non_embedding_params"] for x in r["record"]["runs"]],
                        [x["final_val_loss"] for x in r["record"]["runs"]]))
    return out


def compare(base_runs: list[dict], cand_runs: list[dict]) -> dict:
    """Everything but the Holm adjustment and the verdict, which need the whole family."""
    rows = seed_table(base_runs, cand_runs)
    paired = [r for r in rows if r["baseline"] is not None and r["candidate"] is not None]
    b = [r["baseline"] for r in rows if r["baseline"] is not None]
    c = [r["candidate"] for r in rows if r["candidate"] is not None]
    w = stats.welch(c, b)
    d = stats.cohens_d(c, b)
    out = {
        "seeds": rows,
        "n_seeds": len(rows),
        "failed_candidate_seeds": [r["seed"] for r in rows if r["candidate"] is None],
        "failed_baseline_seeds": [r["seed"] for r in rows if r["baseline"] is None],
        "welch": w.to_dict(),
        "cohens_d": d,
        "d_interpretation": stats.interpret_d(d),
        "wins": stats.wins([r["candidate"] for r in paired], [r["baseline"] for r in paired]),
        "paired_t": stats.paired([r["candidate"] for r in paired], [r["baseline"] for r in paired]),
        "required_wins": stats.required_wins(len(rows)),
        "improvement": stats.improvement_frac(w.mean_a, w.mean_b),
    }
    bl, cl = ladder_points(base_runs), ladder_points(cand_runs)
    if bl and cl:
        fb, fc = stats.scaling_fits(bl), stats.scaling_fits(cl)
        slope_test = stats.welch([s["b"] for s in fc["per_seed"]], [s["b"] for s in fb["per_seed"]])
        out["scaling"] = {"baseline": fb, "candidate": fc, "slope_welch": slope_test.to_dict(),
                          "slope_better": bool(fc["mean_slope"] < fb["mean_slope"])}
    else:
        out["scaling"] = None
    return out


def decide(comparisons: list[dict], external_p: list[float] | None = None) -> int:
    """Holm-adjust the raw Welch p-values of the family and attach each verdict (in place); returns the
    family size (testable comparisons of this invocation plus those of ``external_p``)."""
    raw = [c["stats"]["welch"]["p"] if c.get("stats") else math.nan for c in comparisons]
    adjusted = stats.holm(raw + list(external_p or []))[: len(raw)]
    family = sum(1 for p in raw + list(external_p or []) if not math.isnan(p))
    for c, p_adj in zip(comparisons, adjusted):
        if not c.get("stats"):
            continue
        s = c["stats"]
        s["p_holm"] = p_adj
        s["holm_family_size"] = family
        failed = s["failed_candidate_seeds"] or s["failed_baseline_seeds"]
        slope_better = s["scaling"]["slope_better"] if s["scaling"] else None
        v = stats.verdict(p_adj, s["welch"]["diff"], s["improvement"], s["wins"], s["n_seeds"], s["cohens_d"],
                          slope_better)
        if failed:
            who = (f"the candidate failed to train on seeds {s['failed_candidate_seeds']}" if s["failed_candidate_seeds"]
                   else f"the baseline failed to train on seeds {s['failed_baseline_seeds']}")
            v = stats.Verdict("failed", f"No claim possible: {who}. The statistics below use the seeds that "
                              "trained and are for information only. Not significant.", v.criteria)
        elif slope_better is None and v.level in ("minimum",):
            v.text += " The scaling slope was not measured (--no-ladder), so 'strong' cannot be assessed."
        s["verdict"] = v.to_dict()
    return family

"""The statistics of ``harness validate`` applied to the runs: per seed and per comparison (``compare``: the
pre-registered paired test on the final validation loss at the reference size, Welch's test as a robustness
check, wins, the scaling slopes and their paired test, secondary measures, cost), across the family of one
invocation (``decide``: Holm's correction and the verdict), and across frameworks (``across_frameworks``)."""

from __future__ import annotations

import math
import re

from harness.validation import stats

SECONDARY = ("grad_norm_mean", "grad_norm_var", "loss_roughness", "steps_to_90pct", "ms_per_step", "wall_s",
             "peak_memory_mib")


def reference_run(run: dict, reference: tuple) -> dict | None:
    """The run of the reference rung in a training job's record."""
    if not run["ok"]:
        return None
    return next((r for r in run["record"]["runs"] if tuple(r["rung"]) == tuple(reference)), None)


def steps_to_fraction(curve: list, fraction: float = 0.9) -> int | None:
    """The first step at which the training loss has covered ``fraction`` of its drop from the first point of
    the curve to the last (the curve's points are window means, about 100 per run)."""
    if not curve or len(curve) < 2:
        return None
    first, last = curve[0][1], curve[-1][1]
    if not first > last:
        return None
    target = first - fraction * (first - last)
    return next(int(s) for s, v in curve if v <= target)


def secondary(run: dict, reference: tuple) -> dict:
    r = reference_run(run, reference)
    if r is None:
        return {}
    out = {k: r.get(k) for k in SECONDARY if k != "steps_to_90pct"}
    out["steps_to_90pct"] = steps_to_fraction(r.get("train_curve") or [])
    return out


def seed_table(base_runs: list[dict], cand_runs: list[dict], reference: tuple) -> list[dict]:
    rows = []
    for b, c in zip(base_runs, cand_runs):
        row = {"seed": b["seed"], "baseline": b["record"]["value"] if b["ok"] else None,
               "candidate": c["record"]["value"] if c["ok"] else None,
               "baseline_fp": b["fingerprint_id"], "candidate_fp": c["fingerprint_id"],
               "baseline_reason": b["reason"], "candidate_reason": c["reason"],
               "baseline_secondary": secondary(b, reference), "candidate_secondary": secondary(c, reference)}
        for side, run in (("baseline", b), ("candidate", c)):
            if run["ok"]:
                for r in run["record"]["runs"]:
                    row[f"{side}_loss_d{r['rung'][0]}_l{r['rung'][1]}"] = r["final_val_loss"]
        if row["baseline"] is not None and row["candidate"] is not None:
            row["diff"] = row["candidate"] - row["baseline"]
            row["candidate_better"] = row["candidate"] < row["baseline"]
        rows.append(row)
    return rows


def _size_order(size: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", size))


def per_size(rows: list[dict]) -> list[dict] | None:
    """H4, improvements hold across sizes: the paired difference at each size trained, over the seeds where both
    sides trained it. Descriptive: the design registers no test of H4 (its test of scaling is the slope's), so
    these p-values are neither corrected nor part of any verdict. None with one size."""
    sizes = sorted({k[len("baseline_loss_"):] for r in rows for k in r if k.startswith("baseline_loss_")},
                   key=_size_order)
    if len(sizes) < 2:
        return None
    out = []
    for size in sizes:
        both = [r for r in rows if r.get(f"candidate_loss_{size}") is not None
                and r.get(f"baseline_loss_{size}") is not None]
        c, b = [r[f"candidate_loss_{size}"] for r in both], [r[f"baseline_loss_{size}"] for r in both]
        p = stats.paired(c, b)
        out.append({"size": size, "n": p.n, "mean_b": p.mean_b, "mean_a": p.mean_a, "diff": p.diff,
                    "ci_low": p.ci_low, "ci_high": p.ci_high, "p": p.p, "wins": stats.wins(c, b),
                    "improvement": stats.improvement_frac(p.mean_a, p.mean_b)})
    return out


def ladder_points(runs: list[dict]) -> dict[int, tuple[list[float], list[float]]]:
    """{seed: (non-embedding parameters, final losses)} of the jobs that trained two sizes or more."""
    return {r["seed"]: ([x["non_embedding_params"] for x in r["record"]["runs"]],
                        [x["final_val_loss"] for x in r["record"]["runs"]])
            for r in runs if r["ok"] and len(r["record"]["runs"]) >= 2}


def compare(base_runs: list[dict], cand_runs: list[dict], reference: tuple) -> dict:
    """Everything but Holm's correction and the verdict, which need the whole family."""
    rows = seed_table(base_runs, cand_runs, reference)
    both = [r for r in rows if r["baseline"] is not None and r["candidate"] is not None]
    c, b = [r["candidate"] for r in both], [r["baseline"] for r in both]
    primary = stats.paired(c, b)
    out = {
        "seeds": rows,
        "n_seeds": len(rows),
        "failed_candidate_seeds": [r["seed"] for r in rows if r["candidate"] is None],
        "failed_baseline_seeds": [r["seed"] for r in rows if r["baseline"] is None],
        "primary": primary.to_dict(),
        "welch": stats.welch(c, b).to_dict(),
        "wins": stats.wins(c, b),
        "improvement": stats.improvement_frac(primary.mean_a, primary.mean_b),
        "per_size": per_size(rows),
        "secondary": {side: {k: stats.describe([r[f"{side}_secondary"].get(k) for r in rows]) for k in SECONDARY}
                      for side in ("baseline", "candidate")},
    }
    bl, cl = ladder_points(base_runs), ladder_points(cand_runs)
    common = [seed for seed in bl if seed in cl]  # the slope test pairs the seeds where both trained the ladder
    if common:
        fb, fc = stats.scaling_fits([bl[s] for s in common]), stats.scaling_fits([cl[s] for s in common])
        out["scaling"] = {"seeds": common, "baseline": fb, "candidate": fc,
                          "slope_test": stats.paired([x["b"] for x in fc["per_seed"]],
                                                     [x["b"] for x in fb["per_seed"]]).to_dict()}
    else:
        out["scaling"] = None
    return out


def decide(comparisons: list[dict], deviations: list[str], external: dict | None = None) -> dict:
    """Holm-adjust the family's primary p-values, and separately its slope-test p-values, and attach each
    verdict (in place): exploratory where the run (``deviations``) or the comparison (its ``deviations``)
    departs from the design. ``external``: {"primary": [...], "slope": [...]} raw p-values of earlier reports that
    join the families. Returns the family sizes."""
    external = external or {}
    tested = [c for c in comparisons if c.get("stats")]
    sizes = {}
    for key, get in (("primary", lambda s: s["primary"]["p"]),
                     ("slope", lambda s: s["scaling"]["slope_test"]["p"] if s["scaling"] else math.nan)):
        raw = [get(c["stats"]) for c in tested]
        outside = list(external.get(key, []))
        adjusted = stats.holm(raw + outside)[: len(raw)]
        sizes[key] = sum(1 for p in raw + outside if not math.isnan(p))
        for c, p_adj in zip(tested, adjusted):
            if key == "primary":
                c["stats"]["p_holm"] = p_adj
            elif c["stats"]["scaling"]:
                c["stats"]["scaling"]["slope_test"]["p_holm"] = p_adj
    for c in tested:
        s = c["stats"]
        slope = s["scaling"]["slope_test"] if s["scaling"] else None
        v = stats.verdict(primary=stats.Paired(**s["primary"]), p_holm=s["p_holm"], n_wins=s["wins"], slope=slope,
                          flop_ratio=(c.get("evaluation") or {}).get("flop_ratio"),
                          interpretation=c.get("interpretation"), deviations=deviations + c.get("deviations", []))
        failed = s["failed_candidate_seeds"] or s["failed_baseline_seeds"]
        if failed and v.level != "exploratory":
            who = (f"the candidate failed to train on seeds {s['failed_candidate_seeds']}" if s["failed_candidate_seeds"]
                   else f"the baseline failed to train on seeds {s['failed_baseline_seeds']}")
            v = stats.Verdict("failed", f"No claim possible: {who}. The statistics below use the seeds that "
                              "trained and describe this run only.", v.criteria)
        s["verdict"] = v.to_dict()
    return sizes


def across_frameworks(comparisons: list[dict]) -> dict | None:
    """H2: when candidates of two frameworks or more were validated, compare the best of each (lowest mean
    final loss at the reference size): ANOVA, Kruskal-Wallis and Holm-adjusted pairs on the per-seed losses.
    Only under one fingerprint: otherwise the record says why there is no comparison (``not_comparable``)."""
    best: dict[str, dict] = {}
    for c in comparisons:
        mean = c["stats"]["primary"]["mean_a"] if c.get("stats") else math.nan
        if not math.isfinite(mean):  # failed on every seed: no loss to rank it by, and no sample to test
            continue
        if c["framework"] not in best or mean < best[c["framework"]]["stats"]["primary"]["mean_a"]:
            best[c["framework"]] = c
    if len(best) < 2:
        return None
    fingerprints = {fw: c.get("fingerprint_id") for fw, c in sorted(best.items())}
    if len(set(fingerprints.values())) > 1:
        return {"candidates": {fw: c["label"] for fw, c in sorted(best.items())}, "fingerprints": fingerprints,
                "not_comparable": "the frameworks' best candidates were validated under different fingerprints "
                                  "(hardware, software, data or harness code), so their losses are not compared"}
    groups = {fw: [r["candidate"] for r in c["stats"]["seeds"] if r["candidate"] is not None]
              for fw, c in sorted(best.items())}
    out = stats.across_groups(groups)
    out["candidates"] = {fw: c["label"] for fw, c in sorted(best.items())}
    # How many trained candidates each best was picked from, by these same losses: the tests do not allow for that.
    out["chosen_from"] = {fw: sum(1 for c in comparisons if c["framework"] == fw and c.get("stats")
                                  and math.isfinite(c["stats"]["primary"]["mean_a"])) for fw in sorted(best)}
    out["improvement"] = {fw: c["stats"]["improvement"] for fw, c in sorted(best.items())}
    out["verdict"] = {fw: c["stats"]["verdict"]["level"] for fw, c in sorted(best.items())}
    return out

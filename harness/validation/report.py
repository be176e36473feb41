"""``report.md`` of ``harness validate``, rendered from the result that ``validation.json`` holds, and its
formatting helpers."""

from __future__ import annotations

import math
from pathlib import Path

from harness.validation.tuning import SAMPLER_SEED


def _f(x, digits=4) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.3g}"
        return f"{x:.{digits}f}"
    return str(x)


def display(text: str) -> str:
    from harness.analysis.runs import display_path

    head, sep, tail = str(text).partition(":")  # "<run dir>:<program id>" for programs taken from a run
    if sep and not Path(head).exists():
        return str(text)
    return display_path(head) + sep + tail if Path(head).exists() else str(text)


def _p(x) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def render_report(result: dict) -> str:
    objective = result["profile"]["objective"]
    value_name = "final validation loss" if objective == "final_loss" else "scaling slope b"
    md = [f"# Validation: {result['name']}\n",
          f"Generated {result['created']} by `{result['command']}`.\n",
          f"- profile **{result['profile']['name']}** (objective `{objective}`: the {value_name}, lower is better), "
          f"{result['profile']['steps']} steps per run, device {result['profile']['device']}",
          f"- tuning **{result['tuning']}**, {result['trials']} trial(s) per tuned side, TPE sampler seed "
          f"{SAMPLER_SEED}, tuning seed {result['tuning_seed']}; search space: {result['search_space']}",
          f"- evaluation seeds: {result['seeds']} ({len(result['seeds'])} seeds, disjoint from the tuning seed"
          f"{'' if result['tuning_seed'] not in result['seeds'] else ' — NOT disjoint!'})",
          f"- rungs trained per seed: {'every rung of the ladder' if result['ladder'] else 'the objective only'}; "
          f"threads per job: {result['threads'] or 'torch default'}; jobs at once: {result.get('jobs', 1)}; "
          f"executor: {result.get('executor', 'local')}",
          f"- Holm-Bonferroni family: {result['holm_family_size']} comparison(s)"
          + (f" (including {len(result['family_with'])} from earlier reports)" if result["family_with"] else ""),
          f"- ledger: `{display(result['ledger'])}`", ""]
    md.append("## Summary\n")
    md.append("| candidate | framework | fingerprint | baseline mean ± sd | candidate mean ± sd | improvement | "
              "p (Welch) | p (Holm) | Cohen's d | wins | verdict |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for c in result["candidates"]:
        if c.get("refused"):
            md.append(f"| `{c['label']}` | {c['framework']} | `{c.get('fingerprint_id') or '–'}` | – | – | – | – | – | – | – | "
                      f"**refused**: {c['refused']} |")
            continue
        s = c["stats"]
        w = s["welch"]
        md.append(f"| `{c['label']}` | {c['framework']} | `{c['fingerprint_id']}` | {_f(w['mean_b'])} ± {_f(w['sd_b'])} | "
                  f"{_f(w['mean_a'])} ± {_f(w['sd_a'])} | {_f(100 * s['improvement'], 2)} % | {_p(w['p'])} | "
                  f"{_p(s['p_holm'])} | {_f(s['cohens_d'], 2)} ({s['d_interpretation']}) | {s['wins']}/{s['n_seeds']} | "
                  f"**{s['verdict']['level']}** |")
    md.append("")
    for c in result["candidates"]:
        md += _candidate_section(c, result)
    md.append("## Method notes\n")
    md.append("- Welch's t-test: `scipy.stats.ttest_ind(candidate, baseline, equal_var=False)`, two-sided; df by "
              "Welch–Satterthwaite; the 95 % CI is of mean(candidate) − mean(baseline) (negative = better).")
    md.append("- Cohen's d = (mean(candidate) − mean(baseline)) / pooled sd (negative = better); |d| < 0.2 "
              "negligible, < 0.5 small, < 0.8 medium, else large.")
    md.append("- Holm-Bonferroni: raw p-values of every comparison in the family sorted ascending, p_(i) multiplied "
              "by (m − i + 1), made monotone, capped at 1.")
    md.append("- Pre-registered criteria. Minimum: Holm-adjusted p < 0.05, more than 1 % improvement of the mean "
              "objective, and better on at least 7 of 10 seeds — scaled to N seeds as ceil(0.7 N). Strong: "
              "additionally |d| > 0.5 and a better (more negative) mean scaling slope.")
    md.append("- Scaling law per seed: least squares loss = a + b ln N over the ladder (N = non-embedding "
              "parameters); the mean slope's CI is a t-interval over seeds; the pooled fit regresses every "
              "(ln N, loss) point and reports classical standard errors.")
    md.append("")
    return "\n".join(md)


def _candidate_section(c: dict, result: dict) -> list[str]:
    md = [f"## `{c['label']}` ({c['framework']})\n",
          f"- origin: `{display(c['origin'])}`; program: `{display(c.get('program_path') or '–')}` "
          f"(sha256 `{c.get('sha256', '')[:16]}`)"]
    ev = c.get("evaluation") or {}
    if ev:
        md.append(f"- evaluator: reason `{ev.get('reason')}`, combined_score {_f(ev.get('combined_score'))}, ledger row "
                  f"{ev.get('ledger_row')}, fingerprint `{ev.get('fingerprint_id')}`"
                  + (f", flags: {ev['flags']}" if ev.get("flags") else ""))
        md.append(f"- parameter ratio {_f(ev.get('param_ratio'), 3)}, FLOP ratio {_f(ev.get('flop_ratio'), 3)}, "
                  f"step-time ratio {_f(ev.get('step_time_ratio'), 2)}, memory ratio {_f(ev.get('memory_ratio'), 2)} "
                  "(candidate / baseline, from the evaluator's gate; fingerprint as above)")
    if ev.get("flags"):
        md.append(f"- **FLAGGED by the evaluator** (quarantined at parity in the evolution run; check by hand): "
                  f"{ev['flags']}")
    if c.get("refused"):
        md.append(f"\n**Refused: {c['refused']}**\n")
        if ev.get("message"):
            md.append(f"> {ev['message'][:600]}\n")
        return md
    s = c["stats"]
    fp = c["fingerprint_id"]
    v = s["verdict"]
    md.append(f"\n**Verdict: {v['text']}**\n")
    md.append("| criterion | value | passed |")
    md.append("|---|---|---|")
    for crit in v["criteria"]:
        val = crit["value"]
        if isinstance(val, float) and "improvement" in crit["name"]:
            val = f"{100 * val:.2f} %"
        elif isinstance(val, float):
            val = _p(val) if "p <" in crit["name"] else _f(val, 3)
        md.append(f"| {crit['name']} | {val if not isinstance(val, bool) else _f(val)} | {'yes' if crit['passed'] else 'no'} |")
    md.append("")
    hp = c["hyperparameters"]
    md.append(f"### Hyperparameters (tuning: {result['tuning']})\n")
    md.append("| side | lr | warmup steps | weight decay | best tuning value | trials |")
    md.append("|---|---|---|---|---|---|")
    for side in ("baseline", "candidate"):
        h = hp[side]
        md.append(f"| {side} | {_f(h['best']['lr'], 5)} | {int(h['best']['warmup_steps'])} | "
                  f"{_f(h['best']['weight_decay'], 4)} | {_f(h.get('best_value'))} | {h.get('n_trials', 0)} |")
    md.append("")
    if any(hp[s].get("trials") for s in ("baseline", "candidate")):
        md.append("<details><summary>Every trial</summary>\n")
        md.append("| side | trial | lr | warmup | weight decay | value | outcome |")
        md.append("|---|---|---|---|---|---|---|")
        for side in ("baseline", "candidate"):
            for t in hp[side].get("trials", []):
                md.append(f"| {side} | {t['trial']} | {_f(t['params']['lr'], 5)} | {int(t['params']['warmup_steps'])} | "
                          f"{_f(t['params']['weight_decay'], 4)} | {_f(t['value'])} | {t['reason']} ({t['source']}) |")
        md.append("\n</details>\n")
    md.append(f"### Per seed (fingerprint `{fp}`)\n")
    rung_keys = sorted({k[len("baseline_loss_"):] for r in s["seeds"] for k in r if k.startswith("baseline_loss_")})
    head = "| seed | baseline | candidate | difference | better | " + " | ".join(
        f"base {k} | cand {k}" for k in rung_keys) + " | fingerprint |"
    md.append(head)
    md.append("|" + "---|" * (6 + 2 * len(rung_keys)))
    for r in s["seeds"]:
        cells = [str(r["seed"]), _f(r["baseline"]) if r["baseline"] is not None else f"failed ({r['baseline_reason']})",
                 _f(r["candidate"]) if r["candidate"] is not None else f"failed ({r['candidate_reason']})",
                 _f(r.get("diff")), "candidate" if r.get("candidate_better") else ("baseline" if "diff" in r else "–")]
        for k in rung_keys:
            cells += [_f(r.get(f"baseline_loss_{k}")), _f(r.get(f"candidate_loss_{k}"))]
        fps = {r["baseline_fp"], r["candidate_fp"]} - {None}
        cells.append(" / ".join(f"`{x}`" for x in sorted(fps)) or "–")
        md.append("| " + " | ".join(cells) + " |")
    md.append("")
    w = s["welch"]
    md.append(f"### Statistics (fingerprint `{fp}`)\n")
    md.append("| quantity | value |")
    md.append("|---|---|")
    md.append(f"| baseline mean ± sd (n) | {_f(w['mean_b'])} ± {_f(w['sd_b'])} ({w['n_b']}) |")
    md.append(f"| candidate mean ± sd (n) | {_f(w['mean_a'])} ± {_f(w['sd_a'])} ({w['n_a']}) |")
    md.append(f"| difference candidate − baseline | {_f(w['diff'])} |")
    md.append(f"| 95 % CI of the difference (Welch df) | [{_f(w['ci_low'])}, {_f(w['ci_high'])}] |")
    md.append(f"| improvement | {_f(100 * s['improvement'], 2)} % |")
    md.append(f"| Welch t, df | {_f(w['t'], 3)}, {_f(w['df'], 2)} |")
    md.append(f"| p (two-sided), Holm-adjusted (family of {s['holm_family_size']}) | {_p(w['p'])}, {_p(s['p_holm'])} |")
    md.append(f"| Cohen's d (pooled sd) | {_f(s['cohens_d'], 3)} ({s['d_interpretation']}) |")
    md.append(f"| wins | {s['wins']} of {s['n_seeds']} seeds (needed: {s['required_wins']}) |")
    pt = s.get("paired_t") or {}
    md.append(f"| paired t-test on the same seeds (information only, not pre-registered) | t = {_f(pt.get('t'), 3)}, "
              f"p = {_p(pt.get('p'))} |")
    md.append("")
    slug = c["slug"]
    md.append(f"![per seed]({slug}_box.png) ![training curves]({slug}_curves.png)\n")
    sc = s["scaling"]
    if sc:
        md.append(f"### Scaling law loss = a + b ln N (fingerprint `{fp}`)\n")
        md.append("| side | mean slope b | 95 % CI (over seeds) | pooled b ± SE | pooled a ± SE | per-seed b |")
        md.append("|---|---|---|---|---|---|")
        for side in ("baseline", "candidate"):
            f = sc[side]
            pooled = f["pooled"] or {}
            md.append(f"| {side} | {_f(f['mean_slope'])} | [{_f(f['slope_ci'][0])}, {_f(f['slope_ci'][1])}] | "
                      f"{_f(pooled.get('slope'))} ± {_f(pooled.get('se_slope'))} | {_f(pooled.get('intercept'))} ± "
                      f"{_f(pooled.get('se_intercept'))} | {', '.join(_f(x['b']) for x in f['per_seed'])} |")
        st = sc["slope_welch"]
        md.append(f"\nSlope difference candidate − baseline {_f(st['diff'])}, 95 % CI [{_f(st['ci_low'])}, "
                  f"{_f(st['ci_high'])}], Welch p = {_p(st['p'])} (not part of the Holm family). "
                  f"Better slope: **{'yes' if sc['slope_better'] else 'no'}**.\n")
        md.append(f"![scaling]({slug}_scaling.png)\n")
    else:
        md.append("Scaling law: not measured (one rung per seed).\n")
    return md

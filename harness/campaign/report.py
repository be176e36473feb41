"""The campaign's final report: each framework's verdict against the design, the table across frameworks, every
deviation from the pre-registration and from the design, and links to the reports it rests on."""

from __future__ import annotations

import math
from pathlib import Path

from harness.campaign.plan import PREREGISTRATION_MD
from harness.validation.report import number
from harness.validation.stats import format_p


def deviations(prereg: dict, state: dict, validation: dict | None, code_hash_now: str) -> list[str]:
    """What happened that the plan did not say: the design's deviations the plan already named, and the
    campaign's own (fewer iterations, a framework without a candidate, code changed between starts)."""
    s = prereg["settings"]
    out = list(prereg.get("protocol_deviations") or [])
    evolve = state["phases"].get("evolve", {})
    for fw in s["frameworks"]:
        done = (evolve.get(fw) or {}).get("iterations")
        if done is not None and done < s["iterations"]:
            out.append(f"{fw}: evolution stopped after {done} of {s['iterations']} iterations (OpenEvolve's early "
                       "stopping)")
    select = state["phases"].get("select", {})
    for fw in s["frameworks"]:
        if fw not in (select.get("candidates") or {}):
            out.append(f"{fw}: no valid program other than the seed, so nothing to validate")
    hashes = {start["code_hash"] for start in state.get("starts", [])} | {code_hash_now}
    if hashes != {prereg["code_hash"]}:
        out.append(f"the harness code changed during the campaign (registered `{prereg['code_hash']}`, seen "
                   f"{sorted(hashes)}): results from before and after are not comparable")
    if validation:
        for c in validation["candidates"]:
            if c.get("refused"):
                out.append(f"{c['framework']}: `{c['label']}` was refused at validation: {c['refused']}")
    return out


def render_report(prereg: dict, state: dict, validation: dict | None, ledger_rows: list[dict], code_hash_now: str,
                  out_dir: Path) -> str:
    s = prereg["settings"]
    dev = deviations(prereg, state, validation, code_hash_now)
    md = ["# Campaign report\n",
          f"`{prereg.get('command', 'harness campaign')}`, pre-registered {prereg.get('created', '')}: "
          f"[the plan]({PREREGISTRATION_MD}). Frameworks {', '.join(s['frameworks'])}; profile `{s['profile']}`; "
          f"{s['iterations']} iterations each; seeds {s['seeds']}; tuning {s['tuning']} with {s['trials']} trial(s) "
          "per side.\n"]
    if dev:
        md.append("> **Exploratory: the campaign departs from the design or from its plan**, so no framework gets a "
                  "verdict:\n>")
        md += [f"> - {d}" for d in dev]
        md.append("")
    else:
        md.append("The campaign followed its pre-registered plan, which is the users' design.\n")
    md += ["## Verdict per framework\n", "| framework | evolution | best candidate | evaluator score | final loss: "
           "baseline → candidate | paired p (Holm) | paired d | verdict |", "|---|---|---|---|---|---|---|---|"]
    runs = state["phases"].get("select", {}).get("runs", {})
    by_fw = {c["framework"]: c for c in (validation or {}).get("candidates", [])}
    for fw in s["frameworks"]:
        r = runs.get(fw, {})
        evo = f"{r.get('last_iteration', '–')} iterations, {r.get('valid', '–')}/{r.get('evaluated', '–')} valid"
        c = by_fw.get(fw)
        if c is None:
            md.append(f"| {fw} | {evo} | – | – | – | – | – | no candidate |")
        elif c.get("refused"):
            md.append(f"| {fw} | {evo} | `{c['label']}` | – | – | – | – | refused: {c['refused']} |")
        else:
            st, p = c["stats"], c["stats"]["primary"]
            md.append(f"| {fw} | {evo} | `{c['label']}` | {number((c.get('evaluation') or {}).get('combined_score'))} | "
                      f"{number(p['mean_b'])} → {number(p['mean_a'])} | {format_p(p['p'])} ({format_p(st['p_holm'])}) | "
                      f"{number(p['d'], 2)} | **{st['verdict']['level']}** |")
    md.append("")
    for fw in s["frameworks"]:
        c = by_fw.get(fw)
        if c and c.get("stats"):
            md.append(f"- **{fw}**: {c['stats']['verdict']['text']}")
    md.append("")
    fwc = (validation or {}).get("frameworks")
    md.append("## Across frameworks (H2)\n")
    if fwc:
        md += ["| framework | candidate | mean final loss ± sd | improvement on its seed |", "|---|---|---|---|"]
        for name, label in fwc["candidates"].items():
            g = fwc["groups"][name]
            md.append(f"| {name} | `{label}` | {number(g['mean'])} ± {number(g['sd'])} | "
                      f"{number(100 * fwc['improvement'][name], 2)} % |")
        a, k = fwc["anova"], fwc["kruskal"]
        md += ["", f"One-way ANOVA p = {format_p(a['p'])}; Kruskal-Wallis p = {format_p(k['p'])}; pairs (Holm): "
               + ", ".join(f"{x['a']}−{x['b']} p = {format_p(x['p_holm'])}" for x in fwc["pairs"]) + ".", ""]
    else:
        md.append("Fewer than two frameworks were validated: no comparison.\n")
    md += ["## Evolution\n", "| framework | evaluations | valid | best combined_score | stopping rules that fired |",
           "|---|---|---|---|---|"]
    ended = state["phases"].get("evolve", {}).get("ended_at", math.inf)
    for fw in s["frameworks"]:
        mine = [r for r in ledger_rows if r["framework"] == fw and r["created_at"] <= ended]
        rules = ", ".join(f"{x['rule']} at {x['fired_at']}" for x in runs.get(fw, {}).get("stopping_rules", []))
        md.append(f"| {fw} | {len(mine)} | {sum(1 for r in mine if r['reason'] == 'ok')} | "
                  f"{number(max((r['combined_score'] for r in mine), default=None))} | {rules or 'none'} |")
    md += ["", "## Reports\n", f"- [pre-registration]({PREREGISTRATION_MD})", "- [analysis of the evolution "
           "runs](analysis/report.md)", "- [validation](validation/report.md)" if validation else
           "- validation: not run (no candidate)", "- the OpenEvolve runs: `runs/<framework>/`; the ledger: "
           "`ledger.sqlite`", ""]
    md += ["## Timing\n", "| phase | wall time |", "|---|---|"]
    for phase in ("evolve", "select", "validate"):
        wall = state["phases"].get(phase, {}).get("wall_s")
        md.append(f"| {phase} | {number(wall / 60, 1) + ' min' if wall is not None else '–'} |")
    md.append(f"\nStarted {len(state.get('starts', []))} time(s).\n")
    return "\n".join(md)

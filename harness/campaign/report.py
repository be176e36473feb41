"""The campaign's final report: each framework's verdict against the design, the table across frameworks, every
deviation from the pre-registration and from the design, and links to the reports it rests on."""

from __future__ import annotations

import math
from pathlib import Path

from harness.campaign.plan import PREREGISTRATION_MD
from harness.validation.report import number, paired_d
from harness.validation.stats import format_p


def departures(prereg: dict, state: dict) -> list[str]:
    """How the campaign departs from the design or from its plan: the design's deviations the plan already named,
    an evolution that ended early although none of the design's stopping rules fired, and code changed between
    the starts that computed something (each start records its code's hash as it begins). Any departure makes every
    verdict exploratory."""
    s = prereg["settings"]
    out = list(prereg.get("protocol_deviations") or [])
    evolve = state["phases"].get("evolve", {})
    for fw in s["frameworks"]:
        entry = evolve.get(fw) or {}
        done = entry.get("iterations")
        if done is not None and done < s["iterations"] and not _stopped_by_the_design(state, fw):
            out.append(f"{fw}: evolution stopped after {done} of {s['iterations']} iterations, and the design's "
                       "stopping rule (no improvement in 10 iterations) had not fired")
        fired = _rule_a_fired_at(state, fw)
        resumed = [at for at in entry.get("resumed_after", []) if fired is not None and at < fired]
        if resumed and done is not None and done > fired:
            out.append(f"{fw}: evolution ran on to iteration {done}, past iteration {fired} where the design's rule "
                       f"(a) stops it, because resuming after iteration {resumed[-1]} restarted OpenEvolve's count")
    for fw, why in (state["phases"].get("select", {}).get("unranked") or {}).items():
        if "fingerprint" in why:
            out.append(f"{fw}: {why}")
    # A start that only rendered the report computed nothing: its code does not count.
    hashes = {start["code_hash"] for start in state.get("starts", [])
              if set(start.get("phases", ["?"])) - {"report"}}
    if hashes - {prereg["code_hash"]}:
        out.append(f"the harness code changed during the campaign (registered `{prereg['code_hash']}`, seen "
                   f"{sorted(hashes)}): results from before and after are not comparable")
    return out


def outcomes(prereg: dict, state: dict, validation: dict | None) -> list[str]:
    """What the design allows to happen and the report must say: an evolution its stopping rule ended, a framework
    without a candidate, a candidate the validation refused."""
    s = prereg["settings"]
    out = []
    evolve = state["phases"].get("evolve", {})
    for fw in s["frameworks"]:
        done = (evolve.get(fw) or {}).get("iterations")
        if done is not None and done < s["iterations"] and _stopped_by_the_design(state, fw):
            out.append(f"{fw}: evolution stopped after {done} of {s['iterations']} iterations by the design's "
                       "stopping rule (no improvement in 10 iterations; OpenEvolve's early stopping)")
    select = state["phases"].get("select", {})
    unranked = select.get("unranked") or {}
    for fw in s["frameworks"]:
        if fw in unranked and "fingerprint" not in unranked[fw]:  # fingerprints: a departure, named there
            out.append(f"{fw}: nothing to validate: {unranked[fw]}")
        elif fw not in unranked and fw not in (select.get("candidates") or {}):
            out.append(f"{fw}: no valid program other than the seed, so nothing to validate")
        flags = _selected_flags(state, fw)
        if flags:
            out.append(f"{fw}: the candidate selected was FLAGGED by the evaluator ({flags}); its validation below "
                       "is what confirms it or not")
    if validation:
        for c in validation["candidates"]:
            if c.get("refused"):
                out.append(f"{c['framework']}: `{c['label']}` was refused at validation: {c['refused']}")
    return out


def _selected_flags(state: dict, fw: str) -> str | None:
    """What the evaluator flagged on the candidate the selection picked for ``fw`` (None: not flagged)."""
    return ((state["phases"].get("select", {}).get("candidates") or {}).get(fw) or {}).get("flags")


def _rule_a_fired_at(state: dict, fw: str) -> int | None:
    """Where the analysis, replaying the run in iteration order, saw the design's rule (a) fire."""
    rules = ((state["phases"].get("select", {}).get("runs") or {}).get(fw) or {}).get("stopping_rules") or []
    return next((r["fired_at"] for r in rules if r["rule"] == "no_improvement" and r.get("fired_at") is not None),
                None)


def _stopped_by_the_design(state: dict, fw: str) -> bool:
    """The design's rule (a), which is OpenEvolve's early stopping as the configs set it, ended the evolution:
    OpenEvolve logged its stop, the campaign stopped it on a resume, or the analysis's replay saw the rule fire."""
    entry = state["phases"].get("evolve", {}).get(fw) or {}
    return entry.get("stopped_at") is not None or _rule_a_fired_at(state, fw) is not None


def render_report(prereg: dict, state: dict, validation: dict | None, ledger_rows: list[dict], out_dir: Path) -> str:
    s = prereg["settings"]
    dev = departures(prereg, state)
    happened = outcomes(prereg, state, validation)
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
    if happened:
        md.append("What happened within the design:\n")
        md += [f"- {x}" for x in happened]
        md.append("")
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
            flagged = " **FLAGGED**" if _selected_flags(state, fw) else ""
            md.append(f"| {fw} | {evo} | `{c['label']}`{flagged} | "
                      f"{number((c.get('evaluation') or {}).get('combined_score'))} | "
                      f"{number(p['mean_b'])} → {number(p['mean_a'])} | {format_p(p['p'])} ({format_p(st['p_holm'])}) | "
                      f"{paired_d(p['d'])} | **{'exploratory' if dev else st['verdict']['level']}** |")
    md.append("")
    for fw in s["frameworks"]:
        c = by_fw.get(fw)
        if c and c.get("stats"):
            text = c["stats"]["verdict"]["text"]
            if dev and c["stats"]["verdict"]["level"] != "exploratory":
                text = ("Exploratory: the campaign departs from the design (above). The validation's numbers "
                        "describe this run only; no claim is drawn from them.")
            md.append(f"- **{fw}**: {text}")
    md.append("")
    fwc = (validation or {}).get("frameworks")
    md.append("## Across frameworks (H2)\n")
    if fwc and fwc.get("not_comparable"):
        md.append(f"No comparison: {fwc['not_comparable']} (see the validation report).\n")
    elif fwc:
        md += ["| framework | candidate | mean final loss ± sd | improvement on its seed |", "|---|---|---|---|"]
        for name, label in fwc["candidates"].items():
            g = fwc["groups"][name]
            md.append(f"| {name} | `{label}` | {number(g['mean'])} ± {number(g['sd'])} | "
                      f"{number(100 * fwc['improvement'][name], 2)} % |")
        a, k = fwc["anova"], fwc["kruskal"]
        md += ["", f"One-way ANOVA p = {format_p(a['p'])}; Kruskal-Wallis p = {format_p(k['p'])}; pairs (Holm): "
               + ", ".join(f"{x['a']}−{x['b']} p = {format_p(x['p_holm'])}" for x in fwc["pairs"]) + ".", ""]
        if dev:
            md += ["Exploratory (the departures above): these tests describe this run only.", ""]
    else:
        md.append("Fewer than two frameworks were validated: no comparison.\n")
    md += ["## Evolution\n", "| framework | evaluations | valid | best combined_score (per fingerprint) | stopping "
           "rules that fired |", "|---|---|---|---|---|"]
    ended = state["phases"].get("evolve", {}).get("ended_at", math.inf)
    for fw in s["frameworks"]:
        mine = [r for r in ledger_rows if r["framework"] == fw and r["created_at"] <= ended]
        rules = ", ".join(f"{x['rule']} at {x['fired_at']}" for x in runs.get(fw, {}).get("stopping_rules", []))
        best = "; ".join(f"{number(v)} (`{fp[:8]}`)" for fp, v in (runs.get(fw, {}).get("best") or {}).items())
        md.append(f"| {fw} | {len(mine)} | {sum(1 for r in mine if r['reason'] == 'ok')} | {best or '–'} | "
                  f"{rules or 'none'} |")
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

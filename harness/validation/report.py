"""``report.md`` of ``harness validate``, rendered from the result that ``validation.json`` holds, and its
formatting helpers."""

from __future__ import annotations

import math
from pathlib import Path

from harness.trusted.profiles import PROFILES
from harness.trusted.scoring import of_a_compiling_profile, plain_text, trained_eagerly
from harness.validation import protocol
from harness.validation.stats import format_against, format_p


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


def _g(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def number(x, digits=4) -> str:
    """A number as the reports print it (``_f``); a dash when there is none."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else _f(x, digits)


def _data_text(profile: dict) -> str:
    source = profile.get("data_source") or "–"
    design = PROFILES[protocol.DESIGN_PROFILE].data_source
    if profile["name"] != protocol.DESIGN_PROFILE or source in (design, "synthetic", "–"):
        return f"`{source}`"
    # A path is how TinyStories is read from a local copy; the harness cannot tell from the path that it is.
    return (f"`{source}`, taken to be a local copy of TinyStories (`{design}`); the fingerprints below include a "
            "hash of its text")


def _rungs_text(result: dict) -> str:
    if result["ladder"]:
        return "every rung of the ladder"
    if result["profile"].get("objective") == "scaling_slope":
        return "the objective's, every rung of the ladder"
    return "the objective only"


def render_report(result: dict) -> str:
    d, l, h = result["reference_rung"]
    dev = all_deviations(result)
    md = [f"# Validation: {result['name']}\n",
          f"Generated {result['created']} by `{result['command']}`.\n"]
    if dev:
        md.append("> **Exploratory: protocol not followed.** This run departs from the design in "
                  f"{len(dev)} way(s), and no comparison a departure touches gets a verdict:\n>")
        md += [f"> - {x}" for x in dev]
        md.append("")
    else:
        md.append("The run follows the users' design: seeds 42..51 at the full horizon, the design's tuning, "
                  "the ladder trained.\n")
    md += [f"- profile **{result['profile']['name']}**: {result['profile']['steps']} steps per run, batch "
           f"{result['profile']['batch_size_seqs']}, device {result['profile']['device']}; the compared value is "
           f"the **final validation loss at the reference size** (d={d}, {l} layers, {h} heads), lower is better",
           f"- tuning **{result['tuning']}** (option {'A, per variant' if result['tuning'] == 'optuna' else 'B, shared'}), "
           f"{result['trials']} trial(s) per tuned side, median pruner, independent TPE sampler per side, tuning "
           f"seed {result['tuning_seed']}; search space: {result['search_space']}",
           f"- data: {_data_text(result['profile'])}",
           f"- evaluation seeds: {result['seeds']} ({len(result['seeds'])} seeds)",
           f"- rungs trained per seed: {_rungs_text(result)}; "
           f"threads per job: {result['threads'] or 'torch default'}; jobs at once: {result.get('jobs', 1)}; "
           f"executor: {result.get('executor', 'local')}",
           f"- Holm families: {result['holm_family_size']} primary comparison(s), {result['slope_family_size']} "
           "slope test(s)" + (f", including {len(result['family_with'])} earlier report(s)" if result["family_with"]
                              else ""),
           f"- ledger: `{display(result['ledger'])}`", ""]
    md.append("## Summary\n")
    md.append("| candidate | framework | baseline mean ± sd | candidate mean ± sd | mean difference [95 % CI] | "
              "paired t (df) | p | p (Holm) | paired d | wins | verdict |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for c in result["candidates"]:
        if c.get("refused"):
            md.append(f"| `{c['label']}` | {c['framework']} | – | – | – | – | – | – | – | – | **refused**: {c['refused']} |")
            continue
        s = c["stats"]
        p = s["primary"]
        md.append(f"| `{c['label']}` | {c['framework']} | {number(p['mean_b'])} ± {number(p['sd_b'])} | "
                  f"{number(p['mean_a'])} ± {number(p['sd_a'])} | {number(p['diff'])} [{number(p['ci_low'])}, {number(p['ci_high'])}] | "
                  f"{number(p['t'], 3)} ({p['df']}) | {format_p(p['p'])} | {format_p(s['p_holm'])} | {paired_d(p['d'])} ({p['d_label']}) | "
                  f"{s['wins']}/{p['n']} | **{s['verdict']['level']}** |")
    md.append("")
    if result.get("frameworks"):
        md += _frameworks_section(result)
    for c in result["candidates"]:
        md += _candidate_section(c, result)
    md += _method_notes()
    return "\n".join(md)


def all_deviations(result: dict) -> list[str]:
    """The run's departures from the design, then each comparison's own (named by its candidate)."""
    return list(result["deviations"]) + [f"`{c['label']}`: {x}" for c in result["candidates"]
                                         for x in c.get("deviations", [])]


def eager_runs(c: dict) -> list[str]:
    """Per side of a comparison, the runs of a compiling profile that trained eagerly (slower, and other kernels than
    the runs that compiled), with the first error; nothing where every run compiled or the profile does not compile."""
    out = []
    for side, outcomes in (c.get("runs") or {}).items():
        runs = [r for o in outcomes for r in (o.get("record") or {}).get("runs") or [] if of_a_compiling_profile(r)]
        eager = [r for r in runs if trained_eagerly(r)]
        if eager:
            error = plain_text(str(eager[0].get("compile_error") or "none recorded"), 200)
            out.append(f"the {side}'s {len(eager)} of {len(runs)} run(s): the same recipe with other kernels, so "
                       f"slower and rounded differently (the first error: {_cell(error)})")
    return out


def _frameworks_section(result: dict) -> list[str]:
    fw = result["frameworks"]
    if fw.get("not_comparable"):
        return ["## Across frameworks (H2)\n", f"No comparison: {fw['not_comparable']}.\n",
                "| framework | candidate | fingerprint |", "|---|---|---|",
                *[f"| {name} | `{label}` | `{fw['fingerprints'][name]}` |" for name, label in fw["candidates"].items()],
                ""]
    several = {name: n for name, n in (fw.get("chosen_from") or {}).items() if n > 1}
    picked = ("" if not several else " Each best was picked by the same losses it is tested on (" + ", ".join(
        f"{name}: the best of {n}" for name, n in several.items()) + "), which these tests do not allow for: they "
        "favour a framework with more candidates.")
    md = ["## Across frameworks (H2)\n",
          "The best validated candidate of each framework (lowest mean final loss), compared on the per-seed final "
          f"losses at the reference size.{picked}\n",
          "| framework | candidate | n | mean ± sd | improvement on its baseline | verdict |", "|---|---|---|---|---|---|"]
    for name, label in fw["candidates"].items():
        g = fw["groups"][name]
        md.append(f"| {name} | `{label}` | {g['n']} | {number(g['mean'])} ± {number(g['sd'])} | "
                  f"{number(100 * fw['improvement'][name], 2)} % | {fw['verdict'][name]} |")
    a, k = fw["anova"], fw["kruskal"]
    md += ["", f"- one-way ANOVA: F({a['df_between']}, {a['df_within']}) = {number(a['F'], 3)}, p = {format_p(a['p'])}",
           f"- Kruskal-Wallis: H({k['df']}) = {number(k['H'], 3)}, p = {format_p(k['p'])}"
           + (f" ({k['p_method']})" if k.get("p_method") else ""), "",
           "| pair | difference [95 % CI] | Welch t (df) | p | p (Holm, over the pairs) |", "|---|---|---|---|---|"]
    for pr in fw["pairs"]:
        md.append(f"| {pr['a']} − {pr['b']} | {number(pr['diff'])} [{number(pr['ci_low'])}, {number(pr['ci_high'])}] | "
                  f"{number(pr['t'], 3)} ({number(pr['df'], 1)}) | {format_p(pr['p'])} | {format_p(pr['p_holm'])} |")
    if all_deviations(result):
        md.append("\nExploratory (see the deviations above): these tests describe this run only.")
    md.append("\n![frameworks](frameworks.png)\n")
    return md


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _criterion_value(crit: dict) -> str:
    v, threshold = crit["value"], crit.get("threshold")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and "lower" in crit["name"]:
        return (f"{100 * v:.2f}" if threshold is None else format_against(100 * v, 100 * threshold, 2, "f")) + " %"
    if isinstance(v, float):
        if "p" in crit["name"].split() or "(Holm" in crit["name"]:
            return format_p(v)
        return number(v, 3) if threshold is None else format_against(v, threshold, 3, "f")
    return str(v)


def paired_d(d) -> str:
    """A paired d, printed on its side of the design's |d| > 0.5."""
    if d is None or math.isnan(d):
        return "–"
    return format_against(d, math.copysign(protocol.STRONG_ABS_D, d), 2, "f")


def _better(row: dict) -> str:
    """Which side had the lower loss on one seed; a tie is neither (it is no win for the candidate)."""
    if row.get("diff") is None:
        return "–"
    return "candidate" if row["diff"] < 0 else ("baseline" if row["diff"] > 0 else "tie")


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
                  "(candidate / baseline, from the evaluator's gate)")
    if ev.get("flags"):
        md.append(f"- **FLAGGED by the evaluator** (check by hand): {ev['flags']}")
    if c.get("refused"):
        md.append(f"\n**Refused: {c['refused']}**\n")
        if ev.get("message"):
            md.append(f"> {ev['message'][:600]}\n")
        return md
    md.append(f"- interpretation: {c.get('interpretation') or '*pending* (record it with `harness validate --interpret`)'}")
    s = c["stats"]
    fp = c["fingerprint_id"]
    v = s["verdict"]
    md.append(f"\n**Verdict: {v['text']}**\n")
    md.append("| criterion | tier | value | met |")
    md.append("|---|---|---|---|")
    for crit in v["criteria"]:
        met = {True: "yes", False: "no", None: crit.get("note") or "pending"}[crit["passed"]]
        md.append(f"| {_cell(crit['name'])} | {crit['tier']} | {_cell(_criterion_value(crit))} | {met} |")
    md.append("")
    md += _tuning_section(c, result)
    md.append(f"### Per seed (fingerprint `{fp}`)\n")
    rung_keys = sorted({k[len("baseline_loss_"):] for r in s["seeds"] for k in r if k.startswith("baseline_loss_")})
    md.append("| seed | baseline | candidate | difference | better | " + " | ".join(
        f"base {k} | cand {k}" for k in rung_keys) + " | fingerprint |")
    md.append("|" + "---|" * (6 + 2 * len(rung_keys)))
    for r in s["seeds"]:
        cells = [str(r["seed"]), _f(r["baseline"]) if r["baseline"] is not None else f"failed ({r['baseline_reason']})",
                 _f(r["candidate"]) if r["candidate"] is not None else f"failed ({r['candidate_reason']})",
                 number(r.get("diff")), _better(r)]
        for k in rung_keys:
            cells += [number(r.get(f"baseline_loss_{k}")), number(r.get(f"candidate_loss_{k}"))]
        fps = {r["baseline_fp"], r["candidate_fp"]} - {None}
        cells.append(" / ".join(f"`{x}`" for x in sorted(fps)) or "–")
        md.append("| " + " | ".join(cells) + " |")
    md.append("")
    md += [f"- **Trained eagerly**, because torch.compile failed: {text}" for text in eager_runs(c)]
    p, w = s["primary"], s["welch"]
    md.append("### The primary test: paired by seed\n")
    md.append("| quantity | value |")
    md.append("|---|---|")
    md.append(f"| baseline mean ± sd (n) | {number(p['mean_b'])} ± {number(p['sd_b'])} ({p['n']}) |")
    md.append(f"| candidate mean ± sd (n) | {number(p['mean_a'])} ± {number(p['sd_a'])} ({p['n']}) |")
    md.append(f"| mean difference candidate − baseline, sd | {number(p['diff'])}, {number(p['sd_diff'])} |")
    md.append(f"| 95 % CI of the mean difference | [{number(p['ci_low'])}, {number(p['ci_high'])}] |")
    md.append(f"| improvement | {number(100 * s['improvement'], 2)} % |")
    md.append(f"| paired t, df | {number(p['t'], 3)}, {p['df']} |")
    md.append(f"| p (two-sided), Holm-adjusted (family of {result['holm_family_size']}) | {format_p(p['p'])}, {format_p(s['p_holm'])} |")
    md.append(f"| Cohen's d for paired samples | {paired_d(p['d'])} ({p['d_label']}) |")
    md.append(f"| wins | {s['wins']} of {p['n']} seeds |")
    md.append(f"| robustness check, Welch's t-test (unpaired) | t = {number(w['t'], 3)}, df = {number(w['df'], 2)}, p = "
              f"{format_p(w['p'])}, 95 % CI [{number(w['ci_low'])}, {number(w['ci_high'])}] |")
    md.append("")
    plots = c.get("plots") or {}
    md.append(" ".join(f"![{k}]({plots[k]})" for k in ("seeds", "box", "curves") if k in plots) + "\n")
    sc = s["scaling"]
    if sc:
        md.append(f"### Scaling law loss = a + b ln N (seeds {sc['seeds']})\n")
        md.append("| side | mean slope b [95 % CI over seeds] | per-seed b (R²) | pooled b ± SE | pooled R² |")
        md.append("|---|---|---|---|---|")
        for side in ("baseline", "candidate"):
            f = sc[side]
            pooled = f["pooled"] or {}
            md.append(f"| {side} | {number(f['mean_slope'])} [{number(f['slope_ci'][0])}, {number(f['slope_ci'][1])}] | "
                      f"{', '.join(number(x['b']) + ' (' + number(x['r2'], 3) + ')' for x in f['per_seed'])} | "
                      f"{number(pooled.get('slope'))} ± {number(pooled.get('se_slope'))} | {number(pooled.get('r2'), 3)} |")
        st = sc["slope_test"]
        sizes = sorted({x["sizes"] for side in ("baseline", "candidate") for x in sc[side]["per_seed"]})
        md.append(f"\nPaired slope test (candidate − baseline): mean difference {number(st['diff'])}, 95 % CI "
                  f"[{number(st['ci_low'])}, {number(st['ci_high'])}], t = {number(st['t'], 3)} ({st['df']} df), p = {format_p(st['p'])}, "
                  f"Holm-adjusted over {result['slope_family_size']} slope test(s) p = {format_p(st.get('p_holm'))}. "
                  f"Sizes per fit: {sizes}" + (" (with two sizes every R² is 1 by construction)" if sizes == [2] else "")
                  + ".\n")
        if "scaling" in plots:
            md.append(f"![scaling]({plots['scaling']})\n")
    else:
        md.append("Scaling law: not measured (one size per seed).\n")
    md += _per_size_section(s)
    md += _secondary_section(s)
    md += _option_a_section(c)
    if "mixing" in plots:
        md.append("### Token mixing\n")
        md.append(f"![mixing]({plots['mixing']})\n")
    return md


def _per_size_section(s: dict) -> list[str]:
    sizes = s.get("per_size")
    if not sizes:
        return []
    md = ["### Each size (H4: do improvements hold across sizes?)\n",
          "Descriptive: the design registers no test of H4, so these p-values are not corrected and no verdict rests "
          "on them.\n",
          "| size | seeds | baseline mean | candidate mean | difference [95 % CI] | improvement | paired p | wins |",
          "|---|---|---|---|---|---|---|---|"]
    for z in sizes:
        md.append(f"| {z['size']} | {z['n']} | {number(z['mean_b'])} | {number(z['mean_a'])} | {number(z['diff'])} "
                  f"[{number(z['ci_low'])}, {number(z['ci_high'])}] | {number(100 * z['improvement'], 2)} % | "
                  f"{format_p(z['p'])} | {z['wins']}/{z['n']} |")
    lower = sum(1 for z in sizes if z["diff"] < 0)
    below = sum(1 for z in sizes if z["ci_high"] < 0)
    md.append(f"\nThe candidate's mean loss is lower at {lower} of {len(sizes)} sizes; the 95 % CI of the difference "
              f"lies wholly below 0 at {below} of {len(sizes)}.\n")
    return md


def _tuning_section(c: dict, result: dict) -> list[str]:
    hp = c["hyperparameters"]
    md = [f"### Hyperparameters (tuning: {result['tuning']})\n",
          "| side | lr | warmup steps | weight decay | batch | best tuning value | trials (pruned) | sampler seed |",
          "|---|---|---|---|---|---|---|---|"]
    for side in ("baseline", "candidate"):
        h = hp[side]
        b = h["best"]
        md.append(f"| {side} | {_f(b['lr'], 5)} | {int(b['warmup_steps'])} | {_f(b['weight_decay'], 4)} | "
                  f"{b.get('batch_size_seqs', '–')} | {number(h.get('best_value'))} | {h.get('n_trials', 0)} "
                  f"({h.get('pruned', 0)}) | {h.get('sampler_seed', '–')} |")
        if h.get("note"):
            md.append(f"| | {h['note']} | | | | | | |")
    md.append("")
    batches = [hp[side]["best"].get("batch_size_seqs") for side in ("baseline", "candidate")]
    if None not in batches and batches[0] != batches[1]:
        md.append(f"The two sides train for the same number of steps at different batch sizes, as tuning each side "
                  f"allows: the candidate sees {_f(batches[1] / batches[0], 2)}× the baseline's training tokens.\n")
    if any(hp[s].get("trials") for s in ("baseline", "candidate")):
        md.append("<details><summary>Every trial</summary>\n")
        md.append("| side | trial | lr | warmup | weight decay | batch | value | state |")
        md.append("|---|---|---|---|---|---|---|---|")
        for side in ("baseline", "candidate"):
            for t in hp[side].get("trials", []):
                md.append(f"| {side} | {t['trial']} | {_f(t['params']['lr'], 5)} | {int(t['params']['warmup_steps'])} | "
                          f"{_f(t['params']['weight_decay'], 4)} | {t['params'].get('batch_size_seqs', '–')} | "
                          f"{number(t['value'])} | {t['state']}{': ' + t['note'] if t.get('note') else ''} |")
        md.append("\n</details>\n")
    return md


def _option_a_section(c: dict) -> list[str]:
    a = c.get("option_a")
    if not a:
        return []
    md = ["### Option A beside option B: the candidate with its own tuning\n"]
    if a.get("refused"):
        return md + [f"Not compared: {a['refused']}.\n"]
    p, h = a["stats"]["primary"], a["hyperparameters"]
    md += [f"The design asks option B to report both results. Here the candidate trains with its own best settings "
           f"({h['n_trials']} trials, {h.get('pruned', 0)} pruned: lr {_f(h['best']['lr'], 5)}, warmup "
           f"{int(h['best']['warmup_steps'])}, weight decay {_f(h['best']['weight_decay'], 4)}, batch "
           f"{h['best'].get('batch_size_seqs', '–')}) against the same baseline runs. Reported for comparison: "
           "outside the Holm family, no verdict.\n",
           "| baseline mean ± sd | candidate mean ± sd | mean difference [95 % CI] | paired t (df) | p | paired d | wins |",
           "|---|---|---|---|---|---|---|",
           f"| {number(p['mean_b'])} ± {number(p['sd_b'])} | {number(p['mean_a'])} ± {number(p['sd_a'])} | {number(p['diff'])} "
           f"[{number(p['ci_low'])}, {number(p['ci_high'])}] | {number(p['t'], 3)} ({p['df']}) | {format_p(p['p'])} | "
           f"{paired_d(p['d'])} ({p['d_label']}) | {a['stats']['wins']}/{p['n']} |", ""]
    return md


SECONDARY_NAMES = {
    "grad_norm_mean": "gradient norm, mean over steps",
    "grad_norm_var": "gradient norm, variance over steps",
    "loss_roughness": "loss roughness (sd of step-to-step change after warmup; lower is smoother)",
    "steps_to_90pct": "steps to 90 % of the final training-loss drop",
    "ms_per_step": "training time, ms per step",
    "wall_s": "training wall time, s",
    "peak_memory_mib": "peak memory, MiB",
}


def _secondary_section(s: dict) -> list[str]:
    sec = s.get("secondary") or {}
    if not sec:
        return []
    md = ["### Secondary measures and cost at the reference size (mean ± sd over seeds)\n",
          "| measure | baseline | candidate |", "|---|---|---|"]
    for key, name in SECONDARY_NAMES.items():
        b, c = sec["baseline"].get(key, {}), sec["candidate"].get(key, {})
        if not b.get("n") and not c.get("n"):
            continue
        md.append(f"| {name} | {_g(b.get('mean'))} ± {_g(b.get('sd'))} | {_g(c.get('mean'))} ± {_g(c.get('sd'))} |")
    md.append("\nFLOPs per forward and backward pass: the evaluator's FLOP ratio above. These measures are "
              "reported, never scored.\n")
    return md


def _method_notes() -> list[str]:
    return ["## Method notes\n",
            "- The primary test is the design's: `scipy.stats.ttest_rel(candidate, baseline)` on the final validation "
            "loss at the reference size, one pair per seed, two-sided, df = n − 1; the 95 % CI is the t-interval of "
            "the mean difference; Cohen's d for paired samples = mean difference / sd of the differences (|d| < 0.2 "
            "negligible, < 0.5 small, < 0.8 medium, else large). Negative differences favour the candidate.",
            "- Holm-Bonferroni over every primary comparison of the invocation (and of `--family-with` reports); the "
            "slope tests form their own Holm family.",
            "- Welch's unequal-variance t-test (`scipy.stats.ttest_ind(..., equal_var=False)`) is a robustness check "
            "only; it ignores the pairing by seed.",
            f"- The design's criteria. Minimum: Holm-adjusted p < {protocol.ALPHA}, more than "
            f"{protocol.MIN_IMPROVEMENT_FRAC:.0%} lower mean final loss, better on at least {protocol.MIN_WINS} of "
            f"{len(protocol.SEEDS)} seeds, and a better scaling slope by its paired test (Holm p < {protocol.ALPHA}, "
            f"negative difference). Strong: also |paired d| > {protocol.STRONG_ABS_D}, a FLOP ratio of at most "
            f"{protocol.MAX_FLOP_RATIO:.2f}, and the researcher's interpretation of the mechanism.",
            "- A run that departs from the design (profile, seeds, tuning trials or horizon, no ladder) is labelled "
            "exploratory and no verdict is drawn, whatever its numbers.",
            "- Scaling law per seed: least squares loss = a + b ln N over the ladder (N = non-embedding parameters), "
            "with R²; the band in the plot is the 95 % t-interval over seeds of the mean fitted curve.",
            "- Tuning trials train the reference size for half the horizon; a median pruner (Optuna's rule, "
            "5 start-up trials) stops trials whose best validation loss is above the median of the finished trials "
            "at the same step.", ""]

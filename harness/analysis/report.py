"""The analysis of one or more runs: the numbers and Markdown section of each run, the per-framework
comparison, and ``analyze``, which writes ``report.md``, ``analysis.json`` and the PNG plots."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import time
from collections import Counter, defaultdict
from pathlib import Path

from harness.analysis.measures import (best_so_far, compile_fallbacks, dedupe, fingerprint_groups, outcome_table, rank_group,
                                       reintroductions, root_of, spearman, stopping_rules, unified_block_diff)
from harness.analysis.plots import plot_early_vs_final, plot_fitness, plot_lineage, plot_rejections, short
from harness.analysis.runs import Prog, Run, display_path, load_run, require_run_folder
from harness.trusted import ledger as ledger_mod
from harness.trusted.frameworks import REPO_ROOT
from harness.trusted.profiles import ConfigError
from harness.validation.stats import format_p


def _fmt(x, digits=4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        return f"{x:.{digits}f}"
    return str(x)


def flag_mark(p: Prog) -> str:
    """What a ranking shows beside a program the evaluator flagged: its score stands, unconfirmed."""
    return f" **FLAGGED** ({p.flags}; confirm with `harness validate` before trusting it)" if p.flags else ""


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
        star = (" ★ best" if p.id in best_ids else "") + (" FLAGGED" if p.flags else "")
        parent = "" if p.parent_id is None or p.parent_id in progs else f" (parent {p.parent_id[:8]} not in database)"
        lines.append(f"{'  ' * depth}- {p.id[:8]} it={p.iteration} gen={p.generation} score={p.score:.4f} [{tag}] "
                     f"fp={short(p.fingerprint_id) if p.verified else 'UNVERIFIABLE'}{extra}{parent}{star}")
        for c in sorted(children.get(p.id, []), key=lambda c: (c.iteration, c.timestamp)):
            walk(c, depth + 1)

    for r in sorted(roots, key=lambda p: (p.iteration, p.timestamp)):
        walk(r, 0)
    if len(lines) >= max_lines:
        lines.append(f"... (truncated at {max_lines} lines)")
    return "\n".join(lines)


def plot_slugs(runs: list[Run]) -> list[str]:
    """The file-name prefix of each run's plots: its folder's name, numbered where two runs share one."""
    names = [re.sub(r"[^A-Za-z0-9_.-]", "_", run.name) for run in runs]
    shared = {n for n in names if names.count(n) > 1}
    return [f"{n}-{i + 1}" if n in shared else n for i, n in enumerate(names)]


def analyze_run(run: Run, out_dir: Path, top: int, slug: str) -> tuple[dict, list[str]]:
    """The numbers and the Markdown section of one run."""
    progs = run.evolved()
    groups, unverifiable = fingerprint_groups(progs)
    md: list[str] = []
    summary: dict = {"run": display_path(run.path), "name": run.name, "framework": run.framework,
                     "checkpoint": display_path(run.checkpoint) if run.checkpoint else None,
                     "last_iteration": run.last_iteration, "stopped_early_at": run.stopped_at, "programs": len(progs),
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
    checkpointed = int(run.metadata.get("last_iteration", 0) or 0)
    lost = {i for i, pid in run.log_successes.items() if pid not in run.programs}
    after = sorted(i for i in lost if i > checkpointed)
    missing = sorted(lost - set(after))
    summary["completed_after_checkpoint"] = after
    summary["completed_but_not_in_database"] = missing

    md.append(f"## Run `{run.name}` — framework `{run.framework or 'unknown'}`\n")
    md.append(f"- folder: `{display_path(run.path)}`")
    md.append(f"- database: `{display_path(run.checkpoint)}` (the latest complete checkpoint, a full snapshot)"
              if run.checkpoint else "- database: **none** (no complete checkpoint)")
    if run.stopped_at is not None:
        md.append(f"- **stopped early by OpenEvolve at iteration {run.stopped_at}** (its `early_stopping_patience`, "
                  "the design's rule (a)); its last checkpoint is still named after the iteration it was to end at")
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
        merged = dedupe(members)[1]
        gsum = {"best": None, "best_so_far": bsf, "top": [],
                "duplicates": {"merged": sum(len(v) for v in merged.values()), "copies_of": merged}}
        if r:
            best_ids.add(r[0].id)
            gsum["best"] = {"id": r[0].id, "iteration": r[0].iteration, "combined_score": r[0].score,
                            "objective_value": r[0].objective_value(), "flags": r[0].flags}
        summary["groups"][fp] = gsum
    md.append("| fingerprint | best program | found at iteration | combined_score | objective value |")
    md.append("|---|---|---|---|---|")
    for fp, gsum in summary["groups"].items():
        b = gsum["best"]
        if b:
            flagged = f" **FLAGGED** ({b['flags']})" if b["flags"] else ""
            md.append(f"| `{fp}` | `{b['id'][:8]}`{flagged} | {b['iteration']} | {b['combined_score']:.4f} | "
                      f"{_fmt(b['objective_value'])} |")
        else:
            md.append(f"| `{fp}` | none valid | – | – | – |")
    flagged = [p for p in progs if p.flags]
    summary["flagged"] = [{"id": p.id, "iteration": p.iteration, "flags": p.flags} for p in flagged]
    if flagged:
        md.append(f"**{len(flagged)} program(s) flagged by the evaluator**: their scores stand and they are ranked, "
                  "but each must be confirmed by `harness validate` before it is trusted: "
                  + "; ".join(f"`{p.id[:8]}` (iteration {p.iteration}): {p.flags}" for p in flagged) + "\n")
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

    # Compile fallbacks
    fallbacks = compile_fallbacks(progs)
    summary["compile_fallbacks"] = fallbacks
    if fallbacks["trained_eagerly"]:
        md.append(f"**{len(fallbacks['trained_eagerly'])} of {fallbacks['compiling_evaluations']} evaluation(s) of a "
                  "compiling profile trained eagerly**, because torch.compile failed on their program (slower; "
                  "the LLM was told why). Errors:\n")
        for error, count in fallbacks["errors"].items():
            md.append(f"- {count} × `{error}`")
        md.append("")
    if fallbacks["not_reported"]:
        md.append(f"{len(fallbacks['not_reported'])} of {fallbacks['compiling_evaluations']} evaluation(s) of a "
                  "compiling profile have a run that did not say whether it compiled: counted neither way.\n")

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
                  f"{best.score:.4f}){flag_mark(best)} against {label}:\n")
        md.append("```diff\n" + (diff or "(no difference in the block)") + "\n```\n")
    if not summary["diffs"]:
        md.append("No valid, verifiable program.\n")

    # Top programs
    md.append(f"### Top programs (ranked within each fingerprint group; top {top})\n")
    md.append("Programs whose EVOLVE block is the same text (stripped) are one entry: the best evaluation of the "
              "block is listed, its copies are merged into it. The validity counts above count every evaluation.\n")
    for fp, r in ranked.items():
        rows = []
        for rank, p in enumerate(r[:top], 1):
            row = {"rank": rank, "id": p.id, "iteration": p.iteration, "combined_score": p.score,
                   "objective_value": p.objective_value(), "param_ratio": p.metric("param_ratio"),
                   "flop_ratio": p.metric("flop_ratio"), "step_time_ratio": p.metric("step_time_ratio"),
                   "memory_ratio": p.metric("memory_ratio"), "early_val_loss": p.metric("early_val_loss"),
                   "early_val_step": p.metric("early_val_step"), "flags": p.flags}
            rows.append(row)
        summary["groups"][fp]["top"] = rows
        dup = summary["groups"][fp]["duplicates"]
        dup_text = (f"; {dup['merged']} duplicate evaluation(s) merged: "
                    + ", ".join(f"`{rep[:8]}` ← " + ", ".join(f"`{c[:8]}`" for c in copies)
                                for rep, copies in dup["copies_of"].items())) if dup["merged"] else ""
        md.append(f"Fingerprint `{fp}` ({len(r)} distinct valid{dup_text}):\n")
        md.append("| rank | program | iteration | combined_score | objective | param ratio | FLOP ratio | "
                  "step-time ratio | memory ratio |")
        md.append("|---|---|---|---|---|---|---|---|---|")
        for row in rows:
            flagged = " **FLAGGED**" if row["flags"] else ""
            md.append(f"| {row['rank']} | `{row['id'][:8]}`{flagged} | {row['iteration']} | {row['combined_score']:.4f} | "
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

    # Stopping rules
    rules = stopping_rules(run)
    summary["stopping_rules"] = rules
    if run.stopped_at is None:
        md.append("### Stopping rules (flagged only: nothing was stopped)\n")
    else:
        md.append("### Stopping rules\n")
        md.append(f"OpenEvolve's own early stopping ended this run at iteration {run.stopped_at} (rule (a), as the "
                  "configs set it); the other rules are flagged only.\n")
    md.append("Where each of the users' stopping rules would first have stopped this run. Rule (a) is OpenEvolve's "
              "own early stopping as the configs set it (`early_stopping_patience`), replayed in iteration order.\n")
    md.append("| rule | would have fired at iteration | detail |")
    md.append("|---|---|---|")
    for label, rule in zip("abcd", rules):
        fired = f"**{rule['fired_at']}**" if rule["fired_at"] is not None else "not triggered"
        md.append(f"| ({label}) {rule['description']} | {fired} | {rule['detail']} |")
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
          "(per fingerprint) | re-introduction rate | Spearman early/final | stopping rules fired (iteration) |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        v = s["validity"]
        bests = "; ".join(f"{g['best']['combined_score']:.4f} (`{fp[:8]}`)" for fp, g in s["groups"].items() if g["best"])
        rho = "; ".join(f"{r['rho']:.2f}, p = {format_p(r['p'])} (`{fp[:8]}`)" if r.get("rho") is not None
                        else f"n={r['n']}, too few (`{fp[:8]}`)" for fp, r in s["spearman"].items())
        fired = ", ".join(f"{r['rule']} at {r['fired_at']}" for r in s["stopping_rules"] if r["fired_at"] is not None)
        rate = s["reintroductions"]["rate"]
        md.append(f"| `{s['name']}` | {s['framework']} | {s['last_iteration']} | {v['evaluated']} | {v['valid']} | "
                  f"{_fmt(v['rate_of_evaluated'], 3) if v['rate_of_evaluated'] is not None else '–'} | "
                  f"{len(s['log_failures'])} | {bests or '–'} | {f'{rate:.1%}' if rate is not None else '–'} | "
                  f"{rho or '–'} | {fired or 'none'} |")
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
        raise ConfigError("matplotlib is not installed (the report's plots need it): pip install -e '.[plots]'")
    run_dirs = [require_run_folder(r) for r in run_dirs]  # before anything is written
    ledger_path = Path(ledger_path or ledger_mod.default_ledger_path())
    try:
        rows = ledger_mod.evaluations(ledger_path) if ledger_path.exists() else []
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{ledger_path}: not a ledger the harness can read ({exc}); give the file HARNESS_LEDGER "
                          "named when the runs were evaluated (--ledger)") from exc
    name = name or "+".join(r.resolve().name for r in run_dirs)
    out_dir = Path(out_dir) if out_dir else REPO_ROOT / "results" / "analysis" / name
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [load_run(r, rows) for r in run_dirs]
    md = [f"# Evolution analysis: {name}\n",
          f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `harness analyze` from {len(runs)} run(s) and the "
          f"ledger `{display_path(ledger_path)}` ({len(rows)} rows{'' if ledger_path.exists() else ', FILE NOT FOUND'}).\n"]
    summaries, sections = [], []
    for run, slug in zip(runs, plot_slugs(runs)):
        s, section = analyze_run(run, out_dir, top, slug)
        summaries.append(s)
        sections += section
    md += _per_framework_table(summaries)
    md += sections
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    result = {"name": name, "ledger": display_path(ledger_path), "out_dir": display_path(out_dir), "runs": summaries}
    (out_dir / "analysis.json").write_text(json.dumps(result, indent=1, default=str))
    result["report_path"] = str(out_dir / "report.md")
    return result

"""``harness validate``: a fair, multi-seed statistical comparison of evolved programs with their baseline.

    harness validate --program PATH [--program PATH ...] [--framework FW]
    harness validate --run RUN_DIR [--run RUN_DIR ...] [--top-k K]
        [--tuning {optuna,shared}] [--trials N] [--seeds N] [--seed-base S] [--no-ladder]
        [--profile NAME] [--threads T] [--jobs J] [--hard-limit-s S] [--ledger PATH] [--out DIR] [--name NAME]
        [--family-with validation.json ...]

The users' protocol, in order:

1. Every candidate goes through the full evaluator (``harness.evaluate.evaluate``: frozen region, policy,
   dynamic gate, training, leak test) and is refused if rejected. The baseline is the framework's pristine
   seed. Candidate code is hostile: it only ever runs in ``python -m harness.sandbox objective``
   subprocesses (own process group, hard wall-clock limit, memory cap); this process reads text only.
2. Fair hyperparameters (lr, warmup steps, weight decay), recorded: ``optuna`` gives baseline and
   candidate the same trial budget (TPE, fixed sampler seed, the profile's defaults enqueued as trial 0);
   ``shared`` tunes the baseline only and trains both with its best settings. Tuning uses the profile's
   training seed; the evaluation seeds are different seeds, so the selection does not leak into the test.
3. N seeds at the profile's full horizon for both, with the chosen hyperparameters; by default every rung
   of the ladder is trained, for the scaling-law fit loss = a + b ln N.
4. Per-seed results, mean ± std, Welch's t-test, Cohen's d, the 95 % CI of the difference, Holm-Bonferroni
   across every candidate (and framework) of the invocation, wins on k of N seeds, scaling fits with
   confidence intervals, FLOP and parameter ratios, and a verdict against the pre-registered criteria.

Jobs run one after another by default. ``--jobs N`` runs N at a time: the independent seed jobs, and the
tuning trials in batches of N (TPE with a constant liar for the trials still running). Every job runs through
the evaluator's executor (``--executor``, default ``$HARNESS_EXECUTOR`` or local): on ``ray`` the seeds and
trials fan out over the cluster. ``run_training_job`` is the one function that runs one training job.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from harness import evaluate as evaluate_mod
from harness import executor as executor_mod
from harness import ledger as ledger_mod
from harness import program as program_mod
from harness import stats
from harness.frameworks import FRAMEWORKS, REPO_ROOT, get_framework
from harness.profiles import ConfigError, Profile, get_profile
from harness.scoring import MalformedRecord, objective_from_untrusted, rungs_for

DPI = 90
TUNABLE = ("lr", "warmup_steps", "weight_decay")
SAMPLER_SEED = 12345


# ----------------------------------------------------------------------------------------------------------
# One training job


@dataclass
class TrainJob:
    framework: str
    program_path: Path  # the spliced program (pristine outside + block); never imported here
    profile: Profile
    seed: int
    hparams: dict
    rungs: str  # "objective" (what the objective needs) or "ladder" (every rung)
    fingerprint_id: str
    limit_s: float
    threads: int | None = None
    label: str = ""
    executor: str | None = None  # local | ray; None: $HARNESS_EXECUTOR, else local


def run_training_job(job: TrainJob) -> dict:
    """Run ONE training job in a sandbox, on the job's executor, and return its outcome:
    ``{"ok", "reason", "message", "record", "fingerprint_id", "seed", "hparams", "wall_s", "execution"}``.

    This is the single place where ``harness validate`` trains anything."""
    request = evaluate_mod.sandbox_request(
        job.framework, job.profile, source=Path(job.program_path).read_text(), seed=job.seed, hparams=job.hparams,
        rungs=job.rungs, fingerprint_id=job.fingerprint_id, threads=job.threads)
    started = time.time()
    run = executor_mod.run_sandbox("objective", request, job.limit_s, job.profile.memory_cap_mib,
                                   executor=job.executor)
    result, log = run.result, run.log
    out = {"ok": False, "seed": job.seed, "hparams": dict(job.hparams), "wall_s": time.time() - started,
           "fingerprint_id": None, "record": None, "execution": run.execution}
    if result is None:
        reason = {"timeout": "timeout", "memory": "memory", "infrastructure": "infrastructure"}.get(run.outcome, "crash")
        return {**out, "reason": reason, "message": run.error or f"the sandbox ended with {run.outcome} and no result",
                "log_tail": log[-1500:]}
    out["fingerprint_id"] = (result.get("fingerprint") or {}).get("id")
    out["hparams"] = result.get("hparams", out["hparams"])
    if result.get("reason") != "ok":
        return {**out, "reason": result.get("reason", "crash"), "message": result.get("message", ""),
                "log_tail": (result.get("traceback") or log)[-1500:]}
    # The objective is recomputed here from the runs' numbers; the sandbox's own fitness and value are not read.
    rungs = [tuple(r) for r in job.profile.ladder] if job.rungs == "ladder" else rungs_for(job.profile)
    try:
        record = objective_from_untrusted(result.get("record"), job.profile, rungs)
    except MalformedRecord as exc:
        return {**out, "reason": "tampering", "message": f"the sandbox handed back a malformed training record: {exc}",
                "log_tail": log[-1500:]}
    record.update(value=-record["fitness"], wall_s=(result.get("record") or {}).get("wall_s"))
    return {**out, "ok": True, "reason": "ok", "message": "ok", "record": record}


# ----------------------------------------------------------------------------------------------------------
# Candidates


@dataclass
class Candidate:
    framework: str
    source: Path  # the file as given (or written from a run's database)
    label: str
    origin: str  # "file" or "<run>:<program id>"
    # filled in by the evaluator step
    evaluation: dict = field(default_factory=dict)
    refused: str | None = None
    program_path: Path | None = None  # spliced copy under the output folder
    sha256: str = ""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "candidate"


def candidates_from_run(run_dir: Path, top_k: int, ledger_path: Path, work: Path, fingerprint: str | None = None) -> tuple[list[Candidate], list[str]]:
    """The top-k valid, verifiable programs of a run's latest checkpoint (ranked within one fingerprint
    group), excluding programs whose block equals the pristine seed's."""
    from harness import analyze

    rows = ledger_mod.evaluations(ledger_path) if Path(ledger_path).exists() else []
    run = analyze.load_run(run_dir, rows)
    notes = []
    groups, unverifiable = analyze.fingerprint_groups(run.evolved())
    if unverifiable:
        notes.append(f"{run.name}: {len(unverifiable)} unverifiable program(s) (no ledger row) were not considered")
    if not groups:
        raise ConfigError(f"{run_dir}: no verifiable program (no ledger row matches): nothing to validate")
    if fingerprint:
        chosen = [g for g in groups if g.startswith(fingerprint)]
        if len(chosen) != 1:
            raise ConfigError(f"{run_dir}: fingerprint {fingerprint!r} matches {len(chosen)} of the groups {sorted(groups)}")
        fp = chosen[0]
    elif len(groups) > 1:
        raise ConfigError(f"{run_dir}: programs from {len(groups)} fingerprint groups ({sorted(groups)}) cannot be "
                          "ranked together; choose one with --fingerprint")
    else:
        fp = next(iter(groups))
    out, seen = [], set()
    for p in analyze.rank_group(groups[fp]):
        fw = p.framework or run.framework
        if fw is None:
            continue
        pristine = program_mod.split(FRAMEWORKS[fw].seed_source()).block
        block = p.block()
        if block.strip() == pristine.strip() or block in seen:
            continue
        seen.add(block)
        path = work / f"{_slug(run.name)}_{p.id[:8]}.py"
        path.write_text(p.code)
        out.append(Candidate(fw, path, f"{fw}-{_slug(run.name)}-{p.id[:8]}", f"{run_dir}:{p.id}"))
        if len(out) >= top_k:
            break
    if not out:
        notes.append(f"{run.name}: no valid program other than the seed")
    return out, notes


# ----------------------------------------------------------------------------------------------------------
# Tuning


def search_space(profile: Profile) -> dict:
    """The hyperparameter ranges, around the profile's values."""
    from optuna.distributions import FloatDistribution, IntDistribution

    w_hi = max(1, min(profile.steps // 4, 4 * profile.warmup_steps))
    w_lo = min(w_hi, max(0, profile.warmup_steps // 4))
    return {
        "lr": FloatDistribution(profile.lr / 4.0, profile.lr * 4.0, log=True),
        "warmup_steps": IntDistribution(w_lo, w_hi),
        "weight_decay": FloatDistribution(0.0, max(0.3, 3.0 * profile.weight_decay)),
    }


def defaults(profile: Profile) -> dict:
    return {"lr": profile.lr, "warmup_steps": profile.warmup_steps, "weight_decay": profile.weight_decay}


def tune(make_job: Callable[[dict], TrainJob], profile: Profile, trials: int, runner, log,
         first_value: float | None = None, sampler_seed: int = SAMPLER_SEED, jobs: int = 1) -> dict:
    """TPE over lr (log-uniform), warmup steps and weight decay; trial 0 is the profile's defaults.

    ``jobs`` trials run at a time: each batch is asked for first, with a constant liar standing in for the
    trials still running, then trained concurrently and told. ``first_value``: the objective of the defaults
    on the tuning seed when already known (the evaluator's own run, identical computation): trial 0 then
    reuses it instead of training again."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = search_space(profile)
    sampler = optuna.samplers.TPESampler(seed=sampler_seed, constant_liar=jobs > 1)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.enqueue_trial(defaults(profile))
    history = []
    while len(history) < trials:
        batch = [study.ask(space) for _ in range(min(max(1, jobs), trials - len(history)))]
        params = [{k: t.params[k] for k in TUNABLE} for t in batch]
        reuse_first = not history and first_value is not None
        to_train = params[1:] if reuse_first else params
        trained = run_batch(runner, [make_job(p) for p in to_train], jobs, lambda m: None)
        if reuse_first:
            trained = [{"ok": True, "record": {"value": first_value}, "reason": "ok", "wall_s": 0.0,
                        "source": "evaluator run (defaults, tuning seed)"}] + trained
        for trial, p, res in zip(batch, params, trained):
            value = res["record"]["value"] if res["ok"] else None
            if value is not None and math.isfinite(value):
                study.tell(trial, value)
            else:
                study.tell(trial, state=TrialState.FAIL)
            history.append({"trial": len(history), "params": p, "value": value, "reason": res["reason"],
                            "source": res.get("source", "trained"), "wall_s": res["wall_s"]})
            log(f"  trial {history[-1]['trial']}: {_hp(p)} -> {value if value is None else f'{value:.4f}'} "
                f"({res['reason']})")
    done = [h for h in history if h["value"] is not None and math.isfinite(h["value"])]
    if not done:
        return {"best": defaults(profile), "best_value": None, "trials": history,
                "note": "every trial failed: the profile's defaults are used"}
    best = min(done, key=lambda h: h["value"])
    return {"best": best["params"], "best_value": best["value"], "trials": history}


def _hp(h: dict) -> str:
    return f"lr={h['lr']:.3g} warmup={int(h['warmup_steps'])} wd={h['weight_decay']:.3g}"


# ----------------------------------------------------------------------------------------------------------
# Statistics of one comparison


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


# ----------------------------------------------------------------------------------------------------------
# Plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_box(comp: dict, path: Path, objective: str) -> None:
    plt = _plt()
    rows = comp["stats"]["seeds"]
    b = [r["baseline"] for r in rows if r["baseline"] is not None]
    c = [r["candidate"] for r in rows if r["candidate"] is not None]
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.boxplot([b, c], tick_labels=["baseline", "candidate"], widths=0.5)
    for r in rows:
        if r["baseline"] is not None and r["candidate"] is not None:
            ax.plot([1, 2], [r["baseline"], r["candidate"]], color="0.6", lw=0.7, zorder=1)
    ax.scatter([1] * len(b), b, color="tab:blue", s=16, zorder=2)
    ax.scatter([2] * len(c), c, color="tab:orange", s=16, zorder=2)
    ax.set_ylabel(objective + " (lower is better)")
    ax.set_title(f"{comp['label']}\nper seed (lines join the same seed)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_curves(comp: dict, base_runs: list[dict], cand_runs: list[dict], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for runs, color, name in ((base_runs, "tab:blue", "baseline"), (cand_runs, "tab:orange", "candidate")):
        first = True
        for r in runs:
            if not r["ok"]:
                continue
            last = r["record"]["runs"][-1]
            ax.plot([p[0] for p in last["val_curve"]], [p[1] for p in last["val_curve"]], color=color, lw=1.2,
                    alpha=0.8, marker="o", ms=3, label=f"{name} validation" if first else None)
            ax.plot([p[0] for p in last["train_curve"]], [p[1] for p in last["train_curve"]], color=color, lw=0.6,
                    alpha=0.35, label=f"{name} train" if first else None)
            first = False
    ax.set_xlabel("step")
    ax.set_ylabel("loss (largest rung trained)")
    ax.set_title(f"{comp['label']}: training curves, one line per seed", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_scaling(comp: dict, base_runs: list[dict], cand_runs: list[dict], path: Path) -> None:
    import numpy as np

    plt = _plt()
    sc = comp["stats"]["scaling"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for runs, fit, color, name in ((base_runs, sc["baseline"], "tab:blue", "baseline"),
                                   (cand_runs, sc["candidate"], "tab:orange", "candidate")):
        xs = []
        for params, losses in ladder_points(runs):
            ax.scatter(params, losses, color=color, s=12, alpha=0.6)
            xs += params
        if xs:
            grid = np.geomspace(min(xs), max(xs), 20)
            lo, hi = fit["slope_ci"]
            ax.plot(grid, fit["mean_intercept"] + fit["mean_slope"] * np.log(grid), color=color,
                    label=f"{name}: b = {fit['mean_slope']:.4f} [{lo:.4f}, {hi:.4f}]")
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("final validation loss")
    ax.set_title(f"{comp['label']}: loss = a + b ln N (mean fit, 95% CI of b)", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# The report


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


def _display(text: str) -> str:
    from harness.analyze import display_path

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
          f"- ledger: `{_display(result['ledger'])}`", ""]
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
          f"- origin: `{_display(c['origin'])}`; program: `{_display(c.get('program_path') or '–')}` "
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


# ----------------------------------------------------------------------------------------------------------
# The driver


def _evaluation_summary(result) -> dict:
    metrics = dict(getattr(result, "metrics", result) or {})
    artifacts = dict(getattr(result, "artifacts", {}) or {})
    keep = ("combined_score", "valid", "final_loss", "scaling_a", "scaling_b", "objective_fitness", "param_ratio",
            "flop_ratio", "step_time_ratio", "memory_ratio", "largest_rung_loss", "early_val_loss")
    out = {k: metrics[k] for k in keep if k in metrics}
    out.update({k: artifacts.get(k) for k in ("reason", "message", "fingerprint_id", "ledger_row", "flags")})
    return out


def _require(module: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{module} is not installed: pip install -e '.[{extra}]'")


def run_batch(runner, batch: list[TrainJob], jobs: int, log) -> list[dict]:
    """Run independent training jobs, ``jobs`` at a time (1 = one after another), results in order."""
    def one(j: TrainJob) -> dict:
        r = runner(j)
        log(f"  {j.label} seed {j.seed}: {r['record']['value'] if r['ok'] else r['reason']} ({r['wall_s']:.0f} s)")
        return r

    if jobs <= 1:
        return [one(j) for j in batch]
    from concurrent.futures import ThreadPoolExecutor  # each job is its own subprocess: threads suffice

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, batch))


def validate(candidates: list[Candidate], profile: Profile, out_dir: Path, *, tuning: str = "optuna", trials: int = 10,
             n_seeds: int = 10, seed_base: int = 1, ladder: bool = True, threads: int | None = None, jobs: int = 1,
             ledger_path: Path | None = None, job_limit_s: float | None = None, runner=run_training_job,
             log: Callable[[str], None] = print, family_with: list[Path] | None = None, name: str | None = None,
             command: str = "harness validate", notes: list[str] | None = None, executor: str | None = None) -> dict:
    """Run the protocol for every candidate; write ``report.md``, ``validation.json`` and PNGs to ``out_dir``.
    ``executor``: where the evaluator and every training job run (local or ray; default ``$HARNESS_EXECUTOR``)."""
    if tuning not in ("optuna", "shared"):
        raise ConfigError(f"unknown tuning {tuning!r}: optuna or shared")
    if n_seeds < 2:
        raise ConfigError("at least 2 seeds are needed for a t-test")
    from harness.profiles import require_device

    executor = executor_mod.ExecutorConfig.from_env(executor).name
    if executor == "local":
        require_device(profile)  # a cluster's workers have the devices, not necessarily this host
    _require("matplotlib", "plots")
    if trials > 0:
        _require("optuna", "search")
    ledger_path = Path(ledger_path or ledger_mod.default_ledger_path())
    out_dir = Path(out_dir)
    (out_dir / "programs").mkdir(parents=True, exist_ok=True)
    seeds = [seed_base + i for i in range(n_seeds)]
    rungs = "ladder" if ladder else "objective"
    n_rungs = len(profile.ladder) if ladder else (1 if profile.objective == "final_loss" else len(profile.ladder))
    limit = job_limit_s or profile.hard_limit_s * max(1, n_rungs)
    external_p = []
    for path in family_with or []:
        prior = json.loads(Path(path).read_text())
        external_p += [c["stats"]["welch"]["p"] for c in prior.get("candidates", []) if c.get("stats")]

    def job(fw, path, fp, seed, hp, which, label):
        return TrainJob(fw, path, profile, seed, hp, which, fp, limit, threads, label, executor)

    baselines: dict[str, dict] = {}

    def baseline_for(fw: str) -> dict:
        if fw in baselines:
            return baselines[fw]
        log(f"[{fw}] preparing the evaluator and the baseline (pristine seed)")
        prepared = evaluate_mod.prepare(fw, profile, ledger_path, executor)
        fp = prepared["fingerprint"]["id"]
        path = out_dir / "programs" / f"{fw}_baseline.py"
        path.write_text(get_framework(fw).seed_source())
        b = {"fingerprint_id": fp, "fingerprint": prepared["fingerprint"], "path": path,
             "evaluator_value": -prepared["baseline"]["fitness"]}
        if trials > 0:
            log(f"[{fw}] tuning the baseline: {trials} trial(s)")
            b["tuning"] = tune(lambda hp: job(fw, path, fp, profile.train_seed, hp, "objective", "baseline-tune"),
                               profile, trials, runner, log, first_value=b["evaluator_value"], jobs=jobs)
        else:
            b["tuning"] = {"best": defaults(profile), "best_value": b["evaluator_value"], "trials": []}
        b["runs"] = None  # trained with the first candidate's seeds, in the same batch
        baselines[fw] = b
        return b

    comparisons = []
    for cand in candidates:
        entry = {"label": cand.label, "framework": cand.framework, "origin": _display(cand.origin),
                 "slug": _slug(cand.label)}
        comparisons.append(entry)
        text = cand.source.read_text(errors="replace")
        try:
            spliced = program_mod.splice(get_framework(cand.framework).seed_source(), text)
        except program_mod.FrozenRegionError:
            spliced = None
        if spliced is not None and program_mod.split(spliced).block.strip() == \
                program_mod.split(get_framework(cand.framework).seed_source()).block.strip():
            entry["refused"] = "the candidate's block is the pristine seed's: it IS the baseline"
            continue
        log(f"[{cand.framework}] {cand.label}: the full evaluator first")
        result = evaluate_mod.evaluate(cand.framework, str(cand.source), profile, ledger_path, executor)
        ev = _evaluation_summary(result)
        entry["evaluation"] = ev
        entry["fingerprint_id"] = ev.get("fingerprint_id")
        if ev.get("reason") != "ok":
            entry["refused"] = f"rejected by the evaluator: `{ev.get('reason')}`"
            log(f"  refused: {ev.get('reason')}: {str(ev.get('message'))[:200]}")
            continue
        path = out_dir / "programs" / f"{entry['slug']}.py"
        path.write_text(spliced)
        entry["program_path"], entry["sha256"] = _display(path), program_mod.sha256(spliced)
        base = baseline_for(cand.framework)
        fp = base["fingerprint_id"]
        if ev["fingerprint_id"] != fp:
            entry["refused"] = (f"the candidate was evaluated under fingerprint {ev['fingerprint_id']}, the baseline "
                                f"under {fp}: not comparable")
            continue
        cand_first = -ev["objective_fitness"] if "objective_fitness" in ev else None
        if tuning == "optuna" and trials > 0:
            log(f"[{cand.framework}] {cand.label}: tuning, {trials} trial(s)")
            ctune = tune(lambda hp: job(cand.framework, path, fp, profile.train_seed, hp, "objective", "cand-tune"),
                         profile, trials, runner, log, first_value=cand_first, jobs=jobs)
        else:
            ctune = {"best": dict(base["tuning"]["best"]), "best_value": None, "trials": [],
                     "note": "shared: the baseline's best settings" if trials > 0 else "no tuning: the profile's defaults"}
        hp = ctune["best"]
        batch = [job(cand.framework, path, fp, s, hp, rungs, cand.label) for s in seeds]
        log(f"[{cand.framework}] {cand.label}: seeds {seeds} with {_hp(hp)}")
        if base["runs"] is None:
            bhp = base["tuning"]["best"]
            log(f"[{cand.framework}] baseline: seeds {seeds} with {_hp(bhp)}")
            batch = [job(cand.framework, base["path"], fp, s, bhp, rungs, "baseline") for s in seeds] + batch
        done = run_batch(runner, batch, jobs, log)
        if base["runs"] is None:
            base["runs"], done = done[: len(seeds)], done[len(seeds):]
        cand_runs = done
        mismatched = {r["fingerprint_id"] for r in base["runs"] + cand_runs if r["fingerprint_id"]} - {fp}
        if mismatched:
            entry["refused"] = (f"the environment changed during the validation: training runs report fingerprint(s) "
                                f"{sorted(mismatched)} instead of {fp} (harness code, data, software or hardware "
                                "changed); the runs are not comparable")
            continue
        entry["hyperparameters"] = {
            "baseline": {**base["tuning"], "n_trials": len(base["tuning"].get("trials", []))},
            "candidate": {**ctune, "n_trials": len(ctune.get("trials", []))},
        }
        entry["stats"] = compare(base["runs"], cand_runs)
        entry["_runs"] = (base["runs"], cand_runs)

    family = decide(comparisons, external_p)
    objective = profile.objective
    for entry in comparisons:
        if entry.get("stats"):
            b_runs, c_runs = entry.pop("_runs")
            plot_box(entry, out_dir / f"{entry['slug']}_box.png", objective)
            plot_curves(entry, b_runs, c_runs, out_dir / f"{entry['slug']}_curves.png")
            if entry["stats"]["scaling"]:
                plot_scaling(entry, b_runs, c_runs, out_dir / f"{entry['slug']}_scaling.png")
            entry["runs"] = {"baseline": [_slim(r) for r in b_runs], "candidate": [_slim(r) for r in c_runs]}
    result = {
        "name": name or out_dir.name, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command,
        "profile": {k: getattr(profile, k) for k in ("name", "objective", "steps", "device", "lr", "warmup_steps",
                                                      "weight_decay", "data_source")},
        "tuning": tuning, "trials": trials, "tuning_seed": profile.train_seed, "seeds": seeds, "ladder": ladder,
        "threads": threads, "jobs": jobs, "executor": executor, "search_space": _space_text(profile), "ledger": _display(ledger_path),
        "holm_family_size": family, "family_with": [str(p) for p in family_with or []],
        "baselines": {fw: {"fingerprint_id": b["fingerprint_id"], "fingerprint": b["fingerprint"],
                           "tuning": b["tuning"]} for fw, b in baselines.items()},
        "candidates": comparisons, "notes": notes or [],
    }
    (out_dir / "validation.json").write_text(json.dumps(result, indent=1, default=_json_default))
    (out_dir / "report.md").write_text(render_report(result))
    return result


def _slim(run: dict) -> dict:
    """A job's outcome for the JSON, curves kept (they are small)."""
    out = {k: v for k, v in run.items() if k != "record"}
    if run.get("record"):
        rec = run["record"]
        out["record"] = {k: v for k, v in rec.items() if k != "runs"}
        out["record"]["runs"] = [{k: r.get(k) for k in ("rung", "final_val_loss", "non_embedding_params", "params",
                                                         "val_curve", "train_curve", "ms_per_step", "wall_s", "status")}
                                 for r in rec["runs"]]
    return out


def _space_text(profile: Profile) -> str:
    sp = search_space(profile)
    return (f"lr log-uniform [{sp['lr'].low:.3g}, {sp['lr'].high:.3g}], warmup steps integer "
            f"[{sp['warmup_steps'].low}, {sp['warmup_steps'].high}], weight decay uniform "
            f"[{sp['weight_decay'].low:.3g}, {sp['weight_decay'].high:.3g}]")


def _json_default(x):
    if isinstance(x, Path):
        return str(x)
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    return str(x)


def _command_line(args: argparse.Namespace) -> str:
    parts = ["harness validate"]
    for key, value in sorted(vars(args).items()):
        if key in ("func", "command") or value in (None, False, []):
            continue
        flag = "--" + key.replace("_", "-")
        for v in (value if isinstance(value, list) else [value]):
            parts.append(flag if v is True else f"{flag} {_display(v) if isinstance(v, str) else v}")
    return " ".join(parts)


def cmd_validate(args: argparse.Namespace) -> int:
    from harness import analyze

    if not args.program and not args.run:
        print("harness validate: give --program PATH (with --framework) or --run RUN_DIR", flush=True)
        return 2
    profile = get_profile(args.profile)
    if args.hard_limit_s:
        profile = dataclasses.replace(profile, hard_limit_s=float(args.hard_limit_s))  # operational: not fingerprinted
    ledger_path = Path(args.ledger) if args.ledger else ledger_mod.default_ledger_path()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidates, notes = [], []
    work = Path(args.out or REPO_ROOT / "results" / "validation" / (args.name or f"validate-{stamp}"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "inputs").mkdir(exist_ok=True)
    for p in args.program or []:
        path = Path(p)
        fw = args.framework or analyze.framework_of(path.read_text(errors="replace"))
        if fw is None:
            print(f"harness validate: cannot tell the framework of {p}; pass --framework", flush=True)
            return 2
        candidates.append(Candidate(fw, path, f"{fw}-{_slug(path.stem)}", str(path)))
    for r in args.run or []:
        found, run_notes = candidates_from_run(Path(r), args.top_k, ledger_path, work / "inputs", args.fingerprint)
        candidates += found
        notes += run_notes
    if not candidates:
        print("harness validate: no candidate to validate" + (f" ({'; '.join(notes)})" if notes else ""), flush=True)
        return 1
    name = args.name or work.name
    result = validate(candidates, profile, work, tuning=args.tuning, trials=args.trials, n_seeds=args.seeds,
                      seed_base=args.seed_base, ladder=not args.no_ladder, threads=args.threads, jobs=args.jobs,
                      ledger_path=ledger_path, job_limit_s=args.job_limit_s,
                      log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True),
                      family_with=[Path(p) for p in args.family_with or []], name=name,
                      command=_command_line(args), notes=notes, executor=args.executor)
    for c in result["candidates"]:
        if c.get("refused"):
            print(f"{c['label']}: REFUSED: {c['refused']}")
        else:
            s = c["stats"]
            print(f"{c['label']}: {s['verdict']['level']}: {s['verdict']['text']}")
    print(f"report: {work / 'report.md'}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("validate", help="fair multi-seed statistical comparison of programs with their baseline")
    p.add_argument("--program", action="append", help="a candidate program (repeatable)")
    p.add_argument("--framework", choices=sorted(FRAMEWORKS), help="framework of --program (default: from the class name)")
    p.add_argument("--run", action="append", help="an OpenEvolve output folder: validate its top-k programs (repeatable)")
    p.add_argument("--top-k", type=int, default=3, help="programs per --run (default 3)")
    p.add_argument("--fingerprint", help="with --run: the fingerprint group to take the top-k from (prefix)")
    p.add_argument("--profile", help="smoke | pilot | full (default: $HARNESS_PROFILE or full)")
    p.add_argument("--tuning", choices=["optuna", "shared"], default="optuna",
                   help="optuna: equal trial budget for both; shared: tune the baseline, use its settings for both")
    p.add_argument("--trials", type=int, default=10, help="Optuna trials per tuned side (0 = the profile's defaults)")
    p.add_argument("--seeds", type=int, default=10, help="evaluation seeds per side (default 10)")
    p.add_argument("--seed-base", type=int, default=1, help="first evaluation seed (the tuning seed is the profile's)")
    p.add_argument("--no-ladder", action="store_true", help="train only the objective's rungs (no scaling fit)")
    p.add_argument("--threads", type=int, help="torch intra-op threads in each training job (default: torch's)")
    p.add_argument("--jobs", type=int, default=1,
                   help="training jobs run at once: seeds, and tuning trials in batches (default 1: one after another)")
    p.add_argument("--executor", choices=["local", "ray"],
                   help="where the evaluator and the training jobs run (default: $HARNESS_EXECUTOR or local)")
    p.add_argument("--hard-limit-s", type=float, help="the evaluator's hard limit (operational, not fingerprinted)")
    p.add_argument("--job-limit-s", type=float, help="wall-clock limit of one training job")
    p.add_argument("--ledger", help="ledger file (default: $HARNESS_LEDGER or results/ledger.sqlite)")
    p.add_argument("--out", help="report folder (default: results/validation/<name>/)")
    p.add_argument("--name", help="report name")
    p.add_argument("--family-with", action="append", help="an earlier validation.json whose comparisons join the Holm family")
    p.set_defaults(func=cmd_validate)

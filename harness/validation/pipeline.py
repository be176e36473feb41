"""``validate``: the protocol of ``harness validate`` for every candidate of one invocation, end to end; it
writes ``report.md``, ``validation.json`` and the plots.

The users' protocol, in order:

1. Every candidate goes through the full evaluator (``harness.trusted.evaluate.evaluate``: frozen region, policy,
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
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

from harness.trusted import evaluate as evaluate_mod
from harness.trusted import executor as executor_mod
from harness.trusted import ledger as ledger_mod
from harness.trusted import program as program_mod
from harness.trusted.frameworks import get_framework
from harness.trusted.profiles import ConfigError, Profile
from harness.validation.comparison import compare, decide
from harness.validation.jobs import Candidate, TrainJob, run_batch, run_training_job, slim, slug
from harness.validation.plots import plot_box, plot_curves, plot_scaling
from harness.validation.report import display, render_report
from harness.validation.tuning import defaults, hp_text, space_text, tune


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
    from harness.trusted.profiles import require_device

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
        entry = {"label": cand.label, "framework": cand.framework, "origin": display(cand.origin),
                 "slug": slug(cand.label)}
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
        entry["program_path"], entry["sha256"] = display(path), program_mod.sha256(spliced)
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
        log(f"[{cand.framework}] {cand.label}: seeds {seeds} with {hp_text(hp)}")
        if base["runs"] is None:
            bhp = base["tuning"]["best"]
            log(f"[{cand.framework}] baseline: seeds {seeds} with {hp_text(bhp)}")
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
            entry["runs"] = {"baseline": [slim(r) for r in b_runs], "candidate": [slim(r) for r in c_runs]}
    result = {
        "name": name or out_dir.name, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command,
        "profile": {k: getattr(profile, k) for k in ("name", "objective", "steps", "device", "lr", "warmup_steps",
                                                      "weight_decay", "data_source")},
        "tuning": tuning, "trials": trials, "tuning_seed": profile.train_seed, "seeds": seeds, "ladder": ladder,
        "threads": threads, "jobs": jobs, "executor": executor, "search_space": space_text(profile), "ledger": display(ledger_path),
        "holm_family_size": family, "family_with": [str(p) for p in family_with or []],
        "baselines": {fw: {"fingerprint_id": b["fingerprint_id"], "fingerprint": b["fingerprint"],
                           "tuning": b["tuning"]} for fw, b in baselines.items()},
        "candidates": comparisons, "notes": notes or [],
    }
    (out_dir / "validation.json").write_text(json.dumps(result, indent=1, default=_json_default))
    (out_dir / "report.md").write_text(render_report(result))
    return result


def _json_default(x):
    if isinstance(x, Path):
        return str(x)
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    return str(x)

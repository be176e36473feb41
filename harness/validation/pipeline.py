"""``validate``: the protocol of ``harness validate`` for every candidate of one invocation, end to end; it
writes ``report.md``, ``validation.json`` and the plots.

The users' design (``harness.validation.protocol``), in order:

1. Every candidate goes through the full evaluator (``harness.trusted.evaluate.evaluate``: frozen region, policy,
   dynamic gate, training, leak test) and is refused if rejected. The baseline is the framework's pristine
   seed. Candidate code is hostile: it only ever runs in ``python -m harness.sandbox objective``
   subprocesses (own process group, hard wall-clock limit, memory cap); this process reads text only.
2. Tuning: option A (``optuna``) tunes baseline and candidate with equal budgets and independent samplers;
   option B (``shared``) tunes the baseline only and trains both with its settings. Trials train the
   reference rung for half the horizon on the profile's training seed, disjoint from the evaluation seeds.
3. Seeds 42..51 at the profile's full horizon for both, with the chosen hyperparameters; by default every rung
   of the ladder is trained, for the scaling-law fit loss = a + b ln N.
4. The primary comparison: the final validation loss at the reference size, paired by seed (t, df, p, the
   paired d and the 95 % CI of the mean difference), Holm-adjusted across every candidate and framework of
   the invocation; the slopes by their own paired test; Welch's test as a robustness check; secondary
   measures and cost; the comparison across frameworks; and a verdict against the design's criteria, or the
   label "exploratory" with every deviation named.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from harness.trusted import evaluate as evaluate_mod
from harness.trusted import executor as executor_mod
from harness.trusted import ledger as ledger_mod
from harness.trusted import program as program_mod
from harness.trusted.frameworks import get_framework
from harness.trusted.profiles import ConfigError, Profile
from harness.trusted.scoring import rungs_for
from harness.validation import protocol
from harness.validation.comparison import across_frameworks, compare, decide
from harness.validation.jobs import (NOT_CACHED, Candidate, JobCache, TrainJob, run_batch, run_training_job, slim,
                                     slug, write_atomically)
from harness.validation.plots import plot_comparison, plot_frameworks
from harness.validation.report import display, render_report
from harness.validation.tuning import defaults, hp_text, tune


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


def validate(candidates: list[Candidate], profile: Profile, out_dir: Path, *, tuning: str = "optuna",
             trials: int = protocol.TUNING_TRIALS, seeds: list[int] | None = None, ladder: bool = True,
             threads: int | None = None, jobs: int = 1, ledger_path: Path | None = None,
             job_limit_s: float | None = None, runner=run_training_job, log: Callable[[str], None] = print,
             family_with: list[Path] | None = None, name: str | None = None, command: str = "harness validate",
             notes: list[str] | None = None, executor: str | None = None,
             interpretations: dict[str, str] | None = None, departures: list[str] | None = None) -> dict:
    """Run the protocol for every candidate; write ``report.md``, ``validation.json`` and PNGs to ``out_dir``.
    ``executor``: where the evaluator and every training job run (local or ray; default ``$HARNESS_EXECUTOR``).
    ``interpretations``: {candidate label: the researcher's interpretation of its mechanism}.
    ``departures``: how the run this validation belongs to (a campaign) departs from the design; they join the
    validation's own deviations."""
    if tuning not in protocol.TUNING_MODES:
        raise ConfigError(f"unknown tuning {tuning!r}: {' or '.join(protocol.TUNING_MODES)}")
    seeds = list(protocol.SEEDS if seeds is None else seeds)
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ConfigError("at least 2 distinct seeds are needed for a paired t-test")
    if profile.train_seed in seeds:
        raise ConfigError(f"the tuning seed {profile.train_seed} must not be an evaluation seed")
    from harness.trusted.profiles import require_device

    executor = executor_mod.ExecutorConfig.from_env(executor).name
    if executor == "local":
        require_device(profile)  # a cluster's workers have the devices, not necessarily this host
    _require("matplotlib", "plots")
    if trials > 0:
        _require("optuna", "search")
    ledger_path = Path(ledger_path or ledger_mod.default_ledger_path())
    out_dir = Path(out_dir)
    candidates = _unique_labels(candidates)
    recorded = _recorded_interpretations(out_dir)
    (out_dir / "programs").mkdir(parents=True, exist_ok=True)
    runner = JobCache(out_dir / "jobs").wrap(runner)  # the same command in the same folder resumes
    rungs = "ladder" if ladder else "objective"
    n_rungs = len(profile.ladder) if ladder else len(rungs_for(profile))
    limit = job_limit_s or profile.hard_limit_s * max(1, n_rungs)
    deviations = protocol.deviations(profile, seeds, tuning, trials, ladder)
    deviations += [d for d in departures or [] if d not in deviations]
    external = _external(family_with or [])

    def job(fw, path, fp, seed, hp, which, label):
        # The first evaluation seed of each side also measures the token-mixing pattern of its trained model.
        return TrainJob(fw, path, profile, seed, hp, which, fp, limit, threads, label, executor,
                        mixing=which != "reference" and seed == seeds[0])

    def tuned(fw, path, fp, side, role="candidate"):
        log(f"[{fw}] tuning {side}: {trials} trial(s)")
        return tune(lambda hp: job(fw, path, fp, profile.train_seed, hp, "reference", f"{side}-tune"), profile,
                    trials, runner, log, side=side, jobs=jobs, role=role)

    baselines: dict[str, dict] = {}
    prepared_by_fw: dict[str, dict] = {}

    def prepared_for(fw: str) -> dict:
        if fw not in prepared_by_fw:
            log(f"[{fw}] preparing the evaluator and the baseline (pristine seed)")
            prepared_by_fw[fw] = evaluate_mod.prepare(fw, profile, ledger_path, executor)
        return prepared_by_fw[fw]

    def evaluated(cand: Candidate, spliced: str | None) -> dict:
        """The evaluator's summary of the candidate, remembered in the folder under the environment's fingerprint,
        so that a resumed validation does not evaluate it again."""
        fp = prepared_for(cand.framework)["fingerprint"]["id"]
        key = program_mod.sha256(f"{cand.framework}\n{fp}\n{profile.digest()}\n{spliced or cand.source.read_text()}")
        path = out_dir / "evaluations" / f"{key[:32]}.json"
        try:
            ev = json.loads(path.read_text())
            log(f"[{cand.framework}] {cand.label}: the evaluator's result, cached")
            return ev
        except (OSError, ValueError):  # none yet, or cut short by a kill: evaluate
            pass
        log(f"[{cand.framework}] {cand.label}: the full evaluator first")
        ev = _evaluation_summary(evaluate_mod.evaluate(cand.framework, str(cand.source), profile, ledger_path, executor))
        if ev.get("reason") not in NOT_CACHED:
            write_atomically(path, json.dumps(ev, default=str))
        return ev

    def baseline_for(fw: str) -> dict:
        if fw in baselines:
            return baselines[fw]
        prepared = prepared_for(fw)
        fp = prepared["fingerprint"]["id"]
        path = out_dir / "programs" / f"{fw}_baseline.py"
        path.write_text(get_framework(fw).seed_source())
        b = {"fingerprint_id": fp, "fingerprint": prepared["fingerprint"], "path": path}
        b["tuning"] = (tuned(fw, path, fp, f"{fw}-baseline", "baseline") if trials > 0 else
                       {"best": defaults(profile), "best_value": None, "trials": [],
                        "note": "no tuning: the profile's defaults"})
        b["runs"] = None  # trained with the first candidate's seeds, in the same batch
        baselines[fw] = b
        return b

    comparisons = []
    for cand in candidates:
        entry = {"label": cand.label, "framework": cand.framework, "origin": display(cand.origin),
                 "slug": slug(cand.label), "interpretation": (interpretations or {}).get(cand.label)}
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
        ev = evaluated(cand, spliced)
        entry["evaluation"] = ev
        entry["fingerprint_id"] = ev.get("fingerprint_id")
        if ev.get("reason") != "ok":
            entry["refused"] = f"rejected by the evaluator: `{ev.get('reason')}`"
            log(f"  refused: {ev.get('reason')}: {str(ev.get('message'))[:200]}")
            continue
        path = out_dir / "programs" / f"{entry['slug']}.py"
        path.write_text(spliced)
        entry["program_path"], entry["sha256"] = display(path), program_mod.sha256(spliced)
        if entry["interpretation"] is None:  # recorded with --interpret for this very program: kept
            entry["interpretation"] = recorded.get((cand.label, entry["sha256"]))
        base = baseline_for(cand.framework)
        fp = base["fingerprint_id"]
        if ev["fingerprint_id"] != fp:
            entry["refused"] = (f"the candidate was evaluated under fingerprint {ev['fingerprint_id']}, the baseline "
                                f"under {fp}: not comparable")
            continue
        if tuning == "optuna" and trials > 0:
            ctune = tuned(cand.framework, path, fp, cand.label)
        else:
            ctune = {"best": dict(base["tuning"]["best"]), "best_value": None, "trials": [],
                     "note": "option B: the baseline's best settings" if trials > 0 else "no tuning: the profile's defaults"}
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
        entry["deviations"] = [text for text in (_untuned("the baseline", base["tuning"]),
                                                 _untuned("the candidate", ctune)) if text]
        entry["stats"] = compare(base["runs"], cand_runs, tuple(profile.reference))
        if tuning == "shared" and trials > 0:
            # The design asks option B to report both results: the candidate with the baseline's settings (the
            # comparison above) and with its own tuning (option A), beside it, outside the Holm family.
            own = tuned(cand.framework, path, fp, cand.label)
            log(f"[{cand.framework}] {cand.label} (own tuning): seeds {seeds} with {hp_text(own['best'])}")
            own_runs = run_batch(runner, [job(cand.framework, path, fp, s, own["best"], rungs,
                                              f"{cand.label} (own tuning)") for s in seeds], jobs, log)
            if {r["fingerprint_id"] for r in own_runs if r["fingerprint_id"]} - {fp}:
                entry["option_a"] = {"refused": "the environment changed during the validation"}
            else:
                entry["option_a"] = {"hyperparameters": {**own, "n_trials": len(own["trials"])},
                                     "stats": compare(base["runs"], own_runs, tuple(profile.reference))}
        entry["mixing"] = {side: runs[0]["record"].get("mixing") if runs[0]["ok"] else None
                           for side, runs in (("baseline", base["runs"]), ("candidate", cand_runs))}
        entry["_runs"] = (base["runs"], cand_runs)

    families = decide(comparisons, deviations, external)
    frameworks = across_frameworks(comparisons)
    result = {
        "name": name or out_dir.name, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command,
        "profile": {k: getattr(profile, k) for k in ("name", "objective", "steps", "device", "lr", "warmup_steps",
                                                      "weight_decay", "batch_size_seqs", "data_source")},
        "reference_rung": list(profile.reference), "deviations": deviations,
        "tuning": tuning, "trials": trials, "tuning_seed": profile.train_seed, "seeds": seeds, "ladder": ladder,
        "threads": threads, "jobs": jobs, "executor": executor,
        "search_space": protocol.search_space(profile).text(), "ledger": display(ledger_path),
        "holm_family_size": families["primary"], "slope_family_size": families["slope"],
        "family_with": [str(Path(p).resolve()) for p in family_with or []],
        "baselines": {fw: {"fingerprint_id": b["fingerprint_id"], "fingerprint": b["fingerprint"],
                           "tuning": b["tuning"]} for fw, b in baselines.items()},
        "candidates": comparisons, "frameworks": frameworks, "notes": notes or [],
    }
    for entry in comparisons:
        if entry.get("stats"):
            b_runs, c_runs = entry.pop("_runs")
            entry["runs"] = {"baseline": [slim(r) for r in b_runs], "candidate": [slim(r) for r in c_runs]}
    write_outputs(result, out_dir)
    return result


def _unique_labels(candidates: list[Candidate]) -> list[Candidate]:
    """Each candidate under a label of its own: a label names its files, its plots and its interpretation. A label
    that repeats (two runs' ``best_program.py``, say) gets a hash of its program's text; the same program twice is
    refused, as it would count twice in the Holm family."""
    counts = Counter(c.label for c in candidates)
    out = [dataclasses.replace(c, label=f"{c.label}-{program_mod.sha256(c.source.read_text(errors='replace'))[:8]}")
           if counts[c.label] > 1 else c for c in candidates]
    twice = sorted(label for label, n in Counter(c.label for c in out).items() if n > 1)
    if twice:
        raise ConfigError(f"the same program is given twice ({', '.join(twice)}): give each candidate once")
    return out


def _recorded_interpretations(out_dir: Path) -> dict[tuple[str, str], str]:
    """{(label, program sha256): interpretation} of an earlier validation in the folder: the same command run again
    keeps what the researcher recorded for the same program."""
    try:
        earlier = json.loads((out_dir / "validation.json").read_text())
    except (OSError, ValueError):
        return {}
    return {(c["label"], c.get("sha256")): c["interpretation"] for c in earlier.get("candidates", [])
            if c.get("interpretation") and c.get("sha256")}


def _untuned(side: str, tuning: dict) -> str | None:
    """The departure of a side whose tuning ran but finished no trial: it trained with the profile's defaults,
    against a side that may be tuned."""
    trials = tuning.get("trials") or []
    if trials and not any(t["state"] == "complete" for t in trials):
        return (f"{side}: none of its {len(trials)} tuning trial(s) finished, so it trained with the profile's "
                "defaults")
    return None


def write_outputs(result: dict, out_dir: Path) -> None:
    """validation.json, the plots and report.md, all from the result alone (so that they can be redrawn)."""
    out_dir = Path(out_dir)
    for entry in result["candidates"]:
        if entry.get("stats"):
            _store_mixing(entry, out_dir)
            plot_comparison(entry, result, out_dir)
    if result.get("frameworks") and not result["frameworks"].get("not_comparable"):
        plot_frameworks(result, out_dir / "frameworks.png")
    (out_dir / "validation.json").write_text(json.dumps(result, indent=1, default=_json_default))
    (out_dir / "report.md").write_text(render_report(result))


def _store_mixing(entry: dict, out_dir: Path) -> None:
    """The token-mixing matrices go to ``<slug>_mixing.npz`` (T x T per layer and side, compressed): in
    validation.json they would outweigh everything else. The entry keeps where they are and what they show."""
    import numpy as np

    mixing = entry.get("mixing") or {}
    if not any(m and "layers" in m for m in mixing.values()):
        return
    name = f"{entry['slug']}_mixing.npz"
    arrays = {f"{side}_layer{i}": np.asarray(layer, dtype=np.float32)
              for side, m in mixing.items() if m and "layers" in m for i, layer in enumerate(m["layers"])}
    np.savez_compressed(out_dir / name, **arrays)
    entry["mixing"] = {side: ({k: v for k, v in m.items() if k != "layers"}
                              | {"file": name, "side": side, "n_layers": len(m["layers"])}
                              if m and "layers" in m else m) for side, m in mixing.items()}


def _external(family_with: list) -> dict:
    """The raw primary and slope p-values of earlier reports whose comparisons join this one's Holm families."""
    external = {"primary": [], "slope": []}
    for path in family_with:
        prior = json.loads(Path(path).read_text())
        for c in prior.get("candidates", []):
            if c.get("stats") and "primary" not in c["stats"]:
                raise ConfigError(f"{path}: written before the paired primary test existed; validate it again to "
                                  "join its comparisons to this family")
            if c.get("stats"):
                external["primary"].append(c["stats"]["primary"]["p"])
                if c["stats"].get("scaling"):
                    external["slope"].append(c["stats"]["scaling"]["slope_test"]["p"])
    return external


def interpret(out_dir: Path, label: str, text: str) -> dict:
    """Record the researcher's interpretation of a candidate's mechanism, re-draw the verdicts and the report."""
    out_dir = Path(out_dir)
    result = json.loads((out_dir / "validation.json").read_text())
    labels = [c["label"] for c in result["candidates"]]
    if label not in labels:
        raise ConfigError(f"no candidate {label!r} in {out_dir / 'validation.json'}: {', '.join(labels)}")
    if labels.count(label) > 1:  # a validation from before labels were made unique
        raise ConfigError(f"{label!r} names {labels.count(label)} candidates in {out_dir / 'validation.json'}: "
                          "validate them again to give each a label of its own")
    for c in result["candidates"]:
        if c["label"] == label:
            c["interpretation"] = text.strip() or None
    families = decide(result["candidates"], result["deviations"], _external(result.get("family_with") or []))
    result["holm_family_size"], result["slope_family_size"] = families["primary"], families["slope"]
    result["frameworks"] = across_frameworks(result["candidates"])
    write_outputs(result, out_dir)
    return result


def _json_default(x):
    if isinstance(x, Path):
        return str(x)
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    return str(x)

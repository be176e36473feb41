"""The hyperparameter search of ``harness validate``, as the design has it: Optuna's TPE over lr (log-uniform),
warmup steps, weight decay and batch size, in the design's ranges (``protocol.search_space``), each trial
trained on the reference rung for half the full horizon, with a median pruner.

Pruning runs where the trial runs: before a trial starts, the trusted side computes the median pruner's
thresholds from the finished trials (the median of their validation losses at each evaluation step), and the
training stops at the first evaluation where its best loss so far is above that step's threshold. The curve it
hands back is then replayed into the study through ``trial.report`` and Optuna's own ``MedianPruner``, which
must agree: a run that stopped where the pruner would not have pruned it is a failed trial.
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable

import numpy as np

from harness.trusted.profiles import Profile
from harness.validation import protocol
from harness.validation.jobs import TrainJob, run_batch

TUNED = ("lr", "warmup_steps", "weight_decay", "batch_size_seqs")
PRUNER_STARTUP_TRIALS = 5  # Optuna's default: no pruning until this many trials have finished
BASE_SAMPLER_SEED = 12345


def sampler_seed(side: str, role: str) -> int:
    """An independent TPE seed for each tuned side, derived from its role (baseline or candidate) and label, so
    that reruns repeat it and a candidate labelled like a baseline still gets a seed of its own."""
    return BASE_SAMPLER_SEED + int(hashlib.sha256(f"{role}:{side}".encode()).hexdigest()[:6], 16)


def distributions(profile: Profile) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = protocol.search_space(profile)
    return {
        "lr": FloatDistribution(*space.lr, log=True),
        "warmup_steps": IntDistribution(*space.warmup_steps),
        "weight_decay": FloatDistribution(*space.weight_decay),
        "batch_size_seqs": CategoricalDistribution(list(space.batch_size_seqs)),
    }


def defaults(profile: Profile) -> dict:
    """The profile's own recipe: used without tuning, and when every trial failed."""
    return {"lr": profile.lr, "warmup_steps": profile.warmup_steps, "weight_decay": profile.weight_decay,
            "batch_size_seqs": profile.batch_size_seqs}


def median_thresholds(study) -> dict[int, float]:
    """{step: median validation loss of the finished trials at that step}, or {} while the pruner is still in
    its start-up (the same rule as ``optuna.pruners.MedianPruner``'s defaults)."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < PRUNER_STARTUP_TRIALS:
        return {}
    steps = sorted({s for t in done for s in t.intermediate_values})
    return {s: float(np.nanpercentile([t.intermediate_values[s] for t in done if s in t.intermediate_values], 50))
            for s in steps}


def tune(make_job: Callable[[dict], TrainJob], profile: Profile, trials: int, runner, log, side: str,
         jobs: int = 1, role: str = "candidate") -> dict:
    """``trials`` TPE trials for one side, ``jobs`` at a time (a constant liar stands in for the trials still
    running); returns the best hyperparameters (with the tuning horizon) and every trial. A trial trained under
    another fingerprint than its job's (another kind of worker) fails: its value is not comparable."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = protocol.search_space(profile)
    dists = distributions(profile)
    seed = sampler_seed(side, role)
    study = optuna.create_study(direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=jobs > 1),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS))
    history = []
    while len(history) < trials:
        thresholds = median_thresholds(study)
        batch = [study.ask(dists) for _ in range(min(max(1, jobs), trials - len(history)))]
        params = [{k: t.params[k] for k in TUNED} for t in batch]
        made = []
        for p in params:
            job = make_job({**p, "steps": space.steps})
            job.prune_above = dict(thresholds) or None
            made.append(job)
        trained = run_batch(runner, made, jobs, lambda m: None)
        # Replay every curve of the batch before telling any trial, so that each is judged against the same
        # finished trials that set its thresholds.
        outcomes = [_replay(trial, res) if res.get("fingerprint_id") in (None, job.fingerprint_id) else
                    (TrialState.FAIL, None, f"trained under fingerprint {res['fingerprint_id']}, not the side's "
                                            f"{job.fingerprint_id}") for trial, res, job in zip(batch, trained, made)]
        for trial, p, res, (state, value, note) in zip(batch, params, trained, outcomes):
            study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
            history.append({"trial": len(history), "params": p, "value": value, "state": state.name.lower(),
                            "reason": res["reason"], "note": note, "wall_s": res["wall_s"]})
            log(f"  trial {history[-1]['trial']}: {hp_text(p)} -> "
                f"{'–' if value is None else f'{value:.4f}'} ({history[-1]['state']}{': ' + note if note else ''})")
    done = [h for h in history if h["state"] == "complete"]
    base = {"trials": history, "sampler_seed": seed, "space": space.text(), "pruned": sum(h["state"] == "pruned"
                                                                                         for h in history)}
    if not done:
        return {**base, "best": defaults(profile), "best_value": None,
                "note": "no trial finished: the profile's defaults are used"}
    best = min(done, key=lambda h: h["value"])
    return {**base, "best": best["params"], "best_value": best["value"]}


def _replay(trial, res: dict):
    """(state, value, note) of one trained trial, after reporting its validation curve to the study."""
    from optuna.trial import TrialState

    if res["reason"] == "pruned":
        curve = res["pruned_curve"]
    elif res["ok"]:
        curve = res["record"]["runs"][-1]["val_curve"]
    else:
        return TrialState.FAIL, None, res["reason"]
    for i, (step, value) in enumerate(curve):
        trial.report(value, step)
        if trial.should_prune():
            if res["reason"] == "pruned" and i == len(curve) - 1:
                return TrialState.PRUNED, None, f"pruned at step {step}"
            if res["ok"] and i == len(curve) - 1:  # at the last evaluation: finished, and below the median
                return TrialState.PRUNED, None, f"pruned at its last step {step}"
            return TrialState.FAIL, None, f"ran past step {step}, where the median pruner prunes it"
    if res["reason"] == "pruned":
        return TrialState.FAIL, None, f"stopped at step {curve[-1][0]}, where the median pruner does not prune it"
    value = res["record"]["value"]
    return (TrialState.COMPLETE, value, "") if math.isfinite(value) else (TrialState.FAIL, None, "non-finite")


def hp_text(h: dict) -> str:
    return (f"lr={h['lr']:.3g} warmup={int(h['warmup_steps'])} wd={h['weight_decay']:.3g} "
            f"batch={int(h.get('batch_size_seqs', 0)) or '–'}")

"""The hyperparameter search of ``harness validate``: lr (log-uniform), warmup steps and weight decay around the
profile's values, by Optuna's TPE with a fixed sampler seed and the profile's defaults as trial 0.
"""

from __future__ import annotations

import math
from typing import Callable

from harness.trusted.profiles import Profile
from harness.validation.jobs import TrainJob, run_batch

TUNABLE = ("lr", "warmup_steps", "weight_decay")
SAMPLER_SEED = 12345


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
            log(f"  trial {history[-1]['trial']}: {hp_text(p)} -> {value if value is None else f'{value:.4f}'} "
                f"({res['reason']})")
    done = [h for h in history if h["value"] is not None and math.isfinite(h["value"])]
    if not done:
        return {"best": defaults(profile), "best_value": None, "trials": history,
                "note": "every trial failed: the profile's defaults are used"}
    best = min(done, key=lambda h: h["value"])
    return {"best": best["params"], "best_value": best["value"], "trials": history}


def hp_text(h: dict) -> str:
    return f"lr={h['lr']:.3g} warmup={int(h['warmup_steps'])} wd={h['weight_decay']:.3g}"


def space_text(profile: Profile) -> str:
    sp = search_space(profile)
    return (f"lr log-uniform [{sp['lr'].low:.3g}, {sp['lr'].high:.3g}], warmup steps integer "
            f"[{sp['warmup_steps'].low}, {sp['warmup_steps'].high}], weight decay uniform "
            f"[{sp['weight_decay'].low:.3g}, {sp['weight_decay'].high:.3g}]")

"""The objective, computed at the profile's full horizon, and its transform into ``combined_score``.

- ``final_loss``: validation loss at the reference rung; fitness = −loss.
- ``scaling_slope``: train every rung, fit loss = a + b·ln N (N = non-embedding parameters); fitness = −b.

``combined_score = exp(fitness − fitness_baseline)``: positive, strictly increasing in the fitness,
exactly 1.0 at parity with the baseline. For ``final_loss`` it is the baseline's validation
perplexity divided by the candidate's.
"""

from __future__ import annotations

import math

from harness.profiles import Profile
from harness.train import fit_scaling_law, train


class TrainingFailure(Exception):
    def __init__(self, status: str, message: str, runs: list[dict]):
        super().__init__(message)
        self.status, self.message, self.runs = status, message, runs


def rungs_for(profile: Profile) -> list[tuple]:
    if profile.objective == "final_loss":
        return [profile.reference]
    return list(profile.ladder)


def run_objective(attention_cls: type, profile: Profile, data, seed: int | None = None, device: str | None = None,
                  log=None) -> tuple[dict, object]:
    """Train what the objective needs; returns (record, the last trained model). Raises TrainingFailure
    when a run stops on a non-finite or diverging loss."""
    runs, model = [], None
    for rung in rungs_for(profile):
        result = train(attention_cls, profile, rung, data, seed=seed, device=device, log=log, keep_model=True)
        runs.append(result.to_dict())
        model = result.model
        if result.status != "ok":
            where = f" at step {result.nonfinite_step}" if result.nonfinite_step else f" by step {result.steps_done}"
            raise TrainingFailure(result.status, f"training at rung {tuple(rung)} stopped: loss {result.status}{where}", runs)
    record = {"objective": profile.objective, "runs": runs}
    losses = [r["final_val_loss"] for r in runs]
    record["largest_rung_loss"] = losses[-1]
    if profile.objective == "final_loss":
        record["final_loss"] = losses[0]
        record["fitness"] = -losses[0]
    else:
        a, b = fit_scaling_law([r["non_embedding_params"] for r in runs], losses)
        record.update({"scaling_a": a, "scaling_b": b, "fitness": -b})
    return record, model


def score(candidate: dict, baseline: dict, profile: Profile) -> tuple[float, list[str]]:
    """(combined_score, flags). Flags never raise the score above parity."""
    flags = []
    value = math.exp(max(-50.0, min(50.0, candidate["fitness"] - baseline["fitness"])))
    cand_loss, base_loss = candidate["largest_rung_loss"], baseline["largest_rung_loss"]
    if cand_loss < (1.0 - profile.gate.implausible_loss_frac) * base_loss:
        flags.append(f"implausible_loss: {cand_loss:.4f} is more than {profile.gate.implausible_loss_frac:.0%} below "
                     f"the baseline's {base_loss:.4f}; quarantined at parity until checked by hand")
        value = min(value, 1.0)
    if profile.objective == "scaling_slope" and candidate["scaling_b"] < baseline["scaling_b"] and cand_loss > base_loss:
        flags.append(f"steeper_but_worse: slope {candidate['scaling_b']:.4f} is steeper than the baseline's "
                     f"{baseline['scaling_b']:.4f}, but the largest rung's loss {cand_loss:.4f} is worse than {base_loss:.4f}")
    return value, flags

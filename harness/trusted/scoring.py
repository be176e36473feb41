"""The scoring: the fitness from the training runs' measurements, the scaling-law fit, the score and its flags.

- ``final_loss``: validation loss at the reference rung; fitness = −loss.
- ``scaling_slope``: every rung, fit loss = a + b·ln N (N = non-embedding parameters); fitness = −b.

``combined_score = exp(fitness − fitness_baseline)``: positive, strictly increasing in the fitness,
exactly 1.0 at parity with the baseline. For ``final_loss`` it is the baseline's validation
perplexity divided by the candidate's.

Plain numbers in, plain numbers out: no torch, no candidate code.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np


class MalformedRecord(ValueError):
    """What an untrusted process handed back is not a training record the harness writes."""


RUNG_SETS = ("objective", "ladder", "reference")


def rungs_for(profile, which: str | None = None) -> list[tuple]:
    """The rungs a training trains. ``which``: "objective" (default: the reference rung for ``final_loss``, the
    ladder otherwise), "ladder" (every rung, for a scaling-law fit whatever the objective) or "reference"."""
    which = which or "objective"
    if which not in RUNG_SETS:
        raise ValueError(f"unknown rung set {which!r}: one of {RUNG_SETS}")
    if which == "reference" or (which == "objective" and profile.objective == "final_loss"):
        return [tuple(profile.reference)]
    return [tuple(r) for r in profile.ladder]


# The largest whole number a record may hold: every count and step of a training is far below it, and a float holds
# it exactly. A larger one (JSON has no limit) would not even convert to a float.
LARGEST_WHOLE = 2 ** 53


def _number(value, what: str, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise MalformedRecord(f"{what} is {type(value).__name__}, not a {'whole ' if integer else ''}number")
    if isinstance(value, int) and abs(value) > LARGEST_WHOLE:
        raise MalformedRecord(f"{what} is out of range")
    if not math.isfinite(value):
        raise MalformedRecord(f"{what} is not finite")
    return value


# The line a training sandbox logs when its training starts: the executor then starts the trusted scorer, so that a
# program the gate rejects costs no scorer. A forged line only starts the scorer early.
TRAINING_BEGINS = "training begins"

# What the trusted scorer (harness.scorer) writes into each run, over whatever the training sandbox said.
SCORED_FIELDS = ("final_val_loss", "non_embedding_params", "attention_params", "buffer_elements",
                 "scored_split_sha256")


def checked_runs(runs, expected_rungs: list[tuple], profile=None) -> list[dict]:
    """The runs of a training, kept only if they are plain numbers for exactly the expected rungs, in order, every
    one finished. The fields the scoring and the metrics read are checked and replaced by their checked copies; the
    others (training curves, timings) pass through for reports and are never scored. ``SCORED_FIELDS`` are
    the trusted scorer's: the executor writes them over the training sandbox's runs. With ``profile``, every run
    must have trained exactly its budget: its steps, and the tokens they hold (a program that reached the training
    loop could train longer than the baseline did)."""
    if not isinstance(runs, list) or len(runs) != len(expected_rungs):
        raise MalformedRecord(f"expected {len(expected_rungs)} runs, got "
                              f"{len(runs) if isinstance(runs, list) else type(runs).__name__}")
    out = []
    for run, rung in zip(runs, expected_rungs):
        if not isinstance(run, dict) or [_number(v, "a rung size", True) for v in run.get("rung") or []] != list(rung):
            raise MalformedRecord(f"a run is not the run of rung {tuple(rung)}")
        if run.get("status") != "ok":
            raise MalformedRecord(f"the run of rung {tuple(rung)} did not finish")
        checked = {"rung": list(rung), "status": "ok",
                   "final_val_loss": _number(run.get("final_val_loss"), f"rung {tuple(rung)}'s final loss"),
                   "non_embedding_params": _number(run.get("non_embedding_params"),
                                                   f"rung {tuple(rung)}'s parameter count", True),
                   "attention_params": _number(run.get("attention_params"), f"rung {tuple(rung)}'s attention "
                                               "parameter count", True),
                   "buffer_elements": _number(run.get("buffer_elements"), f"rung {tuple(rung)}'s buffer size", True),
                   "val_curve": checked_curve(run.get("val_curve"), f"the validation curve of rung {tuple(rung)}"),
                   "ms_per_step": _number(run.get("ms_per_step"), f"rung {tuple(rung)}'s ms per step")}
        split = run.get("scored_split_sha256")
        if not isinstance(split, str) or len(split) != 16 or any(c not in "0123456789abcdef" for c in split):
            raise MalformedRecord(f"rung {tuple(rung)} does not name the scored split it was measured on")
        checked["scored_split_sha256"] = split
        if profile is not None:
            steps = _number(run.get("steps_done"), f"rung {tuple(rung)}'s steps", True)
            tokens = _number(run.get("tokens_seen"), f"rung {tuple(rung)}'s tokens", True)
            budget = profile.steps * profile.batch_size_seqs * profile.context_len_tokens
            if steps != profile.steps or tokens != budget or checked["val_curve"][-1][0] > profile.steps:
                raise MalformedRecord(f"rung {tuple(rung)} trained {steps} steps on {tokens} tokens, not the budget's "
                                      f"{profile.steps} steps on {budget}")
            checked.update({"steps_done": steps, "tokens_seen": tokens})
        if checked["non_embedding_params"] <= 0 or checked["attention_params"] < 0 or checked["buffer_elements"] < 0:
            raise MalformedRecord(f"rung {tuple(rung)}'s parameter counts are inconsistent")
        out.append({**run, **checked})
    return out


# What the ledger keeps of each rung's training beside the scored fields: what the training sandbox reported, for
# reports only (never scored, never ranked). Typed field by field; a value of another type is dropped.
REPORTED_NUMBERS = ("ms_per_step", "tokens_per_s", "wall_s", "eval_s", "first_step_s", "final_monitor_loss",
                    "grad_norm_mean", "grad_norm_var", "loss_roughness", "peak_memory_mib")
REPORTED_COUNTS = ("steps_done", "tokens_seen", "params", "nonfinite_step")
REPORTED_TEXTS = {"status": 32, "compile_mode": 64, "compile_error": 500}  # field: most characters kept
# The engine writes about 100 points of training curve and one validation point per evaluation interval (10 at full).
REPORTED_CURVE_MAX_POINTS = 256
# The most the runs of one evaluation may hold in the ledger; past it, their curves are dropped (a full-profile
# evaluation's are about 12 kB).
REPORTED_RUNS_MAX_BYTES = 256 * 1024


def reported_runs(runs, max_runs: int) -> list[dict]:
    """The runs an untrusted process reported, as the ledger keeps them: at most ``max_runs``, plain typed fields,
    curves of [step, loss or None]; anything else dropped. ``SCORED_FIELDS`` are never taken from here: the caller
    adds the scorer's where there are any."""
    if not isinstance(runs, list):
        return []
    out = []
    for run in runs[:max_runs]:
        if not isinstance(run, dict):
            continue
        kept = {"rung": _plain_counts(run.get("rung"), 3)}
        for key in REPORTED_NUMBERS:
            kept[key] = _finite_or_none(run.get(key))
        for key in REPORTED_COUNTS:
            kept[key] = _count_or_none(run.get(key))
        for key, limit in REPORTED_TEXTS.items():
            kept[key] = plain_text(run.get(key), limit)
        kept["compiled"] = run.get("compiled") if isinstance(run.get("compiled"), bool) else None
        for key in ("val_curve", "train_curve"):
            kept[key] = _reported_curve(run.get(key))
        out.append(kept)
    if len(json.dumps(out)) > REPORTED_RUNS_MAX_BYTES:
        out = [{**run, "val_curve": None, "train_curve": None} for run in out]
    return out


def typed_runs(runs: list[dict]) -> list[dict]:
    """Checked runs (``checked_runs``) as reports and the ledger keep them: the fields ``checked_runs`` checked, as
    checked, and the rest typed and bounded as ``reported_runs`` keeps them (the untrusted extras a checked run
    carries through are dropped)."""
    return [{**report, **{key: run[key] for key in CHECKED_FIELDS if key in run}}
            for report, run in zip(reported_runs(runs, len(runs)), runs)]


# What ``checked_runs`` checks of each run (``steps_done`` and ``tokens_seen`` with a profile).
CHECKED_FIELDS = ("rung", "status", "final_val_loss", "non_embedding_params", "attention_params", "buffer_elements",
                  "val_curve", "ms_per_step", "scored_split_sha256", "steps_done", "tokens_seen")


def of_a_compiling_profile(run: dict) -> bool:
    """Whether a reported run trained under a profile that compiles: it names the compile mode it asked for."""
    return bool(run.get("compile_mode"))


def trained_eagerly(run: dict) -> bool:
    """Whether a reported run of a compiling profile trained eagerly, because torch.compile failed on its program."""
    return of_a_compiling_profile(run) and run.get("compiled") is False


# Control characters but the newline and the tab (C0, DEL, C1): a terminal that prints a message holding them would
# run them as commands (move the cursor, erase lines, set the clipboard).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` valid UTF-8 (a candidate's text may hold a lone surrogate: valid JSON, but no file can be written with
    it), its control characters but the newline and the tab written as escapes (``\\x1b``)."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], text)


def plain_text(value, limit: int) -> str | None:
    """A reported string as reports may show it: at most ``limit`` characters, on one line, valid UTF-8 (a lone
    surrogate, which JSON allows, cannot be written to a file), no backtick (it would end a Markdown code span)."""
    if not isinstance(value, str):
        return None
    text = " ".join(value[:limit].encode("utf-8", "replace").decode("utf-8").split())
    return text.replace("`", "'")


def _finite_or_none(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int) and abs(value) > LARGEST_WHOLE:
        return None
    return float(value) if math.isfinite(value) else None


def _count_or_none(value) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= LARGEST_WHOLE
    return value if ok else None


def _plain_counts(value, length: int) -> list[int] | None:
    if not isinstance(value, list) or len(value) != length:
        return None
    if any(_count_or_none(v) is None for v in value):
        return None
    return list(value)


def _reported_curve(curve) -> list[list] | None:
    """[[step, loss], ...] with whole steps and finite losses (a non-finite one, as a diverging run reports, as
    None); None for anything else, or a curve longer than ``REPORTED_CURVE_MAX_POINTS``."""
    if not isinstance(curve, list) or len(curve) > REPORTED_CURVE_MAX_POINTS:
        return None
    out = []
    for point in curve:
        if not isinstance(point, (list, tuple)) or len(point) != 2:
            return None
        step, loss = point
        if _count_or_none(step) is None:
            return None
        if loss is not None and (isinstance(loss, bool) or not isinstance(loss, (int, float))):
            return None
        out.append([step, _finite_or_none(loss)])
    return out


def checked_curve(curve, what: str) -> list[list]:
    """A non-empty [[step, loss], ...] of whole steps, strictly increasing, and finite losses, copied."""
    if not isinstance(curve, list) or not curve or any(not isinstance(p, (list, tuple)) or len(p) != 2 for p in curve):
        raise MalformedRecord(f"{what} is malformed")
    out = [[_number(s, "a step", True), _number(v, "a loss")] for s, v in curve]
    if any(b[0] <= a[0] for a, b in zip(out, out[1:])) or out[0][0] < 1:
        raise MalformedRecord(f"{what} does not advance step by step")
    return out


def objective_from_untrusted(record, profile, rungs: list[tuple] | None = None) -> dict:
    """The objective recomputed by trusted code from the runs an untrusted process reported (``record["runs"]``):
    its fitness, fit or flags are never read. Raises MalformedRecord."""
    if not isinstance(record, dict):
        raise MalformedRecord(f"the record is {type(record).__name__}, not a dict")
    expected = [tuple(r) for r in rungs] if rungs is not None else rungs_for(profile)
    return objective_record(checked_runs(record.get("runs"), expected, profile), profile)


def objective_record(runs: list[dict], profile) -> dict:
    """The objective of a set of finished runs (``TrainResult.to_dict()`` of each rung, in ladder order): the
    losses, the scaling fit when there are two rungs or more, and the fitness the profile's objective names
    (absent when the runs cannot give it: one rung under ``scaling_slope``, or no reference rung)."""
    record = {"objective": profile.objective, "runs": runs}
    losses = [r["final_val_loss"] for r in runs]
    record["largest_rung_loss"] = losses[-1]
    at_reference = [r["final_val_loss"] for r in runs if tuple(r["rung"]) == tuple(profile.reference)]
    if at_reference:
        record["final_loss"] = at_reference[0]
    if profile.objective == "final_loss":
        record["fitness"] = -record["final_loss"]
    if len(runs) >= 2:
        a, b = fit_scaling_law([r["non_embedding_params"] for r in runs], losses)
        record.update({"scaling_a": a, "scaling_b": b})
    if profile.objective == "scaling_slope" and "scaling_b" in record:
        record["fitness"] = -record["scaling_b"]
    return record


def parity_violation(candidate: dict, baseline: dict, profile) -> str | None:
    """The parameter and state budget re-checked on the trusted scorer's counts of the trained tensors, rung by
    rung: the whole model may add at most ``param_tolerance_frac`` of the baseline's attention parameters, and its
    buffers at most the gate's allowance per layer (counted in elements, which bounds the gate's 32-bit words
    from above). None when within; else the message."""
    gate = profile.gate
    for cand, base in zip(candidate["runs"], baseline["runs"]):
        d, layers, heads = cand["rung"]
        limit = base["non_embedding_params"] + gate.param_tolerance_frac * base["attention_params"]
        if cand["non_embedding_params"] > limit:
            return (f"the trained model at rung {tuple(cand['rung'])} holds {cand['non_embedding_params']} non-embedding "
                    f"parameters; the baseline holds {base['non_embedding_params']}, and at most "
                    f"{gate.param_tolerance_frac:.0%} of its {base['attention_params']} attention parameters may be added")
        ctx = profile.context_len_tokens
        allowance = layers * (gate.extra_state_words_per_ctx_dmodel * ctx * d
                              + (gate.extra_state_words_per_ctx_squared
                                 + gate.extra_state_words_per_head_ctx_squared * heads) * ctx ** 2)
        if cand["buffer_elements"] > base["buffer_elements"] + allowance:
            return (f"the trained model at rung {tuple(cand['rung'])} holds {cand['buffer_elements']} buffer elements; "
                    f"at most {base['buffer_elements'] + allowance:.0f} are allowed")
    return None


def fit_scaling_law(params: list[int], losses: list[float]) -> tuple[float, float]:
    """Least-squares fit of loss = a + b·ln N; returns (a, b)."""
    x = np.log(np.asarray(params, dtype=np.float64))
    b, a = np.polyfit(x, np.asarray(losses, dtype=np.float64), 1)
    return float(a), float(b)


def score(candidate: dict, baseline: dict, profile) -> tuple[float, list[str]]:
    """(combined_score, flags). A flag never changes the score: it tells the LLM, the ledger and the campaign's
    selection what to confirm. ``implausible_loss`` ranks a program at its score and marks it for validation: the
    losses come from the trusted scorer, which has already checked the forward pass for reading the future, for
    state and for mixing its batch, so what remains is a real gain or an exploit no check knows, and
    ``harness validate`` (ten seeds, the full horizon) tells them apart. Holding it at parity instead turned away
    the one legitimate design that reached it (a Mamba-2 variant 31 % below the baseline at smoke)."""
    flags = []
    value = math.exp(max(-50.0, min(50.0, candidate["fitness"] - baseline["fitness"])))
    cand_loss, base_loss = candidate["largest_rung_loss"], baseline["largest_rung_loss"]
    if cand_loss < (1.0 - profile.gate.implausible_loss_frac) * base_loss:
        flags.append(f"implausible_loss: {cand_loss:.4f} is more than {profile.gate.implausible_loss_frac:.0%} below "
                     f"the baseline's {base_loss:.4f}; ranked at its score, to be confirmed with harness validate "
                     "before it is trusted")
    if profile.objective == "scaling_slope" and candidate["scaling_b"] < baseline["scaling_b"] and cand_loss > base_loss:
        flags.append(f"steeper_but_worse: slope {candidate['scaling_b']:.4f} is steeper than the baseline's "
                     f"{baseline['scaling_b']:.4f}, but the largest rung's loss {cand_loss:.4f} is worse than {base_loss:.4f}")
    return value, flags


def objective_metrics(objective: dict) -> dict[str, float]:
    """The numbers of an objective record that OpenEvolve and the ledger receive as metrics."""
    out = {"objective_fitness": objective["fitness"], "largest_rung_loss": objective["largest_rung_loss"]}
    for key in ("final_loss", "scaling_a", "scaling_b"):
        if key in objective:
            out[key] = objective[key]
    for run in objective["runs"]:
        d, layers, _ = run["rung"]
        out[f"val_loss_d{d}_l{layers}"] = run["final_val_loss"]
        out[f"ms_per_step_d{d}_l{layers}"] = run["ms_per_step"]
    # The validation loss at the first evaluation of the last rung: recorded, never scored, so that the
    # analysis can show how well an early-training proxy would have ranked the candidates.
    first = objective["runs"][-1]["val_curve"][0]
    out["early_val_loss"], out["early_val_step"] = first[1], first[0]
    return out

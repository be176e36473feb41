"""The trusted scoring: the objective recomputed from the runs an untrusted process reports, and nothing but plain
numbers of the expected rungs accepted."""

import copy
import math

import pytest

from harness.trusted.profiles import get_profile
from harness.trusted import scoring
from harness.trusted.scoring import (REPORTED_CURVE_MAX_POINTS, SCORED_FIELDS, MalformedRecord,
                                     objective_from_untrusted, objective_record, parity_violation, reported_runs,
                                     rungs_for, score, typed_runs)

PROFILE = get_profile("smoke", objective="scaling_slope")


def _run(rung, loss, params, attention=10_000, buffers=0):
    return {"rung": list(rung), "status": "ok", "final_val_loss": loss, "non_embedding_params": params,
            "attention_params": attention, "buffer_elements": buffers, "scored_split_sha256": "0123456789abcdef",
            "val_curve": [[100, loss + 1.0], [300, loss + 0.1]], "ms_per_step": 12.5, "train_curve": [[50, 5.0]],
            "steps_done": PROFILE.steps, "tokens_seen": PROFILE.steps * PROFILE.batch_size_seqs * PROFILE.context_len_tokens}


RECORD = {"runs": [_run(PROFILE.ladder[0], 3.3, 25_000), _run(PROFILE.ladder[1], 2.8, 56_000)],
          "fitness": 99.0, "scaling_b": -99.0, "combined_score": 7.5}


def test_the_objective_is_recomputed_and_the_reported_fitness_ignored():
    objective = objective_from_untrusted(RECORD, PROFILE)
    expected = objective_record(copy.deepcopy(RECORD["runs"]), PROFILE)
    assert objective["fitness"] == expected["fitness"] == -expected["scaling_b"]
    assert objective["scaling_b"] < 0 and objective["fitness"] != 99.0 and "combined_score" not in objective
    assert objective["largest_rung_loss"] == 2.8 and objective["final_loss"] == 2.8
    value, flags = score(objective, objective, PROFILE)
    assert value == 1.0 and flags == []


@pytest.mark.parametrize("corrupt", [
    lambda r: r["runs"].pop(),
    lambda r: r["runs"].append(copy.deepcopy(r["runs"][0])),
    lambda r: r["runs"].reverse(),
    lambda r: r["runs"][0].update(final_val_loss=float("nan")),
    lambda r: r["runs"][0].update(final_val_loss="2.0"),
    lambda r: r["runs"][0].update(final_val_loss=True),
    lambda r: r["runs"][1].update(non_embedding_params=5.5),
    lambda r: r["runs"][1].update(non_embedding_params=0),
    lambda r: r["runs"][1].update(status="diverged"),
    lambda r: r["runs"][1].update(val_curve=[]),
    lambda r: r["runs"][1].update(val_curve=[[300, 1.0], [200, 1.0]]),  # the steps go back
    lambda r: r["runs"][1].pop("attention_params"),  # not scored by the trusted scorer
    lambda r: r["runs"][1].update(buffer_elements=-1),
    lambda r: r["runs"][1].update(scored_split_sha256="../../etc"),
    lambda r: r["runs"][1].update(rung=[48, 2, 3]),
    lambda r: r["runs"][1].pop("ms_per_step"),
    # more training than the budget (a program that reached the loop's settings): steps, tokens or the curve
    lambda r: r["runs"][1].update(steps_done=r["runs"][1]["steps_done"] + 100),
    lambda r: r["runs"][0].update(tokens_seen=2 * r["runs"][0]["tokens_seen"]),
    lambda r: r["runs"][1].update(val_curve=[[100, 3.0], [900, 2.0]]),
    lambda r: r["runs"][1].pop("steps_done"),
    lambda r: r.update(runs="all good"),
])
def test_a_malformed_record_is_refused(corrupt):
    record = copy.deepcopy(RECORD)
    corrupt(record)
    with pytest.raises(MalformedRecord):
        objective_from_untrusted(record, PROFILE)


def test_the_rungs_expected_follow_the_objective():
    assert rungs_for(get_profile("smoke", objective="final_loss")) == [tuple(PROFILE.reference)]
    assert rungs_for(PROFILE) == [tuple(r) for r in PROFILE.ladder]
    final = objective_from_untrusted({"runs": [RECORD["runs"][1]]}, get_profile("smoke", objective="final_loss"))
    assert final["fitness"] == -2.8 and math.isfinite(final["fitness"])
    with pytest.raises(MalformedRecord):  # a scaling record where one rung is expected
        objective_from_untrusted(RECORD, get_profile("smoke", objective="final_loss"))


def test_the_parameter_budget_is_rechecked_on_the_trusted_counts():
    base = objective_from_untrusted(RECORD, PROFILE)
    within = copy.deepcopy(RECORD)
    within["runs"][1]["non_embedding_params"] += 500  # 5 % of the baseline's 10 000 attention parameters
    assert parity_violation(objective_from_untrusted(within, PROFILE), base, PROFILE) is None
    over = copy.deepcopy(RECORD)
    over["runs"][1]["non_embedding_params"] += 501
    assert "at most 5% of its 10000 attention parameters" in parity_violation(
        objective_from_untrusted(over, PROFILE), base, PROFILE)
    ctx, (d, layers, heads) = PROFILE.context_len_tokens, PROFILE.ladder[0]
    allowance = layers * (2 * ctx * d + (1 + heads) * ctx ** 2)  # RoPE tables and a causal mask per head fit
    state = copy.deepcopy(RECORD)
    state["runs"][0]["buffer_elements"] = allowance
    assert parity_violation(objective_from_untrusted(state, PROFILE), base, PROFILE) is None
    state["runs"][0]["buffer_elements"] = allowance + 1
    assert "buffer elements" in parity_violation(objective_from_untrusted(state, PROFILE), base, PROFILE)


def test_an_implausibly_low_loss_keeps_its_score_and_is_flagged_for_validation():
    final = get_profile("smoke", objective="final_loss")
    base = objective_from_untrusted({"runs": [RECORD["runs"][1]]}, final)  # loss 2.8
    better = copy.deepcopy(RECORD["runs"][1])
    better["final_val_loss"] = 2.0  # 29 % below
    value, flags = score(objective_from_untrusted({"runs": [better]}, final), base, final)
    assert value == pytest.approx(math.exp(0.8)) and value > 1.0
    assert len(flags) == 1 and flags[0].startswith("implausible_loss") and "harness validate" in flags[0]
    fine = copy.deepcopy(RECORD["runs"][1])
    fine["final_val_loss"] = 2.2  # 21 % below: no flag
    assert score(objective_from_untrusted({"runs": [fine]}, final), base, final)[1] == []


def test_the_ledger_keeps_a_reported_training_as_typed_fields_only():
    """What the ledger keeps of the runs a sandbox reported: the typed fields of a training, never a scored field
    (the caller adds the scorer's), nothing of another type, no more runs than asked and no oversized curve."""
    run = {**_run(PROFILE.ladder[0], 3.3, 25_000), "compiled": False, "compile_error": "x" * 10_000,
           "compile_mode": "default", "first_step_s": 1.5, "peak_memory_mib": float("nan"), "nonfinite_step": True,
           "combined_score": 7.5, "model": object(), "val_curve": [[100, 4.0], [200, float("inf")]]}
    kept = reported_runs([run, run, run], max_runs=2)
    assert len(kept) == 2
    first = kept[0]
    assert not set(first) & set(SCORED_FIELDS) and "combined_score" not in first and "model" not in first
    assert first["rung"] == list(PROFILE.ladder[0]) and first["compiled"] is False and first["first_step_s"] == 1.5
    assert len(first["compile_error"]) == 500 and first["compile_mode"] == "default"
    assert first["peak_memory_mib"] is None and first["nonfinite_step"] is None  # nan, and a bool for a count
    assert first["val_curve"] == [[100, 4.0], [200, None]] and first["train_curve"] == [[50, 5.0]]
    long = {**run, "train_curve": [[i + 1, 1.0] for i in range(REPORTED_CURVE_MAX_POINTS + 1)],
            "val_curve": [["100", 4.0]], "rung": [1, 2], "compiled": 1, "status": ["ok"]}
    (odd,) = reported_runs([long], max_runs=4)
    assert odd["train_curve"] is None and odd["val_curve"] is None and odd["rung"] is None
    assert odd["compiled"] is None and odd["status"] is None
    assert reported_runs({"runs": []}, max_runs=4) == [] and reported_runs([1, "a", None], max_runs=4) == []


def test_numbers_past_a_floats_range_and_unprintable_text_are_dropped_not_raised(monkeypatch):
    """JSON's whole numbers have no limit: one of 400 digits does not even convert to a float, and raised in the
    evaluator (an ``infrastructure`` result). A lone surrogate is valid JSON and no file can be written with it; a
    backtick or a line break would break out of a report's Markdown. All are dropped or cleaned, never raised."""
    huge = 10 ** 400
    run = {**_run(PROFILE.ladder[0], 3.3, 25_000), "ms_per_step": huge, "steps_done": huge, "rung": [huge, 2, 2],
           "train_curve": [[huge, 1.0]], "val_curve": [[100, huge]],
           "compile_error": "bad\ud800 `code`\n# heading | cell"}
    (kept,) = reported_runs([run], max_runs=1)
    assert kept["ms_per_step"] is None and kept["steps_done"] is None and kept["rung"] is None
    assert kept["train_curve"] is None and kept["val_curve"] == [[100, None]]
    assert kept["compile_error"] == "bad? 'code' # heading | cell"
    kept["compile_error"].encode("utf-8")  # writable
    with pytest.raises(MalformedRecord, match="out of range"):
        objective_from_untrusted({"runs": [{**_run(PROFILE.ladder[0], 3.3, 25_000), "final_val_loss": huge},
                                           RECORD["runs"][1]]}, PROFILE)
    # Past the size the ledger keeps for one evaluation, the curves go and the rest stays.
    monkeypatch.setattr(scoring, "REPORTED_RUNS_MAX_BYTES", 300)
    (small,) = reported_runs([_run(PROFILE.ladder[0], 3.3, 25_000)], max_runs=1)
    assert small["val_curve"] is None and small["train_curve"] is None and small["ms_per_step"] == 12.5


def test_checked_runs_are_kept_with_their_checked_fields_and_no_untrusted_extra():
    checked = objective_from_untrusted({"runs": [{**r, "combined_score": 7.5, "note": "x" * 10_000}
                                                 for r in RECORD["runs"]]}, PROFILE)["runs"]
    typed = typed_runs(checked)
    assert [r["final_val_loss"] for r in typed] == [3.3, 2.8] and all(r["scored_split_sha256"] for r in typed)
    assert all("combined_score" not in r and "note" not in r for r in typed)
    assert typed[0]["val_curve"] == checked[0]["val_curve"] and typed[0]["steps_done"] == PROFILE.steps

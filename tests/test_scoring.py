"""The trusted scoring: the objective recomputed from the runs an untrusted process reports, and nothing but plain
numbers of the expected rungs accepted."""

import copy
import math

import pytest

from harness.trusted.profiles import get_profile
from harness.trusted.scoring import MalformedRecord, objective_from_untrusted, objective_record, rungs_for, score

PROFILE = get_profile("smoke", objective="scaling_slope")


def _run(rung, loss, params):
    return {"rung": list(rung), "status": "ok", "final_val_loss": loss, "non_embedding_params": params,
            "val_curve": [[100, loss + 1.0], [300, loss]], "ms_per_step": 12.5, "train_curve": [[50, 5.0]]}


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
    lambda r: r["runs"][1].update(val_curve=[[300, 1.0]]),  # the last validation is not the final loss
    lambda r: r["runs"][1].update(rung=[48, 2, 3]),
    lambda r: r["runs"][1].pop("ms_per_step"),
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

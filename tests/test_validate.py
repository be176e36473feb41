"""``harness validate``: the protocol with a fake training runner (fast, known answers), and end to end on
CPU under the smoke profile through the real evaluator and sandbox."""

import json
import math
import threading
import time
from types import SimpleNamespace

import pytest

from harness.validation import jobs, pipeline, tuning
from harness.trusted.frameworks import FRAMEWORKS
from harness.trusted.profiles import ConfigError, get_profile

TTR = FRAMEWORKS["ttr"].seed_source()


def linear_ttr() -> str:
    """A legitimate non-default ttr program: the linear class with fixed decay as the knob defaults."""
    code = TTR
    for old, new in (('temporal: str = "uniform"', 'temporal: str = "fixed_decay"'),
                     ('function_class: str = "constant"', 'function_class: str = "linear"'),
                     ('solver: str = "closed_form"', 'solver: str = "no_covariance"')):
        assert code.count(old) == 1
        code = code.replace(old, new)
    return code


def hostile_ttr(marker) -> str:
    """Would create a file if this process ever executed it; the evaluator's policy must refuse it first."""
    return TTR.replace("# EVOLVE-BLOCK-START\n", f"# EVOLVE-BLOCK-START\nopen({str(marker)!r}, 'w').write('pwned')\n")


# ----------------------------------------------------------------------------------------------------------
# The protocol with fakes: no training, exact control of every number


class FakeRunner:
    """Objective values by program and seed: the baseline 3.00 + noise, 'good' 2.90 + noise, 'same' the
    baseline's values shifted by an alternating +-0.002 (no real difference)."""

    NOISE = [0.010, -0.004, 0.006, -0.008, 0.002, 0.0, -0.006, 0.004, -0.002, 0.008]

    def __init__(self):
        self.jobs = []

    def __call__(self, job):
        self.jobs.append(job)
        name = job.program_path.stem
        noise = self.NOISE[job.seed % 10]
        if "baseline" in name:
            value = 3.0 + noise
        elif "good" in name:
            value = 2.9 + noise * 1.5
        else:
            value = 3.0 + noise + (0.002 if job.seed % 2 else -0.002)
        # a mild preference for lr close to 2x the default, so tuning has something to find
        value += 0.01 * abs(math.log(job.hparams["lr"] / 6e-3)) if job.seed == 0 else 0.0
        small = value + (0.55 if "good" in name else 0.5)  # 'good' also scales better
        runs = [{"rung": [32, 2, 2], "final_val_loss": small, "non_embedding_params": 25000,
                 "val_curve": [[100, value + 1.5], [300, value + 0.5]], "train_curve": [[300, value + 0.6]]},
                {"rung": [48, 2, 2], "final_val_loss": value, "non_embedding_params": 56000,
                 "val_curve": [[100, value + 1.0], [300, value]], "train_curve": [[300, value + 0.1]]}]
        if job.rungs == "objective":
            runs = runs[1:]
        return {"ok": True, "reason": "ok", "message": "ok", "seed": job.seed, "hparams": job.hparams,
                "fingerprint_id": "fp-fake", "wall_s": 0.0,
                "record": {"value": value, "fitness": -value, "runs": runs, "final_loss": value}}


@pytest.fixture()
def fake_evaluator(monkeypatch):
    calls = []

    def prepare(fw, profile=None, ledger_path=None, executor_name=None):
        return {"fingerprint": {"id": "fp-fake"}, "baseline": {"fitness": -3.0, "final_loss": 3.0}}

    def evaluate(fw, path, profile=None, ledger_path=None, executor_name=None):
        calls.append(path)
        if "hostile" in path:
            return SimpleNamespace(metrics={"combined_score": 0.0, "valid": 0.0},
                                   artifacts={"reason": "policy", "message": "module-level statement",
                                              "fingerprint_id": "fp-fake", "ledger_row": "7"})
        return SimpleNamespace(metrics={"combined_score": 1.05, "valid": 1.0, "objective_fitness": -2.95,
                                        "final_loss": 2.95, "param_ratio": 1.002, "flop_ratio": 1.04,
                                        "step_time_ratio": 1.1, "memory_ratio": 0.9},
                               artifacts={"reason": "ok", "message": "valid", "fingerprint_id": "fp-fake",
                                          "ledger_row": "8"})

    monkeypatch.setattr(pipeline.evaluate_mod, "prepare", prepare)
    monkeypatch.setattr(pipeline.evaluate_mod, "evaluate", evaluate)
    return calls


def candidates(tmp_path, *names):
    out = []
    for name in names:
        path = tmp_path / f"{name}.py"
        path.write_text(hostile_ttr(tmp_path / "marker") if name == "hostile" else linear_ttr().replace(
            "# EVOLVE-BLOCK-END", f"# {name}\n# EVOLVE-BLOCK-END"))
        out.append(jobs.Candidate("ttr", path, f"ttr-{name}", str(path)))
    return out


def test_protocol_with_fake_runner(tmp_path, fake_evaluator):
    runner = FakeRunner()
    profile = get_profile("smoke")
    out = tmp_path / "val"
    result = pipeline.validate(candidates(tmp_path, "good", "same", "hostile"), profile, out, tuning="optuna",
                               trials=3, n_seeds=10, runner=runner, log=lambda m: None)
    by_label = {c["label"]: c for c in result["candidates"]}
    # the hostile candidate went through the evaluator and was refused; nothing of it ran here
    assert by_label["ttr-hostile"]["refused"].startswith("rejected by the evaluator: `policy`")
    assert not (tmp_path / "marker").exists()
    assert not any("hostile" in str(j.program_path) for j in runner.jobs)
    # equal tuning budgets: trial 0 (defaults, tuning seed) reuses the evaluator's run, the other 2 are trained
    tune_jobs = [j for j in runner.jobs if j.seed == profile.train_seed]
    assert sum(1 for j in tune_jobs if "baseline" in j.program_path.stem) == 2
    assert sum(1 for j in tune_jobs if "good" in j.program_path.stem) == 2
    assert sum(1 for j in tune_jobs if "same" in j.program_path.stem) == 2
    assert all(j.rungs == "objective" for j in tune_jobs)
    for c in ("ttr-good", "ttr-same"):
        hp = by_label[c]["hyperparameters"]
        assert hp["baseline"]["n_trials"] == hp["candidate"]["n_trials"] == 3
        assert hp["candidate"]["trials"][0]["source"].startswith("evaluator run")
        assert hp["candidate"]["trials"][0]["params"] == tuning.defaults(profile)
    # the evaluation seeds: 1..10, disjoint from the tuning seed, the ladder trained, the baseline trained once
    seed_jobs = [j for j in runner.jobs if j.seed != profile.train_seed]
    assert sorted({j.seed for j in seed_jobs}) == list(range(1, 11))
    assert all(j.rungs == "ladder" for j in seed_jobs)
    assert sum(1 for j in seed_jobs if "baseline" in j.program_path.stem) == 10
    # statistics and verdicts: Holm over the 2 tested candidates
    good, same = by_label["ttr-good"]["stats"], by_label["ttr-same"]["stats"]
    assert result["holm_family_size"] == 2
    assert good["wins"] == 10 and good["improvement"] == pytest.approx((3.001 - 2.9015) / 3.001)
    assert good["p_holm"] == pytest.approx(min(1.0, 2 * min(good["welch"]["p"], same["welch"]["p"])))
    assert good["verdict"]["level"] == "strong"  # |d| > 0.5 and a steeper slope (its small rung is worse)
    assert good["scaling"]["slope_better"] and not same["scaling"]["slope_better"]
    assert same["verdict"]["level"] == "not significant"
    assert same["p_holm"] >= 0.05
    # scaling: both rungs per seed, slopes per seed
    assert len(good["scaling"]["candidate"]["per_seed"]) == 10
    report = (out / "report.md").read_text()
    assert "Not significant" in report
    assert "**refused**: rejected by the evaluator: `policy`" in report
    assert "fp-fake" in report
    for suffix in ("box", "curves", "scaling"):
        assert (out / f"ttr-good_{suffix}.png").exists()
    saved = json.loads((out / "validation.json").read_text())
    assert saved["candidates"][0]["stats"]["seeds"][0]["baseline_fp"] == "fp-fake"


def test_shared_tuning_and_family_with(tmp_path, fake_evaluator):
    runner = FakeRunner()
    profile = get_profile("smoke")
    first = pipeline.validate(candidates(tmp_path, "good"), profile, tmp_path / "a", tuning="shared", trials=3,
                              n_seeds=4, runner=runner, log=lambda m: None)
    good = first["candidates"][0]
    assert good["hyperparameters"]["candidate"]["n_trials"] == 0
    assert good["hyperparameters"]["candidate"]["best"] == good["hyperparameters"]["baseline"]["best"]
    assert sum(1 for j in runner.jobs if j.seed == 0 and "good" in j.program_path.stem) == 0
    assert good["stats"]["required_wins"] == 3  # ceil(0.7 x 4)
    # a second report joins the first one's comparisons in its Holm family
    second = pipeline.validate(candidates(tmp_path, "same"), profile, tmp_path / "b", tuning="shared", trials=0,
                               n_seeds=4, runner=runner, log=lambda m: None, ladder=False,
                               family_with=[tmp_path / "a" / "validation.json"])
    s = second["candidates"][0]["stats"]
    assert second["holm_family_size"] == 2
    assert s["scaling"] is None
    assert s["p_holm"] == pytest.approx(min(1.0, max(2 * min(s["welch"]["p"], good["stats"]["welch"]["p"]),
                                                     s["welch"]["p"])))


class ConcurrentRunner(FakeRunner):
    """FakeRunner that holds each job briefly and counts how many were in flight at once."""

    def __init__(self):
        super().__init__()
        self.lock, self.running, self.most = threading.Lock(), 0, 0

    def __call__(self, job):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.05)
        try:
            return super().__call__(job)
        finally:
            with self.lock:
                self.running -= 1


def test_tuning_trials_and_seeds_fan_out_in_batches(tmp_path, fake_evaluator):
    runner = ConcurrentRunner()
    profile = get_profile("smoke")
    result = pipeline.validate(candidates(tmp_path, "good"), profile, tmp_path / "val", tuning="optuna", trials=7,
                               n_seeds=3, jobs=3, runner=runner, log=lambda m: None)
    assert runner.most == 3  # never more than --jobs at once, and that many when the batch allows
    hp = result["candidates"][0]["hyperparameters"]
    for side in ("baseline", "candidate"):
        trials = hp[side]["trials"]
        # the same budget on both sides, trial 0 the evaluator's run of the defaults, the rest trained
        assert [t["trial"] for t in trials] == list(range(7)) and hp[side]["n_trials"] == 7
        assert trials[0]["source"].startswith("evaluator run") and trials[0]["params"] == tuning.defaults(profile)
        assert all(t["source"] == "trained" and t["value"] is not None for t in trials[1:])
        assert len({tuple(sorted(t["params"].items())) for t in trials}) == 7  # the constant liar kept them apart
    tune_jobs = [j for j in runner.jobs if j.seed == profile.train_seed]
    assert len(tune_jobs) == 2 * 6


def test_candidates_from_a_run_refuse_mixed_fingerprints(tmp_path):
    import test_analyze

    db = test_analyze.DB(tmp_path / "run")
    db.root.mkdir()
    db.add("root", TTR, iteration=0, score=1.0)
    db.add("a", linear_ttr(), "root", 1, score=1.03)
    db.add("b", TTR.replace('kernel: str = "exp"', 'kernel: str = "relu2"'), "root", 2, score=1.2, fp="fpB1111111111111")
    db.write(5, [])
    with pytest.raises(ConfigError, match="cannot be ranked together"):
        jobs.candidates_from_run(db.root, 3, db.ledger, tmp_path)
    found, _ = jobs.candidates_from_run(db.root, 3, db.ledger, tmp_path, fingerprint="fpA")
    assert [c.origin.split(":")[-1] for c in found] == [db.by_name["a"]["id"]]  # the seed itself is not a candidate


# ----------------------------------------------------------------------------------------------------------
# End to end: the real evaluator, the real sandbox, real training (smoke profile, CPU)


def test_validate_end_to_end_smoke(smoke_env, tmp_path, monkeypatch):
    from harness.cli import main

    # Two CPU evaluation slots, so that --jobs 2 trains two seeds at once (one thread each) on a 2-core machine.
    monkeypatch.setenv("HARNESS_SLOTS", "cpu,cpu")

    cand = tmp_path / "ttr_linear_decay.py"
    cand.write_text(linear_ttr())
    marker = tmp_path / "marker"
    hostile = tmp_path / "hostile.py"
    hostile.write_text(hostile_ttr(marker))
    out = tmp_path / "validation"
    started = time.time()
    rc = main(["validate", "--program", str(cand), "--program", str(hostile), "--framework", "ttr", "--seeds", "2",
               "--trials", "2", "--tuning", "optuna", "--threads", "1", "--jobs", "2", "--hard-limit-s", "600",
               "--out", str(out)])
    elapsed = time.time() - started
    assert rc == 0
    assert not marker.exists()
    result = json.loads((out / "validation.json").read_text())
    by_label = {c["label"]: c for c in result["candidates"]}
    assert by_label["ttr-hostile"]["refused"] == "rejected by the evaluator: `policy`"
    c = by_label["ttr-ttr_linear_decay"]
    assert "refused" not in c, c.get("refused")
    assert c["evaluation"]["reason"] == "ok"
    fp = c["fingerprint_id"]
    assert fp == result["baselines"]["ttr"]["fingerprint_id"]
    s = c["stats"]
    assert [r["seed"] for r in s["seeds"]] == [1, 2]
    assert all(r["baseline_fp"] == r["candidate_fp"] == fp for r in s["seeds"])
    assert all(r["baseline"] is not None and r["candidate"] is not None for r in s["seeds"])
    assert all(0.5 < r["baseline"] < math.log(512) for r in s["seeds"])
    hp = c["hyperparameters"]
    assert hp["baseline"]["n_trials"] == hp["candidate"]["n_trials"] == 2
    assert s["required_wins"] == 2  # ceil(0.7 x 2)
    assert s["scaling"] is not None and len(s["scaling"]["candidate"]["per_seed"]) == 2
    assert 0.9 < c["evaluation"]["param_ratio"] <= 1.05 and c["evaluation"]["flop_ratio"] <= 1.10
    assert s["verdict"]["level"] in ("strong", "minimum", "not significant", "significant but below the minimum",
                                     "worse")
    report = (out / "report.md").read_text()
    assert f"`{fp}`" in report and "Welch" in report and "Holm" in report
    for suffix in ("box", "curves", "scaling"):
        assert (out / f"ttr-ttr_linear_decay_{suffix}.png").exists()
    print(f"validate end to end: {elapsed:.0f} s; verdict {s['verdict']['level']}: {s['verdict']['text']}")

"""``harness validate``: the protocol with a fake training runner (fast, known answers), and end to end on
CPU under the smoke-short profile (the end-to-end run) through the real evaluator and sandbox."""

import json
import math
import threading
import time
from types import SimpleNamespace

import numpy as np
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
    """Final losses by program and seed: the baseline 3.00 + noise, 'good' 2.90 + 1.5 noise (and a steeper
    slope), 'same' the baseline's values shifted by an alternating +-0.002 (no real difference). Tuning runs
    (the reference rung, half the horizon) prefer lr near 2x the profile's and honour the pruner's thresholds,
    as the sandbox's training loop does, unless ``ignore_pruning``."""

    NOISE = [0.010, -0.004, 0.006, -0.008, 0.002, 0.0, -0.006, 0.004, -0.002, 0.008]

    def __init__(self, ignore_pruning=False):
        self.jobs = []
        self.ignore_pruning = ignore_pruning

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
        steps = job.hparams.get("steps", job.profile.steps)
        if job.rungs == "reference":  # tuning: a landscape with a minimum, and a curve to prune on
            value += 0.05 * abs(math.log(job.hparams["lr"] / (2 * job.profile.lr)))
            value += 0.01 * (job.hparams["batch_size_seqs"] != job.profile.batch_size_seqs)
        curve = [[100, value + 0.3], [steps, value]]
        for step, v in curve[:-1]:
            limit = (job.prune_above or {}).get(step)
            if limit is not None and v > limit and not self.ignore_pruning:
                return {"ok": False, "reason": "pruned", "message": "pruned", "seed": job.seed, "hparams": job.hparams,
                        "fingerprint_id": "fp-fake", "wall_s": 0.0, "pruned_curve": curve[:1]}
        # each size below the reference is worse by a per-seed step; 'good' also scales better, by a per-seed margin
        step_up = (0.55 + 0.5 * noise if "good" in name else 0.5) + 0.3 * self.NOISE[(job.seed + 3) % 10]
        ref = job.profile.reference_rung
        runs = []
        for i, rung in enumerate(job.profile.ladder):
            loss = value + step_up * (ref - i)
            runs.append({"rung": list(rung), "final_val_loss": loss, "non_embedding_params": 25000 * 2 ** i,
                         "attention_params": 8000 * 2 ** i, "buffer_elements": 0,
                         "scored_split_sha256": "0123456789abcdef",
                         "val_curve": curve if i == ref else [[100, loss + 1.0], [steps, loss]],
                         "train_curve": [[10, 6.0], [100, loss + 0.2], [steps, loss + 0.1]],
                         "grad_norm_mean": 1.0, "grad_norm_var": 0.1, "loss_roughness": 0.05, "ms_per_step": 20.0,
                         "wall_s": 6.0, "peak_memory_mib": 300.0, "steps_done": steps,
                         # a compiling profile: one seed of 'good' fell back to eager, as a program torch.compile
                         # refuses does
                         "compile_mode": job.profile.compile_mode if job.profile.compile else None,
                         "compiled": job.profile.compile and not ("good" in name and job.seed == 45),
                         "compile_error": "Unsupported: a fake failure" if "good" in name and job.seed == 45 else None,
                         "tokens_seen": steps * job.hparams.get("batch_size_seqs", job.profile.batch_size_seqs)
                         * job.profile.context_len_tokens})
        if job.rungs == "reference" or (job.rungs == "objective" and job.profile.objective == "final_loss"):
            runs = [runs[ref]]
        return {"ok": True, "reason": "ok", "message": "ok", "seed": job.seed, "hparams": job.hparams,
                "fingerprint_id": "fp-fake", "wall_s": 0.0,
                "record": {"value": value, "runs": runs, "final_loss": value}}


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


def candidates(tmp_path, *names, framework="ttr"):
    out = []
    seed = FRAMEWORKS[framework].seed_source()
    for name in names:
        path = tmp_path / f"{framework}_{name}.py"
        body = linear_ttr() if framework == "ttr" else seed
        path.write_text(hostile_ttr(tmp_path / "marker") if name == "hostile" else body.replace(
            "# EVOLVE-BLOCK-END", f"# {name}\n# EVOLVE-BLOCK-END"))
        out.append(jobs.Candidate(framework, path, f"{framework}-{name}", str(path)))
    return out


@pytest.fixture()
def full_profile(monkeypatch):
    """The design's own profile, with its CUDA requirement waived: the fake runner trains nothing."""
    import harness.trusted.profiles as profiles

    monkeypatch.setattr(profiles, "require_device", lambda profile: None)
    return get_profile("full")


def test_the_design_followed_gives_a_verdict(tmp_path, fake_evaluator, full_profile):
    runner = FakeRunner()
    out = tmp_path / "val"
    result = pipeline.validate(candidates(tmp_path, "good", "same", "hostile"), full_profile, out, runner=runner,
                               log=lambda m: None)
    assert result["deviations"] == [] and result["seeds"] == list(range(42, 52))
    by_label = {c["label"]: c for c in result["candidates"]}
    # the hostile candidate went through the evaluator and was refused; nothing of it ran here
    assert by_label["ttr-hostile"]["refused"].startswith("rejected by the evaluator: `policy`")
    assert not (tmp_path / "marker").exists()
    assert not any("hostile" in str(j.program_path) for j in runner.jobs)
    # tuning as designed: 100 trials per side on the reference rung at half the horizon, in the design's ranges
    tune_jobs = [j for j in runner.jobs if j.seed == full_profile.train_seed]
    assert all(j.rungs == "reference" and j.hparams["steps"] == 50_000 for j in tune_jobs)
    assert {j.hparams["batch_size_seqs"] for j in tune_jobs} == {32, 64, 128}
    assert all(1e-4 <= j.hparams["lr"] <= 1e-3 and 500 <= j.hparams["warmup_steps"] <= 2000
               and 0 <= j.hparams["weight_decay"] <= 0.1 for j in tune_jobs)
    good, same = by_label["ttr-good"], by_label["ttr-same"]
    for c in (good, same):
        hp = c["hyperparameters"]
        assert hp["baseline"]["n_trials"] == hp["candidate"]["n_trials"] == 100
        assert hp["baseline"]["sampler_seed"] != hp["candidate"]["sampler_seed"]  # independent samplers
        assert hp["candidate"]["pruned"] > 0  # the median pruner stopped some trials
        assert "steps" not in hp["candidate"]["best"]  # the seeds train the full horizon
    first = lambda side: good["hyperparameters"][side]["trials"][0]["params"]  # noqa: E731
    assert first("baseline") != first("candidate")
    seed_jobs = [j for j in runner.jobs if j.seed != full_profile.train_seed]
    assert sorted({j.seed for j in seed_jobs}) == list(range(42, 52))
    assert all(j.rungs == "ladder" and "steps" not in j.hparams for j in seed_jobs)
    assert sum(1 for j in seed_jobs if "baseline" in j.program_path.stem) == 10  # the baseline trained once
    # the primary test: paired on the final loss at the reference size; Holm over the 2 tested candidates
    g, s = good["stats"], same["stats"]
    from scipy.stats import ttest_rel

    cand = [r["candidate"] for r in g["seeds"]]
    base = [r["baseline"] for r in g["seeds"]]
    assert g["primary"]["p"] == pytest.approx(ttest_rel(cand, base).pvalue)
    assert g["primary"]["df"] == 9 and g["wins"] == 10
    assert g["p_holm"] == pytest.approx(min(1.0, 2 * min(g["primary"]["p"], s["primary"]["p"])))
    assert result["holm_family_size"] == 2
    assert g["scaling"]["slope_test"]["diff"] < 0 and g["scaling"]["slope_test"]["p_holm"] < 0.05
    assert g["verdict"]["level"] == "minimum, strong pending interpretation"
    assert s["verdict"]["level"] == "not significant"
    assert g["secondary"]["candidate"]["steps_to_90pct"]["mean"] == 100  # 90 % of 6.0 -> 3.0 by step 100
    # H4, each size of the ladder: paired over the seeds, smallest first, the reference size's equal to the primary's
    sizes = [z["size"] for z in g["per_size"]]
    assert sizes == [f"d{d}_l{l}" for d, l, _ in full_profile.ladder]
    lower = 0
    for z in g["per_size"]:
        cand_z = [r[f"candidate_loss_{z['size']}"] for r in g["seeds"]]
        base_z = [r[f"baseline_loss_{z['size']}"] for r in g["seeds"]]
        diffs = np.subtract(cand_z, base_z)
        assert z["n"] == 10 and z["diff"] == pytest.approx(diffs.mean()) and z["wins"] == sum(diffs < 0)
        if np.ptp(diffs) > 1e-9:
            assert z["p"] == pytest.approx(ttest_rel(cand_z, base_z).pvalue)
        else:  # the fake's largest size differs by the same amount on every seed: no test, as for the primary
            assert math.isnan(z["p"])
        lower += diffs.mean() < 0
    reference = next(z for z in g["per_size"] if z["size"] == "d{}_l{}".format(*full_profile.reference[:2]))
    assert reference["diff"] == pytest.approx(g["primary"]["diff"]) and reference["p"] == pytest.approx(g["primary"]["p"])
    report = (out / "report.md").read_text()
    assert "### Each size (H4: do improvements hold across sizes?)" in report
    assert f"The candidate's mean loss is lower at {lower} of 4 sizes" in report
    assert "Exploratory" not in report and "Not significant" in report and "paired t" in report
    assert "**refused**: rejected by the evaluator: `policy`" in report
    # one seed of 'good' trained eagerly (its four rungs, of 40); every other run, and every run of 'same', compiled
    assert report.count("**Trained eagerly**") == 1
    assert ("**Trained eagerly**, because torch.compile failed: the candidate's 4 of 40 run(s): the same recipe "
            "with other kernels, so slower and rounded differently (the first error: Unsupported: a fake failure)"
            in report)
    for kind in ("seeds", "box", "curves", "scaling"):
        assert (out / good["plots"][kind]).exists()
    # the researcher's interpretation completes the strong criteria
    after = pipeline.interpret(out, "ttr-good", "a fixed decay makes the memory forget old keys")
    again = {c["label"]: c for c in after["candidates"]}["ttr-good"]
    assert again["stats"]["verdict"]["level"] == "strong"
    assert "a fixed decay makes the memory forget" in (out / "report.md").read_text()
    with pytest.raises(ConfigError, match="no candidate"):
        pipeline.interpret(out, "ttr-missing", "x")


def test_a_smaller_run_is_exploratory_and_names_its_deviations(tmp_path, fake_evaluator):
    runner = FakeRunner()
    profile = get_profile("smoke")
    result = pipeline.validate(candidates(tmp_path, "good"), profile, tmp_path / "val", trials=6,
                               seeds=[42, 43, 44], runner=runner, log=lambda m: None)
    dev = result["deviations"]
    assert any("profile `smoke`" in d for d in dev) and any("seeds 42..44" in d for d in dev)
    assert any("6 tuning trial(s)" in d for d in dev)
    v = result["candidates"][0]["stats"]["verdict"]
    assert v["level"] == "exploratory" and v["text"].startswith("Exploratory: protocol not followed (")
    report = (tmp_path / "val" / "report.md").read_text()
    assert "**Exploratory: protocol not followed.**" in report
    assert "STRONG" not in report and "MINIMUM" not in report
    # the smoke space is the design's scaled to the smoke recipe
    space = tuning.distributions(profile)
    assert space["batch_size_seqs"].choices == (8, 16, 32)
    assert space["lr"].low == pytest.approx(3e-4) and space["lr"].high == pytest.approx(3e-3)


def test_a_run_that_ignores_the_pruner_fails_its_trial(tmp_path, fake_evaluator):
    """Pruning happens in the sandbox; the trusted replay through Optuna's MedianPruner is the judge."""
    runner = FakeRunner(ignore_pruning=True)
    result = pipeline.validate(candidates(tmp_path, "good"), get_profile("smoke"), tmp_path / "val", trials=25,
                               seeds=[42, 43], runner=runner, log=lambda m: None, ladder=False)
    trials = result["candidates"][0]["hyperparameters"]["candidate"]["trials"]
    failed = [t for t in trials if t["state"] == "fail"]
    assert failed and all("ran past step 100" in t["note"] for t in failed)
    assert all(t["value"] is None for t in failed)


def test_shared_tuning_and_family_with(tmp_path, fake_evaluator):
    runner = FakeRunner()
    profile = get_profile("smoke")
    first = pipeline.validate(candidates(tmp_path, "good"), profile, tmp_path / "a", tuning="shared", trials=3,
                              seeds=[42, 43, 44, 45], runner=runner, log=lambda m: None)
    good = first["candidates"][0]
    assert good["hyperparameters"]["candidate"]["n_trials"] == 0
    assert good["hyperparameters"]["candidate"]["best"] == good["hyperparameters"]["baseline"]["best"]
    # option B reports both results: the shared settings, and the candidate with its own tuning beside them
    own = good["option_a"]
    assert own["hyperparameters"]["n_trials"] == 3
    assert sum(1 for j in runner.jobs if j.seed == 0 and "good" in j.program_path.stem) == 3
    assert [r["seed"] for r in own["stats"]["seeds"]] == [42, 43, 44, 45]
    assert [r["baseline"] for r in own["stats"]["seeds"]] == [r["baseline"] for r in good["stats"]["seeds"]]
    assert "Option A beside option B" in (tmp_path / "a" / "report.md").read_text()
    # a second report joins the first one's comparisons in its Holm family
    second = pipeline.validate(candidates(tmp_path, "same"), profile, tmp_path / "b", tuning="shared", trials=0,
                               seeds=[42, 43, 44, 45], runner=runner, log=lambda m: None, ladder=False,
                               family_with=[tmp_path / "a" / "validation.json"])
    s = second["candidates"][0]["stats"]
    assert second["holm_family_size"] == 2 and second["slope_family_size"] == 1
    assert s["scaling"] is None
    p_first = good["stats"]["primary"]["p"]
    assert s["p_holm"] == pytest.approx(min(1.0, max(2 * min(s["primary"]["p"], p_first), s["primary"]["p"])))


def test_frameworks_are_compared_when_several_are_validated(tmp_path, fake_evaluator):
    runner = FakeRunner()
    cands = candidates(tmp_path, "good") + candidates(tmp_path, "same", framework="mm")
    result = pipeline.validate(cands, get_profile("smoke"), tmp_path / "val", trials=0, seeds=[42, 43, 44, 45],
                               runner=runner, log=lambda m: None, ladder=False)
    fw = result["frameworks"]
    assert fw["candidates"] == {"mm": "mm-same", "ttr": "ttr-good"}
    from scipy.stats import f_oneway, mannwhitneyu

    losses = {c["framework"]: [r["candidate"] for r in c["stats"]["seeds"]] for c in result["candidates"]}
    assert fw["anova"]["p"] == pytest.approx(f_oneway(losses["mm"], losses["ttr"]).pvalue)
    # 4 seeds per framework: below the chi-square approximation's 5, the exact p, which for two groups is the exact
    # Mann-Whitney test's
    assert fw["kruskal"]["p"] == pytest.approx(mannwhitneyu(losses["mm"], losses["ttr"], method="exact").pvalue)
    assert fw["kruskal"]["p_method"] == "exact permutation"
    assert len(fw["pairs"]) == 1 and fw["pairs"][0]["p_holm"] == pytest.approx(fw["pairs"][0]["p"])
    report = (tmp_path / "val" / "report.md").read_text()
    assert "## Across frameworks (H2)" in report and (tmp_path / "val" / "frameworks.png").exists()


def test_frameworks_under_different_fingerprints_are_not_compared(tmp_path, fake_evaluator, monkeypatch):
    """Each framework's comparison holds under its own fingerprint (say, on a cluster, two kinds of GPU); ranking
    the frameworks would compare hardware as much as mechanisms."""
    fp = {"ttr": "fp-a100", "mm": "fp-h200"}

    def evaluate(fw, path, profile=None, ledger_path=None, executor_name=None):
        return SimpleNamespace(metrics={"combined_score": 1.0, "valid": 1.0, "flop_ratio": 1.0},
                               artifacts={"reason": "ok", "message": "valid", "fingerprint_id": fp[fw]})

    class Runner(FakeRunner):
        def __call__(self, job):
            return {**super().__call__(job), "fingerprint_id": fp[job.framework]}

    monkeypatch.setattr(pipeline.evaluate_mod, "prepare", lambda fw, *a, **k: {"fingerprint": {"id": fp[fw]}})
    monkeypatch.setattr(pipeline.evaluate_mod, "evaluate", evaluate)
    cands = candidates(tmp_path, "good") + candidates(tmp_path, "same", framework="mm")
    result = pipeline.validate(cands, get_profile("smoke"), tmp_path / "val", trials=0, seeds=[42, 43, 44, 45],
                               runner=Runner(), log=lambda m: None, ladder=False)
    assert all(c.get("stats") for c in result["candidates"])  # each framework against its own baseline
    fw = result["frameworks"]
    assert "different fingerprints" in fw["not_comparable"] and "anova" not in fw
    assert fw["fingerprints"] == {"mm": "fp-h200", "ttr": "fp-a100"}
    report = (tmp_path / "val" / "report.md").read_text()
    assert "No comparison: the frameworks' best candidates were validated under different fingerprints" in report
    assert "ANOVA" not in report and not (tmp_path / "val" / "frameworks.png").exists()


def test_a_side_whose_tuning_finished_no_trial_makes_its_comparison_exploratory(tmp_path, fake_evaluator,
                                                                                full_profile):
    """Tuned against untuned is not the design's comparison, whatever the numbers say."""

    class Runner(FakeRunner):
        def __call__(self, job):
            if job.rungs == "reference" and "baseline" in job.program_path.stem:
                return {"ok": False, "reason": "crash", "message": "crash", "seed": job.seed, "hparams": job.hparams,
                        "fingerprint_id": "fp-fake", "wall_s": 0.0}
            return super().__call__(job)

    result = pipeline.validate(candidates(tmp_path, "good"), full_profile, tmp_path / "val", trials=3,
                               seeds=list(range(42, 52)), runner=Runner(), log=lambda m: None)
    good = result["candidates"][0]
    assert good["hyperparameters"]["baseline"]["best_value"] is None  # the profile's defaults
    assert good["deviations"] == ["the baseline: none of its 3 tuning trial(s) finished, so it trained with the "
                                  "profile's defaults"]
    v = good["stats"]["verdict"]
    assert v["level"] == "exploratory" and "none of its 3 tuning trial(s) finished" in v["text"]
    report = (tmp_path / "val" / "report.md").read_text()
    assert "`ttr-good`: the baseline: none of its 3 tuning trial(s) finished" in report
    assert "The run follows the users' design" not in report and "MINIMUM" not in report


def test_the_design_on_synthetic_text_is_a_deviation(monkeypatch):
    from harness.validation import protocol

    monkeypatch.setenv("HARNESS_DATA", "synthetic")
    assert protocol.deviations(get_profile("full"), list(protocol.SEEDS), "optuna", 100, True) == [
        "synthetic text instead of TinyStories (`roneneldan/TinyStories`)"]
    local_copy = get_profile("full", data_source="/data/tinystories")  # the hub's data, read from a local copy
    assert protocol.deviations(local_copy, list(protocol.SEEDS), "optuna", 100, True) == []
    # ... which the report names, since the harness cannot tell from a path that the text is TinyStories
    from harness.validation.report import _data_text

    shown = {k: getattr(local_copy, k) for k in ("name", "data_source")}
    assert _data_text(shown).startswith("`/data/tinystories`, taken to be a local copy of TinyStories")
    assert _data_text({"name": "full", "data_source": "roneneldan/TinyStories"}) == "`roneneldan/TinyStories`"


def test_no_ladder_is_a_deviation_only_where_the_objective_does_not_train_the_ladder():
    from harness.validation import protocol
    from harness.validation.report import _rungs_text

    seeds = list(protocol.SEEDS)
    slope = get_profile("full", objective="scaling_slope")
    assert protocol.deviations(slope, seeds, "optuna", 100, False) == []  # its rungs are the ladder
    assert _rungs_text({"ladder": False, "profile": {"objective": "scaling_slope"}}).endswith("every rung of the "
                                                                                              "ladder")
    final = get_profile("full", objective="final_loss")
    assert protocol.deviations(final, seeds, "optuna", 100, False) == [
        "the scaling ladder not trained: no slope, so the minimum criteria cannot all be assessed"]
    assert protocol.deviations(final, seeds, "optuna", 100, True) == []


def test_a_seed_on_which_both_sides_tie_is_no_side_s_win():
    from harness.validation.report import _better

    assert [_better(r) for r in ({"diff": -0.1}, {"diff": 0.0}, {"diff": 0.1}, {})] == [
        "candidate", "tie", "baseline", "–"]


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
                               seeds=[42, 43, 44], jobs=3, runner=runner, log=lambda m: None)
    assert runner.most == 3  # never more than --jobs at once, and that many when the batch allows
    hp = result["candidates"][0]["hyperparameters"]
    for side in ("baseline", "candidate"):
        trials = hp[side]["trials"]
        assert [t["trial"] for t in trials] == list(range(7)) and hp[side]["n_trials"] == 7
        assert len({tuple(sorted(t["params"].items())) for t in trials}) == 7  # the constant liar kept them apart
    tune_jobs = [j for j in runner.jobs if j.seed == profile.train_seed]
    assert len(tune_jobs) == 2 * 7


def test_mixing_matrices_from_a_sandbox_are_kept_only_when_well_formed():
    good = {"rung": [48, 2, 2], "seed": 42, "layers": [[[1.0, 0.0], [0.5, 0.5]]]}
    assert jobs.checked_mixing(good) == good
    for bad in (None, "x", {"rung": [48], "seed": 1, "layers": [[[1.0, 0.0]]]},  # not square
                {"rung": [48], "seed": 1, "layers": [[[float("nan")]]]}, {"rung": [48], "seed": 1, "layers": []},
                {"rung": [48], "seed": 1, "layers": [[["a"]]]}):
        assert jobs.checked_mixing(bad) is None


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
# End to end: the real evaluator, the real sandbox, real training (smoke-short profile, CPU)


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
               "--trials", "1", "--tuning", "optuna", "--threads", "1", "--jobs", "2", "--hard-limit-s", "600",
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
    assert [r["seed"] for r in s["seeds"]] == [42, 43]
    assert all(r["baseline_fp"] == r["candidate_fp"] == fp for r in s["seeds"])
    assert all(r["baseline"] is not None and r["candidate"] is not None for r in s["seeds"])
    assert all(0.5 < r["baseline"] < math.log(512) for r in s["seeds"])
    hp = c["hyperparameters"]
    assert hp["baseline"]["n_trials"] == hp["candidate"]["n_trials"] == 1
    assert all(t["params"]["batch_size_seqs"] in (8, 16, 32) for side in hp.values() for t in side["trials"])
    assert s["scaling"] is not None and len(s["scaling"]["candidate"]["per_seed"]) == 2
    assert 0.9 < c["evaluation"]["param_ratio"] <= 1.05 and c["evaluation"]["flop_ratio"] <= 1.10
    assert s["verdict"]["level"] == "exploratory"  # 2 seeds, 2 trials, smoke: not the design
    sec = s["secondary"]["candidate"]
    assert sec["grad_norm_mean"]["n"] == 2 and sec["steps_to_90pct"]["mean"] > 0 and sec["peak_memory_mib"]["mean"] > 0
    report = (out / "report.md").read_text()
    assert f"`{fp}`" in report and "paired t" in report and "Holm" in report and "Exploratory" in report
    for kind in ("seeds", "box", "curves", "scaling", "mixing"):
        assert (out / c["plots"][kind]).exists()
    import numpy as np

    with np.load(out / c["mixing"]["candidate"]["file"]) as saved:  # the matrices, kept beside the report
        layer = saved["candidate_layer0"]
    assert layer.shape[0] == layer.shape[1] and np.allclose(layer.sum(1), 1.0, atol=1e-3)
    assert np.all(np.triu(layer, 1) == 0)  # the trained linear-decay layer mixes only the past
    print(f"validate end to end: {elapsed:.0f} s; verdict {s['verdict']['level']}: {s['verdict']['text']}")


def test_a_job_at_a_tuned_batch_goes_through_the_gate_at_that_batch(smoke_env, tmp_path):
    """The evaluator's gate saw the profile's batch (16 under smoke); tuning tries half and twice that as well. A
    program that nearly doubles its work only at twice the batch is refused there, and trains at the profile's own."""
    import security
    from harness.trusted.evaluate import prepare

    profile = get_profile(security.PROFILE)
    big = 2 * profile.batch_size_seqs
    # Two more causal attention maps over its input, only at twice the batch: nearly twice the work there.
    source = security.Attack(
        "work_at_a_tuned_batch", "budget",
        f"if x.shape[0] == {big}:\n"
        "    future = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).triu(1)\n"
        "    for _ in range(2):\n"
        "        s = (x @ x.transpose(-1, -2) / math.sqrt(x.shape[-1])).masked_fill(future, float('-inf'))\n"
        "        x = x + 0.5 * torch.softmax(s, dim=-1) @ x",
        reason="flop_parity").source("unused", "UNUSED")
    path = tmp_path / "candidate.py"
    path.write_text(source)
    fingerprint = prepare(security.FRAMEWORK)["fingerprint"]["id"]

    def job(batch):
        return jobs.run_training_job(jobs.TrainJob(security.FRAMEWORK, path, profile, 42,
                                                   {"batch_size_seqs": batch}, "reference", fingerprint,
                                                   profile.hard_limit_s))

    refused = job(big)
    assert refused["reason"] == "flop_parity" and refused["message"].startswith(f"at batch {big}: "), refused["message"]
    assert job(profile.batch_size_seqs)["reason"] == "ok"


def test_an_eager_run_with_an_odd_error_is_named_on_one_line():
    """A cached job or a record from before runs were typed may hold any JSON as its error: the report names it on
    one line of its table-free text, and never fails on it."""
    from harness.validation.report import eager_runs

    run = {"compile_mode": "reduce-overhead", "compiled": False}
    outcomes = {"baseline": [{"record": {"runs": [{**run, "compile_error": 5}]}}],
                "candidate": [{"record": {"runs": [{**run, "compile_error": "a | b`\n# heading"}]}}, {"ok": False}]}
    lines = eager_runs({"runs": outcomes})
    assert lines[0].endswith("(the first error: 5)")
    assert lines[1].endswith("(the first error: a \\| b' # heading)") and "\n" not in lines[1]


@pytest.mark.parametrize("reason", [["crash"], {"r": 1}, "its own words", None])
def test_a_job_that_fails_in_the_sandboxs_own_words_is_tampering_and_prints_no_terminal_control(tmp_path, monkeypatch,
                                                                                                 reason):
    """A training job's failure is printed (``refused: ...``) and kept: a reason that is not one of the evaluator's
    (a list once crashed the whole validation) is tampering, and the sandbox's text comes back printable."""
    from harness.trusted import executor

    result = {"reason": reason, "message": "\x1b]52;c;eA==\x07x", "traceback": "\x1b[2K\x1b[1Ay"}
    monkeypatch.setattr(jobs.executor_mod, "run_sandbox", lambda *args, **kwargs: executor.SandboxRun("exited", result))
    path = tmp_path / "program.py"
    path.write_text("")
    out = jobs.run_training_job(jobs.TrainJob("ttr", path, get_profile("smoke-short"), 42, {}, "objective", "fp", 60.0))
    assert out["ok"] is False and out["reason"] == "tampering"
    assert out["message"] == "\\x1b]52;c;eA==\\x07x" and out["log_tail"] == "\\x1b[2K\\x1b[1Ay"


def test_sides_tuned_to_different_batch_sizes_are_said_to_see_different_numbers_of_tokens():
    from harness.validation.report import _tuning_section

    def side(batch):
        return {"best": {"lr": 1e-3, "warmup_steps": 500, "weight_decay": 0.0, "batch_size_seqs": batch}}

    said = "\n".join(_tuning_section({"hyperparameters": {"baseline": side(32), "candidate": side(128)}},
                                     {"tuning": "optuna"}))
    assert "the candidate sees 4.00× the baseline's training tokens" in said
    same = "\n".join(_tuning_section({"hyperparameters": {"baseline": side(64), "candidate": side(64)}},
                                     {"tuning": "optuna"}))
    assert "training tokens" not in same


def test_two_candidates_of_one_name_keep_their_own_files_and_interpretations(tmp_path, fake_evaluator):
    """Two runs' best/best_program.py: one label each, one program file each, one interpretation each."""
    cands = []
    for run, tag in (("run0", "# first\n"), ("run1", "# second\n")):
        path = tmp_path / run / "best" / "best_program.py"
        path.parent.mkdir(parents=True)
        path.write_text(linear_ttr().replace("# EVOLVE-BLOCK-END", tag + "# EVOLVE-BLOCK-END"))
        cands.append(jobs.Candidate("ttr", path, "ttr-best_program", str(path)))
    out = tmp_path / "val"
    result = pipeline.validate(cands, get_profile("smoke"), out, trials=0, seeds=[42, 43], runner=FakeRunner(),
                               log=lambda m: None, ladder=False)
    labels = [c["label"] for c in result["candidates"]]
    assert len(set(labels)) == 2 and all(label.startswith("ttr-best_program-") for label in labels)
    shas = {c["sha256"] for c in result["candidates"]}
    assert len(shas) == 2 and len(list((out / "programs").glob("ttr-best_program-*.py"))) == 2
    after = pipeline.interpret(out, labels[0], "the first one's mechanism")
    assert [c["interpretation"] for c in after["candidates"]] == ["the first one's mechanism", None]
    with pytest.raises(ConfigError, match="the same program is given twice"):
        pipeline.validate([cands[0], cands[0]], get_profile("smoke"), tmp_path / "v2", trials=0, seeds=[42, 43],
                          runner=FakeRunner(), log=lambda m: None, ladder=False)
    assert jobs.slug("x" * 70 + "-0a1b2c3d") != jobs.slug("x" * 70 + "-9f8e7d6c")  # the ids past the cut count


def test_the_same_command_again_keeps_an_interpretation_recorded_for_the_same_program(tmp_path, fake_evaluator):
    cands = candidates(tmp_path, "good")
    out = tmp_path / "val"
    run = lambda: pipeline.validate(cands, get_profile("smoke"), out, trials=0, seeds=[42, 43],  # noqa: E731
                                    runner=FakeRunner(), log=lambda m: None, ladder=False)
    run()
    pipeline.interpret(out, "ttr-good", "a fixed decay forgets distant tokens")
    again = run()
    assert again["candidates"][0]["interpretation"] == "a fixed decay forgets distant tokens"
    cands[0].source.write_text(cands[0].source.read_text().replace("# good\n", "# good, edited\n"))
    assert run()["candidates"][0]["interpretation"] is None  # another program: its mechanism is not yet explained


def test_a_refusal_that_depends_on_the_limits_is_evaluated_again_and_a_cut_short_cache_file_is_no_result(
        tmp_path, fake_evaluator, monkeypatch):
    calls = []

    def evaluate(fw, path, profile=None, ledger_path=None, executor_name=None):
        calls.append(path)
        return SimpleNamespace(metrics={"combined_score": 0.0, "valid": 0.0},
                               artifacts={"reason": "timeout", "message": "killed at the limit",
                                          "fingerprint_id": "fp-fake", "ledger_row": "9"})

    monkeypatch.setattr(pipeline.evaluate_mod, "evaluate", evaluate)
    cands = candidates(tmp_path, "good")
    for _ in range(2):  # a resume with a longer --hard-limit-s must evaluate it again
        pipeline.validate(cands, get_profile("smoke"), tmp_path / "val", trials=0, seeds=[42, 43], runner=FakeRunner(),
                          log=lambda m: None, ladder=False)
    assert len(calls) == 2 and not list((tmp_path / "val" / "evaluations").glob("*.json"))
    monkeypatch.setattr(pipeline.evaluate_mod, "evaluate", lambda *a, **k: SimpleNamespace(
        metrics={"combined_score": 1.05, "valid": 1.0},
        artifacts={"reason": "ok", "message": "valid", "fingerprint_id": "fp-fake", "ledger_row": "8"}))
    pipeline.validate(cands, get_profile("smoke"), tmp_path / "val", trials=0, seeds=[42, 43], runner=FakeRunner(),
                      log=lambda m: None, ladder=False)
    (cached,) = (tmp_path / "val" / "evaluations").glob("*.json")
    cached.write_text(cached.read_text()[:20])  # a kill in the middle of writing it
    result = pipeline.validate(cands, get_profile("smoke"), tmp_path / "val", trials=0, seeds=[42, 43],
                               runner=FakeRunner(), log=lambda m: None, ladder=False)
    assert result["candidates"][0]["evaluation"]["reason"] == "ok" and json.loads(cached.read_text())


def test_an_outcome_from_another_environment_or_with_no_result_is_not_remembered():
    job = SimpleNamespace(fingerprint_id="fp-fake")
    assert jobs.remembered(job, {"reason": "ok", "fingerprint_id": "fp-fake"})
    assert jobs.remembered(job, {"reason": "causality", "fingerprint_id": None})
    assert not jobs.remembered(job, {"reason": "ok", "fingerprint_id": "fp-other-worker"})
    assert not jobs.remembered(job, {"reason": "crash", "fingerprint_id": None, "no_result": True})
    assert not jobs.remembered(job, {"reason": "timeout", "fingerprint_id": "fp-fake"})


def test_a_tuning_trial_from_another_environment_fails_and_sides_never_share_a_sampler_seed(tmp_path):
    from harness.validation.tuning import sampler_seed

    assert sampler_seed("ttr-baseline", "baseline") != sampler_seed("ttr-baseline", "candidate")
    profile = get_profile("smoke")
    runner = FakeRunner()

    def elsewhere(job):
        out = runner(job)
        return {**out, "fingerprint_id": "fp-other-worker"} if job.hparams["batch_size_seqs"] != 32 else out

    path = tmp_path / "ttr_good.py"
    path.write_text(linear_ttr())
    made = lambda hp: jobs.TrainJob("ttr", path, profile, profile.train_seed, hp, "reference",  # noqa: E731
                                    "fp-fake", 60.0, 1, "t", "local")
    result = tuning.tune(made, profile, 8, elsewhere, lambda m: None, side="ttr-good")
    elsewhere_trials = [t for t in result["trials"] if t["params"]["batch_size_seqs"] != 32]
    assert elsewhere_trials and all(t["state"] == "fail" and "fp-other-worker" in t["note"] for t in elsewhere_trials)
    assert result["best"]["batch_size_seqs"] == 32 or result["best_value"] is None

"""The evaluator end to end, exactly as OpenEvolve calls it: each candidate of the adversarial corpus gets
its exact reason code through the real sandbox subprocess, and the legitimate ones pass."""

import dataclasses
import importlib.util
import math
import time

import pytest
from openevolve.evaluation_result import EvaluationResult

import adversarial
import security
from harness.trusted import ledger
from harness.trusted.evaluate import evaluate, prepare
from harness.trusted.frameworks import FRAMEWORKS
from harness.trusted.profiles import ConfigError, get_profile

# The timeout case runs under a short hard limit so that CI does not wait out the smoke profile's.
TIMEOUT_CASE_LIMIT_S = 10.0


def check_result_types(result):
    assert isinstance(result, EvaluationResult)
    for key, value in result.metrics.items():
        assert type(value) is float, (key, type(value))
        assert math.isfinite(value), key
    assert all(isinstance(v, str) for v in result.artifacts.values())


def run_case(case, tmp_path, profile=None):
    path = tmp_path / f"{case.name}.py"
    path.write_text(case.source)
    return evaluate(adversarial.FRAMEWORK, str(path), profile=profile)


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_seed_scores_parity_against_its_cached_baseline(smoke_env, framework, tmp_path):
    started = time.time()
    prepared = prepare(framework)
    prepare_s = time.time() - started
    path = tmp_path / "seed.py"
    path.write_text(adversarial.trained_seed(framework))
    result = evaluate(framework, str(path))
    total_s = time.time() - started
    check_result_types(result)
    assert result.artifacts["reason"] == "ok", result.artifacts
    # Same seed, same data, same CPU: the candidate run reproduces the cached baseline.
    assert result.metrics["combined_score"] == pytest.approx(1.0, abs=1e-3)
    assert result.metrics["final_loss"] == pytest.approx(prepared["baseline"]["final_loss"], abs=1e-3)
    # It learned: a nat or more below a uniform guess (ln V = 6.24). The seeds end at 4.68 nats at smoke-short and
    # 2.77 at smoke; 0.75 ln V (4.679) was a bound for smoke that smoke-short met by 0.002 nats.
    assert result.metrics["final_loss"] < math.log(get_profile().vocab_size) - 1.0
    # The ledger keeps the training as it ran (curves, timings, no compilation at smoke) with the scorer's loss.
    row = next(r for r in ledger.evaluations() if r["id"] == int(result.artifacts["ledger_row"]))
    (run,) = row["runs"]
    assert run["rung"] == list(get_profile().reference) and run["status"] == "ok" and run["compiled"] is False
    assert run["final_val_loss"] == result.metrics["final_loss"]
    assert run["steps_done"] == get_profile().steps == run["train_curve"][-1][0] == run["val_curve"][-1][0]
    assert "compile" not in result.artifacts
    print(f"{framework}: prepare {prepare_s:.1f}s, prepare+evaluate {total_s:.1f}s, "
          f"evaluate {result.metrics['eval_wall_s']:.1f}s")
    assert result.metrics["eval_wall_s"] < 60.0


def test_the_pristine_seed_is_scored_by_its_baseline_without_training_again(smoke_env, tmp_path, monkeypatch):
    """OpenEvolve evaluates its initial program first: that is the baseline's own training, which the preparation
    ran and the trusted scorer scored, so no sandbox runs again. The row says so, and keeps the baseline's runs."""
    from harness.trusted import executor

    prepared = prepare("ttr")

    def no_sandbox(*args, **kwargs):
        raise AssertionError("a sandbox ran for the pristine seed")

    monkeypatch.setattr(executor, "run_sandbox", no_sandbox)
    path = tmp_path / "ttr.py"
    path.write_text(FRAMEWORKS["ttr"].seed_source())
    result = evaluate("ttr", str(path))
    check_result_types(result)
    assert result.artifacts["reason"] == "ok", result.artifacts
    assert result.metrics["combined_score"] == 1.0 and result.metrics["valid"] == 1.0
    assert result.metrics["final_loss"] == prepared["baseline"]["final_loss"]
    assert result.artifacts["fingerprint_id"] == prepared["fingerprint"]["id"]
    assert "nothing ran" in result.artifacts["execution"] and "not trained again" in result.artifacts["message"]
    row = next(r for r in ledger.evaluations() if r["id"] == int(result.artifacts["ledger_row"]))
    assert row["verdict"] == "valid" and row["execution"]["reused"]
    assert [r["final_val_loss"] for r in row["runs"]] == [r["final_val_loss"] for r in prepared["baseline"]["runs"]]
    # Any change to the program, a comment included, is a candidate of its own: it goes to the sandbox.
    path.write_text(adversarial.TRAINED_SEED)
    changed = evaluate("ttr", str(path))
    assert changed.artifacts["reason"] == "infrastructure" and "a sandbox ran" in changed.artifacts["message"]


@pytest.mark.parametrize("case", [c for c in adversarial.CASES if c.name != "seed"], ids=lambda c: c.name)
def test_adversarial_corpus_gets_its_exact_reason(smoke_env, case, tmp_path):
    profile = None
    if case.reason == "timeout":
        profile = dataclasses.replace(get_profile(), hard_limit_s=TIMEOUT_CASE_LIMIT_S)
    started = time.time()
    result = run_case(case, tmp_path, profile)
    elapsed = time.time() - started
    check_result_types(result)
    artifacts = result.artifacts
    assert artifacts["reason"] == case.reason, (artifacts.get("message"), artifacts.get("details", "")[-1500:])
    assert artifacts["message"] and artifacts["hint"]
    if case.reason == "ok":
        assert result.metrics["combined_score"] > 0.0
        assert result.metrics["valid"] == 1.0
    else:
        assert result.metrics["combined_score"] == 0.0
        assert result.metrics["valid"] == 0.0
    if case.reason == "timeout":
        assert elapsed < TIMEOUT_CASE_LIMIT_S + 30, "the hard limit did not stop the sandbox"
    if case.name == "prints_a_fake_score":
        assert result.metrics["combined_score"] < 2.0
    row = next(r for r in ledger.evaluations() if r["id"] == int(artifacts["ledger_row"]))
    if case.reason == "nonfinite":  # the ledger keeps the failed run: where its loss stopped being finite
        (run,) = row["runs"]
        assert run["status"] == "nonfinite" and 0 < run["nonfinite_step"] < get_profile().steps
        assert "final_val_loss" not in run  # no scorer ran: no scored loss
    assert row["reason"] == case.reason and row["combined_score"] == result.metrics["combined_score"]
    assert row["fingerprint_id"] == artifacts["fingerprint_id"] != ""
    assert open(row["code_path"]).read().strip()


@pytest.mark.parametrize("profile_name", ["pilot", "smoke"])
def test_a_program_that_trained_eagerly_because_it_would_not_compile_is_told_why(profile_name, tmp_path):
    """Where the profile compiles (pilot, full), a program that torch.compile refused trained eagerly, several times
    slower: the LLM reads why in its next prompt, and the ledger keeps which runs compiled. Smoke never compiles."""
    from harness.trusted.evaluate import _result
    from harness.trusted.reasons import Reason
    from harness.trusted.scoring import reported_runs

    profile = get_profile(profile_name)
    runs = reported_runs([{"rung": list(profile.reference), "status": "ok", "compiled": False,
                           "compile_error": "Unsupported: data-dependent branching"}], len(profile.ladder))
    prepared = {"profile": profile, "ledger": tmp_path / "ledger.sqlite", "fingerprint": {"id": "0123"}}
    result = _result("ttr", Reason.OK, "valid", score=1.0, prepared=prepared, code="x = 1\n", runs=runs)
    check_result_types(result)
    if profile.compile:
        assert "trained eagerly" in result.artifacts["compile"]
        assert "data-dependent branching" in result.artifacts["compile"]
    else:
        assert "compile" not in result.artifacts
    (row,) = ledger.evaluations(tmp_path / "ledger.sqlite")
    assert row["runs"] == runs and row["runs"][0]["compiled"] is False


def test_numbers_past_a_floats_range_are_dropped_from_metrics():
    from harness.trusted.evaluate import gate_metrics

    assert gate_metrics({"param_ratio": 10 ** 400, "flop_ratio": 1.5}) == {"flop_ratio": 1.5}


def test_configuration_errors_stop_at_start(smoke_env, monkeypatch):
    with pytest.raises(ConfigError, match="unknown profile"):
        get_profile("huge")
    monkeypatch.setenv("HARNESS_PROFILE", "full")
    from harness.trusted import profiles

    monkeypatch.setattr(profiles, "_CUDA_VISIBLE", None)
    if profiles.cuda_visible():
        pytest.skip("a CUDA device is visible: the full profile can run here")
    with pytest.raises(ConfigError, match="requires CUDA"):
        prepare("ttr", get_profile())
    monkeypatch.setenv("HARNESS_PROFILE", "smoke")
    monkeypatch.setenv("HARNESS_DATA", str(smoke_env / "no-such-corpus"))
    with pytest.raises(ConfigError, match="does not exist|not found|no such"):
        prepare("ttr", get_profile())


def test_a_hub_data_source_is_fetched_by_the_host_and_prepared_without_network(smoke_env, tmp_path, monkeypatch):
    """The users' data source is a hub name, and no sandbox has a network. The host downloads the dataset into the
    Hugging Face cache first, in a process that runs no program; the confined preparation then reads it from there,
    offline, and a program trains on it. What the host cannot fetch stops the preparation with the download's reason,
    before any sandbox starts."""
    from hub_cache import cache_hub_dataset

    from harness.data import load_text_splits
    from harness.trusted import confine

    for variable in ("HF_DATASETS_CACHE", "HF_HUB_CACHE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HARNESS_DATA", "roneneldan/TinyStories")
    # A cache and a ledger of its own: the session's hold one data source, which other files' tests rely on.
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HARNESS_LEDGER", str(tmp_path / "ledger.sqlite"))
    profile = get_profile()
    with pytest.raises(ConfigError, match=r"cannot fetch the data source 'roneneldan/TinyStories' onto this host: "
                                          r"cannot load the hub dataset .* not in the local Hugging Face cache"):
        prepare("ttr", profile)
    train, val, _ = load_text_splits("synthetic", profile.synthetic_stories)
    cache_hub_dataset(tmp_path / "hf" / "datasets", "roneneldan/TinyStories", {"train": train, "validation": val},
                      tmp_path / "build")
    prepared = prepare("ttr", profile)
    assert prepared["fingerprint"]["data_source"] == "roneneldan/TinyStories"
    path = tmp_path / "seed.py"
    path.write_text(adversarial.TRAINED_SEED)
    result = evaluate("ttr", str(path), profile=profile)
    assert result.artifacts["reason"] == "ok", result.artifacts
    assert result.metrics["combined_score"] == pytest.approx(1.0, abs=1e-3)
    if confine.unavailable_reason("cpu") is None:
        assert "network" in result.artifacts["execution"] and "Landlock files" in result.artifacts["execution"]


def test_evaluator_module_is_what_openevolve_loads(smoke_env, tmp_path):
    """Load evaluators/ttr_eval.py the way OpenEvolve does and call its evaluate(path)."""
    path = FRAMEWORKS["ttr"].seed_path.parent.parent / "evaluators" / "ttr_eval.py"
    spec = importlib.util.spec_from_file_location("evaluation_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    candidate = tmp_path / "c.py"
    candidate.write_text(adversarial.BY_NAME["no_causal_mask"].source)
    result = module.evaluate(str(candidate))
    assert result.artifacts["reason"] == "causality"
    assert result.metrics["combined_score"] == 0.0


def test_evaluate_never_raises_on_unreadable_input(smoke_env, tmp_path):
    result = evaluate("ttr", str(tmp_path / "missing.py"))
    check_result_types(result)
    assert result.metrics["combined_score"] == 0.0
    assert result.artifacts["reason"] == "infrastructure"


def test_memory_cap_kills_the_sandbox(smoke_env, tmp_path):
    source = adversarial.with_block(adversarial.block(
        extra_init="        self.hoard = torch.ones(700_000_000)",  # 2.8 GB the moment it is constructed
    ))
    path = tmp_path / "hoard.py"
    path.write_text(source)
    profile = dataclasses.replace(get_profile(), memory_cap_mib=1500)
    result = evaluate("ttr", str(path), profile=profile)
    assert result.artifacts["reason"] == "memory", result.artifacts
    assert result.metrics["combined_score"] == 0.0


def test_scaling_slope_objective_scores_the_seed_at_parity(smoke_env, tmp_path):
    profile = get_profile(objective="scaling_slope")
    path = tmp_path / "seed.py"
    path.write_text(adversarial.TRAINED_SEED)
    result = evaluate("ttr", str(path), profile=profile)
    assert result.artifacts["reason"] == "ok", result.artifacts
    assert result.metrics["combined_score"] == pytest.approx(1.0, abs=1e-3)
    # One loss per rung, and the fitted slope: more parameters, lower loss.
    rung_losses = [v for k, v in result.metrics.items() if k.startswith("val_loss_d")]
    assert len(rung_losses) == len(profile.ladder)
    row = next(r for r in ledger.evaluations() if r["id"] == int(result.artifacts["ledger_row"]))
    assert [r["rung"] for r in row["runs"]] == [list(rung) for rung in profile.ladder]
    assert result.metrics["scaling_b"] < 0


# While it is constructed, the candidate writes the sandbox's own result file (its path is the sandbox's third
# argument), then ends its process before the sandbox can write the real result.
def _forger(content: str) -> str:
    return adversarial.with_block(adversarial.block(extra_init=f"""
        proc = getattr(torch, "o" + "s")
        path = getattr(torch, "s" + "ys").argv[3]
        torch.tensor(list({content!r}.encode()), dtype=torch.uint8).numpy().tofile(path)
        proc._exit(0)
"""))


@pytest.mark.parametrize("content", ['{"reason": "ok", "message": "valid", "combined_score": 7.5, "flags": []}',
                                     "[7.5]", "combined_score: 7.5"], ids=["perfect_score", "a_list", "not_json"])
def test_a_forged_result_file_is_never_scored(smoke_env, tmp_path, content, monkeypatch):
    """The score is recomputed outside the sandbox from the runs' numbers: a result without them is tampering,
    whatever score it claims. The static policy refuses this forger; it is switched off here, as if the candidate
    had found a hole in it, to show the layer behind it."""
    security.past_the_static_policy(monkeypatch)
    path = tmp_path / "forger.py"
    path.write_text(_forger(content))
    result = evaluate("ttr", str(path))
    check_result_types(result)
    assert result.artifacts["reason"] == "tampering", result.artifacts
    assert result.metrics["combined_score"] == 0.0 and result.metrics["valid"] == 0.0
    row = next(r for r in ledger.evaluations() if r["id"] == int(result.artifacts["ledger_row"]))
    assert row["reason"] == "tampering" and row["combined_score"] == 0.0

"""``harness campaign``: the pre-registration, a resume after SIGKILL that repeats no finished work and gives the
report an uninterrupted validation gives, and clear errors for bad input across the subcommands."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from harness.campaign import plan
from harness.campaign.commands import check_endpoint, parse_frameworks
from harness.trusted import ledger as ledger_mod
from harness.trusted.frameworks import FRAMEWORKS
from harness.trusted.profiles import ConfigError, get_profile
from security import PROFILE

HARNESS = [sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main())"]


def _harness(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(HARNESS + list(args), capture_output=True, text=True, timeout=kwargs.pop("timeout", 120),
                          **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Bad input: a clear message and a non-zero exit, never a traceback


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("programs")
    ttr = FRAMEWORKS["ttr"].seed_source()
    no_markers = tmp_path / "no_markers.py"
    no_markers.write_text(ttr.replace("# EVOLVE-BLOCK-START\n", "").replace("# EVOLVE-BLOCK-END\n", ""))
    broken = tmp_path / "broken.py"
    broken.write_text(ttr.replace("# EVOLVE-BLOCK-END\n", "def oops(:\n    pass\n# EVOLVE-BLOCK-END\n"))
    empty_dir = tmp_path / "not_a_run"
    empty_dir.mkdir()
    return {"no_markers": no_markers, "broken": broken, "empty_dir": empty_dir, "missing": tmp_path / "missing.py"}


CASES = [
    ("train a missing file", ["train", "{missing}"], r"^harness train: .*missing\.py: no such file"),
    ("train a file that is not a program", ["train", "/etc/passwd"], r"no EVOLVE-BLOCK markers"),
    ("train a program without markers", ["train", "{no_markers}"], r"no EVOLVE-BLOCK markers"),
    ("train a program with a syntax error", ["train", "{broken}"], r"syntax error at line \d+"),
    ("validate a missing program", ["validate", "--program", "{missing}"], r"missing\.py: no such file"),
    ("validate a program without markers", ["validate", "--program", "{no_markers}", "--framework", "ttr"],
     r"no EVOLVE-BLOCK markers"),
    ("validate a program with a syntax error", ["validate", "--program", "{broken}"], r"syntax error at line \d+"),
    ("validate a folder with no run", ["validate", "--run", "{empty_dir}"], r"not an OpenEvolve output folder"),
    ("analyse a folder with no run", ["analyze", "{empty_dir}"], r"not an OpenEvolve output folder"),
    ("analyse a missing folder", ["analyze", "{missing}"], r"missing\.py: no such folder"),
    ("evaluate a missing file", ["evaluate", "ttr", "{missing}"], r"no such file"),
    ("an unknown profile", ["campaign", "--profile", "huge"], r"unknown profile 'huge'"),
    ("an unknown framework", ["campaign", "--frameworks", "cd,xyz", "--profile", "smoke"],
     r"unknown framework\(s\) \['xyz'\]"),
    ("an unknown framework for evaluate", ["evaluate", "xyz", "{missing}"], r"invalid choice: 'xyz'"),
    ("an unreachable LLM endpoint", ["campaign", "--profile", "smoke", "--api-base", "http://127.0.0.1:9/v1",
                                     "--model", "m"], r"cannot reach the LLM endpoint .*--proposer builtin"),
    ("an LLM endpoint without a model", ["campaign", "--profile", "smoke", "--api-base", "http://127.0.0.1:9/v1"],
     r"needs both --api-base URL and --model NAME"),
]


# Every case's command line, run by ``harness.cli.main`` in one interpreter (one import of torch, not sixteen), each
# in a folder of its own; what an uncaught exception would print reaches its stderr as in a process of its own.
_BATCH = """
import contextlib, io, json, os, sys, traceback
from harness.cli import main
out = []
for folder, argv in json.load(sys.stdin):
    os.chdir(folder)
    err, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
    out.append({"code": code, "stderr": err.getvalue(), "stdout": stdout.getvalue()})
json.dump(out, sys.__stdout__)
"""


@pytest.fixture(scope="module")
def bad_input_results(programs, smoke_env, tmp_path_factory):
    folders = [tmp_path_factory.mktemp("case") for _ in CASES]
    batch = [[str(folder), [a.format(**programs) for a in args]] for folder, (_, args, _) in zip(folders, CASES)]
    result = subprocess.run([sys.executable, "-c", _BATCH], input=json.dumps(batch), capture_output=True, text=True,
                            timeout=600, env={**os.environ, "OPENAI_API_KEY": "test"})
    assert result.returncode == 0, result.stderr[-3000:]
    return {name: (reply, folder) for (name, _, _), reply, folder in zip(CASES, json.loads(result.stdout), folders)}


@pytest.mark.parametrize("name,args,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_message_and_a_nonzero_exit(name, args, message, bad_input_results):
    result, folder = bad_input_results[name]
    assert result["code"] == 2, (result["code"], result["stdout"][-500:], result["stderr"][-2000:])
    assert re.search(message, result["stderr"]), result["stderr"][-2000:]
    assert "Traceback" not in result["stderr"] and "Traceback" not in result["stdout"]
    assert not (folder / "results").exists()  # nothing was started


def test_a_bad_input_exits_with_its_message_from_the_command_line(programs, smoke_env, tmp_path):
    """One case through the real entry point, as a process of its own."""
    result = _harness("train", str(programs["broken"]), cwd=tmp_path)
    assert result.returncode == 2 and re.search(r"syntax error at line \d+", result.stderr), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_endpoint_check_and_framework_list():
    with pytest.raises(ConfigError, match="cannot reach"):
        check_endpoint("http://127.0.0.1:9/v1", timeout_s=2)
    assert parse_frameworks("ttr, mm") == ("ttr", "mm")
    with pytest.raises(ConfigError, match="named twice"):
        parse_frameworks("ttr,ttr")


# ----------------------------------------------------------------------------------------------------------
# The pre-registration


def _settings(**changes):
    base = dict(frameworks=("ttr",), profile="smoke", profile_digest=get_profile("smoke").digest(), iterations=2,
                proposer={"kind": "builtin", "seed": 0}, seeds=(42, 43), tuning="optuna", trials=0)
    return plan.Settings(**{**base, **changes})


def test_preregistration_holds_the_plan_and_refuses_another(tmp_path):
    settings = _settings()
    prereg = plan.build(settings, get_profile("smoke"), "abc123", {"ttr": "max_iterations: 2\n"})
    plan.write(tmp_path, prereg)
    loaded = plan.load(tmp_path)
    assert loaded["settings"]["seeds"] == [42, 43] and loaded["code_hash"] == "abc123"
    assert set(loaded["hypotheses"]) == {"H1", "H2", "H4"}
    assert any("seeds 42, 43 instead of 42..51" in d for d in loaded["protocol_deviations"])
    assert loaded["configs"]["ttr"]["text"] == "max_iterations: 2\n"
    md = (tmp_path / plan.PREREGISTRATION_MD).read_text()
    assert "## Success criteria" in md and "exploratory" in md
    plan.check_same_plan(loaded, settings, tmp_path)  # the same plan resumes
    with pytest.raises(ConfigError, match="iterations: registered 2, asked 5"):
        plan.check_same_plan(loaded, _settings(iterations=5), tmp_path)


# ----------------------------------------------------------------------------------------------------------
# The final report: a departure from the design takes every verdict away; what the design allows does not


def _report_inputs(iterations_done=35, rule_fired=False, code_hashes=("abc",)):
    """A campaign that followed the design (full, 35 iterations, seeds 42..51, 100 trials), with cd's validation
    meeting every strong criterion, and ttr without a candidate."""
    from harness.validation import stats

    base = np.array([3.0 + x for x in (0.010, -0.004, 0.006, -0.008, 0.002, 0.0, -0.006, 0.004, -0.002, 0.008)])
    cand = base - 0.1 + np.array([0.003, -0.002, 0.001, 0, 0.002, -0.001, 0.0, 0.001, -0.003, 0.002])
    primary = stats.paired(cand, base)
    v = stats.verdict(primary=primary, p_holm=primary.p, n_wins=stats.wins(cand, base),
                      slope={"p_holm": 0.001, "diff": -0.02}, flop_ratio=1.04, interpretation="decay forgets",
                      deviations=[])
    assert v.level == "strong"
    validation = {"candidates": [{"label": "cd-x", "framework": "cd", "evaluation": {"combined_score": 1.1},
                                  "stats": {"primary": primary.to_dict(), "p_holm": primary.p, "verdict": v.to_dict()}}],
                  "frameworks": None}
    prereg = {"settings": {"frameworks": ["cd", "ttr"], "profile": "full", "iterations": 35,
                           "seeds": list(range(42, 52)), "tuning": "optuna", "trials": 100},
              "protocol_deviations": [], "code_hash": "abc"}
    rules = [{"rule": "no_improvement", "fired_at": iterations_done}] if rule_fired else []
    state = {"phases": {"evolve": {"cd": {"iterations": iterations_done, "done": True},
                                   "ttr": {"iterations": 35, "done": True}},
                        "select": {"candidates": {"cd": {}}, "runs": {"cd": {"stopping_rules": rules}}}},
             "starts": [{"code_hash": h} for h in code_hashes]}
    return prereg, state, validation


def _render(**kwargs) -> str:
    from harness.campaign.report import render_report

    prereg, state, validation = _report_inputs(**kwargs)
    return render_report(prereg, state, validation, [], "abc", Path("."))


def test_the_report_keeps_a_verdict_where_only_the_design_s_own_rules_acted():
    md = _render(iterations_done=20, rule_fired=True)
    assert "followed its pre-registered plan" in md and "Exploratory" not in md
    assert "cd: evolution stopped after 20 of 35 iterations by the design's stopping rule" in md
    assert "ttr: no valid program other than the seed" in md
    assert "| **strong** |" in md and "- **cd**: STRONG:" in md


@pytest.mark.parametrize("case,departure", [
    (dict(iterations_done=20), "cd: evolution stopped after 20 of 35 iterations, and the design's stopping rule"),
    (dict(code_hashes=("abc", "def")), "the harness code changed during the campaign"),
])
def test_a_departure_from_the_design_takes_every_verdict_away(case, departure):
    md = _render(**case)
    assert "**Exploratory: the campaign departs from the design or from its plan**" in md and departure in md
    assert "| **exploratory** |" in md and "strong" not in md.lower().replace("stopping", "")


# ----------------------------------------------------------------------------------------------------------
# Resumable: SIGKILL in the middle of the validation, the same command again


def _campaign_command(out: Path) -> list[str]:
    return HARNESS + ["campaign", "--frameworks", "ttr", "--profile", PROFILE, "--iterations", "1", "--seeds", "2",
                      "--trials", "0", "--jobs", "2", "--progress-every", "2", "--out", str(out)]


def _report_body(path: Path) -> str:
    """The final report without what legitimately differs between two runs: the wall times."""
    text = path.read_text()
    return text.split("## Timing")[0]


def test_campaign_resumes_after_sigkill_without_repeating_finished_work(smoke_env, tmp_path):
    env = {**os.environ, "HARNESS_SLOTS": "cpu,cpu"}
    out = tmp_path / "campaign"
    jobs = out / "validation" / "jobs"
    started = time.time()
    first = subprocess.Popen(_campaign_command(out), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    try:
        while not any(jobs.glob("*.json")):  # the validation has finished its first training job
            assert first.poll() is None, first.stdout.read()[-3000:]
            assert time.time() - started < 600, "the campaign did not reach its validation in 10 minutes"
            time.sleep(0.2)
        os.kill(first.pid, signal.SIGKILL)  # the campaign process alone: what it started must die with it
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    log_before = first.stdout.read()
    assert "[campaign] phase validate" in log_before and "[evolve] ttr: done at iteration 1" in log_before
    assert re.search(r"\[evolve\] ttr \d/1", log_before)  # progress lines while evolving
    state = json.loads((out / "campaign.json").read_text())
    assert state["phases"]["evolve"]["done"] and not state["phases"].get("validate", {}).get("done")
    time.sleep(2)  # a sandbox that outlived the kill would go on writing its job here
    cached_before = {p.name: p.read_bytes() for p in jobs.glob("*.json")}
    rows_before = len(ledger_mod.evaluations(out / "ledger.sqlite"))

    second = subprocess.run(_campaign_command(out), env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming" in second.stdout and "phases done: evolve, select" in second.stdout
    assert "[evolve]" not in second.stdout  # the evolution was not run again
    assert "the evaluator's result, cached" in second.stdout  # nor the candidate's evaluation
    assert len(ledger_mod.evaluations(out / "ledger.sqlite")) == rows_before
    assert second.stdout.count(", cached)") == len(cached_before)  # finished jobs taken from the cache ...
    assert {p.name: p.read_bytes() for p in jobs.glob("*.json") if p.name in cached_before} == cached_before
    assert len(list(jobs.glob("*.json"))) == 4  # ... and only the missing ones trained: 2 seeds x 2 sides
    resumed = _report_body(out / "report.md")
    assert "## Verdict per framework" in resumed and "| ttr |" in resumed
    assert "Exploratory" in resumed  # smoke, 2 seeds, no tuning: not the design
    state = json.loads((out / "campaign.json").read_text())
    assert len(state["starts"]) == 2 and all(state["phases"][p]["done"] for p in ("evolve", "select", "validate"))

    # The jobs that finished before the kill, trained again by an uninterrupted validation, give the same report:
    # what was cached is what an uninterrupted run computes (the jobs trained after the resume are kept, and the
    # candidate's evaluation too: it is the evaluator's, checked above not to be repeated).
    for phase in ("validate", "report"):
        state["phases"].pop(phase)
    (out / "campaign.json").write_text(json.dumps(state))
    for name in cached_before:
        (jobs / name).unlink()
    third = subprocess.run(_campaign_command(out), env=env, capture_output=True, text=True, timeout=900)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert third.stdout.count(", cached)") == 4 - len(cached_before)
    assert _report_body(out / "report.md") == resumed

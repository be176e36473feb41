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
from types import SimpleNamespace

import numpy as np
import pytest

from harness.campaign import plan
from harness.campaign.commands import check_endpoint, parse_frameworks
from harness.trusted import ledger as ledger_mod
from harness.trusted.frameworks import FRAMEWORKS
from harness.trusted.profiles import ConfigError, get_profile
from processes import all_gone, running
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
    assert "2 evolution iteration(s) per framework instead of 35" in loaded["protocol_deviations"]
    assert "framework(s) cd, mm not evolved: H2 compares 1 of 3" in loaded["protocol_deviations"]
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
    return render_report(prereg, state, validation, [], Path("."))


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


def test_the_design_s_evolution_is_35_iterations_of_all_three_frameworks():
    from harness.validation import protocol

    full = dict(profile="full", profile_digest=get_profile("full").digest(), seeds=tuple(protocol.SEEDS), trials=100)
    design = plan.build(_settings(frameworks=("cd", "ttr", "mm"), iterations=35, **full), get_profile("full"), "abc",
                        {})
    assert design["protocol_deviations"] == []
    short = plan.build(_settings(frameworks=("cd", "ttr", "mm"), iterations=5, **full), get_profile("full"), "abc", {})
    assert short["protocol_deviations"] == ["5 evolution iteration(s) per framework instead of 35"]


def test_an_evolution_a_resume_ran_past_the_stopping_rule_is_a_departure():
    prereg, state, _ = _report_inputs()
    state["phases"]["evolve"]["cd"].update(resumed_after=[12])
    state["phases"]["select"]["runs"]["cd"]["stopping_rules"] = [{"rule": "no_improvement", "fired_at": 20}]
    from harness.campaign.report import departures

    assert departures(prereg, state) == [
        "cd: evolution ran on to iteration 35, past iteration 20 where the design's rule (a) stops it, because "
        "resuming after iteration 12 restarted OpenEvolve's count"]
    state["phases"]["evolve"]["cd"].update(resumed_after=[25])  # resumed after the rule fired: no restart of it
    assert departures(prereg, state) == []


def test_an_early_stop_openevolve_logged_is_the_design_s_rule_even_where_the_replay_differs():
    """With parallel workers OpenEvolve counts in the order iterations finish, the replay in iteration order."""
    md = _render(iterations_done=20)
    assert "Exploratory" in md
    prereg, state, validation = _report_inputs(iterations_done=20)
    state["phases"]["evolve"]["cd"]["stopped_at"] = 20
    from harness.campaign.report import render_report

    md = render_report(prereg, state, validation, [], Path("."))
    assert "Exploratory" not in md and "cd: evolution stopped after 20 of 35 iterations by the design's stopping" in md


def test_a_framework_scored_under_several_fingerprints_is_a_departure_and_a_flagged_candidate_is_marked():
    from harness.campaign.report import render_report

    prereg, state, validation = _report_inputs()
    state["phases"]["select"]["unranked"] = {"ttr": "programs from 2 fingerprint groups (['a', 'b']) cannot be "
                                                    "ranked together; choose one with --fingerprint"}
    state["phases"]["select"]["candidates"]["cd"] = {"flags": "implausible_loss: 2.2 is more than 25% below 3.0"}
    state["phases"]["select"]["runs"]["cd"]["best"] = {"fpA0000000000000": 1.1, "fpB1111111111111": 1.45}
    md = render_report(prereg, state, validation, [], Path("."))
    assert "> - ttr: programs from 2 fingerprint groups" in md and "ttr: no valid program other than" not in md
    assert "| `cd-x` **FLAGGED** |" in md and "cd: the candidate selected was FLAGGED by the evaluator" in md
    assert "| 1.1000 (`fpA00000`); 1.4500 (`fpB11111`) |" in md


def test_an_evolution_is_resumed_only_while_its_stopping_rule_has_not_fired(tmp_path, monkeypatch):
    import harness.proposer.demo as demo
    from harness.campaign.runner import Campaign
    from test_analyze import DB, SEED, variant

    out = tmp_path / "campaign"
    run = DB(out / "runs" / "ttr")
    run.root.mkdir(parents=True)
    run.ledger = out / "ledger.sqlite"
    run.add("root", SEED, iteration=0, score=1.0)
    run.add("p1", variant(1), "root", 1, score=1.1)
    for i in range(2, 9):
        run.add(f"p{i}", variant(i), "p1", i, score=1.05)
    run.write(8, [])  # killed at iteration 8: seven without improvement, the rule has not fired
    started = []

    def evolve(fw, iterations, **kwargs):
        started.append((iterations, kwargs["checkpoint"].name))
        for i in range(9, 13):  # iterations 9-12 improve on nothing either: the rule fires at 11
            run.add(f"p{i}", variant(i), "p1", i, score=1.05)
        run.write(12, [])
        return SimpleNamespace(returncode=0, timed_out=False)

    monkeypatch.setattr(demo, "run_with_builtin_proposer", evolve)
    campaign = Campaign(_settings(iterations=35), get_profile("smoke"), out, log=lambda m: None)
    campaign._load_state()
    campaign._evolve({})
    assert started == [(27, "checkpoint_8")]
    assert campaign.state["phases"]["evolve"]["ttr"]["resumed_after"] == [8]
    # Killed again; by now the rule has fired (at 11): the next start does not resume it, OpenEvolve counting afresh.
    del campaign.state["phases"]["evolve"]["ttr"]["done"]
    monkeypatch.setattr(demo, "run_with_builtin_proposer", lambda *a, **k: pytest.fail("resumed past the rule"))
    campaign._evolve({})
    entry = campaign.state["phases"]["evolve"]["ttr"]
    assert entry["done"] and entry["stopped_at"] == 11 and entry["iterations"] == 12


def test_a_start_that_only_renders_the_report_again_changes_no_verdict():
    """After ``harness validate --interpret`` the same command renders the report again, perhaps with newer code:
    that start computed nothing, so its code is no departure."""
    prereg, state, validation = _report_inputs()
    state["starts"] = [{"code_hash": "abc", "phases": ["evolve", "select", "validate", "report"]},
                       {"code_hash": "def", "phases": ["report"]}]
    from harness.campaign.report import departures

    assert departures(prereg, state) == []
    state["starts"][-1]["phases"] = ["validate", "report"]
    assert departures(prereg, state)[0].startswith("the harness code changed during the campaign")


def test_a_campaign_s_openevolve_config_changed_since_its_plan_is_refused_and_a_lost_one_restored(tmp_path):
    from harness.campaign.runner import Campaign

    campaign = Campaign(_settings(), get_profile("smoke"), tmp_path, log=lambda m: None)
    prereg = campaign._preregister()
    config = tmp_path / "configs" / "ttr.yaml"
    assert config.read_text() == prereg["configs"]["ttr"]["text"]
    config.unlink()
    campaign._preregister()
    assert config.read_text() == prereg["configs"]["ttr"]["text"]
    config.write_text(config.read_text().replace("max_iterations: 2", "max_iterations: 3"))
    with pytest.raises(ConfigError, match="ttr.yaml changed since the pre-registration"):
        campaign._preregister()


def test_openevolve_run_dies_with_the_process_that_started_it(tmp_path):
    """A kill -9 of the campaign (or of harness demo) takes its openevolve-run, which would otherwise go on in its
    own session, proposing into a dead proposer and writing checkpoints a resume would then believe."""
    pid_file = tmp_path / "openevolve-run.pid"
    starter = tmp_path / "starter.py"
    starter.write_text(
        "import sys\nfrom pathlib import Path\nimport harness.proposer.demo as demo\n"
        f"demo._openevolve_command = lambda: [sys.executable, '-c', \"import os, time; "
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)\"]\n"
        f"demo.run_openevolve('ttr', 5, output_dir=Path({str(tmp_path / 'run')!r}), api_base='http://127.0.0.1:9/v1', "
        "model='m', timeout_s=600)\n")
    (tmp_path / "run").mkdir()
    parent = subprocess.Popen([sys.executable, str(starter)], env={**os.environ, "HARNESS_LEDGER": str(tmp_path / "l")})
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        assert parent.poll() is None
        time.sleep(0.1)
    child = int(pid_file.read_text())
    assert running(child)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    assert all_gone([child], timeout_s=10)


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


def test_progress_counts_a_finished_framework_as_done_and_its_eta_waits_for_the_longest(monkeypatch):
    from harness.campaign import progress

    # 60 s per iteration; cd stopped early at 12 of 35 (finished), ttr at 5 of 35 and running alone on 2 slots.
    rows = [{"framework": fw, "created_at": 1000.0 + 60 * i, "combined_score": 1.0}
            for fw, n in (("cd", 13), ("ttr", 6)) for i in range(n)]
    monkeypatch.setattr(progress.ledger_mod, "evaluations", lambda path: rows)
    monkeypatch.setattr(progress, "slots_in_use", lambda: 1)
    line = progress.evolution_status(["cd", "ttr"], 35, {}, "ledger", 0.0, {"ttr"}, 2, {"cd"})
    assert "cd 12/35 best 1.0000 (done)" in line and "ttr 5/35 best 1.0000 (running)" in line
    assert line.endswith("ETA 30.0 min")  # ttr's 30 iterations, one at a time: not 15 min over two slots
    # Validation resumed with 4 jobs cached: the ETA is paced by the jobs this start trained, 2 in 100 s.
    monkeypatch.setattr(progress.time, "time", lambda: 1100.0)
    assert progress.validation_status(6, 10, 1000.0, done_before=4).endswith("ETA 3.3 min")

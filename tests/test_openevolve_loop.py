"""The stock loop end to end: the real ``openevolve-run`` CLI in a subprocess, the built-in proposer on
localhost, the real evaluator, the smoke-short profile. For ttr: 5 iterations (the configs' checkpoint_interval, so
checkpoint_5 is the final state) with an adversarial proposal every 2nd request, then a resumed run of 5 more
from checkpoint_5 in which every request is adversarial (the three kinds in turn). For cd and mm, the users'
command with their own evaluator and config: 2 iterations, one child that trains and one adversarial. The
checkpoints, the resume and the analysis are the loop's and the same code for every framework, so ttr's runs
prove them once. Rejections cost seconds, evaluations that train ~10 s each, and the whole must fit in 10 minutes.

What it proves: checkpoints and ledger rows are written; a child program (not the seed) is valid with a
positive score; each adversarial proposal that reached the evaluator was rejected with its expected
reason code (the proposer's JSONL log is joined to the ledger on the program hash); no evaluation ran
past the profile's hard limit; nothing is written outside the output folder and the ledger's folder;
the resumed run continues (last_iteration grows, new ledger rows, the proposal numbering continues);
``harness analyze`` accounts for every iteration of the two runs and every program they evaluated.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from harness.analysis.report import analyze
from harness.trusted import ledger
from harness.trusted import program
from harness.trusted.frameworks import FRAMEWORKS, REPO_ROOT
from harness.trusted.profiles import get_profile
from harness.proposer.demo import DemoRun, run_demo
from security import PROFILE

pytestmark = pytest.mark.slow

ITERATIONS = 5  # = checkpoint_interval of the configs: the final state is checkpointed
ADVERSARIAL_EVERY = 2  # requests 2 and 4: leak, frozen; the rest are structured mutations that train
RESUMED_ADVERSARIAL_EVERY = 1  # requests 6-10 on resume: params, leak, frozen, params, leak
RUN_TIMEOUT_S = 900  # a backstop for a stuck run; the time budget is asserted separately below
TOTAL_BUDGET_S = 600  # ttr fresh and resumed, cd and mm briefly, on the 2-core CI machine
KILL_SLACK_S = 10.0
# Checkpoints and resuming are the same code for every framework: one framework's runs prove them, and the three
# kinds of adversarial proposal its resumed run sends go through the same gate for all three.
RESUMED_FRAMEWORK = "ttr"
OTHER_ITERATIONS = 2  # cd and mm: request 1 a structured mutation that trains, request 2 adversarial
TIMINGS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def loop_env():
    """One data cache and one ledger for the three frameworks, in a private temporary folder (not under
    pytest's shared basetemp, which a concurrent pytest session on the same machine may rotate away
    during these long runs). Kept when HARNESS_KEEP_TMP is set."""
    root = Path(tempfile.mkdtemp(prefix="harness-openevolve-loop-"))
    env = {
        "HARNESS_PROFILE": PROFILE,
        "HARNESS_CACHE": str(root / "cache"),
        "HARNESS_LEDGER": str(root / "ledger" / "ledger.sqlite"),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "OPENAI_API_KEY": "local",
    }
    saved = {k: os.environ.get(k) for k in [*env, "HARNESS_OBJECTIVE", "HARNESS_DATA"]}
    for key in ("HARNESS_OBJECTIVE", "HARNESS_DATA"):
        os.environ.pop(key, None)
    os.environ.update(env)
    yield root, env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if not os.environ.get("HARNESS_KEEP_TMP"):
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"\nkept {root}")


def _checkpoint(run: DemoRun, iteration: int) -> Path:
    path = run.output_dir / "checkpoints" / f"checkpoint_{iteration}"
    assert (path / "metadata.json").exists(), f"no {path.name}; log tail:\n{_tail(run)}"
    return path


def _tail(run: DemoRun, chars: int = 4000) -> str:
    return run.log_path.read_text(errors="replace")[-chars:] if run.log_path.exists() else ""


def _programs(checkpoint: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((checkpoint / "programs").glob("*.json"))]


def _proposals(run: DemoRun) -> list[dict]:
    return [json.loads(line) for line in run.proposals_path.read_text().splitlines()]


def _rows(run: DemoRun, framework: str, since: float) -> list[dict]:
    return [r for r in ledger.evaluations(run.ledger_path, framework) if r["created_at"] >= since]


def _check_rows(rows: list[dict], run: DemoRun) -> None:
    """The hard limit held: the sandbox is killed at hard_limit_s, and the row's wall time adds only
    the static checks and the kill (KILL_SLACK_S). On an idle machine every smoke evaluation takes
    well under a minute; a ``timeout`` row only appears when the machine is heavily oversubscribed."""
    hard_limit = get_profile(PROFILE).hard_limit_s
    assert rows, f"no ledger rows; log tail:\n{_tail(run)}"
    for r in rows:
        assert r["wall_s"] < hard_limit + KILL_SLACK_S, (r["reason"], r["wall_s"])
        assert r["reason"] != "infrastructure", r["message"]
        assert Path(r["code_path"]).is_relative_to(run.ledger_path.parent)


def _check_adversarial(proposals: list[dict], rows: list[dict]) -> list[str]:
    """Join the proposer's log to the ledger on the program hash: every adversarial child that was
    evaluated got its expected reason. Returns the kinds that were checked."""
    by_hash: dict[str, set[str]] = {}
    for r in rows:
        by_hash.setdefault(r["program_hash"], set()).add(r["reason"])
    checked = []
    for p in proposals:
        if not p["adversarial"] or p["child_sha256"] not in by_hash:
            continue
        assert by_hash[p["child_sha256"]] == {p["expected_reason"]}, p
        checked.append(p["kind"])
    return checked


def _fresh_run(loop_env, framework: str, iterations: int) -> tuple[DemoRun, float, float]:
    """A fresh run of ``iterations`` with an adversarial proposal every ``ADVERSARIAL_EVERY``th request, checked
    to have ended by itself with exit code 0: (the run, its start time, its wall seconds)."""
    root, env = loop_env
    t0 = time.time()
    run = run_demo(framework, iterations, root / f"demo-{framework}", adversarial_every=ADVERSARIAL_EVERY, seed=0,
                   extra_env=env, timeout_s=RUN_TIMEOUT_S)
    assert not run.timed_out and run.returncode == 0, _tail(run)
    return run, t0, time.time() - t0


@pytest.mark.parametrize("framework", ["cd", "mm"])
def test_stock_openevolve_run_evaluates_each_framework(loop_env, framework):
    """The users' command for this framework, ``openevolve-run initial_programs/<fw>.py evaluators/<fw>_eval.py
    --config openevolve_configs/<fw>.yaml``: the seed, a child that trains and is valid, an adversarial child
    rejected with its reason; all in the ledger, nothing written elsewhere."""
    artifacts_before = (REPO_ROOT / "artifacts").exists()
    run, t0, fresh_s = _fresh_run(loop_env, framework, OTHER_ITERATIONS)
    assert run.best_program.exists()
    rows = _rows(run, framework, t0)
    _check_rows(rows, run)
    seed_hash = program.sha256(FRAMEWORKS[framework].seed_source())
    assert [(r["program_hash"], r["reason"]) for r in rows if r["program_hash"] == seed_hash] == [(seed_hash, "ok")]
    structured, adversarial = _proposals(run)
    assert [structured["request"], adversarial["request"]] == [1, 2] and adversarial["adversarial"]
    (child,) = [r for r in rows if r["program_hash"] == structured["child_sha256"]]
    assert child["program_hash"] != seed_hash and child["reason"] == "ok" and child["combined_score"] > 0, child
    assert _check_adversarial([adversarial], rows) == [adversarial["kind"]]
    assert (REPO_ROOT / "artifacts").exists() == artifacts_before
    assert all(program.sha256(Path(r["code_path"]).read_text()) == r["program_hash"] for r in rows)
    TIMINGS[framework] = {"fresh_s": fresh_s}


def test_stock_openevolve_run_end_to_end(loop_env):
    framework = RESUMED_FRAMEWORK
    root, env = loop_env
    output = root / f"demo-{framework}"
    artifacts_before = (REPO_ROOT / "artifacts").exists()

    # ---- a fresh run --------------------------------------------------------------------------------------------
    run, t0, fresh_s = _fresh_run(loop_env, framework, ITERATIONS)
    assert run.ledger_path == Path(env["HARNESS_LEDGER"])
    ckpt = _checkpoint(run, ITERATIONS)
    assert json.loads((ckpt / "metadata.json").read_text())["last_iteration"] == ITERATIONS
    assert run.best_program.exists()
    programs = _programs(ckpt)
    initial = [p for p in programs if p["parent_id"] is None]
    children = [p for p in programs if p["parent_id"] is not None]
    assert len(initial) == 1 and initial[0]["code"] == FRAMEWORKS[framework].seed_source()
    valid_children = [p for p in children if p["metrics"].get("valid") == 1.0 and p["metrics"]["combined_score"] > 0
                      and p["code"] != initial[0]["code"]]
    assert valid_children, [(p["metrics"].get("combined_score"), p["metadata"].get("changes", "")[:80]) for p in children]
    # The evaluator's artifacts travel with each program: rejected children carry their reason code.
    reasons = {json.loads(p["artifacts_json"])["reason"] for p in programs if p.get("artifacts_json")}
    assert "ok" in reasons

    rows = _rows(run, framework, t0)
    _check_rows(rows, run)
    proposals = _proposals(run)
    assert [p["request"] for p in proposals] == list(range(1, len(proposals) + 1))
    assert len(proposals) == ITERATIONS and all(p["framework"] == framework for p in proposals)
    assert sum(p["adversarial"] for p in proposals) == ITERATIONS // ADVERSARIAL_EVERY
    checked = _check_adversarial(proposals, rows)
    assert checked, "no adversarial proposal reached the evaluator"
    # Every proposal produced a program that was evaluated (OpenEvolve applied every diff).
    hashes = {r["program_hash"] for r in rows}
    assert all(p["child_sha256"] in hashes for p in proposals), (proposals, hashes)

    # ---- resumed from the last checkpoint --------------------------------------------------------------------------
    t1 = time.time()
    resumed = run_demo(framework, ITERATIONS, output, adversarial_every=RESUMED_ADVERSARIAL_EVERY, seed=0,
                       extra_env=env, checkpoint=ckpt, timeout_s=RUN_TIMEOUT_S)
    resume_s = time.time() - t1
    assert not resumed.timed_out and resumed.returncode == 0, _tail(resumed)
    ckpt2 = _checkpoint(resumed, 2 * ITERATIONS)
    assert json.loads((ckpt2 / "metadata.json").read_text())["last_iteration"] == 2 * ITERATIONS
    assert len(_programs(ckpt2)) > len(programs)
    new_rows = _rows(resumed, framework, t1)
    _check_rows(new_rows, resumed)
    assert len(new_rows) == ITERATIONS  # the seed is not evaluated again on resume
    more = _proposals(resumed)[len(proposals):]
    assert [p["request"] for p in more] == list(range(ITERATIONS + 1, 2 * ITERATIONS + 1))
    assert all(p["adversarial"] for p in more)
    assert [p["kind"] for p in more] == ["params", "leak", "frozen", "params", "leak"]  # the cycle continues
    checked += _check_adversarial(more, new_rows)
    assert set(checked) == {"leak", "frozen", "params"}, checked

    # Nothing written outside the output folder and the ledger's folder.
    assert (REPO_ROOT / "artifacts").exists() == artifacts_before
    for r in rows + new_rows:
        assert program.sha256(Path(r["code_path"]).read_text()) == r["program_hash"]

    _check_analysis(framework, resumed, proposals + more, root / f"analysis-{framework}")

    TIMINGS[framework] = {"fresh_s": fresh_s, "resume_s": resume_s}
    print(f"\n{framework}: fresh run {fresh_s:.0f} s ({len(rows)} evaluations: "
          f"{sorted(r['reason'] for r in rows)}), resumed run {resume_s:.0f} s "
          f"({sorted(r['reason'] for r in new_rows)})")


def _check_analysis(framework: str, run: DemoRun, proposals: list[dict], out: Path) -> None:
    """``harness analyze`` of the real run (fresh, then resumed, in one output folder)."""
    result = analyze([run.output_dir], ledger_path=run.ledger_path, out_dir=out)
    (summary,) = result["runs"]
    assert summary["checkpoint"].endswith(f"checkpoint_{2 * ITERATIONS}") and summary["framework"] == framework
    # Every program the run evaluated is in the ledger with its fingerprint: nothing unverifiable.
    assert summary["programs"] >= 2 and summary["unverifiable"] == []
    (group,) = summary["fingerprint_groups"]
    assert summary["groups"][group["id"]]["best"] is not None
    # Every iteration of both runs is accounted for: a program in the database or a failure in the logs.
    assert summary["validity"]["iterations_seen"] == 2 * ITERATIONS, summary["validity"]
    assert summary["validity"]["valid"] >= 1
    expected = {p["expected_reason"] for p in proposals if p["adversarial"]}
    assert expected and expected <= set(summary["reasons"]), (expected, summary["reasons"])
    report = (out / "report.md").read_text()
    for heading in ("### Fitness against iteration", "### Validity and rejections", "### Lineage",
                    "### The best program against its seed", "### Re-introduced code",
                    "### Does early training predict the final objective?"):
        assert heading in report


def test_three_frameworks_fit_the_budget():
    if len(TIMINGS) < 3:
        pytest.skip("needs the three end-to-end runs of this module")
    total = sum(t["fresh_s"] + t.get("resume_s", 0.0) for t in TIMINGS.values())
    load = os.getloadavg()
    print(f"\nend to end, {RESUMED_FRAMEWORK} fresh and resumed, the other two briefly: {total:.0f} s  {TIMINGS} "
          f"(load average {load})")
    assert total < TOTAL_BUDGET_S, f"{total:.0f} s on {os.cpu_count()} cores, load average {load}"


def _processes_in(folder: Path) -> list[int]:
    """Processes whose working directory is folder (openevolve-run, its workers and their sandboxes)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if Path(os.readlink(f"/proc/{entry.name}/cwd")) == folder:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_run_past_its_timeout_is_killed_with_its_sandboxes(loop_env):
    root, env = loop_env
    output = (root / "killed").resolve()
    started = time.time()
    # 8 s: openevolve-run is up and its main process is preparing the evaluator in a sandbox subprocess.
    run = run_demo("mm", 5, output, extra_env=_killed_run_env(root, env), timeout_s=8)
    assert run.timed_out and run.returncode != 0
    assert time.time() - started < 40
    time.sleep(1)
    assert _processes_in(output) == []
    assert "killed after 8 s" in run.log_path.read_text()


def _killed_run_env(root: Path, env: dict) -> dict:
    """A run killed mid-evaluation leaves OpenEvolve's temporary copy of the program behind (it deletes it only when
    the evaluation returns): keep it in the test's own folder, not in the machine's /tmp."""
    (root / "tmp").mkdir(exist_ok=True)
    return {**env, "TMPDIR": str(root / "tmp")}


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ")
    except OSError:
        return ""


def test_killing_openevolve_run_takes_its_workers_and_their_sandboxes(loop_env):
    """After ``kill -9`` of openevolve-run, its worker processes used to live on as orphans that ignore SIGTERM; a
    worker now asks the kernel to kill it with openevolve-run as soon as it loads the evaluator, and the sandbox it
    started dies with it."""
    import signal
    import threading

    from processes import all_gone, children

    root, env = loop_env
    output = (root / "sigkilled").resolve()
    result = {}
    thread = threading.Thread(target=lambda: result.update(run=run_demo("ttr", 5, output,
                                                                          extra_env=_killed_run_env(root, env),
                                                                          timeout_s=300)))
    thread.start()
    deadline, main, busy = time.time() + 240, None, []
    while time.time() < deadline and not busy:  # until a worker (not the main process's own launcher) evaluates
        main = next((p for p in _processes_in(output) if p in children(os.getpid())), None)
        workers = [w for w in (children(main) if main else []) if "harness.trusted.confine" not in _cmdline(w)]
        busy = [w for w in workers if any("harness.trusted.confine" in _cmdline(c) for c in children(w))]
        time.sleep(0.2)
    assert busy, _tail(result["run"]) if "run" in result else "openevolve-run never had a worker evaluating"
    launchers = [c for w in busy for c in children(w)]
    descendants = busy + launchers + [c for launcher in launchers for c in children(launcher)]
    os.kill(main, signal.SIGKILL)
    thread.join(timeout=60)
    assert result["run"].returncode == -signal.SIGKILL
    assert all_gone(descendants, timeout_s=15), {p: _cmdline(p)[:120] for p in descendants}
    time.sleep(1)
    assert _processes_in(output) == []

"""The ``ray`` executor on a real local Ray cluster (head on loopback, 2 CPUs, smoke-short profile): the same verdicts
and scores as ``local``, a worker killed mid-evaluation retried and recorded once, per-hardware baselines, and
``harness validate`` training seeds concurrently on the cluster."""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import adversarial
from processes import all_gone, children
from harness.trusted import confine, ledger, seccomp
from harness.trusted import program
from harness.trusted.evaluate import evaluate, prepare
from harness.trusted.frameworks import FRAMEWORKS
from harness.trusted.profiles import get_profile

pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
pytestmark = pytest.mark.ray

CLUSTER_START_LIMIT_S = 90.0
# Cases that cover each path through the sandbox: trained and scored, refused by the dynamic gate, crashed in
# the candidate's own code, refused statically before any executor is involved.
COMPARED = ("decayed_linear_attention", "no_causal_mask", "raises_in_forward", "imports_os")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(smoke_env, tmp_path_factory):
    """A Ray head on loopback with 2 CPUs, token authentication on, started from this environment (so its
    workers share the smoke data cache), and stopped with everything it started."""
    port = _free_port()
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_ADDRESS": f"127.0.0.1:{port}",
           # Four tasks at once on two cores: the tests that send several at once never wait for a CPU.
           "HARNESS_RAY_CPUS": "0.5", "HARNESS_EXECUTOR": "local"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    log_path = tmp_path_factory.mktemp("ray") / "head.log"
    ray_bin = str(Path(sys.executable).with_name("ray"))
    with open(log_path, "wb") as log:
        head = subprocess.Popen(
            [ray_bin if os.path.exists(ray_bin) else "ray", "start", "--head", "--block", "--node-ip-address",
             "127.0.0.1", "--port", str(port), "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false",
             "--disable-usage-stats", "--object-store-memory", str(200 * 1024 * 1024)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + CLUSTER_START_LIMIT_S
        while b"Ray runtime started" not in log_path.read_bytes():
            assert head.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray head did not start:\n" + log_path.read_text()[-3000:]
            time.sleep(0.5)
        yield {"address": env["RAY_ADDRESS"], "log": log_path}
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    return path


def _local_row(source: str, fingerprint_id: str) -> dict | None:
    """The ledger's row of a local evaluation of exactly this code under this fingerprint (the evaluator
    tests of this session record them), so that each comparison trains the local side at most once."""
    digest = program.sha256(program.splice(FRAMEWORKS["ttr"].seed_source(), source)) if program.START in source \
        else program.sha256(source)
    rows = [r for r in ledger.evaluations(framework="ttr") if r["program_hash"] == digest
            and r["fingerprint_id"] == fingerprint_id and r["execution"].get("executor", "local") == "local"]
    return rows[-1] if rows else None


def _local_verdict(tmp_path: Path, name: str, source: str, fingerprint_id: str) -> tuple[str, float]:
    row = _local_row(source, fingerprint_id)
    if row is None:
        result = evaluate("ttr", str(_write(tmp_path, f"local_{name}", source)), executor_name="local")
        return result.artifacts["reason"], result.metrics["combined_score"]
    return row["reason"], row["combined_score"]


def _rows_for(source: str) -> list[dict]:
    digest = program.sha256(source)
    return [r for r in ledger.evaluations(framework="ttr") if r["program_hash"] == digest]


def test_ray_gives_the_local_verdicts_and_scores(ray_cluster, tmp_path):
    local_fp = prepare("ttr", executor_name="local")["fingerprint"]["id"]
    ray_fp = prepare("ttr", executor_name="ray")["fingerprint"]["id"]
    assert ray_fp == local_fp  # same machine, same software and data: the worker's hardware is this host's
    sources = {name: adversarial.BY_NAME[name].source for name in COMPARED}
    expected = {name: _local_verdict(tmp_path, name, src, local_fp) for name, src in sources.items()}
    with ThreadPoolExecutor(len(sources)) as pool:  # concurrently, as OpenEvolve's workers would
        results = dict(zip(sources, pool.map(
            lambda item: evaluate("ttr", str(_write(tmp_path, item[0], item[1])), executor_name="ray"),
            sources.items())))
    for name, result in results.items():
        reason, score = expected[name]
        assert (result.artifacts["reason"], result.metrics["combined_score"]) == (reason, score), \
            (name, result.artifacts.get("message"), result.artifacts.get("details", "")[-1000:])
        assert result.artifacts["reason"] == adversarial.BY_NAME[name].reason
        assert result.artifacts["fingerprint_id"] == local_fp
        row = next(r for r in ledger.evaluations() if r["id"] == int(result.artifacts["ledger_row"]))
        if name != "imports_os":  # refused statically: no sandbox ran anywhere
            assert row["execution"]["executor"] == "ray" and row["execution"]["attempts"] == 1
            assert row["execution"]["node_ip"] and row["execution"]["worker_pid"] > 0
            # The worker confines its sandbox as a local evaluation does (this cluster runs on this host).
            unavailable = confine.unavailable_reason()
            here = confine.device_layers()
            layers = confine.recorded(here.files, here.seccomp, here.root)
            assert row["execution"]["confinement"] == (f"none: {unavailable}" if unavailable else layers)
    assert results["decayed_linear_attention"].metrics["combined_score"] > 0.0


def test_the_trust_boundary_holds_on_ray_workers(ray_cluster, tmp_path, monkeypatch):
    """The cases that need more than the static policy, on a worker: a forward pass that reads the future only
    when scored, a training record forged past the static checks, and file access past them."""
    import security
    import test_scorer
    import test_security
    from harness.trusted.evaluate import sandbox_request
    from harness.trusted.executor import run_sandbox

    prepared = prepare("ttr", executor_name="ray")
    leak = evaluate("ttr", str(_write(tmp_path, "leak", test_scorer.LEAKS_WHEN_SCORED.source("unused", "UNUSED"))),
                    executor_name="ray")
    assert leak.artifacts["reason"] == "leak_after_training", leak.artifacts["message"]
    assert "ray" in leak.artifacts["execution"]

    request = sandbox_request("ttr", prepared["profile"], prepared["ledger"], source=security.SEED + test_scorer.FORGER)
    run = run_sandbox("evaluate", request, 180.0, 8192, executor="ray")
    assert run.outcome == "exited" and run.result["reason"] == "ok", run.log
    assert run.result["objective"]["runs"][0]["final_monitor_loss"] == 0.01, "the forger ran"
    assert run.result["objective"]["runs"][0]["final_val_loss"] == prepared["baseline"]["final_loss"]

    # A patch of torch made past the static checks, seen by the run-time snapshot on the worker.
    payload, name, stage = test_security.PATCHES["at_load"]
    request = sandbox_request("ttr", prepared["profile"], prepared["ledger"], source=security.SEED + "\n" + payload)
    run = run_sandbox("evaluate", request, 180.0, 8192, executor="ray")
    assert run.result["reason"] == "policy" and name in run.result["message"] and stage in run.result["message"]

    if confine.unavailable_reason() is not None:
        return
    # Past the static policy: what the OS layers stop, on a worker as on this host (tests/test_confinement.py).
    security.past_the_static_policy(monkeypatch)
    secret = tmp_path / "secret.txt"
    secret.write_text("sk-" + secrets.token_hex(8))
    attempts = {"signal_the_driver": (f"getattr(torch, 'o' + 's').kill({os.getpid()}, 9)", "No such process")}
    here = confine.device_layers()
    if here.files or here.root:  # not in the private root at all; else refused by Landlock
        attempts["read_a_planted_secret"] = (f"getattr(torch, 'o' + 's').open({str(secret)!r}, 0)",
                                             "No such file or directory" if here.root else "Permission denied")
    if confine.seccomp_supported():
        keyctl = seccomp.numbers()["keyctl"]
        attempts["read_the_keyring"] = (
            f"ct = getattr(torch, 'o' + 's').sys.modules['ctypes']; lib = ct.CDLL(None, use_errno=True); "
            f"(_ for _ in ()).throw(OSError(ct.get_errno(), 'refused')) if lib.syscall({keyctl}, 0, -4, 0) < 0 else 0",
            "refused")
    for name, (attempt, refusal) in attempts.items():
        attack = security.Attack("probe", "none", attempt)
        result = evaluate("ttr", str(_write(tmp_path, name, attack.source("unused", "UNUSED"))), executor_name="ray")
        assert result.artifacts["reason"] == "crash" and refusal in result.artifacts["message"], \
            (name, result.artifacts["message"])
        assert "ray" in result.artifacts["execution"]


def _sandbox_under_a_ray_worker(timeout_s: float = 60.0) -> tuple[int, int]:
    """(pid, its Ray worker's pid) for the one ``harness.sandbox evaluate`` the worker started: the sandbox itself,
    or, where the sandbox is confined, the launcher in front of it (its children are the sandbox's processes)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
                if b"harness.sandbox" not in cmd or b"evaluate" not in cmd:
                    continue
                status = Path(f"/proc/{entry.name}/status").read_text()
                ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
                if Path(f"/proc/{ppid}/cmdline").read_bytes().startswith(b"ray::"):
                    return int(entry.name), ppid
            except (OSError, StopIteration, ValueError):
                continue
        time.sleep(0.2)
    raise AssertionError("no sandbox started under a Ray worker")


def _evaluate_and_kill_its_worker(tmp_path: Path, name: str, source: str) -> tuple[object, list[int]]:
    """Start a ray evaluation, SIGKILL the Ray worker running its sandbox mid-gate; return the result and the pids
    the worker had started (the sandbox, or the launcher and the sandbox behind it)."""
    path = _write(tmp_path, name, source)
    box = {}
    thread = threading.Thread(target=lambda: box.update(result=evaluate("ttr", str(path), executor_name="ray")))
    thread.start()
    sandbox_pid, worker_pid = _sandbox_under_a_ray_worker()
    time.sleep(2.0)  # mid-evaluation: data loaded, gate running
    started = [sandbox_pid] + children(sandbox_pid)
    os.kill(worker_pid, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive()
    return box["result"], started


def test_a_worker_killed_mid_evaluation_is_retried_and_recorded_once(ray_cluster, tmp_path):
    # The seed plus a comment: a program no other test evaluates, so its ledger rows are this test's alone.
    source = FRAMEWORKS["ttr"].seed_source().replace(program.END, "# killed once\n" + program.END)
    fp = prepare("ttr", executor_name="local")["fingerprint"]["id"]
    rows_before = len(ledger.evaluations())
    result, started = _evaluate_and_kill_its_worker(tmp_path, "killed_once", source)
    assert all_gone(started), "the sandbox outlived its killed Ray worker"
    assert result.artifacts["reason"] == "ok", result.artifacts
    # The retried evaluation is the seed's: it reproduces the cached baseline exactly as a local run does.
    assert result.metrics["combined_score"] == pytest.approx(1.0, abs=1e-3)
    assert "attempt 2" in result.artifacts["execution"] and "WorkerCrashedError" in result.artifacts["execution"]
    rows = _rows_for(source)
    assert len(ledger.evaluations()) == rows_before + 1 and len(rows) == 1
    row = rows[0]
    assert row["reason"] == "ok" and row["fingerprint_id"] == fp
    assert row["execution"]["attempts"] == 2 and len(row["execution"]["lost"]) == 1
    assert row["execution"]["lost"][0].startswith("WorkerCrashedError")


def test_a_worker_lost_on_every_attempt_is_infrastructure_not_the_candidate(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_RAY_RETRIES", "0")
    source = FRAMEWORKS["ttr"].seed_source().replace(program.END, "# always lost\n" + program.END)
    result, started = _evaluate_and_kill_its_worker(tmp_path, "always_lost", source)
    assert all_gone(started)
    assert result.artifacts["reason"] == "infrastructure", result.artifacts
    assert result.metrics["combined_score"] == 0.0 and result.metrics["valid"] == 0.0
    assert "lost on all 1 attempts" in result.artifacts["message"]
    rows = _rows_for(source)
    assert len(rows) == 1 and rows[0]["verdict"] == "infrastructure" and rows[0]["execution"]["attempts"] == 1


def test_a_new_kind_of_worker_trains_its_own_baseline(ray_cluster, tmp_path):
    """A worker whose fingerprint has no baseline yet trains one there before the candidate; on one host the
    same situation means the environment changed, which is reported, never scored."""
    profile = get_profile()
    prepare("ttr", executor_name="local")  # this host's evaluator has prepared once, at its start
    fp = prepare("ttr", executor_name="ray")["fingerprint"]["id"]
    stored = ledger.baselines("ttr", profile.objective)[fp]
    conn = ledger.connect()
    try:  # the cluster has gained a kind of hardware no evaluation has run on yet
        conn.execute("DELETE FROM baselines WHERE fingerprint_id=? AND framework='ttr'", (fp,))
    finally:
        conn.close()
    try:
        source = FRAMEWORKS["ttr"].seed_source().replace(program.END, "# new worker kind\n" + program.END)
        local = evaluate("ttr", str(_write(tmp_path, "local_new_kind", source)), executor_name="local")
        assert local.artifacts["reason"] == "infrastructure" and "no baseline" in local.artifacts["message"]
        assert local.metrics["combined_score"] == 0.0
        result = evaluate("ttr", str(_write(tmp_path, "new_kind", source)), executor_name="ray")
        assert result.artifacts["reason"] == "ok", result.artifacts
        assert result.metrics["combined_score"] == pytest.approx(1.0, abs=1e-3)
        retrained = ledger.baselines("ttr", profile.objective)[fp]
        assert retrained["final_loss"] == pytest.approx(stored["final_loss"], abs=1e-3)
    finally:
        ledger.put_baseline(fp, "ttr", profile.objective, stored)  # no-op when the retrained one is there


def test_a_fresh_worker_prepares_the_data_before_it_evaluates_or_trains(ray_cluster, tmp_path):
    """A node that never prepared the data (its token cache has no record of the source) prepares it before the
    candidate's sandbox runs, instead of failing every evaluation, and every training job of `harness validate`, as
    infrastructure; on one host the same missing record is reported, never scored."""
    from harness.data import _prepared_pointer, default_cache_dir
    from harness.validation.jobs import TrainJob, run_training_job

    profile = get_profile()
    prepare("ttr", executor_name="local")  # this host's evaluator has prepared once, at its start
    fingerprint = prepare("ttr", executor_name="ray")["fingerprint"]["id"]
    pointer = _prepared_pointer(default_cache_dir(), profile.data_source, profile.synthetic_stories,
                                profile.vocab_size, profile.tokenizer_train_bytes)
    saved = pointer.read_bytes()
    pointer.unlink()  # what a fresh node's cache looks like to a sandbox that runs a program
    try:
        source = FRAMEWORKS["ttr"].seed_source().replace(program.END, "# fresh worker\n" + program.END)
        local = evaluate("ttr", str(_write(tmp_path, "local_fresh", source)), executor_name="local")
        assert local.artifacts["reason"] == "infrastructure", local.artifacts
        assert "never prepared on this host" in local.artifacts["message"]
        assert local.metrics["combined_score"] == 0.0 and not pointer.exists()
        result = evaluate("ttr", str(_write(tmp_path, "fresh", source)), executor_name="ray")
        assert result.artifacts["reason"] == "ok", result.artifacts
        assert result.metrics["combined_score"] == pytest.approx(1.0, abs=1e-3)
        assert pointer.read_bytes() == saved  # the worker's preparation recorded the same cache entry
        [row] = [r for r in ledger.evaluations(framework="ttr") if r["id"] == int(result.artifacts["ledger_row"])]
        assert row["execution"]["prepared"]["why"] == "no data", row["execution"]
        assert row["execution"]["prepared"]["baseline_computed"] is False  # the ledger had the baseline
        source = source.replace(program.END, "# again\n" + program.END)
        again = evaluate("ttr", str(_write(tmp_path, "prepared_now", source)), executor_name="ray")
        [row] = [r for r in ledger.evaluations(framework="ttr") if r["id"] == int(again.artifacts["ledger_row"])]
        assert again.artifacts["reason"] == "ok" and "prepared" not in row["execution"]  # once per node, not per task
        pointer.unlink()
        job = run_training_job(TrainJob("ttr", _write(tmp_path, "job", source), profile, 42, {}, "objective",
                                        fingerprint, profile.hard_limit_s, executor="ray"))
        assert job["ok"] and job["fingerprint_id"] == fingerprint, (job.get("reason"), job.get("message"))
        assert pointer.read_bytes() == saved
        # A training job needs the data only: objective requests carry no baselines, and none was trained.
        assert job["execution"]["prepared"] == {**job["execution"]["prepared"], "why": "no data",
                                                "baseline_computed": False}
    finally:
        if not pointer.exists():
            pointer.write_bytes(saved)


def test_a_result_that_claims_a_missing_baseline_earns_no_second_run(ray_cluster, tmp_path, monkeypatch):
    """Past the static policy, a program that writes its sandbox's result saying the worker has no baseline (what
    a sandbox says, before any program loads, on a new kind of worker) would have bought a run again, and so the
    better of two draws. The worker's preparation shows the claim false: tampering, and no second run."""
    import security
    from test_evaluator import _forger

    security.past_the_static_policy(monkeypatch)
    profile = get_profile()
    fp = prepare("ttr", executor_name="ray")["fingerprint"]
    baselines = ledger.baselines("ttr", profile.objective)
    claim = json.dumps({"reason": "infrastructure", "baseline_missing": True, "fingerprint": fp, "message": "none"})
    result = evaluate("ttr", str(_write(tmp_path, "claims_no_baseline", _forger(claim))), executor_name="ray")
    assert result.artifacts["reason"] == "tampering", result.artifacts
    assert "had one" in result.artifacts["message"] and result.metrics["combined_score"] == 0.0
    assert ledger.baselines("ttr", profile.objective) == baselines


def test_validate_trains_its_seeds_concurrently_on_the_cluster(ray_cluster, tmp_path):
    from harness.cli import main

    out = tmp_path / "validation"
    cand = _write(tmp_path, "ttr_decayed", adversarial.BY_NAME["decayed_linear_attention"].source)
    rc = main(["validate", "--program", str(cand), "--framework", "ttr", "--executor", "ray", "--seeds", "2",
               "--trials", "0", "--no-ladder", "--jobs", "2", "--hard-limit-s", "300", "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "validation.json").read_text())
    assert result["executor"] == "ray"
    (c,) = result["candidates"]
    assert "refused" not in c, c.get("refused")
    assert c["evaluation"]["reason"] == "ok"
    for side in ("baseline", "candidate"):
        runs = c["runs"][side]
        assert [r["seed"] for r in runs] == [42, 43] and all(r["ok"] for r in runs)
        assert all(r["execution"]["executor"] == "ray" and r["execution"]["node_ip"] for r in runs)
        # The seeds at once: every run started before any of them ended.
        assert max(r["execution"]["started_at"] for r in runs) < min(r["execution"]["ended_at"] for r in runs), side
    assert all(r["baseline_fp"] == r["candidate_fp"] == c["fingerprint_id"] for r in c["stats"]["seeds"])
    assert "executor: ray" in (out / "report.md").read_text()

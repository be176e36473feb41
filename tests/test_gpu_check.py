"""``harness gpu-check``: its CPU dry-run runs every stage end to end (so the GPU script cannot rot between the rare
sessions that have a GPU), a stage that overruns is recorded and the next one still runs, the headline arithmetic,
the confinement probe, and programs loaded by the sandbox can be traced by torch.compile."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from dataclasses import replace

import pytest
import torch

from processes import exit_handler_site
from harness import cli
from harness.diagnostics import confinement_probe
from harness.diagnostics import gpu_check
from harness.trusted import confine
from harness.trusted.frameworks import FRAMEWORKS
from harness.trusted.profiles import cuda_visible
from harness.sandbox.loader import load_attention
from harness.scaffold import build_model


@pytest.mark.slow
def test_dry_run_runs_every_stage_and_writes_the_record_and_summary(tmp_path, capsys):
    out = tmp_path / "gpu"
    assert cli.main(["gpu-check", "--dry-run", "--out", str(out), "--commit", "0123abc"]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.json", "log.txt", "summary.md"]
    record = json.loads((out / "gpu-check.json").read_text())
    assert record["commit"] == "0123abc" and record["plan"]["name"] == "dry-run"
    assert {name: s["status"] for name, s in record["stages"].items()} == {name: "ok" for name in gpu_check.STAGES}
    stages = {name: s["result"] for name, s in record["stages"].items()}

    env = stages["environment"]
    assert env["fingerprint"]["harness_code_hash"] and env["ceilings"]["copy_gb_per_s"] > 0
    assert env["ceilings"]["matmul_tflops"] > 0 and env["confinement"]["level"]

    # The launcher's check (on the CPU: starting Python) under the strongest combination of layers, traced.
    traced = stages["calltrace"]
    if confine.unavailable_reason("cpu"):
        assert not traced["built"] and "is not confined here" in traced["why"]
    elif shutil.which("cc") or shutil.which("gcc"):
        assert traced["built"] and len(traced["runs"]) == 1 and traced["runs"][0]["passed"]
        assert traced["runs"][0]["traced"]
    else:
        assert traced == {"built": False, "why": "no C compiler (cc or gcc) on this machine"}

    # No GPU here: the CUDA test was collected and skipped, with its reason.
    tests = stages["cuda_tests"]
    assert tests["skipped"] == 2 and tests["failed"] == 0
    assert all("needs CUDA" in t["message"] for t in tests["tests"])

    conc = stages["concurrent"]
    assert [r["rung"] for r in conc["rungs"]] == [[32, 2, 2], [48, 2, 2]] and conc["ok"]
    assert conc["extrapolated_horizon_s"] > conc["wall_s"] > conc["fixed_s"] > 0

    # Through the real evaluator: the seed scores at parity with its own baseline, the leak and the escape
    # attempt are rejected with their reasons, and the escape's side effects were looked for from outside.
    cases = {c["name"]: c for c in stages["evaluation"]["cases"]}
    assert cases["seed"]["reason"] == "ok" and cases["seed"]["combined_score"] == pytest.approx(1.0, abs=0.05)
    assert cases["adversarial_future_leak"]["reason"] == "causality"
    assert cases["adversarial_future_leak"]["combined_score"] == 0.0
    escape = cases["escape_secret_and_file"]
    assert escape["reason"] == "policy" and escape["combined_score"] == 0.0
    assert set(escape["escape"]) == {"file_written_outside_sandbox", "secret_read"}
    assert escape["escape"] == {"file_written_outside_sandbox": False, "secret_read": False}
    # Each case's training as the ledger recorded it: the seed trained its rung (smoke does not compile); the escape
    # never reached training.
    (seed_run,) = cases["seed"]["runs"]
    assert seed_run["rung"] == [48, 2, 2] and seed_run["compiled"] is False and seed_run["compile_mode"] is None
    assert seed_run["ms_per_step"] > 0 and escape["runs"] == []

    # The security stage ran its test through the evaluator (the dry-run picks one) and recorded the layers.
    security = stages["security"]
    assert security["profile"] == "smoke-short" and security["failed"] == 0
    assert [t["name"] for t in security["tests"]] == ["test_the_sandbox_has_no_network"]
    assert security["confinement"] == confine.layers_here("cpu")

    # MPS shares a GPU: on the CPU the stage says why it measured nothing.
    assert stages["concurrent_mps"] == {"mps": False, "why": "MPS shares a GPU between processes: there is nothing "
                                                            "to measure on the CPU"}

    bench = stages["bench"]
    assert bench["reference_rung"] == [48, 2, 2]
    assert ["reference" in r for r in bench["rungs"]] == [False, True]  # the eager loop at the reference rung only
    assert "reference_sequential_s" not in bench["projection"]
    trace = stages["trace"]
    assert trace["busy_ms_per_step"] > 0 and trace["top"] and trace["active_steps"] == 4

    head = record["headline"]
    assert head["speedup_vs_eager_at_reference_rung"] > 0 and head["projected_protocol_s"] > 0
    assert set(head["targets"]) == {"protocol_under_10_min", "at_least_40x_faster_than_7h", "engine_at_least_3x_eager"}
    summary = (out / "summary.md").read_text()
    assert summary in printed and "Dry run on the CPU" in summary and "escape_secret_and_file" in summary
    assert "- seed, rung (48, 2, 2): compiled **False** (None), first step" in summary
    assert "- MPS not measured: MPS shares a GPU between processes" in summary
    assert "## The device check in the launcher, its failed calls traced" in summary
    assert summary.count("Escape candidate's side effects, checked from outside") == 1
    for name in gpu_check.STAGES:
        assert f"| {name} | ok |" in summary


def test_a_stage_past_its_limit_is_recorded_and_the_next_stage_still_runs(tmp_path):
    plan = replace(gpu_check.DRY_RUN_PLAN, stage_limit_s={"environment": 1, "bench": 120})
    record = gpu_check.run_all(plan, tmp_path, stages=["environment", "bench"], echo=lambda *_: None)
    assert record["stages"]["environment"]["status"] == "timeout"
    assert record["stages"]["bench"]["status"] == "ok"
    summary = (tmp_path / "summary.md").read_text()
    assert "| environment | timeout |" in summary and "killed at its limit of 1 s" in summary
    assert json.loads((tmp_path / "gpu-check.json").read_text())["stages"]["bench"]["result"]["rungs"]


def test_a_stage_s_process_ends_without_the_interpreter_teardown_once_its_record_is_written(tmp_path):
    """On the GPU, torch's and CUDA's teardown at exit would be spent from the run's budget, stage after stage."""
    markers, path = exit_handler_site(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / "plan.json").write_text(gpu_check.DRY_RUN_PLAN.to_json())
    stage = subprocess.Popen([sys.executable, "-m", "harness.diagnostics.gpu_check", "--stage", "bench", "--work",
                              str(work)], env={**os.environ, "PYTHONPATH": path}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    assert stage.wait(timeout=300) == 0
    assert json.loads((work / "bench.json").read_text())["status"] == "ok"
    assert (markers / f"start-{stage.pid}").exists() and not (markers / f"exit-{stage.pid}").exists()


def test_stages_left_without_budget_are_skipped_not_started(tmp_path):
    record = gpu_check.run_all(gpu_check.DRY_RUN_PLAN, tmp_path, stages=["bench", "trace"], budget_s=5.0,
                               echo=lambda *_: None)
    assert [s["status"] for s in record["stages"].values()] == ["skipped", "skipped"]
    assert "of the 5 s budget left" in record["stages"]["trace"]["error"]


@pytest.mark.skipif(cuda_visible(), reason="checks the refusal on a machine without CUDA")
def test_the_gpu_run_refuses_a_machine_without_cuda(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "--dry-run" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def _bench_rows(ms: dict, reference_ms: float) -> list[dict]:
    rows = []
    for rung, value in ms.items():
        row = {"rung": list(rung), "fast": {"ms_per_step": value, "eval_s": 1.0}}
        if rung == (128, 4, 4):
            row["reference"] = {"ms_per_step": reference_ms}
            row["speedup_vs_reference"] = reference_ms / value
        rows.append(row)
    return rows


def test_headline_extrapolates_the_concurrent_run_and_checks_the_targets():
    assert gpu_check.extrapolate_concurrent_s(wall_s=130.0, fixed_s=30.0, steps=10_000, horizon_steps=100_000) \
        == pytest.approx(30.0 + 100.0 * 10)
    ms = {(96, 4, 4): 3.0, (128, 4, 4): 4.0, (128, 6, 4): 5.0, (192, 6, 6): 6.0}
    stages = {
        "concurrent": {"result": {"ok": True, "steps": 10_000, "horizon_steps": 100_000, "wall_s": 130.0,
                                  "fixed_s": 30.0, "extrapolated_horizon_s": 1030.0}},
        "bench": {"result": {"reference_rung": [128, 4, 4], "all_rungs": True, "rungs": _bench_rows(ms, 16.0),
                             "projection": {"sequential_s": 2000.0},
                             "compile_modes": {"reduce-overhead": [{"rung": [128, 4, 4], "ms_per_step": 4.0}]}}},
        "trace": {"result": {"rung": [128, 4, 4], "busy_ms_per_step": 2.0}},
    }
    head = gpu_check.headline(stages)
    assert head["projected_protocol_s"] == 1030.0 and head["sequential_protocol_s"] == 2000.0
    assert head["speedup_vs_eager_at_reference_rung"] == pytest.approx(4.0)
    assert head["speedup_vs_users_7h"] == pytest.approx(7 * 3600 / 1030.0)
    assert head["gpu_busy_share_at_reference_rung"] == pytest.approx(0.5)
    cvi = head["concurrent_vs_isolated_sum"]
    assert cvi["isolated_rungs_sum_s"] == pytest.approx(10_000 * 18.0 / 1000 + 4.0)
    assert cvi["steady_ratio"] == pytest.approx(100.0 / cvi["isolated_rungs_sum_s"])
    assert head["targets"] == {"protocol_under_10_min": False, "at_least_40x_faster_than_7h": False,
                               "engine_at_least_3x_eager": True}
    assert "eager_sequential_protocol_s" not in head  # the eager loop was not timed at every rung

    # Nothing measured: every target says so, none is claimed either way.
    assert gpu_check.headline({})["targets"] == {"protocol_under_10_min": None, "at_least_40x_faster_than_7h": None,
                                                 "engine_at_least_3x_eager": None}


FAKE_MPS_CONTROL = """#!/bin/sh
# Stands in for nvidia-cuda-mps-control: records how it was called, with which folders, and what it was told.
if [ "$1" = "-d" ]; then
    [ -n "$FAIL" ] && { echo "cannot start: $FAIL" >&2; exit 3; }
    echo "daemon pipe=$CUDA_MPS_PIPE_DIRECTORY log=$CUDA_MPS_LOG_DIRECTORY" >> "$CALLS"
    echo "Starting control daemon" >> "$CUDA_MPS_LOG_DIRECTORY/control.log"
else
    read -r line; echo "command pipe=$CUDA_MPS_PIPE_DIRECTORY: $line" >> "$CALLS"
fi
"""


@pytest.fixture
def fake_mps(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    control = bin_dir / gpu_check.MPS_CONTROL
    control.write_text(FAKE_MPS_CONTROL)
    control.chmod(0o755)
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("CALLS", str(calls))
    monkeypatch.setattr(gpu_check, "MPS_SEARCH_PATH", ())
    return calls


def test_the_mps_daemon_is_started_with_folders_of_the_run_and_told_to_quit(tmp_path, fake_mps):
    work = tmp_path / "work"
    env, why = gpu_check.start_mps(work)
    assert why is None and env == gpu_check.mps_environment(work)
    pipe = env["CUDA_MPS_PIPE_DIRECTORY"]
    assert env["CUDA_MPS_LOG_DIRECTORY"] == str(work / "mps-log") and len(pipe) <= gpu_check.MPS_LONGEST_PIPE_DIR
    assert pipe == str(work / "mps-pipe") or pipe.startswith("/tmp/harness-mps-")  # short enough for its sockets
    gpu_check.stop_mps(work)
    gpu_check.stop_mps(work)  # again, as the orchestrator does after the stage: harmless
    assert fake_mps.read_text().splitlines() == [f"daemon pipe={pipe} log={work / 'mps-log'}",
                                                 f"command pipe={pipe}: quit"]  # the second found nothing to stop
    assert not Path(pipe).exists()


def test_a_pipe_folder_too_long_for_a_socket_path_moves_to_a_short_one(tmp_path):
    short, long = Path("/w"), tmp_path / ("x" * 100)
    assert gpu_check.mps_environment(short)["CUDA_MPS_PIPE_DIRECTORY"] == "/w/mps-pipe"
    moved = gpu_check.mps_environment(long)["CUDA_MPS_PIPE_DIRECTORY"]
    assert moved.startswith("/tmp/harness-mps-") and len(moved) < 40
    assert moved == gpu_check.mps_environment(long)["CUDA_MPS_PIPE_DIRECTORY"]  # found again to be stopped


def test_without_a_daemon_nothing_is_started_and_the_reason_is_kept(tmp_path, fake_mps, monkeypatch):
    gpu_check.stop_mps(tmp_path / "never-started")  # no daemon of this run: nothing is sent
    assert not fake_mps.exists()
    monkeypatch.setenv("FAIL", "no GPU")
    assert gpu_check.start_mps(tmp_path / "w") == (None, f"{gpu_check.MPS_CONTROL} -d exited with 3: cannot start: "
                                                          "no GPU")
    assert not Path(gpu_check.mps_environment(tmp_path / "w")["CUDA_MPS_PIPE_DIRECTORY"]).exists()  # none left
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert gpu_check.start_mps(tmp_path / "w") == (None, f"{gpu_check.MPS_CONTROL} is not on this machine")


def test_the_mps_stage_trains_the_rungs_as_clients_and_stops_the_daemon_even_when_training_fails(tmp_path, fake_mps,
                                                                                              monkeypatch):
    plan = replace(gpu_check.DRY_RUN_PLAN, device="cuda", mps_steps=7)
    seen = {}

    def rungs_at_once(plan_, steps):
        # The rung processes are spawned from here and inherit this environment.
        seen.update(steps=steps, pipe=gpu_check.os.environ.get("CUDA_MPS_PIPE_DIRECTORY"))
        with (tmp_path / "work" / "mps-log" / "control.log").open("a") as log:  # the daemon's own words
            log.write("[2026-12-01 10:00:00.000 Control  4242] NEW CLIENT 4243 from user 0: Server exists\n" * 4)
        return {"ok": True, "steps": steps, "rungs": []}

    monkeypatch.setattr(gpu_check, "train_rungs_at_once", rungs_at_once)
    result = gpu_check.stage_concurrent_mps(plan, tmp_path / "work")
    assert seen == {"steps": 7, "pipe": gpu_check.mps_environment(tmp_path / "work")["CUDA_MPS_PIPE_DIRECTORY"]}
    assert result["mps"] is True and result["mps_client_connections"] == 4
    assert "CUDA_MPS_PIPE_DIRECTORY" not in gpu_check.os.environ  # the stage's own environment is restored
    assert fake_mps.read_text().splitlines()[-1].endswith(": quit")

    def rungs_fail(plan_, steps):
        raise RuntimeError("a rung process could not reach the daemon")

    monkeypatch.setattr(gpu_check, "train_rungs_at_once", rungs_fail)
    with pytest.raises(RuntimeError):
        gpu_check.stage_concurrent_mps(plan, tmp_path / "work2")
    pipe2 = gpu_check.mps_environment(tmp_path / "work2")["CUDA_MPS_PIPE_DIRECTORY"]
    assert fake_mps.read_text().splitlines()[-1] == f"command pipe={pipe2}: quit"


def test_the_run_stops_the_daemon_whatever_stops_the_run(tmp_path, fake_mps, monkeypatch):
    def stage_that_starts_a_daemon_and_breaks(name, plan, work, limit_s, log_file):
        gpu_check.start_mps(work)
        raise KeyboardInterrupt

    monkeypatch.setattr(gpu_check, "_run_stage_process", stage_that_starts_a_daemon_and_breaks)
    with pytest.raises(KeyboardInterrupt):
        gpu_check.run_all(gpu_check.DRY_RUN_PLAN, tmp_path / "out", stages=["bench"], echo=lambda *_: None)
    calls = fake_mps.read_text().splitlines()
    assert calls[0].startswith("daemon pipe=") and calls[-1].endswith(": quit")


def test_headline_sets_the_mps_projection_beside_the_protocols_own():
    stages = {
        "concurrent": {"result": {"ok": True, "steps": 10_000, "horizon_steps": 100_000, "wall_s": 130.0,
                                  "fixed_s": 30.0, "extrapolated_horizon_s": 1030.0, "aggregate_tokens_per_s": 3.0e6}},
        # Warm compile caches: its own once-only part is 10 s; the cold run's (30 s) is what an evaluation pays.
        "concurrent_mps": {"result": {"ok": True, "mps": True, "steps": 5_000, "horizon_steps": 100_000,
                                      "wall_s": 34.5, "fixed_s": 10.0, "extrapolated_horizon_s": 500.0,
                                      "aggregate_tokens_per_s": 6.0e6, "mps_client_connections": 4, "rungs": []}},
    }
    head = gpu_check.headline(stages)
    assert head["projected_protocol_with_mps_s"] == pytest.approx(30.0 + 24.5 * 20)
    assert head["mps_throughput_ratio"] == pytest.approx(2.0)
    # The targets are the protocol's, which does not use MPS: they are judged on the run without it.
    assert head["projected_protocol_s"] == 1030.0 and head["targets"]["protocol_under_10_min"] is False
    record = {"stages": {k: {"status": "ok", "wall_s": 1.0, **v} for k, v in stages.items()}, "headline": head,
              "plan": {"name": "cuda", "device": "cuda", "budget_s": 540.0}, "started_at": "now"}
    summary = gpu_check.render_summary(record)
    assert ("With the rungs' kernels overlapping (MPS; the protocol does not use it yet): **8.7 min (520 s)** "
            "(5000-step run as MPS clients extrapolated to 100000 steps, with the cold run's once-only part; 2.00x "
            "the tokens/s of the rungs taking turns, 4 client connections in the daemon's log).") in summary


def test_kernel_categories():
    assert gpu_check.kernel_category("triton_red_fused__log_softmax__to_copy__unsafe_view_17") == "fused (triton)"
    assert gpu_check.kernel_category("nvjet_sm90_tst_128x128_64x6_1x2_h_bz_NTT") == "matmul"
    assert gpu_check.kernel_category("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<"
                                     "FusedOptimizerTensorListMetadata<4>>") == "optimizer"
    assert gpu_check.kernel_category("Memcpy DtoD (Device -> Device)") == "copy/fill"
    assert gpu_check.kernel_category("void at::native::reduce_kernel<512, 1>") == "other"


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_a_loaded_program_can_be_traced_by_torch_compile(framework):
    """torch.compile imports, by name, the module of every function it inlines: a program loaded under a module
    missing from sys.modules made every compile fail, and the engine trained everything eagerly."""
    fw = FRAMEWORKS[framework]
    cls = load_attention(fw.seed_source(), str(fw.seed_path))
    other = load_attention(fw.seed_source(), str(fw.seed_path))
    assert sys.modules[cls.__module__].ATTENTION is cls and cls.__module__ != other.__module__
    model = build_model(cls, (32, 2, 2), 128, 16, 0.0, 0)
    x = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", dynamic=False)
    _, loss = compiled(x, x)
    loss.backward()
    _, expected = model(x, x)
    assert torch.allclose(loss, expected)


def test_the_confinement_probe_reports_what_each_layer_stopped(tmp_path):
    report = confinement_probe.probe(tmp_path)
    assert set(report["namespaces"]) == {"user", "network", "mount", "pid", "ipc"} and report["level"]
    assert "error" not in report["confined_child"], report["confined_child"]
    for key, child in report.items():
        if not key.startswith(("only_", "confined_child")):
            continue
        assert child["must_allow"]["write_in_scratch"] == "ok"
        layers, stop = child["layers"], child["must_stop"]
        # Each layer that applied stopped what it is for, and the file it refused was indeed not written.
        if layers.get("landlock") == "ok":
            assert stop["read_planted_secret"] == "EACCES" and stop["write_outside_scratch"] == "EACCES"
            assert not child["outside_file_exists_afterwards"]
        if layers.get("landlock_writes_only") == "ok":
            assert stop["write_outside_scratch"] == "EACCES" and not child["outside_file_exists_afterwards"]
        if layers.get("seccomp") == "ok":
            assert stop["open_socket"] == "EAFNOSUPPORT"
        if not any(name.startswith("landlock") for name in layers):
            # Unconfined file system: the same attempts succeed, so a refusal above is the layer's doing.
            assert stop["write_outside_scratch"] == "ok" and child["outside_file_exists_afterwards"]
            assert stop["read_planted_secret"] == "ok"


def test_evaluate_keeps_the_reason_and_message_where_openevolve_is_not_installed(monkeypatch):
    """The GPU machine has no OpenEvolve: the security stage's tests read ``artifacts`` all the same."""
    from harness.trusted import evaluate as evaluate_module

    monkeypatch.setitem(sys.modules, "openevolve.evaluation_result", None)  # its import now fails
    result = evaluate_module._wrap({"combined_score": 0.0}, {"reason": "policy", "message": "no"})
    assert result.metrics == {"combined_score": 0.0} and result.artifacts == {"reason": "policy", "message": "no"}


@pytest.mark.skipif(confinement_probe.landlock_abi() == 0, reason="no Landlock here")
def test_the_probe_can_let_the_driver_write_one_more_folder(tmp_path):
    """The bisecting step the probe takes on a GPU whose driver needs to write a shared folder: writes are allowed in
    the scratch folder and the one folder named, nowhere else."""
    scratch, elsewhere, other = tmp_path / "scratch", tmp_path / "elsewhere", tmp_path / "other"
    for folder in (scratch, elsewhere, other):
        folder.mkdir()
    secret = other / "secret.txt"
    secret.write_text("x")
    spec = {"read_roots": ["/"], "write_roots": [str(scratch)], "scratch": str(scratch), "secret": str(secret),
            "outside": str(elsewhere / "written.txt"), "layers": ["landlock_writes_one_more"]}
    allowed = confinement_probe.child_under({**spec, "one_more": str(elsewhere)})
    assert allowed["layers"] == {"landlock_writes_one_more": "ok"}, allowed
    assert allowed["must_stop"]["write_outside_scratch"] == "ok" and allowed["outside_file_exists_afterwards"]
    refused = confinement_probe.child_under({**spec, "one_more": str(other)})
    assert refused["must_stop"]["write_outside_scratch"] == "EACCES" and not refused["outside_file_exists_afterwards"]
    assert refused["must_allow"]["write_in_scratch"] == "ok" and confinement_probe._cuda(refused) != "n/a"


def test_a_pytest_run_stopped_at_its_limit_keeps_the_outcomes_of_the_tests_that_finished(tmp_path):
    tests = tmp_path / "test_slow.py"
    tests.write_text("import time\n\ndef test_fast():\n    pass\n\ndef test_skipped():\n    import pytest\n"
                     "    pytest.skip('no')\n\ndef test_slow():\n    time.sleep(120)\n")
    result = gpu_check.run_pytest([str(tests)], tmp_path / "junit.xml", timeout_s=15.0)
    assert result["timed_out"] and not result["ok"] and result["wall_s"] < 60
    assert [(t["name"], t["outcome"]) for t in result["tests"]] == [("test_fast", "passed"), ("test_skipped", "skipped")]
    assert (result["passed"], result["skipped"], result["failed"]) == (1, 1, 0)

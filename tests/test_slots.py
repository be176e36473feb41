"""Evaluation slots: never more holders than slots, a dead holder's slot comes back, the sandbox is pinned."""

import os
import subprocess
import sys
import threading
import time

import pytest

from harness.trusted import executor
from harness.trusted import slots


@pytest.fixture
def slot_env(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_SLOT_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("HARNESS_SLOTS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return tmp_path / "locks"


def test_slot_specs(slot_env, monkeypatch):
    assert slots.parse_slots("0,0,1,1") == ["0", "0", "1", "1"]
    assert slots.parse_slots(" cpu ") == ["cpu"]
    with pytest.raises(ValueError):
        slots.parse_slots("gpu0")
    monkeypatch.setenv("HARNESS_SLOTS", "0,0,1,1")
    found = slots.all_slots()
    # First-fit takes one slot on each GPU before doubling up on any.
    assert [(s.device, s.rank) for s in found] == [("0", 0), ("1", 0), ("0", 1), ("1", 1)]
    assert found[0].env() == {"CUDA_VISIBLE_DEVICES": "0"} and found[0].lock_path.parent == slot_env
    # Slot GPUs are positions in the parent's CUDA_VISIBLE_DEVICES; lock files name the physical device.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert [s.env()["CUDA_VISIBLE_DEVICES"] for s in slots.all_slots()] == ["2", "3", "2", "3"]
    assert slots.all_slots()[0].lock_path.name == "gpu2-slot0.lock"
    monkeypatch.delenv("HARNESS_SLOTS")
    assert slots.slot_devices() == ["0", "1"]  # default: one slot per visible GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert slots.slot_devices() == ["cpu"] and slots.all_slots()[0].env() == {}


def test_threads_never_hold_more_slots_than_exist(slot_env):
    k, n = 3, 10
    devices = ["0", "0", "1"]
    lock = threading.Lock()
    state = {"now": 0, "max": 0, "done": 0, "by_slot": set()}
    errors = []

    def worker():
        try:
            with slots.acquire(30.0, devices=devices, poll_s=0.01) as slot:
                with lock:
                    state["now"] += 1
                    state["max"] = max(state["max"], state["now"])
                    assert slot.lock_path not in state["by_slot"], "two holders of one slot"
                    state["by_slot"].add(slot.lock_path)
                time.sleep(0.05)
                with lock:
                    state["now"] -= 1
                    state["by_slot"].discard(slot.lock_path)
                    state["done"] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert state["done"] == n and state["max"] <= k and state["max"] >= 2


def test_a_crashed_holder_releases_its_slot(slot_env):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom harness.trusted import slots\n"
         "with slots.acquire(10.0, devices=['cpu']):\n    print('held', flush=True)\n    time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "HARNESS_SLOT_DIR": str(slot_env)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(slots.SlotTimeout, match="no evaluation slot became free"):
            with slots.acquire(0.3, devices=["cpu"], poll_s=0.05):
                pass
        holder.kill()  # SIGKILL: no cleanup code runs; the kernel drops the flock with the process
        holder.wait()
        started = time.monotonic()
        with slots.acquire(5.0, devices=["cpu"], poll_s=0.05) as slot:
            assert slot.device == "cpu"
        assert time.monotonic() - started < 2.0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_sandbox_runs_pinned_to_its_slot(slot_env, monkeypatch):
    monkeypatch.setenv("HARNESS_SLOTS", "3")
    seen = {}

    def fake_start_limited(cmd, log_path, env=None, pass_fds=()):
        seen["env"] = env
        seen["held"] = [p.name for p in slot_env.iterdir()]
        return None

    monkeypatch.setattr(executor, "start_limited", fake_start_limited)
    monkeypatch.setattr(executor, "supervise", lambda *a, **k: "exited")
    run = executor.run_sandbox("evaluate", {"profile": "smoke-short"}, 60.0, 1024, executor="local")
    assert run.outcome == "exited" and run.result is None and run.execution["slot"] == "gpu3-slot0"
    assert seen["env"]["CUDA_VISIBLE_DEVICES"] == "3" and seen["held"] == ["gpu3-slot0.lock"]


def test_no_free_slot_is_an_infrastructure_result(slot_env, monkeypatch):
    monkeypatch.setenv("HARNESS_SLOTS", "cpu")
    monkeypatch.setenv("HARNESS_SLOT_WAIT_S", "0.3")
    monkeypatch.setattr(executor, "start_limited", lambda *a, **k: pytest.fail("the sandbox must not start"))
    with slots.acquire(1.0):
        run = executor.run_sandbox("evaluate", {}, 60.0, 1024, executor="local")
    assert run.outcome == "infrastructure" and run.result is None
    assert "no evaluation slot" in run.error
    monkeypatch.setenv("HARNESS_SLOTS", "gpu7")  # a malformed spec is the machine's problem too
    assert executor.run_sandbox("evaluate", {}, 60.0, 1024, executor="local").outcome == "infrastructure"

"""The sandbox's OS confinement (``harness.trusted.confine``): no network, no signal to anything outside it, and
recorded in every ledger row; profiles that require it refuse to run without it unless the user opts out.

The attacks here are switched past the static policy (``check_block`` returns ok), as if a candidate had found a
hole in it, to show the layer behind it. Each asserts that the side effect did not happen, seen from outside.
"""

import dataclasses
import errno
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import security
from processes import all_gone, children
from harness.trusted import confine, executor, ledger, process_lifetime
from harness.trusted import evaluate as evaluate_module
from harness.trusted.evaluate import evaluate, prepare
from harness.trusted.policy import PolicyReport
from harness.trusted.profiles import ALLOW_UNCONFINED_ENV, ConfigError, get_profile

UNAVAILABLE = confine.unavailable_reason()
needs_confinement = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"this machine cannot confine: {UNAVAILABLE}")


def _past_the_static_policy(monkeypatch):
    monkeypatch.setattr(evaluate_module, "check_block", lambda *args, **kwargs: PolicyReport())


def _candidate(tmp_path, attempt: str) -> tuple[str, Path]:
    """The corpus's attention that, while it is constructed, runs ``attempt`` (one line; ``os_`` is the os module)
    and writes to a marker file what happened: "succeeded" or the error. Then a shape error, so that an attempt
    costs seconds, not a training run. Returns the program's path and the marker's."""
    marker = tmp_path / "outcome.txt"
    payload = (f"        os_ = getattr(torch, 'os')\n"
               f"        try:\n"
               f"            {attempt}\n"
               f"            outcome = 'succeeded'\n"
               f"        except OSError as e:\n"
               f"            outcome = os_.strerror(e.errno)\n"
               f"        fd = os_.open({str(marker)!r}, os_.O_WRONLY | os_.O_CREAT)\n"
               f"        os_.write(fd, outcome.encode())\n")
    attack = security.Attack("probe", "none", "return x[:, :-1]")
    source = attack.source("unused", "unused").replace(
        "        self.n_heads = n_heads\n", "        self.n_heads = n_heads\n" + payload)
    path = tmp_path / "candidate.py"
    path.write_text(source)
    return str(path), marker


@needs_confinement
def test_the_seed_is_evaluated_confined_and_the_ledger_says_so(smoke_env, tmp_path):
    path = tmp_path / "seed.py"
    path.write_text(security.SEED)
    result = evaluate(security.FRAMEWORK, str(path))
    assert result.artifacts["reason"] == "ok", result.artifacts.get("message")
    row = next(r for r in ledger.evaluations() if r["id"] == int(result.artifacts["ledger_row"]))
    assert row["execution"]["confinement"] == confine.LAYERS
    assert confine.LAYERS in result.artifacts["execution"]


@needs_confinement
def test_the_sandbox_cannot_signal_the_evaluator(smoke_env, tmp_path, monkeypatch):
    _past_the_static_policy(monkeypatch)
    path, marker = _candidate(tmp_path, f"os_.kill({os.getpid()}, 9)")
    result = evaluate(security.FRAMEWORK, path)
    # Still here: the signal never reached this process (the evaluator, the sandbox's parent's parent).
    assert result.artifacts["reason"] == "shape", result.artifacts.get("message")
    assert marker.read_text() == "No such process"


@needs_confinement
def test_the_sandbox_has_no_network(smoke_env, tmp_path, monkeypatch):
    _past_the_static_policy(monkeypatch)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(30)
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(_accept(server)), daemon=True)
    thread.start()
    path, marker = _candidate(tmp_path, "getattr(torch, 'sys').modules['socket'].create_connection(('127.0.0.1', "
                                        f"{server.getsockname()[1]}), timeout=5)")
    result = evaluate(security.FRAMEWORK, path)
    assert result.artifacts["reason"] == "shape", result.artifacts.get("message")
    assert marker.read_text() == "Network is unreachable"
    server.close()
    thread.join(timeout=35)
    assert accepted == [None], "a connection reached this host"


def _accept(server):
    try:
        conn, _ = server.accept()
        conn.close()
        return "connected"
    except OSError:
        return None


def test_a_profile_that_requires_confinement_refuses_a_machine_without_it(smoke_env, monkeypatch):
    monkeypatch.setattr(confine, "unavailable_reason", lambda device="cpu": "user namespaces are off (test)")
    monkeypatch.delenv(ALLOW_UNCONFINED_ENV, raising=False)
    profile = dataclasses.replace(get_profile(), requires_confinement=True)
    with pytest.raises(ConfigError, match=f"{ALLOW_UNCONFINED_ENV}=1"):
        prepare(security.FRAMEWORK, profile)
    # The executor refuses too (a Ray worker may lack what the driver has).
    run = executor.run_sandbox_here("evaluate", {"profile": "pilot", "confinement": "required"}, 60.0, 4096)
    assert run.outcome == "infrastructure" and ALLOW_UNCONFINED_ENV in run.error


def test_opting_out_runs_unconfined_and_records_it(smoke_env, tmp_path, monkeypatch):
    monkeypatch.setattr(confine, "unavailable_reason", lambda device="cpu": "user namespaces are off (test)")
    monkeypatch.setenv(ALLOW_UNCONFINED_ENV, "1")
    profile = dataclasses.replace(get_profile(), requires_confinement=True)
    path = tmp_path / "seed.py"
    path.write_text(security.SEED)
    result = evaluate(security.FRAMEWORK, str(path), profile=profile)
    assert result.artifacts["reason"] == "ok", result.artifacts.get("message")
    row = next(r for r in ledger.evaluations() if r["id"] == int(result.artifacts["ledger_row"]))
    assert row["execution"]["confinement"] == "none: user namespaces are off (test)"


@needs_confinement
def test_the_launcher_runs_its_command_as_process_1_with_no_network():
    code = ("import os, socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=5)\n"
            "except OSError as e:\n    print(os.getpid(), [n for _, n in socket.if_nameindex()], e.errno)")
    out = subprocess.run(confine.wrap([sys.executable, "-c", code]), capture_output=True, text=True, timeout=60)
    assert out.stdout.split(maxsplit=1)[0] == "1", out.stderr
    assert out.stdout.strip() == f"1 ['lo'] {errno.ENETUNREACH}"


@needs_confinement
def test_a_sandbox_whose_launcher_dies_while_it_starts_still_dies():
    """A death signal asked for before exec does not survive exec in a user namespace, and process 1 of a PID
    namespace reads 0 from getppid() whether its parent lives or not: a sandbox still importing when the evaluator
    and the launcher died used to train on as an orphan (found by killing openevolve-run while its evaluator
    prepared the baseline). It now reads the launcher's death from a pipe when it asks for its signal."""
    inner = ("import time; time.sleep(3)\n"  # the start-up: imports, before the sandbox asks for its signal
             "from harness.trusted.process_lifetime import die_with_parent; die_with_parent()\n"
             "time.sleep(120)")
    code = (
        "import os, subprocess, sys, time\n"
        "from harness.trusted import confine\n"
        f"launcher = subprocess.Popen(confine.wrap([sys.executable, '-c', {inner!r}]), start_new_session=True)\n"
        "print(launcher.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    evaluator = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    launcher_pid = int(evaluator.stdout.readline())
    deadline = time.monotonic() + 20
    while not (sandboxes := children(launcher_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandboxes, "the launcher started nothing"
    evaluator.kill()  # while the sandbox is still starting
    evaluator.wait()
    assert all_gone([launcher_pid, *sandboxes], timeout_s=15), "the sandbox outlived its launcher"


@needs_confinement
def test_the_confined_sandbox_dies_with_the_evaluator():
    """evaluator -> launcher -> sandbox (process 1 of its namespace): killing the evaluator ends both."""
    inner = ("from harness.trusted.process_lifetime import die_with_parent; die_with_parent(); "
             "import time; time.sleep(120)")
    code = (
        "import os, subprocess, sys, time\n"
        "from harness.trusted import confine\n"
        f"env = {{**os.environ, {process_lifetime.PARENT_PID_ENV!r}: str(os.getpid())}}\n"
        f"launcher = subprocess.Popen(confine.wrap([sys.executable, '-c', {inner!r}]), env=env, start_new_session=True)\n"
        "print(launcher.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    evaluator = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    launcher_pid = int(evaluator.stdout.readline())
    deadline = time.monotonic() + 20
    while not (sandboxes := children(launcher_pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sandboxes, "the launcher started no sandbox"
    time.sleep(1.0)  # the sandbox has asked for its death signal
    evaluator.kill()
    evaluator.wait()
    assert all_gone([launcher_pid, *sandboxes]), "the sandbox outlived the evaluator"

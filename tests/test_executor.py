"""The executor's settings and failure paths that need no cluster: a wrong setting or an unreachable cluster is
the operator's problem, reported as such, never scored as the candidate's."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from processes import all_gone, exit_handler_site, running
from harness.trusted import confine, executor, untrusted_files
from harness.trusted import process_lifetime
from harness.trusted.evaluate import prepare
from harness.trusted.profiles import ConfigError


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("HARNESS_EXECUTOR", "ray")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setenv("HARNESS_RAY_RETRIES", "5")
    monkeypatch.setenv("HARNESS_RAY_ACCELERATOR_TYPE", "H100")
    config = executor.ExecutorConfig.from_env()
    assert (config.name, config.ray_address, config.ray_retries, config.ray_accelerator_type) == \
        ("ray", "10.0.0.1:6379", 5, "H100")
    monkeypatch.setenv("HARNESS_RAY_ADDRESS", "10.0.0.2:6379")  # the harness's own setting wins
    assert executor.ExecutorConfig.from_env().ray_address == "10.0.0.2:6379"
    assert executor.ExecutorConfig.from_env("local").name == "local"  # an explicit choice wins over the variable


def test_an_unknown_executor_is_a_configuration_error(monkeypatch):
    monkeypatch.setenv("HARNESS_EXECUTOR", "slurm")
    with pytest.raises(ConfigError, match="unknown executor 'slurm'"):
        executor.ExecutorConfig.from_env()
    run = executor.run_sandbox("evaluate", {}, 10.0, 512)
    assert run.outcome == "infrastructure" and "unknown executor" in run.error
    monkeypatch.setenv("HARNESS_EXECUTOR", "ray")
    monkeypatch.setenv("HARNESS_RAY_RETRIES", "two")
    with pytest.raises(ConfigError, match="HARNESS_RAY_RETRIES='two' is not an integer"):
        executor.ExecutorConfig.from_env()


def test_task_options_ask_for_the_profiles_device():
    config = executor.ExecutorConfig(name="ray", ray_gpus_per_eval=0.5, ray_accelerator_type="H100")
    spec = {"config": executor.asdict(config), "request": {"device": "cuda"}}
    assert executor._task_options(spec) == {"max_retries": 0, "num_cpus": 1.0, "num_gpus": 0.5,
                                            "accelerator_type": "H100"}
    spec["request"]["device"] = "cpu"
    assert executor._task_options(spec) == {"max_retries": 0, "num_cpus": 1.0}


def test_an_unreachable_cluster_stops_the_run_at_preparation(smoke_env, monkeypatch):
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    monkeypatch.setenv("HARNESS_RAY_ADDRESS", "127.0.0.1:9")  # the discard port: nothing listens there
    started = time.monotonic()
    with pytest.raises(ConfigError, match="cannot connect to the Ray cluster"):
        prepare("ttr", executor_name="ray")
    print(f"unreachable cluster reported in {time.monotonic() - started:.1f} s")


def test_a_cluster_that_never_answers_is_given_up_on(monkeypatch):
    """A port that accepts connections and never speaks: Ray would keep retrying; the submission gives up."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("HARNESS_RAY_ADDRESS", f"127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("HARNESS_RAY_CONNECT_TIMEOUT_S", "5")
        started = time.monotonic()
        run = executor.run_sandbox("evaluate", {"device": "cpu"}, 10.0, 512, executor="ray")
    assert run.outcome == "infrastructure" and run.result is None
    assert "within 5 s" in run.error, run.error
    assert time.monotonic() - started < 60


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_the_sandbox_dies_with_its_parent(tmp_path):
    """What keeps a killed evaluator or Ray worker from leaving its sandbox training on."""
    code = (
        "import os, subprocess, sys, time\n"
        f"env = {{**os.environ, {process_lifetime.PARENT_PID_ENV!r}: str(os.getpid())}}\n"
        "child = subprocess.Popen([sys.executable, '-c', 'from harness.trusted.process_lifetime import die_with_parent; "
        "die_with_parent(); import time; time.sleep(120)'], env=env, start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    time.sleep(1.0)  # the child has asked for its death signal
    assert running(child_pid)
    parent.kill()
    parent.wait()
    assert all_gone([child_pid]), "the sandbox outlived its parent"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_sandbox_whose_parent_already_died_exits(tmp_path):
    env = {**os.environ, process_lifetime.PARENT_PID_ENV: "1"}  # not its parent: the parent it was started for is gone
    done = subprocess.run([sys.executable, "-c", "from harness.trusted.process_lifetime import die_with_parent; die_with_parent(); "
                           "print('still here')"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "still here" not in done.stdout


def test_exit_now_flushes_the_output_and_skips_the_interpreter_teardown(tmp_path):
    markers, path = exit_handler_site(tmp_path)
    env = {**os.environ, "PYTHONPATH": path}
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True, timeout=60)
    assert len(list(markers.glob("exit-*"))) == 1, "the marker is left by a normal exit"
    code = ("import sys; from harness.trusted.process_lifetime import exit_now; "
            "sys.stdout.write('half a line'); sys.stderr.write('and more'); exit_now(3)")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (3, "half a line", "and more")
    assert len(list(markers.glob("start-*"))) == 2 and len(list(markers.glob("exit-*"))) == 1


def test_the_sandbox_and_the_scorer_end_without_the_interpreter_teardown(tmp_path):
    """Torch's teardown costs about half a second per process, and the evaluator waits for three in a row after
    the training: the sandbox's, the forward pass's and the scorer's. The sandbox and the scorer here end with
    nothing to do (the forward pass runs the sandbox's entry point, checked first;
    here the scorer kills it before telling it to go)."""
    markers, path = exit_handler_site(tmp_path)
    env = {**os.environ, "PYTHONPATH": path}
    sandbox = subprocess.run([sys.executable, "-m", "harness.sandbox", "forward", str(tmp_path / "request.json"),
                              str(tmp_path / "result.json")], stdin=subprocess.DEVNULL, env=env, capture_output=True,
                             text=True, timeout=120)
    assert sandbox.returncode == 0, sandbox.stderr
    forward = tmp_path / "forward"
    forward.mkdir()
    plan = {"request": {"framework": "ttr", "profile": "smoke", "device": "cpu"}, "confined": False, "seccomp": False,
            "forward": {"dir": str(forward), "files": {"rules": None, "landlock": False, "private_root": False}},
            "env": env}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    scorer = subprocess.run([sys.executable, "-m", "harness.scorer", str(tmp_path / "plan.json"),
                             str(tmp_path / "score.json")], stdin=subprocess.DEVNULL, env=env, capture_output=True,
                            text=True, timeout=120)
    assert scorer.returncode == 0, scorer.stderr
    assert (tmp_path / "forward.log").exists(), "the scorer started its forward-only sandbox"
    assert len(list(markers.glob("start-*"))) >= 2 and not list(markers.glob("exit-*"))


def test_the_log_watch_finds_its_marker_across_reads_and_reads_a_flood_a_slice_at_a_time(tmp_path, monkeypatch):
    from harness.trusted.executor import _LogWatch

    log = tmp_path / "sandbox.log"
    watch = _LogWatch(log, "training begins")
    assert not watch.seen()  # no file yet
    log.write_bytes(b"gate shape: 0.1s\ntraining be")
    assert not watch.seen()
    with open(log, "ab") as f:
        f.write(b"gins\n")
    assert watch.seen() and watch.seen()  # split across two reads, and it stays found
    monkeypatch.setattr(executor, "LOG_WATCH_BYTES", 1000)
    flood = tmp_path / "flood.log"
    flood.write_bytes(b"x" * 5000 + b"training begins\n")
    watch = _LogWatch(flood, "training begins")
    sightings = [watch.seen() for _ in range(6)]
    assert sightings == [False] * 5 + [True] and watch.offset <= 6000


def test_files_a_sandbox_could_replace_are_read_without_blocking_or_following(tmp_path):
    """A sandbox that replaces its log or its result file with a named pipe, a link or a huge file neither hangs
    the evaluator (an open of a pipe with no writer blocks) nor makes it read what it chose."""
    pipe = tmp_path / "sandbox.log"
    os.mkfifo(pipe)
    secret = tmp_path / "secret.txt"
    secret.write_text('{"reason": "ok", "combined_score": 9.0}')
    link = tmp_path / "result.json"
    link.symlink_to(secret)
    started = time.monotonic()
    assert untrusted_files.read_untrusted(pipe, 100) is None and executor.tail(pipe) == ""
    assert not executor._LogWatch(pipe, "marker").seen()
    assert executor.read_result(pipe)["reason"] == "tampering"
    assert executor.read_result(link)["reason"] == "tampering"
    assert time.monotonic() - started < 5
    big = tmp_path / "big.json"
    big.write_text('{"message": "' + "Z" * (executor.RESULT_MAX_BYTES + 10) + '"}')
    assert executor.read_result(big)["reason"] == "tampering"
    log = tmp_path / "plain.log"
    log.write_text("x" * 10_000 + "the end")
    assert executor.tail(log, 7) == "the end" and untrusted_files.read_untrusted(log, 3, offset=10_000) == b"the"


HOLDS_MEMORY_OUTSIDE_ITS_GROUP = """
import os, sys, time
pid = os.fork()
if pid == 0:
    os.setsid()  # out of the sandbox's process group
    held = bytearray(int(sys.argv[1]) * 2**20)
    for i in range(0, len(held), 4096):
        held[i] = 1
    open(sys.argv[2], "w").write("held")
    time.sleep(60)
    os._exit(0)
time.sleep(60)
"""


@pytest.mark.skipif(confine.unavailable_reason() is not None, reason="this machine cannot confine the sandbox")
def test_memory_a_child_holds_outside_the_sandboxs_process_group_counts(tmp_path):
    """A child that calls setsid() leaves the process group, not the sandbox's PID namespace: its memory counts
    against the cap."""
    marker = tmp_path / "held"
    cmd = confine.wrap([sys.executable, "-c", HOLDS_MEMORY_OUTSIDE_ITS_GROUP, "300", str(marker)])
    outcome = executor.supervise(executor.start_limited(cmd, tmp_path / "log"), 60.0, 200)
    assert outcome == "memory", (tmp_path / "log").read_text()


LEAVES_THE_GROUP_ITSELF = """
import ctypes, os, sys, time
os.setsid()  # process 1 of the sandbox's namespace leaves the launcher's group
ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG: no signal when the launcher dies
with open(sys.argv[2], "w") as f:
    f.write("started")
held = bytearray(int(sys.argv[1]) * 2**20)
for i in range(0, len(held), 4096):
    held[i] = 1
while True:
    with open(sys.argv[2], "w") as f:
        f.write(str(time.time()))
    time.sleep(0.05)
"""


@pytest.mark.skipif(confine.unavailable_reason() is not None, reason="this machine cannot confine the sandbox")
def test_the_sandboxs_first_process_that_leaves_the_group_is_still_counted_and_killed(tmp_path):
    """The sandbox's process 1 (where a program loads) left the launcher's process group and cleared its death
    signal: its memory counted against no cap, and it outlived the kill, writing on. The launcher's namespace for
    its children is read while the launcher lives: the process is counted, killed, and gone when supervise returns."""
    marker = tmp_path / "alive"
    cmd = confine.wrap([sys.executable, "-c", LEAVES_THE_GROUP_ITSELF, "300", str(marker)])
    outcome = executor.supervise(executor.start_limited(cmd, tmp_path / "log"), 60.0, 200)
    assert outcome == "memory", (tmp_path / "log").read_text()
    last = marker.read_text()
    time.sleep(0.5)
    assert marker.read_text() == last, "it still runs"


STARTS_A_SANDBOX = """
import sys, time
from harness.trusted import confine, executor, untrusted_files
inner = executor.start_limited(confine.wrap([sys.executable, "-c", "import sys, time; held = bytearray(300 * 2**20); "
                                             "[held.__setitem__(i, 1) for i in range(0, len(held), 4096)]; "
                                             "open(sys.argv[1], 'w').write('held'); time.sleep(60)", sys.argv[1]]),
                               __import__("pathlib").Path(sys.argv[2]))
print(executor.supervise(inner, 30.0, 1000), flush=True)
"""


@pytest.mark.skipif(confine.unavailable_reason() is not None, reason="this machine cannot confine the sandbox")
def test_a_sandbox_that_a_supervised_process_starts_is_under_its_own_cap_not_its_parents(tmp_path):
    """The trusted scorer starts the forward-only sandbox, under a cap of its own: what that sandbox holds must not
    count against the scorer's cap, or a program's memory would end the scorer and read as the harness's fault."""
    marker = tmp_path / "held"
    cmd = [sys.executable, "-c", STARTS_A_SANDBOX, str(marker), str(tmp_path / "inner.log")]
    outcome = executor.supervise(executor.start_limited(cmd, tmp_path / "log"), 20.0, 200)
    assert marker.exists() and outcome == "timeout", (tmp_path / "log").read_text()


def test_a_sandbox_whose_files_grow_past_its_disk_cap_is_killed(tmp_path):
    writes = ("import os, sys, time\n"
              "for i in range(200):\n"
              "    open(os.path.join(sys.argv[1], f'f{i}'), 'wb').write(b'x' * (1 << 20))\n"
              "    time.sleep(0.01)\n")
    started = executor.start_limited([sys.executable, "-c", writes, str(tmp_path)], tmp_path / "log")
    outcome = executor.supervise(started, 60.0, 4096, disk=executor.DiskCap(tmp_path, 16 << 20))
    assert outcome == "disk", (tmp_path / "log").read_text()
    assert 16 << 20 < untrusted_files.files_bytes(tmp_path, []) < 150 << 20, "killed long after its files passed the cap"


CAPPED_WRITE = """
import os, resource, sys
from harness.sandbox.entry import cap_file_size
cap_file_size(1 << 20)
try:
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print("raised", flush=True)
except (OSError, ValueError):
    print("kept", flush=True)
try:
    with open(sys.argv[1], "wb") as f:
        f.write(b"x" * (2 << 20))
    print("written")
except OSError as exc:
    print(os.strerror(exc.errno))
"""


@pytest.mark.skipif(confine.unavailable_reason() is not None, reason="this machine cannot confine the sandbox")
def test_a_confined_sandbox_can_neither_write_a_file_past_its_cap_nor_lift_the_cap(tmp_path):
    """The sandbox caps its file size before any program loads (``entry.cap_file_size``), soft and hard limit: inside
    its user namespace a process has no capability over the host's limits, even where the evaluator is root."""
    out = subprocess.run(confine.wrap([sys.executable, "-c", CAPPED_WRITE, str(tmp_path / "big")]),
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines() == ["kept", "File too large"], out.stderr
    assert (tmp_path / "big").stat().st_size <= 1 << 20


def test_a_result_nested_past_the_parsers_depth_is_the_programs_tampering(tmp_path):
    """JSON nested deeper than the interpreter's stack raises RecursionError, not ValueError: it was the evaluator's
    own failure (``infrastructure``), not the program's."""
    path = tmp_path / "result.json"
    path.write_text("[" * 200_000)
    assert executor.read_result(path)["reason"] == "tampering"
    path.write_text('{"reason": "ok"}')
    assert executor.read_result(path) == {"reason": "ok"}


def test_the_host_asks_about_its_data_in_its_own_environment_and_every_sandbox_runs_offline(smoke_env, monkeypatch):
    """The download before a preparation runs in a process of the host, with the user's environment (a login the hub
    may need) and the hub as the user set it; the preparation's sandbox, which has no network, runs with the Hugging
    Face libraries offline and without the login."""
    from harness.trusted import ledger
    from harness.trusted.evaluate import baseline_limit_s, sandbox_request
    from harness.trusted.profiles import get_profile

    started = []
    start = executor.start_limited

    def recording(cmd, log_path, env=None, pass_fds=()):
        started.append((cmd, dict(env or {})))
        return start(cmd, log_path, env, pass_fds)

    monkeypatch.setattr(executor, "start_limited", recording)
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    profile = get_profile()
    request = sandbox_request("ttr", profile, ledger.default_ledger_path())
    run = executor.run_sandbox_here("prepare", request, baseline_limit_s(profile), profile.memory_cap_mib)
    assert run.result and "fingerprint" in run.result, (run.outcome, run.error, run.log[-2000:])
    kinds = ["fetch" if cmd[1:4] == ["-m", "harness.data", "fetch"] else "sandbox" if "harness.sandbox" in cmd
             else "other" for cmd, _ in started]
    assert kinds.count("fetch") == kinds.count("sandbox") == 1 and kinds.index("fetch") < kinds.index("sandbox")
    fetch, sandbox = (started[kinds.index(kind)][1] for kind in ("fetch", "sandbox"))
    assert fetch.get("HF_TOKEN") == "hf_not_a_real_token" and "HF_HUB_OFFLINE" not in fetch
    assert "HF_TOKEN" not in sandbox and sandbox["HF_HUB_OFFLINE"] == sandbox["HF_DATASETS_OFFLINE"] == "1"


def test_the_host_knows_whether_it_prepared_the_data(smoke_env):
    """What a Ray worker asks before it runs a program's sandbox (``executor.data_prepared``), answered from the data
    pipeline's record: yes once the preparation ran, no when the record is gone."""
    from harness.data import _prepared_pointer
    from harness.trusted.evaluate import sandbox_request
    from harness.trusted.profiles import default_cache_dir, get_profile

    profile = get_profile()
    prepare("ttr")
    request = sandbox_request("ttr", profile)
    pointer = _prepared_pointer(default_cache_dir(), profile.data_source, profile.synthetic_stories,
                                profile.vocab_size, profile.tokenizer_train_bytes)
    assert executor.data_prepared(request, profile.memory_cap_mib) is True
    saved = pointer.read_bytes()
    pointer.unlink()
    try:
        assert executor.data_prepared(request, profile.memory_cap_mib) is False
    finally:
        pointer.write_bytes(saved)
    assert executor.data_prepared({**request, "data_source": "synthetic-but-other"}, profile.memory_cap_mib) is False


@pytest.mark.parametrize("data_hash", ["/tmp/elsewhere", "../../elsewhere", "0123456789ABCDEF", 7])
def test_a_data_hash_that_is_not_one_never_reaches_the_scorer(tmp_path, data_hash):
    """The scorer opens the token cache entry that the training's data hash names: a sandbox that reported a path
    instead (its fingerprint's id recomputed to match) would have the trusted scorer open files of its choosing."""
    from harness.trusted.fingerprint import fingerprint_id

    fp = {"data_hash": data_hash, "device": "cpu"}
    fp["id"] = fingerprint_id(fp)
    run = executor.SandboxRun("exited", {"reason": "ok", "fingerprint": fp, "objective": {"runs": []}})
    executor._score("evaluate", run, tmp_path, None, 60.0, 1024)  # no scorer: it must never be asked
    assert run.result["reason"] == "tampering" and run.result["fingerprint"] is None


@pytest.mark.skipif(confine.unavailable_reason() is not None, reason="this machine cannot confine the sandbox")
def test_a_finished_sandboxs_kill_never_takes_a_later_sandboxs_processes_for_its_own(tmp_path):
    """A PID namespace's number is free for the next namespace once its last process is gone, and the kernel hands
    out the lowest free one: a sandbox started just after another ended got the same number, and the first one's
    kill, which kills every process of its namespace, took the second's (a validation seed died as `crash`)."""
    def started_with_namespace(code: str, log: str) -> executor.Started:
        started = executor.start_limited(confine.wrap([sys.executable, "-c", code]), tmp_path / log)
        deadline = time.monotonic() + 30
        while not started.spaces and time.monotonic() < deadline:
            executor._sandbox_processes(started)
            time.sleep(0.01)
        assert started.spaces, (tmp_path / log).read_text()
        return started

    first = started_with_namespace("pass", "first.log")
    first.proc.wait()  # its sandbox ended: its namespace has no process left
    second = started_with_namespace("import time; time.sleep(30)", "second.log")
    try:
        executor.abandon(first)
        time.sleep(0.5)
        assert second.proc.poll() is None, "the first sandbox's kill took the second's process"
    finally:
        executor.abandon(second)

"""The sandbox's OS confinement (``harness.trusted.confine``): no network, no signal to anything outside it, files
read and written only where it needs them, and recorded in every ledger row; profiles that require it refuse to
run without it unless the user opts out.

The attacks here are switched past the static policy (``check_block`` returns ok), as if a candidate had found a
hole in it, to show the layer behind it. Each asserts that the side effect did not happen, seen from outside.
"""

import ctypes
import dataclasses
import errno
import functools
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import security
from processes import all_gone, children
from harness.trusted import confine, executor, ledger, process_lifetime, seccomp
from harness.trusted.evaluate import evaluate, prepare, sandbox_request
from harness.trusted.profiles import ALLOW_UNCONFINED_ENV, ConfigError, get_profile

# What a sandbox on the tests' device (``security.DEVICE``: the CPU, or the GPU under gpu-check) gets here.
UNAVAILABLE = confine.unavailable_reason(security.DEVICE)
LAYERS = confine.device_layers(security.DEVICE)
needs_confinement = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"this machine cannot confine: {UNAVAILABLE}")
sandbox_files = pytest.mark.skipif(UNAVAILABLE is not None or not LAYERS.files,
                                   reason=f"a sandbox on {security.DEVICE} gets no Landlock here: "
                                          f"{UNAVAILABLE or LAYERS.files_absent}")
sandbox_seccomp = pytest.mark.skipif(UNAVAILABLE is not None or not LAYERS.seccomp,
                                     reason=f"a sandbox on {security.DEVICE} gets no seccomp filter here: "
                                            f"{UNAVAILABLE or LAYERS.seccomp_absent}")
# The launcher's own tests, whatever the device.
needs_landlock = pytest.mark.skipif(confine.unavailable_reason() is not None or confine.landlock_abi() == 0,
                                    reason="this machine cannot confine files with Landlock")


def _candidate(tmp_path, attempt: str) -> str:
    """The corpus's attention that, while it is constructed, runs ``attempt`` (one line; ``os_`` is the os module)
    and raises what happened, "outcome: succeeded" or "outcome: <the error>", so that the evaluator's message
    carries it out (the sandbox may not write anywhere else) and an attempt costs seconds, not a training run."""
    payload = (f"        os_ = getattr(torch, 'o' + 's')\n"
               f"        try:\n"
               f"            {attempt}\n"
               f"            outcome = 'succeeded'\n"
               f"        except OSError as e:\n"
               f"            outcome = os_.strerror(e.errno)\n"
               f"        raise RuntimeError('outcome: ' + outcome)\n")
    attack = security.Attack("probe", "none", "pass")
    source = attack.source("unused", "unused").replace(
        "        self.n_heads = n_heads\n", "        self.n_heads = n_heads\n" + payload)
    path = tmp_path / "candidate.py"
    path.write_text(source)
    return str(path)


def _outcome(result) -> str:
    assert result.artifacts["reason"] == "crash", result.artifacts.get("message")
    return result.artifacts["message"].split("outcome: ", 1)[1].splitlines()[0]


@needs_confinement
def test_the_seed_is_evaluated_confined_and_the_ledger_says_so(smoke_env, tmp_path):
    path = tmp_path / "seed.py"
    path.write_text(security.TRAINED_SEED)
    result = evaluate(security.FRAMEWORK, str(path))
    assert result.artifacts["reason"] == "ok", result.artifacts.get("message")
    row = next(r for r in ledger.evaluations() if r["id"] == int(result.artifacts["ledger_row"]))
    layers = confine.recorded(LAYERS.files, LAYERS.seccomp, LAYERS.root)
    assert row["execution"]["confinement"] == layers
    assert layers in result.artifacts["execution"]
    # The parts of the forward pass are apart only where neither files, IPC objects, sockets nor signals can pass
    # between them: on CUDA both may write POSIX shared memory, and the scopes need Landlock ABI 6.
    apart = (LAYERS.files and LAYERS.seccomp and confine.landlock_abi() >= confine.SCOPES_ABI
             and security.DEVICE == "cpu")
    assert row["execution"]["scoring"]["forward_parts_apart"] is apart
    # What the run folder held at most (its weights, log and caches), recorded to size the profile's disk cap by.
    assert 0 < row["execution"]["disk_peak_mib"] < get_profile().disk_cap_mib


@needs_confinement
@pytest.mark.skipif(security.DEVICE != "cpu", reason="smoke-ladder is a CPU profile")
def test_the_protocols_rungs_train_at_once_inside_the_confined_sandbox(smoke_env, tmp_path):
    """As ``pilot`` and ``full`` train (each rung in a process of its own, started inside the sandbox, under every
    layer): the seed scores at parity with its baseline on the scaling slope, each rung trained its budget."""
    profile = get_profile("smoke-ladder")
    path = tmp_path / "seed.py"
    path.write_text(security.TRAINED_SEED)
    result = evaluate(security.FRAMEWORK, str(path), profile=profile)
    assert result.artifacts["reason"] == "ok", result.artifacts.get("message")
    assert result.metrics["combined_score"] == pytest.approx(1.0, abs=1e-3)
    row = next(r for r in ledger.evaluations() if r["id"] == int(result.artifacts["ledger_row"]))
    assert row["execution"]["confinement"] == confine.recorded(LAYERS.files, LAYERS.seccomp, LAYERS.root)
    assert [r["rung"] for r in row["runs"]] == [list(rung) for rung in profile.ladder]
    assert all(r["steps_done"] == profile.steps for r in row["runs"])


@needs_confinement
def test_the_sandbox_cannot_signal_the_evaluator(smoke_env, tmp_path, monkeypatch):
    security.past_the_static_policy(monkeypatch)
    path = _candidate(tmp_path, f"os_.kill({os.getpid()}, 9)")
    result = evaluate(security.FRAMEWORK, path)
    # Still here: the signal never reached this process (the evaluator, the sandbox's parent's parent).
    assert _outcome(result) == "No such process"


@needs_confinement
def test_the_sandbox_has_no_network(smoke_env, tmp_path, monkeypatch):
    security.past_the_static_policy(monkeypatch)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    path = _candidate(tmp_path, "getattr(torch, 's' + 'ys').modules['socket'].create_connection(('127.0.0.1', "
                                f"{server.getsockname()[1]}), timeout=5)")
    result = evaluate(security.FRAMEWORK, path)
    # The seccomp filter refuses the internet socket itself (on the CPU every socket); without it, the empty network
    # namespace has no route.
    expected = "Network is unreachable"
    if LAYERS.seccomp:
        expected = "Operation not permitted" if security.DEVICE == "cpu" else "Address family not supported by protocol"
    assert _outcome(result) == expected
    server.settimeout(1.0)  # a connection made during the evaluation would be waiting in the backlog
    assert _accept(server) is None, "a connection reached this host"
    server.close()


@sandbox_seccomp
@pytest.mark.skipif(security.DEVICE == "cuda", reason="on CUDA a sandbox may open Unix sockets, which a GPU driver may "
                    "need (README, 'Not promised yet')")
def test_the_sandbox_reaches_no_unix_socket_of_the_host(smoke_env, tmp_path, monkeypatch):
    """Landlock does not check a connection to a socket's path: without the CPU's socket refusal, a sandbox reached a
    service of the host listening on a path (a container engine's, a session bus), through a socket or through a
    datagram socket pair pointed at it."""
    security.past_the_static_policy(monkeypatch)
    path = str(tmp_path / "host.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()
    sock = "getattr(torch, 's' + 'ys').modules['socket']"
    attempts = {"socket": f"{sock}.socket({sock}.AF_UNIX).connect({path!r})",
                "socket_pair": f"{sock}.socketpair({sock}.AF_UNIX, {sock}.SOCK_DGRAM)[0].connect({path!r})"}
    for name, attempt in attempts.items():
        assert _outcome(evaluate(security.FRAMEWORK, _candidate(tmp_path, attempt))) == "Operation not permitted", name
    server.settimeout(1.0)
    assert _accept(server) is None, "a connection reached this host"
    server.close()


def test_the_sandbox_reads_neither_the_hosts_secrets_in_etc_nor_raw_disks_nor_a_login_token(tmp_path, monkeypatch):
    """Files that a sandbox of a user who is root could otherwise read whatever their mode: the rules name /etc
    entry by entry without the secrets, and on the CPU only the devices Python and torch open."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "token").write_text("hf_secret")
    read, write = confine.file_rules(tmp_path / "run", device="cpu", data="sources")

    def covered(path: str, roots) -> bool:
        return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)

    for secret in ("/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/ssh/ssh_host_ed25519_key", "/dev/sda",
                   "/dev/nvme0n1", "/dev/mem", str(tmp_path / "hf" / "token")):
        assert not covered(secret, read) and not covered(secret, write), secret
    for needed in ("/etc/passwd", "/dev/urandom", "/dev/null", str(tmp_path / "hf" / "datasets" / "x.arrow"),
                   str(tmp_path / "hf" / "hub" / "x")):
        assert covered(needed, read) or not os.path.exists(os.path.dirname(needed)), needed
    assert covered(str(tmp_path / "hf" / "datasets" / "x.lock"), write)
    # Only the preparation reads the datasets cache; a process that runs a program reads the token cache alone, and
    # the forward pass nothing of the data; none of them writes shared memory on the CPU.
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    tokens = str(tmp_path / "cache" / "tokens" / "x")
    for data, readable in (("tokens", {tokens}), ("none", set())):
        read, write = confine.file_rules(tmp_path / "run", device="cpu", data=data)
        for path in (str(tmp_path / "hf" / "datasets" / "x.arrow"), str(tmp_path / "hf" / "hub" / "x"), tokens):
            assert covered(path, read) == (path in readable) and not covered(path, write), (data, path)
        assert not covered("/dev/shm/x", write) and not covered("/dev/shm/x", read)
    # Without HF_HOME the Hugging Face libraries use $XDG_CACHE_HOME/huggingface: the preparation reads that one.
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    read, write = confine.file_rules(tmp_path / "run", device="cpu", data="sources")
    assert covered(str(tmp_path / "xdg" / "huggingface" / "datasets" / "x.arrow"), read)
    assert not covered(str(tmp_path / "hf" / "datasets" / "x.arrow"), read)


@sandbox_files
def test_the_sandbox_reads_no_file_of_the_user_and_writes_only_its_run_folder(smoke_env, tmp_path, monkeypatch):
    """Past the static policy: a planted secret, another process's environment (this evaluator's, which holds a
    key), a file outside the run folder, the token cache (for writing) and the scored split (even for reading) are
    each out of reach, and nothing was written. Landlock alone here: the private root is switched off."""
    only_landlock = dataclasses.replace(LAYERS, root=False, root_absent="switched off for this test")
    monkeypatch.setattr(confine, "device_layers", lambda device="cpu": only_landlock)
    _reads_no_file_of_the_user(tmp_path, monkeypatch, {"Permission denied"})


@pytest.mark.skipif(UNAVAILABLE is not None or not LAYERS.root,
                    reason=f"a sandbox on {security.DEVICE} gets no private root here: "
                           f"{UNAVAILABLE or LAYERS.root_absent}")
def test_the_private_root_alone_keeps_the_same_files_out_of_reach(smoke_env, tmp_path, monkeypatch):
    """Where the device fails under Landlock and seccomp (as CUDA did under both on one GPU machine), the private
    root alone: the same attempts find nothing (what is not in the sandbox's root does not exist there) or a
    read-only file system, and nothing was written. The seed still trains and scores at parity."""
    only_the_root = dataclasses.replace(LAYERS, files=False, files_absent="switched off for this test",
                                        seccomp=False, seccomp_absent="switched off for this test")
    monkeypatch.setattr(confine, "device_layers", lambda device="cpu": only_the_root)
    _reads_no_file_of_the_user(tmp_path, monkeypatch, {"No such file or directory", "Read-only file system"})
    row = ledger.evaluations()[-1]
    assert row["execution"]["confinement"] == confine.recorded(False, False, True)
    path = tmp_path / "seed.py"
    path.write_text(security.TRAINED_SEED)
    result = evaluate(security.FRAMEWORK, str(path))
    assert result.artifacts["reason"] == "ok" and result.metrics["combined_score"] == pytest.approx(1.0, abs=1e-3)


def _reads_no_file_of_the_user(tmp_path, monkeypatch, refusals: set[str]):
    prepare(security.FRAMEWORK)  # the token cache exists
    security.past_the_static_policy(monkeypatch)
    secret_value = "sk-" + os.urandom(8).hex()
    monkeypatch.setenv("HARNESS_TEST_API_KEY", secret_value)
    secret = tmp_path / "secret.txt"
    secret.write_text(secret_value)
    [entry] = [p for p in (Path(os.environ["HARNESS_CACHE"]) / "tokens").iterdir() if p.name != "prepared"]
    scored = Path(os.environ["HARNESS_CACHE"]) / "scored" / entry.name / "score.npy"
    cache_before = (entry / "monitor.npy").read_bytes()
    attempts = {
        "read_a_planted_secret": f"os_.read(os_.open({str(secret)!r}, os_.O_RDONLY), 100)",
        "read_the_evaluators_environment": f"os_.read(os_.open('/proc/{os.getpid()}/environ', os_.O_RDONLY), 10000)",
        "write_outside_the_run_folder": f"os_.open({str(tmp_path / 'written')!r}, os_.O_WRONLY | os_.O_CREAT)",
        "write_the_token_cache": f"os_.open({str(entry / 'monitor.npy')!r}, os_.O_WRONLY)",
        "read_the_scored_split": f"os_.read(os_.open({str(scored)!r}, os_.O_RDONLY), 100)",
        "truncate_a_file_of_the_user": f"os_.truncate({str(secret)!r}, 0)",
        "read_the_ledger": f"os_.read(os_.open({os.environ['HARNESS_LEDGER']!r}, os_.O_RDONLY), 100)",
        "read_a_login_token": f"os_.read(os_.open({str(tmp_path / 'hf' / 'token')!r}, os_.O_RDONLY), 100)",
        # The text the scored split is made of: with it and the tokenizer, the split could be rebuilt.
        "read_the_datasets_cache": f"os_.listdir({str(tmp_path / 'hf' / 'datasets')!r})",
    }
    if security.DEVICE == "cpu":  # on CUDA the driver uses it (confine.CUDA_SHARED_MEMORY)
        # Shared by every process of the host and outliving the sandbox: a channel to the next program.
        attempts["write_shared_memory"] = (f"os_.open('/dev/shm/harness-test-{os.urandom(6).hex()}', "
                                           "os_.O_WRONLY | os_.O_CREAT)")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    (tmp_path / "hf" / "datasets").mkdir(parents=True)
    (tmp_path / "hf" / "datasets" / "validation.arrow").write_text(secret_value)
    (tmp_path / "hf" / "token").write_text(secret_value)
    for name, attempt in attempts.items():
        result = evaluate(security.FRAMEWORK, _candidate(tmp_path, attempt))
        assert _outcome(result) in refusals, name
        assert secret_value not in str(result.artifacts), name
    assert not (tmp_path / "written").exists() and secret.read_text() == secret_value
    assert (entry / "monitor.npy").read_bytes() == cache_before
    assert security.DEVICE != "cpu" or not list(Path("/dev/shm").glob("harness-test-*"))


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


@pytest.mark.parametrize("device, layers, abi, reachable", [
    ("cuda", confine.Layers(True, True, root_absent="cuda fails under it (test)"), 7, True),
    ("cuda", confine.Layers(True, True, root=True), 7, False),
    ("cuda", confine.Layers(True, True, root_absent="cuda fails under it (test)"), confine.RESOLVE_UNIX_ABI, False),
    ("cuda", confine.Layers(False, True, files_absent="cuda fails under it (test)", root=True), 7, False),
    ("cpu", confine.Layers(True, True, root_absent="no private root (test)"), 7, False),
    ("cpu", confine.Layers(True, False, seccomp_absent="no seccomp filter (test)", root_absent="none (test)"), 7, True),
])
def test_layers_that_leave_the_host_s_sockets_in_reach_are_not_a_confinement(monkeypatch, device, layers, abi,
                                                                               reachable):
    """A sandbox that may open Unix sockets (on CUDA, or without the seccomp filter) reaches the host's services by
    their socket's path unless a private root holds none of them or Landlock restricts connecting (ABI 9): a profile
    that requires confinement refuses such a machine, saying why."""
    monkeypatch.setattr(confine, "unavailable_reason", lambda device="cpu": None)
    monkeypatch.setattr(confine, "device_layers", lambda device="cpu": layers)
    monkeypatch.setattr(confine, "landlock_abi", lambda: abi)
    reason = confine.missing_confinement(device)
    assert (reason is not None) == reachable
    if reachable:
        assert reason.startswith(f"a sandbox on {device} here could connect to the host's services (")
        assert f"Landlock ABI {confine.RESOLVE_UNIX_ABI}" in reason
        assert confine.NOT_ENOUGH in confine.layers_here(device)


def test_a_profile_that_requires_confinement_refuses_layers_that_leave_the_host_s_sockets_in_reach(smoke_env,
                                                                                                    monkeypatch):
    """Refused before anything runs, by the evaluator and by the executor (a Ray worker's layers may differ)."""
    monkeypatch.setattr(confine, "unavailable_reason", lambda device="cpu": None)
    monkeypatch.setattr(confine, "host_services_reason",
                        lambda device="cpu": "a sandbox on cpu here could connect to the host's services (test)")
    monkeypatch.delenv(ALLOW_UNCONFINED_ENV, raising=False)
    profile = dataclasses.replace(get_profile(), requires_confinement=True)
    with pytest.raises(ConfigError, match=f"connect to the host's services .test.. A kernel with Landlock ABI 9.*"
                                          f"{ALLOW_UNCONFINED_ENV}=1"):
        prepare(security.FRAMEWORK, profile)
    run = executor.run_sandbox_here("evaluate", {"profile": "pilot", "confinement": "required"}, 60.0, 4096)
    assert run.outcome == "infrastructure" and "host's services" in run.error and ALLOW_UNCONFINED_ENV in run.error


def _confinement_recorded_when_opted_in(tmp_path, monkeypatch) -> str:
    """What the ledger row of the seed's evaluation records, under a profile that requires confinement, opted out."""
    monkeypatch.setenv(ALLOW_UNCONFINED_ENV, "1")
    profile = dataclasses.replace(get_profile(), requires_confinement=True)
    path = tmp_path / "seed.py"
    path.write_text(security.TRAINED_SEED)
    result = evaluate(security.FRAMEWORK, str(path), profile=profile)
    assert result.artifacts["reason"] == "ok", result.artifacts.get("message")
    row = next(r for r in ledger.evaluations() if r["id"] == int(result.artifacts["ledger_row"]))
    return row["execution"]["confinement"]


@needs_confinement
def test_opting_in_to_layers_that_leave_the_host_s_sockets_in_reach_runs_confined(smoke_env, tmp_path, monkeypatch):
    """The opt-in takes what the machine has: the sandbox still runs in its namespaces and layers, and the ledger row
    says what they leave in reach."""
    services = "a sandbox on cpu here could connect to the host's services (test)"
    monkeypatch.setattr(confine, "host_services_reason", lambda device="cpu": services)
    recorded = _confinement_recorded_when_opted_in(tmp_path, monkeypatch)
    assert recorded.startswith(confine.LAYERS) and recorded.endswith(f". {confine.NOT_ENOUGH}: {services}")


def test_opting_out_runs_unconfined_and_records_it(smoke_env, tmp_path, monkeypatch):
    monkeypatch.setattr(confine, "unavailable_reason", lambda device="cpu": "user namespaces are off (test)")
    assert _confinement_recorded_when_opted_in(tmp_path, monkeypatch) == "none: user namespaces are off (test)"


@needs_confinement
def test_the_launcher_runs_its_command_as_process_1_with_no_network():
    code = ("import os, socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=5)\n"
            "except OSError as e:\n    print(os.getpid(), [n for _, n in socket.if_nameindex()], e.errno)")
    out = subprocess.run(confine.wrap([sys.executable, "-c", code]), capture_output=True, text=True, timeout=60)
    assert out.stdout.split(maxsplit=1)[0] == "1", out.stderr
    assert out.stdout.strip() == f"1 ['lo'] {errno.ENETUNREACH}"


# Imports the package as a process started in a checkout that was never installed finds it: through the folder above
# the package (the finders an editable install adds are taken out first), then lists that folder.
CHECKOUT_IMPORT = """
import json, os, sys
sys.meta_path[:] = [finder for finder in sys.meta_path if "editable" not in repr(finder).lower()]
try:
    import harness.sandbox.entry
    print(os.path.realpath(harness.__file__))
except ImportError as e:
    print("ImportError:", e)
try:
    print(json.dumps(os.listdir(sys.argv[1])))
except OSError as e:
    print(os.strerror(e.errno))
folder = os.environ["PYTHONPATH"].split(os.pathsep)[0]
for change in (lambda: os.unlink(os.path.join(folder, "harness")), lambda: os.symlink("/", os.path.join(folder, "x")),
               lambda: os.rename(os.path.join(folder, "harness"), os.path.join(folder, "y"))):
    try:
        change()
        print("changed")
    except OSError as e:
        print(os.strerror(e.errno))
"""
CPU_LAYERS = confine.device_layers("cpu") if confine.unavailable_reason() is None else None


@needs_confinement
@pytest.mark.parametrize("layer", ["landlock", "private_root"])
def test_a_sandbox_imports_the_package_the_evaluator_runs_even_from_a_checkout_it_may_not_list(tmp_path, layer):
    """Python finds a package on a path entry by listing that folder, and a sandbox may not list a checkout (the
    source tree beyond the package is not its to see): a package found only through the checkout, as when the
    evaluator runs from one without installing it, could not be imported in any sandbox under Landlock. Every
    sandbox's path starts with a folder that holds only a link to the package (``confine.import_folder``); the
    checkout stays out of reach."""
    if not (CPU_LAYERS and (CPU_LAYERS.files if layer == "landlock" else CPU_LAYERS.root)):
        pytest.skip(f"no {layer} here")
    checkout = Path(confine.__file__).resolve().parents[2]
    rules = confine.file_rules(tmp_path)

    def run(env):
        cmd = confine.wrap([sys.executable, "-c", CHECKOUT_IMPORT, str(checkout)], rules, False, "cpu",
                           landlock=layer == "landlock", private_root=layer == "private_root")
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=checkout)
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    env = executor.sandbox_environment({"PYTHONPATH": str(checkout)})
    imported, listed, *changes = run(env)
    assert imported == str(checkout / "harness" / "__init__.py")
    # The folder is read, never changed: the next sandbox, and the launcher and scorer, import through it.
    assert "changed" not in changes and len(changes) == 3, changes
    assert confine._intact(env["PYTHONPATH"].split(os.pathsep)[0], str(checkout / "harness"))
    # Not listed under Landlock; under the private root alone, only what the rules bind there is.
    if layer == "landlock":
        assert listed == "Permission denied"
    else:
        assert set(json.loads(listed)) <= {"harness", "initial_programs"}
    if layer == "landlock":  # the same without the folder: what a sandbox got before it
        imported, listed, *_ = run({"PYTHONPATH": str(checkout)})
        assert imported.startswith("ImportError") and listed == "Permission denied"


# Makes the import folder, then forks a child that makes its own and exits (running the exit handlers it inherited).
IMPORT_FOLDER_FORK = """
import json, os, sys
from harness.trusted import confine
parent = confine.import_folder()
pid = os.fork()
if pid == 0:
    print(json.dumps({"child": confine.import_folder()}), flush=True)
    sys.exit(0)
os.waitpid(pid, 0)
# A worker as OpenEvolve's process pool starts them: it ends with os._exit, past atexit's handlers.
import multiprocessing
receive, send = multiprocessing.get_context("fork").Pipe(duplex=False)
worker = multiprocessing.get_context("fork").Process(target=lambda: send.send(confine.import_folder()))
worker.start()
worker.join()
print(json.dumps({"worker": receive.recv()}))
print(json.dumps({"parent": parent, "link": os.readlink(os.path.join(parent, "harness")), "entries": os.listdir(parent),
                  "parent_kept": os.path.isdir(parent)}))
"""


def test_the_import_folder_is_a_process_s_own_and_goes_with_it(tmp_path):
    """Made once per process, in its temporary folder, holding only the link to the package; a forked child makes
    its own, and its exit removes neither the parent's nor leaves its own (nor does a worker of multiprocessing's,
    which ends past atexit's handlers); the parent's goes when the parent exits."""
    out = subprocess.run([sys.executable, "-c", IMPORT_FOLDER_FORK], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TMPDIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    seen = {k: v for line in out.stdout.splitlines() for k, v in json.loads(line).items()}
    assert len({seen["child"], seen["worker"], seen["parent"]}) == 3 and Path(seen["parent"]).parent == tmp_path
    assert not Path(seen["worker"]).exists()
    assert seen["link"] == str(Path(confine.__file__).resolve().parents[1]) and seen["entries"] == ["harness"]
    assert seen["parent_kept"] and not Path(seen["child"]).exists() and not Path(seen["parent"]).exists()


def test_an_import_folder_that_is_no_longer_intact_is_made_again(monkeypatch, tmp_path):
    """A temporary folder's name is free to take once the folder is gone (a cleaner of /tmp), and a folder whose mode
    lets others write it is not the one made: either way the next sandbox gets a new one."""
    monkeypatch.setattr(confine, "_import_folder", None)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    first = confine.import_folder()
    assert confine.import_folder() == first
    os.chmod(first, 0o777)
    second = confine.import_folder()
    assert second != first and confine._intact(second, str(Path(confine.__file__).resolve().parents[1]))
    os.unlink(os.path.join(second, "harness"))
    os.rmdir(second)
    assert confine.import_folder() not in (first, second)


def test_an_import_folder_that_cannot_be_made_is_the_harness_not_the_program(smoke_env, monkeypatch, tmp_path):
    """The link cannot be made (here: refused): the evaluation is ``infrastructure`` saying why, and the folder made
    for it is not left behind."""
    prepared = prepare(security.FRAMEWORK)
    monkeypatch.setattr(confine, "_import_folder", None)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def refused(*args):
        raise PermissionError(errno.EPERM, "refused (test)")

    monkeypatch.setattr(confine.os, "symlink", refused)
    request = sandbox_request(security.FRAMEWORK, prepared["profile"], prepared["ledger"], source=security.SEED)
    run = executor.run_sandbox_here("evaluate", request, 120.0, 8192)
    assert run.outcome == "infrastructure" and "cannot link the package" in run.error, (run.outcome, run.error)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(confine.IMPORT_FOLDER_PREFIX)]


def test_an_evaluation_whose_folders_a_sandbox_could_write_is_the_harness_not_the_program(smoke_env, monkeypatch):
    """Where the folder rules refuse (``UnsafeFolders``, here a write root over the temporary folder), no sandbox
    starts: the evaluation is ``infrastructure`` with the rules' reason."""
    prepared = prepare(security.FRAMEWORK)
    rules = confine.file_rules
    monkeypatch.setattr(confine, "file_rules", lambda run_dir, **kw: rules(run_dir, **{
        **kw, "writes": [*kw.get("writes", ()), os.path.dirname(str(run_dir))]}))
    started = []
    monkeypatch.setattr(executor, "start_limited", lambda *a, **k: started.append(a))
    request = sandbox_request(security.FRAMEWORK, prepared["profile"], prepared["ledger"], source=security.SEED)
    run = executor.run_sandbox_here("evaluate", request, 120.0, 8192)
    assert run.outcome == "infrastructure" and "lies beneath" in run.error, (run.outcome, run.error)
    assert "which a sandbox on cpu may write: set TMPDIR" in run.error and not started


def test_no_sandbox_may_write_where_the_trusted_side_keeps_its_folders(tmp_path):
    """The package link and the folder where the run folders are made (the other sandboxes', the scorer's) must lie
    beneath no root a sandbox writes but its own run folder: a temporary folder in ``/dev/shm``, which a sandbox on
    CUDA writes, would let a program replace what the next launcher imports. Refused, saying what to change."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert str(run_dir) in confine.file_rules(run_dir)[1]
    with pytest.raises(confine.UnsafeFolders, match="the temporary folder, where every run folder is made.*TMPDIR"):
        confine.file_rules(run_dir, writes=[tmp_path])
    with pytest.raises(confine.UnsafeFolders, match="import the package from"):
        confine.file_rules(run_dir, writes=[os.path.dirname(confine.import_folder())])


# Looks up a System V shared-memory segment by its key: "found", or the error.
IPC_PROBE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
print("found" if libc.shmget(int(sys.argv[1]), 0, 0) >= 0 else os.strerror(ctypes.get_errno()))
"""


@needs_confinement
def test_the_sandbox_sees_none_of_the_hosts_ipc_objects():
    """A segment of the user's (an X server's shared memory, a database's) is found by key from outside; from a
    sandbox, in an IPC namespace of its own, it does not exist."""
    import ctypes
    import secrets as random_source

    libc = ctypes.CDLL(None, use_errno=True)
    key = random_source.randbelow(2**30) + 1
    segment = libc.shmget(key, 4096, 0o1600)  # IPC_CREAT | 0600
    assert segment >= 0, os.strerror(ctypes.get_errno())
    try:
        def look(cmd):
            out = subprocess.run([*cmd, sys.executable, "-c", IPC_PROBE, str(key)], capture_output=True, text=True,
                                 timeout=60)
            return out.stdout.strip() or out.stderr[-500:]

        assert look([]) == "found"
        assert look(confine.wrap([])) == "No such file or directory"
    finally:
        libc.shmctl(segment, 0, None)  # IPC_RMID


# A child, with or without the Landlock ruleset, signals its parent (signal 0: the permission check alone) and
# connects to the parent's abstract Unix socket; the parent then counts the connections that reached it.
SCOPES_PROBE = """
import os, socket, sys
from harness.trusted import confine
name = b"\\0harness-scopes-" + str(os.getpid()).encode()
server = socket.socket(socket.AF_UNIX)
server.bind(name)
server.listen()
r, w = os.pipe()
if os.fork() == 0:
    if sys.argv[1] == "ruleset":
        confine.apply_landlock(["/"], ["/dev/null"])
    seen = []
    for what, do in (("signal", lambda: os.kill(os.getppid(), 0)),
                     ("socket", lambda: socket.socket(socket.AF_UNIX).connect(name))):
        try:
            do()
            seen.append(what + " succeeded")
        except OSError as e:
            seen.append(what + " " + os.strerror(e.errno))
    os.write(w, ", ".join(seen).encode())
    os._exit(0)
os.close(w)
os.wait()
server.setblocking(False)
reached = 0
while True:
    try:
        server.accept()
        reached += 1
    except BlockingIOError:
        break
print(os.read(r, 200).decode() + f"; reached {reached}")
"""


@pytest.mark.skipif(confine.landlock_abi() < confine.SCOPES_ABI,
                    reason=f"Landlock ABI {confine.landlock_abi()} here: the scopes need ABI {confine.SCOPES_ABI}")
def test_a_landlocked_process_can_neither_signal_nor_connect_outside_its_ruleset():
    def probe(mode):
        out = subprocess.run([sys.executable, "-c", SCOPES_PROBE, mode], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert probe("none") == "signal succeeded, socket succeeded; reached 1"
    assert probe("ruleset") == "signal Operation not permitted, socket Operation not permitted; reached 0"


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


# Stand-ins for a GPU driver's needs, run in the launcher as ``confine.CUDA_CHECK`` is: an internet socket (refused by
# the seccomp filter) and a write outside the run folder (refused by Landlock).
NEEDS_A_SOCKET = "import socket; socket.socket(socket.AF_INET).close()"
NEEDS_A_WRITE = "open({path!r}, 'w').close()"


@needs_landlock
@pytest.mark.skipif(not confine.seccomp_supported(), reason="no seccomp filter for this machine")
@pytest.mark.parametrize("needs, layers", [
    ((), (True, True, True)),
    ((NEEDS_A_SOCKET,), (True, False, True)),
    ((NEEDS_A_WRITE,), (False, True, False)),
    ((NEEDS_A_SOCKET, NEEDS_A_WRITE), (False, False, False)),
], ids=["nothing", "a_socket", "a_write", "both"])
def test_a_gpu_sandbox_gets_the_strongest_layers_its_driver_works_under(tmp_path, needs, layers):
    check = "\n".join(needs).format(path=str(tmp_path / "written")) or "pass"
    found = confine.layers_that_work(check, True, True, True, "cuda")
    assert (found.files, found.seccomp, found.root) == layers, found
    # A layer left out says why, with the error the check met under it.
    assert bool(found.files_absent) != found.files and bool(found.seccomp_absent) != found.seccomp
    assert bool(found.root_absent) != found.root
    if not found.files:
        assert "Landlock was not applied: cuda fails under it here" in found.files_absent
        assert "Permission denied" in found.files_absent
    if not found.seccomp:
        assert "Address family not supported by protocol" in found.seccomp_absent
    if not found.root:  # the folder written to is not in the private root at all
        assert "the private root was not applied: cuda fails under it here" in found.root_absent
        assert "No such file or directory" in found.root_absent


@needs_landlock
def test_only_the_layers_offered_are_tried(tmp_path):
    found = confine.layers_that_work(NEEDS_A_WRITE.format(path=str(tmp_path / "written")), True, False, False, "cuda")
    assert (found.files, found.seccomp, found.root) == (False, False, False)
    assert found.seccomp_absent == "no seccomp filter for this machine" and "Permission denied" in found.files_absent
    assert found.root_absent == "no private root on this system"


@needs_landlock
def test_a_gpu_sandbox_may_write_the_gpu_device_files_and_nothing_beside_them(tmp_path, monkeypatch):
    """The device files (stand-ins here: plain files) are write roots of a sandbox on CUDA only, and a rule for a file
    gives that file alone."""
    devices = tmp_path / "dev"
    devices.mkdir()
    for name in ("nvidia0", "nvidiactl", "other"):
        (devices / name).write_text("")
    monkeypatch.setattr(confine, "gpu_device_files", lambda: [str(devices / "nvidia0"), str(devices / "nvidiactl")])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cuda = confine.file_rules(run_dir, device="cuda")
    assert {str(devices / "nvidia0"), str(devices / "nvidiactl")} <= set(cuda[1])
    assert not any(path.startswith(str(devices)) for path in confine.file_rules(run_dir)[1])
    code = ("import errno\nfor name in ('nvidia0', 'nvidiactl', 'other'):\n    try:\n"
            f"        open({str(devices)!r} + '/' + name, 'r+').write('x')\n        print(name, 'ok')\n"
            "    except OSError as e:\n        print(name, errno.errorcode[e.errno])")
    out = subprocess.run(confine.wrap([sys.executable, "-c", code], cuda), capture_output=True, text=True, timeout=60)
    assert out.stdout.split("\n")[:3] == ["nvidia0 ok", "nvidiactl ok", "other EACCES"], out.stderr


@needs_landlock
@pytest.mark.skipif(not os.path.isdir(confine.CUDA_SHARED_MEMORY), reason="no /dev/shm here")
def test_a_gpu_sandbox_without_a_private_root_writes_a_dev_shm_of_its_own(tmp_path):
    """On CUDA a sandbox may write /dev/shm, which the driver uses; under Landlock alone it gets one of its own, in
    which it finds nothing of what the host's processes share there, leaves nothing behind, and which it cannot
    unmount to uncover the host's (as root, Landlock is what refuses the unmount; for another user, the user
    namespace already does)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    host_file = Path(confine.CUDA_SHARED_MEMORY) / f"harness-test-host-{os.getpid()}"
    written = Path(confine.CUDA_SHARED_MEMORY) / f"harness-test-sandbox-{os.getpid()}"
    code = ("import ctypes, os, sys\nprint(os.path.exists(sys.argv[1]))\nopen(sys.argv[2], 'w').write('x')\n"
            "print(os.path.exists(sys.argv[2]))\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "print(libc.umount2(b'/dev/shm', 2) == 0)\nprint(os.path.exists(sys.argv[1]))")
    host_file.write_text("host")
    try:
        out = subprocess.run(confine.wrap([sys.executable, "-c", code, str(host_file), str(written)],
                                          confine.file_rules(run_dir, device="cuda"), device="cuda"),
                             capture_output=True, text=True, timeout=60)
        assert out.stdout.split() == ["False", "True", "False", "False"], out.stderr
        assert not written.exists() and host_file.read_text() == "host"
    finally:
        host_file.unlink(missing_ok=True)
        written.unlink(missing_ok=True)


@needs_landlock
@pytest.mark.skipif(not os.path.isdir(confine.CUDA_SHARED_MEMORY), reason="no /dev/shm here")
def test_where_no_dev_shm_of_its_own_can_be_made_a_sandbox_may_not_write_the_host_s(tmp_path):
    """Where the kernel refuses the sandbox's own /dev/shm (here: made to fail), the launcher says so and takes
    /dev/shm out of its write roots: Landlock still applies, and the host's is not written."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    written = Path(confine.CUDA_SHARED_MEMORY) / f"harness-test-refused-{os.getpid()}"
    cmd = confine.wrap([sys.executable, "-c", "import sys\ntry:\n    open(sys.argv[1], 'w')\n    print('written')\n"
                        "except PermissionError:\n    print('refused')", str(written)],
                       confine.file_rules(run_dir, device="cuda"), device="cuda")
    launcher = cmd.index("harness.trusted.confine")
    failing = ("import sys\nfrom harness.trusted import confine, private_root\n"
               "def refused():\n    raise OSError(1, 'private root: mount tmpfs on /dev/shm: refused (test)')\n"
               "private_root.private_shared_memory = refused\nsys.exit(confine.main(sys.argv[1:]))")
    try:
        out = subprocess.run([sys.executable, "-c", failing, *cmd[launcher + 1:]], capture_output=True, text=True,
                             timeout=60)
        assert out.stdout.split() == ["refused"], out.stderr
        assert f"{confine.NOTE_PREFIX}no /dev/shm of its own here (" in out.stderr and "refused (test)" in out.stderr
        assert not written.exists()
    finally:
        written.unlink(missing_ok=True)


def test_a_ruleset_restricts_connecting_to_unix_sockets_where_the_kernel_knows_the_right():
    """Connecting to a Unix socket by its path is a Landlock right from ABI 9; a ruleset names it from there on (and
    never before: the kernel would refuse the ruleset, and the sandbox would not start)."""
    assert all(not confine.handled_rights(abi) & confine.FS_RESOLVE_UNIX for abi in range(1, confine.RESOLVE_UNIX_ABI))
    assert confine.handled_rights(confine.RESOLVE_UNIX_ABI) & confine.FS_RESOLVE_UNIX
    assert not confine.FS_FILE_RIGHTS & confine.FS_RESOLVE_UNIX
    # Of the folders a sandbox reads, it may connect only to the GPU driver's daemon there.
    assert confine.read_rights(confine.DRIVER_SERVICE_FOLDER) == confine.FS_READ | confine.FS_RESOLVE_UNIX
    assert confine.read_rights("/usr") == confine.FS_READ and confine.read_rights("/dev") == confine.FS_READ_DIR


@needs_landlock
def test_a_sandbox_that_may_open_unix_sockets_connects_to_the_host_s_only_from_landlock_abi_9(tmp_path):
    """On CUDA a sandbox may open Unix sockets, which the driver may need. From Landlock ABI 9 it reaches a service
    of the host listening outside its rules (a session bus, a container engine's) no more than a file there; before,
    it does (which ``confine.missing_confinement`` refuses for pilot and full where no private root applies). One in
    its run folder it reaches either way."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    servers = []
    for path in (tmp_path / "host.sock", run_dir / "own.sock"):
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen(1)
        servers.append(server)
    code = ("import errno, socket, sys\nfor path in sys.argv[1:]:\n    s = socket.socket(socket.AF_UNIX)\n    try:\n"
            "        s.connect(path)\n        print('connected')\n    except OSError as e:\n"
            "        print(errno.errorcode[e.errno])")
    try:
        out = subprocess.run(confine.wrap([sys.executable, "-c", code, str(tmp_path / "host.sock"),
                                           str(run_dir / "own.sock")], confine.file_rules(run_dir, device="cuda"),
                                          device="cuda"),
                             capture_output=True, text=True, timeout=60)
    finally:
        for server in servers:
            server.close()
    host = "EACCES" if confine.landlock_abi() >= confine.RESOLVE_UNIX_ABI else "connected"
    assert out.stdout.splitlines() == [host, "connected"], out.stderr


def _devices_that_open_here() -> list[str]:
    """Devices this process may open that no sandbox is given: the pseudo-terminal multiplexer, which anyone may
    open, and a raw disk where this user may read one (root)."""
    disks = sorted(str(p) for p in Path("/dev").iterdir() if p.is_block_device())
    found = []
    for path in ["/dev/ptmx", *disks]:
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_NOCTTY))
            found.append(path)
        except OSError:
            pass
    return found[:2]


@needs_landlock
def test_a_gpu_sandbox_lists_the_device_folder_and_opens_only_the_devices_named(tmp_path, monkeypatch):
    """On CUDA the device folder is a read root, since what a driver looks for there is not known beforehand, but it
    only lists it: a device opens where it is named alone, so neither a terminal nor a raw disk (root) that opens
    here opens in the sandbox."""
    monkeypatch.setattr(confine, "gpu_device_files", lambda: [])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rules = confine.file_rules(run_dir, device="cuda")
    assert confine.DEVICE_FOLDER in rules[0] and confine.DEVICE_FOLDER not in confine.file_rules(run_dir)[0]
    unnamed = _devices_that_open_here()
    assert "/dev/ptmx" in unnamed, "the control: the pseudo-terminal multiplexer opens outside a sandbox"
    code = ("import errno, os, sys\nprint('listed', 'null' in os.listdir('/dev'))\n"
            "print('urandom', len(open('/dev/urandom', 'rb').read(4)))\nfor path in sys.argv[1:]:\n    try:\n"
            "        os.close(os.open(path, os.O_RDONLY | os.O_NOCTTY))\n        print(path, 'opened')\n"
            "    except OSError as e:\n        print(path, errno.errorcode[e.errno])")
    out = subprocess.run(confine.wrap([sys.executable, "-c", code, *unnamed], rules, device="cuda"),
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines() == ["listed True", "urandom 4", *(f"{path} EACCES" for path in unnamed)], out.stderr


@needs_landlock
@pytest.mark.skipif(not confine.seccomp_supported(), reason="no seccomp filter for this machine")
def test_the_executor_confines_a_gpu_sandbox_with_the_layers_found(tmp_path, monkeypatch):
    """The wiring, with a driver that needs an internet socket standing in for CUDA (none here): a sandbox on CUDA
    gets Landlock, with the GPU device files among its write roots, and no seccomp filter."""
    monkeypatch.setattr(confine, "CUDA_CHECK", NEEDS_A_SOCKET)
    monkeypatch.setattr(confine, "unavailable_reason", lambda device="cpu": None)
    devices = tmp_path / "dev"
    devices.mkdir()
    (devices / "nvidia0").write_text("")
    monkeypatch.setattr(confine, "gpu_device_files", lambda: [str(devices / "nvidia0")])
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    _fresh_layers_cache(monkeypatch)
    request = {"device": "cuda", "data_source": "synthetic"}
    files = executor.file_confinement(request, tmp_path)
    assert files["landlock"] and files["rules"] is not None and str(devices / "nvidia0") in files["rules"][1]
    assert not executor.seccomp_applies(request)
    assert "the seccomp filter was not applied: cuda fails under it here" in confine.layers_here("cuda")
    cpu = executor.file_confinement({**request, "device": "cpu"}, tmp_path)
    assert cpu["rules"][1] == confine.file_rules(tmp_path)[1]


def _fresh_layers_cache(monkeypatch):
    """``confine.device_layers`` with an empty cache of its own for this test; the module's, filled at import for
    the tests' device, comes back afterwards."""
    monkeypatch.setattr(confine, "device_layers", functools.lru_cache(maxsize=2)(confine.device_layers.__wrapped__))


@needs_landlock
def test_a_check_that_fails_without_any_layer_too_concludes_nothing(tmp_path, monkeypatch):
    """A GPU that is busy or out of memory fails the check under every layer and without them: that says nothing about
    the layers, so none is dropped, nothing is cached, and the evaluation is an infrastructure failure."""
    broken = "import sys; sys.exit('confine: the device is busy')"
    with pytest.raises(confine.LayersUnknown, match="even without Landlock, seccomp and the private root.*the "
                                                    "device is busy"):
        confine.layers_that_work(broken, True, confine.seccomp_supported(), True, "cuda")
    monkeypatch.setattr(confine, "CUDA_CHECK", broken)
    monkeypatch.setattr(confine, "unavailable_reason", lambda device="cpu": None)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    _fresh_layers_cache(monkeypatch)
    run = executor.run_sandbox_here("evaluate", {"profile": "smoke", "device": "cuda"}, 60.0, 4096)
    assert run.outcome == "infrastructure" and "which layers cuda works under is not known" in run.error
    assert confine.device_layers.cache_info().currsize == 0
    assert "Landlock, seccomp and the private root: not known" in confine.layers_here("cuda")


def test_only_character_devices_count_as_gpu_device_files(tmp_path, monkeypatch):
    (tmp_path / "nvidia-caps").mkdir()
    (tmp_path / "nvidia0").write_text("")
    monkeypatch.setattr(confine, "GPU_DEVICE_FILES", (str(tmp_path / "nvidia*"), "/dev/nul*"))
    assert confine.gpu_device_files() == ["/dev/null"]  # a character device; the folder and the plain file are not


def test_a_cpu_sandbox_gets_every_layer_the_kernel_offers():
    layers = confine.device_layers("cpu")
    assert (layers.files, layers.seccomp) == (confine.landlock_abi() > 0, confine.seccomp_supported())
    # The private root wherever the namespaces can be made (a system whose /proc is partly masked refuses a fresh
    # one; then the reason is kept).
    if confine.unavailable_reason() is None:
        assert layers.root or "proc" in layers.root_absent, layers.root_absent


def test_the_layers_command_says_what_a_sandbox_gets_here():
    out = subprocess.run([sys.executable, "-m", "harness.trusted.confine", "--layers"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0
    if UNAVAILABLE:
        assert out.stdout.startswith("none: ")
    else:
        abi = confine.landlock_abi()
        scopes = f"; {confine.SCOPES_LAYER}" if abi >= 6 else f" (no {confine.SCOPES_LAYER}: they need ABI 6)"
        files = f"; {confine.FILES_LAYER} (ABI {abi}){scopes}" if abi else " (files: the static policy only; no Landlock)"
        seccomp = f"; {confine.SECCOMP_LAYER}" if confine.seccomp_supported() else "; no seccomp filter for this machine"
        layers = confine.device_layers("cpu")
        root = f"; {confine.ROOT_LAYER}" if layers.root else f" ({layers.root_absent})"
        if layers.root and not abi:
            files = " (no Landlock files: no Landlock)"
        assert out.stdout.strip() == confine.LAYERS + root + files + seccomp


@sandbox_seccomp
def test_an_evaluated_program_cannot_reach_the_kernel_keyrings_or_make_a_namespace(smoke_env, tmp_path, monkeypatch):
    """Past the static policy, through ctypes: the user's keyring (which can hold credentials) and a new user
    namespace are refused by the seccomp filter, in the sandbox the evaluator starts."""
    from harness.trusted import seccomp

    security.past_the_static_policy(monkeypatch)
    numbers = seccomp.numbers()
    for name, args in (("keyctl", "0, -4, 0"), ("unshare", "0x10000000")):
        attempt = (f"ct = os_.sys.modules['ctypes']; lib = ct.CDLL(None, use_errno=True); "
                   f"r = lib.syscall({numbers[name]}, {args}); "
                   "(_ for _ in ()).throw(OSError(ct.get_errno(), 'refused')) if r < 0 else None")
        result = evaluate(security.FRAMEWORK, _candidate(tmp_path, attempt))
        assert _outcome(result) == "Operation not permitted", name


# Run in the sandbox's place by the seccomp tests: each call's errno name, or "ok".
SYSCALL_PROBE = """
import ctypes, errno, json, socket, subprocess, sys, threading
from harness.trusted.seccomp import numbers
nr = numbers()
libc = ctypes.CDLL(None, use_errno=True)
out = {}
def call(name, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr[name]), *[ctypes.c_long(a) for a in args])
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
out["keyctl"] = call("keyctl", 0, -4, 0)  # KEYCTL_GET_KEYRING_ID of the user keyring
out["ptrace"] = call("ptrace", 16, 999999, 0, 0)  # PTRACE_ATTACH to no process: ESRCH unless refused first
out["unshare_user"] = call("unshare", 0x10000000)
out["io_uring_setup"] = call("io_uring_setup", 1, 0)
out["clone3"] = call("clone3", 0, 0)
out["shmget"] = call("shmget", 0, 4096, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600: gone with the sandbox's namespace
out["mq_open"] = call("mq_open", 0, 0, 0, 0)  # no name: EFAULT unless refused first
out["memfd_create"] = call("memfd_create", 0, 0)  # no name: EFAULT unless refused first
for family in ("AF_INET", "AF_INET6", "AF_UNIX"):
    try:
        socket.socket(getattr(socket, family)).close()
        out[family] = "ok"
    except OSError as e:
        out[family] = errno.errorcode[e.errno]
out["subprocess"] = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True).stdout.strip()
seen = []
t = threading.Thread(target=seen.append, args=("thread",)); t.start(); t.join()
out["thread"] = seen[0]
out["status"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp:")][0]
print(json.dumps(out))
"""


@needs_confinement
@pytest.mark.skipif(not confine.seccomp_supported(), reason="no seccomp filter for this machine")
def test_seccomp_refuses_what_a_training_never_needs_and_nothing_it_does():
    def probe(seccomp: bool, device: str = "cpu") -> dict:
        out = subprocess.run(confine.wrap([sys.executable, "-c", SYSCALL_PROBE], seccomp=seccomp, device=device),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)

    filtered, plain = probe(True, "cuda"), probe(False)
    assert filtered == {"keyctl": "EPERM", "ptrace": "EPERM", "unshare_user": "EPERM", "io_uring_setup": "EPERM",
                        "clone3": "ENOSYS", "shmget": "EPERM", "mq_open": "EPERM", "memfd_create": "EFAULT",
                        "AF_INET": "EAFNOSUPPORT", "AF_INET6": "EAFNOSUPPORT", "AF_UNIX": "ok", "subprocess": "42",
                        "thread": "thread", "status": "2"}, filtered
    # On the CPU no socket at all and no memory file (which the memory cap cannot see); the rest as on CUDA.
    assert probe(True, "cpu") == {**filtered, "AF_INET": "EPERM", "AF_INET6": "EPERM", "AF_UNIX": "EPERM",
                                  "memfd_create": "EPERM"}
    # Without the filter the same calls reach the kernel: the refusals above are the filter's.
    assert plain["status"] == "0" and plain["AF_INET"] == "ok" and plain["unshare_user"] == "ok", plain
    assert plain["ptrace"] == "ESRCH" and plain["clone3"] != "ENOSYS"
    assert plain["shmget"] == "ok" and plain["mq_open"] == "EFAULT" and plain["memfd_create"] == "EFAULT"
    assert plain["subprocess"] == "42"


@needs_confinement
def test_a_program_that_prints_the_launchers_failure_is_still_the_program(smoke_env, tmp_path, monkeypatch):
    """Past the static policy, a program whose log ends as the launcher's failure would (``confine: ...``) and that
    leaves no result crashed: only the launcher's own word, on a pipe the sandbox never holds, says it failed."""
    prepare(security.FRAMEWORK)
    security.past_the_static_policy(monkeypatch)
    line = b"confine: unshare refused: Operation not permitted"
    forged = line + b" " * (executor.STDERR_TAIL_CHARS - len(line))
    result = evaluate(security.FRAMEWORK, _candidate(tmp_path, f"os_.write(2, {forged!r}); os_._exit(1)"))
    assert result.artifacts["reason"] == "crash", result.artifacts["message"]


@needs_confinement
def test_a_launcher_that_cannot_start_the_sandbox_is_the_harness_not_the_program(smoke_env, monkeypatch):
    """The launcher's real failure (here the command it confines cannot be run) is ``infrastructure``, with the
    launcher's reason, said on its status pipe."""
    prepared = prepare(security.FRAMEWORK)
    wrap = confine.wrap
    monkeypatch.setattr(confine, "wrap", lambda cmd, *args, **kwargs: wrap(["/nonexistent/harness-test"], *args, **kwargs))
    request = sandbox_request(security.FRAMEWORK, prepared["profile"], prepared["ledger"], source=security.SEED)
    run = executor.run_sandbox_here("evaluate", request, 120.0, 8192)
    assert run.outcome == "infrastructure", (run.outcome, run.error, run.log)
    assert run.error.startswith(confine.FAILURE_PREFIX) and "/nonexistent/harness-test" in run.error, run.error


def test_the_private_roots_binds_follow_landlocks_rights(tmp_path):
    """A path's rights are those of every root it lies beneath, as under Landlock: a root inside a writable one is
    not bound again, nor a read root inside another; a write root inside a read root is bound writable over it.
    ``/proc`` is never bound, a missing path is left out, and a symbolic link is bound where it points."""
    from harness.trusted import private_root

    cache, other = tmp_path / "cache", tmp_path / "other"
    for folder in (cache / "tokens", cache / "scored", other / "run"):
        folder.mkdir(parents=True)
    (tmp_path / "link").symlink_to(other)
    assert private_root.plan([str(cache / "tokens")], [str(cache)]) == [(str(cache), True)]
    assert private_root.plan([str(cache), str(cache / "tokens")], []) == [(str(cache), False)]
    assert private_root.plan([str(other)], [str(other / "run")]) == [(str(other), False), (str(other / "run"), True)]
    assert private_root.plan(["/proc/self", str(tmp_path / "missing"), str(tmp_path / "link")], []) == \
        [(str(other), False)]
    # A link to a link: each hop is recreated in the root, so that the path as given resolves there.
    (tmp_path / "hop").symlink_to("link")
    assert private_root._links_on_the_way(str(tmp_path / "hop" / "run")) == [
        (str(tmp_path / "hop"), "link"), (str(tmp_path / "link"), str(other))]
    # A device file is bound by itself even inside a read root: every other bind is nodev.
    assert private_root.plan(["/dev", "/dev/null"], []) == [("/dev", False), ("/dev/null", False)]


@needs_confinement
@pytest.mark.skipif(not LAYERS.root, reason=f"no private root here: {LAYERS.root_absent}")
def test_the_private_root_is_locked_and_shows_no_host_process(tmp_path):
    """With a GPU sandbox's rules (all of ``/dev`` readable, ``/dev/shm`` writable) and without Landlock and seccomp,
    so that only the private root stands: from inside, no bind can be unmounted (to uncover what is beneath it) nor
    made writable again, not even from a further user namespace; ``/proc`` shows the sandbox's own processes only,
    the host's sysctls are read-only there and its key list is empty; the sandbox has a session keyring of its own;
    a device the rules do not name cannot be opened for writing (a read-only mount alone does not stop that), and
    one they name is written but cannot have its mode changed; what is not in the rules does not exist; and a write
    lands in the run folder and a ``/dev/shm`` of the sandbox's own only, never in the root itself, through the
    folder where the root was built either (the run folder is reached through a symbolic link here)."""
    real_run = tmp_path / "real-run"
    real_run.mkdir()
    run_dir = tmp_path / "run"
    run_dir.symlink_to(real_run)
    secret = tmp_path / "secret.txt"
    secret.write_text("sk-private")
    shm = f"/dev/shm/harness-test-{os.urandom(6).hex()}"
    device = next((d for d in ("/dev/kmsg", "/dev/loop-control", "/dev/vda", "/dev/sda") if os.path.exists(d)), None)
    node = tmp_path / "null-copy"  # a device the rules name, made here (root only) so that the host's stays untouched
    if os.geteuid() == 0:
        os.mknod(node, 0o644 | stat.S_IFCHR, os.makedev(1, 3))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    keyctl = seccomp.numbers()["keyctl"]
    session_here = libc.syscall(keyctl, 0, -3, 0)  # KEYCTL_GET_KEYRING_ID of the session keyring
    code = f"""
import ctypes, glob, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def tried(rc):
    return os.strerror(ctypes.get_errno()) if rc != 0 else "succeeded"
def opened(path, flags):
    try:
        os.close(os.open(path, flags))
        return "succeeded"
    except OSError as e:
        return e.strerror
def chmod(path):
    try:
        os.chmod(path, 0o600)
        return "succeeded"
    except OSError as e:
        return e.strerror
class Attr(ctypes.Structure):
    _fields_ = [("set", ctypes.c_uint64), ("clr", ctypes.c_uint64), ("prop", ctypes.c_uint64), ("ns", ctypes.c_uint64)]
clear = Attr(0, 1, 0, 0)
print("umount", tried(libc.umount2(b"/usr", 2)))
print("writable", tried(libc.syscall(442, -100, b"/usr", 0, ctypes.byref(clear), 32)))
print("remount", tried(libc.mount(None, b"/usr", None, ctypes.c_ulong(4096 | 32), None)))
print("processes", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
print("sysctl", opened("/proc/sys/kernel/core_pattern", os.O_WRONLY))
print("keys", repr(open("/proc/keys").read()))
print("session", libc.syscall({keyctl}, 0, -3, 0))
print("device", opened({device!r}, os.O_WRONLY) if {device!r} else "none here")
print("null", opened("/dev/null", os.O_WRONLY))
print("urandom", opened("/dev/urandom", os.O_RDONLY))
print("named", opened({str(node)!r}, os.O_WRONLY) if os.path.exists({str(node)!r}) else "none here")
print("named_mode", chmod({str(node)!r}) if os.path.exists({str(node)!r}) else "none here")
print("bpf", os.listdir("/sys/fs/bpf") if os.path.isdir("/sys/fs/bpf") else "none here")
print("secret", os.path.exists({str(secret)!r}), sorted(os.listdir({str(tmp_path)!r})))
built = glob.glob(os.environ["TMPDIR"] + "/harness-root-*")
for path in ({str(run_dir / 'ok')!r}, {shm!r}, "/usr/written", {str(tmp_path / 'written')!r}, "/written",
             built[0] + "/planted"):
    print("write", path, opened(path, os.O_WRONLY | os.O_CREAT))
print("planted", os.path.exists("/planted"))
print("nested", tried(libc.unshare(0x10000000 | 0x00020000)))
print("nested_remount", tried(libc.mount(None, b"/usr", None, ctypes.c_ulong(4096 | 32), None)))
print("nested_umount", tried(libc.umount2(b"/usr", 2)))
"""
    read, write = confine.file_rules(run_dir, device="cuda")
    try:
        out = subprocess.run(confine.wrap([sys.executable, "-c", code], (read, [*write, str(node)]), landlock=False,
                                          private_root=True),
                             capture_output=True, text=True, timeout=60, env={**os.environ, "TMPDIR": str(run_dir)})
        lines = [line.split(" ", 1) for line in out.stdout.splitlines()]
        found = {key: value for key, value in lines if key != "write"}
        writes = [value for key, value in lines if key == "write"]
        assert out.returncode == 0, out.stderr
        assert found["umount"] == "Invalid argument" and found["writable"] == "Operation not permitted"
        assert found["remount"] == "Operation not permitted"
        assert found["processes"] == "[1]"
        assert found["sysctl"] == "Read-only file system" and found["keys"] == "''"
        assert int(found["session"]) > 0 and int(found["session"]) != session_here
        assert found["device"] in ("Permission denied", "none here") and found["null"] == "succeeded"
        assert found["urandom"] == "succeeded"
        if os.geteuid() == 0:
            assert found["named"] == "succeeded" and found["named_mode"] == "Read-only file system"
            assert stat.S_IMODE(os.stat(node).st_mode) == stat.S_IMODE(0o644 & ~os.umask(os.umask(0)))
        if os.path.ismount("/sys/fs/bpf"):
            assert found["bpf"] == "[]"
        assert found["secret"] == "False ['null-copy', 'real-run', 'run']"  # folders above a root: empty ones
        assert writes[:5] == [f"{run_dir / 'ok'} succeeded", f"{shm} succeeded", "/usr/written Read-only file system",
                              f"{tmp_path / 'written'} Read-only file system", "/written Read-only file system"]
        assert writes[5].endswith("/planted succeeded") and found["planted"] == "False"
        assert found["nested"] == "succeeded"
        assert found["nested_remount"] == "Operation not permitted" and found["nested_umount"] == "Invalid argument"
        assert (real_run / "ok").exists() and not (tmp_path / "written").exists()
        assert not Path(shm).exists(), "the sandbox wrote the host's /dev/shm"
        assert not Path("/usr/written").exists() and not Path("/planted").exists()
        assert secret.read_text() == "sk-private"
        # The folder the root was built in is a plain folder of the run folder again: what was planted is there.
        assert [p.name for p in real_run.iterdir() if p.name != "ok"] == [Path(writes[5].split()[0]).parent.name]
    finally:
        Path(shm).unlink(missing_ok=True)

"""The security corpus (``tests/security.py``) through the real evaluator, and the sandbox's environment.

Each case asserts the rejection (score 0.0, the expected reason, a message) and that its side effect never
happened: no marker file, this process (the sandbox's parent) alive, the ledger's earlier rows unchanged.
"""

import json
import os
import uuid
from pathlib import Path

import pytest

import security
from harness.trusted import confine, executor, ledger, program
from harness.trusted.evaluate import evaluate, prepare, sandbox_request
from harness.trusted.policy import check_block, module_aliases
from harness.scaffold import ATTENTION_KWARGS

SECRET_ENV = "HARNESS_TEST_API_KEY"


def _static_report(source: str):
    parts = program.split(source)
    return check_block(parts.block, security.CLASS, ATTENTION_KWARGS, module_aliases(parts.head))


def _evaluated(tmp_path, source: str):
    """The evaluator's result for ``source``, written where a candidate's file is."""
    path = tmp_path / "candidate.py"
    path.write_text(source)
    return evaluate(security.FRAMEWORK, str(path))


def _calling_at_construction(preamble: str) -> str:
    """The corpus's attention with ``preamble`` (top-level code defining ``_payload()``) before its class, and
    ``_payload()`` called at the end of its ``__init__``: past the static policy, it runs from the gate's first
    construction on."""
    source = security.Attack("payload", "none", "pass", init="_payload()").source("unused", SECRET_ENV)
    return source.replace(f"class {security.CLASS}(nn.Module):", preamble + f"class {security.CLASS}(nn.Module):", 1)


def test_every_category_of_the_threat_model_has_a_case():
    assert {a.category for a in security.ATTACKS} >= {
        "commands", "files", "secrets", "network", "signals", "forging", "patching", "subclass", "frames",
        "scoring_split", "guards"}


def test_the_corpus_without_its_payloads_is_a_valid_program():
    clean = security.Attack("clean", "none", "pass").source("unused", SECRET_ENV)
    assert _static_report(clean).ok, _static_report(clean).violations


@pytest.mark.parametrize("attack", security.ATTACKS, ids=lambda a: a.name)
def test_attack_is_rejected_and_its_side_effect_never_happens(smoke_env, attack, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    secret = "sk-" + uuid.uuid4().hex
    monkeypatch.setenv(SECRET_ENV, secret)
    forged = {"reason": "ok", "combined_score": 7.5}
    if attack.category == "forging":  # the payload would move this over the sandbox's own result file
        marker.write_text(json.dumps(forged))
    path = tmp_path / "candidate.py"
    path.write_text(attack.source(str(marker), SECRET_ENV))
    before = ledger.evaluations()

    result = evaluate(security.FRAMEWORK, str(path))

    assert result.artifacts["reason"] == attack.reason, result.artifacts.get("message")
    assert result.metrics["combined_score"] == 0.0 and result.metrics["valid"] == 0.0
    assert result.artifacts["message"] and result.artifacts["hint"]
    if attack.category == "forging":
        assert json.loads(marker.read_text()) == forged, "the forged file was used"
    else:
        assert not marker.exists(), "the payload ran"
    assert secret not in json.dumps(result.artifacts)
    after = ledger.evaluations()
    assert after[:len(before)] == before and len(after) == len(before) + 1
    assert after[-1]["reason"] == attack.reason


def test_a_module_the_static_check_does_not_know_is_refused_before_the_program_runs(smoke_env, tmp_path, monkeypatch):
    """The static check reads a table written from one torch; the sandbox resolves every module attribute against the
    installed torch before the program runs, and refuses a module outside the allow-list. Here the table is one from
    a torch where ``torch.nn.utils.rnn`` is a function."""
    from harness.trusted import api_table, policy

    monkeypatch.setitem(policy.MODULE_MEMBERS, "torch.nn.utils", policy.MODULE_MEMBERS["torch.nn.utils"] | {"rnn"})
    monkeypatch.setitem(api_table.SUBMODULES, "torch.nn.utils", api_table.SUBMODULES["torch.nn.utils"] - {"rnn"})
    attack = security.Attack("unknown_module", "commands", 'torch.nn.utils.rnn(x)')
    source = attack.source("unused", SECRET_ENV)
    assert _static_report(source).ok, "pick a module the static check does not know"
    result = _evaluated(tmp_path, source)
    assert result.artifacts["reason"] == "policy"
    assert "torch.nn.utils.rnn is a module a block may not use" in result.artifacts["message"]


def test_a_module_or_a_class_is_used_as_such_and_never_held():
    """Past the static check, the sandbox resolves what each chain and imported name is: a module or a class (torch's
    own, which the static check cannot tell from a function) held in a variable or on self is refused; used as a
    class (called, tested, named in an annotation, its methods called) it is fine."""
    from harness.sandbox.loader import PolicyViolation, check_module_attributes

    def source(payload: str, preamble: str = "") -> str:
        return security.Attack("probe", "none", payload, preamble=preamble).source("unused", SECRET_ENV)

    check_module_attributes(source("assert isinstance(x, (torch.Tensor, nn.Parameter)) and type(x) is torch.Tensor\n"
                                   "y: torch.Tensor = torch.Tensor.softmax(x, -1)", preamble="from torch import Tensor\n"))
    for payload, preamble, fragment in [
        ("self.t = torch.Tensor", "", "torch.Tensor is a class"),
        ("held = Tensor", "from torch import Tensor\n", "torch.Tensor is a class"),
        ("layer = functools.partial(nn.LayerNorm, 4)", "import functools\n", "torch.nn.LayerNorm is a class"),
        ("m = torch.nn.functional", "", "the module torch.nn.functional may only be used as"),
    ]:
        with pytest.raises(PolicyViolation, match=fragment):
            check_module_attributes(source(payload, preamble))


def test_a_tensor_subclass_returned_past_the_static_check_is_refused(smoke_env, tmp_path):
    source = security.BY_NAME["return_a_parameter"].source("unused", SECRET_ENV)
    assert _static_report(source).ok
    result = _evaluated(tmp_path, source)
    assert result.artifacts["reason"] == "policy"
    assert "plain torch.Tensor, not Parameter" in result.artifacts["message"]


def test_the_sandbox_never_sees_the_callers_secrets(smoke_env, tmp_path, monkeypatch):
    """Code run in the sandbox process (here added to the frozen tail, past every static check) writes out the
    whole environment it sees: the caller's keys are not in it, what torch needs is."""
    prepared = prepare(security.FRAMEWORK)  # with a baseline in the request, the sandbox goes on to load the program
    secrets = {"OPENAI_API_KEY": "sk-" + uuid.uuid4().hex, "AWS_SECRET_ACCESS_KEY": uuid.uuid4().hex,
               "TORCH_HUB_TOKEN": uuid.uuid4().hex, "HARNESS_LEDGER": str(tmp_path / "ledger.sqlite")}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    shared_caches = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "TRITON_CACHE_DIR": str(tmp_path / "triton")}
    for name, value in shared_caches.items():
        monkeypatch.setenv(name, value)
    # The sandbox may write nowhere but its run folder: the environment comes out in the error it raises.
    source = security.SEED + "\nimport json, os\nraise RuntimeError('environment:' + json.dumps(dict(os.environ)))\n"
    request = sandbox_request(security.FRAMEWORK, prepared["profile"], prepared["ledger"], source=source)
    run = executor.run_sandbox_here("evaluate", request, 120.0, 8192)
    assert run.outcome == "exited" and run.result["reason"] == "crash", run.log
    seen = json.loads(run.result["message"].split("environment:", 1)[1])
    for name, value in secrets.items():
        assert name not in seen and value not in json.dumps(seen), name
    assert seen["OMP_NUM_THREADS"] == "1" and seen["PATH"] == os.environ["PATH"]
    assert seen["HARNESS_CACHE"] == os.environ["HARNESS_CACHE"]
    # Compilation caches shared between sandboxes would let one candidate leave a kernel for a later program to load.
    scratch = executor.scratch_environment(Path(seen["TMPDIR"]))
    assert {name: seen[name] for name in scratch} == scratch
    assert Path(seen["TMPDIR"]).parent.name.startswith("harness-sandbox-")
    assert all(seen[name] != value for name, value in shared_caches.items())


def test_the_sandbox_environment_is_an_allow_list():
    env = executor.sandbox_environment({
        "PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0", "TORCHINDUCTOR_CACHE_DIR": "/c", "LC_ALL": "C",
        "OPENAI_API_KEY": "k", "GITHUB_TOKEN": "t", "CUDA_AUTH_TOKEN": "t", "HARNESS_LEDGER": "/l",
        "HARNESS_GPU_CHECK_SECRET": "s", "RAY_ADDRESS": "auto", "SSH_AUTH_SOCK": "/s"}, PYTHONUNBUFFERED="1")
    assert env == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0", "TORCHINDUCTOR_CACHE_DIR": "/c", "LC_ALL": "C",
                   "PYTHONUNBUFFERED": "1", "PYTHONPATH": confine.import_folder(), "PYTHONSAFEPATH": "1"}
    # The user's own path stays, after the package this process runs.
    assert executor.sandbox_environment({"PYTHONPATH": "/mine"})["PYTHONPATH"] == \
        confine.import_folder() + os.pathsep + "/mine"


# Past every static check (appended to the program, so it runs when the sandbox loads it): patches of the frozen
# model's callables, made at load or from inside forward, are refused by the run-time snapshot, naming what changed.
PATCHES = {
    "at_load": ("import torch.nn as _nn\n_nn.LayerNorm.forward = lambda self, x: x\n",
                "torch.nn.modules.normalization.LayerNorm.forward", "loading the program"),
    "inside_forward": ("_forward = ATTENTION.forward\n\n\ndef _patched(self, x):\n    import torch.nn.functional as _F\n"
                       "    _F.gelu = lambda t, approximate='none': t\n    return _forward(self, x)\n\n\n"
                       "ATTENTION.forward = _patched\n",
                       "torch.nn.functional.gelu", "during the gate"),
    # The same function object with other code: what the frozen model captured at import would run it.
    "a_function_s_code_at_load": ("import torch.nn.functional as _F\n_F.layer_norm.__code__ = (lambda *a, **k: a[0]).__code__\n",
                                  "torch.nn.functional.layer_norm.__code__", "loading the program"),
    # A process-wide setting outlives the program's code: it would change how the frozen model trains and is scored.
    "a_setting_at_load": ("import torch as _torch\n_torch.set_float32_matmul_precision('medium')\n",
                          "torch.get_float32_matmul_precision()", "loading the program"),
    # The same property object with another getter: nn.GRU.all_weights.__init__(self) re-initialised it in place.
    "a_property_reinitialised_at_load": ("import torch.nn as _nn\n_nn.GRU.all_weights.__init__(lambda s: [])\n",
                                         "torch.nn.modules.rnn.RNNBase.all_weights.fget", "loading the program"),
}


@pytest.mark.parametrize("when", sorted(PATCHES))
def test_a_patch_of_torch_past_the_static_check_is_refused_at_run_time(smoke_env, when):
    payload, name, stage = PATCHES[when]
    prepared = prepare(security.FRAMEWORK)
    request = sandbox_request(security.FRAMEWORK, prepared["profile"], prepared["ledger"],
                              source=security.SEED + "\n" + payload)
    run = executor.run_sandbox_here("evaluate", request, 120.0, 8192)
    assert run.outcome == "exited", run.log
    assert run.result["reason"] == "policy", run.result
    assert name in run.result["message"] and stage in run.result["message"]
    assert "objective" not in run.result  # nothing trained past the stage that saw it


def _reaching_the_result(update: str) -> str:
    """A candidate whose forward finds the sandbox's result dictionary and runs ``update`` on it (``r``)."""
    inject = ("import sys as _sys\n\n\ndef _inject():\n    f = _sys._getframe(1)\n    while f is not None:\n"
              "        if f.f_code.co_name == 'evaluate' and isinstance(f.f_locals.get('result'), dict):\n"
              f"            r = f.f_locals['result']\n            {update}\n"
              "            return\n        f = f.f_back\n\n\n")
    source = security.Attack("result", "none", "_inject()").source("unused", SECRET_ENV)
    return source.replace(f"class {security.CLASS}(nn.Module):", inject + f"class {security.CLASS}(nn.Module):", 1)


def test_a_record_a_program_inflates_in_its_result_never_reaches_the_ledger(smoke_env, tmp_path, monkeypatch):
    """Past the static check, a forward that grows the fingerprint and the timings its sandbox reports (one such
    evaluation grew the ledger by 40 MB): the fingerprint is not believed, and nothing of it is stored."""
    security.past_the_static_policy(monkeypatch)
    path = tmp_path / "candidate.py"
    path.write_text(_reaching_the_result("r['fingerprint']['pad'] = 'x' * 10**7; r['timings']['y' * 10**5] = 1.0; "
                                         "r['timings']['z'] = 'w' * 10**6; raise RuntimeError('inflated')"))
    result = evaluate(security.FRAMEWORK, str(path))
    assert result.artifacts["reason"] == "crash" and "inflated" in result.artifacts["message"]
    row = ledger.evaluations(os.environ["HARNESS_LEDGER"])[-1]
    assert len(json.dumps(row)) < 100_000 and "pad" not in row["fingerprint"]


def test_a_metric_a_program_adds_to_its_result_never_reaches_openevolve(smoke_env, tmp_path, monkeypatch):
    """Past the static check, a forward that finds the sandbox's result dictionary and adds OpenEvolve's feature
    dimensions to its metrics would choose its own cell in the archive: only the gate's own names come back."""
    security.past_the_static_policy(monkeypatch)
    path = tmp_path / "candidate.py"
    path.write_text(_reaching_the_result("r['metrics'].update(complexity=1e300, diversity=-1e300, flop_ratio=0.5, "
                                         "score=9.0)"))
    result = evaluate(security.FRAMEWORK, str(path))
    assert result.artifacts["reason"] == "ok", result.artifacts.get("message")
    assert not {"complexity", "diversity", "score"} & set(result.metrics), result.metrics
    assert result.metrics["flop_ratio"] == 0.5  # a gate name keeps what the sandbox said: reported, never scored


# Past the static policy, written at construction: 1 MiB files into the scratch folder, one every 10 ms, up to
# 1 GiB, either in the training sandbox (from the gate's first construction on) or only once in the scorer's
# forward-only sandbox (its folders are the scorer's). The run folders are often on a RAM-backed /tmp.
FILLS_ITS_FOLDER = """
import os as _os, time as _time


def _payload():
    if {where!r} == "forward" and "harness-scorer-" not in _os.environ["TMPDIR"]:
        return
    for i in range(1024):
        with open(_os.path.join(_os.environ["TMPDIR"], f"fill{{i}}"), "wb") as f:
            f.write(b"x" * (1 << 20))
        _time.sleep(0.01)


"""


@pytest.mark.parametrize("where,killed", [("training", "the sandbox"),
                                          ("forward", "the forward pass of the trained model")])
def test_a_program_that_fills_its_run_folder_is_killed_at_the_disk_cap(smoke_env, tmp_path, monkeypatch, where,
                                                                       killed):
    """The side effect, seen from outside: the sandboxes' folders never held much more than the cap (a thread here
    samples them every 20 ms), and the ledger says why the program scored 0. The forward-only sandbox's cap is the
    profile's plus the hidden states it writes."""
    import dataclasses
    import re
    import tempfile
    import threading

    from harness.trusted import profiles
    from harness.trusted.executor import files_bytes

    security.past_the_static_policy(monkeypatch)
    monkeypatch.setitem(profiles.PROFILES, security.PROFILE,
                        dataclasses.replace(profiles.PROFILES[security.PROFILE], disk_cap_mib=64))
    runs = tmp_path / "runs"  # where the evaluator makes its sandboxes' folders
    runs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(runs))
    source = _calling_at_construction(FILLS_ITS_FOLDER.format(where=where))
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], files_bytes(runs, []))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = _evaluated(tmp_path, source)
    finally:
        done.set()
        sampler.join()
    assert result.artifacts["reason"] == "policy", result.artifacts.get("message")
    found = re.search(rf"{killed}: its files grew past the disk cap of (\d+) MiB", result.artifacts["message"])
    assert found, result.artifacts["message"]
    cap_mib = int(found.group(1))
    assert 64 <= cap_mib < 80 and result.metrics["combined_score"] == 0.0
    assert 64 << 20 < peak[0] < (cap_mib + 96) << 20, f"peak {peak[0] / 2**20:.0f} MiB"
    assert ledger.evaluations()[-1]["reason"] == "policy"


# Past the static policy, at the first construction: in its scratch folder, a read-only folder holding a link to a
# file of the host and a chain of folders deeper than the interpreter's recursion limit. Python's own removal of the
# run folder raised RecursionError (a valid result became `infrastructure`, the folder was left in /tmp) and, for a
# user who is not root, made the link's target writable (CVE-2023-6597).
LEAVES_A_HOSTILE_TREE = """
import os as _os


def _payload():
    run = _os.environ["TMPDIR"]
    if _os.path.exists(_os.path.join(run, "locked")):
        return
    _os.mkdir(_os.path.join(run, "locked"))
    _os.symlink({victim!r}, _os.path.join(run, "locked", "link"))
    _os.chmod(_os.path.join(run, "locked"), 0o500)
    fd = _os.open(run, _os.O_RDONLY)
    for _ in range(3000):
        _os.mkdir("d", dir_fd=fd)
        below = _os.open("d", _os.O_RDONLY, dir_fd=fd)
        _os.close(fd)
        fd = below
    _os.close(fd)


"""

# Past the static policy, at the first construction: the weights folder moved and a link left in its place, so that
# the trusted scorer would read what the link names (here a folder beside it; a folder of the host's in the attack).
LINKS_ITS_WEIGHTS_FOLDER = """
import os as _os


def _payload():
    run = _os.path.dirname(_os.environ["TMPDIR"])
    if not _os.path.islink(_os.path.join(run, "weights")):
        _os.rename(_os.path.join(run, "weights"), _os.path.join(run, "elsewhere"))
        _os.symlink("elsewhere", _os.path.join(run, "weights"))


"""


def test_what_a_program_leaves_in_its_run_folder_is_removed_without_touching_the_host(smoke_env, tmp_path,
                                                                                      monkeypatch):
    import tempfile

    security.past_the_static_policy(monkeypatch)
    runs = tmp_path / "runs"  # where the evaluator makes its sandboxes' folders
    runs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(runs))
    victim = tmp_path / "host" / "notes.txt"
    victim.parent.mkdir()
    victim.write_text("the host's")
    victim.chmod(0o400)
    result = _evaluated(tmp_path, _calling_at_construction(LEAVES_A_HOSTILE_TREE.format(victim=str(victim))))
    # The chain is refused as it grows (the disk cap cannot count past 64 folders deep); what was made of it is
    # removed all the same.
    assert result.artifacts["reason"] == "policy" and "nested over 64 deep" in result.artifacts["message"]
    assert list(runs.iterdir()) == [], "a run folder was left behind"
    assert oct(victim.stat().st_mode) == "0o100400" and victim.read_text() == "the host's"


def test_a_weights_folder_replaced_by_a_link_is_never_read(smoke_env, tmp_path, monkeypatch):
    security.past_the_static_policy(monkeypatch)
    result = _evaluated(tmp_path, _calling_at_construction(LINKS_ITS_WEIGHTS_FOLDER))
    assert result.artifacts["reason"] == "tampering", result.artifacts.get("message")
    assert "not a regular file in the folder the training writes" in result.artifacts["message"]
    assert result.metrics["combined_score"] == 0.0


def test_a_message_that_would_command_a_terminal_reaches_no_one_as_such(smoke_env, tmp_path):
    """Within the static policy: an exception whose text holds terminal controls (set the clipboard, erase the line,
    move the cursor up). The message and the details the LLM, the ledger and a terminal get carry them as escapes."""
    controls = "\x1b]52;c;cm0gLXJmIH4K\x07\x1b[2K\x1b[1A\rharmless\x9b"
    source = security.Attack("controls", "none", "pass", init=f"raise RuntimeError({controls!r})").source(
        "unused", SECRET_ENV)
    assert _static_report(source).ok
    result = _evaluated(tmp_path, source)
    assert result.artifacts["reason"] == "crash"
    assert "\\x1b]52;c;cm0gLXJmIH4K\\x07\\x1b[2K\\x1b[1A\\rharmless\\x9b" in result.artifacts["message"]
    row = ledger.evaluations()[-1]
    for text in (result.artifacts["message"], result.artifacts.get("details", ""), row["message"]):
        assert not any(c in text for c in "\x1b\x07\r\x9b")

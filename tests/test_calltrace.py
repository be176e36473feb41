"""``harness.diagnostics.calltrace``: the preloaded library reports, inside the confined launcher, the calls the layers
refused and who made them, and nothing of the interpreter's own misses; it changes no result."""

import json
import shutil
import sys

import pytest

from harness.diagnostics import calltrace
from harness.trusted import confine

UNAVAILABLE = confine.unavailable_reason()
pytestmark = [
    pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="needs a C compiler"),
    pytest.mark.skipif(UNAVAILABLE is not None, reason=f"this machine cannot confine: {UNAVAILABLE}"),
]

# Opens the planted file through the C library (ctypes: the call comes from libffi, as a driver's would come from its
# own library), looks from Python for a file that is not there, and starts a program.
CHECK = """
import ctypes, os, subprocess, sys
fd = ctypes.CDLL(None, use_errno=True).open({secret!r}.encode(), 0)
print("opened" if fd >= 0 else "refused", ctypes.get_errno())
os.path.exists("/no-such-file-anywhere")
subprocess.run(["{true}"])
"""


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    built, why = calltrace.build(tmp_path_factory.mktemp("calltrace"))
    assert built is not None, why
    return built


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("hunter2")
    return str(path)


def _check(secret: str) -> str:
    return CHECK.format(secret=secret, true=shutil.which("true"))


def test_without_a_layer_only_the_missing_file_and_the_program_started_are_seen(library, secret):
    run = calltrace.failing_calls((False, False, False), "cpu", library, _check(secret))
    assert {k: run[k] for k in ("layers", "passed", "error", "traced", "more_calls")} == {
        "layers": "namespaces", "passed": True, "error": "", "traced": True, "more_calls": 0}
    # The planted file opens; the one that is not there, and the program started, are all that is reported.
    assert [c.split(": ", 1)[1] for c in run["calls"]] == ["stat(/no-such-file-anywhere) = ENOENT",
                                                           f"execve({shutil.which('true')}) = called"]


@pytest.mark.skipif(confine.landlock_abi() == 0, reason="no Landlock here")
def test_under_landlock_the_refused_open_is_named_with_its_errno_and_caller(library, secret):
    run = calltrace.failing_calls((True, False, False), "cpu", library, _check(secret))
    assert run["passed"] and run["layers"] == "Landlock"
    (refused,) = [c for c in run["calls"] if secret in c]
    # Made through ctypes: by libffi, or by _ctypes where libffi is linked into it.
    assert refused.endswith(f"open({secret}) = EACCES") and ("libffi" in refused or "_ctypes" in refused)
    # A file Python code looked for outside Python's own folders is kept; its searches for modules are left out.
    assert [c for c in run["calls"] if c.endswith("stat(/no-such-file-anywhere) = ENOENT")]
    assert run["skipped_misses"] > 0 and not [c for c in run["calls"] if "site-packages" in c]


def test_under_the_private_root_the_file_is_not_there(library, secret):
    if not confine.device_layers("cpu").root:
        pytest.skip(f"no private root here: {confine.device_layers('cpu').root_absent}")
    run = calltrace.failing_calls((False, False, True), "cpu", library, _check(secret))
    assert run["passed"] and run["layers"] == "private root"
    assert [c for c in run["calls"] if c.endswith(f"open({secret}) = ENOENT")]


def test_a_failing_check_keeps_its_error_and_the_combinations_stop_at_the_first_that_passes(library):
    failing = calltrace.failing_calls((False, False, False), "cpu", library,
                                      "import sys; sys.exit('confine: no device')")
    assert failing["passed"] is False and failing["error"] == "no device"
    runs = calltrace.trace_combinations("cpu", library, "pass")
    assert len(runs) == 1 and runs[0]["passed"]
    strongest = confine.offered_combinations(confine.offered_layers())[0]
    assert runs[0]["layers"] == calltrace.describe(strongest)


def test_the_command_prints_one_run_per_combination_asked_and_refuses_an_unknown_layer(capsys):
    assert calltrace.main(["--device", "cpu", "--layers", "seccomp"]) == 0
    (run,) = json.loads(capsys.readouterr().out)
    assert run["layers"] == "seccomp" and run["passed"]
    with pytest.raises(SystemExit):
        calltrace.main(["--device", "cpu", "--layers", "landlock,chroot"])
    assert "unknown layers ['chroot']" in capsys.readouterr().err


def test_no_compiler_is_a_reason_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(calltrace.shutil, "which", lambda name: None)
    assert calltrace.build(tmp_path) == (None, "no C compiler (cc or gcc) on this machine")


def test_only_the_interpreters_searches_for_modules_are_left_out():
    roots = ("/py/lib/python3.11/", "/repo/")
    python = "/py/lib/libpython3.11.so.1.0"
    assert calltrace.interpreter_miss(f"calltrace: {python}: stat(/py/lib/python3.11/foo.py) = ENOENT", roots)
    assert calltrace.interpreter_miss(f"calltrace: {python}: fopen(/py/bin/pyvenv.cfg) = ENOENT", roots)
    assert calltrace.interpreter_miss(f"calltrace: {python}: fopen(/py/bin/python3.11._pth) = ENOENT", roots)
    assert calltrace.interpreter_miss(f"calltrace: {python}: stat(/py/lib/python311.zip) = ENOENT", roots)
    assert calltrace.interpreter_miss(f"calltrace: {python}: stat(_ops.py) = ENOENT", roots)
    # A file outside Python's folders that a private root hides (ENOENT there too), a refusal, another library's miss:
    assert not calltrace.interpreter_miss(f"calltrace: {python}: open(/etc/gpu.conf) = ENOENT", roots)
    assert not calltrace.interpreter_miss(f"calltrace: {python}: open(/repo/x.py) = EACCES", roots)
    assert not calltrace.interpreter_miss("calltrace: /usr/lib/libcuda.so.1: open(/repo/x) = ENOENT", roots)


def test_a_check_stopped_at_its_time_limit_keeps_the_calls_it_made(library, secret):
    check = f"import ctypes, time; ctypes.CDLL(None).open({secret!r}.encode(), 0); time.sleep(60)"
    run = calltrace.failing_calls((True, False, False) if confine.landlock_abi() else (False, False, True), "cpu",
                                  library, check, timeout_s=8)
    assert run["passed"] is False and run["error"] == "the check did not finish in 8 s"
    assert [c for c in run["calls"] if secret in c]


def test_a_library_that_cannot_be_preloaded_is_reported_as_not_traced(tmp_path):
    broken = tmp_path / "broken.so"
    broken.write_bytes(b"not a shared object")
    run = calltrace.failing_calls((False, False, False), "cpu", broken, "pass")
    assert run["passed"] and run["traced"] is False and "cannot be preloaded" in run["not_traced"]

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
# own library), looks for a file that is not there from Python (an interpreter's miss), and starts a program.
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


def test_without_a_layer_nothing_fails_but_the_program_started_is_seen(library, secret):
    run = calltrace.failing_calls((False, False, False), "cpu", library, _check(secret))
    assert run == {"layers": "namespaces", "passed": True, "error": "", "more_calls": 0,
                   "calls": [c for c in run["calls"] if c.endswith(f"execve({shutil.which('true')}) = called")]}
    assert run["calls"], "the program the check started was not seen: the library was not preloaded"


@pytest.mark.skipif(confine.landlock_abi() == 0, reason="no Landlock here")
def test_under_landlock_the_refused_open_is_named_with_its_errno_and_caller(library, secret):
    run = calltrace.failing_calls((True, False, False), "cpu", library, _check(secret))
    assert run["passed"] and run["layers"] == "Landlock"
    (refused,) = [c for c in run["calls"] if secret in c]
    assert refused.endswith(f"open({secret}) = EACCES") and "libffi" in refused.split(": ")[0]
    assert not [c for c in run["calls"] if "no-such-file-anywhere" in c]  # the interpreter's miss is left out


def test_under_the_private_root_the_file_is_not_there(library, secret):
    if not confine.device_layers("cpu").root:
        pytest.skip(f"no private root here: {confine.device_layers('cpu').root_absent}")
    run = calltrace.failing_calls((False, False, True), "cpu", library, _check(secret))
    assert run["passed"] and run["layers"] == "private root"
    assert [c for c in run["calls"] if c.endswith(f"open({secret}) = ENOENT")]


def test_a_failing_check_keeps_its_error_and_the_combinations_stop_at_the_first_that_passes(library):
    failing = calltrace.failing_calls((False, False, False), "cpu", library, "import sys; sys.exit('confine: no device')")
    assert failing["passed"] is False and failing["error"] == "no device"
    runs = calltrace.trace_combinations("cpu", library, "pass")
    assert len(runs) == 1 and runs[0]["passed"]
    offered = calltrace.offered_layers()
    assert runs[0]["layers"] == calltrace.describe(next(c for c in confine.COMBINATIONS
                                                        if all(a or not on for on, a in zip(c, offered))))


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
    assert sys.executable  # the module still imports and answers without one

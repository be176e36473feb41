"""Which calls into the C library fail in a confined sandbox, and which library made them.

    python -m harness.diagnostics.calltrace [--device cuda] [--layers landlock,seccomp,root]   # prints JSON

Where CUDA fails inside the sandbox, the driver says only "error 304: OS call failed", and the GPU machines have no
strace. ``calltrace.c``, built here with the system's C compiler and preloaded (``LD_PRELOAD``) into the check's
process inside the launcher, logs each failed open, stat, access, mkdir, unlink, mknod, socket, connect, ioctl, mmap,
memfd_create or shm_open, and each program started, with the library that made the call (the file says which calls
it cannot see). The interpreter's own misses (it looks for many files that do not exist while it imports) are left
out; what remains names the file, device or socket the confinement kept from the driver.

The traced command sets ``LD_PRELOAD`` inside the sandbox and then replaces itself with the check, so that the
launcher, which sets the layers up, is not traced. Nothing here is part of a sandbox that scores a program.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.trusted import confine

SOURCE = Path(__file__).with_name("calltrace.c")
LINE_PREFIX = "calltrace: "
LOG_ENV = "CALLTRACE_LOG"  # the file calltrace.c appends to (standard error without it)
MAX_CALLS = 80  # distinct calls kept per run
LAYER_NAMES = ("landlock", "seccomp", "root")  # --layers names, in the order of confine.COMBINATIONS' tuples
# What the interpreter looks for as it starts, to find its own files (and python3*._pth, python3*.zip).
PYTHON_STARTUP_FILES = ("pyvenv.cfg", "pybuilddir.txt", "os.py", "lib-dynload", "Setup.local")


def build(out_dir: Path) -> tuple[Path | None, str]:
    """Compile ``calltrace.c`` into ``out_dir``: (the library, "") or (None, why not)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler (cc or gcc) on this machine"
    library = Path(out_dir) / "calltrace.so"
    try:
        command = [compiler, "-shared", "-fPIC", "-O1", "-pthread", "-o", str(library), str(SOURCE), "-ldl"]
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{compiler}: {type(exc).__name__}: {exc}"
    if done.returncode != 0:
        return None, f"{compiler} exited with {done.returncode}: {done.stderr.strip()[-500:]}"
    return library, ""


def _python_search_roots() -> tuple[str, ...]:
    """Where the interpreter looks for modules: its prefixes, the user's site folder, ``sys.path`` and the working
    folder (``python -c`` looks there first)."""
    import site

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, site.getuserbase(), os.getcwd(), *(p for p in sys.path if p)}
    return tuple(os.path.realpath(r) + os.sep for r in roots)


def interpreter_miss(line: str, roots: tuple[str, ...] | None = None) -> bool:
    """A file the interpreter looked for where it looks for modules (or its start-up files) and did not find.
    Any other file the interpreter was refused, or that a private root hides (ENOENT there too), is kept."""
    library, _, rest = line.removeprefix(LINE_PREFIX).partition(": ")
    name = os.path.basename(library)
    if not (name.startswith(("libpython", "python")) and rest.endswith("= ENOENT")):
        return False
    path = rest[rest.find("(") + 1:rest.rfind(")")]
    if not path.startswith("/"):  # a module's file name without its folder, looked up by linecache and inspect
        return True
    base = os.path.basename(path)
    if base in PYTHON_STARTUP_FILES or (base.startswith("python") and base.endswith(("._pth", ".zip"))):
        return True
    return os.path.realpath(path).startswith(roots if roots is not None else _python_search_roots())


def failing_calls(layers: tuple[bool, bool, bool], device: str, library: Path, check: str = confine.CUDA_CHECK,
                  timeout_s: float = confine.CHECK_TIMEOUT_S) -> dict:
    """Run ``check`` as a sandbox on ``device`` would under the (Landlock, seccomp, private root) ``layers``, with the
    library preloaded: whether it passed, its last line of error, and the distinct failed calls (and programs
    started), in order, less the interpreter's misses (``skipped_misses`` counts them). A check past ``timeout_s`` is
    stopped, and the calls it made until then are kept."""
    with tempfile.TemporaryDirectory(prefix="harness-calltrace-") as run_dir:
        preload = Path(run_dir) / "calltrace.so"  # in the run folder: readable, and mappable, under every layer
        log = Path(run_dir) / "calls.log"
        shutil.copy(library, preload)
        traced = (f"import os, sys; os.environ[{LOG_ENV!r}] = {str(log)!r}; "
                  f"os.environ['LD_PRELOAD'] = {str(preload)!r}; "
                  f"os.execv(sys.executable, [sys.executable, '-c', {check!r}])")
        try:
            out = confine.run_as_sandbox([sys.executable, "-c", traced], layers, device, run_dir, timeout_s)
            returncode, stderr = out.returncode, out.stderr
        except subprocess.TimeoutExpired as exc:
            returncode, stderr = None, (exc.stderr or b"").decode("utf-8", "replace")
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    passed = returncode == 0
    other = [line for line in stderr.splitlines() if line.strip()]
    if returncode is None:
        error = f"the check did not finish in {timeout_s:.0f} s"
    else:
        error = "" if passed else (other[-1] if other else f"exit {returncode}")
    roots = _python_search_roots()
    calls, misses = [], 0
    for line in lines:
        if interpreter_miss(line, roots):
            misses += 1
        elif line.startswith(LINE_PREFIX) and line.removeprefix(LINE_PREFIX) not in calls:
            calls.append(line.removeprefix(LINE_PREFIX))
    not_loaded = [line for line in other if "cannot be preloaded" in line]
    return {"layers": describe(layers), "passed": passed, "error": error.removeprefix(confine.FAILURE_PREFIX),
            "traced": not not_loaded, **({"not_traced": not_loaded[0][:300]} if not_loaded else {}),
            "calls": calls[:MAX_CALLS], "more_calls": max(0, len(calls) - MAX_CALLS), "skipped_misses": misses}


def describe(layers: tuple[bool, bool, bool]) -> str:
    return " + ".join(name for name, on in zip(("Landlock", "seccomp", "private root"), layers) if on) or "namespaces"


def trace_combinations(device: str, library: Path, check: str = confine.CUDA_CHECK, deadline: float | None = None,
                       on_run=None) -> list[dict]:
    """``failing_calls`` under each combination this machine offers, strongest first, as ``confine.device_layers``
    tries them, until one passes. ``deadline`` (``time.monotonic()``): no run is started past it, and a run is
    stopped at it; ``on_run(runs)`` is called after each run (to keep what has been found if the caller is killed)."""
    runs = []
    for layers in confine.offered_combinations(confine.offered_layers()):
        left = confine.CHECK_TIMEOUT_S if deadline is None else deadline - time.monotonic()
        if left < 5:
            break
        runs.append(failing_calls(layers, device, library, check, min(left, confine.CHECK_TIMEOUT_S)))
        if on_run is not None:
            on_run(runs)
        if runs[-1]["passed"]:
            break
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.diagnostics.calltrace",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"),
                        help="the sandbox's device; on cpu the check only starts Python")
    parser.add_argument("--layers", help="comma-separated subset of landlock,seccomp,root: trace that combination "
                                         "only (default: each combination offered, strongest first, until one passes)")
    args = parser.parse_args(argv)
    chosen = None
    if args.layers:
        names = {name.strip() for name in args.layers.split(",") if name.strip()}
        unknown = sorted(names - set(LAYER_NAMES))
        if unknown:
            parser.error(f"unknown layers {unknown}; the layers are {', '.join(LAYER_NAMES)}")
        chosen = tuple(name in names for name in LAYER_NAMES)
    unavailable = confine.unavailable_reason(args.device)
    if unavailable:
        print(json.dumps({"error": f"a sandbox on {args.device} is not confined here: {unavailable}"}))
        return 2
    check = confine.CUDA_CHECK if args.device == "cuda" else "pass"
    with tempfile.TemporaryDirectory(prefix="harness-calltrace-build-") as tmp:
        library, why = build(Path(tmp))
        if library is None:
            print(json.dumps({"error": why}))
            return 2
        runs = ([failing_calls(chosen, args.device, library, check)] if chosen
                else trace_combinations(args.device, library, check))
    print(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

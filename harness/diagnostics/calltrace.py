"""Which calls into the C library fail in a confined sandbox, and which library made them.

    python -m harness.diagnostics.calltrace [--device cuda] [--layers landlock,seccomp,root]   # prints JSON

Where CUDA fails inside the sandbox, the driver says only "error 304: OS call failed", and the GPU machines have no
strace. ``calltrace.c``, built here with the system's C compiler and preloaded (``LD_PRELOAD``) into the check's
process inside the launcher, writes a line for each failed open, stat, socket, connect, ioctl, mmap or mknod and each
program started, with the library that made the call. The interpreter's own misses (it probes many files that do not
exist) are left out; what remains names the file, device or socket the confinement kept from the driver.

The launcher gives a sandbox an environment of its own, without ``LD_PRELOAD``; the traced command sets it and then
replaces itself with the check, inside the sandbox. Nothing here is part of a sandbox that scores a program.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.trusted import confine

SOURCE = Path(__file__).with_name("calltrace.c")
LINE_PREFIX = "calltrace: "
MAX_CALLS = 80  # distinct failing calls kept per run
LAYER_FLAGS = {"landlock": 0, "seccomp": 1, "root": 2}  # --layers names, in confine.COMBINATIONS order


def build(out_dir: Path) -> tuple[Path | None, str]:
    """Compile ``calltrace.c`` into ``out_dir``: (the library, "") or (None, why not)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler (cc or gcc) on this machine"
    library = Path(out_dir) / "calltrace.so"
    try:
        done = subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(library), str(SOURCE), "-ldl"],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{compiler}: {type(exc).__name__}: {exc}"
    if done.returncode != 0:
        return None, f"{compiler} exited with {done.returncode}: {done.stderr.strip()[-500:]}"
    return library, ""


def _interpreter_miss(line: str) -> bool:
    """A file the interpreter looked for and did not find: Python probes many (imports, its own configuration)."""
    library = line.removeprefix(LINE_PREFIX).split(": ", 1)[0]
    name = os.path.basename(library)
    from_python = name.startswith(("libpython", "python")) or library == os.path.realpath(sys.executable)
    return from_python and line.endswith("= ENOENT")


def failing_calls(layers: tuple[bool, bool, bool], device: str, library: Path, check: str = confine.CUDA_CHECK) -> dict:
    """Run ``check`` as a sandbox on ``device`` under the (Landlock, seccomp, private root) ``layers`` would, with the
    library preloaded: whether it passed, its last line of error, and the distinct failed calls (and programs
    started), in order, but those of the interpreter's misses."""
    landlock, seccomp, root = layers
    with tempfile.TemporaryDirectory(prefix="harness-calltrace-") as run_dir:
        preload = Path(run_dir) / "calltrace.so"  # in the run folder: readable, and mappable, under every layer
        shutil.copy(library, preload)
        rules = confine.file_rules(run_dir, device=device) if landlock or root else None
        traced = (f"import os, sys; os.environ['LD_PRELOAD'] = {str(preload)!r}; "
                  f"os.execv(sys.executable, [sys.executable, '-c', {check!r}])")
        try:
            out = subprocess.run(confine.wrap([sys.executable, "-c", traced], rules, seccomp, device,
                                              landlock=landlock, private_root=root),
                                 capture_output=True, text=True, timeout=confine.CHECK_TIMEOUT_S,
                                 env={**os.environ, "TMPDIR": run_dir})
        except subprocess.TimeoutExpired:
            return {"layers": describe(layers), "passed": False, "error": "timed out", "calls": [], "more_calls": 0}
    calls, other = [], []
    for line in out.stderr.splitlines():
        if not line.startswith(LINE_PREFIX):
            other.append(line)
        elif not _interpreter_miss(line) and line not in calls:
            calls.append(line)
    error = "" if out.returncode == 0 else (other[-1] if other else f"exit {out.returncode}")
    return {"layers": describe(layers), "passed": out.returncode == 0, "error": error.removeprefix(confine.FAILURE_PREFIX),
            "calls": [c.removeprefix(LINE_PREFIX) for c in calls[:MAX_CALLS]],
            "more_calls": max(0, len(calls) - MAX_CALLS)}


def describe(layers: tuple[bool, bool, bool]) -> str:
    return " + ".join(name for name, on in zip(("Landlock", "seccomp", "private root"), layers) if on) or "namespaces"


def offered_layers() -> tuple[bool, bool, bool]:
    return confine.landlock_abi() > 0, confine.seccomp_supported(), sys.platform.startswith("linux")


def trace_combinations(device: str, library: Path, check: str = confine.CUDA_CHECK, until_one_passes: bool = True,
                       combinations=confine.COMBINATIONS) -> list[dict]:
    """``failing_calls`` under each combination this machine offers, strongest first, as ``confine.device_layers``
    tries them (with ``until_one_passes``, stopping at the first under which the check passes)."""
    offered = offered_layers()
    runs = []
    for layers in combinations:
        if any(on and not available for on, available in zip(layers, offered)):
            continue
        runs.append(failing_calls(layers, device, library, check))
        if until_one_passes and runs[-1]["passed"]:
            break
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.diagnostics.calltrace", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"),
                        help="the sandbox's device; on cpu the check only starts Python")
    parser.add_argument("--layers", help="comma-separated subset of landlock,seccomp,root: trace that combination "
                                         "only (default: each combination offered, strongest first, until one passes)")
    args = parser.parse_args(argv)
    check = confine.CUDA_CHECK if args.device == "cuda" else "pass"
    with tempfile.TemporaryDirectory(prefix="harness-calltrace-build-") as tmp:
        library, why = build(Path(tmp))
        if library is None:
            print(json.dumps({"error": why}))
            return 2
        if args.layers:
            names = {name.strip() for name in args.layers.split(",") if name.strip()}
            unknown = sorted(names - set(LAYER_FLAGS))
            if unknown:
                parser.error(f"unknown layers {unknown}; the layers are {', '.join(LAYER_FLAGS)}")
            runs = [failing_calls(tuple(name in names for name in LAYER_FLAGS), args.device, library, check)]
        else:
            runs = trace_combinations(args.device, library, check)
    print(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

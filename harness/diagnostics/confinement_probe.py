"""What operating-system confinement this machine allows, and whether CUDA still works inside it.

    python -m harness.diagnostics.confinement_probe [--write-dir DIR]    # prints one JSON object

The sandbox's boundary has to be built from kernel mechanisms that a Python candidate cannot undo: namespaces,
Landlock and seccomp (audit hooks can be removed from inside Python). Which of them a host lets an unprivileged
or a root process use differs between machines, containers and micro-VMs, and GPU device files add their own
needs (``/dev/nvidia*`` are opened read-write and driven by ioctls). This probe asks, each in a throwaway child
process so that nothing it changes outlives it:

* ``namespaces``: whether ``unshare`` of a user, network, mount, PID and IPC namespace succeeds;
* ``landlock_abi``: the Landlock ABI version (0 when absent or disabled);
* ``seccomp``: whether the sandbox's seccomp filter (``harness.trusted.seccomp``) can be installed;
* ``confined_child``: a child that applies every layer available (a new network namespace, a Landlock ruleset
  that lets it read only system and Python folders and write only one scratch folder and the device files, the
  sandbox's seccomp filter), then tries, and reports, each thing the layers must stop: reading a
  planted secret file outside the allowed folders, writing outside the scratch folder, opening a socket; and
  the things they must not stop: writing in the scratch folder and, where CUDA is visible, a matrix product on
  the GPU;
* ``only_<layer>``: the same child under each layer alone, and under looser variants of Landlock (reads anywhere, or
  writes in the system's shared folders too), so that when CUDA fails under the whole set, the runs say which
  layer and which right it needs;
* ``landlock_writes_one_more``: where CUDA works when Landlock lets it write the system's shared folders and fails
  when it does not, the same child once per folder with writes there only: which folder the driver writes.

Every attempt reports what happened (``ok`` or the errno's name), never a guess.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.trusted import confine, seccomp
from harness.trusted.confine import CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWUSER

CLONE_NEWNS = 0x00020000  # the sandbox's launcher does not use a mount namespace; the probe reports it

# What the confined child may read: what a sandbox may (harness.trusted.confine), plus the Python installation and
# the package's folder (set at run time). A secret planted outside them must stay unreadable.
SYSTEM_READ_ROOTS = confine.SYSTEM_READ_ROOTS + ("/etc", "/dev") + confine.PROC_READ  # as wide as a CUDA sandbox reads
# Folders where system libraries create sockets, locks and shared memory, and the kernel's own files (the CUDA
# driver may write any of them). Tried by the probe only: a sandbox never writes them.
SYSTEM_SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev", "/dev/shm", "/run", "/proc", "/sys")


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _errno_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


landlock_abi = confine.landlock_abi


def apply_landlock(read_roots: list[str], write_roots: list[str]) -> str:
    """``confine.apply_landlock``, reported: "ok" or the failing step and its error."""
    try:
        confine.apply_landlock(read_roots, write_roots)
    except OSError as exc:
        return str(exc)
    return "ok"


def apply_seccomp() -> str:
    """``seccomp.apply``, the sandbox's own filter, reported: "ok" or the error."""
    try:
        seccomp.apply()
    except OSError as exc:
        return str(exc)
    return "ok"


def unshare(flags: int) -> str:
    libc = _libc()
    return "ok" if libc.unshare(ctypes.c_int(flags)) == 0 else _errno_name(ctypes.get_errno())


def _attempt(fn) -> str:
    try:
        fn()
        return "ok"
    except OSError as exc:
        return _errno_name(exc.errno) if exc.errno else f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a probe reports, it never raises
        return f"{type(exc).__name__}: {exc}"[:300]


def _cuda_matmul() -> str:
    import torch

    if torch.version.cuda is None:
        a = torch.randn(256, 256)
        return "torch built without CUDA (torch imported and a CPU matmul ran)" if float((a @ a).abs().sum()) > 0 \
            else "wrong result"
    if not torch.cuda.is_available():
        try:
            torch.cuda.init()  # raises with the driver's own reason
        except Exception as exc:  # noqa: BLE001
            return f"CUDA unavailable: {type(exc).__name__}: {exc}"[:400]
        return "CUDA unavailable (no reason given)"
    a = torch.randn(1024, 1024, device="cuda")
    value = float((a @ a).abs().sum())
    return "ok" if value > 0 else "wrong result"


def _socket() -> None:
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.close()


def confined_child(spec: dict) -> dict:
    """Runs in the throwaway child: apply the layers, then try what they must stop and what they must allow."""
    layers = {}
    if "network_namespace" in spec["layers"]:
        layers["network_namespace"] = unshare(CLONE_NEWNET)
    if "landlock" in spec["layers"]:
        layers["landlock"] = apply_landlock(spec["read_roots"], spec["write_roots"])
    if "landlock_writes_only" in spec["layers"]:  # reads anywhere: tells a read rule from a write rule
        layers["landlock_writes_only"] = apply_landlock(["/"], spec["write_roots"])
    if "landlock_writes_tmp_dev" in spec["layers"]:  # and writes in the shared scratch folders of the system too
        layers["landlock_writes_tmp_dev"] = apply_landlock(["/"], spec["write_roots"] + list(SYSTEM_SCRATCH_DIRS))
    if "landlock_writes_one_more" in spec["layers"]:  # reads anywhere, writes in one more folder
        layers["landlock_writes_one_more"] = apply_landlock(["/"], spec["write_roots"] + [spec["one_more"]])
    if "seccomp" in spec["layers"]:
        layers["seccomp"] = apply_seccomp()
    scratch = Path(spec["scratch"])
    os.environ["TMPDIR"] = str(scratch)  # torch's import needs a writable temporary folder
    must_stop = {
        "read_planted_secret": _attempt(lambda: Path(spec["secret"]).read_text()),
        "write_outside_scratch": _attempt(lambda: Path(spec["outside"]).write_text("escaped")),
        "open_socket": _attempt(_socket),
    }
    must_allow = {
        "write_in_scratch": _attempt(lambda: (scratch / "allowed.txt").write_text("fine")),
        "cuda_matmul": _cuda_matmul_reported(),
    }
    return {"layers": layers, "must_stop": must_stop, "must_allow": must_allow}


def _cuda_matmul_reported() -> str:
    try:
        return _cuda_matmul()
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"[:300]


def _child(code: str, timeout_s: float = 120.0) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
                             str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")]))})
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"exit {out.returncode}: {out.stderr[-500:]}"}


def _read_roots(scratch: Path) -> list[str]:
    package_root = str(Path(__file__).resolve().parents[2])
    roots = set(SYSTEM_READ_ROOTS) | {sys.prefix, sys.base_prefix, sys.exec_prefix, package_root,
                                       str(Path(sys.executable).resolve().parent)}
    roots |= {p for p in sys.path if p and os.path.isdir(p) and not str(scratch).startswith(p)}
    return sorted(roots)


def child_under(spec: dict) -> dict:
    """``confined_child(spec)`` in a throwaway child, and whether its write outside the scratch folder left a file."""
    child = _child("import json; from harness.diagnostics.confinement_probe import confined_child; "
                   f"print(json.dumps(confined_child({spec!r})))", timeout_s=300.0)
    outside = Path(spec["outside"])
    child["outside_file_exists_afterwards"] = outside.exists()
    outside.unlink(missing_ok=True)
    return child


def probe(work_dir: Path | None = None) -> dict:
    """Everything the module docstring lists, as one JSON-ready dict."""
    report: dict = {"kernel": platform.release(), "machine": platform.machine(), "euid": os.geteuid(),
                    "gpu_device_files": confine.gpu_device_files()}
    status = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
    report["inherited"] = {line.split(":")[0]: line.split(":", 1)[1].strip() for line in status.splitlines()
                           if line.startswith(("Seccomp", "NoNewPrivs", "CapEff"))}
    report["landlock_abi"] = landlock_abi()
    report["namespaces"] = {name: _child(
        f"import json; from harness.diagnostics.confinement_probe import unshare; print(json.dumps(unshare({flag})))")
        for name, flag in (("user", CLONE_NEWUSER), ("network", CLONE_NEWNET), ("mount", CLONE_NEWNS),
                           ("pid", CLONE_NEWPID), ("ipc", CLONE_NEWIPC))}
    report["seccomp"] = _child("import json; from harness.diagnostics.confinement_probe import apply_seccomp as f; "
                               "print(json.dumps(f()))")
    with tempfile.TemporaryDirectory(prefix="harness-probe-", dir=work_dir) as tmp:
        tmp = Path(tmp)
        scratch, denied = tmp / "scratch", tmp / "denied"
        scratch.mkdir()
        denied.mkdir()
        secret = denied / "secret.txt"
        secret.write_text("not for candidates")
        available = ["seccomp"] if report["seccomp"] == "ok" else []
        if report["namespaces"]["network"] == "ok":
            available.append("network_namespace")
        if report["landlock_abi"] > 0:
            available += ["landlock", "landlock_writes_only", "landlock_writes_tmp_dev"]
        variants = {"landlock_writes_only", "landlock_writes_tmp_dev"}
        spec = {"read_roots": [r for r in _read_roots(tmp) if not str(tmp).startswith(r)],
                "write_roots": [str(scratch), *confine.gpu_device_files(), *confine.SYSTEM_WRITE_ROOTS],
                "scratch": str(scratch), "secret": str(secret), "outside": str(denied / "written.txt")}
        # Every available layer at once, then each alone: when CUDA fails under all of them, the single-layer
        # runs say which layer it is.
        for key, layers in [("confined_child", [x for x in available if x not in variants])] + \
                [(f"only_{x}", [x]) for x in available]:
            report[key] = child_under({**spec, "layers": layers})
        if _cuda(report, "only_landlock_writes_tmp_dev") == "ok" and _cuda(report, "only_landlock_writes_only") != "ok":
            report["landlock_writes_one_more"] = {
                folder: _cuda(child_under({**spec, "layers": ["landlock_writes_one_more"], "one_more": folder}))
                for folder in SYSTEM_SCRATCH_DIRS}
        report["read_roots"] = spec["read_roots"]
    report["level"] = confinement_level(report)
    return report


def _cuda(report: dict, key: str | None = None) -> str:
    """What the CUDA attempt of a child (``report[key]``, or ``report`` itself) gave."""
    child = report.get(key, {}) if key else report
    return child.get("must_allow", {}).get("cuda_matmul", "n/a")


def confinement_level(report: dict) -> str:
    """One line: which layers held in the confined child, and whether CUDA worked under them."""
    child = report.get("confined_child", {})
    if "error" in child:
        return f"probe failed: {child['error'][:200]}"
    layers = child.get("layers", {})
    stopped = [k for k, v in child.get("must_stop", {}).items() if v != "ok"]
    leaked = [k for k, v in child.get("must_stop", {}).items() if v == "ok"]
    applied = [k for k, v in layers.items() if v == "ok"]
    cuda = _cuda(child)
    return (f"layers applied: {', '.join(applied) or 'none'}; stopped: {', '.join(stopped) or 'nothing'}; "
            f"not stopped: {', '.join(leaked) or 'nothing'}; CUDA under them: {cuda}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.diagnostics.confinement_probe", description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", help="where the probe's temporary files go (default: the system's)")
    args = parser.parse_args(argv)
    print(json.dumps(probe(Path(args.work_dir) if args.work_dir else None), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

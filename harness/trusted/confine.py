"""Start the sandbox in new user, network and PID namespaces.

    python -m harness.trusted.confine CMD [ARG ...]     # what the executor runs in front of the sandbox
    python -m harness.trusted.confine --check [cuda]    # exit 0 when this machine allows it (and CUDA works in it)

In a new network namespace the sandbox has no network interface at all, not even loopback: no connection leaves
it. In a new PID namespace it is process 1 and sees no process outside: it cannot signal the evaluator, the
OpenEvolve worker or anything else of the user's, and when it exits the kernel kills every process left in the
namespace. The user namespace is what lets an unprivileged user create the other two; the caller's uid and gid
are mapped to themselves, so files keep their owners.

Files are not confined here (the executor's allow-listed environment keeps secrets out; Landlock is the next
layer). A kernel that refuses unprivileged user namespaces (some distributions' defaults, gVisor, macOS) makes
``--check`` fail; the evaluator then records that the sandbox ran unconfined, or refuses to start under a profile
that requires confinement (``harness.trusted.profiles.confinement_policy``).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

from harness.trusted.process_lifetime import PARENT_ALIVE_FD_ENV, PARENT_PID_ENV, die_with_parent
from harness.trusted.profiles import ALLOW_UNCONFINED_ENV

CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
LAYERS = "user, network and PID namespaces"
EXIT_UNAVAILABLE = 125  # the namespaces could not be created; the command was not run
FAILURE_PREFIX = "confine: "  # the first line the launcher writes when it could not start the command


def enter() -> None:
    """Move this process into new user and network namespaces; its next child starts a new PID namespace.
    Raises OSError when the kernel refuses."""
    import ctypes

    uid, gid = os.getuid(), os.getgid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(ctypes.c_int(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"unshare refused: {os.strerror(errno)}")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")


@functools.lru_cache(maxsize=2)
def unavailable_reason(device: str = "cpu") -> str | None:
    """None when this machine lets this user confine a sandbox that runs on ``device`` ("cpu" or "cuda": CUDA must
    work inside the namespaces too); else why not. Asked once per process and device, of a throwaway child."""
    if not sys.platform.startswith("linux"):
        return f"namespaces are a Linux feature (this is {sys.platform})"
    try:
        out = subprocess.run([sys.executable, "-m", "harness.trusted.confine", "--check", *(["cuda"] * (device == "cuda"))],
                             capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the check could not run: {exc}"
    return None if out.returncode == 0 else (out.stderr.strip().splitlines() or ["refused"])[-1]


# Run inside the namespaces by ``--check cuda``, in an interpreter of its own: this module never imports torch.
CUDA_CHECK = """
import sys
try:
    import torch
    a = torch.ones(64, 64, device="cuda")
    assert float((a @ a).sum()) == 64.0 ** 3, "a matrix product on the GPU gave a wrong result"
except Exception as exc:
    sys.exit(f"confine: CUDA does not work inside the namespaces: {type(exc).__name__}: {exc}"[:500])
"""


def _check_inside(cuda: bool) -> int:
    if os.getpid() != 1:
        print("confine: the PID namespace was not created", file=sys.stderr)
        return 1
    if cuda:
        return subprocess.run([sys.executable, "-c", CUDA_CHECK], timeout=150).returncode
    return 0


def unconfined_message(profile_name: str, reason: str) -> str:
    return (f"profile {profile_name!r} runs candidates only in a confined sandbox ({LAYERS}), and this machine "
            f"cannot create one: {reason}. Allow unprivileged user namespaces (for example sysctl "
            "kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu), or set "
            f"{ALLOW_UNCONFINED_ENV}=1 to run without it (every ledger row records it)")


def wrap(cmd: list[str]) -> list[str]:
    return [sys.executable, "-m", "harness.trusted.confine", *cmd]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--check"]:
        try:
            enter()
            pid = os.fork()
            if pid == 0:
                os._exit(_check_inside(cuda=argv[1:] == ["cuda"]))
            return 0 if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0 else 1
        except OSError as exc:
            print(f"confine: {exc}", file=sys.stderr)
            return 1
    die_with_parent()
    try:
        enter()
    except OSError as exc:
        print(f"{FAILURE_PREFIX}{exc}", file=sys.stderr, flush=True)
        return EXIT_UNAVAILABLE
    alive_r, alive_w = os.pipe()  # the launcher holds the write end for as long as it lives
    pid = os.fork()
    if pid == 0:
        # Process 1 of the new namespace. Its parent is outside, where the namespace shows no pid: 0, so
        # die_with_parent reads the launcher's death from the pipe (see process_lifetime).
        try:
            os.close(alive_w)
            os.set_inheritable(alive_r, True)
            os.environ[PARENT_PID_ENV] = "0"
            os.environ[PARENT_ALIVE_FD_ENV] = str(alive_r)
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    os.close(alive_r)
    status = os.waitpid(pid, 0)[1]
    os.close(alive_w)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Start the sandbox in new user, network, PID and IPC namespaces, and confine its files with Landlock.

    python -m harness.trusted.confine [--read P ...] [--write P ...] [--landlock] [--private-root]
                                      [--seccomp [--cpu-filter]] -- CMD [ARG ...]
    python -m harness.trusted.confine --check [cuda]    # exit 0 when this machine allows it (and CUDA works in it)
    python -m harness.trusted.confine --layers [cuda]   # what a sandbox gets here, as the ledger records it

In a new network namespace the sandbox has no network interface at all, not even loopback: no connection leaves
it. In a new PID namespace it is process 1 and sees no process outside: it cannot signal the evaluator, the
OpenEvolve worker or anything else of the user's, and when it exits the kernel kills every process left in the
namespace. In a new IPC namespace it sees none of the host's System V shared memory, semaphores and message
queues, nor its POSIX message queues: those of the user's other programs are out of its reach. The user namespace
is what lets an unprivileged user create the others; the caller's uid and gid are mapped to themselves, so files
keep their owners.

With ``--read``/``--write`` and ``--landlock``, the command also runs under a Landlock ruleset (Linux 5.13+, no
root needed): it may read only beneath the ``--read`` paths (``read_rights``: of ``/dev`` only the listing) and write
only beneath the ``--write`` paths, whatever it calls, C++ file I/O included, and from ABI 9 connect to a Unix socket
only beneath those. Under ``/proc`` it may read only its own entries and a few system-wide files, so the environments
of the user's other processes stay out of reach. Where it may write ``/dev/shm`` (on CUDA) it gets one of its own
(``private_root.private_shared_memory``). The executor asks for it where the kernel offers Landlock (``file_rules``).

With ``--private-root``, the same paths are all the command finds, in a private root of its own, the ``--read``
ones read-only (``harness.trusted.private_root``): the file confinement that does not depend on Landlock, for a
device that fails under Landlock.

With ``--seccomp``, the command also runs under the seccomp filter of ``harness.trusted.seccomp``: system calls a
training never needs fail, and only Unix-domain sockets can be opened; with ``--cpu-filter`` (every sandbox on the
CPU) no socket at all, and no memory file (``seccomp.CPU_DENIED``). The executor asks for it where the kernel offers
seccomp filters and the filter exists for the machine.

On CUDA, the driver must work under these layers too, and what it needs differs between drivers (on one GPU machine
measured, it failed under a Landlock ruleset and under a filter that refused every socket: ``results/bench/NOTES.md``).
So ``device_layers("cuda")`` runs a CUDA check in the launcher under the sandbox's own rules (the GPU device files
writable), strongest combination first (``COMBINATIONS``), and a sandbox on CUDA gets the strongest one under which
the check passed.
A layer is dropped only when the check passes without it (``LayersUnknown`` otherwise). The ledger records what
applied; ``--layers cuda`` says it, and why a layer did not.

A kernel that refuses unprivileged user namespaces (some distributions' defaults, gVisor, macOS) makes
``--check`` fail; the evaluator then records that the sandbox ran unconfined, or refuses to start under a profile
that requires confinement (``harness.trusted.profiles.confinement_policy``).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import stat
import subprocess
import sys
import tempfile
import threading

from harness.trusted.process_lifetime import PARENT_ALIVE_FD_ENV, PARENT_PID_ENV, die_with_parent
from harness.trusted.profiles import ALLOW_UNCONFINED_ENV

CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x08000000, 0x10000000, 0x20000000, 0x40000000
LAYERS = "user, network, PID and IPC namespaces"
FILES_LAYER = "Landlock files"  # recorded after LAYERS when the file rules applied
SCOPES_LAYER = "Landlock scopes"  # recorded after FILES_LAYER when the kernel applied the scopes with the file rules
SECCOMP_LAYER = "seccomp"  # recorded last when the seccomp filter applied
ROOT_LAYER = "private root"  # recorded after LAYERS when the sandbox ran in its private root
NOT_ENOUGH = "NOT CONFINED ENOUGH"  # recorded last, with why, where the layers leave the host's services in reach

# x86-64 and arm64 share the generic syscall numbers of Landlock.
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
# Landlock ABI 1 file-system rights (the ones every kernel with Landlock knows).
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_ALL_V1 = (1 << 13) - 1
# Rights later ABIs add: moving files between folders (2), truncating (3), ioctl on devices (5). Each is handled
# where the kernel knows it; unhandled, the right is not restricted at all: under ABI 1's rights alone a sandbox
# could truncate any file of the user's, the ledger included.
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
# Connecting to a Unix socket by its path (ABI 9, Linux 7.1): handled, a sandbox connects only to sockets beneath its
# write roots and ``DRIVER_SERVICE_FOLDER``, and to those made in its own domain. Before it, no Landlock right covers
# it, and a sandbox that may open Unix sockets (on CUDA; wherever the seccomp filter does not apply) may connect to
# any socket of the host its uid may, whatever its file rules say.
FS_RESOLVE_UNIX, RESOLVE_UNIX_ABI = 1 << 16, 9
# Scopes (ABI 6): no signal to, and no connection to an abstract Unix socket of, a process outside the ruleset's
# domain. The launcher's PID and network namespaces already keep a sandbox from the host's processes; the scopes
# also keep the forward pass's parts, each in a domain of its own within one namespace, from each other and from
# the process that started them.
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
SCOPES_ABI = 6
FS_READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
# The rights a rule on a file gives: the kernel refuses a rule on a file with a folder's rights. (Connecting to a
# socket is given only beneath a folder: no rule on a file needs it.)
FS_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
PR_SET_NO_NEW_PRIVS = 38
# The folder of the one service of the host a sandbox may connect to, where the kernel can tell (``FS_RESOLVE_UNIX``):
# the GPU driver's persistence daemon, whose socket the driver looks for.
DRIVER_SERVICE_FOLDER = "/run/nvidia-persistenced"
# What any sandbox may read besides Python, the package and its own folders: the system's files.
SYSTEM_READ_ROOTS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/opt", "/sys", DRIVER_SERVICE_FOLDER)
# /etc is read entry by entry, without these: a sandbox of a user who is root (as in many containers) would read
# the password hashes, private keys and credentials of the host.
ETC_SECRETS = frozenset({
    "shadow", "shadow-", "gshadow", "gshadow-", "sudoers", "sudoers.d", "ssh", "ssl", "pki", "security",
    "credstore", "credstore.encrypted", "docker", "containerd", "kubernetes", "rancher", "cni", "wireguard",
    "ipsec.secrets", "ipsec.d", "ppp", "NetworkManager", "openvpn", "krb5.keytab", "libvirt", "letsencrypt",
    "netrc", "pam.d", "opasswd", ".pwd.lock",
})
# The devices Python and torch open, read by any sandbox (on CUDA, the GPU's device files too: GPU_DEVICE_FILES).
# Never the whole folder: the raw disks are readable by their owner, root, so a sandbox of a user who is root would
# read every file of the host through them, and a user's terminals (/dev/pts) are readable by that user, so any
# sandbox would read what is typed in them.
DEVICE_READS = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
# A sandbox on CUDA may list the device folder too, since what a driver looks for there is not known beforehand: a
# read rule on it lets the sandbox list it and no more (``apply_landlock``), as the private root binds it ``nodev``.
# A device opens only where named.
DEVICE_FOLDER = "/dev"
# In the Hugging Face home folder: the login tokens. Everything else is the datasets cache.
HF_SECRETS = frozenset({"token", "stored_tokens"})
HF_CACHE_FOLDERS = ("datasets", "hub", "modules")
# Under /proc: the process's own entries (resolved when the rules are made), and system-wide files that libraries
# read. Never another process's entries: /proc/<pid>/environ holds that process's secrets.
PROC_READ = ("/proc/self", "/proc/thread-self", "/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/proc/sys",
             "/proc/filesystems", "/proc/mounts", "/proc/loadavg", "/proc/driver")
# Written by any sandbox: the null device. POSIX shared memory (/dev/shm) only on CUDA, where the driver uses it: it is
# shared by every process of the host and outlives the sandbox, so on the CPU it would be a channel from one program
# to the next and memory that no cap counts.
SYSTEM_WRITE_ROOTS = ("/dev/null",)
CUDA_SHARED_MEMORY = "/dev/shm"
# Written by a sandbox on CUDA as well: the driver opens the GPU's device files read-write and drives them with ioctl.
# Only character devices match (``gpu_device_files``), never a folder beneath which a rule would allow creating files.
GPU_DEVICE_FILES = ("/dev/nvidia*", "/dev/nvidia-caps/*")
EXIT_UNAVAILABLE = 125  # the namespaces could not be created; the command was not run
FAILURE_PREFIX = "confine: "  # the first line the launcher writes when it could not start the command
NOTE_PREFIX = "confine (note): "  # a line the launcher writes about a command it starts nonetheless


def enter() -> None:
    """Move this process into new user, network and IPC namespaces; its next child starts a new PID namespace.
    Raises OSError when the kernel refuses."""
    import ctypes

    from harness.trusted.private_root import map_ids

    uid, gid = os.getuid(), os.getgid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(ctypes.c_int(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"unshare refused: {os.strerror(errno)}")
    map_ids(uid, gid)


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


# Run inside the namespaces by ``--check cuda``, and under each layer by ``device_layers``, in an interpreter of its
# own: this module never imports torch.
CUDA_CHECK = """
import sys
try:
    import torch
    a = torch.ones(64, 64, device="cuda")
    assert float((a @ a).sum()) == 64.0 ** 3, "a matrix product on the GPU gave a wrong result"
except Exception as exc:
    sys.exit(f"confine: CUDA does not work in a sandbox here: {type(exc).__name__}: {exc}"[:500])
"""
CHECK_TIMEOUT_S = 150.0


def _check_inside(cuda: bool) -> int:
    if os.getpid() != 1:
        print("confine: the PID namespace was not created", file=sys.stderr)
        return 1
    if cuda:
        return subprocess.run([sys.executable, "-c", CUDA_CHECK], timeout=CHECK_TIMEOUT_S).returncode
    return 0


def recorded(files: bool, seccomp: bool, root: bool = False, services: str | None = None) -> str:
    """The confinement a ledger row records for a confined sandbox: the namespaces, then the layers that applied, and
    ``services`` (``host_services_reason``) where they leave the host's services in reach."""
    scopes = files and landlock_abi() >= SCOPES_ABI
    return LAYERS + (f"; {ROOT_LAYER}" if root else "") + (f"; {FILES_LAYER}" if files else "") \
        + (f"; {SCOPES_LAYER}" if scopes else "") + (f"; {SECCOMP_LAYER}" if seccomp else "") \
        + (f". {NOT_ENOUGH}: {services}" if services else "")


def seccomp_supported() -> bool:
    """Whether the sandbox's seccomp filter exists for this machine and its kernel offers seccomp filters."""
    from harness.trusted import seccomp

    try:
        status = open("/proc/self/status").read()
    except OSError:
        return False
    return sys.platform.startswith("linux") and seccomp.supported_machine() and "Seccomp:" in status


@dataclasses.dataclass(frozen=True)
class Layers:
    """The layers a confined sandbox gets beyond the namespaces; each ``*_absent`` says why that layer does not apply
    (empty when it does)."""

    files: bool  # the Landlock file rules
    seccomp: bool  # the seccomp filter
    files_absent: str = ""
    seccomp_absent: str = ""
    root: bool = False  # the private root (harness.trusted.private_root)
    root_absent: str = ""


# The (files, seccomp, root) combinations a device is checked under, strongest first: Landlock's rules are the finer
# file confinement (and bring the scopes); the private root is the one that does not need Landlock.
COMBINATIONS = ((True, True, True), (True, True, False), (False, True, True), (True, False, True),
                (True, False, False), (False, False, True), (False, True, False))
LAYER_NAMES = ("Landlock", "the seccomp filter", "the private root")
NOT_OFFERED = ("no Landlock", "no seccomp filter for this machine", "no private root on this system")


@functools.lru_cache(maxsize=2)
def device_layers(device: str = "cpu") -> Layers:
    """The layers beyond the namespaces that a sandbox on ``device`` gets on this machine: on CPU, each one the kernel
    offers (the private root once it has been seen to start here); on CUDA, the strongest combination of them under
    which ``CUDA_CHECK`` passes in the launcher (``layers_that_work``). Asked once per process and device."""
    offered = offered_layers()
    if device == "cpu":
        root_error = _check_under("pass", (False, False, True), device) if offered[2] else ""
        return _chosen((offered[0], offered[1], offered[2] and not root_error),
                       {(False, False, True): root_error} if root_error else {}, offered, device)
    unavailable = unavailable_reason(device)
    if unavailable:
        absent = f"a sandbox on {device} is not confined here ({unavailable})"
        return Layers(False, False, absent, absent, False, absent)
    return layers_that_work(CUDA_CHECK, *offered, device)


def offered_layers() -> tuple[bool, bool, bool]:
    """(Landlock, the seccomp filter, the private root): whether this machine offers each, before any device check."""
    return landlock_abi() > 0, seccomp_supported(), sys.platform.startswith("linux")


def offered_combinations(offered: tuple) -> list[tuple]:
    """The ``COMBINATIONS`` whose every layer is ``offered``, strongest first."""
    return [tried for tried in COMBINATIONS if not any(t and not o for t, o in zip(tried, offered))]


class LayersUnknown(RuntimeError):
    """The check failed with no layer at all as well, so no failure can be put down to a layer: nothing is
    concluded (and nothing cached); the evaluation is an infrastructure failure, tried again the next time."""


def layers_that_work(check: str, files: bool, seccomp: bool, root: bool, device: str) -> Layers:
    """The strongest of ``COMBINATIONS`` under which the Python code ``check`` exits 0 in the launcher, as a sandbox
    on ``device`` would run (its file rules, a fresh run folder as its TMPDIR); only the layers offered (``files``,
    ``seccomp``, ``root``) are tried. A layer left out says why: the check's last line of error under it. A layer is
    left out only if the check then passes in the namespaces alone: else LayersUnknown (a GPU that was busy or out
    of memory says nothing about the layers)."""
    offered = (files, seccomp, root)
    errors = {}
    for tried in offered_combinations(offered):
        error = _check_under(check, tried, device)
        if not error:
            return _chosen(tried, errors, offered, device)
        errors[tried] = error
    if errors:
        bare = _check_under(check, (False, False, False), device)
        if bare:
            raise LayersUnknown(f"the {device} check failed in a sandbox even without Landlock, seccomp and the "
                                f"private root, so which layers {device} works under is not known: {bare}")
    return _chosen((False, False, False), errors, offered, device)


def run_as_sandbox(cmd: list[str], layers: tuple, device: str, run_dir: str,
                   timeout_s: float = CHECK_TIMEOUT_S) -> subprocess.CompletedProcess:
    """``cmd`` in the launcher as a sandbox on ``device`` working in ``run_dir`` (its file rules, ``run_dir`` as its
    TMPDIR) runs under the (files, seccomp, root) ``layers``. Raises subprocess.TimeoutExpired past ``timeout_s``."""
    files, seccomp, root = layers
    rules = file_rules(run_dir, device=device) if files or root else None
    return subprocess.run(wrap(cmd, rules, seccomp, device, landlock=files, private_root=root), capture_output=True,
                          text=True, errors="replace", timeout=timeout_s, env={**os.environ, "TMPDIR": run_dir})


def _check_under(check: str, layers: tuple, device: str) -> str:
    """The last line of error of ``check`` run in the launcher under (files, seccomp, root) ``layers``; "" when it
    passed."""
    with tempfile.TemporaryDirectory(prefix="harness-confine-check-") as run_dir:
        try:
            out = run_as_sandbox([sys.executable, "-c", check], layers, device, run_dir)
        except subprocess.TimeoutExpired:
            return f"the check did not finish in {CHECK_TIMEOUT_S:.0f} s"
    if out.returncode == 0:
        return ""
    return (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1].removeprefix(FAILURE_PREFIX)


def _chosen(chosen: tuple, errors: dict, offered: tuple, device: str) -> Layers:
    """``Layers`` for the (files, seccomp, root) ``chosen``; a layer left out says why: not offered, or the check's
    error under that layer alone (else under every layer offered, else under the first combination with it)."""
    absent = []
    for layer, name in enumerate(LAYER_NAMES):
        if chosen[layer]:
            absent.append("")
        elif not offered[layer]:
            absent.append(NOT_OFFERED[layer])
        else:
            alone = tuple(i == layer for i in range(3))
            error = errors.get(alone) or errors.get(tuple(offered)) or next(
                (e for combination, e in errors.items() if combination[layer]), "not checked")
            absent.append(f"{name} was not applied: {device} fails under it here ({error})")
    return Layers(chosen[0], chosen[1], absent[0], absent[1], chosen[2], absent[2])


def host_services_reason(device: str = "cpu") -> str | None:
    """Why a sandbox on ``device``, with the layers it gets here, could still connect to the host's services by the
    path of their Unix socket (a session bus or systemd's, through which it would run commands outside the sandbox);
    None where it cannot: the CPU's seccomp filter refuses every socket, a private root holds no service's socket,
    and Landlock from ABI 9 restricts connecting to one (``FS_RESOLVE_UNIX``). Raises ``LayersUnknown`` as
    ``device_layers`` does."""
    layers = device_layers(device)
    abi = landlock_abi()
    if layers.root or (layers.files and abi >= RESOLVE_UNIX_ABI) or (layers.seccomp and device == "cpu"):
        return None
    why = [layers.root_absent or "no private root",
           f"Landlock ABI {abi}, which restricts connecting to a socket by its path only from ABI {RESOLVE_UNIX_ABI}"
           if layers.files else layers.files_absent or "no Landlock"]
    if device == "cpu":
        why.append(layers.seccomp_absent or "no seccomp filter")
    return f"a sandbox on {device} here could connect to the host's services ({'; '.join(why)})"


def missing_confinement(device: str = "cpu") -> str | None:
    """Why this machine cannot confine a sandbox on ``device`` (no namespaces; or layers that leave the host's
    services in reach: ``host_services_reason``), with what would change it; None when it can. Raises
    ``LayersUnknown`` as ``device_layers`` does."""
    reason = unavailable_reason(device)
    if reason:
        return (f"{reason}. Allow unprivileged user namespaces (for example sysctl "
                "kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu)")
    reason = host_services_reason(device)
    if reason:
        return (f"{reason}. A kernel with Landlock ABI {RESOLVE_UNIX_ABI}, or a private root that works with "
                f"{device} here (python -m harness.trusted.confine --layers {device} says why it does not), keeps "
                "them out of reach")
    return None


def layers_here(device: str = "cpu") -> str:
    """What a sandbox on ``device`` gets on this machine, in the words the ledger records, and why a layer does not
    apply."""
    reason = unavailable_reason(device)
    if reason:
        return f"none: {reason}"
    try:
        layers = device_layers(device)
    except LayersUnknown as exc:
        return f"{LAYERS} (Landlock, seccomp and the private root: not known: {exc})"
    scopes = f"; {SCOPES_LAYER}" if landlock_abi() >= SCOPES_ABI else \
        f" (no {SCOPES_LAYER}: they need ABI {SCOPES_ABI})"
    text = LAYERS + (f"; {ROOT_LAYER}" if layers.root else f" ({layers.root_absent})")
    text += f"; {FILES_LAYER} (ABI {landlock_abi()}){scopes}" if layers.files else \
        f" (no {FILES_LAYER}: {layers.files_absent})" if layers.root else \
        f" (files: the static policy only; {layers.files_absent})"
    text += f"; {SECCOMP_LAYER}" if layers.seccomp else f"; {layers.seccomp_absent}"
    services = host_services_reason(device)
    return text + (f". {NOT_ENOUGH}: {services}" if services else "")


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none or it is disabled."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return 0
    version = _libc().syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                              ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    return int(version) if version > 0 else 0


def handled_rights(abi: int) -> int:
    """The file rights a ruleset restricts under Landlock ABI ``abi``: every one that ABI knows (a kernel refuses a
    ruleset naming a right it does not know)."""
    return FS_ALL_V1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0) \
        | (FS_IOCTL_DEV if abi >= 5 else 0) | (FS_RESOLVE_UNIX if abi >= RESOLVE_UNIX_ABI else 0)


def read_rights(path: str) -> int:
    """The rights a read rule on ``path`` gives: reading; beneath ``DEVICE_FOLDER`` listing only; beneath
    ``DRIVER_SERVICE_FOLDER`` connecting to its socket too."""
    real = os.path.realpath(path)
    if real == DEVICE_FOLDER:
        return FS_READ_DIR
    if real == DRIVER_SERVICE_FOLDER:
        return FS_READ | FS_RESOLVE_UNIX
    return FS_READ


def apply_landlock(read_roots, write_roots) -> None:
    """Restrict this process and its future children to reading beneath ``read_roots`` (``read_rights``) and writing
    beneath ``write_roots`` (a path that does not exist here is skipped), with the rights the kernel knows
    (``handled_rights``), and, where it has them, to the scopes (``SCOPE_*``). Raises OSError naming the failing
    step."""
    import ctypes

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                    ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    def fail(step: str):
        errno = ctypes.get_errno()
        return OSError(errno, f"Landlock {step}: {os.strerror(errno)}")

    libc = _libc()
    abi = landlock_abi()
    handled = handled_rights(abi)
    scoped = abi >= SCOPES_ABI
    attr = RulesetAttr(handled, 0, SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if scoped else 0)
    # A kernel before the scopes knows only the first field: it is handed just that.
    size = ctypes.sizeof(attr) if scoped else ctypes.sizeof(ctypes.c_uint64)
    fd = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        raise fail("create_ruleset")
    try:
        for path, access in [(p, read_rights(p)) for p in read_roots] + [(p, handled) for p in write_roots]:
            try:
                parent = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            access &= handled if os.path.isdir(path) else handled & FS_FILE_RIGHTS  # the kernel refuses any other
            rule = PathBeneath(access, parent)
            rc = libc.syscall(SYS_LANDLOCK_ADD_RULE, ctypes.c_int(fd), ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                              ctypes.byref(rule), ctypes.c_uint32(0))
            os.close(parent)
            if rc < 0:
                raise fail(f"add_rule {path}")
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise fail("no_new_privs")
        if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(fd), ctypes.c_uint32(0)) < 0:
            raise fail("restrict_self")
    finally:
        os.close(fd)


# What of the data a sandbox may reach (``file_rules``): the data sources and the token cache (``prepare``, which
# runs the pristine seed and builds the cache), the token cache alone (a process that trains a program: the text, and
# the datasets cache that holds it, would let it rebuild the scored split), or nothing (the forward-only pass).
DATA_ACCESS = ("sources", "tokens", "none")


# Python finds a package on a path entry by listing that folder. A sandbox may read the package but not the folder it
# sits in when that is a checkout (the rest of the source tree is not its to see), so a package found through
# PYTHONPATH or the working directory, rather than installed, could not be imported in any sandbox under Landlock.
IMPORT_FOLDER_PREFIX = "harness-import-"
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # what a sandbox reads of the source
_import_folder: tuple[int, str] | None = None  # (the pid that made it, the folder)
_import_folder_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    global _import_folder_lock
    _import_folder_lock = threading.Lock()  # a thread of the parent's may have held it: it holds it for ever here


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_after_fork)


class UnsafeFolders(RuntimeError):
    """A folder the trusted side relies on cannot be made, or lies where a sandbox may write: the evaluation is an
    infrastructure failure, with what to change."""


def import_folder() -> str:
    """A folder whose only entry, ``harness``, is a link to this package, made once per process (a forked child
    makes its own) and made again if it is no longer intact: first on every sandbox's PYTHONPATH
    (``executor.sandbox_environment``) and readable by it (``file_rules``), so that a sandbox imports the package
    this process runs, however this process found it. It lives in this process's temporary folder, which
    ``file_rules`` keeps out of every sandbox's write roots. Raises ``UnsafeFolders`` when it cannot be made."""
    global _import_folder
    from harness.trusted.untrusted_files import process_folder, remove_tree

    with _import_folder_lock:
        if _import_folder is None or _import_folder[0] != os.getpid() or not _intact(_import_folder[1], PACKAGE_DIR):
            try:
                folder = process_folder(IMPORT_FOLDER_PREFIX)
            except OSError as exc:
                raise UnsafeFolders(f"cannot make the folder a sandbox imports the package from: {exc}") from exc
            try:
                os.symlink(PACKAGE_DIR, folder / "harness")
            except OSError as exc:
                remove_tree(folder)
                raise UnsafeFolders(f"cannot link the package into {folder} for the sandboxes: {exc}") from exc
            _import_folder = (os.getpid(), str(folder))
        return _import_folder[1]


def _intact(folder: str, package: str) -> bool:
    """Whether ``folder`` is still as ``import_folder`` made it: a folder of this user's that nobody else may write
    (a temporary folder's name is free to take once it is gone), holding only the link to ``package``."""
    try:
        info = os.lstat(folder)
        return (stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700
                and os.listdir(folder) == ["harness"] and os.readlink(os.path.join(folder, "harness")) == package)
    except OSError:
        return False


def _beneath(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def file_rules(run_dir, *, reads=(), writes=(), device: str = "cpu", data: str = "tokens") -> tuple[list[str], list[str]]:
    """(read roots, write roots) of a sandbox that works in ``run_dir``: it reads the system, the Python
    installation, the package (and ``import_folder``) and its seeds, what ``data`` allows of the data
    (``DATA_ACCESS``: with "sources" the datasets cache, read and written; with "sources" or "tokens" the token
    cache, ``cache_dir/tokens``, never the scored split, which lives in ``cache_dir/scored``) and ``reads``; it
    writes ``run_dir``, ``writes`` and, on CUDA, the GPU's device files. Never the ledger, results/, the rest of the
    source tree or the home folders (beyond what Python lives in). Raises ``UnsafeFolders`` where a write root
    holds the import folder or the folder ``run_dir`` is in."""
    import site
    from pathlib import Path

    from harness.trusted.frameworks import FRAMEWORKS
    from harness.trusted.profiles import default_cache_dir

    imports = import_folder()
    seeds = {str(fw.seed_path.resolve().parent) for fw in FRAMEWORKS.values()}
    if data not in DATA_ACCESS:
        raise ValueError(f"data access {data!r} is not one of {DATA_ACCESS}")
    hf = _hf_cache_entries() if data == "sources" else set()
    tokens = {str(default_cache_dir() / "tokens")} if data != "none" else set()
    python = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(sys.executable).resolve().parent),
              *site.getsitepackages(), site.getusersitepackages()}
    # Each device by name (the private root binds only named devices as such); on CUDA the device folder to list.
    devices = ({DEVICE_FOLDER} if device == "cuda" else set()) | set(DEVICE_READS)
    read = sorted(set(SYSTEM_READ_ROOTS) | _entries("/etc", ETC_SECRETS) | devices | set(PROC_READ) | python
                  | {PACKAGE_DIR, imports} | seeds | hf | tokens | {str(run_dir)}
                  | {str(r) for r in reads})
    # The datasets library writes lock files beside its cache even when it only reads.
    gpu = set(gpu_device_files()) if device == "cuda" else set()
    shm = {CUDA_SHARED_MEMORY} if device == "cuda" else set()
    write = sorted(set(SYSTEM_WRITE_ROOTS) | shm | gpu | hf | {str(run_dir)} | {str(w) for w in writes})
    # What the trusted side relies on must lie beneath no other root a sandbox writes: the package link, and the
    # folder the run folders are made in, where the other sandboxes' run folders and the scorer's are.
    for what, folder in (("the folder the sandboxes import the package from", imports),
                         ("the temporary folder, where every run folder is made", os.path.dirname(str(run_dir)))):
        root = next((w for w in write if w != str(run_dir) and _beneath(folder, w)), None)
        if root:
            raise UnsafeFolders(f"{what} ({folder}) lies beneath {root}, which a sandbox on {device} may write: set "
                                f"TMPDIR to a folder that no sandbox writes (for example /tmp)")
    return read, write


def _entries(folder: str, without: frozenset[str]) -> set[str]:
    """The entries of ``folder`` but those named in ``without``: a Landlock rule on a folder covers all beneath it."""
    try:
        return {os.path.join(folder, name) for name in os.listdir(folder) if name not in without}
    except OSError:
        return set()


def _hf_cache_entries() -> set[str]:
    """What a sandbox may read and write of the Hugging Face home folder: its caches (made here if absent, since a
    rule needs an existing path), not its login tokens (``HF_SECRETS``)."""
    from pathlib import Path

    # Where the Hugging Face libraries put it: $HF_HOME, else $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface.
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    home = Path(os.environ.get("HF_HOME") or Path(xdg).expanduser() / "huggingface").expanduser()
    for name in HF_CACHE_FOLDERS:
        try:
            (home / name).mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
    return _entries(str(home), HF_SECRETS) | {os.environ[v] for v in ("HF_DATASETS_CACHE", "HF_HUB_CACHE")
                                               if os.environ.get(v)}


def gpu_device_files() -> list[str]:
    """The GPU's device files here: the character devices that ``GPU_DEVICE_FILES`` matches."""
    found = set()
    for pattern in GPU_DEVICE_FILES:
        for path in glob.glob(pattern):
            try:
                if stat.S_ISCHR(os.stat(path).st_mode):
                    found.add(path)
            except OSError:
                continue
    return sorted(found)


def unconfined_message(profile_name: str, reason: str) -> str:
    """What a profile that requires confinement says where ``missing_confinement`` gives ``reason``."""
    return (f"profile {profile_name!r} runs candidates only in a confined sandbox, and this machine cannot confine "
            f"one: {reason}. Or set {ALLOW_UNCONFINED_ENV}=1 to run with what it has (every ledger row records it)")


def wrap(cmd: list[str], files: tuple[list[str], list[str]] | None = None, seccomp: bool = False,
         device: str = "cpu", status_fd: int | None = None, *, landlock: bool = True,
         private_root: bool = False) -> list[str]:
    """The launcher's command line in front of ``cmd``; ``files``: (read roots, write roots) of the sandbox, which
    Landlock enforces (unless ``landlock`` is false) and, with ``private_root``, a private root holds
    (``harness.trusted.private_root``); ``seccomp``: under the seccomp filter too, which on the CPU (``device``) also
    refuses every socket and memory file (``seccomp.cpu_program``); ``status_fd``: a descriptor the launcher inherits,
    on which it says whether the command started (``STARTED``) or why it could not (``FAILED`` and the reason). The
    command never holds it, so what it prints cannot pass for the launcher's failure."""
    options = ["--cpu-filter"] if seccomp and device == "cpu" else []
    if status_fd is not None:
        options += ["--status-fd", str(status_fd)]
    for path in (files or ([], []))[0]:
        options += ["--read", path]
    for path in (files or ([], []))[1]:
        options += ["--write", path]
    if files and landlock:
        options.append("--landlock")
    if files and private_root:
        options.append("--private-root")
    if seccomp:
        options.append("--seccomp")
    return [sys.executable, "-m", "harness.trusted.confine", *options, "--", *cmd]


FLAGS = ("--seccomp", "--cpu-filter", "--landlock", "--private-root")


def _parse(argv: list[str]) -> tuple[list[str], list[str], set[str], int | None, list[str]]:
    """(read roots, write roots, the flags given (``FLAGS``), status descriptor, command) of the launcher's
    arguments."""
    read, write, flags, status_fd = [], [], set(), None
    while argv and argv[0] in ("--read", "--write", "--status-fd", *FLAGS):
        if argv[0] in FLAGS:
            flags.add(argv[0])
            argv = argv[1:]
            continue
        if argv[0] == "--status-fd":
            status_fd = int(argv[1])
        else:
            (read if argv[0] == "--read" else write).append(argv[1])
        argv = argv[2:]
    return read, write, flags, status_fd, argv[1:] if argv[:1] == ["--"] else argv


STARTED, FAILED = b"started", b"failed: "


def _tell(status_fd: int | None, message: bytes) -> None:
    if status_fd is None:
        return
    try:
        os.write(status_fd, message)
        os.close(status_fd)
    except OSError:
        pass


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
    if argv[:1] == ["--layers"]:
        print(layers_here(*(argv[1:2] or ["cpu"])))
        return 0
    die_with_parent()
    read, write, flags, status_fd, argv = _parse(argv)
    try:
        enter()
        # The private root's mount point while it is built: an empty folder, mounted only in the sandbox's namespace.
        mountpoint = tempfile.mkdtemp(prefix="harness-root-") if "--private-root" in flags else None
    except OSError as exc:
        print(f"{FAILURE_PREFIX}{exc}", file=sys.stderr, flush=True)
        _tell(status_fd, FAILED + str(exc).encode(errors="replace"))
        return EXIT_UNAVAILABLE
    alive_r, alive_w = os.pipe()  # the launcher holds the write end for as long as it lives
    # Closed by the exec itself: end of file without a word means the command started.
    exec_r, exec_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        # Process 1 of the new namespace. Its parent is outside, where the namespace shows no pid: 0, so
        # die_with_parent reads the launcher's death from the pipe (see process_lifetime).
        try:
            if status_fd is not None:
                os.close(status_fd)
            os.close(exec_r)
            os.close(alive_w)
            os.set_inheritable(alive_r, True)
            os.environ[PARENT_PID_ENV] = "0"
            os.environ[PARENT_ALIVE_FD_ENV] = str(alive_r)
            try:
                from harness.trusted import private_root

                if mountpoint:
                    private_root.enter(read, write, mountpoint)
                elif "--landlock" in flags and CUDA_SHARED_MEMORY in write and os.path.isdir(CUDA_SHARED_MEMORY):
                    try:
                        private_root.private_shared_memory()
                    except OSError as exc:
                        # Never the host's: the sandbox may then not write /dev/shm at all (where a device needs it,
                        # its check fails under Landlock and says so).
                        write = [path for path in write if path != CUDA_SHARED_MEMORY]
                        print(f"{NOTE_PREFIX}no /dev/shm of its own here ({exc}): it may not write /dev/shm",
                              file=sys.stderr, flush=True)
                if "--landlock" in flags:
                    apply_landlock(read, write)
                if "--seccomp" in flags:  # last: it refuses calls the steps before make
                    from harness.trusted import seccomp as filters

                    filters.apply()
                    if "--cpu-filter" in flags:
                        filters.apply(filters.cpu_program())
            except OSError as exc:
                print(f"{FAILURE_PREFIX}{exc}", file=sys.stderr, flush=True)
                os.write(exec_w, str(exc).encode(errors="replace") or b"?")
                os._exit(EXIT_UNAVAILABLE)
            try:
                os.execvp(argv[0], argv)
            except OSError as exc:
                os.write(exec_w, f"cannot run {argv[0]}: {exc}".encode(errors="replace"))
        finally:
            os._exit(127)
    os.close(exec_w)
    failure = b""
    while chunk := os.read(exec_r, 4096):
        failure += chunk
    os.close(exec_r)
    _tell(status_fd, FAILED + failure if failure else STARTED)
    os.close(alive_r)
    status = os.waitpid(pid, 0)[1]
    os.close(alive_w)
    if mountpoint:
        try:
            os.rmdir(mountpoint)
        except OSError:
            pass
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Where a candidate's sandbox runs. The gate, the scoring, the reason codes and the ledger do not depend on it.

``local`` (the default): ``python -m harness.sandbox`` as a subprocess of this host, in an evaluation slot
(``harness.trusted.slots``), in its own process group, killed at its hard limit or resident-memory cap.

``ray``: a Ray task on the cluster named by ``HARNESS_RAY_ADDRESS`` or ``RAY_ADDRESS`` (default ``auto``: a
cluster already running on this host; a new one is never started). The task asks for one CPU, plus one GPU
under a CUDA profile, and on its worker starts the very same sandbox subprocess under the very same limits.
Ray's resource accounting replaces the slots.

The request is plain JSON and carries the candidate's source as text: nothing of the candidate is imported
on the driver, and the sandbox reads no file of the driver's.

Why each Ray submission is its own short-lived process (``python -m harness.trusted.executor submit``): OpenEvolve
loads the evaluator in its main process, forks its workers and calls the evaluator from threads. A Ray
connection survives neither a fork nor being shared that way, so no OpenEvolve process ever holds one.

A worker that dies under the task (OOM kill, preemption, node loss) is the cluster's fault, never the
candidate's: the submission is retried up to ``HARNESS_RAY_RETRIES`` times, and when every attempt was lost
the evaluation is an ``infrastructure`` result. The caller records it once, with its attempts. A candidate
that crashes or times out inside a healthy worker is still the candidate's fault, exactly as on ``local``.

Baselines are per fingerprint, and the fingerprint covers the worker's hardware. An evaluation that lands on
hardware whose baseline is unknown trains the pristine seed there first (same worker, same GPU) and returns
that baseline with the result, so a score is always measured against a baseline from identical hardware.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from harness.trusted import confine
from harness.trusted.process_lifetime import PARENT_PID_ENV, stat_fields
from harness.trusted.profiles import default_cache_dir
from harness.trusted.scoring import SCORED_FIELDS, TRAINING_BEGINS
from harness.trusted.untrusted_files import MAX_DEPTH, files_bytes, read_untrusted, run_folder

EXECUTORS = ("local", "ray")
STDERR_TAIL_CHARS = 4000
RESULT_MAX_BYTES = 32 << 20  # a result file holds the curves of four rungs of 100k steps: well under a MiB
LOG_WATCH_BYTES = 1 << 20  # of a sandbox's log read per poll while watching for the training's start
POLL_INTERVAL_S = 0.2
MAPS_INTERVAL_S = 2.0  # how often the disk cap reads the sandbox's mappings (files unlinked while mapped), s
ABANDON_WAIT_S = 5.0  # the longest a kill waits for the sandbox's last processes to be gone
# The submit process holds a Ray driver (~300 MiB) and nothing of the candidate: its cap only guards leaks.
SUBMIT_MEMORY_CAP_MIB = 4096
# Connecting to the cluster and shipping the result back, beyond the task's own limits.
SUBMIT_OVERHEAD_S = 120.0
# The scorer's own work beyond its forward-only sandbox's limit: reading the weights and the data, the loss.
SCORER_OVERHEAD_S = 300.0
# The longest the host waits for the data pipeline's answer to a question that reads two names (data_prepared), s.
DATA_QUESTION_LIMIT_S = 60.0
# The scored windows are split into this many parts, each run by a child process of the forward-only sandbox, and a
# canary never runs beside its original (``harness.scorer.score.layout``).
FORWARD_PARTS = 2
# Ray's errors that mean the worker or its node went away under the task: retried, never the candidate's fault.
LOST_WORKER_ERRORS = ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "ObjectLostError",
                      "OwnerDiedError", "LocalRayletDiedError", "ObjectReconstructionFailedError",
                      "ObjectFetchTimedOutError", "ActorDiedError")


@dataclass(frozen=True)
class ExecutorConfig:
    """Every setting of the executors, read from the environment (see the README's table)."""

    name: str = "local"  # HARNESS_EXECUTOR
    ray_address: str = "auto"  # HARNESS_RAY_ADDRESS, else RAY_ADDRESS
    ray_retries: int = 2  # HARNESS_RAY_RETRIES: extra attempts after a lost worker
    ray_gpus_per_eval: float = 1.0  # HARNESS_RAY_GPUS: GPUs one task asks for under a CUDA profile
    ray_cpus_per_eval: float = 1.0  # HARNESS_RAY_CPUS: CPUs one task asks for (CPU profiles; 1 = the sandbox's thread)
    ray_accelerator_type: str | None = None  # HARNESS_RAY_ACCELERATOR_TYPE, e.g. "H100": keep a campaign on one GPU kind
    ray_queue_wait_s: float = 3600.0  # HARNESS_RAY_QUEUE_WAIT_S: longest wait for the cluster to start a task, seconds
    # HARNESS_RAY_CONNECT_TIMEOUT_S: Ray retries an unreachable cluster for a long time; give up after this, seconds
    ray_connect_timeout_s: float = 60.0

    @classmethod
    def from_env(cls, name: str | None = None) -> "ExecutorConfig":
        from harness.trusted.profiles import ConfigError

        env = os.environ
        chosen = (name or env.get("HARNESS_EXECUTOR") or "local").strip().lower()
        if chosen not in EXECUTORS:
            raise ConfigError(f"unknown executor {chosen!r}: one of {', '.join(EXECUTORS)} (HARNESS_EXECUTOR)")
        defaults = cls()

        def number(variable: str, kind, default):
            try:
                value = kind(env.get(variable, default))
            except ValueError:
                what = "an integer" if kind is int else "a number"
                raise ConfigError(f"{variable}={env[variable]!r} is not {what}") from None
            if value < 0:
                raise ConfigError(f"{variable}={env[variable]!r} is negative")
            return value

        return cls(
            name=chosen,
            ray_address=env.get("HARNESS_RAY_ADDRESS") or env.get("RAY_ADDRESS") or defaults.ray_address,
            ray_retries=number("HARNESS_RAY_RETRIES", int, defaults.ray_retries),
            ray_gpus_per_eval=number("HARNESS_RAY_GPUS", float, defaults.ray_gpus_per_eval),
            ray_cpus_per_eval=number("HARNESS_RAY_CPUS", float, defaults.ray_cpus_per_eval),
            ray_accelerator_type=env.get("HARNESS_RAY_ACCELERATOR_TYPE") or None,
            ray_queue_wait_s=number("HARNESS_RAY_QUEUE_WAIT_S", float, defaults.ray_queue_wait_s),
            ray_connect_timeout_s=number("HARNESS_RAY_CONNECT_TIMEOUT_S", float, defaults.ray_connect_timeout_s),
        )


@dataclass
class SandboxRun:
    """How one sandbox run ended, wherever it ran.

    ``outcome``: "exited" (``result`` is what the sandbox wrote, or None when it died without writing),
    "timeout", "memory", "disk" (its files grew past its disk cap), or "infrastructure" (it could not run: no slot,
    no cluster, every worker lost; ``error`` says why)."""

    outcome: str
    result: dict | None
    log: str = ""
    error: str = ""
    execution: dict = field(default_factory=dict)  # executor, host, attempts, lost workers, times
    new_baseline: dict | None = None  # {"fingerprint": fp, "record": baseline} trained on a new worker kind


# ----------------------------------------------------------------------------------------------------------
# The sandbox subprocess, on whichever host runs it


def _pid_namespace(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _rss_mib(pids: list[int]) -> float:
    total_pages = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total_pages += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total_pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


@dataclass
class DiskCap:
    """The most bytes of files a sandbox may hold (``untrusted_files.files_bytes``): those under its run ``folder``,
    and those its processes keep open or mapped after unlinking them from the folder's file system (no longer under
    any folder, they still take the space). Past it, or where they cannot be counted, the sandbox is killed. Its
    processes are also refused any one file larger than the cap (``harness.sandbox.entry.cap_file_size``)."""

    folder: Path
    cap_bytes: int
    peak_bytes: int = 0  # the most it was seen to hold: the ledger records it, to size the cap by

    def exceeded(self, pids: list[int], maps: bool = True) -> bool:
        used = files_bytes(self.folder, pids, maps)
        self.peak_bytes = max(self.peak_bytes, used or 0)
        return used is None or used > self.cap_bytes


def disk_message(disk: DiskCap) -> str:
    return (f"its files grew past the disk cap of {disk.cap_bytes / 2**20:.0f} MiB, or hid from the count (a folder "
            f"made unreadable or nested over {MAX_DEPTH} deep), and it was killed; a program may not write files")


@dataclass
class Started:
    """A process started in its own process group, its stdin a pipe, not yet supervised (``start_limited``)."""

    proc: subprocess.Popen
    log: object  # the open log file
    spaces: dict = field(default_factory=dict)  # the PID namespaces of its processes seen so far, each held open


def start_limited(cmd: list[str], log_path: Path, env: dict | None = None, pass_fds: tuple = ()) -> Started:
    """Start cmd in its own process group, its output to ``log_path``. Every process started so is then either
    supervised or abandoned; until then it may only wait for its stdin: a process that its caller needs soon is
    started ahead, so that its interpreter start and imports overlap what comes before."""
    env = {**(os.environ if env is None else env), PARENT_PID_ENV: str(os.getpid())}
    log = open(log_path, "wb")
    try:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
                                start_new_session=True, env=env, pass_fds=pass_fds)
    except BaseException:
        log.close()
        raise
    return Started(proc, log)


def _processes_by_namespace() -> tuple[dict[str | None, list[int]], dict[int, list[int]]]:
    """Every live process of the host by PID namespace, and by process group. A zombie is left out: it holds nothing."""
    spaces: dict[str | None, list[int]] = {}
    groups: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = stat_fields(entry.name)
        if fields is None or fields[0] in ("Z", "X") or not fields[2].isdigit():
            continue
        pid = int(entry.name)
        spaces.setdefault(_pid_namespace(pid), []).append(pid)
        groups.setdefault(int(fields[2]), []).append(pid)
    return spaces, groups


def _hold_namespace(started: Started, pid: int, kind: str, group: int | None = None) -> None:
    """Remember the PID namespace that process ``pid``'s ``/proc/PID/ns/<kind>`` names, if it is not this process's,
    holding it open: a namespace's number is free for the next one once its last process is gone, and the next one
    is often a concurrent sandbox's, whose processes this one's kill would then take for its own. ``group``: the
    process group the process must still be in once its namespace is open (its pid was not reused meanwhile)."""
    try:
        fd = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # the process has ended
        return
    name = f"pid:[{os.fstat(fd).st_ino}]"
    fields = stat_fields(pid) if group is not None else None
    if name in started.spaces or name == _pid_namespace("self") or (
            group is not None and (fields is None or fields[2] != str(group))):
        os.close(fd)
    else:
        started.spaces[name] = fd


def _sandbox_processes(started: Started) -> list[int]:
    """The processes of the sandbox ``started``: its process group and, where the sandbox has a PID namespace of its
    own, every process in it. The namespace is held from the first look on (``started.spaces``): the launcher's
    namespace for its children (``confine.main``), read while the launcher lives, and the namespaces of the group's
    processes. A process that left the group (``setsid``), even the sandbox's process 1, is still in the namespace;
    a sandbox the process started in turn (the scorer's forward pass) is in a namespace of its own, under its own
    cap."""
    own = _pid_namespace("self")
    _hold_namespace(started, started.proc.pid, "pid_for_children")
    spaces, groups = _processes_by_namespace()
    group = groups.get(started.proc.pid, [])
    space_of = {pid: space for space, pids in spaces.items() for pid in pids}
    for pid in group:
        if space_of.get(pid) not in (own, None, *started.spaces):
            _hold_namespace(started, pid, "pid", started.proc.pid)
    return sorted(set(group).union(*(spaces.get(space, []) for space in started.spaces)))


def supervise(started: Started, limit_s: float, memory_cap_mib: int, message: bytes = b"",
              on_poll: Callable[[], None] | None = None, disk: DiskCap | None = None) -> str:
    """Write ``message`` to the process's stdin and close it, then kill its whole group past the wall-clock limit
    (counted from now), the resident-memory cap or the ``disk`` cap. ``on_poll`` is called at every poll while it
    runs. Returns "exited", "timeout", "memory" or "disk"."""
    proc = started.proc
    deadline = time.monotonic() + limit_s
    maps_read = -math.inf
    outcome = "exited"
    try:
        try:
            proc.stdin.write(message)
            proc.stdin.close()
        except OSError:  # it exited already: its outcome is read below
            pass
        while proc.poll() is None:
            pids = _sandbox_processes(started)
            now = time.monotonic()
            maps = now - maps_read >= MAPS_INTERVAL_S
            if now > deadline:
                outcome = "timeout"
            elif _rss_mib(pids) > memory_cap_mib:
                outcome = "memory"
            elif disk is not None and disk.exceeded(pids, maps):
                outcome = "disk"
            if maps:
                maps_read = now
            if outcome != "exited":
                break
            if on_poll is not None:
                on_poll()
            try:
                proc.wait(timeout=POLL_INTERVAL_S)  # returns as soon as it exits: no wall time lost to polling
            except subprocess.TimeoutExpired:
                pass
    finally:
        abandon(started)
    return outcome


def abandon(started: Started) -> None:
    """Kill the process's whole group and every process of its PID namespaces, and reap it: a candidate may leave
    children behind even when it exits, and a process of the sandbox that left the group (process 1 included, its
    death signal cleared) outlived the group's kill. Returns once none is left, or after ``ABANDON_WAIT_S``."""
    pids = _sandbox_processes(started)
    try:
        os.killpg(started.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    started.proc.wait()
    deadline = time.monotonic() + ABANDON_WAIT_S
    while started.spaces and time.monotonic() < deadline:
        spaces, _ = _processes_by_namespace()
        left = [pid for space in started.spaces for pid in spaces.get(space, [])]
        if not left:
            break
        for pid in left:  # one that started between the look and the kill
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    for fd in started.spaces.values():
        os.close(fd)
    started.spaces.clear()
    if started.proc.stdin and not started.proc.stdin.closed:
        try:
            started.proc.stdin.close()
        except OSError:
            pass
    started.log.close()


def run_limited(cmd: list[str], limit_s: float, memory_cap_mib: int, log_path: Path, env: dict | None = None) -> str:
    """Run cmd in its own process group; kill the whole group past the wall-clock limit or the
    resident-memory cap. Returns "exited", "timeout" or "memory"."""
    return supervise(start_limited(cmd, log_path, env), limit_s, memory_cap_mib)


def tail(path: Path, chars: int = STDERR_TAIL_CHARS) -> str:
    data = read_untrusted(path, 4 * chars, last=True)
    return data.decode(errors="replace")[-chars:] if data else ""


# The environment a sandbox sees is built from this allow-list: what Python, torch, CUDA and the data cache need.
# Anything else in the caller's environment (API keys, tokens, cloud credentials, the harness's own settings)
# never reaches candidate code; a name that looks like a credential is dropped even when a prefix allows it.
SANDBOX_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "PYTHONPATH",
    "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE", "PYTHONNOUSERSITE", "VIRTUAL_ENV", "CONDA_PREFIX",
    "LD_LIBRARY_PATH", "XDG_CACHE_HOME", "HARNESS_CACHE", "HF_HOME", "HF_DATASETS_CACHE", "HF_HUB_CACHE",
    "HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE",
})
SANDBOX_ENV_PREFIXES = ("LC_", "OMP_", "MKL_", "KMP_", "OPENBLAS_", "CUDA_", "NVIDIA_", "CUBLAS_", "CUDNN_", "NCCL_",
                        "TORCH_", "TORCHINDUCTOR_", "TRITON_", "PYTORCH_")
CREDENTIAL_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH", "COOKIE")


def sandbox_environment(source: dict | None = None, **extra: str) -> dict[str, str]:
    """The allow-listed part of ``source`` (default: this process's environment), plus ``extra``, with this
    process's package first on the path (``confine.import_folder``). Raises ``confine.UnsafeFolders`` when that
    cannot be made."""
    source = os.environ if source is None else source
    kept = {name: value for name, value in source.items()
            if (name in SANDBOX_ENV_NAMES or name.startswith(SANDBOX_ENV_PREFIXES))
            and not any(marker in name.upper() for marker in CREDENTIAL_MARKERS)}
    kept["PYTHONPATH"] = os.pathsep.join(filter(None, [confine.import_folder(), kept.get("PYTHONPATH")]))
    # ``python -m`` would put the working directory ahead of that (Python 3.11+ leaves it out): a launcher, scorer
    # or sandbox started in a checkout would run the checkout's package rather than the evaluator's.
    kept["PYTHONSAFEPATH"] = "1"
    return {**kept, **extra}


def _ask_data(question: list[str], folder: Path, limit_s: float, memory_cap_mib: int) -> tuple[dict, str]:
    """``python -m harness.data QUESTION...``: the data pipeline's answer to the host (which the trusted side does
    not import), from a process that runs no program, under the limits; ({}, why) when there is none."""
    reply_path, log_path = folder / f"data-{question[0]}.json", folder / f"data-{question[0]}.log"
    outcome = run_limited([sys.executable, "-m", "harness.data", *question, str(reply_path)], limit_s,
                          memory_cap_mib, log_path, {**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        reply = json.loads(reply_path.read_text()) if outcome == "exited" else None
    except (OSError, ValueError):
        reply = None
    if isinstance(reply, dict):
        return reply, ""
    return {}, f"the process ended ({outcome}) without a reply: {tail(log_path)[-1500:]}"


def fetch_data(request: dict, folder: Path, limit_s: float, memory_cap_mib: int) -> str | None:
    """Make the request's hub data source loadable offline on this host before a preparation, whose sandbox has no
    network (``harness.data.fetch_hub_source``): done by a process that runs no program and so may reach the network
    and see the user's environment. None when done or nothing needs fetching, else why not."""
    from harness.trusted.profiles import request_profile

    try:
        source = request_profile(request).data_source
    except Exception:  # noqa: BLE001 - the preparation sandbox reports a request it cannot run
        return None
    reply, why = _ask_data(["fetch", source], folder, limit_s, memory_cap_mib)
    if "splits" in reply:
        return None
    return f"cannot fetch the data source {source!r} onto this host: {reply.get('error') or why}"


def data_prepared(request: dict, memory_cap_mib: int) -> bool:
    """Whether this host has prepared the request's data (``harness.data.is_prepared``); False when unsure."""
    from harness.trusted.profiles import request_profile

    try:
        profile = request_profile(request)
    except Exception:  # noqa: BLE001 - the sandbox reports a request it cannot run
        return True
    with tempfile.TemporaryDirectory(prefix="harness-data-") as folder:
        reply, _ = _ask_data(["prepared", profile.data_source, str(profile.vocab_size),
                              str(profile.tokenizer_train_bytes), str(profile.synthetic_stories)], Path(folder),
                             DATA_QUESTION_LIMIT_S, memory_cap_mib)
    return reply.get("prepared") is True


def run_sandbox_here(mode: str, request: dict, limit_s: float, memory_cap_mib: int,
                     env: dict | None = None) -> SandboxRun:
    """``python -m harness.sandbox MODE`` on this host, under the limits, in the allow-listed environment plus
    ``env`` (the slot's device); no slot is taken here. A training that finished is then scored by the trusted
    scorer on this same host (``_score``): its losses and counts replace the sandbox's own."""
    with run_folder("harness-sandbox-") as tmp, run_folder("harness-scorer-") as private:
        try:
            missing = confine.missing_confinement(request.get("device", "cpu"))
        except confine.LayersUnknown as exc:
            return SandboxRun("infrastructure", None, error=str(exc))
        if missing and request.get("confinement", "required") == "required":
            return SandboxRun("infrastructure", None, error=confine.unconfined_message(request.get("profile", "?"),
                                                                                        missing))
        unavailable = confine.unavailable_reason(request.get("device", "cpu"))  # no namespaces: runs unconfined
        disk = sandbox_disk_cap(mode, request, tmp)
        request = {**request, "weights_dir": str(tmp / "weights"),
                   **({"disk_cap_bytes": disk.cap_bytes} if disk else {})}
        (tmp / "request.json").write_text(json.dumps(request))
        result_path, log_path = tmp / "result.json", tmp / "sandbox.log"
        for folder in ("tmp", "weights"):
            (tmp / folder).mkdir()
        (private / "tmp").mkdir()
        # The scorer gets a scratch folder of its own: the sandbox's is the candidate's to write. No sandbox has a
        # network (confine); offline, the Hugging Face libraries fail at once or serve their cache (fetch_data).
        try:
            base_env = sandbox_environment(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                                           **(env or {}))
        except confine.UnsafeFolders as exc:
            return SandboxRun("infrastructure", None, error=str(exc))
        env = {**base_env, **scratch_environment(tmp / "tmp")}
        cmd = [sys.executable, "-m", "harness.sandbox", mode, str(tmp / "request.json"), str(result_path)]
        sandbox_limit_s = limit_s
        if mode == "prepare":  # the download and the preparation share the preparation's limit, not the scorer's
            fetch_start = time.monotonic()
            problem = fetch_data(request, private, limit_s, memory_cap_mib)
            if problem:
                return SandboxRun("infrastructure", None, error=problem)
            sandbox_limit_s = max(limit_s - (time.monotonic() - fetch_start), 1.0)
        try:
            files = (file_confinement(request, tmp, writes=[default_cache_dir()], data="sources") if mode == "prepare"
                     else file_confinement(request, tmp))
            seccomp = seccomp_applies(request)
        except (confine.LayersUnknown, confine.UnsafeFolders) as exc:
            return SandboxRun("infrastructure", None, error=str(exc))
        status_r, status_w = os.pipe()  # the launcher's word on whether the sandbox started (confine.wrap)
        if unavailable:
            confinement, launched = f"none: {unavailable}", cmd
        else:
            confinement = confine.recorded(files["landlock"], seccomp, files["private_root"],
                                           confine.host_services_reason(request.get("device", "cpu")))
            launched = confine.wrap(cmd, files["rules"], seccomp, request.get("device", "cpu"), status_fd=status_w,
                                    landlock=files["landlock"], private_root=files["private_root"])
        scorer: list = []  # [Started] once started, [None, error] if it could not start
        begins = _LogWatch(log_path, TRAINING_BEGINS)

        def start_scorer() -> None:
            if scorer or mode not in TRAINING_RECORD:
                return
            try:
                scorer.append(_start_scorer(mode, request, tmp, private, limit_s, memory_cap_mib, base_env,
                                            not unavailable))
            except Exception as exc:  # noqa: BLE001 - a request it cannot plan for fails only if scoring is needed
                scorer.extend([None, f"{type(exc).__name__}: {exc}"])

        def on_poll() -> None:
            # Started as the training starts, it imports torch and starts its forward-only sandbox meanwhile.
            if not scorer and begins.seen():
                start_scorer()

        try:
            try:
                started = start_limited(launched, log_path, env, pass_fds=() if unavailable else (status_w,))
            finally:
                os.close(status_w)
            outcome = supervise(started, sandbox_limit_s, memory_cap_mib, on_poll=on_poll, disk=disk)
            result = read_result(result_path) if outcome == "exited" and result_path.exists() else None
            log = tail(log_path)
            status = _read_status(status_r)
            if result is None and not unavailable and status.startswith(confine.FAILED):
                # The launcher could not confine the sandbox, which never started: not the candidate's. Only the
                # launcher holds the descriptor it says so on; the sandbox's own output could say anything.
                error = confine.FAILURE_PREFIX + status[len(confine.FAILED):].decode(errors="replace")[:2000]
                return SandboxRun("infrastructure", None, log, error=error, execution={"confinement": confinement})
            run = SandboxRun(outcome, result, log, error=disk_message(disk) if outcome == "disk" else "",
                             execution={"confinement": confinement,
                                        **({"disk_peak_mib": round(disk.peak_bytes / 2**20, 3)} if disk else {})})
            if result is not None and _trained(mode, result):
                start_scorer()  # a training too short to be seen starting, or a log line the program suppressed
                if scorer[0] is None:
                    return SandboxRun("infrastructure", None, log, error=f"the trusted scorer could not start: "
                                      f"{scorer[1]}", execution={"confinement": confinement})
                _score(mode, run, private, scorer[0], limit_s, memory_cap_mib)
            return run
        finally:
            if scorer and scorer[0] is not None and scorer[0].proc.poll() is None:
                abandon(scorer[0])


# The modes that run a candidate's code (``prepare`` runs the pristine seed, and writes the token cache outside its
# run folder).
CANDIDATE_MODES = ("evaluate", "objective")


def sandbox_disk_cap(mode: str, request: dict, run_dir: Path) -> DiskCap | None:
    """The disk cap of a sandbox in ``mode`` working in ``run_dir``: the ``disk_cap_mib`` of the profile the request
    names; None for a mode that runs no candidate."""
    from harness.trusted.profiles import get_profile

    if mode not in CANDIDATE_MODES:
        return None
    return DiskCap(run_dir, get_profile(request["profile"]).disk_cap_mib << 20)


def _read_status(fd: int) -> bytes:
    """What the launcher said on its status pipe (``confine.wrap``), once it is gone; closes ``fd``."""
    chunks = []
    try:
        os.set_blocking(fd, False)
        while len(chunks) < 16 and (chunk := os.read(fd, 4096)):
            chunks.append(chunk)
    except OSError:  # nothing written, and a writer still open
        pass
    finally:
        os.close(fd)
    return b"".join(chunks)


class _LogWatch:
    """Whether a line holding ``marker`` has been written to a growing log file. Each look reads only what is new, and
    at most ``LOG_WATCH_BYTES``: a program that floods its log delays the sighting (the scorer then starts when the
    sandbox ends), never fills this process's memory."""

    def __init__(self, path: Path, marker: str):
        self.path, self.marker = path, marker.encode()
        self.offset, self.carry, self.found = 0, b"", False

    def seen(self) -> bool:
        if not self.found:
            new = read_untrusted(self.path, LOG_WATCH_BYTES, offset=self.offset)
            if new is None:
                return False
            self.offset += len(new)
            window = self.carry + new
            self.found = self.marker in window
            self.carry = window[-len(self.marker):]
        return self.found


def file_confinement(request: dict, run_dir: Path, *, reads=(), writes=(), data: str = "tokens") -> dict:
    """How a confined sandbox's files are confined: ``rules``, its (read roots, write roots) (``confine.file_rules``),
    or None where no layer enforces them; ``landlock`` and ``private_root``, the layers that do
    (``confine.device_layers``: a kernel without Landlock, or a GPU driver that fails under it, has the private root
    alone). With ``data`` "sources" (``prepare`` only, which runs the pristine seed and may write the token cache it
    builds), a data source that is a local folder or file is readable too. The cache folder is created here, since a
    rule needs an existing path."""
    device = request.get("device", "cpu")
    layers = confine.device_layers(device)
    if not (layers.files or layers.root):
        return {"rules": None, "landlock": False, "private_root": False}
    (default_cache_dir() / "tokens").mkdir(parents=True, exist_ok=True)
    source = Path(str(request.get("data_source", ""))).expanduser()
    if data == "sources" and source.exists():
        reads = [*reads, source.resolve()]
    return {"rules": confine.file_rules(run_dir, reads=reads, writes=writes, device=device, data=data),
            "landlock": layers.files, "private_root": layers.root}


def seccomp_applies(request: dict) -> bool:
    """Whether a confined sandbox runs under the seccomp filter (``confine.device_layers``)."""
    return confine.device_layers(request.get("device", "cpu")).seccomp


def scratch_environment(folder: Path) -> dict[str, str]:
    """The variables that keep a process's temporary files and compilation caches in its own folder, whatever the
    user set. Inductor's and Triton's kernels (Triton's override and dump folders too), torch's extensions and the
    CUDA and torch kernel caches would otherwise live in folders shared between sandboxes, where a candidate could
    leave a kernel for a later program to load (and which a sandbox under Landlock may not write)."""
    return {"TMPDIR": str(folder), "TORCHINDUCTOR_CACHE_DIR": str(folder / "torchinductor"),
            "TRITON_HOME": str(folder), "TRITON_CACHE_DIR": str(folder / "triton"),
            "TRITON_OVERRIDE_DIR": str(folder / "triton-override"), "TRITON_DUMP_DIR": str(folder / "triton-dump"),
            "TORCH_EXTENSIONS_DIR": str(folder / "torch-extensions"), "CUDA_CACHE_PATH": str(folder / "nv"),
            "PYTORCH_KERNEL_CACHE_PATH": str(folder / "torch-kernels"),
            # Where the Hugging Face libraries look for a login token: a path that does not exist. The real one is
            # out of a sandbox's reach (``confine.HF_SECRETS``), and a token file it may not read would be an error.
            "HF_TOKEN_PATH": str(folder / "no-hf-token"), "HF_STORED_TOKENS_PATH": str(folder / "no-hf-tokens")}


# ----------------------------------------------------------------------------------------------------------
# The trusted scoring of a finished training, on the host that trained it

# Where each training mode's result holds its training record.
TRAINING_RECORD = {"prepare": "baseline", "evaluate": "objective", "objective": "record"}


def _trained(mode: str, result: dict) -> bool:
    if mode == "prepare":
        return result.get("baseline_computed") is True
    return mode in TRAINING_RECORD and result.get("reason") == "ok"


def _scored_rungs(mode: str, request: dict) -> list[tuple]:
    from harness.trusted.profiles import request_profile
    from harness.trusted.scoring import rungs_for

    return rungs_for(request_profile(request), request.get("rungs") if mode == "objective" else None)


def _start_scorer(mode: str, request: dict, tmp: Path, private: Path, limit_s: float, memory_cap_mib: int,
                  env: dict, confined: bool) -> Started:
    """Start ``python -m harness.scorer`` ahead, with everything known before the training: it imports torch and
    starts its forward-only sandbox while the training runs, then waits for the training's data hash. Its plan,
    log, result and scratch folder live in ``private``, outside every sandbox's run folder (``tmp``), and so does
    the forward-only sandbox's folder, with one folder per part: a training sandbox can neither reach them nor, by
    changing what their paths name before the Landlock rules are made, move those rules elsewhere. ``env``: the
    sandboxes' environment without a scratch folder (each process gets its own)."""
    from harness.trusted.frameworks import get_framework
    from harness.trusted.profiles import get_profile

    source = request.get("source") if mode != "prepare" else get_framework(request["framework"]).seed_source()
    forward_request = {k: v for k, v in request.items() if k not in ("baselines", "source", "weights_dir")}
    forward_dir = private / "forward"
    parts = [forward_dir / str(part) for part in range(FORWARD_PARTS)]
    for folder in (forward_dir / "tmp", *(p / sub for p in parts for sub in ("tmp", "weights"))):
        folder.mkdir(parents=True)
    forward = {"dir": str(forward_dir), "files": file_confinement(request, forward_dir, data="none"),
               "parts": [str(p) for p in parts]}
    plan = {"request": {**forward_request, "source": source}, "rungs": [list(r) for r in _scored_rungs(mode, request)],
            "weights_dir": str(tmp / "weights"), "forward": forward, "seccomp": seccomp_applies(request),
            "cache_dir": str(default_cache_dir()), "limit_s": limit_s, "memory_cap_mib": memory_cap_mib,
            "disk_cap_mib": get_profile(request["profile"]).disk_cap_mib, "confined": confined, "env": env}
    (private / "plan.json").write_text(json.dumps(plan))
    return start_limited([sys.executable, "-m", "harness.scorer", str(private / "plan.json"),
                          str(private / "score.json")], private / "scorer.log",
                         {**env, **scratch_environment(private / "tmp")})


def _score(mode: str, run: SandboxRun, private: Path, scorer: Started, limit_s: float, memory_cap_mib: int) -> None:
    """Send the started scorer (``_start_scorer``) the training's data hash and wait for it, then write its losses
    and counts (``scoring.SCORED_FIELDS``) over the training record's runs, or turn the result into the rejection
    it found. ``run`` is updated in place; its ``execution["scoring"]`` records the checks."""
    from harness.trusted.fingerprint import fingerprint_id, is_data_hash

    result = run.result
    fp = result.get("fingerprint")
    if not isinstance(fp, dict) or fingerprint_id(fp) != fp.get("id") or not is_data_hash(fp.get("data_hash")):
        run.result = {"reason": "tampering", "message": "the sandbox reported a fingerprint that is not the one it "
                      "computes", "fingerprint": None}
        return
    started = time.monotonic()
    outcome = supervise(scorer, scoring_limit_s(limit_s), memory_cap_mib,
                        json.dumps({"data_hash": fp["data_hash"]}).encode() + b"\n")
    scored = read_result(private / "score.json") if outcome == "exited" and (private / "score.json").exists() else None
    if scored is None or scored.get("status") not in ("ok", "rejected"):
        detail = (scored or {}).get("message") or f"the scorer ended ({outcome}) without a result"
        run.outcome, run.result = "infrastructure", None
        run.error = f"the trusted scoring failed: {detail}"
        run.log += "\n" + tail(private / "scorer.log")
        return
    if scored["status"] == "rejected":
        reason, message = scored["reason"], scored["message"]
        run.log += "\n" + str(scored.get("details", ""))
        if mode == "prepare":
            run.result = {"config_error": f"the pristine seed failed its trusted scoring ({reason}): {message}"}
        else:
            run.result = {"reason": reason, "message": message, "fingerprint": fp,
                          **{k: result[k] for k in ("metrics", "timings", "seed", "hparams") if k in result}}
        return
    record = result.get(TRAINING_RECORD[mode])
    runs = record.get("runs") if isinstance(record, dict) else None
    if not isinstance(runs, list) or len(runs) != len(scored["rungs"]) or not all(isinstance(r, dict) for r in runs):
        run.result = {"reason": "tampering", "message": "the sandbox's training record does not hold one run per "
                      "trained rung", "fingerprint": fp}
        return
    for entry, trusted in zip(runs, scored["rungs"]):
        entry.update({k: trusted[k] for k in ("rung", *SCORED_FIELDS)})
    run.execution["scoring"] = {**scored["scoring"], "scorer_wall_s": round(time.monotonic() - started, 3)}


def scoring_limit_s(limit_s: float) -> float:
    """The scorer's wall-clock limit after a training under ``limit_s``: its forward-only sandbox gets as long as
    the training did, plus the scorer's own work."""
    return limit_s + SCORER_OVERHEAD_S


def read_result(path: Path) -> dict:
    """The sandbox's result file. The sandbox itself always writes one JSON object; anything else was written by
    the code it ran."""
    data = read_untrusted(path, RESULT_MAX_BYTES + 1)
    try:
        result = json.loads(data) if data is not None and len(data) <= RESULT_MAX_BYTES else None
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: JSON nested past the stack's depth
        result = None
    if not isinstance(result, dict):
        return {"reason": "tampering", "message": "the sandbox's result file is not the JSON object the sandbox "
                "writes (a regular file of at most 32 MiB)"}
    return result


# ----------------------------------------------------------------------------------------------------------
# local


def _run_local(mode: str, request: dict, limit_s: float, memory_cap_mib: int) -> SandboxRun:
    """In an evaluation slot (harness.trusted.slots): wait for a free one, at most ``$HARNESS_SLOT_WAIT_S`` (default:
    the sandbox's own limit), hold it for the sandbox's lifetime, and let the sandbox see only its GPU."""
    from harness.trusted import slots

    wait_s = float(os.environ.get("HARNESS_SLOT_WAIT_S") or limit_s)
    started = time.time()
    execution = {"executor": "local", "host": socket.gethostname(), "attempts": 1}
    try:
        with slots.acquire(wait_s) as slot:
            execution.update(slot=slot.name, started_at=time.time())
            run = run_sandbox_here(mode, request, limit_s, memory_cap_mib, slot.env())
    except (slots.SlotTimeout, ValueError) as exc:
        return SandboxRun("infrastructure", None, error=f"no evaluation slot: {exc}",
                          execution={**execution, "started_at": started, "ended_at": time.time()})
    run.execution = {**execution, **run.execution, "ended_at": time.time()}
    return run


# ----------------------------------------------------------------------------------------------------------
# ray: the driver side


def _run_ray(mode: str, request: dict, limit_s: float, memory_cap_mib: int, config: ExecutorConfig,
             baseline_limit_s: float) -> SandboxRun:
    lost: list[str] = []
    attempts = config.ray_retries + 1
    for attempt in range(1, attempts + 1):
        spec = {"mode": mode, "request": request, "limit_s": limit_s, "memory_cap_mib": memory_cap_mib,
                "baseline_limit_s": baseline_limit_s, "config": asdict(config)}
        status, payload = _submit(spec, config)
        execution = {"executor": "ray", "address": config.ray_address, "attempts": attempt, "lost": list(lost)}
        if status == "done":
            run = SandboxRun(payload["outcome"], payload["result"], payload.get("log", ""),
                             error=payload.get("error", ""), new_baseline=payload.get("new_baseline"))
            run.execution = {**execution, **payload.get("placement", {})}
            return run
        if status == "lost":
            lost.append(payload["error"])
            continue
        return SandboxRun("infrastructure", None, payload.get("log", ""), error=payload["error"], execution=execution)
    return SandboxRun("infrastructure", None, error=f"the Ray worker running this evaluation was lost on all "
                      f"{attempts} attempts: {lost[-1]}", execution={**execution, "lost": lost})


def _submit(spec: dict, config: ExecutorConfig) -> tuple[str, dict]:
    """One attempt, through ``python -m harness.trusted.executor submit``: ("done" | "lost" | "error", payload)."""
    # A worker may first ask about its data and prepare (within the baseline's limit), then run the sandbox.
    wait_s = config.ray_queue_wait_s + config.ray_connect_timeout_s + DATA_QUESTION_LIMIT_S + sum(
        limit + scoring_limit_s(limit) for limit in (spec["limit_s"], spec["baseline_limit_s"]))
    with tempfile.TemporaryDirectory(prefix="harness-submit-") as tmp:
        tmp = Path(tmp)
        (tmp / "spec.json").write_text(json.dumps({**spec, "wait_s": wait_s}))
        result_path, log_path = tmp / "result.json", tmp / "submit.log"
        outcome = run_limited([sys.executable, "-m", "harness.trusted.executor", "submit", str(tmp / "spec.json"),
                               str(result_path)], wait_s + SUBMIT_OVERHEAD_S, SUBMIT_MEMORY_CAP_MIB, log_path,
                              {**os.environ, "PYTHONUNBUFFERED": "1"})
        if outcome == "exited" and result_path.exists():
            reply = json.loads(result_path.read_text())
            return reply["status"], reply
        return "error", {"error": f"the Ray submission process ended ({outcome}) without a reply",
                         "log": tail(log_path)}


def run_sandbox(mode: str, request: dict, limit_s: float, memory_cap_mib: int, *, executor: str | None = None,
                baseline_limit_s: float = 0.0) -> SandboxRun:
    """Run ``python -m harness.sandbox MODE`` for ``request`` on the chosen executor (default:
    ``$HARNESS_EXECUTOR`` or local). ``baseline_limit_s``: under ``ray``, the time a worker may spend first
    preparing what it lacks: the data, if it never prepared them, and for an ``evaluate`` the baseline of a worker
    kind that has none (a hub source's download included). Never raises."""
    try:
        config = ExecutorConfig.from_env(executor)
    except Exception as exc:  # noqa: BLE001 - a setting error is the operator's, reported as infrastructure
        return SandboxRun("infrastructure", None, error=str(exc), execution={"executor": str(executor)})
    if config.name == "ray":
        return _run_ray(mode, request, limit_s, memory_cap_mib, config, baseline_limit_s)
    return _run_local(mode, request, limit_s, memory_cap_mib)


# ----------------------------------------------------------------------------------------------------------
# ray: the submit process and the task


def ray_task(spec: dict) -> dict:
    """What runs on the Ray worker: the sandbox subprocess, after a preparation when this worker has never prepared
    the data (a node that joined later, a cleared cache), or, for an evaluation, when its kind of hardware has no
    baseline yet (trained there first). The sandbox runs once: nothing it reports earns it a second run. A
    preparation is recorded in the placement (``prepared``)."""
    import ray

    placement = {"host": socket.gethostname(), "node_ip": ray.util.get_node_ip_address(),
                 "node_id": ray.get_runtime_context().get_node_id(), "worker_pid": os.getpid(),
                 "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "started_at": time.time()}
    mode, request = spec["mode"], spec["request"]
    new_baseline, prepared_fp = None, None
    if mode in ("evaluate", "objective") and not data_prepared(request, spec["memory_cap_mib"]):
        request, new_baseline, prepared_fp, failed = _prepare_worker(mode, request, spec, placement)
        if failed:
            return failed
    run = run_sandbox_here(mode, request, spec["limit_s"], spec["memory_cap_mib"])
    needs = run.result if isinstance(run.result, dict) else {}
    if mode == "evaluate" and needs.get("baseline_missing") and new_baseline is None:
        # Said before the program loads, so never by it, unless it forged its result; a preparation tells which.
        wanted = needs.get("fingerprint") if isinstance(needs.get("fingerprint"), dict) else {}
        if prepared_fp is None:
            request, new_baseline, prepared_fp, failed = _prepare_worker(mode, request, spec, placement, wanted)
            if failed:
                return failed
        known = prepared_fp.get("id") in request.get("baselines", {})
        if new_baseline is None and known and wanted.get("id") == prepared_fp.get("id"):
            run.result = {"reason": "tampering", "message": "the sandbox's result said this worker's fingerprint had "
                          "no baseline, and it had one: the result was not the sandbox's own"}
        elif new_baseline is not None:
            run = run_sandbox_here(mode, request, spec["limit_s"], spec["memory_cap_mib"])
    placement.update(run.execution, ended_at=time.time())
    return {"outcome": run.outcome, "result": run.result, "log": run.log, "placement": placement,
            "error": run.error, "new_baseline": new_baseline}


def _prepare_worker(mode: str, request: dict, spec: dict, placement: dict, wanted: dict | None = None
                    ) -> tuple[dict, dict | None, dict, dict | None]:
    """Prepare this worker for ``request``: the data, and for an evaluation the baseline of its fingerprint if the
    ledger has none (a training job of ``harness validate`` needs the data only). ``wanted``: the fingerprint the
    sandbox reported missing, which the preparation must find. Returns (the request with the new baseline, the new
    baseline or None, the fingerprint prepared, None), or, when it failed, (..., the task's infrastructure reply)."""
    started = time.monotonic()
    prep = run_sandbox_here("prepare", {**request, "data_only": mode == "objective"}, spec["baseline_limit_s"],
                            spec["memory_cap_mib"])
    prepared = prep.result if isinstance(prep.result, dict) else {}
    fp = prepared.get("fingerprint") if isinstance(prepared.get("fingerprint"), dict) else {}
    baseline, computed = prepared.get("baseline"), prepared.get("baseline_computed") is True
    placement["prepared"] = {"why": "no baseline" if wanted is not None else "no data", "outcome": prep.outcome,
                             "baseline_computed": computed, "wall_s": round(time.monotonic() - started, 3),
                             "confinement": prep.execution.get("confinement")}
    mismatch = wanted is not None and fp.get("id") != wanted.get("id")
    if not fp.get("id") or (mode == "evaluate" and baseline is None) or mismatch:
        detail = prepared.get("config_error") or prep.error or f"sandbox {prep.outcome}"
        placement["ended_at"] = time.time()
        what = "found no baseline for its fingerprint" if wanted is not None else "had never prepared the data"
        return request, None, fp, {"outcome": "infrastructure", "result": None, "log": prep.log,
                                   "placement": placement, "error": f"this worker ({placement['host']}) {what}, "
                                   f"and preparing it failed: {detail}"}
    if not computed:
        return request, None, fp, None
    request = {**request, "baselines": {**request.get("baselines", {}), fp["id"]: baseline}}
    return request, {"fingerprint": fp, "record": baseline}, fp, None


def _task_options(spec: dict) -> dict:
    config = spec["config"]
    # Ray's own retries stay off: the driver retries, so that each attempt is counted and recorded.
    options = {"max_retries": 0, "num_cpus": config["ray_cpus_per_eval"]}
    if spec["request"].get("device") == "cuda":
        options["num_gpus"] = config["ray_gpus_per_eval"]
        if config["ray_accelerator_type"]:
            options["accelerator_type"] = config["ray_accelerator_type"]
    return options


def _unreachable(address: str) -> str | None:
    """Why a ``host:port`` address cannot be reached, or None (also for ``auto`` and ``ray://``, left to Ray)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return None
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def submit(spec: dict, connected=lambda: None) -> dict:
    """Connect to the cluster, run one task, wait for it: {"status": "done" | "lost" | "error", ...}."""
    try:
        import ray
        import ray.exceptions
    except ImportError:
        return {"status": "error", "error": "Ray is not installed here: pip install -e '.[ray]'"}
    address = spec["config"]["ray_address"]
    why = _unreachable(address)
    if why:
        return {"status": "error", "error": f"cannot connect to the Ray cluster at {address!r}: {why}"}
    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False, configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - no cluster is an infrastructure error, not a candidate's
        return {"status": "error", "error": f"cannot connect to the Ray cluster at {address!r}: "
                f"{type(exc).__name__}: {str(exc)[:500]}"}
    connected()
    try:
        options = _task_options(spec)
        ref = ray.remote(ray_task).options(**options).remote(spec)
        ready, _ = ray.wait([ref], timeout=spec["wait_s"])
        if not ready:
            ray.cancel(ref, force=True)
            return {"status": "error", "error": f"the cluster did not finish the task within {spec['wait_s']:.0f} s "
                    f"(queue wait {spec['config']['ray_queue_wait_s']:.0f} s plus the limits); is a "
                    f"{'GPU' if 'num_gpus' in options else 'CPU'} of the requested kind free?"}
        try:
            return {"status": "done", **ray.get(ref)}
        except ray.exceptions.RayError as exc:
            name = type(exc).__name__
            kind = next((k for k in LOST_WORKER_ERRORS if isinstance(exc, getattr(ray.exceptions, k, ()))), None)
            return {"status": "lost" if kind else "error", "error": f"{kind or name}: {str(exc)[:800]}"}
    finally:
        ray.shutdown()


def _write_reply(path: str, reply: dict) -> None:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(reply, default=float))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    command, spec_path, result_path = (argv or sys.argv[1:])[:3]
    if command != "submit":
        print(f"usage: python -m harness.trusted.executor submit SPEC.json RESULT.json (not {command!r})", file=sys.stderr)
        return 2
    from harness.trusted.process_lifetime import die_with_parent

    die_with_parent()  # an orphaned driver would keep its task, and its GPU, busy
    spec = json.loads(Path(spec_path).read_text())

    limit_s = spec["config"]["ray_connect_timeout_s"]

    def stuck() -> None:
        _write_reply(result_path, {"status": "error", "error": f"no connection to the Ray cluster at "
                                   f"{spec['config']['ray_address']!r} within {limit_s:.0f} s"})
        os._exit(0)

    watchdog = threading.Timer(limit_s, stuck)
    watchdog.daemon = True
    watchdog.start()
    try:
        reply = submit(spec, connected=watchdog.cancel)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as data
        reply = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    watchdog.cancel()
    _write_reply(result_path, reply)
    return 0


if __name__ == "__main__":
    sys.exit(main())

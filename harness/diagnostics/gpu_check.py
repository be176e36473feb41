"""``harness gpu-check``: the GPU path proved in one prepared run, sized for a short lease on one GPU.

    python -m harness.diagnostics.gpu_check --out DIR              # on a CUDA machine: about 9 minutes
    python -m harness.diagnostics.gpu_check --out DIR --dry-run    # anywhere, on the CPU, at smoke sizes: about 2-4 minutes

A GPU is at hand only now and then, for minutes, on a machine without network and with other versions of Python
and torch. So everything here is prepared and dry-run on the CPU, and runs there as one command. Each stage is a
separate process with its own time limit: a stage that fails, hangs or runs out of time is recorded as such and
the next one still runs. After every stage ``DIR/gpu-check.json`` (every number, with the fingerprint) and
``DIR/summary.md`` (one page) are rewritten, so whatever ran survives a kill. ``DIR/log.txt`` holds the stages'
output.

The stages, in the order they run:

1. ``environment``: versions, the GPU, the two ceilings measured here (device-to-device copy bandwidth, bf16
   matrix-product rate), and the confinement this machine allows (:mod:`harness.diagnostics.confinement_probe`).
2. ``calltrace``: the CUDA check in the launcher under each combination of layers the machine offers, strongest
   first, until one passes, with the failed calls into the C library traced (:mod:`harness.diagnostics.calltrace`;
   ``calltrace.c`` says which calls it sees): where the driver fails under a layer, what it was refused.
3. ``cuda_tests``: the CUDA tests (``pytest -m cuda tests/test_train.py tests/test_gate_regimes.py``): the engine's
   fast path against the eager fp32 loop, same loss within noise; the gate's FLOP audit on the GPU under autocast.
4. ``concurrent``: every rung of the ladder trained at once for ``concurrent_steps`` steps (10k), each rung in its
   own process, as an evaluation trains them; measured wall, and the full horizon extrapolated from it.
   It runs before the per-rung bench on purpose: its four compilations run in parallel, and leave the compile
   caches warm for the stages after it, which a per-candidate evaluation would not find. Its wall time therefore
   holds the cold compilation, as an evaluation's does.
5. ``evaluation``: one ``pilot`` evaluation of the cd seed end to end through the evaluator (static gate, the
   sandbox on CUDA, the scoring, the ledger), after preparing its baseline; then one adversarial candidate (a
   causality leak: must be rejected with ``causality``) and one escape candidate (reads a secret from the
   environment and writes a file outside the sandbox while it is constructed: the static policy must refuse it,
   and whether each side effect happened is checked from outside). The GPU machine has no network, so the data are the package's synthetic stories
   written as a local text folder (``HARNESS_DATA``); the profile is otherwise ``pilot``.
6. ``security``: the security corpus and the confinement tests (``tests/test_security.py``,
   ``tests/test_confinement.py``, and the test that the forward pass's parts never meet) through the evaluator
   under ``smoke-cuda``, the sandbox on the GPU: every attack rejected with its side effect looked for from
   outside, and the OS layers tried past the static policy. A sandbox on CUDA gets the layers the GPU driver works
   under (``confine.device_layers``); a layer it does not get skips its tests with the reason, and the record says
   what applied.
7. ``concurrent_mps``: the rungs at once again (``mps_steps`` steps), as clients of an MPS daemon that this run
   starts and stops (where the machine has ``nvidia-cuda-mps-control``): whether letting the rungs' kernels
   overlap, rather than take turns, brings the protocol under its target. The protocol does not use MPS yet; this
   measures whether it should.
8. ``bench``: ``harness bench`` at the full profile, ``bench_steps`` steps per rung: ms/step, tokens/s and
   utilisation of the engine at every rung; the eager fp32 reference, and the speed-up, at the reference rung
   (the eager loop is 4x slower: timing it at every rung would cost the lease a minute). ``--compile-modes``
   times further torch.compile modes against the same reference.
9. ``trace``: a short profiler trace of the engine at the reference rung: GPU time per step by kernel, and the
   share of the step the GPU was busy.

The summary then says the projected full-protocol wall time, the speed-up against eager, and what limits it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from harness.diagnostics.bench import (REFERENCE_HOURS, TARGET_MINUTES, TARGET_SPEEDUP_VS_EAGER, TARGET_SPEEDUP_VS_REFERENCE_HOURS,
                                       json_default)
from harness.trusted.frameworks import REPO_ROOT
from harness.trusted.scoring import plain_text

STAGES = ("environment", "calltrace", "cuda_tests", "concurrent", "evaluation", "security", "concurrent_mps",
          "bench", "trace")
MIN_STAGE_S = 20.0  # a stage is not started with less time than this left
STAGE_LIMIT_ENV = "HARNESS_GPU_CHECK_STAGE_LIMIT_S"  # a stage's process is told its limit, seconds
ESCAPE_SECRET_ENV = "HARNESS_GPU_CHECK_SECRET"


@dataclass(frozen=True)
class Plan:
    """The sizes of one run. Seconds are wall-clock limits; a stage past its limit is killed and recorded."""

    name: str
    device: str
    bench_profile: str  # the profile whose ladder and batch the speed stages use
    bench_steps: int  # timed steps per rung in the bench
    concurrent_steps: int  # steps per rung when all rungs train at once
    mps_steps: int  # steps per rung when all rungs train at once as clients of an MPS daemon
    eval_profile: str  # the profile of the end-to-end evaluation
    eval_train_stories: int  # synthetic stories in the local data folder (0: the profile's own data source)
    eval_val_stories: int
    trace_wait_steps: int  # steps before the profiler records (compilation and warm-up)
    trace_active_steps: int  # steps the profiler records
    security_profile: str  # the profile the security corpus and the confinement tests run under
    security_select: str  # pytest's -k expression choosing among those tests ("": all of them)
    budget_s: float  # the whole run
    stage_limit_s: dict = field(default_factory=dict)
    bench_rungs: tuple | None = None  # ladder indices the bench times (None: every rung)
    compile_modes: tuple = ()  # torch.compile modes the bench times (empty: the profile's own); eager runs once

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        raw = json.loads(text)
        raw["bench_rungs"] = tuple(raw["bench_rungs"]) if raw.get("bench_rungs") is not None else None
        raw["compile_modes"] = tuple(raw["compile_modes"])
        return cls(**raw)


# Sized from the first runs on an H200 (results/bench/NOTES.md): with CUDA graphs a reference-rung step took 4.1 ms,
# the eager fp32 reference 16.5 ms, a cold compilation 14-24 s, the environment stage 25 s. The stage limits add
# up to more than the budget: the budget wins, and the stages that matter most run first.
CUDA_PLAN = Plan(
    name="cuda", device="cuda", bench_profile="full", bench_steps=500, concurrent_steps=10_000, mps_steps=5_000,
    eval_profile="pilot", eval_train_stories=40_000, eval_val_stories=10_000,  # ~1.3M validation tokens >= 2^20
    trace_wait_steps=30, trace_active_steps=20, security_profile="smoke-cuda", security_select="", budget_s=540.0,
    stage_limit_s={"environment": 90, "calltrace": 120, "cuda_tests": 120, "concurrent": 200, "evaluation": 240,
                   "security": 180, "concurrent_mps": 120, "bench": 200, "trace": 90},
)
DRY_RUN_PLAN = Plan(
    name="dry-run", device="cpu", bench_profile="smoke", bench_steps=12, concurrent_steps=30, mps_steps=30,
    eval_profile="smoke-short", eval_train_stories=0, eval_val_stories=0,
    trace_wait_steps=3, trace_active_steps=4, security_profile="smoke-short", security_select="has_no_network",
    budget_s=600.0,
    # Generous: on a loaded 2-core CI machine the security stage's one test (a baseline trained, then the evaluation)
    # took over the 40 s that a 60 s limit left it, and the environment stage 33 s.
    stage_limit_s={"environment": 90, "calltrace": 60, "cuda_tests": 90, "concurrent": 90, "bench": 90,
                   "evaluation": 240, "security": 150, "concurrent_mps": 60, "trace": 60},
)


def _log(message: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _seed(framework: str = "cd"):
    from harness.trusted.frameworks import get_framework

    fw = get_framework(framework)
    return fw, fw.seed_source()


# ----------------------------------------------------------------------------------------------------------------
# Stage 1: environment


def _event_ms(fn, repeats: int, device: str) -> float:
    """Median wall milliseconds of ``fn`` (CUDA events on the GPU), after two warm-up calls."""
    import torch

    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append(1000.0 * (time.perf_counter() - t))
    return sorted(times)[len(times) // 2]


def measure_ceilings(device: str) -> dict:
    """The two ceilings of this device, measured: a large copy (bytes read + written per second) and a large
    matrix product (bf16 on the GPU, fp32 on the CPU). Random data: zeros run faster than real data."""
    import torch

    big = device == "cuda"
    n_bytes = (1 << 30) if big else (1 << 26)
    src = torch.randn(n_bytes // 4, device=device)
    dst = torch.empty_like(src)
    copy_ms = _event_ms(lambda: dst.copy_(src), 20 if big else 5, device)
    n = 8192 if big else 512
    dtype = torch.bfloat16 if big else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    mm_ms = _event_ms(lambda: a @ b, 10 if big else 3, device)
    return {"copy_bytes": 2 * n_bytes, "copy_ms": copy_ms, "copy_gb_per_s": 2 * n_bytes / (copy_ms / 1000) / 1e9,
            "matmul_n": n, "matmul_dtype": str(dtype).replace("torch.", ""), "matmul_ms": mm_ms,
            "matmul_tflops": 2 * n**3 / (mm_ms / 1000) / 1e12}


def _nvidia_smi() -> dict:
    fields = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit,temperature.gpu"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return dict(zip(fields.split(","), (v.strip() for v in out.stdout.strip().split(",")))) if out.stdout else \
        {"error": out.stderr.strip()[-300:]}


def stage_environment(plan: Plan, work: Path) -> dict:
    import torch

    from harness.diagnostics.bench import bench_fingerprint
    from harness.diagnostics.confinement_probe import probe
    from harness.trusted.profiles import get_profile

    result = {"fingerprint": bench_fingerprint(get_profile(plan.bench_profile), plan.device),
              "cpu_count": os.cpu_count()}
    if plan.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        result["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                         "memory_mib": props.total_memory // 2**20, "multiprocessors": props.multi_processor_count,
                         "nvidia_smi": _nvidia_smi()}
    result["ceilings"] = measure_ceilings(plan.device)
    _log(f"ceilings: copy {result['ceilings']['copy_gb_per_s']:.0f} GB/s, matmul "
         f"{result['ceilings']['matmul_tflops']:.1f} TFLOP/s ({result['ceilings']['matmul_dtype']})")
    result["confinement"] = probe(work)
    _log(f"confinement: {result['confinement']['level']}")
    return result


# ----------------------------------------------------------------------------------------------------------------
# Stage 2: which calls fail in a confined sandbox


def stage_calltrace(plan: Plan, work: Path) -> dict:
    """The device check under each combination of layers the machine offers, strongest first, until one passes, with
    the failed calls into the C library traced (:mod:`harness.diagnostics.calltrace`): where CUDA fails under a
    layer, what it was refused. On the CPU the check only starts Python. Each run is kept as it ends, so a stage
    stopped at its limit still reports the runs that finished."""
    from harness.diagnostics.calltrace import build, trace_combinations
    from harness.trusted.confine import CUDA_CHECK, unavailable_reason

    started = time.monotonic()
    limit = float(os.environ.get(STAGE_LIMIT_ENV, plan.stage_limit_s.get("calltrace", 120)))
    unavailable = unavailable_reason(plan.device)
    if unavailable:
        return {"built": False, "why": f"a sandbox on {plan.device} is not confined here: {unavailable}"}
    library, why = build(work)
    if library is None:
        return {"built": False, "why": why}

    def keep(runs: list[dict]) -> None:
        _write_json(work / "calltrace.partial.json", {"built": True, "runs": runs, "partial": True})

    runs = trace_combinations(plan.device, library, CUDA_CHECK if plan.device == "cuda" else "pass",
                              deadline=started + limit - 5.0, on_run=keep)
    for run in runs:
        _log(f"calltrace: {run['layers']}: {'passed' if run['passed'] else run['error']}; {len(run['calls'])} calls")
    return {"built": True, "runs": runs}


# ----------------------------------------------------------------------------------------------------------------
# Stage 3: the CUDA tests


PYTEST_LINE = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def run_pytest(args: list[str], junit: Path, env: dict | None = None, timeout_s: float | None = None) -> dict:
    """``pytest ARGS`` in the repository, each test's outcome read from its JUnit XML; past ``timeout_s`` it is
    stopped, and the outcomes of the tests that finished are read from its verbose output instead."""
    import xml.etree.ElementTree as ET

    cmd = [sys.executable, "-m", "pytest", *args, "-v", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s,
                              env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"})
        output, exit_code, timed_out = proc.stdout + proc.stderr, proc.returncode, False
    except subprocess.TimeoutExpired as exc:  # its output is bytes, whatever text= says
        output = b"".join(x for x in (exc.stdout, exc.stderr) if x).decode(errors="replace")
        exit_code, timed_out = None, True
    result = {"command": " ".join(cmd[1:]), "exit_code": exit_code, "timed_out": timed_out,
              "wall_s": time.perf_counter() - started, "output_tail": output[-3000:], "tests": []}
    if junit.exists() and not timed_out:
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    outcome, message = tag, (node.get("message") or "")[:500]
            result["tests"].append({"name": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)),
                                    "message": message})
    else:
        outcomes = {"PASSED": "passed", "FAILED": "failure", "ERROR": "error", "SKIPPED": "skipped",
                    "XFAIL": "skipped", "XPASS": "failure"}
        for line in output.splitlines():
            found = PYTEST_LINE.match(line)
            if found:
                result["tests"].append({"name": found.group(1).rsplit("::", 1)[-1], "outcome": outcomes[found.group(2)],
                                        "seconds": None, "message": ""})
    result["passed"] = sum(t["outcome"] == "passed" for t in result["tests"])
    result["failed"] = sum(t["outcome"] in ("failure", "error") for t in result["tests"])
    result["skipped"] = sum(t["outcome"] == "skipped" for t in result["tests"])
    # pytest exits 5 when every test was deselected; that, like any other exit, must show in the summary
    result["ok"] = exit_code == 0 and result["failed"] == 0 and result["passed"] + result["skipped"] > 0
    return result


def stage_cuda_tests(plan: Plan, work: Path) -> dict:
    return run_pytest(["tests/test_train.py", "tests/test_gate_regimes.py", "-m", "cuda"], work / "cuda-tests.xml")


# ----------------------------------------------------------------------------------------------------------------
# Stage 4: all rungs at once


def extrapolate_concurrent_s(wall_s: float, fixed_s: float, steps: int, horizon_steps: int) -> float:
    """The wall time of the same concurrent run at ``horizon_steps``: what is paid once (process start and the
    first step's compilation, the longest rung's) plus the rest scaled by the steps. The short run validates once
    per rung at its end; the horizon validates every ``horizon/10`` steps, so the scaled part holds them too when
    ``steps`` is a tenth of the horizon, as in the CUDA plan."""
    return fixed_s + max(0.0, wall_s - fixed_s) * horizon_steps / steps


def train_rungs_at_once(plan: Plan, steps: int) -> dict:
    """Every rung of the bench profile's ladder trained at once for ``steps`` steps, each in its own process, as an
    evaluation trains them: the measured wall and its extrapolation to the profile's horizon."""
    from harness.diagnostics.bench import RandomTokens, bench_profile
    from harness.sandbox.objective import train_rungs_concurrently
    from harness.trusted.profiles import get_profile

    profile = get_profile(plan.bench_profile)
    short = bench_profile(profile, steps)
    fw, source = _seed()
    data = RandomTokens.make(profile.vocab_size, profile.val_tokens)
    rungs = [tuple(r) for r in profile.ladder]
    _log(f"training rungs {rungs} concurrently for {steps} steps each on {plan.device}")
    started = time.perf_counter()
    outcomes = train_rungs_concurrently(source, str(fw.seed_path), short, rungs, data, device=plan.device,
                                        keep_last_model=False, stop_on_failure=False, log=_log)
    wall = time.perf_counter() - started
    rows = []
    for outcome in outcomes:
        if outcome.error is not None or outcome.record is None:
            rows.append({"rung": list(outcome.rung), "error": str(outcome.error)[:1000]})
            continue
        rec = outcome.record
        startup = max(0.0, outcome.process_wall_s - rec["wall_s"])
        rows.append({"rung": list(outcome.rung), "status": rec["status"], "ms_per_step": rec["ms_per_step"],
                     "tokens_per_s": rec["tokens_per_s"], "first_step_s": rec["first_step_s"], "eval_s": rec["eval_s"],
                     "process_wall_s": outcome.process_wall_s, "process_startup_s": startup,
                     "compiled": rec["compiled"], "compile_error": rec["compile_error"],
                     "final_train_loss": rec["train_curve"][-1][1] if rec["train_curve"] else None})
    ok = all(r.get("status") == "ok" for r in rows)
    result = {"steps": steps, "rungs": rows, "wall_s": wall, "ok": ok,
              "profile": profile.name, "horizon_steps": profile.steps}
    if ok:
        fixed = max(r["process_startup_s"] + r["first_step_s"] for r in rows)
        result["fixed_s"] = fixed
        result["extrapolated_horizon_s"] = extrapolate_concurrent_s(wall, fixed, steps, profile.steps)
        result["aggregate_tokens_per_s"] = len(rows) * short.batch_size_seqs * short.context_len_tokens * \
            steps / max(1e-9, wall - fixed)
        _log(f"concurrent: {wall:.1f} s wall for {steps} steps per rung (once-only part {fixed:.1f} s); "
             f"extrapolated to {profile.steps} steps: {result['extrapolated_horizon_s'] / 60:.1f} min")
    return result


def stage_concurrent(plan: Plan, work: Path) -> dict:
    return train_rungs_at_once(plan, plan.concurrent_steps)


# ----------------------------------------------------------------------------------------------------------------
# Stage 7: the rungs at once again, their kernels overlapping through MPS
#
# Without MPS, the kernels of different processes on one GPU take turns (time slices); a rung of this size leaves
# most of an H200 idle in each of its kernels, so taking turns wastes it. NVIDIA's Multi-Process Service runs the
# kernels of several processes at once. It is a user-space daemon (no setting of the card changes); this run
# starts one of its own, with folders of its own (``mps_environment``), and makes it quit afterwards.

MPS_CONTROL = "nvidia-cuda-mps-control"
MPS_SEARCH_PATH = ("/usr/local/nvidia/bin", "/usr/bin")  # where the driver's tools are when PATH lacks them
MPS_LONGEST_PIPE_DIR = 80  # characters: the daemon's socket is <pipe dir>/control, and a socket's path has 107


def mps_environment(work: Path) -> dict[str, str]:
    """What a CUDA process needs in its environment to be a client of this run's MPS daemon. The pipe folder is in
    the work folder, or, where that path would be too long for the daemon's sockets, in a short one under /tmp named
    after the work folder (so that stopping the daemon finds it again)."""
    pipe = work / "mps-pipe"
    if len(str(pipe)) > MPS_LONGEST_PIPE_DIR:
        import hashlib

        pipe = Path("/tmp") / f"harness-mps-{hashlib.sha256(str(work).encode()).hexdigest()[:16]}"
    return {"CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(work / "mps-log")}


def _mps_control() -> str | None:
    return shutil.which(MPS_CONTROL, path=os.pathsep.join([os.environ.get("PATH", ""), *MPS_SEARCH_PATH]))


def start_mps(work: Path) -> tuple[dict | None, str | None]:
    """Start this run's MPS control daemon: (the clients' environment, None), or (None, why it did not start)."""
    control = _mps_control()
    if control is None:
        return None, f"{MPS_CONTROL} is not on this machine"
    env = mps_environment(work)
    for folder in env.values():
        Path(folder).mkdir(parents=True, exist_ok=True)
    # The daemon's output goes to a file: a daemon that kept a pipe of ours open would hold run() until its timeout.
    output = Path(env["CUDA_MPS_LOG_DIRECTORY"]) / "start.txt"
    try:
        with open(output, "w") as out:
            done = subprocess.run([control, "-d"], env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = f"{MPS_CONTROL} -d: {type(exc).__name__}: {exc}"
    else:
        if done.returncode == 0:
            return env, None
        why = f"{MPS_CONTROL} -d exited with {done.returncode}: {output.read_text(errors='replace').strip()[-300:]}"
    # No daemon, so no stop_mps to clear the pipe folder, which may be outside the work folder (under /tmp).
    shutil.rmtree(env["CUDA_MPS_PIPE_DIRECTORY"], ignore_errors=True)
    return None, why


def stop_mps(work: Path) -> None:
    """Make this run's MPS daemon quit, if one was started (its clients have exited by then). Safe to repeat."""
    control, env = _mps_control(), mps_environment(work)
    pipe = Path(env["CUDA_MPS_PIPE_DIRECTORY"])
    if control is None or not pipe.exists():
        return
    try:
        subprocess.run([control], input="quit\n", env={**os.environ, **env}, text=True, timeout=30,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _log(f"MPS daemon did not take 'quit': {type(exc).__name__}: {exc}")
    shutil.rmtree(pipe, ignore_errors=True)  # the daemon is gone: a second stop finds nothing to stop


def stage_concurrent_mps(plan: Plan, work: Path) -> dict:
    if plan.device != "cuda":
        return {"mps": False, "why": "MPS shares a GPU between processes: there is nothing to measure on the CPU"}
    from harness.sandbox.objective import environ_with

    env, why = start_mps(work)
    if env is None:
        _log(f"MPS: {why}")
        return {"mps": False, "why": why}
    try:
        with environ_with(env):  # the rung processes inherit it, and so connect to the daemon
            result = train_rungs_at_once(plan, plan.mps_steps)
    finally:
        stop_mps(work)
    log = Path(env["CUDA_MPS_LOG_DIRECTORY"]) / "control.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    # The daemon's own record that the rungs ran as its clients: a "NEW CLIENT" line per connection.
    result.update(mps=True, mps_client_connections=len(re.findall(r"new client", text, flags=re.IGNORECASE)),
                  mps_control_log_tail=text[-1500:])
    return result


# ----------------------------------------------------------------------------------------------------------------
# Stage 8: the bench


def stage_bench(plan: Plan, work: Path) -> dict:
    """The bench under the first compile mode, with the eager reference; every further mode times the engine
    alone, and is compared with the same reference."""
    from harness.diagnostics.bench import run_bench
    from harness.trusted.profiles import get_profile

    rungs = list(plan.bench_rungs) if plan.bench_rungs is not None else None
    first, *others = plan.compile_modes or (get_profile(plan.bench_profile).compile_mode,)
    profile = get_profile(plan.bench_profile, compile_mode=first)
    result = run_bench(profile, plan.bench_steps, rungs, device=plan.device, reference=True, concurrent=False, log=_log,
                       reference_rungs=[profile.reference])
    result["reference_rung"] = list(profile.reference)
    result["all_rungs"] = rungs is None or len(rungs) == len(profile.ladder)
    result["compile_modes"] = {first: _mode_rows(result["rungs"], result["rungs"])}
    for mode in others:
        extra = run_bench(get_profile(plan.bench_profile, compile_mode=mode), plan.bench_steps, rungs,
                          device=plan.device, reference=False, concurrent=False, log=_log)
        result["compile_modes"][mode] = _mode_rows(extra["rungs"], result["rungs"])
    return result


def _mode_rows(rows: list[dict], with_reference: list[dict]) -> list[dict]:
    refs = {tuple(r["rung"]): r["reference"]["ms_per_step"] for r in with_reference if "reference" in r}
    out = []
    for row in rows:
        fast, ref = row["fast"], refs.get(tuple(row["rung"]))
        out.append({"rung": row["rung"], "ms_per_step": fast["ms_per_step"], "compiled": fast["compiled"],
                    "compile_error": fast["compile_error"], "first_step_s": fast["first_step_s"],
                    "final_train_loss": fast["final_train_loss"],
                    "speedup_vs_reference": ref / fast["ms_per_step"] if ref else None})
    return out


# ----------------------------------------------------------------------------------------------------------------
# Stage 5: one evaluation end to end, an adversarial and an escape candidate

# A future-token leak: the seed with its causal mask removed. The gate must reject it with ``causality``.
LEAK_FROM = "mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()"
LEAK_TO = "mask = torch.ones(T, T, dtype=torch.bool, device=x.device)"

# An escape attempt: while the class is constructed it reads a secret from the environment (through a module
# reached as an attribute) and writes it to a file outside the sandbox (through numpy). The static policy refuses
# it; whether the secret was read and the file written is checked from outside the sandbox all the same.
ESCAPE_BLOCK = '''
class {cls}(nn.Module):
    def __init__(self, d_model, n_heads, dropout=0.1, max_seq_len=128):
        super().__init__()
        secret = getattr(torch, "os").environ.get("{secret_env}", "no secret")
        torch.tensor(list(secret.encode()), dtype=torch.uint8).numpy().tofile("{marker}")
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)[:, :, :-1]
'''


def _program_with_block(seed_source: str, block: str) -> str:
    from harness.trusted import program

    parts = program.split(seed_source)
    return parts.head + block + parts.tail


def evaluation_cases(work: Path) -> list[dict]:
    """The three candidates of the evaluation stage: name, source, the reason expected, and the escape's marker."""
    from harness.trusted import program

    fw, seed = _seed()
    if seed.count(LEAK_FROM) != 1:
        raise RuntimeError("the cd seed no longer holds the causal mask line the leak case removes")
    marker = work / "escape-marker.bin"
    escape = _program_with_block(seed, ESCAPE_BLOCK.format(cls=fw.class_name, secret_env=ESCAPE_SECRET_ENV,
                                                           marker=marker))
    return [
        # With a comment in its block: the pristine seed's result is its baseline's, and this case trains.
        {"name": "seed", "source": _program_with_block(seed, program.split(seed).block + "# trained as a candidate\n"),
         "expected_reason": "ok"},
        {"name": "adversarial_future_leak", "source": seed.replace(LEAK_FROM, LEAK_TO), "expected_reason": "causality"},
        {"name": "escape_secret_and_file", "source": escape, "expected_reason": "policy", "marker": str(marker)},
    ]


def write_synthetic_text_folder(folder: Path, train_stories: int, val_stories: int) -> None:
    """The package's synthetic stories as a local text source (disjoint train and validation stories)."""
    from harness.data import EOS_TOKEN, synthetic_stories

    folder.mkdir(parents=True, exist_ok=True)
    train = synthetic_stories(train_stories, seed=0)
    seen = set(train)
    val = [s for s in synthetic_stories(2 * val_stories, seed=1) if s not in seen][:val_stories]
    (folder / "train.txt").write_text(f"\n{EOS_TOKEN}\n".join(train) + "\n")
    (folder / "validation.txt").write_text(f"\n{EOS_TOKEN}\n".join(val) + "\n")


# What the summary keeps of each rung an evaluation trained (the ledger's ``runs``): whether the program compiled in
# the confined sandbox on this device, and what the sandbox's training cost.
EVALUATION_RUN_FIELDS = ("rung", "compiled", "compile_mode", "compile_error", "first_step_s", "ms_per_step",
                         "wall_s", "peak_memory_mib")


def stage_evaluation(plan: Plan, work: Path) -> dict:
    root = work / "evaluation"
    root.mkdir(parents=True, exist_ok=True)
    env = {"HARNESS_PROFILE": plan.eval_profile, "HARNESS_CACHE": str(root / "cache"),
           "HARNESS_LEDGER": str(root / "ledger.sqlite"), "HARNESS_SLOT_DIR": str(root / "slots"),
           "HARNESS_EXECUTOR": "local", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           ESCAPE_SECRET_ENV: "gpu-check-secret-" + os.urandom(6).hex()}
    if plan.eval_train_stories:
        folder = root / "data"
        write_synthetic_text_folder(folder, plan.eval_train_stories, plan.eval_val_stories)
        env["HARNESS_DATA"] = str(folder)
    os.environ.update(env)
    from harness.trusted import confine, ledger
    from harness.trusted.evaluate import evaluate, prepare
    from harness.trusted.profiles import ALLOW_UNCONFINED_ENV, get_profile

    profile = get_profile(plan.eval_profile)
    # Whether the sandbox can be confined on this machine with this device is one of the things measured; where it
    # cannot, the evaluation still runs (with what the machine has, and recorded so) rather than losing the stage.
    try:
        unconfined = confine.missing_confinement(profile.device)
    except confine.LayersUnknown as exc:  # the evaluation is then infrastructure, and says why
        unconfined = None
        _log(f"confinement layers not known: {exc}")
    if unconfined:
        os.environ[ALLOW_UNCONFINED_ENV] = "1"
    result = {"profile": profile.name, "data_source": "synthetic stories as a local text folder"
              if plan.eval_train_stories else profile.data_source, "profile_digest": profile.digest(),
              "confinement_missing": unconfined}
    started = time.perf_counter()
    prepared = prepare("cd", profile)
    result["prepare_s"] = time.perf_counter() - started
    result["fingerprint"] = prepared["fingerprint"]
    result["baseline"] = {"fitness": prepared["baseline"]["fitness"],
                          "largest_rung_loss": prepared["baseline"]["largest_rung_loss"],
                          "runs": [{k: r.get(k) for k in ("rung", "final_val_loss", "ms_per_step", "wall_s",
                                                          "first_step_s", "compiled")}
                                   for r in prepared["baseline"]["runs"]]}
    _log(f"evaluation: baseline prepared in {result['prepare_s']:.1f} s, fitness {result['baseline']['fitness']:.4f}")
    cases = []
    programs = root / "programs"
    programs.mkdir(exist_ok=True)
    for case in evaluation_cases(work):
        path = programs / f"{case['name']}.py"
        path.write_text(case["source"])
        started = time.perf_counter()
        metrics = evaluate("cd", str(path), profile)
        wall = time.perf_counter() - started
        metrics = getattr(metrics, "metrics", metrics)
        row = ledger.evaluations(env["HARNESS_LEDGER"])[-1]
        entry = {"name": case["name"], "expected_reason": case["expected_reason"], "reason": row["reason"],
                 "verdict": row["verdict"], "message": (row["message"] or "")[:600],
                 "combined_score": metrics.get("combined_score"), "wall_s": wall, "timings": row["timings"],
                 "confinement": row["execution"].get("confinement"),
                 "disk_peak_mib": row["execution"].get("disk_peak_mib"),  # what sizes the profile's disk cap
                 "runs": [{k: r.get(k) for k in EVALUATION_RUN_FIELDS} for r in row["runs"]],
                 "as_expected": row["reason"] == case["expected_reason"]}
        if "marker" in case:
            marker = Path(case["marker"])
            written = marker.exists()
            entry["escape"] = {"file_written_outside_sandbox": written,
                               "secret_read": written and marker.read_bytes().decode(errors="replace")
                               == env[ESCAPE_SECRET_ENV]}
        cases.append(entry)
        _log(f"evaluation: {case['name']}: {row['verdict']} ({row['reason']}), score {entry['combined_score']}, "
             f"{wall:.1f} s" + (f", escape side effects {entry['escape']}" if "escape" in entry else ""))
    result["cases"] = cases
    result["ok"] = all(c["as_expected"] for c in cases)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Stage 6: the security corpus and the confinement tests on the device


# The OS layers on the device first; last, the forward pass's children, each confined to its own folder on the device.
SECURITY_TESTS = ("tests/test_confinement.py", "tests/test_security.py",
                  "tests/test_scorer.py::test_a_part_of_the_forward_pass_can_neither_read_nor_write_the_other_parts_folder")
PYTEST_MARGIN_S = 20.0  # left of the stage's limit to read and record the outcomes


def stage_security(plan: Plan, work: Path) -> dict:
    """The tests of the trust boundary, through the real evaluator, with the sandbox on the plan's device: every attack
    rejected and its side effect looked for from outside, and the OS layers tried past the static policy. A layer that
    does not apply to a sandbox on this device skips its tests, saying why, and the record says which applied."""
    from harness.trusted import confine
    from harness.trusted.profiles import get_profile

    device = get_profile(plan.security_profile).device
    # What a sandbox gets here, found beside the tests (the checks are subprocesses, seconds long; the tests' own
    # process finds the same at its start).
    found: dict = {}
    beside = threading.Thread(target=lambda: found.update(layers=confine.layers_here(device)), daemon=True)
    beside.start()
    select = ["-k", plan.security_select] if plan.security_select else []
    # Stopped before the stage's own limit, so that the outcomes of the tests that finished are kept.
    limit = float(os.environ.get(STAGE_LIMIT_ENV, plan.stage_limit_s.get("security", 600)))
    result = run_pytest([*SECURITY_TESTS, *select], work / "security-tests.xml",
                        {**os.environ, "HARNESS_TEST_PROFILE": plan.security_profile},
                        timeout_s=max(10.0, limit - PYTEST_MARGIN_S))
    beside.join(timeout=5.0)
    result["profile"] = plan.security_profile
    result["confinement"] = found.get("layers", "not known: the check had not finished when the tests did")
    _log(f"security: {result['passed']} passed, {result['failed']} failed, {result['skipped']} skipped on {device}")
    return result


# ----------------------------------------------------------------------------------------------------------------
# Stage 9: where the time goes

# First match wins: inductor's fused kernels are named after every op they fuse (``triton_..._to_copy_...``).
KERNEL_CATEGORIES = (
    ("fused (triton)", r"^triton_"),
    ("matmul", r"gemm|cutlass|nvjet|xmma|cublas|matmul|wgmma|addmm|\bmm\b|bmm"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("copy/fill", r"memcpy|memset|copy_|fill|Memcpy|Memset"),
)


def kernel_category(name: str) -> str:
    for category, pattern in KERNEL_CATEGORIES:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return category
    return "other"


def stage_trace(plan: Plan, work: Path) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    from harness.diagnostics.bench import RandomTokens, bench_profile
    from harness.trusted.profiles import get_profile
    from harness.sandbox.loader import load_attention
    from harness.sandbox.train import train

    prof_cfg = get_profile(plan.bench_profile)
    fw, source = _seed()
    cls = load_attention(source, str(fw.seed_path))
    active = plan.trace_active_steps
    short = bench_profile(prof_cfg, plan.trace_wait_steps + 2 + active + 1)
    data = RandomTokens.make(prof_cfg.vocab_size, prof_cfg.val_tokens)
    cuda = plan.device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    step_times: list[float] = []
    with profile(activities=activities, schedule=schedule(wait=plan.trace_wait_steps, warmup=2, active=active,
                                                          repeat=1)) as prof:
        def on_step(step: int) -> None:
            step_times.append(time.perf_counter())
            prof.step()

        run = train(cls, short, prof_cfg.reference, data, device=plan.device, on_step=on_step)
    time_attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, time_attr, 0) > 0]
    if cuda:  # the kernels themselves: not the CPU-side ops that launched them, nor the annotations around them
        events = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
                  and not getattr(e, "is_user_annotation", False) and not e.key.startswith("ProfilerStep")]
    total_us = sum(getattr(e, time_attr) for e in events)
    rows = sorted(({"name": e.key[:160], "ms_per_step": getattr(e, time_attr) / 1000 / active,
                    "calls_per_step": e.count / active, "category": kernel_category(e.key)} for e in events),
                  key=lambda r: -r["ms_per_step"])
    for row in rows:
        row["share"] = row["ms_per_step"] * active * 1000 / total_us if total_us else 0.0
    by_category: dict[str, float] = {}
    for row in rows:
        by_category[row["category"]] = by_category.get(row["category"], 0.0) + row["ms_per_step"]
    kernels_per_step = sum(e.count for e in events) / active
    result = {"rung": list(prof_cfg.reference), "active_steps": active, "device_time": "GPU kernels" if cuda
              else "CPU ops (self time)", "busy_ms_per_step": total_us / 1000 / active,
              "kernels_per_step": kernels_per_step, "by_category_ms_per_step": by_category, "top": rows[:15],
              "engine_ms_per_step_during_trace": run.ms_per_step, "compiled": run.compiled}
    _log(f"trace: {result['busy_ms_per_step']:.3f} ms of {result['device_time']} per step, "
         f"{kernels_per_step:.0f} events per step")
    return result


# ----------------------------------------------------------------------------------------------------------------
# The summary

STAGE_FUNCTIONS = {"environment": stage_environment, "calltrace": stage_calltrace, "cuda_tests": stage_cuda_tests,
                   "concurrent": stage_concurrent, "concurrent_mps": stage_concurrent_mps,
                   "bench": stage_bench, "evaluation": stage_evaluation, "security": stage_security,
                   "trace": stage_trace}


def headline(stages: dict) -> dict:
    """The numbers the issue asks for, from whatever stages finished: projected full-protocol wall time (from the
    concurrent run, and from the per-rung bench run one after another), speed-ups, utilisation, and the targets."""
    out: dict = {}
    conc, bench, trace = (stages.get(k, {}).get("result") for k in ("concurrent", "bench", "trace"))
    if conc and conc.get("ok"):
        out["projected_protocol_s"] = conc["extrapolated_horizon_s"]
        out["projected_from"] = f"{conc['steps']}-step concurrent run extrapolated to {conc['horizon_steps']} steps"
    if bench and bench.get("projection"):
        proj = bench["projection"]
        if bench.get("all_rungs", True):  # a protocol projection needs every rung
            for key, source in (("sequential_protocol_s", "sequential_s"),
                                ("eager_sequential_protocol_s", "reference_sequential_s")):
                if proj.get(source) is not None:
                    out[key] = proj[source]
        modes = bench.get("compile_modes", {})
        at_ref = {m: r for m, rows in modes.items() for r in rows if r["rung"] == bench.get("reference_rung")}
        if at_ref:
            out["compile_modes_at_reference_rung"] = at_ref
        ref = [r for r in bench["rungs"] if r["rung"] == bench.get("reference_rung")]
        if ref and "speedup_vs_reference" in ref[0]:
            out["speedup_vs_eager_at_reference_rung"] = ref[0]["speedup_vs_reference"]
            out["reference_rung_ms_per_step"] = ref[0]["fast"]["ms_per_step"]
            out["reference_rung_eager_ms_per_step"] = ref[0]["reference"]["ms_per_step"]
        if conc and conc.get("ok") and bench.get("all_rungs", True):
            # Measured concurrent wall at its step count against the bench's per-rung numbers at the same count.
            n = conc["steps"]
            isolated = sum(n * r["fast"]["ms_per_step"] / 1000 + r["fast"]["eval_s"] for r in bench["rungs"])
            out["concurrent_vs_isolated_sum"] = {
                "steps": n, "measured_wall_s": conc["wall_s"], "once_only_s": conc["fixed_s"],
                "isolated_rungs_sum_s": isolated,
                "steady_ratio": (conc["wall_s"] - conc["fixed_s"]) / isolated if isolated else None}
    mps = stages.get("concurrent_mps", {}).get("result")
    if mps and mps.get("mps") and mps.get("ok"):
        # The MPS run finds the compile caches warm; its steady part goes with the once-only part of the cold run
        # before it, when there is one, so that the two projections count the same compilation.
        cold = bool(conc and conc.get("ok"))
        once = conc["fixed_s"] if cold else mps["fixed_s"]
        out["projected_protocol_with_mps_s"] = extrapolate_concurrent_s(
            mps["wall_s"] - mps["fixed_s"] + once, once, mps["steps"], mps["horizon_steps"])
        out["projected_with_mps_from"] = (f"{mps['steps']}-step run as MPS clients extrapolated to "
                                          f"{mps['horizon_steps']} steps, " + ("with the cold run's once-only part"
                                          if cold else "with the compile caches warm"))
        if cold:
            out["mps_throughput_ratio"] = mps["aggregate_tokens_per_s"] / conc["aggregate_tokens_per_s"]
    if "projected_protocol_s" in out and out.get("eager_sequential_protocol_s"):
        out["speedup_vs_eager_protocol"] = out["eager_sequential_protocol_s"] / out["projected_protocol_s"]
    best = out.get("projected_protocol_s") or out.get("sequential_protocol_s")
    if best:
        out["speedup_vs_users_7h"] = REFERENCE_HOURS * 3600 / best
    if trace and bench:
        ref = [r for r in bench["rungs"] if r["rung"] == trace["rung"]]
        if ref:
            out["gpu_busy_share_at_reference_rung"] = trace["busy_ms_per_step"] / ref[0]["fast"]["ms_per_step"]
    out["targets"] = {
        "protocol_under_10_min": None if best is None else best < TARGET_MINUTES * 60,
        "at_least_40x_faster_than_7h": None if best is None else REFERENCE_HOURS * 3600 / best >= TARGET_SPEEDUP_VS_REFERENCE_HOURS,
        "engine_at_least_3x_eager": None if "speedup_vs_eager_at_reference_rung" not in out
        else out["speedup_vs_eager_at_reference_rung"] >= TARGET_SPEEDUP_VS_EAGER,
    }
    return out


def _fmt_s(seconds) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds / 60:.1f} min ({seconds:.0f} s)" if seconds >= 60 else f"{seconds:.1f} s"


def _verdict(flag) -> str:
    return {True: "met", False: "NOT met", None: "not measured"}[flag]


def render_summary(record: dict) -> str:
    """The one-page summary: what ran, the headline numbers, and each stage's key lines."""
    stages, plan, head = record["stages"], record["plan"], record.get("headline", {})
    env = (stages.get("environment") or {}).get("result") or {}
    gpu = env.get("gpu", {}).get("name") or plan["device"]
    lines = [f"# harness gpu-check: {plan['name']} on {gpu}", "",
             f"Started {record['started_at']}, {record.get('wall_s', 0):.0f} s wall of a {plan['budget_s']:.0f} s budget. "
             f"Commit {record.get('commit') or 'n/a'}; harness code {env.get('fingerprint', {}).get('harness_code_hash', 'n/a')}.",
             "", "## Stages", "", "| stage | status | wall |", "|---|---|---|"]
    for name in STAGES:
        st = stages.get(name)
        lines.append(f"| {name} | {st['status'] if st else 'not run'} | {_fmt_s(st['wall_s']) if st else ''} |")
    lines += ["", "## Headline", ""]
    if plan["name"] == "dry-run":
        lines.append("Dry run on the CPU at smoke sizes: these numbers check the plumbing, not the GPU path.")
        lines.append("")
    lines += [
        f"- Projected full-protocol evaluation: **{_fmt_s(head.get('projected_protocol_s'))}** "
        f"({head.get('projected_from', 'no concurrent run')}); rungs one after another: "
        f"{_fmt_s(head.get('sequential_protocol_s'))}; eager fp32 loop, one after another: "
        f"{_fmt_s(head.get('eager_sequential_protocol_s'))}.",
        "- Engine vs eager fp32 at the reference rung: "
        + (f"**{head['speedup_vs_eager_at_reference_rung']:.2f}x** ({head['reference_rung_ms_per_step']:.2f} vs "
           f"{head['reference_rung_eager_ms_per_step']:.2f} ms/step)" if "speedup_vs_eager_at_reference_rung" in head
           else "n/a")
        + (f"; whole protocol {head['speedup_vs_eager_protocol']:.1f}x" if "speedup_vs_eager_protocol" in head else "")
        + ".",
        f"- Against the users' {REFERENCE_HOURS:.0f} h: "
        + (f"{head['speedup_vs_users_7h']:.0f}x faster." if "speedup_vs_users_7h" in head else "n/a."),
        f"- Targets: under {TARGET_MINUTES:.0f} min {_verdict(head.get('targets', {}).get('protocol_under_10_min'))}; "
        f">= {TARGET_SPEEDUP_VS_REFERENCE_HOURS:.0f}x vs 7 h {_verdict(head.get('targets', {}).get('at_least_40x_faster_than_7h'))}; "
        f"engine >= {TARGET_SPEEDUP_VS_EAGER:.0f}x eager {_verdict(head.get('targets', {}).get('engine_at_least_3x_eager'))}.",
    ]
    for mode, r in head.get("compile_modes_at_reference_rung", {}).items():
        lines.append(f"- Compile mode `{mode}` at the reference rung: {r['ms_per_step']:.2f} ms/step, compiled "
                     f"{r['compiled']}, first step {r['first_step_s']:.1f} s"
                     + (f", {r['speedup_vs_reference']:.2f}x eager fp32" if r.get("speedup_vs_reference") else "")
                     + (f" (compile error: {r['compile_error'][:160]})" if r.get("compile_error") else "") + ".")
    if mps := (stages.get("concurrent_mps") or {}).get("result"):
        if "projected_protocol_with_mps_s" in head:
            lines.append(f"- With the rungs' kernels overlapping (MPS; the protocol does not use it yet): "
                         f"**{_fmt_s(head['projected_protocol_with_mps_s'])}** ({head['projected_with_mps_from']}"
                         + (f"; {head['mps_throughput_ratio']:.2f}x the tokens/s of the rungs taking turns"
                            if "mps_throughput_ratio" in head else "") + ", "
                         + f"{mps.get('mps_client_connections', 0)} client connections in the daemon's log).")
        elif not mps.get("mps"):
            lines.append(f"- MPS not measured: {mps.get('why')}.")
        else:
            lines.append("- MPS: the daemon ran, but not every rung trained as its client (see the table below).")
    cvi = head.get("concurrent_vs_isolated_sum")
    if cvi:
        lines.append(f"- Concurrent rungs, {cvi['steps']} steps: {cvi['measured_wall_s']:.1f} s measured wall "
                     f"({cvi['once_only_s']:.1f} s of it process start and compilation); the isolated per-rung "
                     f"times add up to {cvi['isolated_rungs_sum_s']:.1f} s for the same steps "
                     f"(steady part / isolated sum = {cvi['steady_ratio']:.2f}).")
    if "gpu_busy_share_at_reference_rung" in head:
        lines.append(f"- The device was busy {100 * head['gpu_busy_share_at_reference_rung']:.0f}% of a step at the "
                     "reference rung (traced busy time / bench ms per step).")
    if env.get("ceilings"):
        c = env["ceilings"]
        lines += ["", "## This device", "",
                  f"- Measured ceilings: copy {c['copy_gb_per_s']:.0f} GB/s (read + write), {c['matmul_dtype']} "
                  f"matmul {c['matmul_n']}^3 {c['matmul_tflops']:.1f} TFLOP/s.",
                  f"- Confinement: {env.get('confinement', {}).get('level', 'n/a')} "
                  f"(Landlock ABI {env.get('confinement', {}).get('landlock_abi', 'n/a')}).",
                  f"- Versions: {json.dumps(env.get('fingerprint', {}).get('versions', {}))}."]
    traced = (stages.get("calltrace") or {}).get("result")
    if traced:
        lines += ["", "## The device check in the launcher, its failed calls traced", ""]
        if not traced.get("built"):
            lines.append(f"Not traced: {traced.get('why')}.")
        for run in traced.get("runs", []):
            if not run.get("traced", True):
                lines.append(f"- {run['layers']}: not traced ({run.get('not_traced', '')[:200]})")
            lines.append(f"- {run['layers']}: " + ("**passed**" if run["passed"] else f"failed: {run['error'][:200]}")
                         + (f"; calls failed or programs started ({len(run['calls'])}"
                            f"{'+' if run['more_calls'] else ''}):" if run["calls"]
                            else "; no failed call of the C library seen."))
            lines += [f"  - `{plain_text(call, 200)}`" for call in run["calls"][:15]]
    bench = (stages.get("bench") or {}).get("result")
    if bench and bench.get("table"):
        lines += ["", "## Bench", "", "```", bench["table"], "```"]
    for stage, title in (("concurrent", "Rungs trained at once"),
                         ("concurrent_mps", "Rungs trained at once, MPS clients")):
        conc = (stages.get(stage) or {}).get("result")
        if conc and "rungs" in conc:
            lines += ["", f"## {title} ({conc['steps']} steps each)", "",
                      "| rung | ms/step | first step (s) | process start (s) | validation (s) | compiled |",
                      "|---|---:|---:|---:|---:|---|"]
            for r in conc["rungs"]:
                if "error" in r:
                    lines.append(f"| {tuple(r['rung'])} | failed: {r['error'][:120]} | | | | |")
                else:
                    lines.append(f"| {tuple(r['rung'])} | {r['ms_per_step']:.2f} | {r['first_step_s']:.1f} | "
                                 f"{r['process_startup_s']:.1f} | {r['eval_s']:.2f} | {r['compiled']} |")
    tests = (stages.get("cuda_tests") or {}).get("result")
    if tests:
        lines += ["", "## CUDA tests", "", f"{tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} "
                  f"skipped (exit code {tests['exit_code']})."]
        lines += [f"- {t['name']}: {t['outcome']} {t['message'][:200]}" for t in tests["tests"]]
    ev = (stages.get("evaluation") or {}).get("result")
    if ev:
        # A case the static policy refused ran no sandbox, and records no confinement.
        confinements = sorted({c["confinement"] for c in ev["cases"] if c.get("confinement")}) or ["no sandbox ran"]
        lines += ["", f"## Evaluation through the evaluator ({ev['profile']}, {ev['data_source']})", "",
                  f"Baseline prepared in {ev['prepare_s']:.1f} s (fitness {ev['baseline']['fitness']:.4f}). "
                  f"Sandbox confinement: {', '.join(f'`{c}`' for c in confinements)}.", "",
                  "| candidate | expected | got | score | wall (s) | run folder's peak (MiB) |",
                  "|---|---|---|---:|---:|---:|"]
        for c in ev["cases"]:
            lines.append(f"| {c['name']} | {c['expected_reason']} | {c['reason']} ({c['verdict']}) | "
                         f"{c['combined_score']} | {c['wall_s']:.1f} | {c.get('disk_peak_mib')} |")
        for c in ev["cases"]:
            if "escape" in c:
                e = c["escape"]
                lines += ["", f"Escape candidate's side effects, checked from outside: file written outside the "
                              f"sandbox: **{e['file_written_outside_sandbox']}**; secret read: **{e['secret_read']}**."]
        runs = [(c["name"], r) for c in ev["cases"] for r in c.get("runs") or []]
        lines += [""] if runs else []
        for name, r in runs:
            step = "n/a" if r["ms_per_step"] is None else f"{r['ms_per_step']:.2f} ms"
            error = plain_text(str(r.get("compile_error") or ""), 200)
            lines.append(f"- {name}, rung {tuple(r['rung'] or ())}: compiled **{r['compiled']}** ({r['compile_mode']}), "
                         f"first step {_fmt_s(r['first_step_s'])}, {step} per step in the sandbox"
                         + (f"; compile error: {error}" if error else ""))
    security = (stages.get("security") or {}).get("result")
    if security:
        lines += ["", f"## The security corpus and the confinement tests ({security['profile']})", "",
                  f"{security['passed']} passed, {security['failed']} failed, {security['skipped']} skipped (exit code "
                  f"{security['exit_code']}{', stopped at its time limit' if security.get('timed_out') else ''}). "
                  f"A sandbox here gets: {security['confinement']}."]
        lines += [f"- {t['name']}: {t['outcome']} {t['message'][:300]}" for t in security["tests"]
                  if t["outcome"] != "passed"]
    trace = (stages.get("trace") or {}).get("result")
    if trace:
        lines += ["", f"## Where the time goes (reference rung {tuple(trace['rung'])}, {trace['device_time']})", "",
                  f"{trace['busy_ms_per_step']:.3f} ms per step in {trace['kernels_per_step']:.0f} "
                  f"{'kernels' if trace['device_time'] == 'GPU kernels' else 'ops'}; by kind: "
                  + ", ".join(f"{k} {v:.3f} ms" for k, v in sorted(trace["by_category_ms_per_step"].items(),
                                                                   key=lambda kv: -kv[1])) + ".", "",
                  "| kernel | ms/step | share | calls/step |", "|---|---:|---:|---:|"]
        for r in trace["top"][:10]:
            lines.append(f"| `{r['name'][:90]}` | {r['ms_per_step']:.3f} | {100 * r['share']:.1f}% | "
                         f"{r['calls_per_step']:.0f} |")
    for name in STAGES:
        st = stages.get(name)
        if st and st["status"] != "ok":
            lines += ["", f"## {name}: {st['status']}", "", "```", (st.get("error") or "")[-1500:], "```"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Running the stages


def _write_json(path: Path, value) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=json_default))
    os.replace(tmp, path)


def run_stage_here(name: str, work: Path) -> int:
    """The body of one stage's process: run the stage of the plan in ``work/plan.json``, write ``work/<name>.json``."""
    plan = Plan.from_json((work / "plan.json").read_text())
    started = time.perf_counter()
    try:
        result = STAGE_FUNCTIONS[name](plan, work)
        ok = result.get("ok", True) if isinstance(result, dict) else True
        payload = {"status": "ok" if ok else "failed", "result": result}
    except Exception as exc:  # noqa: BLE001 - reported as data; the next stage still runs
        import traceback

        payload = {"status": "error", "error": traceback.format_exc()[-4000:]}
        _log(f"stage {name} raised {type(exc).__name__}: {exc}")
    payload["wall_s"] = time.perf_counter() - started
    _write_json(work / f"{name}.json", payload)
    return 0


def _run_stage_process(name: str, plan: Plan, work: Path, limit_s: float, log_file) -> dict:
    cmd = [sys.executable, "-m", "harness.diagnostics.gpu_check", "--stage", name, "--work", str(work)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", STAGE_LIMIT_ENV: str(limit_s),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    log_file.write(f"\n===== stage {name} (limit {limit_s:.0f} s) =====\n")
    log_file.flush()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    try:
        proc.wait(timeout=limit_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the stage's children too (rung processes, sandboxes)
        except ProcessLookupError:
            pass
        proc.wait()
    wall = time.perf_counter() - started
    path = work / f"{name}.json"
    if timed_out:
        partial = work / f"{name}.partial.json"  # what a stage kept as it went, if it keeps anything
        return {"status": "timeout", "wall_s": wall, "error": f"killed at its limit of {limit_s:.0f} s",
                **({"result": json.loads(partial.read_text())} if partial.exists() else {})}
    if not path.exists():
        return {"status": "error", "wall_s": wall, "error": f"the stage's process exited with {proc.returncode} "
                "without a result (see log.txt)"}
    return json.loads(path.read_text())


def run_all(plan: Plan, out: Path, stages: list[str] | None = None, budget_s: float | None = None,
            commit: str | None = None, echo=print) -> dict:
    """Every stage in order, each in its own process under its limit and the run's remaining budget."""
    out.mkdir(parents=True, exist_ok=True)
    budget = plan.budget_s if budget_s is None else budget_s
    record = {"plan": {**asdict(plan), "budget_s": budget}, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "commit": commit, "stages": {}}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="harness-gpu-check-") as tmp, open(out / "log.txt", "a") as log_file:
        work = Path(tmp)
        (work / "plan.json").write_text(plan.to_json())
        try:
            for name in stages or STAGES:
                left = budget - (time.monotonic() - started)
                if left < MIN_STAGE_S:
                    record["stages"][name] = {"status": "skipped", "wall_s": 0.0,
                                              "error": f"only {left:.0f} s of the {budget:.0f} s budget left"}
                else:
                    limit = min(float(plan.stage_limit_s.get(name, left)), left)
                    echo(f"[gpu-check {time.strftime('%H:%M:%S')}] stage {name} (limit {limit:.0f} s)")
                    record["stages"][name] = _run_stage_process(name, plan, work, limit, log_file)
                    if name == "concurrent_mps":
                        stop_mps(work)  # a stage killed at its limit could not stop its daemon itself
                    echo(f"[gpu-check {time.strftime('%H:%M:%S')}] stage {name}: {record['stages'][name]['status']} "
                         f"in {record['stages'][name]['wall_s']:.1f} s")
                record["wall_s"] = time.monotonic() - started
                record["headline"] = headline(record["stages"])
                _write_json(out / "gpu-check.json", record)
                (out / "summary.md").write_text(render_summary(record))
        finally:
            stop_mps(work)  # whatever stopped the run: the daemon's folder goes with the work folder
    return record


def cmd_gpu_check(args: argparse.Namespace) -> int:
    from harness.trusted.profiles import ConfigError, cuda_visible

    if args.stage:  # its record written, the stage's process ends without torch's and CUDA's teardown
        from harness.trusted.process_lifetime import exit_now

        exit_now(run_stage_here(args.stage, Path(args.work)))
    plan = DRY_RUN_PLAN if args.dry_run else CUDA_PLAN
    overrides = {}
    if args.bench_rungs:
        overrides["bench_rungs"] = tuple(int(i) for i in args.bench_rungs.split(","))
    if args.bench_steps:
        overrides["bench_steps"] = args.bench_steps
    if args.concurrent_steps:
        overrides["concurrent_steps"] = args.concurrent_steps
    if args.mps_steps:
        overrides["mps_steps"] = args.mps_steps
    if args.compile_modes:
        overrides["compile_modes"] = tuple(args.compile_modes.split(","))
    plan = replace(plan, **overrides)
    if not args.dry_run and not cuda_visible():
        raise ConfigError("no CUDA device is visible here; run with --dry-run to check the script on the CPU")
    stages = args.stages.split(",") if args.stages else None
    unknown = sorted(set(stages or []) - set(STAGES))
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; the stages are {', '.join(STAGES)}")
    record = run_all(plan, Path(args.out), stages, args.budget_s, args.commit)
    print((Path(args.out) / "summary.md").read_text())
    failed = [n for n, s in record["stages"].items() if s["status"] != "ok"]
    return 1 if failed else 0


def register(sub) -> None:
    p = sub.add_parser("gpu-check", help="prove the GPU path in one run: CUDA tests, bench, rungs at once, an "
                                         "evaluation on CUDA, a profiler trace (--dry-run: the same on the CPU)")
    p.add_argument("--out", default="results/gpu", help="folder for gpu-check.json, summary.md and log.txt")
    p.add_argument("--dry-run", action="store_true", help="run every stage on the CPU at smoke sizes")
    p.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)} (default: all, in that order)")
    p.add_argument("--budget-s", type=float, help="wall-clock budget of the whole run, seconds (default: the plan's)")
    p.add_argument("--bench-rungs", help="comma-separated ladder indices for the bench (default: every rung)")
    p.add_argument("--bench-steps", type=int, help="timed steps per rung in the bench (default: the plan's)")
    p.add_argument("--concurrent-steps", type=int, help="steps per rung when all rungs train at once")
    p.add_argument("--mps-steps", type=int, help="steps per rung when all rungs train at once as MPS clients")
    p.add_argument("--compile-modes", help="comma-separated torch.compile modes for the bench, e.g. "
                                           "default,reduce-overhead (default: the profile's own)")
    p.add_argument("--commit", help="the commit being run, recorded in the results (a copy without .git knows none)")
    p.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_gpu_check)


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.diagnostics.gpu_check ...``: the same as ``harness gpu-check ...`` without installing the package
    (the GPU machine has torch and numpy but not this package or OpenEvolve)."""
    from harness.trusted.profiles import ConfigError

    parser = argparse.ArgumentParser(prog="python -m harness.diagnostics.gpu_check")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["gpu-check", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"harness gpu-check: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

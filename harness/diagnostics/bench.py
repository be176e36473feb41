"""``harness bench``: how fast the training engine runs here, measured, and what one evaluation will cost.

For each ladder rung it times the engine (``harness.sandbox.train.train``: bf16 autocast, torch.compile, fused AdamW,
batches drawn on the device; whatever the profile turns on) and the same model under a plain eager fp32
PyTorch loop, the reference:

* no autocast (fp32, torch's default matmul precision), no torch.compile;
* ``torch.optim.AdamW`` as constructed by default (not fused; torch picks its foreach implementation);
* each batch drawn on the CPU with numpy from the token array, then ``torch.from_numpy(...).to(device)``;
* the loss read back every step (``loss.item()``), as a loop that logs or tests its loss does;
* the same recipe otherwise: the two AdamW groups, warmup + cosine learning rate, gradient clipping.

It prints ms/step, tokens/s, achieved model TFLOP/s and the share of the device's dense bf16 peak (FLOPs
per step from ``harness.sandbox.flops.audit_flops`` of the whole model's forward + backward, else the analytic
6·N·tokens + 12·L·d·T·tokens), the speed-up of the engine over the reference, and the projected wall time of
one evaluation of the profile (every rung for ``profile.steps`` steps plus its validation passes and its
compilation; sequential, and with ``--concurrent`` the rungs trained at once as ``harness.sandbox.objective`` does).
``--protocol`` also times one whole evaluation for real: the gate, every rung at the profile's full horizon
(concurrently when the profile says so) and the post-training leak test.

The numbers are written as JSON with the fingerprint (hardware, versions, profile digest, harness code hash)
under ``--out`` (default ``results/bench/``). Timing does not depend on what the tokens say, so by default
the data are uniform random tokens of the profile's vocabulary (``--data profile`` loads the real data).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.analysis.runs import display_path
from harness.trusted.frameworks import REPO_ROOT
from harness.trusted.profiles import Profile

REFERENCE_HOURS = 7.0  # the users' protocol on their previous loop: one evaluation, all four rungs
TARGET_MINUTES = 10.0
TARGET_SPEEDUP_VS_EAGER = 3.0
TARGET_SPEEDUP_VS_REFERENCE_HOURS = 40.0
RANDOM_TRAIN_TOKENS = 1 << 22

# Dense (no sparsity) peak rates per GPU in TFLOP/s: (bf16 tensor core, fp32 without tensor cores), from the
# vendor's data sheets. Matched against torch.cuda.get_device_name, first match wins.
PEAK_TFLOPS = (
    ("H200", "NVIDIA H200", 989.4, 66.9),
    ("H100 NVL", "NVIDIA H100 NVL", 835.0, 60.0),
    ("H100 PCIe", "NVIDIA H100 PCIe", 756.0, 51.2),
    ("H100", "NVIDIA H100 SXM", 989.4, 66.9),
    ("GH200", "NVIDIA GH200", 989.4, 66.9),
    ("A100", "NVIDIA A100", 312.0, 19.5),
)


def device_peak(name: str | None) -> dict | None:
    """The peak-rate entry for a CUDA device name, or None (CPU, unknown GPU)."""
    if not name:
        return None
    for key, label, bf16, fp32 in PEAK_TFLOPS:
        if key == "H100" and ("PCIe" in name or "NVL" in name):
            continue
        if key in name:
            return {"label": label, "bf16_dense_tflops": bf16, "fp32_tflops": fp32}
    return None


@dataclass(frozen=True)
class RandomTokens:
    """Uniform random token ids: the shape of TokenData (train, monitor, vocab_size) for timing."""

    train: np.ndarray
    monitor: np.ndarray
    vocab_size: int

    @classmethod
    def make(cls, vocab_size: int, val_tokens: int, train_tokens: int = RANDOM_TRAIN_TOKENS, seed: int = 0):
        rng = np.random.default_rng(seed)
        return cls(rng.integers(0, vocab_size, train_tokens, dtype=np.uint16),
                   rng.integers(0, vocab_size, val_tokens, dtype=np.uint16), vocab_size)


# ----------------------------------------------------------------------------------------------------------------
# FLOPs


def analytic_flops_per_step(rung: tuple, profile: Profile, vocab_size: int) -> int:
    """6·N·tokens (N: every matmul weight, the tied head counted once as a matmul) + 12·L·d·T·tokens
    (softmax attention's two T×T products, forward and backward, counted unmasked)."""
    d, layers, _ = rung
    T, tokens = profile.context_len_tokens, profile.batch_size_seqs * profile.context_len_tokens
    n_matmul = layers * 12 * d * d + vocab_size * d
    return 6 * n_matmul * tokens + 12 * layers * d * T * tokens


def audited_flops_per_step(attention_cls: type, rung: tuple, profile: Profile, vocab_size: int) -> dict:
    """The whole model's forward + backward at one sequence, audited op by op on the CPU, × the batch."""
    import torch

    from harness.sandbox.flops import audit_flops
    from harness.scaffold import build_model

    with torch.random.fork_rng(devices=[]):
        model = build_model(attention_cls, rung, vocab_size, profile.context_len_tokens, 0.0, 0).train()
        idx = torch.randint(0, vocab_size, (1, profile.context_len_tokens + 1),
                            generator=torch.Generator().manual_seed(0))

    def step():
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = audit_flops(step)
    finally:
        torch.set_num_threads(threads)
    batch = profile.batch_size_seqs
    return {"matmul": report.matmul * batch, "total": report.total * batch}


# ----------------------------------------------------------------------------------------------------------------
# The two loops


def reference_loop(attention_cls: type, profile: Profile, rung: tuple, data, steps: int, device: str,
                   seed: int | None = None) -> dict:
    """The plain eager fp32 loop (see the module docstring). Returns ms/step and the losses."""
    import torch

    from harness.scaffold import build_model
    from harness.sandbox.train import CPU_TRAIN_THREADS, lr_at

    seed = profile.train_seed if seed is None else seed
    dev = torch.device(device)
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(CPU_TRAIN_THREADS)  # what the engine uses on the CPU: compare like with like
    try:
        torch.manual_seed(seed)
        model = build_model(attention_cls, rung, data.vocab_size, profile.context_len_tokens, profile.dropout,
                            seed).to(dev).train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            [{"params": [p for p in params if p.dim() >= 2], "weight_decay": profile.weight_decay},
             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
            lr=profile.lr, betas=(0.9, 0.95))
        rng = np.random.default_rng(seed)
        T, B = profile.context_len_tokens, profile.batch_size_seqs
        offsets = np.arange(T + 1)
        warm = min(10, steps // 10)
        losses, start = [], None
        for step in range(steps):
            if step == warm:
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                start = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, profile)
            starts = rng.integers(0, len(data.train) - T - 1, B)
            window = torch.from_numpy(np.asarray(data.train[starts[:, None] + offsets], dtype=np.int64)).to(dev)
            _, loss = model(window[:, :-1], window[:, 1:])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), profile.grad_clip_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    ms = 1000.0 * elapsed / max(1, steps - warm)
    return {"ms_per_step": ms, "tokens_per_s": B * T / (ms / 1000.0), "losses": losses, "steps": steps}


def bench_profile(profile: Profile, steps: int) -> Profile:
    """The profile, cut to ``steps`` steps with one validation pass at the end (timed apart)."""
    return dataclasses.replace(profile, steps=steps, warmup_steps=min(profile.warmup_steps, max(1, steps // 10)),
                               eval_interval_steps=steps)


def n_evaluations(profile: Profile) -> int:
    """Validation passes in one rung's training: every eval_interval_steps and at the end."""
    return profile.steps // profile.eval_interval_steps + (1 if profile.steps % profile.eval_interval_steps else 0)


def projected_rung_s(profile: Profile, ms_per_step: float, eval_s: float, first_step_s: float, ms_first: float) -> float:
    """Wall seconds of one rung at the profile's horizon: its steps, its validation passes, and the first step's
    extra cost (compilation, warm-up) over an ordinary step."""
    return profile.steps * ms_per_step / 1000.0 + n_evaluations(profile) * eval_s + max(0.0, first_step_s - ms_first / 1000.0)


# ----------------------------------------------------------------------------------------------------------------
# Fingerprint


def _git() -> dict:
    root = REPO_ROOT
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def bench_fingerprint(profile: Profile, device: str) -> dict:
    import torch

    from harness.trusted.fingerprint import harness_code_hash
    from harness.sandbox.hardware import hardware

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                "cuda": torch.version.cuda}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        versions["triton"] = None
    if torch.device(device).type == "cuda":
        versions["cudnn"] = torch.backends.cudnn.version()
    return {"hardware": hardware(torch.device(device).type), "versions": versions, "profile": profile.name,
            "profile_digest": profile.digest(), "harness_code_hash": harness_code_hash(), "git": _git(),
            "cpu_threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------------------------------------------
# The run


def _load_data(profile: Profile, source: str):
    if source == "random":
        return RandomTokens.make(profile.vocab_size, profile.val_tokens)
    from harness.data import default_cache_dir, load_token_data

    return load_token_data(profile.data_source, profile.vocab_size, profile.val_tokens, default_cache_dir(),
                           profile.tokenizer_train_bytes, synthetic_stories_n=profile.synthetic_stories)


def _utilisation(flops: int, ms: float, peak: dict | None, key: str) -> tuple[float, float | None]:
    tflops = flops / (ms / 1000.0) / 1e12
    return tflops, (tflops / peak[key] if peak else None)


def run_bench(profile: Profile, steps: int, rung_indices: list[int] | None = None, framework: str = "cd",
              program: str | None = None, device: str | None = None, reference: bool = True,
              concurrent: bool | None = None, data_source: str = "random", protocol: bool = False, log=None,
              reference_rungs: list[tuple] | None = None) -> dict:
    """Everything ``harness bench`` measures, as one JSON-ready dict (``table`` holds the printed table).
    ``reference_rungs``: time the eager reference only at these rungs (default: every rung timed)."""
    import torch

    from harness.trusted.frameworks import get_framework
    from harness.sandbox.objective import train_rungs_concurrently
    from harness.sandbox.loader import load_attention
    from harness.sandbox.train import train

    log = log or (lambda message: None)
    device = device or profile.device
    dev = torch.device(device)
    if program:
        source, filename = Path(program).read_text(), str(Path(program).resolve())
    else:
        fw = get_framework(framework)
        source, filename = fw.seed_source(), str(fw.seed_path)
    attention_cls = load_attention(source, filename)
    rungs = [tuple(profile.ladder[i]) for i in (rung_indices if rung_indices else range(len(profile.ladder)))]
    concurrent = profile.concurrent_rungs if concurrent is None else concurrent
    data = _load_data(profile, data_source)
    short = bench_profile(profile, steps)
    gpu_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    peak = device_peak(gpu_name)
    fingerprint = bench_fingerprint(profile, device)
    log(f"bench: profile {profile.name} on {gpu_name or device}, {steps} steps per rung, rungs {rungs}, "
        f"program {filename}, data {data_source}")

    rows = []
    for rung in rungs if steps > 0 else []:  # --steps 0: only the full-horizon --protocol run
        try:
            flops = audited_flops_per_step(attention_cls, rung, profile, data.vocab_size)
            flops_source = "harness.sandbox.flops audit"
        except Exception as exc:  # noqa: BLE001 - the analytic count is a fine fallback for a timing tool
            flops = {"matmul": analytic_flops_per_step(rung, profile, data.vocab_size), "total": None}
            flops_source = f"analytic ({type(exc).__name__})"
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        fast = train(attention_cls, short, rung, data, device=device)
        if fast.status != "ok":
            raise RuntimeError(f"rung {rung}: the engine's run stopped ({fast.status}) during the benchmark")
        row = {
            "rung": list(rung), "flops_per_step": flops["matmul"], "flops_total_per_step": flops["total"],
            "flops_source": flops_source, "analytic_flops_per_step": analytic_flops_per_step(rung, profile, data.vocab_size),
            "fast": {"ms_per_step": fast.ms_per_step, "tokens_per_s": fast.tokens_per_s, "compiled": fast.compiled,
                     "compile_error": fast.compile_error, "compile_mode": fast.compile_mode,
                     "bf16_autocast": profile.bf16_autocast and dev.type == "cuda",
                     "first_step_s": fast.first_step_s, "eval_s": fast.eval_s, "wall_s": fast.wall_s,
                     "final_train_loss": fast.train_curve[-1][1] if fast.train_curve else None,
                     "peak_memory_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None},
        }
        row["fast"]["tflops"], row["fast"]["util_bf16_peak"] = _utilisation(flops["matmul"], fast.ms_per_step, peak,
                                                                             "bf16_dense_tflops")
        row["fast"]["projected_rung_s"] = projected_rung_s(profile, fast.ms_per_step, fast.eval_s, fast.first_step_s,
                                                           fast.ms_per_step)
        log(f"rung {rung}: engine {fast.ms_per_step:.2f} ms/step ({fast.tokens_per_s:,.0f} tokens/s), "
            f"compiled {fast.compiled}, first step {fast.first_step_s:.1f} s, validation pass {fast.eval_s:.2f} s")
        if reference and (reference_rungs is None or tuple(rung) in {tuple(r) for r in reference_rungs}):
            ref = reference_loop(attention_cls, short, rung, data, steps, device)
            row["reference"] = {"ms_per_step": ref["ms_per_step"], "tokens_per_s": ref["tokens_per_s"],
                                "final_train_loss": ref["losses"][-1]}
            row["reference"]["tflops"], row["reference"]["util_bf16_peak"] = _utilisation(
                flops["matmul"], ref["ms_per_step"], peak, "bf16_dense_tflops")
            row["reference"]["projected_rung_s"] = projected_rung_s(profile, ref["ms_per_step"], fast.eval_s, 0.0, 0.0)
            row["speedup_vs_reference"] = ref["ms_per_step"] / fast.ms_per_step
            log(f"rung {rung}: eager fp32 reference {ref['ms_per_step']:.2f} ms/step, "
                f"engine/reference speed-up {row['speedup_vs_reference']:.2f}x")
        rows.append(row)

    result = {"fingerprint": fingerprint, "device": {"type": dev.type, "name": gpu_name or fingerprint["hardware"]["cpu"],
                                                     "peak": peak},
              "config": {"profile": profile.name, "bench_steps": steps, "rungs": [list(r) for r in rungs],
                         "program": display_path(filename), "data": data_source, "reference": reference, "concurrent": concurrent,
                         "protocol_steps": profile.steps, "evaluations_per_rung": n_evaluations(profile)},
              "rungs": rows}
    projection = {"sequential_s": sum(r["fast"]["projected_rung_s"] for r in rows)} if rows else {}
    if rows and all("reference" in r for r in rows):
        projection["reference_sequential_s"] = sum(r["reference"]["projected_rung_s"] for r in rows)

    if concurrent and len(rows) > 1:
        log(f"training the {len(rungs)} rungs concurrently for {steps} steps each")
        started = time.perf_counter()
        outcomes = train_rungs_concurrently(source, filename, short, rungs, data, device=device, keep_last_model=False,
                                            stop_on_failure=False)
        wall = time.perf_counter() - started
        conc = []
        for row, outcome in zip(rows, outcomes):
            if outcome.error is not None or outcome.record["status"] != "ok":
                raise RuntimeError(f"rung {outcome.rung}: the concurrent run failed: {outcome.error or outcome.record['status']}")
            rec = outcome.record
            startup = max(0.0, outcome.process_wall_s - rec["wall_s"])
            entry = {"ms_per_step": rec["ms_per_step"], "tokens_per_s": rec["tokens_per_s"],
                     "first_step_s": rec["first_step_s"], "eval_s": rec["eval_s"], "process_startup_s": startup,
                     "compiled": rec["compiled"]}
            entry["projected_rung_s"] = startup + projected_rung_s(profile, rec["ms_per_step"], rec["eval_s"],
                                                                   rec["first_step_s"], rec["ms_per_step"])
            entry["tflops"], entry["util_bf16_peak"] = _utilisation(row["flops_per_step"], rec["ms_per_step"], peak,
                                                                    "bf16_dense_tflops")
            row["concurrent"] = entry
            conc.append(entry)
        projection["concurrent_measured_wall_s"] = wall
        projection["concurrent_aggregate_tokens_per_s"] = sum(e["tokens_per_s"] for e in conc)
        # Upper bound: every rung at its speed with all rungs running, for its whole horizon (the smaller rungs
        # finish first and leave the device to the larger ones, which then run faster than this assumes).
        projection["concurrent_upper_s"] = max(e["projected_rung_s"] for e in conc)
    result["projection"] = projection

    if protocol:
        result["protocol"] = time_protocol(attention_cls, source, filename, profile, data, device, log)
    result["table"] = format_table(result)
    return result


def time_protocol(attention_cls, source, filename, profile: Profile, data, device: str, log) -> dict:
    """One whole evaluation at the profile's horizon, timed: gate, training (as run_objective does it), leak test."""
    from harness.sandbox.checks import check_trained_leak, run_gate
    from harness.sandbox.objective import run_objective

    timings = {}
    started = time.perf_counter()
    _, gate_timings = run_gate(attention_cls, attention_cls, profile, device)
    timings["gate_s"] = time.perf_counter() - started
    timings["gate_checks_s"] = gate_timings
    train_start = time.perf_counter()
    record, model = run_objective(attention_cls, profile, data, device=device, log=log, source=source, filename=filename)
    timings["train_s"] = time.perf_counter() - train_start
    leak_start = time.perf_counter()
    check_trained_leak(model, data.monitor, profile)
    timings["leak_s"] = time.perf_counter() - leak_start
    timings["total_s"] = time.perf_counter() - started
    timings["concurrent_rungs"] = profile.concurrent_rungs
    timings["runs"] = [{k: r[k] for k in ("rung", "status", "final_monitor_loss", "ms_per_step", "wall_s", "first_step_s",
                                          "eval_s", "compiled", "compile_error")} for r in record["runs"]]
    log(f"protocol: {timings['total_s']:.1f} s (gate {timings['gate_s']:.1f} s, training {timings['train_s']:.1f} s, "
        f"leak test {timings['leak_s']:.1f} s)")
    return timings


def _minutes(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.1f} min"


def format_table(result: dict) -> str:
    cfg, dev = result["config"], result["device"]
    peak = dev["peak"]
    lines = [f"harness bench: profile {cfg['profile']} on {dev['type']} ({dev['name']}), {cfg['bench_steps']} timed "
             f"steps per rung, program {Path(cfg['program']).name}, data {cfg['data']}",
             f"peak used for utilisation: {peak['label']} {peak['bf16_dense_tflops']:.0f} TFLOP/s dense bf16"
             if peak else "utilisation: n/a (no GPU peak for this device)", ""]
    header = f"{'rung (d,L,H)':<14} {'loop':<26} {'ms/step':>9} {'tokens/s':>12} {'TFLOP/s':>8} {'util':>6} {'vs ref':>7}"
    lines += [header, "-" * len(header)]
    for row in result["rungs"]:
        rung = "(" + ",".join(str(v) for v in row["rung"]) + ")"
        fast = row["fast"]
        label = ("bf16 " if fast["bf16_autocast"] else "fp32 ") + \
                ("compiled" if fast["compiled"] else "eager") + " (engine)"
        entries = [(label, fast, f"{row['speedup_vs_reference']:.2f}x" if "speedup_vs_reference" in row else "")]
        if "reference" in row:
            entries.append(("eager fp32 (reference)", row["reference"], "1.00x"))
        if "concurrent" in row:
            entries.append(("engine, rungs concurrent", row["concurrent"], ""))
        for i, (name, e, ratio) in enumerate(entries):
            util = e.get("util_bf16_peak")
            tflops = e.get("tflops")
            lines.append(f"{rung if i == 0 else '':<14} {name:<26} {e['ms_per_step']:>9.2f} {e['tokens_per_s']:>12,.0f} "
                         f"{(f'{tflops:.3g}' if tflops is not None else 'n/a'):>8} "
                         f"{(f'{100 * util:.1f}%' if util is not None else 'n/a'):>6} {ratio:>7}")
    proj = result["projection"]
    steps, evals = cfg["protocol_steps"], cfg["evaluations_per_rung"]

    def versus(seconds: float) -> str:  # the users' 7 h is for their full protocol only
        return f"; {REFERENCE_HOURS * 3600 / seconds:.0f}x faster than {REFERENCE_HOURS:.0f} h" if cfg["profile"] == "full" else ""

    if not proj:
        lines.append("(no short benchmark: --steps 0)")
    else:
        lines += ["", f"projected evaluation ({len(result['rungs'])} rung(s) x {steps:,} steps, {evals} validation passes "
                      f"per rung, + compilation):",
                  f"  engine, rungs one after another: {_minutes(proj['sequential_s'])}{versus(proj['sequential_s'])}"]
    if "concurrent_upper_s" in proj:
        lines.append(f"  engine, rungs concurrent:        <= {_minutes(proj['concurrent_upper_s'])}"
                     f"{versus(proj['concurrent_upper_s'])} (upper bound: all rungs contending throughout; the "
                     f"{cfg['bench_steps']}-step concurrent run took {proj['concurrent_measured_wall_s']:.1f} s wall)")
    if "reference_sequential_s" in proj:
        lines.append(f"  eager fp32 reference:            {_minutes(proj['reference_sequential_s'])}")
    if "protocol" in result:
        p = result["protocol"]
        lines.append(f"measured evaluation at the full horizon: {_minutes(p['total_s'])} (gate {p['gate_s']:.1f} s, "
                     f"training {p['train_s']:.1f} s, leak test {p['leak_s']:.1f} s; "
                     f"rungs {'concurrent' if p['concurrent_rungs'] else 'sequential'})")
    return "\n".join(lines)


def write_result(result: dict, out: Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = result["device"]
    tag = "cpu" if dev["type"] == "cpu" else "".join(c if c.isalnum() else "-" for c in dev["name"]).strip("-").lower()
    path = out / f"bench-{result['config']['profile']}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=json_default))
    tmp.replace(path)
    return path


def json_default(value):
    """For ``json.dumps``: numpy scalars as Python numbers, non-finite floats as null, anything else as text."""
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.trusted.profiles import get_profile, require_device

    overrides = {}
    if args.compile_mode:
        overrides["compile_mode"] = args.compile_mode
    if args.no_compile:
        overrides["compile"] = False
    profile = get_profile(args.profile, **overrides)
    if args.device is None:
        require_device(profile)
    rung_indices = None
    if args.rungs and args.rungs != ["all"]:
        rung_indices = [int(r) for r in args.rungs]
    result = run_bench(profile, args.steps, rung_indices, framework=args.framework, program=args.program,
                       device=args.device, reference=not args.no_reference, concurrent=args.concurrent,
                       data_source=args.data, protocol=args.protocol,
                       log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True))
    path = write_result(result, Path(args.out))
    print(result["table"])
    print(f"\nwrote {path}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="time the training engine against a plain eager fp32 loop; project one evaluation")
    p.add_argument("--profile", help="smoke | pilot | full (default: $HARNESS_PROFILE or full)")
    p.add_argument("--steps", type=int, default=300,
                   help="timed steps per rung and loop (default 300; 0 with --protocol: only the full-horizon run)")
    p.add_argument("--rungs", nargs="*", default=None, help="ladder indices to time (default: all)")
    p.add_argument("--framework", default="cd", choices=["cd", "ttr", "mm"], help="whose seed to train (default cd)")
    p.add_argument("--program", help="a program file to train instead of a seed")
    p.add_argument("--device", help="override the profile's device (e.g. cpu)")
    p.add_argument("--data", default="random", choices=["random", "profile"],
                   help="uniform random tokens (default; timing does not depend on them) or the profile's data")
    p.add_argument("--no-reference", action="store_true", help="skip the eager fp32 reference loop")
    p.add_argument("--concurrent", dest="concurrent", action="store_true", default=None,
                   help="also time the rungs trained at once (default: the profile's concurrent_rungs)")
    p.add_argument("--no-concurrent", dest="concurrent", action="store_false")
    p.add_argument("--compile-mode", help="override profile.compile_mode (default | reduce-overhead | "
                                          "max-autotune-no-cudagraphs)")
    p.add_argument("--no-compile", action="store_true", help="train the engine eagerly (profile.compile=False)")
    p.add_argument("--protocol", action="store_true",
                   help="also time one whole evaluation at the profile's full horizon (gate, all rungs, leak test)")
    p.add_argument("--out", default="results/bench", help="folder for the JSON record (default results/bench/)")
    p.set_defaults(func=cmd_bench)


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.diagnostics.bench ...``: the same as ``harness bench ...`` without the rest of the CLI (for a
    machine where only torch and numpy are installed and the package is on PYTHONPATH)."""
    parser = argparse.ArgumentParser(prog="python -m harness.diagnostics.bench")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""Budget profiles: the one table of every number that sets how much work an evaluation does.

A profile is chosen with the environment variable ``HARNESS_PROFILE`` (default ``full``).
Every field carries its unit in its name. Nothing else in the package holds a budget number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

EVAL_BATCH_MIN_SEQS = 64  # evaluation passes batch at least this many sequences (no backward: memory allows it)

# (d_model, n_layers, n_heads) of the users' size ladder.
FULL_LADDER = ((96, 4, 4), (128, 4, 4), (128, 6, 4), (192, 6, 6))

OBJECTIVES = ("scaling_slope", "final_loss")
# Limits that stop a run but never change its numbers: they stay out of the fingerprint.
OPERATIONAL_FIELDS = ("hard_limit_s", "memory_cap_mib", "disk_cap_mib", "requires_confinement")
# Set to 1 to run a profile that requires a confined sandbox on a machine that cannot confine it.
ALLOW_UNCONFINED_ENV = "HARNESS_ALLOW_UNCONFINED"


class ConfigError(RuntimeError):
    """A set-up problem (unknown profile, missing CUDA, missing data). Never scored as a candidate failure."""


@dataclass(frozen=True)
class Gate:
    """Bounds the constraint gate enforces, as ratios to the pristine seed measured the same way."""

    param_tolerance_frac: float = 0.05  # attention trainable params may exceed the baseline by this fraction
    # Non-parameter tensor state allowed beyond the baseline's, in 32-bit words (a float32 element is one, a bool
    # 1/32): this × context_len × d_model (RoPE tables and the like), plus the next × context_len² (a causal mask
    # or a position-by-position bias, as nanoGPT-style code registers them), plus the next × n_heads ×
    # context_len² (a float mask in each head's module, as in Karpathy's per-head Head, or a precomputed
    # (heads, context, context) ALiBi bias). A context × context × d_model table of fixed random features does not
    # fit: it is 19 times the allowance at the full profile's largest rung, 11 times at smoke's.
    extra_state_words_per_ctx_dmodel: float = 2.0
    extra_state_words_per_ctx_squared: float = 1.0
    extra_state_words_per_head_ctx_squared: float = 1.0
    flop_bound_ratio: float = 1.10  # forward+backward FLOPs per token, candidate / baseline
    # FLOPs must stay within flop_bound_ratio also at this multiple of the context, extrapolated along each
    # program's growth in length between context/2 and context
    complexity_horizon: float = 4.0
    nonmatmul_flop_share_max: float = 0.5  # share of audited FLOPs allowed outside matmuls
    runtime_bound_ratio: float = 3.0  # train-step time (CPU time on the CPU, wall on CUDA), candidate / baseline
    memory_bound_ratio: float = 3.0  # peak memory of a train step, candidate / baseline
    causality_atol: float = 1e-5  # perturbation test tolerance, float32, relative to the output scale
    # After training, in the sandbox's own test of the trained model: predictions before a changed future may differ
    # by this much relative to their scale (at least 1): float rounding and nothing else.
    trained_state_rtol: float = 1e-4
    # The trusted scorer's tests of the trained model compare predictions instead: the log-probability of every token
    # at every position, through its own head, may differ by this many nats. A leak below it gains less than this
    # per token.
    trained_logprob_atol: float = 1e-3
    implausible_loss_frac: float = 0.25  # a loss this fraction below the baseline is flagged for validation


@dataclass(frozen=True)
class Profile:
    name: str
    device: str  # "cpu" or "cuda"; a profile never silently runs on another device
    ladder: tuple  # rungs of (d_model, n_layers, n_heads)
    reference_rung: int  # index into ladder used by the final_loss objective
    objective: str  # default objective, see OBJECTIVES
    context_len_tokens: int
    vocab_size: int
    batch_size_seqs: int
    steps: int
    warmup_steps: int
    lr: float
    weight_decay: float
    grad_clip_norm: float
    dropout: float
    eval_interval_steps: int
    val_tokens: int
    data_source: str  # "synthetic", a hub name, a local hub-style folder, or local text files
    synthetic_stories: int  # size of the generated corpus when data_source == "synthetic"
    tokenizer_train_bytes: int  # how much of the train split the BPE is trained on
    train_seed: int  # the one seed every candidate and the baseline train with
    compile: bool  # try torch.compile; falls back to eager when a program will not compile
    bf16_autocast: bool
    hard_limit_s: float  # wall-clock limit of one sandbox process (gate + training); killed past it
    memory_cap_mib: int  # resident-memory cap of one sandbox process
    # Files one sandbox running candidate code may hold in its run folder (the harness's own: the weights, the
    # compilation caches, the log), MiB; killed past it. The run folder is often on a RAM-backed /tmp.
    disk_cap_mib: int
    divergence_loss_factor: float  # early stop when train loss exceeds this × ln(vocab) after warmup
    gate: Gate = field(default_factory=Gate)
    # Train the ladder's rungs at once, each in its own process on the same device (harness.sandbox.objective).
    # Results are those of training them one after another; only the wall time changes.
    concurrent_rungs: bool = False
    compile_mode: str = "default"  # torch.compile mode when compile is on: default | reduce-overhead | ...
    # Refuse to evaluate where the sandbox cannot be confined (harness.trusted.confine), unless
    # $HARNESS_ALLOW_UNCONFINED=1. Off for smoke, which runs anywhere, CI included; the ledger records either way.
    requires_confinement: bool = True

    @property
    def reference(self) -> tuple:
        return self.ladder[self.reference_rung]

    @property
    def eval_batch_seqs(self) -> int:
        """Sequences per batch of every evaluation pass: the training's monitoring and the trusted scoring."""
        return max(self.batch_size_seqs, EVAL_BATCH_MIN_SEQS)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Hash of everything that can change a result; the operational limits are left out."""
        body = {k: v for k, v in self.to_dict().items() if k not in OPERATIONAL_FIELDS}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


PROFILES: dict[str, Profile] = {
    # CPU, seconds: for CI and offline smoke runs. Two tiny rungs so that the slope objective is testable.
    "smoke": Profile(
        name="smoke",
        device="cpu",
        ladder=((32, 2, 2), (48, 2, 2)),
        reference_rung=1,
        objective="final_loss",
        context_len_tokens=64,
        vocab_size=512,
        batch_size_seqs=16,
        steps=300,
        warmup_steps=30,
        lr=3e-3,
        weight_decay=0.1,
        grad_clip_norm=1.0,
        dropout=0.1,
        eval_interval_steps=100,
        val_tokens=8192,
        data_source="synthetic",
        synthetic_stories=3000,
        tokenizer_train_bytes=2_000_000,
        train_seed=0,
        compile=False,
        bf16_autocast=False,
        hard_limit_s=180.0,
        memory_cap_mib=6144,
        disk_cap_mib=1024,
        divergence_loss_factor=3.0,
        requires_confinement=False,
    ),
    # The users' protocol: every rung for 100k steps at batch 64, context 128.
    "full": Profile(
        name="full",
        device="cuda",
        ladder=FULL_LADDER,
        reference_rung=1,
        objective="scaling_slope",
        context_len_tokens=128,
        vocab_size=16384,
        batch_size_seqs=64,
        steps=100_000,
        warmup_steps=1000,
        lr=1e-3,
        weight_decay=0.1,
        grad_clip_norm=1.0,
        dropout=0.1,
        eval_interval_steps=10_000,
        val_tokens=1 << 20,
        data_source="roneneldan/TinyStories",
        synthetic_stories=0,
        tokenizer_train_bytes=200_000_000,
        train_seed=0,
        compile=True,
        bf16_autocast=True,
        hard_limit_s=8 * 3600.0,
        memory_cap_mib=65536,
        disk_cap_mib=8192,
        divergence_loss_factor=3.0,
        concurrent_rungs=True,
        # CUDA graphs: on an H200 the reference rung's step took 4.1 ms against 12.2 ms with the default mode
        # (launch-bound: the kernels themselves take about 2 ms), with the same loss (results/bench/NOTES.md).
        compile_mode="reduce-overhead",
    ),
}
# The smoke run on a GPU, seconds: checks a GPU machine's setup (CUDA and the confinement in the sandbox), and runs the
# security corpus there (harness gpu-check). Eager fp32, as on the CPU.
PROFILES["smoke-cuda"] = dataclasses.replace(PROFILES["smoke"], name="smoke-cuda", device="cuda")
# The smoke run for a third of its steps: every path of the evaluator (gate, training, scoring, every rejection) in
# few steps that still learn something (the seeds' validation loss ends at 4.69 nats, 2.77 at smoke, ln 512 = 6.24
# untrained). The test suite runs under it; `smoke` stays the offline run that learns the synthetic text.
PROFILES["smoke-short"] = dataclasses.replace(PROFILES["smoke"], name="smoke-short", steps=100, warmup_steps=10,
                                              eval_interval_steps=50)
# smoke-short as pilot and full run it: every rung trained at once, each in its own process, and the scaling-slope
# objective. The process structure of the users' protocol, inside the confined sandbox, on the CPU in seconds.
PROFILES["smoke-ladder"] = dataclasses.replace(PROFILES["smoke-short"], name="smoke-ladder", concurrent_rungs=True,
                                               objective="scaling_slope")
# A short GPU run: the users' protocol on the real ladder and data, for 2% of the steps.
PROFILES["pilot"] = dataclasses.replace(
    PROFILES["full"],
    name="pilot",
    steps=2000,
    warmup_steps=200,
    eval_interval_steps=500,
    hard_limit_s=1800.0,
    memory_cap_mib=32768,
)


def confinement_policy(profile: Profile) -> str:
    """What the executor does where it cannot confine the sandbox: "required" refuses, "preferred" runs it
    unconfined and records so."""
    opted_out = os.environ.get(ALLOW_UNCONFINED_ENV, "").strip() == "1"
    return "required" if profile.requires_confinement and not opted_out else "preferred"


def default_cache_dir() -> Path:
    """Where the token cache and the slot locks live: ``$HARNESS_CACHE`` if set, else ``~/.cache/harness``."""
    env = os.environ.get("HARNESS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "harness"


def get_profile(name: str | None = None, **overrides) -> Profile:
    """The profile named, else ``$HARNESS_PROFILE``, else ``full``. ``HARNESS_OBJECTIVE`` and
    ``HARNESS_DATA`` override the objective and the data source; keyword overrides win over both."""
    name = name or os.environ.get("HARNESS_PROFILE", "full")
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)} (HARNESS_PROFILE)")
    env = {}
    if os.environ.get("HARNESS_OBJECTIVE"):
        env["objective"] = os.environ["HARNESS_OBJECTIVE"]
    if os.environ.get("HARNESS_DATA"):
        env["data_source"] = os.environ["HARNESS_DATA"]
    profile = dataclasses.replace(PROFILES[name], **{**env, **overrides})
    if profile.objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {profile.objective!r}; choose one of {OBJECTIVES} (HARNESS_OBJECTIVE)")
    if profile.objective == "scaling_slope" and len(profile.ladder) < 2:
        raise ConfigError("the scaling_slope objective needs a ladder of at least two rungs")
    return profile


def request_profile(request: dict) -> Profile:
    """The profile a sandbox request names: its name, objective and data source (the request carries them, so that
    every process of one evaluation reads the same profile whatever its environment says)."""
    return get_profile(request["profile"], objective=request["objective"], data_source=request["data_source"])


# The hyperparameters a validation's training job may set (``request["hparams"]``), with their types.
OVERRIDABLE = {"lr": float, "warmup_steps": int, "weight_decay": float, "batch_size_seqs": int, "steps": int}


def training_profile(request: dict) -> Profile:
    """The profile a request's training runs under: ``request_profile`` with the request's hyperparameters, the ones
    of ``OVERRIDABLE`` (the training refuses a request with others). Every process of one training job that builds
    or batches the model reads it, so that the scored pass batches as the training's own evaluation did."""
    hparams = {k: OVERRIDABLE[k](v) for k, v in (request.get("hparams") or {}).items() if k in OVERRIDABLE}
    return dataclasses.replace(request_profile(request), **hparams)


def cuda_visible() -> bool:
    """Whether CUDA works here, asked in a throwaway process so that this process never initialises
    CUDA (OpenEvolve forks its workers after evaluating the seed in the main process)."""
    global _CUDA_VISIBLE
    if _CUDA_VISIBLE is None:
        probe = subprocess.run(
            [sys.executable, "-c", "import torch; print(int(torch.cuda.is_available()))"],
            capture_output=True, text=True, timeout=120,
        )
        _CUDA_VISIBLE = probe.stdout.strip().endswith("1")
    return _CUDA_VISIBLE


_CUDA_VISIBLE: bool | None = None


def require_device(profile: Profile) -> None:
    """Stop at once, with the reason, when the profile cannot run on this machine."""
    if profile.device == "cuda" and not cuda_visible():
        raise ConfigError(
            f"profile {profile.name!r} requires CUDA and no CUDA device is visible here; "
            "use HARNESS_PROFILE=smoke on a CPU machine"
        )

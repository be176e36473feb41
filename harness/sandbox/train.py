"""The training engine: one recipe for every program. It knows nothing about evolution.

AdamW, linear warmup then cosine decay to 10% of the peak, gradient clipping, random windows of the
train tokens sampled on the training device, the validation loss on the monitoring split at set intervals and at
the end (the scored split never reaches this process: the trusted scorer measures the final loss), bf16 autocast on CUDA, optional torch.compile with an eager fallback.

Speed without changing what is computed (CUDA): the token arrays live on the GPU (int32) and batches are
drawn there by the sampler's own generator; AdamW is fused; the per-step losses stay on the device and are
copied back asynchronously (pinned memory + an event), so the hot loop never waits for the GPU, yet the
first non-finite step is reported exactly and the divergence test sees the same losses at the same steps
as a loop that synchronised at every check; the model is compiled (``profile.compile_mode``) and a program
that will not compile trains eagerly, with ``compiled=False`` and the reason in ``compile_error``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from harness.trusted.profiles import Profile
from harness.scaffold import LanguageModel, build_model, count_params, non_embedding_params

MIN_LR_FRACTION = 0.1
# On CUDA the losses are checked (non-finite, divergence) every this many steps, at each evaluation and at
# the end; on CPU at every step. The check reads values copied back asynchronously: it never stalls the GPU.
CUDA_CHECK_EVERY_STEPS = 50
CPU_CHECK_EVERY_STEPS = 1
TOKEN_UPLOAD_CHUNK = 1 << 26  # tokens converted and copied to the device at a time
# Intra-op CPU threads while training on the CPU. The CPU profiles train tiny models, whose ops are far too
# small to gain from fork/join parallelism; with more threads than free cores (any other load, parallel
# evaluations) a smoke step took 440-1950 ms with two threads against 30-50 ms with one on a 2-core machine.
# One thread is also the same on every machine, so a CPU result does not depend on the core count.
CPU_TRAIN_THREADS = 1


@dataclass
class TrainResult:
    rung: tuple
    seed: int
    status: str  # "ok", "nonfinite", "diverged" or "pruned"
    final_monitor_loss: float | None  # on the monitoring split; the scored final loss comes from harness.scorer
    val_curve: list[tuple[int, float]]  # [(step, loss on the monitoring split)]
    train_curve: list[tuple[int, float]]
    steps_done: int
    tokens_seen: int
    params: int
    non_embedding_params: int
    wall_s: float
    ms_per_step: float
    tokens_per_s: float
    compiled: bool
    compile_error: str | None = None
    nonfinite_step: int | None = None
    eval_s: float = 0.0  # wall seconds spent in validation (excluded from ms_per_step)
    first_step_s: float = 0.0  # wall seconds of the first step: compilation, allocator and cache warm-up
    compile_mode: str | None = None  # torch.compile mode asked for (None when the profile does not compile)
    # Secondary measures, reported and never scored: the gradient norm before clipping (mean and variance
    # over the steps run), the loss's roughness (sd of the step-to-step change of the per-step training loss
    # after warmup; lower is smoother), and the peak memory (CUDA: allocated by torch on the device; CPU:
    # the training process's peak resident set, interpreter included).
    grad_norm_mean: float | None = None
    grad_norm_var: float | None = None
    loss_roughness: float | None = None
    peak_memory_mib: float | None = None
    model: LanguageModel | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "model"}
        d["rung"] = list(self.rung)
        return d


def lr_at(step: int, profile: Profile) -> float:
    if step < profile.warmup_steps:
        return profile.lr * (step + 1) / profile.warmup_steps
    span = max(1, profile.steps - profile.warmup_steps)
    progress = min(1.0, (step - profile.warmup_steps) / span)
    floor = profile.lr * MIN_LR_FRACTION
    return floor + 0.5 * (profile.lr - floor) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, profile: Profile, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": profile.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=profile.lr, betas=(0.9, 0.95), fused=device.type == "cuda")


class BatchSampler:
    """Random windows of context_len + 1 tokens, drawn on the training device with its own generator,
    so that the data order depends on the seed alone and never on the model."""

    def __init__(self, tokens: np.ndarray, context_len: int, batch_size: int, seed: int, device: torch.device):
        self.tokens = device_tokens(tokens, device)
        self.context_len, self.batch_size = context_len, batch_size
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.offsets = torch.arange(context_len + 1, device=device)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(self.tokens) - self.context_len - 1, (self.batch_size, 1),
                               generator=self.generator, device=self.tokens.device)
        window = self.tokens[starts + self.offsets].long()
        return window[:, :-1], window[:, 1:]


def device_tokens(tokens: np.ndarray, device: torch.device) -> torch.Tensor:
    """The token ids as one int32 tensor on ``device`` (half the memory of int64; the windows are widened
    when drawn). Copied in chunks, so that a memory-mapped train split of hundreds of millions of tokens
    never needs a full-size temporary in host memory."""
    out = torch.empty(len(tokens), dtype=torch.int32, device=device)
    for start in range(0, len(tokens), TOKEN_UPLOAD_CHUNK):
        chunk = np.asarray(tokens[start : start + TOKEN_UPLOAD_CHUNK], dtype=np.int32)
        out[start : start + len(chunk)].copy_(torch.from_numpy(chunk))
    return out


def validation_windows(val: np.ndarray, context_len: int, device: torch.device) -> torch.Tensor:
    """``harness.data.validation_windows`` on the device."""
    from harness.data import validation_windows as windows

    return torch.from_numpy(windows(val, context_len)).to(device)


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device, bf16: bool) -> float:
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), device=device, dtype=torch.float64), 0
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        with autocast(device, bf16):
            _, loss = model(chunk[:, :-1], chunk[:, 1:], reduction="none")
        total += loss.double().sum()
        count += loss.numel()
    model.train(was_training)
    return float(total.item() / count)


def _forward_backward(loss_fn, x, y, dev: torch.device, bf16: bool) -> torch.Tensor:
    with autocast(dev, bf16):
        loss = loss_fn(x, y)
    loss.backward()
    return loss


class LossMonitor:
    """The non-finite and divergence tests on the per-step losses, which stay on the training device.

    ``submit(end)`` queues the losses of the steps not yet submitted, up to ``end``, for the host: on CUDA
    an asynchronous copy into pinned memory followed by an event, so the loop goes on at once. ``poll()``
    examines every queued window whose copy has landed (``wait=True``: every queued window) in order, and
    returns the first verdict: ``("nonfinite", end, first_bad_step)`` or ``("diverged", end, None)``, where
    ``end`` is the check point whose window held the bad value. The windows and check points are those of a
    loop that synchronised at every check, so the verdicts are the same; only the moment they are seen moves.
    """

    def __init__(self, losses: torch.Tensor, warmup_steps: int, divergence_limit: float):
        self.losses, self.warmup_steps, self.divergence_limit = losses, warmup_steps, divergence_limit
        self.cuda = losses.device.type == "cuda"
        self.host = torch.empty(len(losses), dtype=losses.dtype, pin_memory=True) if self.cuda else losses
        self.pending: deque = deque()
        self.submitted = 0

    def submit(self, end: int) -> None:
        if end <= self.submitted:
            return
        begin, self.submitted = self.submitted, end
        event = None
        if self.cuda:
            self.host[begin:end].copy_(self.losses[begin:end], non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        self.pending.append((begin, end, event))

    def poll(self, wait: bool = False):
        while self.pending:
            begin, end, event = self.pending[0]
            if event is not None:
                if not wait and not event.query():
                    return None
                event.synchronize()
            self.pending.popleft()
            window = self.host[begin:end]
            bad = (~torch.isfinite(window)).nonzero()
            if len(bad):
                return "nonfinite", end, begin + int(bad[0]) + 1
            if end > self.warmup_steps and float(window[-1]) > self.divergence_limit:
                return "diverged", end, None
        return None

    def value(self, step: int) -> float:
        """The loss of (1-based) ``step``, once its window has been polled."""
        return float(self.host[step - 1])


def training_loss(model: torch.nn.Module):
    """The training step's function: the mean loss of a batch, and nothing else.

    Compiled, it must not return the logits as well: autograd then gives the unused logits output a gradient of
    zeros, so every step filled a batch x T x vocab tensor (268 MB in bf16 at the full profile) and added it into
    the cross-entropy's gradient (seen in the H200 trace: a bf16 fill per step and an ``add`` in the fused
    cross-entropy backward). The loss and the gradients are the same bit for bit."""

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return model(x, y)[1]

    return loss


def _compile(loss_fn, mode: str | None):
    """torch.compile, shape-static (the training batch never changes shape); None mode is torch's default."""
    return torch.compile(loss_fn, mode=None if mode in (None, "", "default") else mode, dynamic=False)


def _rng_state(dev: torch.device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None)


def _set_rng_state(dev: torch.device, state) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], dev)


def train(
    attention_cls: type,
    profile: Profile,
    rung: tuple,
    data,
    seed: int | None = None,
    device: str | None = None,
    log=None,
    keep_model: bool = False,
    on_step=None,
    prune_above: dict[int, float] | None = None,
) -> TrainResult:
    """Train the frozen scaffold around ``attention_cls`` at one rung under one profile.

    ``on_step(step)``, if given, is called after each optimizer step (1-based), e.g. to advance a profiler's
    schedule; it must not touch the model. ``prune_above`` {step: loss}: after the evaluation at such a step
    (before the last), stop with status "pruned" when the best validation loss so far is above the loss
    given, which is a median pruner's rule with the thresholds the tuner computed before the run."""
    dev = torch.device(device or profile.device)
    if dev.type != "cpu":
        return _train(attention_cls, profile, rung, data, seed, dev, log, keep_model, on_step, prune_above)
    threads = torch.get_num_threads()
    torch.set_num_threads(CPU_TRAIN_THREADS)
    try:
        return _train(attention_cls, profile, rung, data, seed, dev, log, keep_model, on_step, prune_above)
    finally:
        torch.set_num_threads(threads)


def _train(attention_cls, profile, rung, data, seed, dev, log, keep_model, on_step, prune_above) -> TrainResult:
    seed = profile.train_seed if seed is None else seed
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(seed)
    model = build_model(attention_cls, rung, data.vocab_size, profile.context_len_tokens, profile.dropout, seed).to(dev)
    model.train()
    optimizer = make_optimizer(model, profile, dev)
    sampler = BatchSampler(data.train, profile.context_len_tokens, profile.batch_size_seqs, seed, dev)
    val_windows = validation_windows(data.monitor, profile.context_len_tokens, dev)
    eval_batch = profile.eval_batch_seqs

    compile_mode = getattr(profile, "compile_mode", None) if profile.compile else None
    eager_loss = training_loss(model)
    loss_fn, compiled, compile_error = eager_loss, False, None
    if profile.compile:
        try:
            loss_fn, compiled = _compile(loss_fn, compile_mode), True
        except Exception as exc:  # noqa: BLE001 - any compile failure means eager
            compile_error = f"{type(exc).__name__}: {exc}"[:500]

    cuda_graphs = compile_mode == "reduce-overhead"
    check_every = CPU_CHECK_EVERY_STEPS if dev.type == "cpu" else CUDA_CHECK_EVERY_STEPS
    curve_every = train_curve_interval(profile)
    losses = torch.zeros(profile.steps, device=dev)
    grad_norms = torch.zeros(profile.steps, device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    divergence_limit = profile.divergence_loss_factor * math.log(data.vocab_size)
    monitor = LossMonitor(losses, profile.warmup_steps, divergence_limit)
    val_curve = []
    status, nonfinite_step, steps_done = "ok", None, 0
    curve_upto = 0  # train_curve covers the steps < curve_upto, and curve_upto itself when curve_last
    curve_last = True
    eval_s, first_step_s = 0.0, 0.0
    timing_step = min(10, profile.steps // 10)
    timing_start, eval_s_at_timing = None, 0.0
    start = time.perf_counter()
    step = 0
    while step < profile.steps:
        if step == timing_step:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            timing_start, eval_s_at_timing = time.perf_counter(), eval_s
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, profile)
        x, y = sampler.next()
        if compiled and cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are no longer read
        rng = _rng_state(dev) if compiled and step == 0 else None
        try:
            loss = _forward_backward(loss_fn, x, y, dev, profile.bf16_autocast)
        except Exception as exc:
            if not compiled:
                raise
            # The program will not compile: record why and redo this step eagerly on the same batch.
            compile_error, compiled, loss_fn = f"{type(exc).__name__}: {exc}"[:500], False, eager_loss
            optimizer.zero_grad(set_to_none=True)
            if rng is not None:
                _set_rng_state(dev, rng)  # the same dropout masks as an eager run
            loss = _forward_backward(loss_fn, x, y, dev, profile.bf16_autocast)
        grad_norms[step] = torch.nn.utils.clip_grad_norm_(model.parameters(), profile.grad_clip_norm).detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses[step] = loss.detach()
        step += 1
        steps_done = step
        if on_step is not None:
            on_step(step)
        if step == 1:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            first_step_s = time.perf_counter() - start
        last = step == profile.steps
        is_eval = step % profile.eval_interval_steps == 0 or last
        if step % check_every == 0 or is_eval:
            monitor.submit(step)
            verdict = monitor.poll(wait=is_eval)
            if verdict is not None:
                status, steps_done, nonfinite_step = verdict
                curve_upto, curve_last = steps_done, False
                break
        if is_eval:
            eval_start = time.perf_counter()
            val = evaluate_loss(model, val_windows, eval_batch, dev, profile.bf16_autocast)
            eval_s += time.perf_counter() - eval_start
            val_curve.append((step, val))
            if not math.isfinite(val):
                status, nonfinite_step = "nonfinite", step
                curve_upto, curve_last = step, True
                break
            threshold = (prune_above or {}).get(step)
            if threshold is not None and not last and min(v for _, v in val_curve) > threshold:
                status, steps_done = "pruned", step
                curve_upto, curve_last = step, True
                break
            if log:
                log(f"rung {rung} step {step}/{profile.steps} train {monitor.value(step):.4f} val {val:.4f} "
                    f"lr {lr_at(step - 1, profile):.2e}")
    else:
        curve_upto, curve_last = steps_done, True
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    end = time.perf_counter()
    monitor.submit(steps_done)
    monitor.poll(wait=True)
    # Each point is the mean training loss of the steps since the previous point, so that the curve is
    # smooth enough to read the steps to 90 % of the final performance from it.
    clean = monitor.host[: curve_upto if curve_last else max(0, curve_upto - 1)].to(torch.float64).numpy()
    ends = [k for k in range(1, len(clean) + 1) if k % curve_every == 0 or k == profile.steps]
    train_curve = [(k, float(clean[j:k].mean())) for j, k in zip([0, *ends], ends)]
    norms = grad_norms[:steps_done].float().cpu().numpy().astype(np.float64)
    norms = norms[np.isfinite(norms)]
    after_warmup = clean[profile.warmup_steps:]
    # `step` counts the steps actually run: past steps_done when a bad loss was seen a few steps late.
    if timing_start is not None and step > timing_step:
        timed, n_timed = end - timing_start - (eval_s - eval_s_at_timing), step - timing_step
    else:
        timed, n_timed = end - start - eval_s, max(1, step)
    ms_per_step = 1000.0 * timed / max(1, n_timed)
    tokens_per_step = profile.batch_size_seqs * profile.context_len_tokens
    return TrainResult(
        rung=tuple(rung),
        seed=seed,
        status=status,
        final_monitor_loss=val_curve[-1][1] if status == "ok" and val_curve else None,
        val_curve=val_curve,
        train_curve=train_curve,
        steps_done=steps_done,
        tokens_seen=steps_done * tokens_per_step,
        params=count_params(model),
        non_embedding_params=non_embedding_params(model),
        wall_s=end - start,
        ms_per_step=ms_per_step,
        tokens_per_s=tokens_per_step / (ms_per_step / 1000.0),
        compiled=compiled,
        compile_error=compile_error,
        nonfinite_step=nonfinite_step,
        eval_s=eval_s,
        first_step_s=first_step_s,
        compile_mode=compile_mode,
        grad_norm_mean=float(norms.mean()) if len(norms) else None,
        grad_norm_var=float(norms.var(ddof=1)) if len(norms) > 1 else None,
        loss_roughness=float(np.diff(after_warmup).std(ddof=1)) if len(after_warmup) > 2 else None,
        peak_memory_mib=_peak_memory_mib(dev),
        model=model if keep_model else None,
    )


def save_weights(model: torch.nn.Module, path) -> None:
    """What the training sandbox hands back: the trained tensors only, for the forward-only sandbox and the trusted
    scorer. ``params``: each trainable tensor once (the tied head is the embedding); ``buffers``: the persistent
    buffers and the frozen parameters (the gate counts both as state, not as parameters). Plain CPU tensors in a file that ``torch.load(weights_only=True)`` reads."""
    import os
    from pathlib import Path

    state = model.state_dict()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    pack = {"params": {k: state[k].detach().cpu().clone().contiguous() for k in trainable},
            "buffers": {k: v.detach().cpu().clone().contiguous() for k, v in state.items()
                        if k not in trainable and k != "lm_head.weight"}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(pack, tmp)
    os.replace(tmp, path)


def train_curve_interval(profile: Profile) -> int:
    """Steps per point of the training curve: about 100 points per run, and at least 4 per evaluation interval."""
    return max(1, min(profile.eval_interval_steps // 4, profile.steps // 100))


def _peak_memory_mib(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2 ** 20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB

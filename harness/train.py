"""The training engine: one recipe for every program. It knows nothing about evolution.

AdamW, linear warmup then cosine decay to 10% of the peak, gradient clipping, random windows of the
train tokens sampled on the training device, validation loss on the fixed validation tokens at set
intervals and at the end, bf16 autocast on CUDA, optional torch.compile with an eager fallback.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from harness.profiles import Profile
from harness.scaffold import LanguageModel, build_model, count_params, non_embedding_params

MIN_LR_FRACTION = 0.1


@dataclass
class TrainResult:
    rung: tuple
    seed: int
    status: str  # "ok", "nonfinite" or "diverged"
    final_val_loss: float | None
    val_curve: list[tuple[int, float]]
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
        self.tokens = torch.from_numpy(tokens.astype(np.int64)).to(device)
        self.context_len, self.batch_size = context_len, batch_size
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.offsets = torch.arange(context_len + 1, device=device)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(self.tokens) - self.context_len - 1, (self.batch_size, 1),
                               generator=self.generator, device=self.tokens.device)
        window = self.tokens[starts + self.offsets]
        return window[:, :-1], window[:, 1:]


def validation_windows(val: np.ndarray, context_len: int, device: torch.device) -> torch.Tensor:
    """Non-overlapping windows of context_len + 1 tokens (stride context_len) over the fixed slice."""
    n = (len(val) - 1) // context_len
    idx = np.arange(n)[:, None] * context_len + np.arange(context_len + 1)[None, :]
    return torch.from_numpy(val.astype(np.int64)[idx]).to(device)


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


def _forward_backward(step_fn, x, y, dev: torch.device, bf16: bool) -> torch.Tensor:
    with autocast(dev, bf16):
        _, loss = step_fn(x, y)
    loss.backward()
    return loss


def train(
    attention_cls: type,
    profile: Profile,
    rung: tuple,
    data,
    seed: int | None = None,
    device: str | None = None,
    log=None,
    keep_model: bool = False,
) -> TrainResult:
    """Train the frozen scaffold around ``attention_cls`` at one rung under one profile."""
    seed = profile.train_seed if seed is None else seed
    dev = torch.device(device or profile.device)
    torch.manual_seed(seed)
    model = build_model(attention_cls, rung, data.vocab_size, profile.context_len_tokens, profile.dropout, seed).to(dev)
    model.train()
    optimizer = make_optimizer(model, profile, dev)
    sampler = BatchSampler(data.train, profile.context_len_tokens, profile.batch_size_seqs, seed, dev)
    val_windows = validation_windows(data.val, profile.context_len_tokens, dev)
    eval_batch = max(profile.batch_size_seqs, 64)

    step_fn, compiled, compile_error = model, False, None
    if profile.compile:
        try:
            step_fn, compiled = torch.compile(model), True
        except Exception as exc:  # noqa: BLE001 - any compile failure means eager
            compile_error = f"{type(exc).__name__}: {exc}"[:500]

    sync_every = 1 if dev.type == "cpu" else 50
    losses = torch.zeros(profile.steps, device=dev)
    train_curve, val_curve = [], []
    status, nonfinite_step, steps_done = "ok", None, 0
    divergence_limit = profile.divergence_loss_factor * math.log(data.vocab_size)
    timed_steps, timing_start = 0, None
    start = time.perf_counter()
    step = 0
    while step < profile.steps:
        if step == min(10, profile.steps // 10):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            timing_start, timed_steps = time.perf_counter(), 0
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, profile)
        x, y = sampler.next()
        try:
            loss = _forward_backward(step_fn, x, y, dev, profile.bf16_autocast)
        except Exception as exc:
            if not compiled:
                raise
            # The program will not compile: record why and redo this step eagerly on the same batch.
            compile_error, compiled, step_fn = f"{type(exc).__name__}: {exc}"[:500], False, model
            optimizer.zero_grad(set_to_none=True)
            loss = _forward_backward(step_fn, x, y, dev, profile.bf16_autocast)
        torch.nn.utils.clip_grad_norm_(model.parameters(), profile.grad_clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses[step] = loss.detach().float()
        step += 1
        steps_done, timed_steps = step, timed_steps + 1
        last = step == profile.steps
        if step % sync_every == 0 or last or step % profile.eval_interval_steps == 0:
            window = losses[max(0, step - sync_every) : step].cpu()
            bad = (~torch.isfinite(window)).nonzero()
            if len(bad):
                status, nonfinite_step = "nonfinite", step - len(window) + int(bad[0]) + 1
                break
            if step > profile.warmup_steps and float(window[-1]) > divergence_limit:
                status = "diverged"
                break
        if step % max(1, profile.eval_interval_steps // 4) == 0 or last:
            train_curve.append((step, float(losses[step - 1])))
        if step % profile.eval_interval_steps == 0 or last:
            val = evaluate_loss(model, val_windows, eval_batch, dev, profile.bf16_autocast)
            val_curve.append((step, val))
            if not math.isfinite(val):
                status, nonfinite_step = "nonfinite", step
                break
            if log:
                log(f"rung {rung} step {step}/{profile.steps} train {float(losses[step - 1]):.4f} val {val:.4f} "
                    f"lr {lr_at(step - 1, profile):.2e}")
    if dev.type == "cuda":
        torch.cuda.synchronize()
    end = time.perf_counter()
    timed = (end - timing_start) if timing_start is not None and timed_steps else (end - start)
    n_timed = timed_steps if timing_start is not None and timed_steps else max(1, steps_done)
    ms_per_step = 1000.0 * timed / max(1, n_timed)
    tokens_per_step = profile.batch_size_seqs * profile.context_len_tokens
    return TrainResult(
        rung=tuple(rung),
        seed=seed,
        status=status,
        final_val_loss=val_curve[-1][1] if status == "ok" and val_curve else None,
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
        model=model if keep_model else None,
    )


def fit_scaling_law(params: list[int], losses: list[float]) -> tuple[float, float]:
    """Least-squares fit of loss = a + b·ln N; returns (a, b)."""
    x = np.log(np.asarray(params, dtype=np.float64))
    b, a = np.polyfit(x, np.asarray(losses, dtype=np.float64), 1)
    return float(a), float(b)

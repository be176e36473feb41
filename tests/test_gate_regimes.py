"""The gate sees the attention as training and scoring run it: an input that is the output of the block's LayerNorm
(not a leaf, with a grad_fn) at the training batch, and also the forward in eval mode under ``torch.no_grad()``.
Work done only in one of those regimes is counted; a leak of the future or across the batch only in one of them is
found."""

import dataclasses
import time

import pytest
import torch
import torch.nn as nn

from harness.sandbox.checks import (GateFailure, Geometry, _gate_threads, check_batch_independence, check_causality,
                                    check_flops, check_runtime_memory)
from harness.sandbox.flops import attention_flops
from harness.trusted.profiles import get_profile
from harness.trusted.reasons import Reason

G = Geometry(d_model=32, n_heads=4, context_len=32, batch_size=3, dropout=0.0)
GATE = get_profile("smoke").gate


class MultiHead(nn.Module):
    def __init__(self, d_model, n_heads, dropout=0.0, max_seq_len=32):
        super().__init__()
        self.h, self.dh = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def attend(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x):
        return self.attend(x)


class MoreWorkWhenNotALeaf(MultiHead):
    """Four times the work when the input has a grad_fn, as inside the model; once on a leaf."""

    def forward(self, x):
        y = self.attend(x)
        if x.grad_fn is not None:
            for _ in range(3):
                y = self.attend(x + y)
        return y


class MoreWorkWhenScored(MultiHead):
    """Four times the work in eval mode under no_grad, as the scoring runs it; once in training."""

    def forward(self, x):
        y = self.attend(x)
        if not self.training and not torch.is_grad_enabled():
            for _ in range(3):
                y = self.attend(x + y)
        return y


class MoreWorkForABatch(MultiHead):
    """Four times the work for more than one sequence: the audit used to count a batch of one."""

    def forward(self, x):
        y = self.attend(x)
        if x.shape[0] > 1:
            for _ in range(3):
                y = self.attend(x + y)
        return y


def _flop_failure(cls) -> GateFailure:
    with pytest.raises(GateFailure) as info:
        check_flops(cls, MultiHead, G, GATE)
    return info.value


def test_work_done_only_on_a_non_leaf_input_is_counted():
    failure = _flop_failure(MoreWorkWhenNotALeaf)
    assert failure.reason == Reason.FLOP_PARITY and failure.details["flop_ratio"] > 3.5, failure.message


def test_work_done_only_in_eval_mode_under_no_grad_is_counted():
    failure = _flop_failure(MoreWorkWhenScored)
    assert failure.reason == Reason.FLOP_PARITY and "eval mode under torch.no_grad()" in failure.message
    assert failure.details["flop_ratio"] == pytest.approx(1.0) and failure.details["eval_flop_ratio"] > 3.5


def test_work_done_only_for_a_batch_is_counted():
    assert _flop_failure(MoreWorkForABatch).reason == Reason.FLOP_PARITY


def test_the_layer_norms_backward_is_not_charged_to_the_attention():
    """Per token, the audit at the training batch on a LayerNorm's output equals the count on a leaf, batch 1."""
    metrics = check_flops(MultiHead, MultiHead, G, GATE)
    alone = attention_flops(MultiHead, G.d_model, G.n_heads, G.context_len, batch=1, max_seq_len=G.context_len)
    assert metrics["flops_per_token"] == alone.total / G.context_len
    assert metrics["flop_ratio"] == metrics["eval_flop_ratio"] == 1.0


class RecordsItsInput(MultiHead):
    seen: list = []

    def forward(self, x):
        RecordsItsInput.seen.append((x.shape[0], x.is_leaf, x.grad_fn is not None and "LayerNorm" in x.grad_fn.name(),
                                     self.training, torch.is_grad_enabled()))
        return self.attend(x)


def test_the_step_time_probe_trains_on_a_layer_norms_output_at_the_training_batch():
    RecordsItsInput.seen = []
    # Only what the probe hands the attention matters here, not how long the recording takes on a loaded machine.
    unbounded = dataclasses.replace(GATE, runtime_bound_ratio=float("inf"), memory_bound_ratio=float("inf"))
    check_runtime_memory(RecordsItsInput, MultiHead, G, unbounded, "cpu", repeats=2)
    assert RecordsItsInput.seen and set(RecordsItsInput.seen) == {(G.batch_size, False, True, True, True)}


class WaitsOffTheCore(MultiHead):
    """The seed's work, then 50 ms in which the process does not run: what another process holding the core does to
    a step, at its most."""

    def forward(self, x):
        time.sleep(0.05)
        return self.attend(x)


def test_on_the_cpu_time_off_the_core_does_not_count_as_the_steps_time():
    # As run_gate runs it: one intra-op thread, so that the step's CPU time is the whole of its work. Wall time would
    # make each step at least 50 ms, against the baseline's 1-2 ms (and fail the bound many times over).
    unbounded = dataclasses.replace(GATE, runtime_bound_ratio=float("inf"))
    with _gate_threads():
        metrics = check_runtime_memory(WaitsOffTheCore, MultiHead, G, unbounded, "cpu", repeats=3)
    assert metrics["attention_step_ms"] < 25.0, metrics


def test_the_flop_audit_sees_both_regimes():
    RecordsItsInput.seen = []
    check_flops(RecordsItsInput, MultiHead, G, GATE)
    assert set(RecordsItsInput.seen) == {(G.batch_size, False, True, True, True), (G.batch_size, True, False, False, False)}


class ForwardHeavy(MultiHead):
    """Work without a backward (a statistic of the detached input), the same in both regimes: its forward alone
    measures over the bound against the baseline's, its training step within."""

    def forward(self, x):
        stat = (x.detach()[..., :, None] * x.detach()[..., None, :]).sum(-1)
        return self.attend(x) + 0.0 * stat


def test_work_done_alike_in_both_regimes_is_judged_by_the_training_step():
    metrics = check_flops(ForwardHeavy, MultiHead, G, GATE)
    assert metrics["flop_ratio"] <= GATE.flop_bound_ratio < metrics["eval_flop_ratio"]
    assert metrics["eval_to_training_forward_flop_ratio"] <= 1.0


class TorchMultiheadAttention(nn.Module):
    def __init__(self, d_model, n_heads, dropout=0.0, max_seq_len=32):
        super().__init__()
        self.mha = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)

    def forward(self, x):
        T = x.shape[1]
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        return self.mha(x, x, x, attn_mask=mask, need_weights=False, is_causal=True)[0]


def test_torchs_fused_multi_head_attention_kernel_is_counted_as_the_attention_it_computes():
    """In eval mode under no_grad nn.MultiheadAttention calls one fused kernel the audit cannot charge; the eval
    audit counts it as the ops it runs in training."""
    metrics = check_flops(TorchMultiheadAttention, MultiHead, G, GATE)
    assert metrics["eval_to_training_forward_flop_ratio"] == pytest.approx(1.0, abs=0.02)
    assert torch.backends.mha.get_fastpath_enabled()  # restored


class FutureWhenNotALeaf(MultiHead):
    """Reads the next position only when the input is not a leaf: only inside the model in training."""

    def forward(self, x):
        y = self.attend(x)
        if not x.is_leaf:
            y = y + torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)
        return y


class BatchMeanWhenTraining(MultiHead):
    """Mixes the batch only with grad enabled and a non-leaf input: only inside the model in training."""

    def forward(self, x):
        y = self.attend(x)
        if torch.is_grad_enabled() and x.requires_grad and not x.is_leaf:
            y = y + x.mean(dim=0, keepdim=True)
        return y


def test_a_leak_of_the_future_only_inside_the_model_in_training_is_found():
    check_causality(MultiHead, G, atol=1e-5)
    with pytest.raises(GateFailure) as failure:
        check_causality(FutureWhenNotALeaf, G, atol=1e-5)
    assert failure.value.reason == Reason.CAUSALITY and "train mode" in str(failure.value)


def test_a_batch_mixed_only_inside_the_model_in_training_is_found():
    check_batch_independence(MultiHead, G, atol=1e-5)
    with pytest.raises(GateFailure) as failure:
        check_batch_independence(BatchMeanWhenTraining, G, atol=1e-5)
    assert failure.value.reason == Reason.BATCH_INDEPENDENCE and "train mode" in str(failure.value)


# ----------------------------------------------------------------------------------------------------------------
# Every condition a program could tell apart: its constructor's arguments, its width, the batch of each regime


class ThreeRoundsWhen(MultiHead):
    """The same attention applied three times (tied weights) under a condition of the real runs; once otherwise."""

    def __init__(self, d_model, n_heads, dropout=0.0, max_seq_len=32):
        super().__init__(d_model, n_heads, dropout, max_seq_len)
        self.rounds = 3 if self.real(d_model, dropout) else 1

    def real(self, d_model, dropout):
        return False

    def forward(self, x):
        h = x
        for _ in range(self.rounds):
            h = x + self.attend(h)
        return h - x


class MoreWorkWithDropout(ThreeRoundsWhen):
    def real(self, d_model, dropout):
        return dropout > 0.0  # the training builds it with the profile's dropout


class MoreWorkAtASmallerWidth(ThreeRoundsWhen):
    def real(self, d_model, dropout):
        return d_model < 48  # smoke's smaller rung; the gate used to build the largest only


class MoreWorkInTheScoringBatch(MultiHead):
    def forward(self, x):
        y = self.attend(x)
        if not torch.is_grad_enabled() and x.shape[0] >= 64:  # the scoring batch
            y = self.attend(y) + y
        return y


class KeepsStateAtTheTrainingBatch(MultiHead):
    def __init__(self, d_model, n_heads, dropout=0.0, max_seq_len=32):
        super().__init__(d_model, n_heads, dropout, max_seq_len)
        self.register_buffer("steps", torch.zeros(()))

    def forward(self, x):
        if self.training and torch.is_grad_enabled() and x.shape[0] == 16:  # smoke's training batch
            with torch.no_grad():
                self.steps.add_(1.0)
        return self.attend(x)


def _gate_of(cls, check: str) -> GateFailure:
    from harness.sandbox.checks import at_every_width

    profile = get_profile("smoke")
    assert profile.dropout > 0 and profile.batch_size_seqs == 16 and profile.eval_batch_seqs == 64
    assert [(g.d_model, g.n_heads) for g in Geometry.every(profile)] == [(48, 2), (32, 2)]
    run = {"flops": lambda w: check_flops(cls, MultiHead, w, profile.gate),
           "runtime": lambda w: check_runtime_memory(cls, MultiHead, w, profile.gate, "cpu")}[check]
    with _gate_threads(), pytest.raises(GateFailure) as info:
        at_every_width(run, Geometry.every(profile))
    return info.value


def test_work_done_only_with_the_training_s_dropout_is_counted():
    failure = _gate_of(MoreWorkWithDropout, "flops")
    assert failure.reason == Reason.FLOP_PARITY and "smaller rung" not in failure.message, failure.message


def test_work_done_only_at_a_smaller_rung_s_width_is_counted():
    failure = _gate_of(MoreWorkAtASmallerWidth, "flops")
    assert failure.reason == Reason.FLOP_PARITY, failure.message
    assert "at d_model 32 with 2 heads, the attention of a smaller rung" in failure.message


def test_work_done_only_in_the_scoring_batch_is_counted():
    failure = _gate_of(MoreWorkInTheScoringBatch, "flops")
    assert failure.reason == Reason.FLOP_PARITY and "eval mode under torch.no_grad()" in failure.message


def test_state_kept_only_at_the_training_batch_is_found():
    failure = _gate_of(KeepsStateAtTheTrainingBatch, "runtime")
    assert failure.reason == Reason.STATEFULNESS and "buffer 'steps'" in failure.message, failure.message


class MoreWorkOnCuda(MultiHead):
    def forward(self, x):
        y = self.attend(x)
        return self.attend(y) + y if x.is_cuda else y


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the gate's FLOP audit on the training device "
                    "under its bf16 autocast")
def test_the_flop_audit_on_cuda_counts_the_seeds_as_on_the_cpu_and_sees_work_done_only_there():
    from harness.sandbox.loader import load_attention
    from harness.trusted.frameworks import FRAMEWORKS

    profile = get_profile("smoke")
    g = Geometry.of(profile)
    for fw in FRAMEWORKS.values():
        cls = load_attention(fw.seed_source(), str(fw.seed_path))
        cpu = check_flops(cls, cls, g, profile.gate)
        cuda = check_flops(cls, cls, g, profile.gate, "cuda", bf16=True)
        assert cuda["flops_per_token"] == pytest.approx(cpu["flops_per_token"], rel=0.02), fw.name
    with pytest.raises(GateFailure) as info:
        check_flops(MoreWorkOnCuda, MultiHead, g, profile.gate, "cuda", bf16=True)
    assert info.value.reason == Reason.FLOP_PARITY

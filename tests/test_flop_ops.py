"""The FLOP audit, op by op: each costed op's charge against its analytic formula at two shapes, forward and backward.

A formula that is right at one shape can still scale wrongly (a missing ``groups``, a length taken from the wrong
argument), so every case runs at two shapes that differ in every dimension its formula uses.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.sandbox.flops import audit_flops


def _leaf(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(sum(shape))).requires_grad_(True)


def _charged(fn, *inputs) -> tuple[dict, dict]:
    """(forward, backward) charges by op of ``fn(*inputs)``; the backward is seeded by ``out.backward(ones)``, so
    the loss's own ops are not in it."""
    forward = audit_flops(lambda: fn(*inputs))
    assert not forward.unknown_ops, forward.unknown_ops
    out = fn(*inputs)
    seed = torch.ones_like(out)
    backward = audit_flops(lambda: out.backward(seed))
    assert not backward.unknown_ops, backward.unknown_ops
    return forward.by_op, backward.by_op


def _fft_cost(n: int, batch: int) -> int:
    return round(5 * n * math.log2(n) * batch)


# ---------------------------------------------------------------------------------------------
# Convolutions: 2 · batch · C_out · L_out · (C_in / groups) · K; input and weight gradients cost as much again each
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch, channels, length, kernel, groups", [(2, 8, 16, 3, 8), (3, 12, 33, 4, 3), (1, 6, 20, 5, 1)])
def test_convolution_forward_and_backward(batch, channels, length, kernel, groups):
    conv = nn.Conv1d(channels, channels, kernel, groups=groups, padding=kernel - 1)
    x = _leaf(batch, channels, length)
    forward, backward = _charged(lambda x: conv(x), x)
    out_length = length + kernel - 1
    per_pass = 2 * batch * channels * out_length * (channels // groups) * kernel
    assert forward == {"aten.convolution": per_pass}
    assert backward["aten.convolution_backward"] == 2 * per_pass


# ---------------------------------------------------------------------------------------------
# FFT: 5 · N · log2 N per transform of length N, times the batch; the backward is the adjoint transform
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch, length", [(3, 16), (2, 64)])
def test_real_fft_and_its_inverse(batch, length):
    x = _leaf(batch, length)
    forward, backward = _charged(lambda x: torch.fft.rfft(x, n=2 * length).real, x)
    assert forward["aten._fft_r2c"] == _fft_cost(2 * length, batch)
    assert backward["aten._fft_c2c"] == _fft_cost(2 * length, batch)
    spectrum = _leaf(batch, length // 2 + 1, dtype=torch.complex64)
    forward, backward = _charged(lambda s: torch.fft.irfft(s, n=length), spectrum)
    assert forward["aten._fft_c2r"] == _fft_cost(length, batch)
    assert backward["aten._fft_r2c"] == _fft_cost(length, batch)


@pytest.mark.parametrize("batch, length", [(2, 8), (5, 32)])
def test_complex_fft(batch, length):
    z = _leaf(batch, length, dtype=torch.complex64)
    forward, backward = _charged(lambda z: torch.fft.fft(z).real, z)
    assert forward["aten._fft_c2c"] == _fft_cost(length, batch)
    assert backward["aten._fft_c2c"] == _fft_cost(length, batch)


# ---------------------------------------------------------------------------------------------
# Scans: one per element; the backward of a cumulative sum is a reversed cumulative sum
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 16), (3, 7, 40)])
def test_scans(shape):
    numel = math.prod(shape)
    x = _leaf(*shape)
    forward, backward = _charged(lambda x: x.cumsum(-1), x)
    assert forward == {"aten.cumsum": numel} and backward["aten.cumsum"] == numel
    forward, _ = _charged(lambda x: torch.sigmoid(x).cumprod(-1), x)
    assert forward["aten.cumprod"] == numel
    forward, backward = _charged(lambda x: x.logcumsumexp(-1), x)
    assert forward == {"aten.logcumsumexp": numel} and backward["aten.logcumsumexp"] == 2 * numel


# ---------------------------------------------------------------------------------------------
# Solves: triangular n · numel(B); general (2/3) n³ per matrix for the LU, then 2 n · numel(B)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch, n, rhs", [(1, 8, 3), (4, 24, 10)])
def test_triangular_solve(batch, n, rhs):
    a = (torch.randn(batch, n, n).triu() + n * torch.eye(n)).requires_grad_(True)
    b = _leaf(batch, n, rhs)
    forward, backward = _charged(lambda a, b: torch.linalg.solve_triangular(a, b, upper=True), a, b)
    assert forward == {"aten.linalg_solve_triangular": n * batch * n * rhs}
    # The backward solves the transposed system once more and forms the factor's gradient as a product.
    assert backward["aten.linalg_solve_triangular"] == n * batch * n * rhs
    assert backward["aten.bmm"] == 2 * batch * n * rhs * n


@pytest.mark.parametrize("batch, n, rhs", [(1, 8, 3), (3, 20, 7)])
def test_linear_solve(batch, n, rhs):
    a = (torch.randn(batch, n, n) + n * torch.eye(n)).requires_grad_(True)
    b = _leaf(batch, n, rhs)
    forward, backward = _charged(lambda a, b: torch.linalg.solve(a, b), a, b)
    assert forward == {"aten._linalg_solve_ex": int(batch * 2 * n**3 / 3) + 2 * n * batch * n * rhs}
    assert backward["aten.linalg_lu_solve"] == 2 * n * batch * n * rhs  # reuses the forward's LU factors


# ---------------------------------------------------------------------------------------------
# Softmax: 5 per element (max, subtract, exp, sum, divide), the same for its backward; norms: 8 per element
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 16), (4, 3, 50)])
def test_softmax(shape):
    numel = math.prod(shape)
    forward, backward = _charged(lambda x: x.softmax(-1), _leaf(*shape))
    assert forward == {"aten._softmax": 5 * numel} and backward == {"aten._softmax_backward_data": 5 * numel}
    forward, backward = _charged(lambda x: x.log_softmax(-1), _leaf(*shape))
    assert forward == {"aten._log_softmax": 5 * numel} and backward == {"aten._log_softmax_backward_data": 5 * numel}


@pytest.mark.parametrize("shape", [(2, 16, 8), (3, 40, 24)])
def test_layer_and_group_norm(shape):
    numel = math.prod(shape)
    x = _leaf(*shape)
    forward, backward = _charged(lambda x: F.layer_norm(x, shape[-1:]), x)
    assert forward == {"aten.native_layer_norm": 8 * numel}
    assert backward == {"aten.native_layer_norm_backward": 8 * numel}
    forward, backward = _charged(lambda x: F.group_norm(x, 4), _leaf(*shape))  # a fresh leaf: no grad to add to
    assert forward == {"aten.native_group_norm": 8 * numel}
    assert backward == {"aten.native_group_norm_backward": 8 * numel}


@pytest.mark.parametrize("shape", [(2, 16, 8), (3, 40, 24)])
def test_rms_norm_is_its_parts(shape):
    """Without a fused kernel on CPU, RMS norm is square, mean, add, rsqrt and multiply, each charged as such."""
    rows, width = math.prod(shape[:-1]), shape[-1]
    forward, _ = _charged(lambda x: F.rms_norm(x, shape[-1:]), _leaf(*shape))
    assert forward == {"aten.pow": rows * width, "aten.mean": rows * width, "aten.add": rows,
                       "aten.rsqrt": rows, "aten.mul": rows * width}


# ---------------------------------------------------------------------------------------------
# Indexing: the largest tensor it touches
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows, width, picks", [(6, 4, 10), (50, 16, 7)])
def test_gather_index_select_and_embedding(rows, width, picks):
    x = _leaf(rows, width)
    index = torch.randint(0, rows, (picks,), generator=torch.Generator().manual_seed(rows))
    forward, backward = _charged(lambda x: x.index_select(0, index), x)
    assert forward == {"aten.index_select": max(rows, picks) * width}
    assert backward["aten.index_add"] == max(rows, picks) * width
    forward, backward = _charged(lambda w: F.embedding(index, w), x)
    assert forward == {"aten.embedding": max(rows, picks) * width}
    assert backward["aten.embedding_dense_backward"] == max(rows, picks) * width
    columns = torch.randint(0, width, (rows, width), generator=torch.Generator().manual_seed(width))
    forward, backward = _charged(lambda x: x.gather(1, columns), x)
    assert forward == {"aten.gather": rows * width}
    assert backward["aten.scatter_add"] == rows * width


# ---------------------------------------------------------------------------------------------
# The matmul family, in place too
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("b, m, k, n", [(1, 4, 8, 3), (5, 16, 6, 12)])
def test_matmuls_in_and_out_of_place(b, m, k, n):
    x, y = torch.randn(b, m, k), torch.randn(b, k, n)
    for fn in (lambda: torch.bmm(x, y), lambda: torch.zeros(b, m, n).baddbmm_(x, y)):
        report = audit_flops(fn)
        assert (report.matmul, report.unknown_ops) == (2 * b * m * k * n, {})
    for fn in (lambda: torch.addmm(torch.zeros(m, n), x[0], y[0]), lambda: torch.zeros(m, n).addmm_(x[0], y[0])):
        report = audit_flops(fn)
        assert (report.matmul, report.unknown_ops) == (2 * m * k * n, {})


@pytest.mark.parametrize("points, dim", [(5, 3), (12, 8)])
def test_pairwise_distances(points, dim):
    """``pdist`` pays what ``cdist`` pays per pair and feature: difference, power, sum."""
    x = _leaf(points, dim)
    pairs = points * (points - 1) // 2
    forward, backward = _charged(lambda x: F.pdist(x), x)
    assert forward == {"aten._pdist_forward": 3 * pairs * dim}
    assert backward["aten._pdist_backward"] == 6 * pairs * dim


# ---------------------------------------------------------------------------------------------
# Recurrent kernels: the fused CPU LSTM kernel against the same LSTM decomposed into costed ops
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch, length, inputs, hidden", [(2, 16, 8, 12), (3, 32, 16, 8)])
def test_fused_lstm_kernel_costs_what_its_decomposition_costs(batch, length, inputs, hidden):
    torch.manual_seed(0)
    lstm = nn.LSTM(inputs, hidden, batch_first=True)
    x = _leaf(batch, length, inputs)

    def total(fused: bool) -> tuple[int, list]:
        with torch.backends.mkldnn.flags(enabled=fused):
            report = audit_flops(lambda: lstm(x)[0].sum().backward())
        return report.total, sorted(report.by_op)

    fused, fused_ops = total(True)
    decomposed, decomposed_ops = total(False)
    if not any("mkldnn_rnn_layer" in op for op in fused_ops):
        pytest.skip("this build of torch runs the LSTM without its fused CPU kernel")
    assert not any("mkldnn" in op for op in decomposed_ops)
    assert fused == pytest.approx(decomposed, rel=0.05)


# ---------------------------------------------------------------------------------------------
# Elementwise ops: one per output element; reductions: one per input element
# ---------------------------------------------------------------------------------------------

_UNARY = ["exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "abs", "neg", "reciprocal", "square",
          "erf", "expm1", "log1p", "sign", "floor", "relu"]
_BINARY = ["add", "sub", "mul", "div", "maximum", "minimum", "pow", "atan2", "eq", "lt"]
_ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu, "softplus": F.softplus, "elu": F.elu, "leaky_relu": F.leaky_relu,
                "hardtanh": F.hardtanh, "mish": F.mish}


@pytest.mark.parametrize("shape", [(3, 5), (2, 7, 9)])
def test_elementwise_ops_charge_their_output(shape):
    numel = math.prod(shape)
    x, y = torch.rand(shape) + 0.5, torch.rand(shape) + 0.5  # positive: every op is defined
    calls = {**{name: (lambda name=name: getattr(torch, name)(x)) for name in _UNARY},
             **{name: (lambda name=name: getattr(torch, name)(x, y)) for name in _BINARY},
             **{name: (lambda fn=fn: fn(x)) for name, fn in _ACTIVATIONS.items()}}
    for name, call in calls.items():
        report = audit_flops(call)  # one op, whatever torch calls it (square is pow): one charge per element
        assert (report.total, report.elementwise, len(report.by_op)) == (numel, numel, 1), (name, report.by_op)
    # broadcasting: the output's size, not the inputs'
    row = torch.rand(shape[-1])
    assert audit_flops(lambda: x * row).by_op == {"aten.mul": numel}
    assert audit_flops(lambda: torch.where(x > 1.0, x, y)).by_op == {"aten.gt": numel, "aten.where": numel}


@pytest.mark.parametrize("shape", [(3, 5), (2, 7, 9)])
def test_reductions_charge_their_input(shape):
    numel = math.prod(shape)
    x = torch.rand(shape)
    for name in ("sum", "mean", "amax", "amin", "prod", "var", "std", "logsumexp", "argmax"):
        reduce = getattr(torch, name)
        assert audit_flops(lambda: reduce(x, -1)).by_op == {f"aten.{name}": numel}, name
    assert audit_flops(lambda: x.sum()).by_op == {"aten.sum": numel}
    assert audit_flops(lambda: torch.linalg.vector_norm(x, dim=-1)).by_op == {"aten.linalg_vector_norm": numel}


def test_every_fused_sdpa_kernel_is_charged_what_it_hides_as_the_cpu_s_is():
    """CUDA's flash, memory-efficient and cuDNN kernels order their arguments each their way: each is charged the
    softmax, scale and mask the CPU kernel is charged, found by name in its schema (this machine need not run them)."""
    from harness.sandbox.flops import _SDPA_FUSED, _AuditMode

    q, k = torch.empty(2, 3, 10, 8), torch.empty(2, 3, 12, 8)
    n = 2 * 3 * 10 * 12

    def charged(op, **given):
        names = [a.name for a in op._schema.arguments]
        args = [given.get(name) for name in names[: max(names.index(x) for x in given) + 1]]
        audit = _AuditMode()
        audit._sdpa_extras(op, args, {})
        return audit.totals["reduction"], audit.totals["elementwise"]

    aten = torch.ops.aten
    cases = {name: getattr(aten, name).default for name in (
        "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu_backward", "_scaled_dot_product_flash_attention_backward",
        "_scaled_dot_product_efficient_attention_backward", "_scaled_dot_product_cudnn_attention_backward")}
    assert {op.overloadpacket for op in cases.values()} == set(_SDPA_FUSED)
    for name, op in cases.items():
        assert charged(op, query=q, key=k, is_causal=True) == (5 * n, 2 * n), name
        assert charged(op, query=q, key=k, is_causal=False) == (5 * n, n), name
    forward, backward = cases["_scaled_dot_product_efficient_attention"], cases["_scaled_dot_product_flash_attention_backward"]
    assert charged(forward, query=q, key=k, dropout_p=0.1, is_causal=True) == (5 * n, 5 * n)  # + bernoulli, div, mul
    assert charged(backward, query=q, key=k, dropout_p=0.1, is_causal=True) == (5 * n, 3 * n)  # + mul
    mask = torch.empty(10, 12)
    assert charged(cases["_scaled_dot_product_efficient_attention"], query=q, key=k, attn_bias=mask) == (5 * n, 2 * n)
    assert charged(cases["_scaled_dot_product_flash_attention_for_cpu"], query=q, key=k, attn_mask=mask) == (5 * n, 2 * n)

"""FLOP audit for an attention module: forward + backward, every aten op accounted for.

``torch.utils.flop_counter.FlopCounterMode`` only counts the matmul family (mm, bmm, addmm,
baddbmm, convolution, the CUDA SDPA kernels). Everything else is free to it, so an evolved
attention class can hide its work in a broadcast multiply + sum, a cumsum, an FFT, a linear
solve, or call SDPA on CPU (whose kernel, ``_scaled_dot_product_flash_attention_for_cpu``, is
not registered and counts 0). See research notes ``unified-frameworks.md`` §6.

This module runs the code under two dispatch modes at once:

* ``FlopCounterMode`` with a few extra formulas (the CPU SDPA kernel and its backward at the
  explicit-matmul count 4·B·H·T·S·d forward / 2× that backward, mv, dot, addmv, addr, addbmm,
  cdist, ``_trilinear``, ``_addmm_activation``) → ``FlopReport.matmul``. The softmax, scale
  and mask fused inside the CPU SDPA kernel are charged to reduction/elementwise as an
  explicit implementation would pay them, so SDPA never looks cheaper than explicit matmuls;
* an audit ``TorchDispatchMode`` *outside* it, which sees every aten op the counter executes
  (forward and backward: backward ops dispatch too; ops the counter decomposes arrive
  decomposed, so nothing is counted twice) and charges each one by table:

  ============  =======================================================================
  elementwise   output numel (transcendental ops also tallied in ``transcendental``)
  reduction     reductions and scans: input numel; softmax (+backward): 5·numel;
                layer/group/rms/batch norm (+backward): 8·numel
  fft           5·N·log2(N) per transform × batch (N = transformed length)
  linalg        per matrix: solve/LU (2/3)n³ (+2n² per rhs), inverse 2n³, Cholesky n³/3, …
  other         indexing / gather / scatter / embedding: largest tensor numel; sort n·log2 n
  free          views, reshapes, copies, creation, cat/stack, padding, masks (tril/triu)
  ============  =======================================================================

  An op in no table (and not tagged pointwise / reduction / view by torch) is recorded in
  ``unknown_ops`` with its call count, as is any op outside the ``aten`` namespace (custom
  ops, Triton wrappers). The evaluator rejects a candidate with unknown ops.

What it cannot see: work done outside torch's dispatcher (numpy, Python arithmetic on
``.tolist()`` values, C extensions that do not register torch ops) and code that disables the
active dispatch modes (``torch.utils._python_dispatch._disable_current_modes``, ``torch._C``
guards). Those must be stopped by the source policy, not by this counter.

Cost: the first audit in a process imports ``torch._dynamo`` (every ``TorchDispatchMode`` does),
about 1–2 s once; after that one layer at d_model=192, T=128 takes ~10 ms, and Python loops
over time pay ~50–100 µs per dispatched op (DeltaNet loop, T=128: ~0.5 s).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, get_shape

__all__ = ["FlopReport", "audit_flops", "attention_flops", "classify_op", "unaccounted_message", "refused_advice",
           "CATEGORIES", "REFUSED"]

aten = torch.ops.aten

#: Categories :func:`classify_op` can return (``None`` means unknown).
CATEGORIES = ("matmul", "elementwise", "reduction", "fft", "linalg", "other", "free")


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


@dataclass
class FlopReport:
    """FLOPs of one audited call, by category. All counts are plain ints (FLOPs, 2 per MAC)."""

    matmul: int = 0  # FlopCounterMode (+ CPU SDPA, mv, dot, addmv, addr, addbmm, cdist)
    elementwise: int = 0  # output numel per pointwise op
    reduction: int = 0  # reductions + scans (input numel), softmax 5·n, norms 8·n
    fft: int = 0  # 5·N·log2(N)·batch
    linalg: int = 0  # solves, factorizations, inverses, eigen/SVD
    other: int = 0  # indexing, gather/scatter, embedding, sort/topk
    unknown_ops: dict[str, int] = field(default_factory=dict)  # op -> calls not accounted for
    transcendental: int = 0  # informational subset of ``elementwise`` (exp, log, tanh, …)
    by_op: dict[str, int] = field(default_factory=dict)  # "aten.mul" -> FLOPs charged to it

    @property
    def total(self) -> int:
        return self.matmul + self.nonmatmul

    @property
    def nonmatmul(self) -> int:
        return self.elementwise + self.reduction + self.fft + self.linalg + self.other

    def to_dict(self) -> dict:
        return {
            "matmul": int(self.matmul),
            "elementwise": int(self.elementwise),
            "reduction": int(self.reduction),
            "fft": int(self.fft),
            "linalg": int(self.linalg),
            "other": int(self.other),
            "transcendental": int(self.transcendental),
            "nonmatmul": int(self.nonmatmul),
            "total": int(self.total),
            "unknown_ops": {str(k): int(v) for k, v in self.unknown_ops.items()},
            "by_op": {str(k): int(v) for k, v in self.by_op.items()},
        }


# ---------------------------------------------------------------------------------------------
# Extra matmul-family formulas for FlopCounterMode (it receives shapes, not tensors)
# ---------------------------------------------------------------------------------------------


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= int(x)
    return p


def _sdpa_cpu_fwd(query, key, value, *args, out_shape=None, **kwargs) -> int:
    # query (..., T, d), key (..., S, d), value (..., S, dv); GQA: count with the query heads.
    # Full 2·T·S·(d + dv) per head, not halved for is_causal: the same as explicit matmuls.
    t, d = query[-2], query[-1]
    s, dv = key[-2], value[-1]
    return 2 * _prod(query[:-2]) * t * s * (d + dv)


def _sdpa_cpu_bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    # dQ, dK (2·T·S·d each) and dP, dV (2·T·S·dv each) = 2 × forward, the explicit-matmul
    # backward. (torch's CUDA formula also charges the recomputed scores; we do not, so that
    # SDPA and explicit matmuls count the same.)
    return 2 * _sdpa_cpu_fwd(query, key, value)


def _mv_flop(a, b, *args, out_shape=None, **kwargs) -> int:
    return 2 * a[0] * a[1]


def _addmv_flop(s, a, b, *args, out_shape=None, **kwargs) -> int:
    return 2 * a[0] * a[1]


def _dot_flop(a, b, *args, out_shape=None, **kwargs) -> int:
    return 2 * a[0]


def _addr_flop(s, u, v, *args, out_shape=None, **kwargs) -> int:
    return 2 * u[0] * v[0]


def _addbmm_flop(s, a, b, *args, out_shape=None, **kwargs) -> int:
    return 2 * a[0] * a[1] * a[2] * b[2]


def _cdist_fwd_flop(x1, x2, *args, out_shape=None, **kwargs) -> int:
    # (…, P, M) × (…, R, M): difference, power, sum per pair and feature.
    return 3 * _prod(out_shape) * x1[-1]


def _cdist_bwd_flop(grad, x1, x2, *args, out_shape=None, **kwargs) -> int:
    return 2 * _cdist_fwd_flop(x1, x2, out_shape=grad)


def _euclidean_dist_flop(x1, x2, *args, out_shape=None, **kwargs) -> int:
    return 2 * _prod(out_shape) * x1[-1]


def _trilinear_flop(i1, i2, i3, expand1, expand2, expand3, sumdim, *args, out_shape=None, **kwargs) -> int:
    # F.bilinear: the three operands are unsqueezed at their expand dims, multiplied with
    # broadcasting and summed over ``sumdim``: one MAC per element of the broadcast product.
    def expanded(shape, dims):
        s = list(shape)
        for d in sorted(dims):
            s.insert(d, 1)
        return s

    full = torch.broadcast_shapes(expanded(i1, expand1), expanded(i2, expand2), expanded(i3, expand3))
    return 2 * _prod(full)


def _addmm_activation_flop(s, a, b, *args, out_shape=None, **kwargs) -> int:
    return 2 * a[0] * a[1] * b[1] + _prod(out_shape)


def _addmm_inplace_flop(s, a, b, *args, out_shape=None, **kwargs) -> int:
    return 2 * a[0] * a[1] * b[1]


def _baddbmm_inplace_flop(s, a, b, *args, out_shape=None, **kwargs) -> int:
    return 2 * a[0] * a[1] * a[2] * b[2]


def _pdist_fwd_flop(x, *args, out_shape=None, **kwargs) -> int:
    # x (N, M) -> N(N-1)/2 distances: what cdist pays per pair and feature.
    return 3 * _prod(out_shape) * x[-1]


def _pdist_bwd_flop(grad, x, *args, out_shape=None, **kwargs) -> int:
    return 2 * _pdist_fwd_flop(x, out_shape=grad)


# Per hidden unit and step, the LSTM cell's pointwise work as the decomposed cell pays it: two bias adds and an
# activation per gate (4 gates), then c = f*c + i*g and h = o*tanh(c).
_LSTM_CELL_OPS = 17


def _rnn_layer_fwd_flop(x, w_ih, w_hh, *args, out_shape=None, **kwargs) -> int:
    """The fused CPU kernel of one LSTM layer (``mkldnn_rnn_layer``): the input and recurrent products of every
    step, 2 · tokens · (|W_ih| + |W_hh|), plus the cell's pointwise work. Only the LSTM reaches this kernel; GRU
    and plain RNN layers decompose into costed ops."""
    tokens = x[0] * x[1]  # (T, B, I) or (B, T, I)
    hidden = w_hh[-1]
    return 2 * tokens * (_prod(w_ih) + _prod(w_hh)) + _LSTM_CELL_OPS * tokens * hidden


def _rnn_layer_bwd_flop(x, w_ih, w_hh, *args, out_shape=None, **kwargs) -> int:
    # Gradients of the input, the hidden state and both weights: twice the forward, as for a matmul.
    return 2 * _rnn_layer_fwd_flop(x, w_ih, w_hh)


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, groups, output_mask, out_shape=None, **kwargs) -> int:
    """torch's formula, with the weight gradient divided by ``groups``: torch charges it as if groups were 1, so a
    depthwise convolution's backward cost (C+1)/2 times its true cost (the input gradient and the forward already
    use the grouped weight's shape)."""
    def t(shape):
        return [shape[1], shape[0]] + list(shape[2:])

    flops = 0
    if output_mask[0]:
        flops += conv_flop_count(grad_out_shape, w_shape, get_shape(out_shape[0]), not transposed)
    if output_mask[1]:
        a, b = (t(grad_out_shape), t(x_shape)) if transposed else (t(x_shape), t(grad_out_shape))
        flops += conv_flop_count(a, b, t(get_shape(out_shape[1])), transposed=False) // groups
    return flops


# The fused SDPA kernels of every device, forward and backward: the matmuls are costed (torch's registry, and
# ``_EXTRA_MATMUL`` for the CPU's), and ``_AuditMode._sdpa_extras`` charges what they hide.
_SDPA_FUSED = frozenset(
    getattr(aten, name) for name in (
        "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward",
        "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_backward",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_efficient_attention_backward",
        "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_cudnn_attention_backward",
    ) if hasattr(aten, name)
)

_EXTRA_MATMUL: dict[Any, Callable[..., int]] = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_fwd,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_bwd,
    aten.mv: _mv_flop,
    aten.addmv: _addmv_flop,
    aten.dot: _dot_flop,
    aten.vdot: _dot_flop,
    aten.addr: _addr_flop,
    aten.addbmm: _addbmm_flop,
    aten._cdist_forward: _cdist_fwd_flop,
    aten._cdist_backward: _cdist_bwd_flop,
    aten._euclidean_dist: _euclidean_dist_flop,
    aten._trilinear: _trilinear_flop,
    aten._addmm_activation: _addmm_activation_flop,
    aten.convolution_backward: _conv_backward_flop,
    aten.addmm_: _addmm_inplace_flop,
    aten.baddbmm_: _baddbmm_inplace_flop,
    aten.addbmm_: _addbmm_flop,
    aten.addmv_: _addmv_flop,
    aten.addr_: _addr_flop,
    aten._pdist_forward: _pdist_fwd_flop,
    aten._pdist_backward: _pdist_bwd_flop,
    aten.mkldnn_rnn_layer: _rnn_layer_fwd_flop,
    aten.mkldnn_rnn_layer_backward: _rnn_layer_bwd_flop,
}


# ---------------------------------------------------------------------------------------------
# Tables for everything else (aten overload-packet names; in-place ``foo_`` maps to ``foo``,
# ``out=`` overloads share the packet name)
# ---------------------------------------------------------------------------------------------

_FREE = frozenset(
    """
    view view_as reshape _reshape_alias _unsafe_view as_strided expand expand_as permute transpose t
    squeeze unsqueeze slice select narrow unbind split split_with_sizes chunk tensor_split unfold
    movedim moveaxis swapaxes swapdims diagonal alias detach lift lift_fresh lift_fresh_copy
    clone contiguous copy _copy_from _copy_from_and_resize _to_copy to _to_dense to_dense
    cat stack hstack vstack concat concatenate flip roll repeat tile repeat_interleave
    constant_pad_nd pad reflection_pad1d reflection_pad2d replication_pad1d replication_pad2d
    slice_backward select_backward unfold_backward diagonal_backward as_strided_scatter
    slice_scatter select_scatter diagonal_scatter expand_copy permute_copy view_copy
    transpose_copy t_copy squeeze_copy unsqueeze_copy slice_copy select_copy alias_copy
    detach_copy unsafe_split unsafe_chunk unsafe_split_with_sizes _unsafe_view_copy as_strided_copy unbind_copy split_copy split_with_sizes_copy
    empty empty_like empty_strided new_empty new_empty_strided zeros zeros_like ones ones_like
    full full_like new_zeros new_ones new_full scalar_tensor arange linspace logspace eye
    tril triu tril_indices triu_indices fill zero set resize _resize_output resize_as
    _conj conj resolve_conj resolve_neg _neg_view view_as_real view_as_complex real imag
    _local_scalar_dense item is_nonzero is_same_size _has_same_storage_numel _assert_async
    _assert_scalar _assert_tensor_metadata _functional_assert_async _functional_assert_scalar
    sym_constrain_range sym_constrain_range_for_size _functional_sym_constrain_range
    _functional_sym_constrain_range_for_size _make_dep_token _linalg_check_errors
    size sym_size stride sym_stride numel sym_numel storage_offset sym_storage_offset dim
    is_contiguous sym_is_contiguous is_strides_like_format is_non_overlapping_and_dense
    _nested_tensor_from_mask_left_aligned pin_memory _pin_memory record_stream
    _efficientzerotensor _has_compatible_shallow_copy_type _version device layout
    diag_embed diag _reshape_copy pixel_shuffle pixel_unshuffle channel_shuffle
    native_channel_shuffle block_diag narrow_copy empty_permuted fill_diagonal
    reflection_pad1d_backward reflection_pad2d_backward replication_pad1d_backward
    replication_pad2d_backward reflection_pad3d reflection_pad3d_backward replication_pad3d
    replication_pad3d_backward rot90 _chunk_cat
    """.split()
)

_ELEMENTWISE = frozenset(
    """
    add sub rsub mul div true_divide floor_divide neg abs sign sgn reciprocal square pow
    float_power sqrt rsqrt exp exp2 expm1 log log1p log2 log10 sigmoid tanh sin cos tan asin acos
    atan atan2 arctan2 sinh cosh asinh acosh atanh erf erfc erfinv lgamma digamma polygamma i0
    sinc logit xlogy special_xlog1py special_erfcx special_ndtr special_ndtri
    gelu silu mish softplus elu selu celu relu relu6 leaky_relu rrelu_with_noise hardtanh
    hardsigmoid hardswish hardshrink softshrink threshold glu prelu _prelu_kernel
    log_sigmoid_forward logaddexp logaddexp2 hypot copysign heaviside nextafter ldexp frexp
    gelu_backward silu_backward mish_backward softplus_backward elu_backward
    threshold_backward sigmoid_backward tanh_backward hardtanh_backward hardsigmoid_backward
    hardswish_backward hardshrink_backward softshrink_backward leaky_relu_backward glu_backward
    log_sigmoid_backward logit_backward rrelu_with_noise_backward _prelu_kernel_backward
    native_dropout native_dropout_backward dropout _fused_dropout _masked_scale
    bernoulli rand rand_like randn randn_like randint randint_like uniform normal exponential
    geometric cauchy log_normal random multinomial poisson
    where masked_fill clamp clamp_min clamp_max clip maximum minimum fmax fmin lerp
    addcmul addcdiv floor ceil round trunc frac fix fmod remainder nan_to_num
    eq ne lt le gt ge equal_nan isnan isinf isfinite isposinf isneginf isreal signbit
    logical_and logical_or logical_xor logical_not bitwise_and bitwise_or bitwise_xor
    bitwise_not bitwise_left_shift bitwise_right_shift __and__ __or__ __xor__ __lshift__
    __rshift__ __iand__ __ior__ __ixor__ complex polar angle conj_physical _conj_physical
    linalg_cross cross positive deg2rad rad2deg renorm
    """.split()
)

_TRANSCENDENTAL = frozenset(
    """
    pow float_power sqrt rsqrt exp exp2 expm1 log log1p log2 log10 sigmoid tanh sin cos tan asin
    acos atan atan2 arctan2 sinh cosh asinh acosh atanh erf erfc erfinv lgamma digamma polygamma
    i0 sinc logit xlogy special_xlog1py special_erfcx special_ndtr special_ndtri gelu silu mish
    softplus elu selu celu log_sigmoid_forward logaddexp logaddexp2 hypot
    gelu_backward silu_backward mish_backward softplus_backward elu_backward sigmoid_backward
    tanh_backward log_sigmoid_backward logit_backward
    """.split()
)

# Charged ``factor × numel(first tensor argument)``; all land in ``FlopReport.reduction``.
_REDUCTION: dict[str, int] = {
    **{
        n: 1
        for n in """
        sum nansum mean nanmean prod amax amin max min aminmax argmax argmin norm
        linalg_vector_norm var std var_mean std_mean logsumexp all any count_nonzero
        equal dist trace _weight_norm_interface norm_except_dim masked_scatter_backward
        cumsum cumprod logcumsumexp _logcumsumexp cummax cummin _cummax_helper _cummin_helper
        cumulative_trapezoid allclose
        """.split()
    },
    **{
        n: 5
        for n in """
        _softmax _log_softmax softmax log_softmax _safe_softmax _masked_softmax
        _softmax_backward_data _log_softmax_backward_data _masked_softmax_backward
        _weight_norm_interface_backward
        """.split()
    },
    **{
        n: 8
        for n in """
        native_layer_norm native_layer_norm_backward native_group_norm native_group_norm_backward
        _fused_rms_norm _fused_rms_norm_backward native_batch_norm native_batch_norm_backward
        _native_batch_norm_legit _native_batch_norm_legit_functional
        _native_batch_norm_legit_no_training _batch_norm_with_update
        _batch_norm_with_update_functional _batch_norm_no_update batch_norm_backward
        """.split()
    },
    **{  # losses (a test-time-training inner loop may use one): difference, square, sum
        n: 3
        for n in """
        mse_loss mse_loss_backward l1_loss smooth_l1_loss smooth_l1_loss_backward huber_loss
        huber_loss_backward binary_cross_entropy binary_cross_entropy_backward
        binary_cross_entropy_with_logits soft_margin_loss soft_margin_loss_backward
        nll_loss_forward nll_loss_backward nll_loss2d_forward nll_loss2d_backward
        """.split()
    },
}

_FFT = frozenset({"_fft_r2c", "_fft_c2r", "_fft_c2c"})

# Indexing-like ops: charged the largest numel among their tensor inputs and outputs.
_OTHER_NUMEL = frozenset(
    """
    gather scatter scatter_add scatter_reduce index_select index _unsafe_index index_put _index_put_impl
    _unsafe_index_put index_add index_copy index_fill index_reduce take put masked_select
    masked_scatter embedding embedding_dense_backward embedding_backward embedding_renorm
    _embedding_bag _embedding_bag_forward_only _embedding_bag_backward
    _embedding_bag_dense_backward _embedding_bag_per_sample_weights_backward
    nonzero nonzero_static searchsorted bucketize histc bincount one_hot topk kthvalue median
    nanmedian mode isin im2col col2im randperm _unique _unique2 unique_dim unique_consecutive
    unique_dim_consecutive upsample_nearest1d upsample_nearest2d upsample_nearest3d
    _upsample_nearest_exact1d _upsample_nearest_exact2d upsample_linear1d upsample_bilinear2d
    upsample_bicubic2d upsample_trilinear3d upsample_nearest1d_backward upsample_nearest2d_backward
    _upsample_nearest_exact1d_backward _upsample_nearest_exact2d_backward upsample_linear1d_backward
    upsample_bilinear2d_backward upsample_bicubic2d_backward upsample_trilinear3d_backward
    _upsample_bilinear2d_aa _upsample_bilinear2d_aa_backward _unsafe_masked_index
    _unsafe_masked_index_put_accumulate
    """.split()
)
_OTHER_SORT = frozenset({"sort", "argsort", "msort"})
# Pooling: charged output numel × kernel size (adaptive pools: the largest numel).
_OTHER_POOL = frozenset(
    """
    avg_pool1d avg_pool2d avg_pool3d avg_pool2d_backward avg_pool3d_backward max_pool1d
    max_pool2d max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices
    max_pool2d_with_indices_backward max_pool3d_with_indices_backward _adaptive_avg_pool2d
    _adaptive_avg_pool3d _adaptive_avg_pool2d_backward _adaptive_avg_pool3d_backward
    adaptive_max_pool2d adaptive_max_pool3d adaptive_max_pool2d_backward
    adaptive_max_pool3d_backward
    """.split()
)

_LINALG = frozenset(
    """
    _linalg_solve_ex linalg_solve_ex linalg_solve linalg_lu_solve lu_solve linalg_lu_factor_ex
    linalg_lu_factor linalg_lu lu_unpack _linalg_det linalg_det det _linalg_slogdet logdet
    linalg_slogdet linalg_inv_ex linalg_inv inverse linalg_cholesky_ex cholesky linalg_cholesky
    cholesky_solve cholesky_inverse triangular_solve linalg_solve_triangular linalg_qr qr geqrf
    linalg_householder_product orgqr ormqr _linalg_eigh linalg_eigh linalg_eigvalsh linalg_eig
    linalg_eigvals _linalg_eigvals _linalg_svd linalg_svd svd linalg_svdvals linalg_matrix_exp
    matrix_exp linalg_lstsq linalg_ldl_factor_ex linalg_ldl_solve linalg_pinv
    """.split()
)


# Ops a block can reach whose cost the audit does not model: refused by name, with what to use instead. They have no
# use in mixing a sequence, or they compute something outside torch's dispatcher (sparse kernels, fused losses).
# tests/test_flop_sweep.py runs every op torch catalogues and requires each to be costed or listed here.
_SPARSE = "sparse tensors: use a dense tensor and a mask"
_LOSS = "a loss has no place in an attention layer; for an inner objective write it with tensor ops (F.mse_loss is costed)"
_RESAMPLE = "resampling on a grid: gather with an index tensor, or F.interpolate(mode='linear')"
_POOL = "use F.max_pool1d or F.avg_pool1d"
_STATISTICS = "a histogram or hash: use comparisons and sums over tensors"
REFUSED: dict[str, str] = {
    **{op: _SPARSE for op in ("_to_sparse", "sparse_mask", "sparse_sampled_addmm", "_sparse_mm_reduce_impl",
                              "_sparse_mm_reduce_impl_backward")},
    **{op: _LOSS for op in ("_ctc_loss", "_ctc_loss_backward", "multi_margin_loss", "multi_margin_loss_backward",
                            "multilabel_margin_loss_forward", "multilabel_margin_loss_backward")},
    **{op: "a fused linear + cross-entropy: use F.linear, then F.cross_entropy"
       for op in ("torch_nn._linear_cross_entropy_batch_chunked",
                  "torch_nn._linear_cross_entropy_batch_chunked_no_reduction")},
    **{op: _RESAMPLE for op in ("grid_sampler_2d", "grid_sampler_2d_backward", "grid_sampler_3d",
                                "grid_sampler_3d_backward")},
    **{op: _POOL for op in ("fractional_max_pool2d", "fractional_max_pool2d_backward", "fractional_max_pool3d",
                            "fractional_max_pool3d_backward", "max_unpool2d", "max_unpool3d")},
    **{op: _STATISTICS for op in ("histogram", "_histogramdd_bin_edges", "_histogramdd_from_bin_cts", "hash_tensor")},
    **{op: "use scatter_reduce or index_add" for op in ("segment_reduce", "_segment_reduce_backward")},
}

_UNKNOWN_ADVICE = ("a custom or fused kernel whose cost cannot be known: write it with torch ops (matmul, "
                   "elementwise, reductions, scans)")


def _op_key(op: str) -> str:
    """'aten.grid_sampler_2d.default' -> 'grid_sampler_2d' (its ``REFUSED`` key); other namespaces keep theirs."""
    namespace, _, rest = op.partition(".")
    name = rest.rsplit(".", 1)[0] if "." in rest else rest
    return name if namespace == "aten" else f"{namespace}.{name}"


def refused_advice(op: str) -> str | None:
    """What to use instead of ``op`` (as ``FlopReport.unknown_ops`` names it) when it is refused by name."""
    return REFUSED.get(_op_key(op))


def unaccounted_message(unknown_ops: dict[str, int]) -> str:
    """The ``unaccounted_op`` rejection's message: each op the audit could not cost, and what to use instead."""
    parts = []
    for op in sorted(unknown_ops):
        key = _op_key(op)
        label = f"aten.{key}" if "." not in key else key
        parts.append(f"{label} ({refused_advice(op) or _UNKNOWN_ADVICE})")
    return "operations whose cost cannot be accounted for: " + "; ".join(parts)


def _normalize(name: str) -> str:
    """In-place ``add_`` → ``add``; dunder names (``__and__``) are left alone."""
    if name.endswith("_") and not name.endswith("__"):
        return name[:-1]
    return name


def _table_name(name: str) -> str:
    """The name under which ``name`` is tabled: itself, or its out-of-place form."""
    return name if _lookup_exact(name) is not None else _normalize(name)


def _lookup(name: str) -> str | None:
    return _lookup_exact(name) or _lookup_exact(_normalize(name))


def _lookup_exact(n: str) -> str | None:
    if n in _FREE:
        return "free"
    if n in _ELEMENTWISE:
        return "elementwise"
    if n in _REDUCTION:
        return "reduction"
    if n in _FFT:
        return "fft"
    if n in _LINALG:
        return "linalg"
    if n in _OTHER_NUMEL or n in _OTHER_SORT or n in _OTHER_POOL:
        return "other"
    return None


_MATMUL_PACKETS = frozenset(
    {*FlopCounterMode(display=False, custom_mapping=_EXTRA_MATMUL).flop_registry}
)
_MATMUL_NAMES = frozenset(p.__name__ for p in _MATMUL_PACKETS)


def classify_op(op: Any) -> str | None:
    """Category of an aten op (an ``OpOverload``, a packet, or a name like ``"aten.add_"`` /
    ``"cumsum"``): one of :data:`CATEGORIES`, or ``None`` when it is unknown."""
    if isinstance(op, str):
        if "::" in op:
            ns, rest = op.split("::", 1)
        elif "." in op:
            ns, rest = op.split(".", 1)
        else:
            ns, rest = "aten", op
        if ns != "aten":
            return None
        name = rest.split(".")[0]
        if name in _MATMUL_NAMES:
            return "matmul"
        return _lookup(name)
    return _classify_overload(op)


_CLASS_CACHE: dict[Any, str | None] = {}


def _classify_overload(func: Any) -> str | None:
    try:
        return _CLASS_CACHE[func]
    except (KeyError, TypeError):
        pass
    packet = getattr(func, "overloadpacket", func)
    ns = getattr(func, "namespace", None) or getattr(packet, "_qualified_op_name", "aten::").split("::")[0]
    cat: str | None
    if packet in _MATMUL_PACKETS:
        cat = "matmul"
    elif ns == "aten":
        cat = _lookup(packet.__name__)
        if cat is None:
            # Fall back on torch's own op metadata before declaring the op unknown.
            tags = getattr(func, "tags", ())
            if torch.Tag.pointwise in tags:
                cat = "elementwise"
            elif torch.Tag.reduction in tags:
                cat = "reduction"
            elif getattr(func, "is_view", False) or torch.Tag.view_copy in tags:
                cat = "free"
    elif ns == "prim" and packet.__name__ in ("device", "layout"):
        cat = "free"
    else:
        cat = None
    try:
        _CLASS_CACHE[func] = cat
    except TypeError:
        pass
    return cat


# ---------------------------------------------------------------------------------------------
# Cost rules
# ---------------------------------------------------------------------------------------------


def _tensors(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        out: list[torch.Tensor] = []
        for y in x:
            out.extend(_tensors(y))
        return out
    if isinstance(x, dict):
        return _tensors(list(x.values()))
    return []


def _first_tensor(x) -> torch.Tensor | None:
    ts = _tensors(x)
    return ts[0] if ts else None


def _numel(t: torch.Tensor | None) -> int:
    return int(t.numel()) if t is not None else 0


def _fft_cost(name: str, args, out) -> int:
    x = args[0]
    dims = args[1] if len(args) > 1 else list(range(x.dim()))
    ref = out if name == "_fft_c2r" else x  # c2r: the real output carries the signal length
    if not isinstance(ref, torch.Tensor):
        return 0
    dims = [d % ref.dim() for d in dims] if ref.dim() else []
    n = _prod(ref.shape[d] for d in dims)
    if n <= 1 or ref.numel() == 0:
        return 0
    batch = ref.numel() // n
    return int(round(5 * n * math.log2(n) * batch))


def _mat(t: torch.Tensor) -> tuple[int, int, int]:
    """(batch, rows, cols) of a (batched) matrix; vectors count as one column."""
    if t.dim() == 0:
        return 1, 1, 1
    if t.dim() == 1:
        return 1, int(t.shape[0]), 1
    m, n = int(t.shape[-2]), int(t.shape[-1])
    return _prod(t.shape[:-2]), m, n


def _linalg_cost(name: str, args, kwargs, out) -> int:
    ts = _tensors(args)
    if not ts:
        return 0
    a = ts[0]
    b, m, n = _mat(a)
    k = min(m, n)
    if name in ("_linalg_solve_ex", "linalg_solve_ex", "linalg_solve"):
        rhs = ts[1] if len(ts) > 1 else None
        return int(b * (2 * n**3) / 3) + 2 * n * _numel(rhs)
    if name in ("linalg_lu_solve", "lu_solve"):
        rhs = ts[2] if name == "linalg_lu_solve" and len(ts) > 2 else (ts[0] if name == "lu_solve" else None)
        lu = ts[0] if name == "linalg_lu_solve" else (ts[1] if len(ts) > 1 else ts[0])
        return 2 * int(lu.shape[-1]) * _numel(rhs)
    if name in ("cholesky_solve", "linalg_ldl_solve"):
        # cholesky_solve(B, L); linalg_ldl_solve(LD, pivots, B)
        rhs, fac = (ts[0], ts[1]) if name == "cholesky_solve" else (ts[-1], ts[0])
        return 2 * int(fac.shape[-1]) * _numel(rhs)
    if name == "triangular_solve":  # triangular_solve(B, A)
        fac = ts[1] if len(ts) > 1 else ts[0]
        return int(fac.shape[-1]) * _numel(ts[0])
    if name == "linalg_solve_triangular":  # (A, B)
        rhs = ts[1] if len(ts) > 1 else None
        return n * _numel(rhs)
    if name in ("linalg_lu_factor_ex", "linalg_lu_factor", "linalg_lu", "_linalg_det", "linalg_det", "det",
                "_linalg_slogdet", "linalg_slogdet", "logdet"):
        return int(b * (m * n * k - (m + n) * k * k / 2 + k**3 / 3) * 2)  # ≈ (2/3)n³ if square
    if name == "lu_unpack":
        return b * m * n
    if name in ("linalg_inv_ex", "linalg_inv", "inverse", "cholesky_inverse"):
        return b * 2 * n**3 if name != "cholesky_inverse" else b * n**3
    if name in ("linalg_cholesky_ex", "cholesky", "linalg_cholesky", "linalg_ldl_factor_ex"):
        return int(b * n**3 / 3)
    if name in ("linalg_qr", "qr", "geqrf", "linalg_householder_product", "orgqr", "ormqr", "linalg_lstsq"):
        return int(b * (2 * m * n * k - 2 * k**3 / 3)) + (2 * m * _numel(ts[1]) if name == "linalg_lstsq" and len(ts) > 1 else 0)
    if name in ("_linalg_eigh", "linalg_eigh", "linalg_eigvalsh"):
        return b * 9 * n**3
    if name in ("linalg_eig", "linalg_eigvals", "_linalg_eigvals"):
        return b * 25 * n**3
    if name in ("_linalg_svd", "linalg_svd", "svd", "linalg_svdvals", "linalg_pinv"):
        return b * 14 * m * n * k
    if name in ("linalg_matrix_exp", "matrix_exp"):
        return b * 20 * n**3
    return b * n**3  # conservative default for anything added to the table later


def _cost(cat: str, name: str, args, kwargs, out) -> int:
    if cat == "elementwise":
        t = _first_tensor(out)
        return _numel(t)
    if cat == "reduction":
        return _REDUCTION.get(name, 1) * max((int(t.numel()) for t in _tensors(args)), default=0)
    if cat == "fft":
        return _fft_cost(name, args, out)
    if cat == "linalg":
        return _linalg_cost(name, args, kwargs, out)
    if cat == "other":
        if name in _OTHER_SORT:
            x = _first_tensor(args)
            if x is None or x.numel() == 0:
                return 0
            dim = kwargs.get("dim", args[1] if len(args) > 1 and isinstance(args[1], int) else -1)
            n = int(x.shape[dim]) if x.dim() else 1
            return int(x.numel() * max(1.0, math.log2(max(n, 2))))
        ts = _tensors(args) + _tensors(kwargs) + _tensors(out)
        biggest = max((int(t.numel()) for t in ts), default=0)
        if name in _OTHER_POOL and "adaptive" not in name:
            kernel = next((a for a in args if isinstance(a, (list, tuple)) or type(a) is int), None)
            kprod = _prod(kernel) if isinstance(kernel, (list, tuple)) else int(kernel or 1)
            base = _numel(_first_tensor(args) if name.endswith("_backward") else _first_tensor(out))
            return max(biggest, base * kprod)
        return biggest
    return 0


# ---------------------------------------------------------------------------------------------
# The audit mode and the public entry points
# ---------------------------------------------------------------------------------------------


class _AuditMode(TorchDispatchMode):
    """Sees every aten op that reaches the dispatcher and charges it by :func:`_cost`."""

    def __init__(self) -> None:
        super().__init__()
        self.totals: Counter[str] = Counter()
        self.by_op: Counter[str] = Counter()
        self.unknown: Counter[str] = Counter()
        self.transcendental = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        cat = _classify_overload(func)
        if cat is None:
            self.unknown[str(func)] += 1
        elif cat == "matmul":
            if func.overloadpacket in _SDPA_FUSED:
                self._sdpa_extras(func, args, kwargs)
        elif cat != "free":
            name = _table_name(func.overloadpacket.__name__)
            flops = _cost(cat, name, args, kwargs, out)
            self.totals[cat] += flops
            self.by_op[f"aten.{name}"] += flops
            if cat == "elementwise" and name in _TRANSCENDENTAL:
                self.transcendental += flops
        return out


    def _sdpa_extras(self, func, args, kwargs) -> None:
        """A fused SDPA kernel (the CPU's, or CUDA's flash, memory-efficient or cuDNN one) hides the softmax,
        the scale and the mask that an explicit implementation pays as ``_softmax`` (5·n), ``div`` and
        ``masked_fill`` (n each), in the forward and again in the backward. Charge them, so SDPA is not
        cheaper. The arguments are found by their names in the op's schema: each kernel orders them its way."""
        names = [a.name for a in func._schema.arguments]

        def argument(name, default=None):
            if name in kwargs:
                return kwargs[name]
            i = names.index(name) if name in names else len(args)
            return args[i] if i < len(args) else default

        q, k = argument("query"), argument("key")
        masked = bool(argument("is_causal", False)) or argument("attn_mask") is not None \
            or argument("attn_bias") is not None
        n = _prod(q.shape[:-1]) * int(k.shape[-2])
        tag = "aten." + func.overloadpacket.__name__
        self.totals["reduction"] += 5 * n
        self.totals["elementwise"] += (2 if masked else 1) * n
        self.by_op[tag + "[softmax]"] += 5 * n
        self.by_op[tag + "[scale+mask]"] += (2 if masked else 1) * n
        if float(argument("dropout_p", 0.0) or 0.0) > 0.0:
            # CUDA's kernels drop out inside; on the CPU, SDPA with dropout runs its math path and pays dropout's
            # bernoulli, div and mul (3·n) forward and its mul (n) backward.
            drop = n if func.overloadpacket.__name__.endswith("_backward") else 3 * n
            self.totals["elementwise"] += drop
            self.by_op[tag + "[dropout]"] += drop


def audit_flops(fn: Callable[[], Any]) -> FlopReport:
    """Run ``fn()`` under the counter and the audit; count every aten op it dispatches.

    Whatever ``fn`` does (forward, ``backward()``, optimizer steps) is counted, so build
    modules and inputs before calling this.
    """
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_MATMUL)
    audit = _AuditMode()
    # The audit is entered first, so it is the *outer* mode: FlopCounterMode sees each op
    # first (and may decompose it); the audit then sees exactly the ops that execute.
    with audit, counter:
        fn()
    matmul_by_op = counter.get_flop_counts().get("Global", {})
    by_op = {str(k): int(v) for k, v in matmul_by_op.items() if v}
    for k, v in audit.by_op.items():
        by_op[k] = by_op.get(k, 0) + int(v)
    return FlopReport(
        matmul=int(counter.get_total_flops()),
        elementwise=int(audit.totals["elementwise"]),
        reduction=int(audit.totals["reduction"]),
        fft=int(audit.totals["fft"]),
        linalg=int(audit.totals["linalg"]),
        other=int(audit.totals["other"]),
        unknown_ops=dict(audit.unknown),
        transcendental=int(audit.transcendental),
        by_op=dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
    )


def attention_flops(
    attention_cls: type,
    d_model: int,
    n_heads: int,
    seq_len: int,
    batch: int = 1,
    max_seq_len: int | None = None,
    seed: int = 0,
) -> FlopReport:
    """FLOPs of one forward + backward of ``attention_cls`` on a (batch, seq_len, d_model) input.

    The module is built under ``torch.manual_seed(seed)`` with ``dropout=0.0`` and put in train
    mode; input and upstream gradient are float32 CPU tensors from a generator seeded with
    ``seed``. Only the forward and the backward are audited: construction, input creation and
    the loss are not (backward is ``out.backward(w)``, which is the gradient of
    ``(out * w).sum()`` without the loss's own ops). Divide by ``batch * seq_len`` for FLOPs per
    token.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = attention_cls(
            d_model=d_model, n_heads=n_heads, dropout=0.0, max_seq_len=max_seq_len or seq_len
        )
    module = module.float().train()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq_len, d_model, generator=gen).requires_grad_(True)
    w = torch.randn(batch, seq_len, d_model, generator=gen)

    def step() -> None:
        with torch.enable_grad():
            out = module(x)
            if not isinstance(out, torch.Tensor) or out.shape != w.shape:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"attention output must have shape {tuple(w.shape)}, got {got}")
            out.backward(w)

    # Counting needs no speed; one intra-op thread avoids OpenMP oversubscription, which on a
    # busy machine makes thousands of tiny ops (a Python loop over time) very slow.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return audit_flops(step)
    finally:
        torch.set_num_threads(threads)

"""The dynamic gate names the true cause: a NaN is ``nonfinite`` (not a causality leak), a tensor subclass is
``policy``, a non-tensor is ``shape``."""

import pytest
import torch
import torch.nn as nn

from harness.sandbox.checks import GateFailure, Geometry, check_causality, check_shape
from harness.trusted.reasons import Reason

G = Geometry(d_model=16, n_heads=2, context_len=8, batch_size=2, dropout=0.0)


class _Attention(nn.Module):
    def __init__(self, d_model, n_heads, dropout=0.0, max_seq_len=8):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def mix(self, x):  # causal: a running mean over positions
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1)
        return self.proj(x.cumsum(1) / steps)


class NanGradient(_Attention):
    def forward(self, x):  # finite output; the gradient of sqrt at 0 makes the input gradient NaN
        return self.mix(x) + 0 * torch.sqrt(x - x)


class NanOutput(_Attention):
    def forward(self, x):
        return self.mix(x) * float("nan")


class ReturnsATuple(_Attention):
    def forward(self, x):
        return (self.mix(x),)


class ReturnsAParameter(_Attention):
    def forward(self, x):
        return nn.Parameter(self.mix(x))


def _reason(check) -> GateFailure:
    with pytest.raises(GateFailure) as info:
        check()
    return info.value


def test_a_nan_gradient_is_nonfinite_not_a_leak():
    failure = _reason(lambda: check_causality(NanGradient, G, 1e-5))
    assert failure.reason == Reason.NONFINITE and "gradient" in failure.message, failure.message


def test_a_nan_output_is_nonfinite_and_names_the_check():
    failure = _reason(lambda: check_shape(NanOutput, G))
    assert failure.reason == Reason.NONFINITE and "during the shape check" in failure.message, failure.message


def test_a_non_tensor_is_a_shape_error():
    failure = _reason(lambda: check_shape(ReturnsATuple, G))
    assert failure.reason == Reason.SHAPE and "tuple" in failure.message


def test_a_tensor_subclass_is_a_policy_error():
    failure = _reason(lambda: check_shape(ReturnsAParameter, G))
    assert failure.reason == Reason.POLICY and "plain torch.Tensor, not Parameter" in failure.message


def test_the_causal_reference_passes():
    class Causal(_Attention):
        def forward(self, x):
            return self.mix(x)

    assert check_shape(Causal, G) and check_causality(Causal, G, 1e-5)["causality_probes"] > 0


class _Projections(nn.Module):
    def __init__(self, d_model, n_heads, dropout=0.0, max_seq_len=64):
        super().__init__()
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.n_heads, self.context = n_heads, max_seq_len

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        scores = (q @ k.transpose(-1, -2)).masked_fill(~self.causal_mask()[:t, :t], float("-inf"))
        return self.out(torch.softmax(scores / d ** 0.5, dim=-1) @ v)

    def causal_mask(self):
        return torch.ones(self.context, self.context, dtype=torch.bool).tril()


class NanoGptStyle(_Projections):
    """A causal-mask buffer and RoPE tables, as nanoGPT-style code registers them (the mask as floats)."""

    def __init__(self, d_model, n_heads, dropout=0.0, max_seq_len=64):
        super().__init__(d_model, n_heads, dropout, max_seq_len)
        self.register_buffer("bias", torch.ones(max_seq_len, max_seq_len).tril().view(1, 1, max_seq_len, max_seq_len))
        d_head = d_model // n_heads
        angles = torch.arange(max_seq_len)[:, None] * torch.exp(-torch.arange(d_head) / d_head)[None]
        self.register_buffer("cos", angles.cos())
        self.register_buffer("sin", angles.sin())

    def causal_mask(self):
        return self.bias[0, 0].bool()


class FloatTable(_Projections):
    def __init__(self, d_model, n_heads, dropout=0.0, max_seq_len=64):
        super().__init__(d_model, n_heads, dropout, max_seq_len)
        self.register_buffer("table", torch.randn(max_seq_len, max_seq_len, d_model))


def test_a_causal_mask_buffer_and_rope_tables_fit_the_state_bound():
    from harness.sandbox.checks import check_params
    from harness.trusted.profiles import get_profile

    profile = get_profile("smoke")
    g = Geometry.of(profile)
    metrics = check_params(NanoGptStyle, _Projections, g, profile, profile.gate.param_tolerance_frac)
    # A float 64 × 64 mask, 4,096 words, and two 64 × d_head float tables, 3,072: over the 2 · 64 · 48 = 6,144 words
    # that were allowed before the context² terms, within the 6,144 + (1 + 2 heads) · 64² = 18,432 allowed now.
    assert metrics["attention_state_words"] == 64 * 64 + 2 * 64 * (g.d_model // g.n_heads) == 7168
    failure = _reason(lambda: check_params(FloatTable, _Projections, g, profile, profile.gate.param_tolerance_frac))
    assert failure.reason == Reason.PARAM_PARITY and "32-bit words" in failure.message
    # named, with what to do instead
    assert "buffer 'table' (64, 64, 48) float32" in failure.message and "dtype=torch.bool" in failure.message


def test_a_bool_element_of_state_is_one_thirty_second_of_a_word():
    from harness.sandbox.checks import _state_words

    module = nn.Module()
    module.register_buffer("mask", torch.ones(64, 64, dtype=torch.bool))
    module.register_buffer("halves", torch.ones(10, dtype=torch.bfloat16))
    assert _state_words(module) == 64 * 64 / 32 + 10 / 2


class MultiHead(nn.Module):
    def __init__(self, d_model, n_heads, dropout=0.0, max_seq_len=64, kv_heads=None):
        super().__init__()
        self.h, self.kv = n_heads, kv_heads or n_heads
        self.dh = d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.kv_proj = nn.Linear(d_model, 2 * self.kv * self.dh)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x):
        b, t, d = x.shape
        q = self.q(x).view(b, t, self.h, self.dh).transpose(1, 2)
        k, v = self.kv_proj(x).view(b, t, 2, self.kv, self.dh).permute(2, 0, 3, 1, 4)
        k, v = (z.repeat_interleave(self.h // self.kv, dim=1) for z in (k, v))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class MultiQuery(MultiHead):
    def __init__(self, d_model, n_heads, dropout=0.0, max_seq_len=64):
        super().__init__(d_model, n_heads, dropout, max_seq_len, kv_heads=1)


def test_multi_query_attention_is_cheaper_at_every_length_and_passes_the_complexity_check():
    """Its quadratic term equals the baseline's and its projections are smaller, so its local growth exponent is
    steeper; compared by exponents alone it was refused."""
    from harness.sandbox.checks import check_flops
    from harness.trusted.profiles import get_profile

    g = Geometry(d_model=64, n_heads=8, context_len=64, batch_size=2, dropout=0.0)
    metrics = check_flops(MultiQuery, MultiHead, g, get_profile("smoke").gate)
    assert metrics["flop_ratio"] < 1.0
    # steeper by more than the 0.05 the exponent comparison allowed
    assert metrics["flop_growth_exponent"] > metrics["baseline_flop_growth_exponent"] + 0.05
    assert metrics["flop_ratio_at_horizon"] < 1.0


class LazyRandomParameter(_Attention):
    def forward(self, x):
        if not hasattr(self, "late"):
            self.late = nn.Parameter(torch.randn(x.shape[-1], x.shape[-1]))
        return self.mix(x) @ self.late


def test_a_parameter_created_in_forward_is_param_parity_at_the_first_call():
    """Its random draw used to shift the dropout masks of the two calls compared for batch independence."""
    failure = _reason(lambda: check_shape(LazyRandomParameter, G))
    assert failure.reason == Reason.PARAM_PARITY and "in __init__" in failure.message
    assert "parameter 'late'" in failure.message, failure.message


class LazyModule(_Attention):
    def forward(self, x):
        if not hasattr(self, "gate"):
            self.gate = nn.Sigmoid()
        return self.gate(self.mix(x))


class LazyBuffer(_Attention):
    def forward(self, x):
        if "steps" not in self._buffers:
            self.register_buffer("steps", torch.arange(1, 9, dtype=x.dtype))
        return self.mix(x)


class LazyCache(_Attention):
    def forward(self, x):
        if not hasattr(self, "_cache"):
            self._cache = torch.ones(x.shape[1], 1)  # a cache built at the first call, as in lazy RoPE tables
        return self.mix(x) * self._cache[: x.shape[1]]


class LazyCacheInSubmodule(_Attention):
    def __init__(self, d_model, n_heads, dropout=0.0, max_seq_len=8):
        super().__init__(d_model, n_heads, dropout, max_seq_len)
        self.inner = nn.Identity()

    def forward(self, x):
        self.inner.seen = True
        return self.mix(x)


@pytest.mark.parametrize("cls, named", [(LazyModule, "module 'gate'"), (LazyBuffer, "buffer 'steps'"),
                                        (LazyCache, "attribute '_cache'"),
                                        (LazyCacheInSubmodule, "attribute 'inner.seen'")])
def test_anything_created_in_forward_is_named_at_the_first_call(cls, named):
    failure = _reason(lambda: check_shape(cls, G))
    assert failure.reason == Reason.STATEFULNESS and named in failure.message, failure.message
    assert "(the shape check)" in failure.message and "in __init__" in failure.message


class _FftConvolution(nn.Module):
    """A gated long convolution by FFT, one kernel per head initialised small, as explicit long-convolution models
    initialise it: the taps before an early position can be tiny next to the whole kernel."""

    padded_length = 2  # times the length

    def __init__(self, d_model, n_heads, dropout=0.0, max_seq_len=64):
        super().__init__()
        self.n_heads = n_heads
        self.in_proj = nn.Linear(d_model, 2 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.kernel = nn.Parameter(torch.randn(n_heads, max_seq_len) * 0.02)

    def forward(self, x):
        B, T, D = x.shape
        n = self.padded_length * T
        u, gate = self.in_proj(x).chunk(2, dim=-1)
        u = u.transpose(1, 2).reshape(B, self.n_heads, D // self.n_heads, T)
        kf = torch.fft.rfft(self.kernel[:, :T], n=n)[None, :, None]
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * kf, n=n)[..., :T]
        return self.out_proj(y.reshape(B, D, T).transpose(1, 2) * torch.sigmoid(gate))


class ZeroPaddedFft(_FftConvolution):
    padded_length = 2


class CircularFft(_FftConvolution):
    padded_length = 1  # the last inputs wrap around onto the first outputs


SMOKE = Geometry(d_model=48, n_heads=2, context_len=64, batch_size=2, dropout=0.0)


def test_the_round_off_of_a_zero_padded_fft_convolution_is_not_a_leak():
    """Its gradient at cut 0 into later inputs is FFT round-off, ~1e-9, over 1e-6 of the tiny gradient into
    position 0 but far under 1e-6 of the whole output's."""
    assert check_causality(ZeroPaddedFft, SMOKE, 1e-5)["causality_probes"] > 0


def test_a_circular_fft_convolution_is_still_a_leak():
    failure = _reason(lambda: check_causality(CircularFft, SMOKE, 1e-5))
    assert failure.reason == Reason.CAUSALITY, failure.message


class InflatedGradientHidesALeak(_Attention):
    """Inflates the gradient of its last output into its first input a millionfold (without changing a value), so
    that the gradient probe's scale hides a small leak from the next position."""

    def forward(self, x):
        last = (torch.arange(x.shape[1]) == x.shape[1] - 1).to(x.dtype).view(1, -1, 1)
        inflate = 1e6 * last * (x - x.detach())[:, :1]
        return self.mix(x) + inflate + 1e-3 * x.roll(-1, dims=1)


def test_inflating_the_gradient_scale_does_not_hide_a_leak_from_the_perturbation_probe():
    failure = _reason(lambda: check_causality(InflatedGradientHidesALeak, G, 1e-5))
    assert failure.reason == Reason.CAUSALITY and "changing inputs after position" in failure.message, failure.message


class DriftingBuffer(_Attention):
    """Updates a buffer at every call, as power iteration does: two calls on the same input differ."""

    def __init__(self, d_model, n_heads, dropout=0.0, max_seq_len=8):
        super().__init__(d_model, n_heads, dropout, max_seq_len)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        with torch.no_grad():
            self.calls.add_(1.0)
        return self.mix(x) * (1.0 + 1e-3 * self.calls)


class SpectralNorm(_Projections):
    def __init__(self, d_model, n_heads, dropout=0.0, max_seq_len=64):
        super().__init__(d_model, n_heads, dropout, max_seq_len)
        self.qkv = nn.utils.parametrizations.spectral_norm(nn.Linear(d_model, 3 * d_model))


def test_a_difference_between_two_calls_that_state_explains_is_statefulness_not_a_leak():
    failure = _reason(lambda: check_causality(DriftingBuffer, G, 1e-5))
    assert failure.reason == Reason.STATEFULNESS and "buffer 'calls'" in failure.message, failure.message


def test_spectral_norm_is_named_statefulness_by_the_gate():
    """Its power iteration updates ``_u`` at every training call; the causality probe used to name a leak."""
    from harness.sandbox.checks import run_gate
    from harness.trusted.profiles import get_profile

    failure = _reason(lambda: run_gate(SpectralNorm, _Projections, get_profile("smoke"), "cpu"))
    assert failure.reason == Reason.STATEFULNESS and "'qkv.parametrizations.weight.0._u'" in failure.message, \
        failure.message


class Head(nn.Module):
    """One head with its own float causal-mask buffer, as in Karpathy's "Let's build GPT"."""

    def __init__(self, d_model, head_size, block_size):
        super().__init__()
        self.key = nn.Linear(d_model, head_size, bias=False)
        self.query = nn.Linear(d_model, head_size, bias=False)
        self.value = nn.Linear(d_model, head_size, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)))

    def forward(self, x):
        T = x.shape[1]
        wei = self.query(x) @ self.key(x).transpose(-2, -1) * self.key.out_features ** -0.5
        wei = torch.softmax(wei.masked_fill(self.tril[:T, :T] == 0, float("-inf")), dim=-1)
        return wei @ self.value(x)


class PerHeadMasks(nn.Module):
    def __init__(self, d_model, n_heads, dropout=0.0, max_seq_len=64):
        super().__init__()
        self.heads = nn.ModuleList([Head(d_model, d_model // n_heads, max_seq_len) for _ in range(n_heads)])
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(torch.cat([h(x) for h in self.heads], dim=-1))


class AlibiBuffers(_Projections):
    """A precomputed (heads, context, context) ALiBi bias and a float causal mask, both buffers."""

    def __init__(self, d_model, n_heads, dropout=0.0, max_seq_len=64):
        super().__init__(d_model, n_heads, dropout, max_seq_len)
        pos = torch.arange(max_seq_len)
        slopes = torch.tensor([2 ** (-8 * (i + 1) / n_heads) for i in range(n_heads)])
        self.register_buffer("alibi", slopes[:, None, None] * (pos[None, :] - pos[:, None]).clamp(max=0).float()[None],
                             persistent=False)
        self.register_buffer("mask", torch.tril(torch.ones(max_seq_len, max_seq_len)))

    def causal_mask(self):  # the bias is only held: its size is what the state bound counts
        return self.mask.bool()


@pytest.mark.parametrize("profile_name", ["smoke", "full"])
@pytest.mark.parametrize("cls", [PerHeadMasks, AlibiBuffers])
def test_a_float_mask_per_head_fits_the_state_bound(cls, profile_name):
    from harness.sandbox.checks import check_params
    from harness.trusted.profiles import get_profile

    profile = get_profile(profile_name)
    g = Geometry.of(profile)
    metrics = check_params(cls, _Projections, g, profile, profile.gate.param_tolerance_frac)
    assert metrics["attention_state_words"] >= g.n_heads * g.context_len ** 2


def test_a_context_by_context_by_d_model_table_is_refused_at_the_full_profile():
    from harness.sandbox.checks import check_params
    from harness.trusted.profiles import get_profile

    profile = get_profile("full")
    failure = _reason(lambda: check_params(FloatTable, _Projections, Geometry.of(profile), profile,
                                           profile.gate.param_tolerance_frac))
    assert failure.reason == Reason.PARAM_PARITY and "buffer 'table' (128, 128, 192)" in failure.message


def test_a_block_written_with_einops_loads_and_passes_the_gate():
    """The static policy lets a block import einops, as the literature's code often does: it must then load, and
    pass the gate like the same attention written with view and permute."""
    from harness.sandbox.checks import run_gate
    from harness.sandbox.loader import load_attention
    from harness.trusted import program
    from harness.trusted.frameworks import FRAMEWORKS
    from harness.trusted.profiles import get_profile

    fw = FRAMEWORKS["ttr"]
    block = f'''
from einops import rearrange


class {fw.class_name}(nn.Module):
    def __init__(self, d_model, n_heads, dropout=0.1, max_seq_len=128):
        super().__init__()
        self.heads = n_heads
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.w_o = nn.Linear(d_model, d_model)
        self.attn_drop = nn.Dropout(dropout)

    def forward(self, x):
        T = x.shape[1]
        q, k, v = (rearrange(w(x), "b n (h d) -> b h n d", h=self.heads) for w in (self.w_q, self.w_k, self.w_v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        alpha = self.attn_drop(torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1))
        return self.w_o(rearrange(alpha @ v, "b h n d -> b n (h d)"))
'''
    parts = program.split(fw.seed_source())
    cls = load_attention(parts.head + block + parts.tail, "einops_program.py")
    baseline = load_attention(fw.seed_source(), "seed.py")
    metrics, _ = run_gate(cls, baseline, get_profile("smoke"), "cpu")
    assert metrics["flop_ratio"] <= get_profile("smoke").gate.flop_bound_ratio


def test_every_measurement_the_gate_reports_reaches_the_ledger_by_name():
    """The evaluator keeps only the sandbox's metrics whose names the gate reports (``evaluate.GATE_METRICS``): a
    measurement the gate adds under a new name must be added there, or the ledger and the LLM lose it."""
    from harness.sandbox.checks import check_trained_leak, run_gate
    from harness.sandbox.loader import load_attention
    from harness.scaffold import build_model
    from harness.trusted.evaluate import gate_metrics
    from harness.trusted.frameworks import FRAMEWORKS
    from harness.trusted.profiles import get_profile

    profile, fw = get_profile("smoke"), FRAMEWORKS["cd"]
    seed = load_attention(fw.seed_source(), "seed.py")
    metrics, _ = run_gate(seed, seed, profile, "cpu")
    model = build_model(seed, tuple(profile.ladder[0]), profile.vocab_size, profile.context_len_tokens, 0.0, 0)
    metrics.update(check_trained_leak(model, torch.randint(0, profile.vocab_size, (4096,)).numpy(), profile))
    numbers = {name for name, value in metrics.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
    assert len(numbers) >= 15, metrics
    assert sorted(numbers - set(gate_metrics(metrics))) == []

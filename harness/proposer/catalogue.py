"""The mutation catalogue: the framework axes of the three seeds.

Per framework, the constructor knobs a mutation may change (a keyword, or a joint group of keywords,
and the values it takes) and the numeric sites inside the block it may perturb (a literal found by a
regex, and the sensible range a new value is drawn from); how often each family of mutation is drawn;
and the adversarial kinds with the reason code the evaluator must give for each (``leak`` ->
causality, ``frozen`` -> frozen_region, ``params`` -> param_parity).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable

# Adversarial kinds, in the order they cycle, with the reason code the evaluator must give.
ADVERSARIAL_KINDS = ("leak", "frozen", "params")
EXPECTED_REASON = {"leak": "causality", "frozen": "frozen_region", "params": "param_parity"}

# How often each family of mutation is drawn (renormalised over the families that apply).
FAMILY_WEIGHTS = {"knob": 0.45, "combo": 0.2, "numeric": 0.25, "init": 0.1}


def _always(_config: dict) -> bool:
    return True


@dataclass(frozen=True)
class Knob:
    """One constructor keyword (or a joint group such as function_class + solver) and its valid values.

    ``values`` is the fallback table, read from the seed's own asserts and docstring; when the current
    program still has an ``assert kw in (...)`` for the keyword, the values listed there win (that is
    what the program in hand supports)."""

    keywords: tuple[str, ...]
    axis: str
    values: tuple[tuple, ...]
    why: dict = field(default_factory=dict)  # value tuple -> one-line motivation
    relevant: Callable[[dict], bool] = _always  # is the knob meaningful under this configuration?

    @property
    def name(self) -> str:
        return "+".join(self.keywords)


@dataclass(frozen=True)
class NumericSite:
    """A numeric literal (or a pair) inside the block, found by a single-line regex with named groups."""

    name: str
    axis: str
    pattern: str
    draw: Callable[[random.Random, dict], dict]  # (rng, old values) -> new values by group name
    relevant: Callable[[dict], bool] = _always


def _v(*values) -> tuple[tuple, ...]:
    return tuple(v if isinstance(v, tuple) else (v,) for v in values)


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _draw_init_std(rng, old):
    return {"v": _log_uniform(rng, 0.005, 0.05)}


def _draw_decay_exponent(rng, old):  # a_h = 1 - 2^(e - h): e = -5 is RetNet's init
    return {"v": -rng.choice([2.0, 3.0, 4.0, 6.0, 7.0, 8.0, 9.0, 2.5, 3.5, 4.5, 5.5, 6.5])}


def _draw_dt_range(rng, old):  # Mamba-style dt init range
    return {"lo": _log_uniform(rng, 1e-4, 1e-2), "hi": _log_uniform(rng, 2e-2, 0.5)}


def _draw_rope_base(rng, old):
    return {"v": rng.choice([500.0, 1000.0, 2000.0, 5000.0, 20000.0, 50000.0, 100000.0])}


def _draw_eps(rng, old):
    return {"v": rng.choice([1e-8, 1e-7, 1e-5, 1e-4])}


def _draw_impulse_scale(rng, old):  # s_h = d_head^(c): c = -0.5 is 1/sqrt(d)
    return {"v": -rng.choice([0.25, 0.35, 0.4, 0.45, 0.55, 0.6, 0.75, 1.0])}


def _draw_gate_bias(rng, old):  # forget-gate bias range: sigmoid(b) = initial retention
    lo = rng.choice([0.5, 1.0, 1.5, 2.5, 3.0, 4.0])
    return {"lo": lo, "hi": lo + rng.choice([1.0, 2.0, 3.0, 4.0, 5.0])}


def _draw_bandwidth(rng, old):  # 1/bandwidth init = d_head^(c)
    return {"v": rng.choice([0.25, 0.35, 0.4, 0.6, 0.75, 1.0])}


def _draw_poly_coef(rng, old):  # 1 + s + c s^2 >= 0 for all s iff c >= 1/4
    return {"v": rng.choice([0.25, 0.3, 0.4, 0.6, 0.75, 1.0])}


def _draw_toeplitz_rates(rng, old):
    return {"lo": _log_uniform(rng, 1e-3, 0.1), "hi": _log_uniform(rng, 0.3, 3.0)}


def _draw_omega_divisor(rng, old):
    return {"v": rng.choice([1.0, 2.0, 3.0, 6.0, 8.0, 16.0])}


_NUM = r"[0-9][0-9.]*(?:[eE][-+]?[0-9]+)?"
INIT_STD = NumericSite("init_std", "projection init scale", rf"nn\.init\.normal_\(lin\.weight, 0\.0, (?P<v>{_NUM})\)",
                       _draw_init_std)


def _cd_decay(c):
    return c.get("transition") in ("scalar_decay", "selective_decay")


CATALOGUE: dict[str, dict] = {
    "cd": {
        "knobs": (
            Knob(("transition",), "transition structure A_t",
                 _v("identity", "scalar_decay", "selective_decay", "rotation"),
                 {("identity",): "content-only coefficients (softmax attention)",
                  ("scalar_decay",): "per-head fixed forgetting a_h^(i-j) (RetNet-like)",
                  ("selective_decay",): "input-dependent forgetting exp(-softplus(w^T x) e^A) (Mamba-2-like)",
                  ("rotation",): "a rotation transition R^(i-j), i.e. RoPE on c_i and b_j"}),
            Knob(("decay_placement",), "decay placement", _v("inside", "outside"),
                 {("inside",): "the decay multiplies the logit inside phi",
                  ("outside",): "the decay multiplies phi (a log-decay added to an exp logit)"}, _cd_decay),
            Knob(("impulse",), "input scaling b_j", _v("inv_sqrt_d", "learned", "input"),
                 {("inv_sqrt_d",): "fixed 1/sqrt(d_head) impulse scale",
                  ("learned",): "a learned per-head impulse scale",
                  ("input",): "an input-dependent impulse scale softplus(w^T x_j)"}),
            Knob(("readout",), "readout map phi", _v("exp", "identity", "softplus", "elu1", "relu2"),
                 {("exp",): "exp readout (softmax)", ("identity",): "linear readout (finite-state recurrence)",
                  ("softplus",): "softplus readout", ("elu1",): "elu+1 readout (positive linear attention)",
                  ("relu2",): "squared-ReLU readout"}),
            Knob(("normalization",), "normalisation eta", _v("sum", "none", "learned", "output_rms"),
                 {("sum",): "coefficients sum to one", ("none",): "unnormalised coefficients",
                  ("learned",): "a learned data-dependent normaliser exp(w^T x_i)",
                  ("output_rms",): "normalise the mixed output by its RMS"}),
        ),
        "numeric": (
            NumericSite("decay_init", "transition decay init", rf"torch\.pow\(2\.0, (?P<v>-{_NUM}) - torch\.arange",
                        _draw_decay_exponent, lambda c: c.get("transition") == "scalar_decay"),
            NumericSite("dt_range", "selective decay dt range",
                        rf"torch\.linspace\(math\.log\((?P<lo>{_NUM})\), math\.log\((?P<hi>{_NUM})\), H\)",
                        _draw_dt_range, lambda c: c.get("transition") == "selective_decay"),
            NumericSite("rope_base", "rotation frequency base", rf"torch\.pow\((?P<v>{_NUM}), -torch\.arange\(half",
                        _draw_rope_base, lambda c: c.get("transition") == "rotation"),
            NumericSite("impulse_scale", "learned impulse scale init",
                        rf"torch\.full\(\(H,\), (?P<v>-{_NUM}) \* math\.log\(self\.d_head\)\)",
                        _draw_impulse_scale, lambda c: c.get("impulse") == "learned"),
            NumericSite("rms_eps", "output RMS epsilon", rf"y\.pow\(2\)\.mean\(dim=-1, keepdim=True\) \+ (?P<v>{_NUM})\)",
                        _draw_eps, lambda c: c.get("normalization") == "output_rms"),
            INIT_STD,
        ),
    },
    "ttr": {
        "knobs": (
            Knob(("kernel",), "regression weights: kernel kappa", _v("exp", "rbf_qknorm", "relu2", "polynomial"),
                 {("exp",): "exponential kernel (softmax)",
                  ("rbf_qknorm",): "RBF kernel on normalised q, k with a learned bandwidth",
                  ("relu2",): "squared-ReLU kernel", ("polynomial",): "second-order Taylor kernel of exp"},
                 lambda c: c.get("function_class", "constant") == "constant"),
            Knob(("temporal",), "temporal weights tau", _v("uniform", "fixed_decay", "gated_decay"),
                 {("uniform",): "uniform temporal weights", ("fixed_decay",): "per-head fixed exponential decay",
                  ("gated_decay",): "data-dependent forget gates"}),
            Knob(("function_class", "solver"), "function class + test-time solver",
                 _v(("constant", "closed_form"), ("linear", "no_covariance")),
                 {("constant", "closed_form"): "Nadaraya-Watson (constant class) solved in closed form",
                  ("linear", "no_covariance"): "linear fast-weight class with the covariance-free solver"}),
            Knob(("feature_map",), "feature map psi", _v("elu1", "softplus"),
                 {("elu1",): "elu+1 features", ("softplus",): "softplus features"},
                 lambda c: c.get("function_class") == "linear"),
        ),
        "numeric": (
            NumericSite("decay_init", "temporal decay init", rf"torch\.pow\(2\.0, (?P<v>-{_NUM}) - torch\.arange",
                        _draw_decay_exponent, lambda c: c.get("temporal") == "fixed_decay"),
            NumericSite("gate_bias", "forget-gate bias range", rf"torch\.linspace\((?P<lo>{_NUM}), (?P<hi>{_NUM}), H\)",
                        _draw_gate_bias, lambda c: c.get("temporal") == "gated_decay"),
            NumericSite("rbf_bandwidth", "RBF inverse bandwidth init",
                        rf"torch\.full\(\(H,\), (?P<v>{_NUM}) \* math\.log\(self\.d_head\)\)", _draw_bandwidth,
                        lambda c: c.get("kernel") == "rbf_qknorm" and c.get("function_class") == "constant"),
            NumericSite("poly_coef", "polynomial kernel curvature", rf"1\.0 \+ s \+ (?P<v>{_NUM}) \* s \* s",
                        _draw_poly_coef,
                        lambda c: c.get("kernel") == "polynomial" and c.get("function_class") == "constant"),
            NumericSite("normaliser_eps", "normaliser epsilon", rf"a\.sum\(dim=-1, keepdim=True\) \+ (?P<v>{_NUM})\)",
                        _draw_eps, lambda c: c.get("function_class") == "linear"),
            INIT_STD,
        ),
    },
    "mm": {
        "knobs": (
            Knob(("structure",), "structure class of M",
                 _v("softmax_dense", "low_rank", "semiseparable", "toeplitz", "quasiseparable"),
                 {("softmax_dense",): "dense softmax matrix (attention)", ("low_rank",): "low-rank Q K^T matrix",
                  ("semiseparable",): "semiseparable matrix with input-dependent decay (SSD)",
                  ("toeplitz",): "Toeplitz matrix from an LTI kernel (long convolution)",
                  ("quasiseparable",): "quasiseparable matrix: semiseparable plus a free diagonal (Hydra)"}),
            Knob(("m_norm",), "normalisation of M", _v("softmax", "row_l1", "inv_sqrt_len", "none"),
                 {("softmax",): "row softmax", ("row_l1",): "row L1 normalisation",
                  ("inv_sqrt_len",): "1/sqrt(row length) scaling", ("none",): "no normalisation"}),
            Knob(("compose",), "composition", _v("none", "hadamard_decay"),
                 {("none",): "no composition", ("hadamard_decay",): "Hadamard product with a Toeplitz decay"}),
            Knob(("toeplitz_rank",), "Toeplitz kernel rank", _v(2, 4, 6, 8, 12, 16),
                 {}, lambda c: c.get("structure") == "toeplitz"),
        ),
        "numeric": (
            NumericSite("dt_range", "semiseparable dt range",
                        rf"torch\.linspace\(math\.log\((?P<lo>{_NUM})\), math\.log\((?P<hi>{_NUM})\), H\)",
                        _draw_dt_range, lambda c: c.get("structure") in ("semiseparable", "quasiseparable")),
            NumericSite("toeplitz_rates", "Toeplitz damping rates",
                        rf"torch\.linspace\(math\.log\((?P<lo>{_NUM})\), math\.log\((?P<hi>{_NUM})\), R\)",
                        _draw_toeplitz_rates, lambda c: c.get("structure") == "toeplitz"),
            NumericSite("toeplitz_omega", "Toeplitz frequency range", rf"math\.pi / (?P<v>{_NUM})\)",
                        _draw_omega_divisor, lambda c: c.get("structure") == "toeplitz"),
            NumericSite("decay_init", "Hadamard decay init", rf"torch\.pow\(2\.0, (?P<v>-{_NUM}) - torch\.arange",
                        _draw_decay_exponent, lambda c: c.get("compose") == "hadamard_decay"),
            NumericSite("row_l1_eps", "row L1 epsilon", rf"s\.abs\(\)\.sum\(dim=-1, keepdim=True\) \+ (?P<v>{_NUM})\)",
                        _draw_eps, lambda c: c.get("m_norm") == "row_l1"),
            INIT_STD,
        ),
    },
}

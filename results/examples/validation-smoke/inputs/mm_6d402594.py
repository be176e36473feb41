"""Seed program, framework (c): MATRIX MIXER (Hwang, Lahoti, Dao & Gu 2024, Hydra).

A sequence mixer is a linear map of the pre-processed sequence by a structured matrix, one per head:

    Y = M . f_X(X),      M = f_M(X, theta) in a structure class, lower-triangular, sequence-aligned

  f_X    input pre-processing (here the value projection V = X W_v).
  f_M    builds M from the data and parameters; structure classes: dense, low-rank, Toeplitz,
         semiseparable (c_i^T A_i...A_{j+1} b_j), quasiseparable (semiseparable + free diagonal),
         Cauchy, Vandermonde, ... and compositions (sums, Hadamard products).
  SAM    sequence-aligned: row i of M is built only from tokens <= i (and extends to any length).
The defaults (M = softmax_row(mask(Q K^T / sqrt(d_head))), dense SAM) are exactly causal softmax
multi-head attention, computed by an explicit masked matmul.

Named axes you may change (constructor knobs and small methods of the class): `structure`
(softmax_dense | low_rank | semiseparable | toeplitz | quasiseparable), `m_norm` (normalisation of M:
softmax | row_l1 | inv_sqrt_len | none), `compose` (none | hadamard_decay), `toeplitz_rank`, the
methods build_M(), normalize_M(), apply_M(), plus anything else that stays a lower-triangular SAM
matrix times values (new classes, generators, gates on f_X, short causal convs, fast structured
applies such as zero-padded causal FFTs or chunked scans).

ONLY the attention class between the EVOLVE-BLOCK markers may change. Everything else - this file
outside the markers, the GELU FFN, LayerNorm, pre-norm blocks, embeddings and positions, tied head,
dropout and the whole training recipe - is frozen and verified byte-for-byte.

You must keep: the class name and `ATTENTION = ...`; the constructor keywords d_model, n_heads,
dropout, max_seq_len (add knobs only as keyword-only arguments with defaults); forward(x) with x of
shape (batch, seq, d_model) returning the same shape; strict causality (output at t depends only on
inputs <= t; checked by gradients and perturbations, in train and eval mode, with parameters
randomised); no mixing across the batch; no state mutated in forward; attention parameters
<= 1.05x the baseline's (4 d^2 + 4 d); forward+backward FLOPs per token <= 1.10x the baseline's
(elementwise, reduction, FFT and linalg work is audited too; no custom kernels); no steeper growth
of cost with sequence length than the baseline; step time and peak memory <= 3x the baseline's;
imports only from torch, math, typing, functools.

Fitness: after long-horizon training, the slope of validation loss across a ladder of model sizes
(or the final validation loss), as a ratio to the softmax baseline's (1.0 = parity).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# EVOLVE-BLOCK-START
class MatrixMixerAttention(nn.Module):
    """Y = M . V per head, M = f_M(X, theta) lower-triangular and sequence-aligned.

    build_M() gives the unnormalised structured matrix S (entries above the diagonal are ignored),
    normalize_M() masks and normalises it, apply_M() multiplies by the values. Semiseparable decay:
    exp(L_i - L_j), L = causal cumsum of log a_t. Toeplitz: S_ij = w_h(i - j), w_h a sum of damped
    cosines (an LTI SSM kernel; parameters independent of the sequence length; it reads no q, k).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.1, max_seq_len: int = 128, *,
                 structure: str = "toeplitz", m_norm: str = "row_l1", compose: str = "none",
                 toeplitz_rank: int = 8):
        super().__init__()
        assert d_model % n_heads == 0
        assert structure in ("softmax_dense", "low_rank", "semiseparable", "toeplitz", "quasiseparable")
        assert m_norm in ("softmax", "row_l1", "inv_sqrt_len", "none")
        assert compose in ("none", "hadamard_decay")
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.structure, self.m_norm, self.compose = structure, m_norm, compose
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.w_o = nn.Linear(d_model, d_model)
        for lin in (self.w_q, self.w_k, self.w_v, self.w_o):
            nn.init.normal_(lin.weight, 0.0, 0.02)
            nn.init.zeros_(lin.bias)
        self.attn_drop = nn.Dropout(dropout)
        H, R = n_heads, toeplitz_rank
        # framework parameters: created only when a non-default knob needs them
        if structure in ("semiseparable", "quasiseparable"):  # log a_t = -softplus(w^T x_t + b) e^A_log
            self.dt_proj = nn.Linear(d_model, H)
            nn.init.normal_(self.dt_proj.weight, 0.0, 0.02)
            dt = torch.exp(torch.linspace(math.log(1e-3), math.log(1e-1), H))
            with torch.no_grad():
                self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            self.A_log = nn.Parameter(torch.zeros(H))
        if structure == "quasiseparable":  # free diagonal delta_t = w^T x_t + d (D-skip, init 1)
            self.diag_proj = nn.Linear(d_model, H)
            nn.init.normal_(self.diag_proj.weight, 0.0, 0.02)
            nn.init.ones_(self.diag_proj.bias)
        if structure == "toeplitz":  # w_h(l) = sum_r c_hr exp(-softplus(rho_hr) l) cos(omega_hr l)
            rate = torch.exp(torch.linspace(math.log(1e-2), math.log(1.0), R))
            self.toep_coef = nn.Parameter(torch.full((H, R), 1.0 / R))
            self.toep_rho = nn.Parameter(torch.log(torch.expm1(rate)).repeat(H, 1))
            self.toep_omega = nn.Parameter(torch.linspace(0.0, math.pi / 4, R).repeat(H, 1))
        if compose == "hadamard_decay":  # M <- M o a_h^(i-j), a_h = sigmoid(theta_h), init 1 - 2^(-5-h)
            a = 1.0 - torch.pow(2.0, -5.0 - torch.arange(H, dtype=torch.float32))
            self.decay_logit = nn.Parameter(torch.log(a) - torch.log1p(-a))

    def heads(self, t):  # (B, T, D) -> (B, H, T, dh)
        B, T, _ = t.shape
        return t.view(B, T, self.n_heads, self.d_head).transpose(1, 2)

    def causal_log_decay(self, L, mask):
        """log prod_{l=j+1..i} a_l = L_i - L_j, -inf above the diagonal (before any exp)."""
        return (L[..., :, None] - L[..., None, :]).masked_fill(~mask, float("-inf"))

    def toeplitz_kernel(self, T, device, dtype):
        lag = torch.arange(T, device=device, dtype=dtype)
        damp = torch.exp(-F.softplus(self.toep_rho)[..., None] * lag)  # (H, R, T)
        return (self.toep_coef[..., None] * damp * torch.cos(self.toep_omega[..., None] * lag)).sum(dim=1)

    def build_M(self, q, k, x, mask):
        """Unnormalised M (B|1, H, T, T); the normalisation masks j > i."""
        T = x.shape[1]
        if self.structure == "toeplitz":
            idx = torch.arange(T, device=x.device)
            lag = (idx[:, None] - idx[None, :]).clamp_min(0)
            return self.toeplitz_kernel(T, x.device, q.dtype)[:, lag][None]
        s = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)  # low rank c_i^T b_j
        if self.structure in ("softmax_dense", "low_rank"):
            return s
        dt = F.softplus(self.dt_proj(x)).transpose(1, 2)  # (B, H, T)
        L = torch.cumsum(-dt * torch.exp(self.A_log)[None, :, None], dim=-1)
        s = s * torch.exp(self.causal_log_decay(L, mask))  # semiseparable
        if self.structure == "semiseparable":
            return s
        delta = self.diag_proj(x).transpose(1, 2)  # (B, H, T)
        return torch.tril(s, diagonal=-1) + torch.diag_embed(delta)  # quasiseparable

    def compose_M(self, s, mask):
        """Hadamard composition with a Toeplitz decay a_h^(i-j) (for softmax: added to the logits)."""
        if self.compose == "none":
            return s
        T = s.shape[-1]
        L = F.logsigmoid(self.decay_logit)[:, None] * torch.arange(T, device=s.device, dtype=s.dtype)
        logd = self.causal_log_decay(L, mask)
        return s + logd if self.m_norm == "softmax" else s * torch.exp(logd)

    def normalize_M(self, s, mask):
        if self.m_norm == "softmax":  # row softmax over j <= i (mask before the exp)
            s = s.masked_fill(~mask, float("-inf"))
            p = torch.exp(s - s.amax(dim=-1, keepdim=True))
            return p / p.sum(dim=-1, keepdim=True)
        s = s.masked_fill(~mask, 0.0)
        if self.m_norm == "row_l1":
            return s / (s.abs().sum(dim=-1, keepdim=True) + 1e-6)
        if self.m_norm == "inv_sqrt_len":  # 1 / sqrt(number of entries in row i): causal
            n = torch.arange(1, s.shape[-1] + 1, device=s.device, dtype=s.dtype)
            return s * torch.rsqrt(n)[:, None]
        return s

    def apply_M(self, M, v):
        return self.attn_drop(M) @ v

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.heads(self.w_q(x)), self.heads(self.w_k(x)), self.heads(self.w_v(x))
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        M = self.normalize_M(self.compose_M(self.build_M(q, k, x, mask), mask), mask)
        y = self.apply_M(M, v)
        return self.w_o(y.transpose(1, 2).reshape(B, T, D))
# EVOLVE-BLOCK-END

ATTENTION = MatrixMixerAttention

if __name__ == "__main__":
    from harness.scaffold import forward_backward_demo

    forward_backward_demo(ATTENTION)

"""Seed program, framework (a): COEFFICIENT DYNAMICS (Sieber et al. 2025).

Every sequence mixer writes its output as a combination of past values whose coefficients are the
outputs of autonomous linear dynamical systems, one started by an impulse at each past token j:

    y_i = sum_{j<=i} alpha_ij v_j,    alpha_ij = phi( c_i^T A_i A_{i-1} ... A_{j+1} b_j ) / eta_i

  A_t    transition (evolution) matrix; carries position and forgetting. Identity = content only.
  b_j    impulse: the input vector and its scaling (variance control), b_j = s_j k_j.
  c_i    readout vector, the query q_i.
  phi    readout map (exp = softmax; a linear phi admits a finite-state recurrence).
  eta_i  normalisation of the coefficients (sum = softmax's convex combination).
The defaults (A = I, b_j = k_j / sqrt(d_head), phi = exp, eta = sum) are exactly causal softmax
multi-head attention, computed by an explicit masked matmul.

Named axes you may change (constructor knobs and small methods of the class): `transition`
(A_t: identity | scalar_decay | selective_decay | rotation), `decay_placement` (a decay inside phi
multiplies the logit; outside phi it multiplies phi, i.e. adds a log-decay to an exp logit),
`impulse` (b_j: inv_sqrt_d | learned | input), `readout` (phi: exp | identity | softplus | elu1 |
relu2), `normalization` (eta: sum | none | learned | output_rms), plus anything else expressible as
A_t, b_j, c_i, phi, eta (feature maps on q/k, gates, short causal convs, new parameterisations).

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
class CoefficientDynamicsAttention(nn.Module):
    """y_i = sum_{j<=i} alpha_ij v_j,  alpha_ij = phi(c_i^T A_i...A_{j+1} b_j) / eta_i.

    A_t: transition(); b_j: impulse(); c_i = q_i; phi: readout(); eta_i: normalize().
    Scalar A_t = a_t I gives A_i...A_{j+1} = exp(L_i - L_j) with L = cumsum(log a) (causal);
    rotation A_t = R gives R^{i-j}, i.e. RoPE on c_i and b_j.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.1, max_seq_len: int = 128, *,
                 transition: str = "rotation", decay_placement: str = "inside", impulse: str = "input",
                 readout: str = "exp", normalization: str = "sum"):
        super().__init__()
        assert d_model % n_heads == 0
        assert transition in ("identity", "scalar_decay", "selective_decay", "rotation")
        assert decay_placement in ("inside", "outside")
        assert impulse in ("inv_sqrt_d", "learned", "input")
        assert readout in ("exp", "identity", "softplus", "elu1", "relu2")
        assert normalization in ("sum", "none", "learned", "output_rms")
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.transition_kind, self.decay_placement = transition, decay_placement
        self.impulse_kind, self.readout_kind, self.norm_kind = impulse, readout, normalization
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.w_o = nn.Linear(d_model, d_model)
        for lin in (self.w_q, self.w_k, self.w_v, self.w_o):
            nn.init.normal_(lin.weight, 0.0, 0.0443)
            nn.init.zeros_(lin.bias)
        self.attn_drop = nn.Dropout(dropout)
        H = n_heads
        # framework parameters: created only when a non-default knob needs them
        if transition == "scalar_decay":  # a_h = sigmoid(theta_h), RetNet-like init 1 - 2^(-5-h)
            a = 1.0 - torch.pow(2.0, -5.0 - torch.arange(H, dtype=torch.float32))
            self.decay_logit = nn.Parameter(torch.log(a) - torch.log1p(-a))
        if transition == "selective_decay":  # log a_t = -softplus(w^T x_t + dt_bias) * exp(A_log)
            self.dt_proj = nn.Linear(d_model, H)
            nn.init.normal_(self.dt_proj.weight, 0.0, 0.02)
            dt = torch.exp(torch.linspace(math.log(1e-3), math.log(1e-1), H))
            with torch.no_grad():
                self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            self.A_log = nn.Parameter(torch.zeros(H))
        if impulse == "learned":  # per-head scale s_h, init 1/sqrt(d_head)
            self.log_impulse = nn.Parameter(torch.full((H,), -0.5 * math.log(self.d_head)))
        if impulse == "input":  # s_j = softplus(w^T x_j + c) / sqrt(d_head), init ~ 1/sqrt(d_head)
            self.impulse_proj = nn.Linear(d_model, H)
            nn.init.zeros_(self.impulse_proj.weight)
            nn.init.constant_(self.impulse_proj.bias, math.log(math.e - 1.0))
        if normalization == "learned":  # eta_i = exp(w^T x_i + c) (DSF normalised attention)
            self.eta_proj = nn.Linear(d_model, H)
            nn.init.zeros_(self.eta_proj.weight)
            nn.init.zeros_(self.eta_proj.bias)

    def heads(self, t):  # (B, T, D) -> (B, H, T, dh)
        B, T, _ = t.shape
        return t.view(B, T, self.n_heads, self.d_head).transpose(1, 2)

    def impulse(self, k, x):
        """b_j = s_j k_j (variance control)."""
        if self.impulse_kind == "learned":
            return k * torch.exp(self.log_impulse)[None, :, None, None]
        if self.impulse_kind == "input":
            s = F.softplus(self.impulse_proj(x)).transpose(1, 2)[..., None]  # (B, H, T, 1)
            return k * s / math.sqrt(self.d_head)
        return k / math.sqrt(self.d_head)

    def rotate(self, t):
        """A_t = R (fixed block rotation): position t transports a vector by R^t (RoPE)."""
        T, half = t.shape[-2], self.d_head // 2
        inv_freq = torch.pow(10000.0, -torch.arange(half, device=t.device, dtype=torch.float32) / half)
        ang = torch.arange(T, device=t.device, dtype=torch.float32)[:, None] * inv_freq[None, :]
        cos, sin = torch.cos(ang).to(t.dtype), torch.sin(ang).to(t.dtype)
        t1, t2 = t[..., :half], t[..., half:2 * half]
        return torch.cat([t1 * cos - t2 * sin, t1 * sin + t2 * cos, t[..., 2 * half:]], dim=-1)

    def log_decay(self, x, mask):
        """log of the scalar part of A_i...A_{j+1} = L_i - L_j (-inf above the diagonal), or None."""
        T = x.shape[1]
        if self.transition_kind == "scalar_decay":
            L = F.logsigmoid(self.decay_logit)[:, None] * torch.arange(T, device=x.device, dtype=x.dtype)
            L = L[None]  # (1, H, T)
        elif self.transition_kind == "selective_decay":
            dt = F.softplus(self.dt_proj(x)).transpose(1, 2)  # (B, H, T)
            L = torch.cumsum(-dt * torch.exp(self.A_log)[None, :, None], dim=-1)
        else:
            return None
        return (L[..., :, None] - L[..., None, :]).masked_fill(~mask, float("-inf"))

    def transition(self, s, logd):
        """Apply A_i...A_{j+1} to the scores s_ij = c_i^T b_j (decay inside phi multiplies the logit;
        outside phi with an exp readout it adds the log-decay to the logit)."""
        if logd is None:
            return s
        if self.decay_placement == "inside":
            return s * torch.exp(logd)
        if self.readout_kind == "exp":
            return s + logd
        return s

    def readout(self, s, mask):
        """phi, masked to 0 for j > i. exp is computed as exp(s - max_j s): the max cancels under
        eta = sum (under another eta it acts as an extra stabilising normaliser)."""
        if self.readout_kind == "exp":
            s = s.masked_fill(~mask, float("-inf"))
            return torch.exp(s - s.amax(dim=-1, keepdim=True))
        if self.readout_kind == "identity":
            a = s
        elif self.readout_kind == "softplus":
            a = F.softplus(s)
        elif self.readout_kind == "elu1":
            a = F.elu(s) + 1.0
        else:
            a = F.relu(s) ** 2
        return a.masked_fill(~mask, 0.0)

    def normalize(self, alpha, x):
        """eta_i: sum (|sum| floored at 1 for non-exp readouts), none, learned exp(w^T x_i + c);
        output_rms is applied to y in forward (a data-dependent eta_i = rms(y_i))."""
        if self.norm_kind == "sum":
            eta = alpha.sum(dim=-1, keepdim=True)
            if self.readout_kind != "exp":
                eta = eta.abs().clamp_min(1.0)
            return alpha / eta
        if self.norm_kind == "learned":
            return alpha * torch.exp(-self.eta_proj(x)).transpose(1, 2)[..., None]
        return alpha

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.heads(self.w_q(x)), self.heads(self.w_k(x)), self.heads(self.w_v(x))
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        c, b = q, self.impulse(k, x)
        if self.transition_kind == "rotation":
            c, b = self.rotate(c), self.rotate(b)
        logd = self.log_decay(x, mask)
        s = self.transition(c @ b.transpose(-2, -1), logd)
        alpha = self.readout(s, mask)
        if logd is not None and self.decay_placement == "outside" and self.readout_kind != "exp":  # D * phi(s)
            alpha = alpha * torch.exp(logd)
        alpha = self.attn_drop(self.normalize(alpha, x))
        y = alpha @ v  # (B, H, T, dh)
        if self.norm_kind == "output_rms":
            y = y * torch.rsqrt(y.pow(2).mean(dim=-1, keepdim=True) + 1e-6)
        return self.w_o(y.transpose(1, 2).reshape(B, T, D))
# EVOLVE-BLOCK-END

ATTENTION = CoefficientDynamicsAttention

if __name__ == "__main__":
    from harness.scaffold import forward_backward_demo

    forward_backward_demo(ATTENTION)

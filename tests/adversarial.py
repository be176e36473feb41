"""The adversarial corpus: candidate programs, each with the exact reason code the evaluator must give.

Each entry is a whole program file for the ``ttr`` framework, built from the pristine seed: most
replace the block with a small attention class; the frozen-region ones edit the outside. The
legitimate variants at the end must pass with a positive score.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.trusted import program
from harness.trusted.frameworks import FRAMEWORKS

FRAMEWORK = "ttr"
CLASS = FRAMEWORKS[FRAMEWORK].class_name
SEED = FRAMEWORKS[FRAMEWORK].seed_source()


def trained_seed(framework: str = FRAMEWORK) -> str:
    """The seed with a comment in its block: a program of its own, which the evaluator trains and scores (the pristine
    seed's result is its baseline's, never trained again)."""
    return FRAMEWORKS[framework].seed_source().replace(program.END, "# the seed, trained as a candidate\n" + program.END)


TRAINED_SEED = trained_seed()

# A compact causal softmax attention in the seed's parameter layout. Markers {SCORES}, {POST} and
# {EXTRA_INIT} are where the variants below change it.
BASE = '''
class {cls}(nn.Module):
    def __init__(self, d_model, n_heads, dropout=0.1, max_seq_len=128):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.w_o = nn.Linear(d_model, d_model)
        self.attn_drop = nn.Dropout(dropout)
{EXTRA_INIT}
    def forward(self, x):
        B, T, D = x.shape
        q, k, v = (w(x).view(B, T, self.n_heads, self.d_head).transpose(1, 2) for w in (self.w_q, self.w_k, self.w_v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
{SCORES}
        alpha = self.attn_drop(torch.softmax(scores, dim=-1))
        y = (alpha @ v).transpose(1, 2).reshape(B, T, D)
        y = self.w_o(y)
{POST}
        return y
'''

CAUSAL = "        scores = scores.masked_fill(~mask, float('-inf'))"


def block(scores: str = CAUSAL, post: str = "", extra_init: str = "") -> str:
    return BASE.format(cls=CLASS, SCORES=scores, POST=post, EXTRA_INIT=extra_init)


def with_block(text: str) -> str:
    parts = program.split(SEED)
    return parts.head + text + parts.tail


# A Hyena/S4-style long convolution: M is Toeplitz with a per-channel decaying kernel, applied by FFT.
LONG_CONVOLUTION = f'''
class {CLASS}(nn.Module):
    def __init__(self, d_model, n_heads, dropout=0.1, max_seq_len=128):
        super().__init__()
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.w_o = nn.Linear(d_model, d_model)
        self.log_rate = nn.Parameter(torch.linspace(-4.0, 0.0, d_model))

    def forward(self, x):
        B, T, D = x.shape
        v = self.w_v(x) * torch.sigmoid(self.w_q(x))
        lags = torch.arange(T, device=x.device, dtype=x.dtype)[:, None]
        kernel = torch.exp(-torch.exp(self.log_rate)[None, :] * lags)
        kernel = kernel / kernel.sum(0, keepdim=True)
        n = 2 * T
        y = torch.fft.irfft(torch.fft.rfft(v, n=n, dim=1) * torch.fft.rfft(kernel, n=n, dim=0)[None], n=n, dim=1)[:, :T]
        return self.w_o(y)
'''


# Cheaper than the baseline at the training context, but its cost grows as T^3.
CUBIC = f'''
class {CLASS}(nn.Module):
    def __init__(self, d_model, n_heads, dropout=0.1, max_seq_len=128):
        super().__init__()
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.w_o = nn.Linear(d_model, d_model)

    def forward(self, x):
        B, T, D = x.shape
        q = self.w_q(x)[..., :8]
        s = torch.tril(q @ q.transpose(1, 2)) / T
        s = s @ s @ s / T
        return self.w_o(x) + 0.01 * (s @ q).sum(-1, keepdim=True)
'''


@dataclass(frozen=True)
class Case:
    name: str
    reason: str
    source: str
    note: str = ""


def _seed_with_knobs(**knobs: str) -> str:
    """The pristine seed with some constructor defaults changed: a legitimate structured mutation."""
    src = SEED
    for knob, value in knobs.items():
        src, n = re.subn(rf'({knob}: str = )"[^"]*"', rf'\1"{value}"', src, count=1)
        assert n == 1, f"the ttr seed has no knob {knob!r}"
    return src


CASES = [
    # --- frozen region: the text outside the block is the pristine seed's, byte for byte -------------
    Case("ffn_edit_outside_block", "frozen_region",
         SEED.replace("ATTENTION = ", "import harness.scaffold\nharness.scaffold.F.gelu = F.relu\nATTENTION = "),
         "swaps the frozen FFN's GELU for ReLU from outside the block"),
    Case("duplicated_markers", "frozen_region", SEED.replace(program.END, program.END + "\n" + program.START + "\n" + program.END)),
    Case("missing_end_marker", "frozen_region", SEED.replace(program.END + "\n", "")),
    # --- static policy ---------------------------------------------------------------------------------
    Case("syntax_error", "syntax", with_block(block().replace("def forward(self, x):", "def forward(self, x)"))),
    Case("imports_os", "policy", with_block("import os\n" + block())),
    Case("monkeypatch_functional", "policy", with_block(block(post="        F.gelu = F.relu"))),
    Case("monkeypatch_at_module_level", "policy", with_block(block() + "\nF.layer_norm = lambda *a, **k: a[0]\n")),
    Case("imports_harness_to_patch_ffn", "policy", with_block("import harness.scaffold\n" + block())),
    Case("exec_in_forward", "policy", with_block(block(post="        exec('y = y * 0')"))),
    Case("dunder_escape", "policy", with_block(block(post="        y = y + 0 * len(x.__class__.__mro__)"))),
    Case("sleeps_forever_via_time", "policy", with_block("import time\n" + block(post="        time.sleep(10 ** 9)"))),
    Case("renamed_class", "policy", with_block(block().replace(f"class {CLASS}", "class Renamed"))),
    # --- dynamic gate --------------------------------------------------------------------------------
    Case("raises_in_forward", "crash", with_block(block(post="        raise RuntimeError('boom')"))),
    Case("drops_a_position", "shape", with_block(block(post="        y = y[:, :-1]"))),
    Case("no_causal_mask", "causality", with_block(block(scores=""))),
    Case("future_leak_gated_by_zero_parameter", "causality",
         with_block(block(extra_init="        self.gate = nn.Parameter(torch.zeros(1))",
                          post="        y = y + self.gate * x.flip(1)")),
         "invisible at initialisation: the gate is exactly zero"),
    Case("leak_only_in_eval_mode", "causality",
         with_block(block(post="        if not self.training:\n            y = y + 0.1 * x.flip(1)"))),
    Case("circular_fft_convolution", "causality",
         with_block(block(post="        kernel = torch.exp(-torch.arange(T, device=x.device, dtype=x.dtype))[None, :, None]\n"
                               "        y = y + torch.fft.irfft(torch.fft.rfft(x, dim=1) * torch.fft.rfft(kernel, dim=1), n=T, dim=1)")),
         "FFT convolution without zero padding wraps the last tokens onto the first"),
    Case("cross_batch_mean", "batch_independence", with_block(block(post="        y = y - y.mean(dim=0, keepdim=True)"))),
    Case("counts_calls", "statefulness",
         with_block(block(extra_init="        self.calls = 0", post="        self.calls = self.calls + 1"))),
    Case("lazy_parameter", "param_parity",
         with_block(block(post="        if not hasattr(self, 'late'):\n            self.late = nn.Parameter(torch.ones(D, D))\n"
                               "        y = y @ self.late"))),
    Case("extra_projection", "param_parity",
         with_block(block(extra_init="        self.w_extra = nn.Linear(d_model, d_model)", post="        y = y + self.w_extra(x)"))),
    Case("large_fixed_random_buffer", "param_parity",
         with_block(block(extra_init="        self.register_buffer('table', torch.randn(max_seq_len, max_seq_len, d_model))",
                          post="        y = y + self.table[:T, :T].tril().sum(1)[None] * 0"))),
    Case("work_hidden_in_grid_sample", "unaccounted_op",
         with_block(block(post="        grid = torch.zeros(B * T, 1, 1, 2, device=x.device, dtype=x.dtype)\n"
                               "        y = y + F.grid_sample(y.reshape(B * T, D, 1, 1), grid, align_corners=False).reshape(B, T, D)"))),
    Case("attention_computed_twice", "flop_parity",
         with_block(block(post="        again = torch.softmax(scores * 0.5, dim=-1) @ v\n"
                               "        y = 0.5 * (y + self.w_o(again.transpose(1, 2).reshape(B, T, D)))"))),
    Case("cubic_in_length", "complexity", with_block(CUBIC),
         "cheaper than the baseline at the training context, but cost grows as T^3"),
    Case("python_loop_over_time", "runtime",
         with_block(block(post="        vs, qs = torch.sigmoid(v[..., :1]), torch.sigmoid(q[..., :1])\n"
                               "        gate, outs = torch.zeros_like(vs[:, :, 0]), []\n"
                               "        for t in range(T):\n"
                               "            for _ in range(6):\n"
                               "                gate = 0.9 * gate + vs[:, :, t]\n"
                               "                gate = gate / (1.0 + gate.abs())\n"
                               "            outs.append(torch.tanh(gate) * qs[:, :, t])\n"
                               "        y = y * (1.0 + 0.1 * torch.stack(outs, dim=2).mean(1))")),
         "a per-head scalar recurrence stepped token by token: cheap in FLOPs, slow in wall time"),
    Case("materialised_pairwise_tensor", "memory",
         with_block(block(scores="        big = q[:, :, :, None, :].expand(B, self.n_heads, T, T, self.d_head).contiguous()\n"
                                 "        scores = (big * k[:, :, None, :, :]).sum(-1) / math.sqrt(self.d_head)\n" + CAUSAL))),
    Case("sleeps_forever_busy_loop", "timeout",
         with_block(block(post="        while y.shape[0] > 0:\n            y = y + 0"))),
    Case("goes_nan_after_training_steps", "nonfinite",
         with_block(block(extra_init="        self.limit = 1.05 * float(self.w_q.weight.detach().norm())",
                          post="        y = y + 0.0 * torch.sqrt(self.limit - self.w_q.weight.norm())")),
         "finite at initialisation and with randomised parameters; NaN once training grows the weights"),
    Case("leak_only_for_large_eval_batches", "leak_after_training",
         with_block(block(post="        if not self.training and B >= 4:\n            y = y + 0.5 * x.roll(-1, dims=1)")),
         "passes the gate's small batches; caught on the trained model"),
    # --- legitimate: must pass with a positive score ---------------------------------------------------
    Case("prints_a_fake_score", "ok",
         with_block(block(post="        print('{\"combined_score\": 1000.0}')")),
         "printing does nothing: the score comes from the sandbox's own result file"),
    Case("seed", "ok", SEED),
    Case("decayed_linear_attention", "ok", _seed_with_knobs(function_class="linear", solver="no_covariance", temporal="fixed_decay")),
    Case("gated_linear_attention", "ok", _seed_with_knobs(function_class="linear", solver="no_covariance", temporal="gated_decay")),
    Case("causal_zero_padded_fft_convolution", "ok", with_block(LONG_CONVOLUTION),
         "a Toeplitz mixer applied by FFT, zero-padded to 2T: causal, unlike the circular one"),
]

BY_NAME = {case.name: case for case in CASES}

"""The idiom sweep's candidates: ordinary PyTorch idioms an LLM might write when editing the attention class between
the EVOLVE-BLOCK markers of ``initial_programs/{ttr,cd,mm}.py``, one idiom per candidate, keeping the seed's maths (or a
legitimate variant) and its parameter count (within 3% where a knob adds parameters).

Each candidate is the seed's block with a few exact text edits, built from the seeds of this checkout (read as text,
so that every version of the harness is run on the same candidates; the seeds' frozen parts are the same in all of
them). Nothing is written; ``run.py`` runs them. ``deliberate`` says why the project refuses a candidate on purpose
(None: a candidate the project means to accept).
"""

from dataclasses import dataclass
from pathlib import Path

SEED_DIR = Path(__file__).resolve().parents[3] / "initial_programs"
START, END = "# EVOLVE-BLOCK-START", "# EVOLVE-BLOCK-END"


@dataclass(frozen=True)
class Candidate:
    name: str
    framework: str
    idiom: str  # one line
    block: str  # the new text between the markers
    deliberate: str | None = None  # why the project refuses it on purpose, or None


def seed_block(framework: str) -> str:
    """The text strictly between the markers of ``initial_programs/<framework>.py``."""
    lines = (SEED_DIR / f"{framework}.py").read_text().splitlines(keepends=True)
    start, end = (next(i for i, line in enumerate(lines) if line.strip() == marker) for marker in (START, END))
    return "".join(lines[start + 1:end])


BLOCKS = {fw: seed_block(fw) for fw in ("ttr", "cd", "mm")}
_ADDED: list[tuple[str, str, str, str]] = []


def edit(fw, *pairs, prefix=""):
    block = BLOCKS[fw]
    for old, new in pairs:
        assert block.count(old) == 1, (fw, old, block.count(old))
        block = block.replace(old, new)
    return prefix + block


def add(name, fw, idiom, block):
    _ADDED.append((name, fw, idiom, block))


# ---------------------------------------------------------------------------------------------- ttr snippets
T_CORE = ("        gamma = self.regression_weights(q, k, x, mask)\n"
          "        y = self.fit_and_query(gamma, q, k, v, x)\n")
T_DROP = "        self.attn_drop = nn.Dropout(dropout)\n"
T_MASK = "        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()\n"
T_QKV = "        q, k, v = self.heads(self.w_q(x)), self.heads(self.w_k(x)), self.heads(self.w_v(x))\n"
T_EXP = "            return torch.exp(s - s.amax(dim=-1, keepdim=True))\n"
T_MASKFILL = '            s = s.masked_fill(~mask, float("-inf")) if logt is None else s + logt\n'
T_INIT_LOOP = ("        for lin in (self.w_q, self.w_k, self.w_v, self.w_o):\n"
               "            nn.init.normal_(lin.weight, 0.0, 0.02)\n"
               "            nn.init.zeros_(lin.bias)\n")
T_SIG = 'solver: str = "closed_form", feature_map: str = "elu1"):\n'
T_HEADS = "    def heads(self, t):  # (B, T, D) -> (B, H, T, dh)\n"
T_FWD = "    def forward(self, x):\n"
T_RETURN = "        return self.w_o(y.transpose(1, 2).reshape(B, T, D))\n"
T_SUPER = "        super().__init__()\n"
T_DOC_END = '    i.e. normalised linear attention with decay, evaluated here in its materialised T x T form.\n    """\n'
SOFTMAX_CORE = ("        s = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)\n"
                "        p = F.softmax(s.masked_fill(~mask, float(\"-inf\")), dim=-1)\n"
                "        y = self.attn_drop(p) @ v\n")

# ---- checkpointing
add("t01_checkpoint_attr", "ttr", "torch.utils.checkpoint.checkpoint(fn, q, k, v, use_reentrant=False)", edit("ttr",
    (T_CORE, "        y = torch.utils.checkpoint.checkpoint(self.core, q, k, v, x, mask, use_reentrant=False)\n"),
    (T_FWD, "    def core(self, q, k, v, x, mask):\n"
            "        gamma = self.regression_weights(q, k, x, mask)\n"
            "        return self.fit_and_query(gamma, q, k, v, x)\n\n" + T_FWD)))
add("t02_checkpoint_import", "ttr", "from torch.utils.checkpoint import checkpoint", edit("ttr",
    (T_CORE, "        y = checkpoint(self.core, q, k, v, x, mask, use_reentrant=False)\n"),
    (T_FWD, "    def core(self, q, k, v, x, mask):\n"
            "        gamma = self.regression_weights(q, k, x, mask)\n"
            "        return self.fit_and_query(gamma, q, k, v, x)\n\n" + T_FWD),
    prefix="from torch.utils.checkpoint import checkpoint\n\n\n"))

# ---- functools.partial
add("t03_partial_softmax_on_self", "ttr", "self.normalise = functools.partial(F.softmax, dim=-1) set in __init__", edit("ttr",
    (T_DROP, T_DROP + "        self.normalise = functools.partial(F.softmax, dim=-1)\n"),
    (T_CORE, "        s = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)\n"
             "        y = self.attn_drop(self.normalise(s.masked_fill(~mask, float(\"-inf\")))) @ v\n"),
    prefix="import functools\n\n\n"))
add("t04_partial_softmax_local", "ttr", "sm = partial(F.softmax, dim=-1) as a local in forward", edit("ttr",
    (T_CORE, "        sm = partial(F.softmax, dim=-1)\n"
             "        s = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)\n"
             "        y = self.attn_drop(sm(s.masked_fill(~mask, float(\"-inf\")))) @ v\n"),
    prefix="from functools import partial\n\n\n"))
add("t05_partial_layernorm_factory", "ttr", "norm_layer = partial(nn.LayerNorm, elementwise_affine=False) (QK-norm)", edit("ttr",
    (T_DROP, T_DROP + "        norm_layer = partial(nn.LayerNorm, elementwise_affine=False)\n"
                      "        self.q_norm, self.k_norm = norm_layer(self.d_head), norm_layer(self.d_head)\n"),
    (T_QKV, T_QKV + "        q, k = self.q_norm(q), self.k_norm(k)\n"),
    prefix="from functools import partial\n\n\n"))
add("t05b_partial_module_on_self", "ttr", "self.q_norm = functools.partial(F.layer_norm, normalized_shape=(d_head,)) stored on self", edit("ttr",
    (T_DROP, T_DROP + "        self.q_norm = functools.partial(F.layer_norm, normalized_shape=(self.d_head,))\n"),
    (T_QKV, T_QKV + "        q = self.q_norm(q)\n"),
    prefix="import functools\n\n\n"))

# ---- classes as values / typing.cast
add("t06_class_default_arg", "ttr", "keyword-only knob norm_cls=nn.Identity, self.q_norm = norm_cls()", edit("ttr",
    (T_SIG, 'solver: str = "closed_form", feature_map: str = "elu1", norm_cls=nn.Identity):\n'),
    (T_DROP, T_DROP + "        self.q_norm, self.k_norm = norm_cls(), norm_cls()\n"),
    (T_QKV, T_QKV + "        q, k = self.q_norm(q), self.k_norm(k)\n")))
add("t06b_class_knob_in_init_body", "ttr", "norm_cls = nn.LayerNorm if qk_norm else nn.Identity (class picked by a knob)", edit("ttr",
    (T_SIG, 'solver: str = "closed_form", feature_map: str = "elu1", qk_norm: bool = False):\n'),
    (T_DROP, T_DROP + "        norm_cls = nn.LayerNorm if qk_norm else nn.Identity\n"
                      "        self.q_norm, self.k_norm = norm_cls(self.d_head), norm_cls(self.d_head)\n"),
    (T_QKV, T_QKV + "        q, k = self.q_norm(q), self.k_norm(k)\n")))
add("t07_typing_cast", "ttr", "typing.cast(torch.Tensor, y)", edit("ttr",
    (T_CORE, "        gamma = self.regression_weights(q, k, x, mask)\n"
             "        y = cast(torch.Tensor, self.fit_and_query(gamma, q, k, v, x))\n"),
    prefix="from typing import cast\n\n\n"))
add("t07b_typing_cast_Tensor_name", "ttr", "from torch import Tensor; cast(Tensor, y)", edit("ttr",
    (T_CORE, "        gamma = self.regression_weights(q, k, x, mask)\n"
             "        y = cast(Tensor, self.fit_and_query(gamma, q, k, v, x))\n"),
    prefix="from typing import cast\n\nfrom torch import Tensor\n\n\n"))

# ---- callables stored on self
add("t09_dict_of_feature_maps", "ttr", "self.psi = {'elu1': lambda t: F.elu(t) + 1, 'softplus': F.softplus}[feature_map] (linear class default)", edit("ttr",
    ('function_class: str = "constant",', 'function_class: str = "linear",'),
    ('solver: str = "closed_form",', 'solver: str = "no_covariance",'),
    (T_DROP, T_DROP + '        self.psi = {"elu1": lambda t: F.elu(t) + 1.0, "softplus": F.softplus}[feature_map]\n'),
    ('        return F.elu(t) + 1.0 if self.feature_map == "elu1" else F.softplus(t)\n', "        return self.psi(t)\n")))
add("t10_lambda_on_self", "ttr", "self.kernel_fn = lambda s: torch.exp(s - s.amax(-1, keepdim=True))", edit("ttr",
    (T_DROP, T_DROP + "        self.kernel_fn = lambda s: torch.exp(s - s.amax(dim=-1, keepdim=True))\n"),
    (T_EXP, "            return self.kernel_fn(s)\n")))
add("t11_bound_method_on_self", "ttr", "self.kernel_fn = self.exp_kernel (bound method picked in __init__)", edit("ttr",
    (T_DROP, T_DROP + "        self.kernel_fn = self.exp_kernel\n"),
    (T_EXP, "            return self.kernel_fn(s)\n"),
    (T_HEADS, "    def exp_kernel(self, s):\n        return torch.exp(s - s.amax(dim=-1, keepdim=True))\n\n" + T_HEADS)))
add("t11b_tuple_of_submodules", "ttr", "self.qkv_layers = (self.w_q, self.w_k, self.w_v) convenience tuple", edit("ttr",
    (T_DROP, T_DROP + "        self.qkv_layers = (self.w_q, self.w_k, self.w_v)\n"),
    (T_QKV, "        q, k, v = (self.heads(lin(x)) for lin in self.qkv_layers)\n")))
add("t11c_builtin_fn_on_self", "ttr", "self.kernel_fn = torch.exp (builtin function stored)", edit("ttr",
    (T_DROP, T_DROP + "        self.kernel_fn = torch.exp\n"),
    (T_EXP, "            return self.kernel_fn(s - s.amax(dim=-1, keepdim=True))\n")))

# ---- masking constants
add("t13_finfo_min", "ttr", "masked_fill(~mask, torch.finfo(s.dtype).min)", edit("ttr",
    (T_MASKFILL, "            s = s.masked_fill(~mask, torch.finfo(s.dtype).min) if logt is None else s + logt\n")))
add("t14_math_inf", "ttr", "masked_fill(~mask, -math.inf)", edit("ttr",
    (T_MASKFILL, "            s = s.masked_fill(~mask, -math.inf) if logt is None else s + logt\n")))
add("t15_module_const_finfo", "ttr", "module-level MASK_VALUE = -torch.finfo(torch.float32).max", edit("ttr",
    (T_MASKFILL, "            s = s.masked_fill(~mask, MASK_VALUE) if logt is None else s + logt\n"),
    prefix="MASK_VALUE = -torch.finfo(torch.float32).max\n\n\n"))
add("t15b_module_const_literal", "ttr", "module-level NEG_INF = float('-inf'), EPS = 1e-6 (control)", edit("ttr",
    (T_MASKFILL, "            s = s.masked_fill(~mask, NEG_INF) if logt is None else s + logt\n"),
    prefix="NEG_INF = float(\"-inf\")\nEPS = 1e-6\n\n\n"))

# ---- precision / grad contexts
add("t16_autocast_disabled", "ttr", "with torch.autocast(device_type=x.device.type, enabled=False): ... x.float() ... .to(x.dtype)", edit("ttr",
    (T_CORE, "        with torch.autocast(device_type=x.device.type, enabled=False):\n"
             "            qf, kf, vf = q.float(), k.float(), v.float()\n"
             "            gamma = self.regression_weights(qf, kf, x.float(), mask)\n"
             "            y = self.fit_and_query(gamma, qf, kf, vf, x.float()).to(x.dtype)\n")))
add("t17_no_grad_row_max", "ttr", "with torch.no_grad(): m = s.amax(...) (stabiliser without grad)", edit("ttr",
    (T_EXP, "            with torch.no_grad():\n"
            "                m = s.amax(dim=-1, keepdim=True)\n"
            "            return torch.exp(s - m)\n")))
add("t18_detach_row_max", "ttr", "torch.exp(s - s.detach().amax(...))", edit("ttr",
    (T_EXP, "            return torch.exp(s - s.detach().amax(dim=-1, keepdim=True))\n")))
add("t19_apply_init_weights", "ttr", "self.apply(self._init_weights) with isinstance/nn.init.normal_(std=0.02)", edit("ttr",
    (T_INIT_LOOP, "        self.apply(self._init_weights)\n"),
    (T_HEADS, "    def _init_weights(self, module):\n"
              "        if isinstance(module, nn.Linear):\n"
              "            nn.init.normal_(module.weight, mean=0.0, std=0.02)\n"
              "            if module.bias is not None:\n"
              "                nn.init.zeros_(module.bias)\n\n" + T_HEADS)))
add("t20_xavier_trunc_normal", "ttr", "nn.init.xavier_uniform_ / trunc_normal_(std=0.02, a, b)", edit("ttr",
    (T_INIT_LOOP, "        for lin in (self.w_q, self.w_k, self.w_v):\n"
                  "            nn.init.xavier_uniform_(lin.weight)\n"
                  "            nn.init.zeros_(lin.bias)\n"
                  "        nn.init.trunc_normal_(self.w_o.weight, std=0.02, a=-0.04, b=0.04)\n"
                  "        nn.init.constant_(self.w_o.bias, 0.0)\n")))
add("t20b_data_normal_", "ttr", "lin.weight.data.normal_(mean=0.0, std=0.02); lin.bias.data.zero_()", edit("ttr",
    (T_INIT_LOOP, "        for lin in (self.w_q, self.w_k, self.w_v, self.w_o):\n"
                  "            lin.weight.data.normal_(mean=0.0, std=0.02)\n"
                  "            lin.bias.data.zero_()\n")))
add("t20c_submodule_apply", "ttr", "self.w_o.apply(self._init_weights) (apply on an own submodule)", edit("ttr",
    (T_INIT_LOOP, T_INIT_LOOP + "        self.w_o.apply(self._init_weights)\n"),
    (T_HEADS, "    def _init_weights(self, module):\n"
              "        if isinstance(module, nn.Linear):\n"
              "            nn.init.normal_(module.weight, mean=0.0, std=0.02 / math.sqrt(2.0))\n\n" + T_HEADS)))

# ---- buffers
add("t21_bool_mask_buffer", "ttr", "register_buffer('causal_mask', ones(L, L, bool).tril(), persistent=False); mask = self.causal_mask[:T, :T]", edit("ttr",
    (T_DROP, T_DROP + "        self.register_buffer(\"causal_mask\", torch.ones(max_seq_len, max_seq_len, dtype=torch.bool).tril(),\n"
                      "                             persistent=False)\n"),
    (T_MASK, "        mask = self.causal_mask[:T, :T]\n")))
add("t22_nanogpt_float_bias_buffer", "ttr", "nanoGPT: register_buffer('bias', tril(ones(L,L)).view(1,1,L,L)); B, T, C = x.size(); masked_fill(bias==0)", edit("ttr",
    (T_DROP, T_DROP + "        self.register_buffer(\"bias\", torch.tril(torch.ones(max_seq_len, max_seq_len))\n"
                      "                             .view(1, 1, max_seq_len, max_seq_len))\n"),
    ("        B, T, D = x.shape\n" + T_QKV + T_MASK + T_CORE + T_RETURN,
     "        B, T, C = x.size()\n" + T_QKV +
     "        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))\n"
     "        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float(\"-inf\"))\n"
     "        att = F.softmax(att, dim=-1)\n"
     "        att = self.attn_drop(att)\n"
     "        y = att @ v\n"
     "        y = y.transpose(1, 2).contiguous().view(B, T, C)\n"
     "        return self.w_o(y)\n")))
ROPE_HELPERS = ("def rotate_half(x):\n"
                "    x1, x2 = x.chunk(2, dim=-1)\n"
                "    return torch.cat((-x2, x1), dim=-1)\n\n\n"
                "def apply_rotary_pos_emb(q, k, cos, sin):\n"
                "    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)\n\n\n")
add("t23_hf_rope_inv_freq_buffer", "ttr", "HF RoPE: inv_freq buffer (persistent=False), einsum('i,j->ij'), rotate_half helper", edit("ttr",
    (T_DROP, T_DROP + "        inv_freq = 1.0 / (10000 ** (torch.arange(0, self.d_head, 2).float() / self.d_head))\n"
                      "        self.register_buffer(\"inv_freq\", inv_freq, persistent=False)\n"),
    (T_QKV, T_QKV + "        t = torch.arange(T, device=x.device, dtype=self.inv_freq.dtype)\n"
                    "        freqs = torch.einsum(\"i,j->ij\", t, self.inv_freq)\n"
                    "        emb = torch.cat((freqs, freqs), dim=-1)\n"
                    "        cos, sin = emb.cos()[None, None].to(q.dtype), emb.sin()[None, None].to(q.dtype)\n"
                    "        q, k = apply_rotary_pos_emb(q, k, cos, sin)\n"),
    prefix=ROPE_HELPERS))
LLAMA_HELPERS = ("def precompute_freqs_cis(dim: int, end: int, theta: float = 10000.0) -> torch.Tensor:\n"
                 "    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))\n"
                 "    t = torch.arange(end, device=freqs.device)\n"
                 "    freqs = torch.outer(t, freqs).float()\n"
                 "    return torch.polar(torch.ones_like(freqs), freqs)\n\n\n"
                 "def apply_rotary_emb(xq, xk, freqs_cis):\n"
                 "    xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))\n"
                 "    xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))\n"
                 "    xq_out = torch.view_as_real(xq_ * freqs_cis).flatten(-2)\n"
                 "    xk_out = torch.view_as_real(xk_ * freqs_cis).flatten(-2)\n"
                 "    return xq_out.type_as(xq), xk_out.type_as(xk)\n\n\n")
add("t24_llama_complex_rope", "ttr", "LLaMA RoPE: torch.polar freqs_cis buffer, view_as_complex / view_as_real", edit("ttr",
    (T_DROP, T_DROP + "        self.register_buffer(\"freqs_cis\", precompute_freqs_cis(self.d_head, max_seq_len), persistent=False)\n"),
    (T_QKV, T_QKV + "        q, k = apply_rotary_emb(q, k, self.freqs_cis[:T])\n"),
    prefix=LLAMA_HELPERS))
add("t25_rope_cos_sin_cache_buffers", "ttr", "cos_cached / sin_cached buffers for max_seq_len, sliced [:T] in forward", edit("ttr",
    (T_DROP, T_DROP + "        inv_freq = 1.0 / (10000 ** (torch.arange(0, self.d_head, 2).float() / self.d_head))\n"
                      "        freqs = torch.outer(torch.arange(max_seq_len).float(), inv_freq)\n"
                      "        emb = torch.cat((freqs, freqs), dim=-1)\n"
                      "        self.register_buffer(\"cos_cached\", emb.cos(), persistent=False)\n"
                      "        self.register_buffer(\"sin_cached\", emb.sin(), persistent=False)\n"),
    (T_QKV, T_QKV + "        cos, sin = self.cos_cached[:T].to(q.dtype), self.sin_cached[:T].to(q.dtype)\n"
                    "        q, k = apply_rotary_pos_emb(q, k, cos, sin)\n"),
    prefix=ROPE_HELPERS))
add("t74_scalar_buffer", "ttr", "register_buffer('scale', torch.tensor(d_head ** -0.5))", edit("ttr",
    (T_DROP, T_DROP + "        self.register_buffer(\"scale\", torch.tensor(self.d_head ** -0.5))\n"),
    ("            s = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)\n",
     "            s = (q @ k.transpose(-2, -1)) * self.scale\n")))

# ---- mode / environment checks
add("t26_if_self_training", "ttr", "if self.training: p = self.attn_drop(p)", edit("ttr",
    ("            return self.attn_drop(gamma / den) @ v\n",
     "            p = gamma / den\n"
     "            if self.training:\n"
     "                p = self.attn_drop(p)\n"
     "            return p @ v\n")))
add("t27_jit_is_scripting", "ttr", "if not torch.jit.is_scripting(): assert ...", edit("ttr",
    ("        B, T, D = x.shape\n" + T_QKV, "        if not torch.jit.is_scripting():\n"
                                          "            assert x.dim() == 3\n"
                                          "        B, T, D = x.shape\n" + T_QKV)))
add("t27b_compiler_is_compiling", "ttr", "if not torch.compiler.is_compiling(): assert ...", edit("ttr",
    ("        B, T, D = x.shape\n" + T_QKV, "        if not torch.compiler.is_compiling():\n"
                                          "            assert x.dim() == 3\n"
                                          "        B, T, D = x.shape\n" + T_QKV)))
add("t28_is_grad_enabled", "ttr", "use_dropout = self.training and torch.is_grad_enabled()", edit("ttr",
    ("            return self.attn_drop(gamma / den) @ v\n",
     "            use_dropout = self.training and torch.is_grad_enabled()\n"
     "            p = gamma / den\n"
     "            return (self.attn_drop(p) if use_dropout else p) @ v\n")))

# ---- tensor-op idioms
add("t29_einsum_ellipsis", "ttr", "torch.einsum('...td,...sd->...ts') and ('...ts,...sd->...td')", edit("ttr",
    (T_CORE, "        s = torch.einsum(\"...td,...sd->...ts\", q, k) / math.sqrt(self.d_head)\n"
             "        p = torch.softmax(s.masked_fill(~mask, float(\"-inf\")), dim=-1)\n"
             "        y = torch.einsum(\"...ts,...sd->...td\", self.attn_drop(p), v)\n")))
add("t30_baddbmm", "ttr", "torch.baddbmm(additive mask, q, k^T, alpha=1/sqrt(d))", edit("ttr",
    (T_CORE, "        qf = q.reshape(B * self.n_heads, T, self.d_head)\n"
             "        kf = k.reshape(B * self.n_heads, T, self.d_head)\n"
             "        bias = torch.zeros(T, T, device=x.device, dtype=q.dtype).masked_fill(~mask, float(\"-inf\"))\n"
             "        s = torch.baddbmm(bias.expand(B * self.n_heads, T, T), qf, kf.transpose(1, 2),\n"
             "                          beta=1.0, alpha=1.0 / math.sqrt(self.d_head))\n"
             "        p = torch.softmax(s, dim=-1).view(B, self.n_heads, T, T)\n"
             "        y = self.attn_drop(p) @ v\n")))
add("t31_triu_additive_mask", "ttr", "s + torch.full((T, T), -inf).triu(1)", edit("ttr",
    (T_CORE, "        s = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)\n"
             "        s = s + torch.full((T, T), float(\"-inf\"), device=x.device, dtype=s.dtype).triu(1)\n"
             "        y = self.attn_drop(torch.softmax(s, dim=-1)) @ v\n")))
add("t32_masked_fill_inplace", "ttr", "s.masked_fill_(~mask, -inf) in place on a local", edit("ttr",
    (T_CORE, "        s = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)\n"
             "        s.masked_fill_(~mask, float(\"-inf\"))\n"
             "        y = self.attn_drop(s.softmax(dim=-1)) @ v\n")))
add("t33_torch_where", "ttr", "torch.where(mask, s, -inf)", edit("ttr",
    (T_CORE, "        s = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)\n"
             "        s = torch.where(mask, s, torch.full_like(s, float(\"-inf\")))\n"
             "        y = self.attn_drop(torch.softmax(s, dim=-1)) @ v\n")))
add("t34_cumprod_decay", "ttr", "fixed decay via torch.cumprod(sigmoid(a)) then log (temporal='fixed_decay' default)", edit("ttr",
    ('temporal: str = "uniform",', 'temporal: str = "fixed_decay",'),
    ("            L = F.logsigmoid(self.decay_logit)[None, :, None] * torch.arange(T, device=x.device, dtype=x.dtype)\n",
     "            a = torch.sigmoid(self.decay_logit)[None, :, None].expand(1, -1, T)\n"
     "            L = torch.log(torch.cumprod(a, dim=-1))\n")))
add("t34b_logcumsumexp_pool", "ttr", "torch.logcumsumexp for a causal key-softmax pooling branch (prefix sums)", edit("ttr",
    (T_CORE, T_CORE + "        ks = k.mean(dim=-1)  # (B, H, T)\n"
                      "        lse = torch.logcumsumexp(ks, dim=-1)\n"
                      "        pooled = torch.cumsum(torch.exp(ks)[..., None] * v, dim=2) * torch.exp(-lse)[..., None]\n"
                      "        y = 0.5 * (y + pooled)\n")))
add("t35_fpad_token_shift", "ttr", "F.pad(k, (0, 0, 1, 0))[:, :, :T] key shift", edit("ttr",
    (T_QKV, T_QKV + "        k = 0.5 * (k + F.pad(k, (0, 0, 1, 0))[:, :, :T])\n")))
add("t36_unfold_sliding_window", "ttr", "F.pad + Tensor.unfold sliding-window attention", edit("ttr",
    (T_CORE, "        W = 16\n"
             "        kw = F.pad(k, (0, 0, W - 1, 0)).unfold(2, W, 1)  # (B, H, T, dh, W)\n"
             "        vw = F.pad(v, (0, 0, W - 1, 0)).unfold(2, W, 1)\n"
             "        s = torch.einsum(\"bhtd,bhtdw->bhtw\", q, kw) / math.sqrt(self.d_head)\n"
             "        pos = torch.arange(T, device=x.device)[:, None] - (W - 1) + torch.arange(W, device=x.device)[None, :]\n"
             "        s = s.masked_fill(pos < 0, float(\"-inf\"))\n"
             "        p = self.attn_drop(torch.softmax(s, dim=-1))\n"
             "        y = torch.einsum(\"bhtw,bhtdw->bhtd\", p, vw)\n")))
add("t37_roll_token_shift", "ttr", "torch.roll(k, 1, dims=2); k_prev[:, :, 0] = 0", edit("ttr",
    (T_QKV, T_QKV + "        k_prev = torch.roll(k, shifts=1, dims=2)\n"
                    "        k_prev[:, :, 0] = 0.0\n"
                    "        k = 0.5 * (k + k_prev)\n")))
add("t38_flip_alibi", "ttr", "ALiBi with torch.flip(slopes) and torch.arange(T, device=x.device, dtype=x.dtype)", edit("ttr",
    (T_CORE, "        H = self.n_heads\n"
             "        slopes = torch.flip(torch.pow(2.0, -8.0 * torch.arange(1, H + 1, device=x.device, dtype=x.dtype) / H), dims=[0])\n"
             "        pos = torch.arange(T, device=x.device, dtype=x.dtype)\n"
             "        alibi = -slopes[:, None, None] * (pos[:, None] - pos[None, :]).clamp_min(0)\n"
             "        s = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head) + alibi\n"
             "        y = self.attn_drop(torch.softmax(s.masked_fill(~mask, float(\"-inf\")), dim=-1)) @ v\n")))

# ---- helpers, decorators, annotations, constants
STATIC_HELPER = ("    @staticmethod\n"
                 "    def scaled_scores(q, k):\n"
                 "        return (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])\n\n")
add("t39_staticmethod_via_self", "ttr", "@staticmethod helper called as self.scaled_scores(q, k)", edit("ttr",
    (T_HEADS, STATIC_HELPER + T_HEADS),
    ("            s = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)\n", "            s = self.scaled_scores(q, k)\n")))
add("t40_staticmethod_via_class", "ttr", "@staticmethod helper called as TestTimeRegressionAttention.scaled_scores(q, k)", edit("ttr",
    (T_HEADS, STATIC_HELPER + T_HEADS),
    ("            s = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)\n",
     "            s = TestTimeRegressionAttention.scaled_scores(q, k)\n")))
add("t41_classmethod_helper", "ttr", "@classmethod causal_mask(cls, T, device) called via self", edit("ttr",
    (T_HEADS, "    @classmethod\n"
              "    def causal_mask(cls, T, device):\n"
              "        return torch.ones(T, T, dtype=torch.bool, device=device).tril()\n\n" + T_HEADS),
    (T_MASK, "        mask = self.causal_mask(T, x.device)\n")))
add("t42_module_helper_typing", "ttr", "module-level helper with Optional/Tuple annotations; forward(x, attn_mask: Optional[Tensor]=None)", edit("ttr",
    (T_FWD, "    def project(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:\n"
            "        return split_heads(self.w_q(x), self.n_heads), split_heads(self.w_k(x), self.n_heads), \\\n"
            "            split_heads(self.w_v(x), self.n_heads)\n\n"
            "    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:\n"),
    (T_QKV, "        q, k, v = self.project(x)\n"),
    (T_MASK, "        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril() if attn_mask is None else attn_mask\n"),
    prefix="from typing import Optional, Tuple\n\n\n"
           "def split_heads(t: torch.Tensor, n_heads: int) -> torch.Tensor:\n"
           "    B, T, D = t.shape\n"
           "    return t.view(B, T, n_heads, D // n_heads).transpose(1, 2)\n\n\n"))
add("t43_class_constants", "ttr", "class constants NEG_INF: float = -1e9, EPS = 1e-6 read as self.NEG_INF", edit("ttr",
    (T_DOC_END, T_DOC_END + "\n    NEG_INF: float = -1e9\n    EPS = 1e-6\n"),
    (T_MASKFILL, "            s = s.masked_fill(~mask, self.NEG_INF) if logt is None else s + logt\n"),
    ("                den = den + 1e-6\n", "                den = den + self.EPS\n")))
add("t86_typing_final_constants", "ttr", "class constants annotated with typing.Final / ClassVar", edit("ttr",
    (T_DOC_END, T_DOC_END + "\n    NEG_INF: Final[float] = -1e9\n    KERNELS: ClassVar[tuple] = (\"exp\", \"rbf_qknorm\", \"relu2\", \"polynomial\")\n"),
    ('        assert kernel in ("exp", "rbf_qknorm", "relu2", "polynomial")\n', "        assert kernel in self.KERNELS\n"),
    (T_MASKFILL, "            s = s.masked_fill(~mask, self.NEG_INF) if logt is None else s + logt\n"),
    prefix="from typing import ClassVar, Final\n\n\n"))

# ---- containers / modules
add("t44_modulelist", "ttr", "nn.ModuleList([nn.Linear(d, d) for _ in range(4)])", edit("ttr",
    ("        self.w_q = nn.Linear(d_model, d_model)\n        self.w_k = nn.Linear(d_model, d_model)\n"
     "        self.w_v = nn.Linear(d_model, d_model)\n        self.w_o = nn.Linear(d_model, d_model)\n",
     "        self.proj = nn.ModuleList([nn.Linear(d_model, d_model) for _ in range(4)])\n"),
    ("        for lin in (self.w_q, self.w_k, self.w_v, self.w_o):\n", "        for lin in self.proj:\n"),
    (T_QKV, "        q, k, v = (self.heads(lin(x)) for lin in self.proj[:3])\n"),
    (T_RETURN, "        return self.proj[3](y.transpose(1, 2).reshape(B, T, D))\n")))
add("t45_parameterlist_flinear", "ttr", "nn.ParameterList of weights/biases + F.linear", edit("ttr",
    ("        self.w_q = nn.Linear(d_model, d_model)\n        self.w_k = nn.Linear(d_model, d_model)\n"
     "        self.w_v = nn.Linear(d_model, d_model)\n        self.w_o = nn.Linear(d_model, d_model)\n" + T_INIT_LOOP,
     "        self.weights = nn.ParameterList([nn.Parameter(torch.randn(d_model, d_model) * 0.02) for _ in range(4)])\n"
     "        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(d_model)) for _ in range(4)])\n"),
    (T_QKV, "        q, k, v = (self.heads(F.linear(x, w, b)) for w, b in zip(self.weights[:3], self.biases[:3]))\n"),
    (T_RETURN, "        return F.linear(y.transpose(1, 2).reshape(B, T, D), self.weights[3], self.biases[3])\n")))
add("t46_sequential_out", "ttr", "self.w_o = nn.Sequential(nn.Linear(d, d), nn.Dropout(dropout))", edit("ttr",
    ("        self.w_o = nn.Linear(d_model, d_model)\n",
     "        self.w_o = nn.Sequential(nn.Linear(d_model, d_model), nn.Dropout(dropout))\n"),
    ("        for lin in (self.w_q, self.w_k, self.w_v, self.w_o):\n",
     "        for lin in (self.w_q, self.w_k, self.w_v, self.w_o[0]):\n")))
add("t47_gelu_tanh_module", "ttr", "self.v_act = nn.GELU(approximate='tanh') on values", edit("ttr",
    (T_DROP, T_DROP + "        self.v_act = nn.GELU(approximate=\"tanh\")\n"),
    (T_QKV, T_QKV + "        v = self.v_act(v)\n")))
add("t48_rmsnorm_qk", "ttr", "nn.RMSNorm(d_head, elementwise_affine=False) QK-norm", edit("ttr",
    (T_DROP, T_DROP + "        self.q_norm = nn.RMSNorm(self.d_head, elementwise_affine=False)\n"
                      "        self.k_norm = nn.RMSNorm(self.d_head, elementwise_affine=False)\n"),
    (T_QKV, T_QKV + "        q, k = self.q_norm(q), self.k_norm(k)\n")))
add("t97_dropout_or_identity", "ttr", "nn.Dropout(dropout) if dropout > 0 else nn.Identity()", edit("ttr",
    (T_DROP, "        self.attn_drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()\n")))
add("t87_weight_norm_out", "ttr", "nn.utils.parametrizations.weight_norm(nn.Linear(d, d)) on w_o (+d params)", edit("ttr",
    (T_INIT_LOOP, T_INIT_LOOP + "        self.w_o = nn.utils.parametrizations.weight_norm(self.w_o)\n")))

# ---- projections
add("t49_fused_qkv_chunk", "ttr", "self.qkv = nn.Linear(d, 3d); q, k, v = map(self.heads, self.qkv(x).chunk(3, dim=-1))", edit("ttr",
    ("        self.w_q = nn.Linear(d_model, d_model)\n        self.w_k = nn.Linear(d_model, d_model)\n"
     "        self.w_v = nn.Linear(d_model, d_model)\n",
     "        self.qkv = nn.Linear(d_model, 3 * d_model)\n"),
    ("        for lin in (self.w_q, self.w_k, self.w_v, self.w_o):\n", "        for lin in (self.qkv, self.w_o):\n"),
    (T_QKV, "        q, k, v = map(self.heads, self.qkv(x).chunk(3, dim=-1))\n")))
add("t50_explicit_params_uniform", "ttr", "nn.Parameter(torch.empty(3d, d).uniform_(-b, b)); F.linear; x.new_zeros(T, T) bias", edit("ttr",
    ("        self.w_q = nn.Linear(d_model, d_model)\n        self.w_k = nn.Linear(d_model, d_model)\n"
     "        self.w_v = nn.Linear(d_model, d_model)\n",
     "        bound = 1.0 / math.sqrt(d_model)\n"
     "        self.w_qkv = nn.Parameter(torch.empty(3 * d_model, d_model).uniform_(-bound, bound))\n"
     "        self.b_qkv = nn.Parameter(torch.zeros(3 * d_model))\n"),
    ("        for lin in (self.w_q, self.w_k, self.w_v, self.w_o):\n", "        for lin in (self.w_o,):\n"),
    (T_QKV, "        q, k, v = (self.heads(t) for t in F.linear(x, self.w_qkv, self.b_qkv).split(D, dim=-1))\n"),
    (T_CORE, "        bias = x.new_zeros(T, T).masked_fill(~mask, float(\"-inf\"))\n"
             "        s = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head) + bias\n"
             "        y = self.attn_drop(torch.softmax(s, dim=-1)) @ v\n")))
add("t54_qkv_view_permute_unbind", "ttr", "qkv.view(B,T,3,H,dh).permute(2,0,3,1,4).unbind(0); y.transpose(1,2).contiguous().view(B,T,D)", edit("ttr",
    ("        self.w_q = nn.Linear(d_model, d_model)\n        self.w_k = nn.Linear(d_model, d_model)\n"
     "        self.w_v = nn.Linear(d_model, d_model)\n",
     "        self.qkv = nn.Linear(d_model, 3 * d_model)\n"),
    ("        for lin in (self.w_q, self.w_k, self.w_v, self.w_o):\n", "        for lin in (self.qkv, self.w_o):\n"),
    (T_QKV, "        qkv = self.qkv(x).view(B, T, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)\n"
            "        q, k, v = qkv.unbind(0)\n"),
    (T_RETURN, "        return self.w_o(y.transpose(1, 2).contiguous().view(B, T, D))\n")))
add("t55_per_head_loop_split_cat", "ttr", "per-head Python loop over q.split(d_head, -1), torch.stack / torch.cat", edit("ttr",
    (T_QKV + T_MASK + T_CORE + T_RETURN,
     "        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()\n"
     "        qs = self.w_q(x).split(self.d_head, dim=-1)\n"
     "        ks = self.w_k(x).split(self.d_head, dim=-1)\n"
     "        vs = self.w_v(x).split(self.d_head, dim=-1)\n"
     "        outs = []\n"
     "        for qh, kh, vh in zip(qs, ks, vs):\n"
     "            s = (qh @ kh.transpose(-2, -1)) / math.sqrt(self.d_head)\n"
     "            p = torch.softmax(s.masked_fill(~mask, float(\"-inf\")), dim=-1)\n"
     "            outs.append(self.attn_drop(p) @ vh)\n"
     "        y = torch.stack(outs, dim=2)  # (B, T, H, dh)\n"
     "        return self.w_o(torch.cat(y.unbind(2), dim=-1))\n")))

# ---- SDPA / MHA
add("t52_sdpa_is_causal_dropout", "ttr", "F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p if self.training else 0.0)", edit("ttr",
    (T_CORE, "        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,\n"
             "                                           dropout_p=self.attn_drop.p if self.training else 0.0)\n")))
add("t53_sdpa_bool_attn_mask", "ttr", "F.scaled_dot_product_attention(q, k, v, attn_mask=mask) (bool mask, eval dropout)", edit("ttr",
    (T_CORE, "        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,\n"
             "                                           dropout_p=self.attn_drop.p if self.training else 0.0)\n")))
MHA = '''class TestTimeRegressionAttention(nn.Module):
    """Causal multi-head attention through torch's nn.MultiheadAttention (4 d^2 + 4 d parameters)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.1, max_seq_len: int = 128):
        super().__init__()
        self.mha = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)

    def forward(self, x):
        T = x.shape[1]
        MASK_LINE
        y, _ = self.mha(x, x, x, attn_mask=mask, need_weights=False, is_causal=True)
        return y
'''
add("t63_nn_multiheadattention", "ttr", "nn.MultiheadAttention(batch_first=True) with bool causal mask, is_causal=True",
    MHA.replace("MASK_LINE", "mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)"))
add("t64_generate_square_subsequent_mask", "ttr", "nn.Transformer.generate_square_subsequent_mask(T, device=x.device) with MHA",
    MHA.replace("MASK_LINE", "mask = nn.Transformer.generate_square_subsequent_mask(T, device=x.device)"))

# ---- style idioms
add("t56_asserts_extra_repr", "ttr", "assert with f-string messages, extra_repr() method", edit("ttr",
    ("        B, T, D = x.shape\n" + T_QKV,
     "        assert x.dim() == 3, f\"expected (batch, seq, d_model), got shape {tuple(x.shape)}\"\n"
     "        B, T, D = x.shape\n"
     "        assert D == self.n_heads * self.d_head, f\"d_model mismatch: {D} != {self.n_heads} * {self.d_head}\"\n" + T_QKV),
    (T_HEADS, "    def extra_repr(self) -> str:\n"
              "        return f\"n_heads={self.n_heads}, d_head={self.d_head}, kernel={self.kernel!r}, temporal={self.temporal!r}\"\n\n"
              + T_HEADS)))
add("t57_super_classname_self", "ttr", "super(TestTimeRegressionAttention, self).__init__()", edit("ttr",
    (T_SUPER, "        super(TestTimeRegressionAttention, self).__init__()\n")))
add("t58_nn_module_init_explicit", "ttr", "nn.Module.__init__(self)", edit("ttr",
    (T_SUPER, "        nn.Module.__init__(self)\n")))
add("t59_self_class_name", "ttr", "self.__class__.__name__ in extra_repr / error message", edit("ttr",
    ("        assert d_model % n_heads == 0\n",
     "        assert d_model % n_heads == 0, f\"{self.__class__.__name__}: d_model must be divisible by n_heads\"\n")))
add("t59b_type_self_name", "ttr", "type(self).__name__ in error message (control; the advised form)", edit("ttr",
    ("        assert d_model % n_heads == 0\n",
     "        assert d_model % n_heads == 0, f\"{type(self).__name__}: d_model must be divisible by n_heads\"\n")))
add("t60_lru_cache_module_fn", "ttr", "@functools.lru_cache module-level causal_mask(T, device)", edit("ttr",
    (T_MASK, "        mask = causal_mask(T, x.device)\n"),
    prefix="import functools\n\n\n@functools.lru_cache(maxsize=16)\n"
           "def causal_mask(T: int, device: torch.device) -> torch.Tensor:\n"
           "    return torch.ones(T, T, dtype=torch.bool, device=device).tril()\n\n\n"))
add("t61_lru_cache_method", "ttr", "@functools.lru_cache on a method causal_mask(self, T, device)", edit("ttr",
    (T_HEADS, "    @functools.lru_cache(maxsize=16)\n"
              "    def causal_mask(self, T, device):\n"
              "        return torch.ones(T, T, dtype=torch.bool, device=device).tril()\n\n" + T_HEADS),
    (T_MASK, "        mask = self.causal_mask(T, x.device)\n"),
    prefix="import functools\n\n\n"))
add("t62_cached_property", "ttr", "@functools.cached_property scale (float from d_head)", edit("ttr",
    (T_HEADS, "    @functools.cached_property\n"
              "    def scale(self) -> float:\n"
              "        return 1.0 / math.sqrt(self.d_head)\n\n" + T_HEADS),
    ("            s = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)\n",
     "            s = (q @ k.transpose(-2, -1)) * self.scale\n"),
    prefix="import functools\n\n\n"))
add("t62b_property", "ttr", "@property scale (control for t62)", edit("ttr",
    (T_HEADS, "    @property\n"
              "    def scale(self) -> float:\n"
              "        return 1.0 / math.sqrt(self.d_head)\n\n" + T_HEADS),
    ("            s = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)\n",
     "            s = (q @ k.transpose(-2, -1)) * self.scale\n")))
add("t65_torch_compile_decorator", "ttr", "@torch.compile on a module-level helper", edit("ttr",
    ("        return F.elu(t) + 1.0 if self.feature_map == \"elu1\" else F.softplus(t)\n",
     "        return elu1(t) if self.feature_map == \"elu1\" else F.softplus(t)\n"),
    prefix="@torch.compile\ndef elu1(t):\n    return F.elu(t) + 1.0\n\n\n"))
add("t66_cuda_is_available", "ttr", "if torch.cuda.is_available() ... else ...", edit("ttr",
    (T_CORE, "        if torch.cuda.is_available() and x.is_cuda:\n"
             "            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)\n"
             "        else:\n"
             "            gamma = self.regression_weights(q, k, x, mask)\n"
             "            y = self.fit_and_query(gamma, q, k, v, x)\n")))
add("t67_from_torch_import_tensor", "ttr", "from torch import Tensor; def forward(self, x: Tensor) -> Tensor", edit("ttr",
    (T_FWD, "    def forward(self, x: Tensor) -> Tensor:\n"),
    prefix="from torch import Tensor\n\n\n"))
add("t69_no_grad_decorated_helper", "ttr", "@torch.no_grad() decorated method computing the row max", edit("ttr",
    (T_HEADS, "    @torch.no_grad()\n"
              "    def row_max(self, s):\n"
              "        return s.amax(dim=-1, keepdim=True)\n\n" + T_HEADS),
    (T_EXP, "            return torch.exp(s - self.row_max(s))\n")))
add("t70_softmax_float_type_as", "ttr", "LLaMA style F.softmax(s.float(), dim=-1).type_as(q)", edit("ttr",
    (T_CORE, "        s = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)\n"
             "        s = s.masked_fill(~mask, float(\"-inf\"))\n"
             "        p = F.softmax(s.float(), dim=-1).type_as(q)\n"
             "        y = self.attn_drop(p) @ v\n")))
add("t72_torch_assert", "ttr", "torch._assert(x.dim() == 3, msg) (fx-friendly assert)", edit("ttr",
    ("        B, T, D = x.shape\n" + T_QKV, "        torch._assert(x.dim() == 3, \"expected (B, T, D)\")\n"
                                          "        B, T, D = x.shape\n" + T_QKV)))
add("t80_sdpa_kernel_context", "ttr", "with torch.nn.attention.sdpa_kernel(SDPBackend.MATH): F.scaled_dot_product_attention(...)", edit("ttr",
    (T_CORE, "        with sdpa_kernel(SDPBackend.MATH):\n"
             "            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)\n"),
    prefix="from torch.nn.attention import SDPBackend, sdpa_kernel\n\n\n"))
add("t84_dunder_constants", "ttr", "TorchScript __constants__ = ['n_heads', 'd_head'] class attribute", edit("ttr",
    (T_DOC_END, T_DOC_END + "\n    __constants__ = [\"n_heads\", \"d_head\"]\n")))
add("t85_einops_rearrange", "ttr", "from einops import rearrange (allowed by the policy, not by the docstring)", edit("ttr",
    (T_QKV, "        q, k, v = (rearrange(lin(x), \"b t (h d) -> b h t d\", h=self.n_heads) for lin in (self.w_q, self.w_k, self.w_v))\n"),
    (T_RETURN, "        return self.w_o(rearrange(y, \"b h t d -> b t (h d)\"))\n"),
    prefix="from einops import rearrange\n\n\n"))
add("t88_seed_attribute", "ttr", "keyword-only knob seed: int = 0 stored as self.seed", edit("ttr",
    (T_SIG, 'solver: str = "closed_form", feature_map: str = "elu1", seed: int = 0):\n'),
    (T_DROP, T_DROP + "        self.seed = seed  # for reproducible random features\n")))
add("t92_helper_rotary_module", "ttr", "helper class RotaryEmbedding(nn.Module) with buffer, instantiated in __init__", edit("ttr",
    (T_DROP, T_DROP + "        self.rotary = RotaryEmbedding(self.d_head, max_seq_len)\n"),
    (T_QKV, T_QKV + "        q, k = self.rotary(q), self.rotary(k)\n"),
    prefix="class RotaryEmbedding(nn.Module):\n"
           "    def __init__(self, dim: int, max_seq_len: int, base: float = 10000.0):\n"
           "        super().__init__()\n"
           "        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))\n"
           "        freqs = torch.outer(torch.arange(max_seq_len).float(), inv_freq)\n"
           "        self.register_buffer(\"cos\", torch.cat((freqs, freqs), dim=-1).cos(), persistent=False)\n"
           "        self.register_buffer(\"sin\", torch.cat((freqs, freqs), dim=-1).sin(), persistent=False)\n\n"
           "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
           "        T = x.shape[-2]\n"
           "        x1, x2 = x.chunk(2, dim=-1)\n"
           "        return x * self.cos[:T] + torch.cat((-x2, x1), dim=-1) * self.sin[:T]\n\n\n"))

# ---------------------------------------------------------------------------------------------- cd
C_DROP = "        self.attn_drop = nn.Dropout(dropout)\n"
add("c01_rotation_inv_freq_buffer", "cd", "transition='rotation' default, inv_freq as register_buffer(persistent=False)", edit("cd",
    ('transition: str = "identity",', 'transition: str = "rotation",'),
    (C_DROP, C_DROP + "        half = self.d_head // 2\n"
                      "        self.register_buffer(\"inv_freq\", torch.pow(10000.0, -torch.arange(half, dtype=torch.float32) / half),\n"
                      "                             persistent=False)\n"),
    ("        inv_freq = torch.pow(10000.0, -torch.arange(half, device=t.device, dtype=torch.float32) / half)\n",
     "        inv_freq = self.inv_freq\n")))
add("c02_sdpa_scale_kwarg", "cd", "F.scaled_dot_product_attention(c, b, v, is_causal=True, scale=1.0) for the default path", edit("cd",
    ("        logd = self.log_decay(x, mask)\n",
     "        if self.transition_kind == \"identity\" and self.readout_kind == \"exp\" and self.norm_kind == \"sum\":\n"
     "            y = F.scaled_dot_product_attention(c, b, v, is_causal=True, scale=1.0,\n"
     "                                               dropout_p=self.attn_drop.p if self.training else 0.0)\n"
     "            return self.w_o(y.transpose(1, 2).reshape(B, T, D))\n"
     "        logd = self.log_decay(x, mask)\n")))
add("c03_output_rms_f_rms_norm", "cd", "normalization='output_rms' default computed with F.rms_norm", edit("cd",
    ('normalization: str = "sum"):', 'normalization: str = "output_rms"):'),
    ("            y = y * torch.rsqrt(y.pow(2).mean(dim=-1, keepdim=True) + 1e-6)\n",
     "            y = F.rms_norm(y, (self.d_head,), eps=1e-6)\n")))
add("c04_named_parameters_init", "cd", "for name, p in self.named_parameters(): if name.endswith('bias'): nn.init.zeros_(p)", edit("cd",
    ("        for lin in (self.w_q, self.w_k, self.w_v, self.w_o):\n"
     "            nn.init.normal_(lin.weight, 0.0, 0.02)\n"
     "            nn.init.zeros_(lin.bias)\n",
     "        for name, p in self.named_parameters():\n"
     "            if name.endswith(\"weight\"):\n"
     "                nn.init.normal_(p, mean=0.0, std=0.02)\n"
     "            elif name.endswith(\"bias\"):\n"
     "                nn.init.zeros_(p)\n")))
add("c05_selective_decay_autocast_fp32_cumsum", "cd", "transition='selective_decay' with torch.autocast(enabled=False) float32 cumsum", edit("cd",
    ('transition: str = "identity",', 'transition: str = "selective_decay",'),
    ("            L = torch.cumsum(-dt * torch.exp(self.A_log)[None, :, None], dim=-1)\n",
     "            with torch.autocast(device_type=x.device.type, enabled=False):\n"
     "                L = torch.cumsum(-dt.float() * torch.exp(self.A_log.float())[None, :, None], dim=-1).to(x.dtype)\n")))
add("c06_partial_readout_on_self", "cd", "self.phi = functools.partial(F.elu, alpha=1.0) readout picked in __init__ (readout='elu1')", edit("cd",
    ('readout: str = "exp",', 'readout: str = "elu1",'),
    (C_DROP, C_DROP + "        self.phi = functools.partial(F.elu, alpha=1.0)\n"),
    ("            a = F.elu(s) + 1.0\n", "            a = self.phi(s) + 1.0\n"),
    prefix="import functools\n\n\n"))

# ---------------------------------------------------------------------------------------------- mm
M_DROP = "        self.attn_drop = nn.Dropout(dropout)\n"
add("m01_toeplitz_unfold_flip", "mm", "structure='toeplitz' built with F.pad + torch.flip + Tensor.unfold", edit("mm",
    ('structure: str = "softmax_dense",', 'structure: str = "toeplitz",'),
    ("            idx = torch.arange(T, device=x.device)\n"
     "            lag = (idx[:, None] - idx[None, :]).clamp_min(0)\n"
     "            return self.toeplitz_kernel(T, x.device, q.dtype)[:, lag][None]\n",
     "            w = self.toeplitz_kernel(T, x.device, q.dtype)  # (H, T), w[:, l] = kernel at lag l\n"
     "            return F.pad(torch.flip(w, dims=[-1]), (0, T - 1)).unfold(-1, T, 1).flip(-2)[None]\n")))
add("m02_einsum_finfo_softmax", "mm", "einsum scores + masked_fill(finfo.min) + F.softmax in normalize_M", edit("mm",
    ("        s = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)  # low rank c_i^T b_j\n",
     "        s = torch.einsum(\"bhtd,bhsd->bhts\", q, k) * self.d_head ** -0.5  # low rank c_i^T b_j\n"),
    ("            s = s.masked_fill(~mask, float(\"-inf\"))\n"
     "            p = torch.exp(s - s.amax(dim=-1, keepdim=True))\n"
     "            return p / p.sum(dim=-1, keepdim=True)\n",
     "            return F.softmax(s.masked_fill(~mask, torch.finfo(s.dtype).min), dim=-1)\n")))
add("m03_moduledict_projections", "mm", "nn.ModuleDict({'q','k','v','o'}) of projections", edit("mm",
    ("        self.w_q = nn.Linear(d_model, d_model)\n        self.w_k = nn.Linear(d_model, d_model)\n"
     "        self.w_v = nn.Linear(d_model, d_model)\n        self.w_o = nn.Linear(d_model, d_model)\n"
     "        for lin in (self.w_q, self.w_k, self.w_v, self.w_o):\n",
     "        self.proj = nn.ModuleDict({name: nn.Linear(d_model, d_model) for name in (\"q\", \"k\", \"v\", \"o\")})\n"
     "        for lin in self.proj.values():\n"),
    ("        q, k, v = self.heads(self.w_q(x)), self.heads(self.w_k(x)), self.heads(self.w_v(x))\n",
     "        q, k, v = (self.heads(self.proj[name](x)) for name in (\"q\", \"k\", \"v\"))\n"),
    ("        return self.w_o(y.transpose(1, 2).reshape(B, T, D))\n",
     "        return self.proj[\"o\"](y.transpose(1, 2).reshape(B, T, D))\n")))
add("m04_relpos_buffer_hadamard_decay", "mm", "compose='hadamard_decay' with a relative-distance register_buffer sliced [:T, :T]", edit("mm",
    ('compose: str = "none",', 'compose: str = "hadamard_decay",'),
    (M_DROP, M_DROP + "        pos = torch.arange(max_seq_len, dtype=torch.float32)\n"
                      "        self.register_buffer(\"rel\", (pos[:, None] - pos[None, :]), persistent=False)\n"),
    ("        L = F.logsigmoid(self.decay_logit)[:, None] * torch.arange(T, device=s.device, dtype=s.dtype)\n"
     "        logd = self.causal_log_decay(L, mask)\n",
     "        logd = (F.logsigmoid(self.decay_logit)[:, None, None] * self.rel[:T, :T].to(s.dtype)).masked_fill(~mask, float(\"-inf\"))\n")))
add("m05_row_l1_f_normalize", "mm", "m_norm='row_l1' via F.normalize(s, p=1, dim=-1, eps=1e-6)", edit("mm",
    ('m_norm: str = "softmax",', 'm_norm: str = "row_l1",'),
    ("            return s / (s.abs().sum(dim=-1, keepdim=True) + 1e-6)\n",
     "            return F.normalize(s, p=1.0, dim=-1, eps=1e-6)\n")))
add("m06_plain_list_of_modules", "mm", "self.in_proj = [self.w_q, self.w_k, self.w_v] plain list used to iterate", edit("mm",
    (M_DROP, M_DROP + "        self.in_proj = [self.w_q, self.w_k, self.w_v]\n"),
    ("        q, k, v = self.heads(self.w_q(x)), self.heads(self.w_k(x)), self.heads(self.w_v(x))\n",
     "        q, k, v = [self.heads(lin(x)) for lin in self.in_proj]\n")))

# ---------------------------------------------------------------------------------------------- batch 2
add("t11d_generator_on_self", "ttr", "self.feature_gen = torch.Generator().manual_seed(seed) kept for redrawing (not used in forward)", edit("ttr",
    (T_DROP, T_DROP + "        self.feature_gen = torch.Generator().manual_seed(0)\n"),
    (T_HEADS, "    def redraw(self):\n"
              "        return torch.randn(self.d_head, self.d_head, generator=self.feature_gen)\n\n" + T_HEADS)))
add("t62c_cached_property_imported", "ttr", "from functools import cached_property; @cached_property scale", edit("ttr",
    (T_HEADS, "    @cached_property\n"
              "    def scale(self) -> float:\n"
              "        return 1.0 / math.sqrt(self.d_head)\n\n" + T_HEADS),
    ("            s = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)\n",
     "            s = (q @ k.transpose(-2, -1)) * self.scale\n"),
    prefix="from functools import cached_property\n\n\n"))
add("t98_setattr_loop", "ttr", "for name in (...): setattr(self, name, nn.Linear(d, d))", edit("ttr",
    ("        self.w_q = nn.Linear(d_model, d_model)\n        self.w_k = nn.Linear(d_model, d_model)\n"
     "        self.w_v = nn.Linear(d_model, d_model)\n        self.w_o = nn.Linear(d_model, d_model)\n",
     "        for name in (\"w_q\", \"w_k\", \"w_v\", \"w_o\"):\n"
     "            setattr(self, name, nn.Linear(d_model, d_model))\n")))
add("t99_add_module_loop", "ttr", "for name in (...): self.add_module(name, nn.Linear(d, d)) (control for t98)", edit("ttr",
    ("        self.w_q = nn.Linear(d_model, d_model)\n        self.w_k = nn.Linear(d_model, d_model)\n"
     "        self.w_v = nn.Linear(d_model, d_model)\n        self.w_o = nn.Linear(d_model, d_model)\n",
     "        for name in (\"w_q\", \"w_k\", \"w_v\", \"w_o\"):\n"
     "            self.add_module(name, nn.Linear(d_model, d_model))\n")))
add("t100_orthogonal_parametrization", "ttr", "nn.utils.parametrizations.orthogonal(self.w_q) (allowed module)", edit("ttr",
    (T_INIT_LOOP, T_INIT_LOOP + "        self.w_q = nn.utils.parametrizations.orthogonal(self.w_q)\n")))
add("t101_closure_in_forward", "ttr", "nested def causal_softmax(s) closure inside forward", edit("ttr",
    (T_CORE, "        def causal_softmax(s):\n"
             "            return torch.softmax(s.masked_fill(~mask, float(\"-inf\")), dim=-1)\n\n"
             "        y = self.attn_drop(causal_softmax(q @ k.transpose(-2, -1) / math.sqrt(self.d_head))) @ v\n")))
add("t104_autocast_decorator", "ttr", "@torch.autocast(device_type='cpu', enabled=False) on a helper method", edit("ttr",
    (T_HEADS, "    @torch.autocast(device_type=\"cpu\", enabled=False)\n"
              "    def stable_exp(self, s):\n"
              "        s = s.float()\n"
              "        return torch.exp(s - s.amax(dim=-1, keepdim=True))\n\n" + T_HEADS),
    (T_EXP, "            return self.stable_exp(s)\n")))
add("t113_function_default_arg", "ttr", "keyword-only knob activation: Callable = F.elu (function as default, control for t06)", edit("ttr",
    (T_SIG, 'solver: str = "closed_form", feature_map: str = "elu1", activation: Callable = F.elu):\n'),
    (T_DROP, T_DROP + "        self.activation = activation\n"),
    ('        return F.elu(t) + 1.0 if self.feature_map == "elu1" else F.softplus(t)\n',
     '        return self.activation(t) + 1.0 if self.feature_map == "elu1" else F.softplus(t)\n'),
    prefix="from typing import Callable\n\n\n"))
add("t117_factory_kwargs", "ttr", "torch-style device=None, dtype=None knobs; factory_kwargs = {'device': device, 'dtype': dtype}", edit("ttr",
    (T_SIG, 'solver: str = "closed_form", feature_map: str = "elu1", device=None, dtype=None):\n'),
    ("        self.w_q = nn.Linear(d_model, d_model)\n        self.w_k = nn.Linear(d_model, d_model)\n"
     "        self.w_v = nn.Linear(d_model, d_model)\n        self.w_o = nn.Linear(d_model, d_model)\n",
     "        factory_kwargs = {\"device\": device, \"dtype\": dtype}\n"
     "        self.w_q = nn.Linear(d_model, d_model, **factory_kwargs)\n"
     "        self.w_k = nn.Linear(d_model, d_model, **factory_kwargs)\n"
     "        self.w_v = nn.Linear(d_model, d_model, **factory_kwargs)\n"
     "        self.w_o = nn.Linear(d_model, d_model, **factory_kwargs)\n")))
add("t118_t5_relative_bias_embedding", "ttr", "T5-style causal relative position bucket + nn.Embedding(32, H) bias (+64 params)", edit("ttr",
    (T_DROP, T_DROP + "        self.num_buckets, self.max_distance = 32, max_seq_len\n"
                      "        self.rel_bias = nn.Embedding(self.num_buckets, n_heads)\n"
                      "        nn.init.zeros_(self.rel_bias.weight)\n"),
    (T_HEADS, "    def relative_bucket(self, rel):\n"
              "        n = (-rel).clamp_min(0)  # causal: distance to the past\n"
              "        max_exact = self.num_buckets // 2\n"
              "        is_small = n < max_exact\n"
              "        large = max_exact + (torch.log(n.float().clamp_min(1) / max_exact) / math.log(self.max_distance / max_exact)\n"
              "                             * (self.num_buckets - max_exact)).long()\n"
              "        large = torch.min(large, torch.full_like(large, self.num_buckets - 1))\n"
              "        return torch.where(is_small, n, large)\n\n" + T_HEADS),
    (T_CORE, "        pos = torch.arange(T, device=x.device)\n"
             "        bias = self.rel_bias(self.relative_bucket(pos[None, :] - pos[:, None])).permute(2, 0, 1)  # (H, T, T)\n"
             "        s = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head) + bias\n"
             "        y = self.attn_drop(torch.softmax(s.masked_fill(~mask, float(\"-inf\")), dim=-1)) @ v\n")))
add("t119_plain_config_class_constants", "ttr", "plain helper class AttnDefaults: NEG_INF = -1e9 (no base), read as AttnDefaults.NEG_INF", edit("ttr",
    (T_MASKFILL, "            s = s.masked_fill(~mask, AttnDefaults.NEG_INF) if logt is None else s + logt\n"),
    prefix="class AttnDefaults:\n    NEG_INF = -1e9\n    EPS = 1e-6\n\n\n"))
add("t119b_plain_config_instance_on_self", "ttr", "plain config object stored on self: self.cfg = AttnConfig(eps=1e-6)", edit("ttr",
    (T_DROP, T_DROP + "        self.cfg = AttnConfig(eps=1e-6)\n"),
    ("                den = den + 1e-6\n", "                den = den + self.cfg.eps\n"),
    prefix="class AttnConfig:\n    def __init__(self, eps: float = 1e-6):\n        self.eps = eps\n\n\n"))

# ---------------------------------------------------------------------------------------------- batch 3
add("t121_literal_hyphen_option", "ttr", "knob annotated Literal['layer-norm', 'rms-norm', 'none'] (hyphenated option strings)", edit("ttr",
    (T_SIG, 'solver: str = "closed_form", feature_map: str = "elu1",\n'
            '                 qk_norm: Literal["layer-norm", "rms-norm", "none"] = "none"):\n'),
    (T_DROP, T_DROP + "        self.qk_norm = qk_norm\n"),
    prefix="from typing import Literal\n\n\n"))
add("t121b_literal_plain_options", "ttr", "knob annotated Literal['exp', 'rbf_qknorm', 'relu2', 'polynomial'] (control)", edit("ttr",
    ('kernel: str = "exp",', 'kernel: Literal["exp", "rbf_qknorm", "relu2", "polynomial"] = "exp",'),
    prefix="from typing import Literal\n\n\n"))
add("t122_nn_parameter_module_import", "ttr", "from torch.nn.parameter import Parameter", edit("ttr",
    ("            self.decay_logit = nn.Parameter(torch.log(a) - torch.log1p(-a))\n",
     "            self.decay_logit = Parameter(torch.log(a) - torch.log1p(-a))\n"),
    prefix="from torch.nn.parameter import Parameter\n\n\n"))
add("t123_causal_depthwise_conv1d", "ttr", "short causal depthwise nn.Conv1d(d, d, 4, groups=d, padding=3)[..., :T] on keys (+5d params)", edit("ttr",
    (T_DROP, T_DROP + "        self.k_conv = nn.Conv1d(d_model, d_model, kernel_size=4, groups=d_model, padding=3)\n"),
    (T_QKV, "        k_in = self.k_conv(self.w_k(x).transpose(1, 2))[..., :T].transpose(1, 2)\n"
            "        q, k, v = self.heads(self.w_q(x)), self.heads(k_in), self.heads(self.w_v(x))\n")))
add("t120_autograd_grad_inner_loss", "ttr", "TTT-style inner loss gradient with torch.autograd.grad(create_graph=True) under torch.enable_grad()", edit("ttr",
    (T_DROP, T_DROP + "        self.w0 = nn.Parameter(torch.zeros(n_heads))  # initial fast weight W0 = w0_h * I\n"),
    (T_CORE, "        with torch.enable_grad():\n"
             "            pred = self.w0[None, :, None, None] * k  # m_0(k_i) = W0 k_i\n"
             "            inner = 0.5 * (v - pred).pow(2).sum()\n"
             "            (g,) = torch.autograd.grad(inner, pred, create_graph=True)  # = pred - v, position by position\n"
             "        a = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)\n"
             "        a = a.masked_fill(~mask, 0.0) / torch.arange(1, T + 1, device=x.device, dtype=x.dtype)[:, None]\n"
             "        y = self.w0[None, :, None, None] * q - self.attn_drop(a) @ g  # one gradient step, evaluated at q_t\n")))
add("t124_torch_func_grad", "ttr", "torch.func.grad for the inner loss gradient", edit("ttr",
    (T_DROP, T_DROP + "        self.w0 = nn.Parameter(torch.zeros(n_heads))\n"),
    (T_CORE, "        pred = self.w0[None, :, None, None] * k\n"
             "        g = torch.func.grad(lambda p: 0.5 * (v - p).pow(2).sum())(pred)\n"
             "        a = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)\n"
             "        a = a.masked_fill(~mask, 0.0) / torch.arange(1, T + 1, device=x.device, dtype=x.dtype)[:, None]\n"
             "        y = self.w0[None, :, None, None] * q - self.attn_drop(a) @ g\n")))
add("t125_store_last_attention", "ttr", "self.last_attn = p.detach() for inspection (state written in forward)", edit("ttr",
    (T_DROP, T_DROP + "        self.last_attn = None\n"),
    ("            return self.attn_drop(gamma / den) @ v\n",
     "            p = gamma / den\n"
     "            self.last_attn = p.detach()\n"
     "            return self.attn_drop(p) @ v\n")))
add("t127_topk_sparse_attention", "ttr", "top-k sparse attention: s.topk(k).values[..., -1:] threshold then masked_fill", edit("ttr",
    (T_CORE, "        s = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)\n"
             "        s = s.masked_fill(~mask, float(\"-inf\"))\n"
             "        kth = s.topk(min(16, T), dim=-1).values[..., -1:]\n"
             "        s = s.masked_fill(s < kth, float(\"-inf\"))\n"
             "        y = self.attn_drop(torch.softmax(s, dim=-1)) @ v\n")))
add("t128_match_statement", "ttr", "match/case on the feature_map knob", edit("ttr",
    ('        return F.elu(t) + 1.0 if self.feature_map == "elu1" else F.softplus(t)\n',
     '        match self.feature_map:\n'
     '            case "elu1":\n'
     '                return F.elu(t) + 1.0\n'
     '            case _:\n'
     '                return F.softplus(t)\n')))
add("t129_pep604_annotations", "ttr", "def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor", edit("ttr",
    (T_FWD, "    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:\n")))


# ---------------------------------------------------------------------------------------------- refused on purpose
_ALLOW_LIST = "outside the allow-list"
_TORCH_CLASS = "a torch class may only be instantiated, tested, derived from or named in an annotation"
_STATE = "state kept between calls"
DELIBERATE = {
    "t01_checkpoint_attr": "torch.utils is outside the allow-list: checkpointing recomputes the forward",
    "t02_checkpoint_import": "torch.utils is outside the allow-list: checkpointing recomputes the forward",
    "t27_jit_is_scripting": _ALLOW_LIST,
    "t27b_compiler_is_compiling": _ALLOW_LIST,
    "t65_torch_compile_decorator": _ALLOW_LIST,
    "t66_cuda_is_available": _ALLOW_LIST,
    "t80_sdpa_kernel_context": _ALLOW_LIST,
    "t124_torch_func_grad": _ALLOW_LIST,
    "t84_dunder_constants": _ALLOW_LIST,
    "t05_partial_layernorm_factory": _TORCH_CLASS,
    "t06_class_default_arg": _TORCH_CLASS,
    "t06b_class_knob_in_init_body": _TORCH_CLASS,
    "t07_typing_cast": _TORCH_CLASS,
    "t07b_typing_cast_Tensor_name": _TORCH_CLASS,
    "t15_module_const_finfo": "module-level constants are computed from literals",
    "t60_lru_cache_module_fn": "a cached function's results outlive every call: a store, or a call counter that "
                               "changes the work once the gate has run; a mask is a buffer (t25)",
    "t61_lru_cache_method": _STATE,
    "t62_cached_property": _STATE,
    "t62c_cached_property_imported": _STATE,
    "t125_store_last_attention": _STATE,
    "t59_self_class_name": "dunders",
    "t98_setattr_loop": "setattr",
    "t122_nn_parameter_module_import": _ALLOW_LIST,
    "t72_torch_assert": "private torch attribute",
    "t100_orthogonal_parametrization": "costs 1.21x the baseline's FLOPs",
}

CANDIDATES = [Candidate(name, fw, idiom, block, DELIBERATE.get(name)) for name, fw, idiom, block in _ADDED]
assert len({c.name for c in CANDIDATES}) == len(CANDIDATES) and set(DELIBERATE) <= {c.name for c in CANDIDATES}


def candidates() -> list[Candidate]:
    return list(CANDIDATES)

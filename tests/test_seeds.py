"""The three seed programs: defaults equal causal softmax MHA, identical parameters, runnable, and every
framework knob gives a finite, causal, in-budget attention."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from harness.trusted.frameworks import FRAMEWORKS, REPO_ROOT

D_MODEL, N_HEADS, MAX_LEN = 64, 4, 128
BASE_PARAMS = 4 * D_MODEL**2 + 4 * D_MODEL
START, END = "# EVOLVE-BLOCK-START", "# EVOLVE-BLOCK-END"

KNOBS = {
    "cd": [
        {"transition": "scalar_decay"},
        {"transition": "selective_decay"},
        {"transition": "rotation"},
        {"transition": "scalar_decay", "decay_placement": "outside"},
        {"transition": "selective_decay", "decay_placement": "outside"},
        {"transition": "selective_decay", "decay_placement": "outside", "readout": "elu1"},
        {"transition": "selective_decay", "readout": "identity", "normalization": "none"},
        {"impulse": "learned"},
        {"impulse": "input"},
        {"readout": "identity"},
        {"readout": "softplus"},
        {"readout": "elu1"},
        {"readout": "relu2"},
        {"normalization": "none"},
        {"normalization": "learned"},
        {"normalization": "output_rms"},
        {"transition": "selective_decay", "impulse": "input", "normalization": "learned"},
    ],
    "ttr": [
        {"kernel": "rbf_qknorm"},
        {"kernel": "relu2"},
        {"kernel": "polynomial"},
        {"temporal": "fixed_decay"},
        {"temporal": "gated_decay"},
        {"kernel": "rbf_qknorm", "temporal": "gated_decay"},
        {"kernel": "relu2", "temporal": "fixed_decay"},
        {"function_class": "linear", "solver": "no_covariance"},
        {"function_class": "linear", "solver": "no_covariance", "feature_map": "softplus"},
        {"function_class": "linear", "solver": "no_covariance", "temporal": "gated_decay"},
    ],
    "mm": [
        {"structure": "low_rank"},
        {"structure": "low_rank", "m_norm": "row_l1"},
        {"structure": "semiseparable"},
        {"structure": "semiseparable", "m_norm": "none"},
        {"structure": "toeplitz"},
        {"structure": "toeplitz", "m_norm": "row_l1"},
        {"structure": "toeplitz", "m_norm": "none", "toeplitz_rank": 4},
        {"structure": "quasiseparable"},
        {"structure": "quasiseparable", "m_norm": "inv_sqrt_len"},
        {"m_norm": "row_l1"},
        {"m_norm": "inv_sqrt_len"},
        {"m_norm": "none"},
        {"compose": "hadamard_decay"},
        {"structure": "low_rank", "m_norm": "inv_sqrt_len", "compose": "hadamard_decay"},
    ],
}

_MODULES: dict = {}


def load(fw: str):
    if fw not in _MODULES:
        spec = importlib.util.spec_from_file_location(f"seed_{fw}", FRAMEWORKS[fw].seed_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[fw] = module
    return _MODULES[fw]


def build(fw: str, seed: int = 0, **knobs):
    torch.manual_seed(seed)
    return load(fw).ATTENTION(d_model=D_MODEL, n_heads=N_HEADS, dropout=0.0, max_seq_len=MAX_LEN, **knobs)


def reference_mha(attn, x):
    """Causal softmax MHA from the same weights, via the fused kernel."""
    B, T, D = x.shape

    def heads(t):
        return t.view(B, T, N_HEADS, D // N_HEADS).transpose(1, 2)

    q, k, v = heads(attn.w_q(x)), heads(attn.w_k(x)), heads(attn.w_v(x))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return attn.w_o(y.transpose(1, 2).reshape(B, T, D))


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("fw", sorted(FRAMEWORKS))
def test_class_name_and_attention_alias(fw):
    module = load(fw)
    assert module.ATTENTION.__name__ == FRAMEWORKS[fw].class_name


@pytest.mark.parametrize("fw", sorted(FRAMEWORKS))
@pytest.mark.parametrize("T", [1, 7, 64, 128])
@pytest.mark.parametrize("sharpen", [1.0, 20.0])
def test_default_equals_causal_softmax_mha(fw, T, sharpen):
    attn = build(fw).eval()
    # sharpen > 1: larger-than-init q/k weights, so that the attention pattern is far from uniform
    with torch.no_grad():
        for lin in (attn.w_q, attn.w_k):
            lin.weight.mul_(sharpen)
    torch.manual_seed(1)
    x = torch.randn(2, T, D_MODEL)
    with torch.no_grad():
        out, ref = attn(x), reference_mha(attn, x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert (out - ref).abs().max().item() < 1e-5


def test_identical_parameters_and_no_buffers():
    states = {fw: build(fw).state_dict() for fw in FRAMEWORKS}
    first = states["cd"]
    for fw, state in states.items():
        attn = build(fw)
        assert n_params(attn) == BASE_PARAMS
        assert list(attn.buffers()) == []
        assert list(state) == list(first), fw
        for (name, a), b in zip(state.items(), first.values()):
            assert torch.equal(a, b), (fw, name)


@pytest.mark.parametrize("fw", sorted(FRAMEWORKS))
def test_markers_and_block_contents(fw):
    source = FRAMEWORKS[fw].seed_source()
    lines = source.splitlines()
    assert sum(line.strip() == START for line in lines) == 1
    assert sum(line.strip() == END for line in lines) == 1
    assert source.count(START) == 1 and source.count(END) == 1
    start, end = lines.index(START), lines.index(END)
    assert start < end
    block = ast.parse("\n".join(lines[start + 1 : end]))
    classes = [n for n in block.body if isinstance(n, ast.ClassDef)]
    assert [c.name for c in classes] == [FRAMEWORKS[fw].class_name]
    for node in block.body:
        assert isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.Assign, ast.AnnAssign)), ast.dump(node)
    assert len(source) < 12_500
    tail = "\n".join(lines[end + 1 :])
    assert f"ATTENTION = {FRAMEWORKS[fw].class_name}" in tail


@pytest.fixture(scope="module")
def standalone_runs():
    """Start all three `python initial_programs/<fw>.py` at once (they dominate this file's time)."""
    procs = {
        fw: subprocess.Popen(
            [sys.executable, f"initial_programs/{fw}.py"],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
        )
        for fw in sorted(FRAMEWORKS)
    }
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("fw", sorted(FRAMEWORKS))
def test_seed_runs_standalone(fw, standalone_runs):
    stdout, stderr = standalone_runs[fw].communicate(timeout=300)
    assert standalone_runs[fw].returncode == 0, stderr[-2000:]
    assert FRAMEWORKS[fw].class_name in stdout


def _randomise(attn):
    """Random (not init) parameters, so that no branch hides a leak behind a zero init."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize(
    "fw,knobs", [(fw, knobs) for fw in sorted(KNOBS) for knobs in KNOBS[fw]], ids=lambda v: str(v)
)
def test_knob_is_finite_causal_and_in_budget(fw, knobs):
    attn = build(fw, **knobs)
    assert n_params(attn) <= 1.05 * BASE_PARAMS
    for mode in ("randomised", "init"):
        if mode == "randomised":
            _randomise(attn)
        for train in (True, False):
            attn.train(train)
            torch.manual_seed(2)
            T = 32
            x = torch.randn(2, T, D_MODEL)
            with torch.no_grad():
                y = attn(x)
            assert y.shape == x.shape
            assert torch.isfinite(y).all()
            for cut in (0, 9, 20):
                x2 = x.clone()
                x2[:, cut + 1 :] = torch.randn_like(x2[:, cut + 1 :]) * 3.0
                with torch.no_grad():
                    y2 = attn(x2)
                assert torch.isfinite(y2).all()
                diff = (y2[:, : cut + 1] - y[:, : cut + 1]).abs().max().item()
                assert diff < 1e-5, (mode, train, cut, diff)
    # causality by gradients: d y[:, cut] / d x[:, cut+1:] is exactly zero
    attn.train()
    x = torch.randn(2, 16, D_MODEL, requires_grad=True)
    attn(x)[:, 6].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[:, 7:].abs().max().item() == 0.0
    # gradients reach every parameter and stay finite
    attn.zero_grad()
    attn(x.detach()).square().sum().backward()
    unused = {"w_q.weight", "w_q.bias", "w_k.weight", "w_k.bias"} if knobs.get("structure") == "toeplitz" else set()
    for name, p in attn.named_parameters():
        if name in unused:  # a data-independent Toeplitz M reads no queries or keys
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name

"""Token-mixing matrices (harness.sandbox.mixing): |Jacobian| of each attention layer, rows normalised."""

import pytest
import torch
import torch.nn as nn

from harness.sandbox.loader import load_attention
from harness.sandbox.mixing import MixingError, mixing_matrices
from harness.scaffold import build_model
from harness.trusted.frameworks import FRAMEWORKS

VOCAB, MAX_LEN = 97, 16
SEEDS = {name: load_attention(FRAMEWORKS[name].seed_source(), f"{name}.py") for name in ("cd", "ttr", "mm")}


class _Base(nn.Module):
    def __init__(self, d_model, n_heads, dropout=0.1, max_seq_len=128):
        super().__init__()


class Shift(_Base):
    """y_t = x_{t-1}, y_0 = 0."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


class Identity(_Base):
    def forward(self, x):
        return x


class Mean(_Base):
    """y_t = mean over ALL positions: reads the future."""

    def forward(self, x):
        return x.mean(dim=1, keepdim=True).expand_as(x)


class _OldStyleShift(torch.autograd.Function):  # no setup_context: torch.func transforms refuse it
    @staticmethod
    def forward(ctx, x):
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)

    @staticmethod
    def backward(ctx, g):
        return torch.cat([g[:, 1:], torch.zeros_like(g[:, :1])], dim=1)


class OldStyleShift(_Base):
    def forward(self, x):
        return _OldStyleShift.apply(x)


class Fails(_Base):
    armed = False

    def forward(self, x):
        if Fails.armed:
            raise RuntimeError("boom")
        return x


class WrongShape(_Base):
    def forward(self, x):
        return x[..., :1] if not self.training else x


def model_with(cls, d=32, layers=2, heads=2, seed=0):
    return build_model(cls, (d, layers, heads), vocab_size=VOCAB, max_seq_len=MAX_LEN, dropout=0.1, seed=seed)


def tokens(n=MAX_LEN, seed=0):
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def snapshot(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [(name, m.training) for name, m in model.named_modules()],
            [p.grad for p in model.parameters()])


def assert_unchanged(model, before):
    state, modes, grads = before
    after = model.state_dict()
    assert state.keys() == after.keys()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert [(name, m.training) for name, m in model.named_modules()] == modes
    assert all(p.grad is None for p in model.parameters()) and all(g is None for g in grads)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seed_matrices_are_causal_row_stochastic_and_leave_the_model_alone(name):
    model = model_with(SEEDS[name], layers=2).train()
    before = snapshot(model)
    M = mixing_matrices(model, tokens())
    assert_unchanged(model, before)
    assert len(M) == 2 and all(len(layer) == MAX_LEN and all(len(row) == MAX_LEN for row in layer) for layer in M)
    for layer in M:
        assert all(type(v) is float for row in layer for v in row)
        for t, row in enumerate(layer):
            assert sum(row) == pytest.approx(1.0, abs=1e-4)
            assert all(v == 0.0 for v in row[t + 1:]), (name, t)  # exactly nothing from the future
            assert all(v > 0.0 for v in row[: t + 1])  # softmax defaults: every past token counts
        assert layer[0][0] == 1.0


def test_shift_by_one_is_the_subdiagonal():
    M = mixing_matrices(model_with(Shift, layers=1), tokens())
    expected = [[1.0 if i == t - 1 else 0.0 for i in range(MAX_LEN)] for t in range(MAX_LEN)]
    assert M == [expected]
    assert M[0][0] == [0.0] * MAX_LEN  # y_0 = 0: a row with no inputs stays zero


def test_identity_is_the_identity_matrix():
    M = mixing_matrices(model_with(Identity, layers=3), tokens())
    eye = [[1.0 if i == t else 0.0 for i in range(MAX_LEN)] for t in range(MAX_LEN)]
    assert M == [eye, eye, eye]


def test_a_non_causal_module_is_not_hidden():
    M = mixing_matrices(model_with(Mean, layers=1), tokens())[0]
    for row in M:
        assert row == pytest.approx([1.0 / MAX_LEN] * MAX_LEN, rel=1e-4)
    assert sum(v for t, row in enumerate(M) for v in row[t + 1:]) > 0


def test_modules_torch_func_refuses_fall_back_to_plain_autograd():
    assert mixing_matrices(model_with(OldStyleShift, layers=1), tokens()) == \
        mixing_matrices(model_with(Shift, layers=1), tokens())


def test_length_is_capped_by_max_len_and_by_the_model_context():
    model = model_with(SEEDS["ttr"], layers=1)
    assert len(mixing_matrices(model, tokens(MAX_LEN + 1))[0]) == MAX_LEN  # a validation window: context + 1
    M = mixing_matrices(model, tokens(), max_len=5)[0]
    assert len(M) == 5 and all(len(row) == 5 for row in M)
    assert mixing_matrices(model, tokens()[None, :], max_len=5)[0] == M  # a (1, T) batch is accepted
    with pytest.raises(ValueError):
        mixing_matrices(model, torch.zeros(2, 4, dtype=torch.long))


def test_float64_models_work_and_agree_with_float32():
    model = model_with(SEEDS["ttr"], layers=2, seed=1)
    M32 = mixing_matrices(model, tokens(seed=1))
    M64 = mixing_matrices(model.double(), tokens(seed=1))
    assert next(model.parameters()).dtype == torch.float64
    for a, b in zip(M32, M64):
        for ra, rb in zip(a, b):
            assert ra == pytest.approx(rb, abs=1e-4)


def test_state_is_restored_even_when_the_attention_raises():
    model = model_with(Fails, layers=2)
    model.blocks[0].train()  # mixed modes: each module's own flag comes back
    model.eval()
    model.blocks[1].attn.train()
    before = snapshot(model)
    Fails.armed = True
    try:
        with pytest.raises(RuntimeError, match="boom"):
            mixing_matrices(model, tokens())
    finally:
        Fails.armed = False
    assert_unchanged(model, before)


def test_a_module_that_changes_the_shape_in_eval_is_refused():
    model = model_with(WrongShape, layers=1)
    with pytest.raises(MixingError, match="expected the same shape"):  # (1, T, 1) broadcasts in the residual
        mixing_matrices(model, tokens())
    assert model.training and all(not m._forward_pre_hooks for m in model.modules())

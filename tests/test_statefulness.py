"""The statefulness check: what forward changes in the module is refused, whatever holds it (a closure, a bound
method of a list, a generator, a module outside the module tree, a plain object); what forward leaves alone is not,
whatever it is (a partial, a bound method, a tuple or list of the block's own submodules, a generator never drawn
from, a plain configuration object). Each legitimate idiom here was refused before the snapshot kept objects by
identity plus contents: a deep copy of an object that compares by identity differed from every other copy."""

import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.sandbox.checks import GateFailure, Geometry, check_statefulness
from harness.trusted.reasons import Reason

G = Geometry(d_model=16, n_heads=2, context_len=16, batch_size=2, dropout=0.0)


class Causal(nn.Module):
    def __init__(self, d_model, n_heads, dropout=0.0, max_seq_len=16):
        super().__init__()
        self.h = n_heads
        self.q, self.k, self.v = (nn.Linear(d_model, d_model) for _ in range(3))

    def heads(self, t):
        b, n, d = t.shape
        return t.view(b, n, self.h, d // self.h).transpose(1, 2)

    def attend(self, x, normalise=None):
        q, k, v = (self.heads(lin(x)) for lin in (self.q, self.k, self.v))
        scores = (q @ k.transpose(-1, -2)).masked_fill(
            torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1), float("-inf"))
        weights = (normalise or functools.partial(F.softmax, dim=-1))(scores)
        return (weights @ v).transpose(1, 2).reshape(x.shape)

    def forward(self, x):
        return self.attend(x)


class Config:
    def __init__(self):
        self.temperature = 1.0


# ---- legitimate: state that forward only reads ----------------------------------------------------------------------


class PartialOnSelf(Causal):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.normalise = functools.partial(F.softmax, dim=-1)

    def forward(self, x):
        return self.attend(x, self.normalise)


class BoundMethodOnSelf(Causal):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kernel_fn = self.softmax_kernel

    def softmax_kernel(self, scores):
        return F.softmax(scores, dim=-1)

    def forward(self, x):
        return self.attend(x, self.kernel_fn)


class TupleOfOwnSubmodules(Causal):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.projections = (self.q, self.k, self.v)
        self.as_list = [self.q, self.k, self.v]

    def forward(self, x):
        assert len(self.projections) == len(self.as_list) == 3
        return self.attend(x)


class GeneratorNeverDrawn(Causal):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.features = torch.Generator().manual_seed(0)


class ConfigObject(Causal):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cfg = Config()

    def forward(self, x):
        return self.attend(x / self.cfg.temperature)


@pytest.mark.parametrize("cls", [PartialOnSelf, BoundMethodOnSelf, TupleOfOwnSubmodules, GeneratorNeverDrawn,
                                 ConfigObject], ids=lambda c: c.__name__)
def test_an_object_that_forward_only_reads_is_not_state(cls):
    assert check_statefulness(cls, G) == {}


# ---- state carried between calls, wherever it is held ---------------------------------------------------------------


class AppendsThroughABoundMethod(Causal):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.remember = [].append

    def forward(self, x):
        self.remember(x.detach().sum().item())
        return self.attend(x)


def _counter():
    seen = []

    def count(t):
        seen.append(1)
        return t * (1.0 + 0.0 * len(seen))

    return count


class CountsInAClosure(Causal):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.count = _counter()

    def forward(self, x):
        return self.attend(self.count(x))


class DrawsFromItsGenerator(Causal):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.noise = torch.Generator().manual_seed(0)

    def forward(self, x):
        torch.rand(1, generator=self.noise)
        return self.attend(x)


class WritesAModuleOutsideTheTree(Causal):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.memory = (nn.Linear(4, 4),)  # in a tuple: not a submodule, not snapshotted under its own name

    def forward(self, x):
        with torch.no_grad():
            self.memory[0].weight.add_(1.0)
        return self.attend(x)


class ChangesItsConfig(Causal):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cfg = Config()

    def forward(self, x):
        self.cfg.temperature = self.cfg.temperature + 1.0
        return self.attend(x)


class CountsWithAnIterator(Causal):
    """An iterator's position is state, which compared by identity it hid: a block could count its calls and change
    its work once the gate's calls were over."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = iter(range(1 << 60))

    def forward(self, x):
        next(self.calls)
        return self.attend(x)


class CountsWithAGenerator(Causal):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = (i for i in range(1 << 60))

    def forward(self, x):
        next(self.calls)
        return self.attend(x)


@pytest.mark.parametrize("cls, changed", [
    (AppendsThroughABoundMethod, "remember"), (CountsInAClosure, "count"), (DrawsFromItsGenerator, "noise"),
    (WritesAModuleOutsideTheTree, "memory"), (ChangesItsConfig, "cfg"), (CountsWithAnIterator, "calls"),
    (CountsWithAGenerator, "calls"),
], ids=lambda v: v.__name__ if isinstance(v, type) else v)
def test_state_a_call_changes_is_refused_and_named(cls, changed):
    with pytest.raises(GateFailure) as info:
        check_statefulness(cls, G)
    assert info.value.reason == Reason.STATEFULNESS
    assert f"attribute '{changed}' differs after one call" in info.value.message, info.value.message

"""The run-time snapshot (``harness.sandbox.snapshot``) in one process: a change to a watched callable is named,
including the changes that keep a Python function the same object (its code, defaults, keyword defaults, attributes
and closure cells), and undoing the change clears it. What the sandbox does with a change (a ``policy`` rejection
that names it, at the stage that saw it) is tested end to end in ``tests/test_security.py``."""

import contextlib
import dataclasses
import types

import pytest
import torch.nn as nn
import torch.nn.functional as F

from harness import scaffold
from harness.sandbox import snapshot, train


@contextlib.contextmanager
def patched(obj, attr, value):
    saved = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, saved)


@contextlib.contextmanager
def item_set(mapping, key, value):
    missing = object()
    saved = mapping.get(key, missing)
    mapping[key] = value
    try:
        yield
    finally:
        if saved is missing:
            del mapping[key]
        else:
            mapping[key] = saved


def _identity(*args, **kwargs):
    return args[0]


def _closure_of_pair():
    return F._pair.__closure__[0]


@contextlib.contextmanager
def property_reinitialised(prop, fget):
    """``property.__init__`` on a property in place: the same object, with another getter."""
    saved = (prop.fget, prop.fset, prop.fdel, prop.__doc__)
    property.__init__(prop, fget)
    try:
        yield
    finally:
        property.__init__(prop, *saved)


# (what the program does, the name the snapshot must report); F.layer_norm and F.dropout are what the frozen model
# captured at import (harness.scaffold._layer_norm, ._dropout): the same objects, so they are named twice.
CHANGES = {
    "code": (lambda: patched(F.layer_norm, "__code__", _identity.__code__), "torch.nn.functional.layer_norm.__code__"),
    "defaults": (lambda: patched(F.softmax, "__defaults__", (None, 3, None)), "torch.nn.functional.softmax.__defaults__"),
    "keyword_defaults_replaced": (lambda: patched(scaffold.apply_layer_norm, "__kwdefaults__", {"eps": 1.0}),
                                  "harness.scaffold.apply_layer_norm.__kwdefaults__"),
    "an_attribute_set": (lambda: item_set(vars(F.dropout), "cache", [0]), "torch.nn.functional.dropout.__dict__"),
    "the_attributes_replaced": (lambda: patched(F.embedding, "__dict__", {}), "torch.nn.functional.embedding.__dict__"),
    "a_closure_cell": (lambda: patched(_closure_of_pair(), "cell_contents", 3), "torch.nn.functional._pair.__closure__"),
    "a_harness_constant": (lambda: patched(train, "MIN_LR_FRACTION", 0.5), "harness.sandbox.train.MIN_LR_FRACTION"),
    "the_function": (lambda: patched(F, "cross_entropy", _identity), "torch.nn.functional.cross_entropy"),
    # nn.GRU.all_weights.__init__(self) made a block's module the getter of every RNN's all_weights
    "a_property_reinitialised": (lambda: property_reinitialised(nn.RNNBase.all_weights, _identity),
                                 "torch.nn.modules.rnn.RNNBase.all_weights.fget"),
}


@pytest.mark.parametrize("case", sorted(CHANGES))
def test_a_change_to_a_watched_function_is_named_and_undoing_it_clears_it(case):
    change, name = CHANGES[case]
    before = snapshot.take()
    assert snapshot.changed(before) == []
    with change():
        found = snapshot.changed(before)
        assert found, case
        if name is not None:
            assert name in found, found
        with pytest.raises(snapshot.RuntimeTampering, match="at run time"):
            snapshot.check(before, "a test")
    assert snapshot.changed(before) == []


def test_a_keyword_default_changed_in_place_is_named():
    """A function's keyword defaults are a dictionary: changing it in place keeps every object the same but one."""
    before = snapshot.take()
    name, target = next((n, v) for n, v in before.items() if isinstance(v, types.FunctionType) and v.__kwdefaults__)
    key = next(iter(target.__kwdefaults__))
    with item_set(target.__kwdefaults__, key, object()):
        assert f"{name}.__kwdefaults__" in snapshot.changed(before)
    assert snapshot.changed(before) == []


def test_a_class_or_static_method_s_function_is_watched():
    before = snapshot.take()
    name, method = next((n, v) for n, v in before.items() 
                        if isinstance(v, (staticmethod, classmethod)) and isinstance(v.__func__, types.FunctionType))
    with patched(method.__func__, "__code__", _identity.__code__):
        assert f"{name}.__code__" in snapshot.changed(before)


def test_the_parts_compare_objects_by_identity_and_keys_by_value():
    a, b = [1], [1]
    assert snapshot.Parts(("k", a)).same(snapshot.Parts(("k", a)))
    assert not snapshot.Parts(("k", a)).same(snapshot.Parts(("k", b)))
    assert not snapshot.Parts(("k", a)).same(snapshot.Parts(("k", a, "j", a)))
    assert not snapshot.Parts(()).same(())


def test_training_with_torch_compile_changes_nothing_watched():
    """torch.compile (inductor, here on the CPU) and a whole training leave every watched part as it was: the
    extra watch on functions' parts finds no change torch makes itself."""
    from harness.diagnostics.bench import RandomTokens, bench_profile
    from harness.sandbox.loader import load_attention
    from harness.trusted.frameworks import get_framework
    from harness.trusted.profiles import get_profile

    before = snapshot.take()
    fw = get_framework("ttr")
    cls = load_attention(fw.seed_source(), str(fw.seed_path))
    profile = dataclasses.replace(bench_profile(get_profile("smoke"), 4), compile=True)
    result = train.train(cls, profile, tuple(profile.ladder[0]), RandomTokens.make(profile.vocab_size, profile.val_tokens),
                         device="cpu")
    assert result.status == "ok" and result.compiled, result.compile_error
    assert snapshot.changed(before) == []

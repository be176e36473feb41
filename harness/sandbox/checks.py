"""Dynamic checks of an attention class, cheapest first. Each is a small function of the class (and the
baseline's) that returns its measurements or raises ``GateFailure`` with one reason code.

They run only inside the sandbox process: on the largest rung's width and head count, and the budget checks (FLOPs,
step time, memory) at every attention width of the ladder (``at_every_width``).
"""

from __future__ import annotations

import collections.abc
import contextlib
import copy
import dataclasses
import ctypes
import functools
import math
import statistics
import time
import types
from dataclasses import dataclass

import torch
import torch.nn as nn

from harness.trusted.reasons import Reason
from harness.scaffold import LanguageModel, TensorSubclassError, apply_layer_norm, count_params, plain_tensor


RANDOMISE_REL = 0.1  # parameter perturbation for the randomised probes, relative to each tensor's mean |p|
GRADIENT_LEAK_RTOL = 1e-6  # gradient into the future, relative to the whole output's (see _gradient_scale)
GATE_THREADS = 1  # intra-op CPU threads while the gate runs (see run_gate)
# glibc malloc's thresholds while the gate runs (see steady_allocator): its largest mmap threshold, and a trim
# threshold above what one training step of the attention frees.
MALLOC_MMAP_THRESHOLD_BYTES = 32 << 20
MALLOC_TRIM_THRESHOLD_BYTES = 256 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)


class GateFailure(Exception):
    def __init__(self, reason: Reason, message: str, details: dict | None = None):
        super().__init__(message)
        self.reason, self.message, self.details = reason, message, details or {}


@dataclass(frozen=True)
class Geometry:
    """What the attention is built with and called on: the constructor's arguments, as the training and the scoring
    pass them, and the batches (``batch_size`` for a training step, ``eval_batch_size`` for an evaluation pass). A
    check run with anything else could be told apart from the real thing by the program."""

    d_model: int
    n_heads: int
    context_len: int
    batch_size: int
    dropout: float
    eval_batch_size: int = 0  # 0: batch_size

    @classmethod
    def of(cls, profile) -> "Geometry":
        """The largest rung's."""
        return cls.every(profile)[0]

    @classmethod
    def every(cls, profile) -> list["Geometry"]:
        """One per attention width (d_model, n_heads) of the ladder, the largest first: the training builds the
        attention at each of them."""
        widths = sorted({(r[0], r[2]) for r in profile.ladder}, key=lambda w: (-w[0], -w[1]))
        return [cls(d, h, profile.context_len_tokens, profile.batch_size_seqs, profile.dropout,
                    profile.eval_batch_seqs) for d, h in widths]

    @property
    def scoring_batch(self) -> int:
        return self.eval_batch_size or self.batch_size


def construct(attention_cls: type, g: Geometry, seed: int = 0, dropout: float | None = None) -> nn.Module:
    torch.manual_seed(seed)
    try:
        return attention_cls(d_model=g.d_model, n_heads=g.n_heads,
                             dropout=g.dropout if dropout is None else dropout, max_seq_len=g.context_len)
    except Exception as exc:
        raise GateFailure(Reason.CRASH, f"constructing the class failed: {type(exc).__name__}: {exc}") from exc


def _members(module: nn.Module) -> dict[str, str]:
    """Every parameter, buffer, submodule and attribute of the module and its submodules, by dotted name: kind."""
    members = {}
    for prefix, sub in module.named_modules():
        prefix = f"{prefix}." if prefix else ""
        for kind, names in (("parameter", sub._parameters), ("buffer", sub._buffers), ("module", sub._modules),
                            ("attribute", vars(sub))):
            for name in names:
                members.setdefault(prefix + name, kind)
    return members


def _created(before: dict[str, str], after: dict[str, str], what: str) -> None:
    """Raise for anything forward created: a parameter is ``param_parity``; a module, buffer or attribute is state
    (``statefulness``). Found after the call that created it, before its random draws or its value can mislead a
    later check into naming another cause."""
    created = sorted(name for name in after if name not in before)
    if not created:
        return
    named = ", ".join(f"{after[name]} {name!r}" for name in created[:5]) + (" ..." if len(created) > 5 else "")
    reason = Reason.PARAM_PARITY if any(after[name] == "parameter" for name in created) else Reason.STATEFULNESS
    raise GateFailure(reason, f"forward created {named} (the {what} check). Create every parameter, module, buffer "
                      f"and attribute in __init__; a cache is a buffer registered there.")


def _call(module: nn.Module, x: torch.Tensor, what: str, rng_seed: int | None = 0) -> torch.Tensor:
    if rng_seed is not None:
        torch.manual_seed(rng_seed)  # identical dropout masks for calls being compared
    n_before, members = count_params(module), _members(module)
    try:
        out = module(x)
    except Exception as exc:
        raise GateFailure(Reason.CRASH, f"forward raised during the {what} check: {type(exc).__name__}: {exc}") from exc
    _created(members, _members(module), what)
    n_after = count_params(module)
    if n_after != n_before:  # a parameter replaced by a larger one, or unfrozen
        raise GateFailure(Reason.PARAM_PARITY, f"forward changed the trainable parameters (the {what} check): "
                          f"{n_before} before the call, {n_after} after. Create every parameter in __init__.")
    if not isinstance(out, torch.Tensor):
        return out  # the shape check names it
    try:
        plain_tensor(out, "forward")
    except TensorSubclassError as exc:
        raise GateFailure(Reason.POLICY, str(exc)) from exc
    if out.is_floating_point() and not bool(torch.isfinite(out).all()):
        raise GateFailure(Reason.NONFINITE, f"forward returned NaN or inf during the {what} check "
                          f"(input {tuple(x.shape)}, {'train' if module.training else 'eval'} mode)")
    return out


def _lengths(g: Geometry) -> list[int]:
    return sorted({1, 2, g.context_len // 2 + 1 if g.context_len > 2 else 1, g.context_len})


def check_shape(attention_cls: type, g: Geometry) -> dict:
    module = construct(attention_cls, g)
    for mode in ("train", "eval"):
        module.train(mode == "train")
        for batch in (1, 3):
            for length in _lengths(g):
                x = torch.randn(batch, length, g.d_model)
                y = _call(module, x, "shape")
                if not isinstance(y, torch.Tensor):
                    raise GateFailure(Reason.SHAPE, f"forward returned {type(y).__name__}, expected a tensor")
                if y.shape != x.shape or y.dtype != x.dtype or y.device != x.device:
                    raise GateFailure(Reason.SHAPE, f"input {tuple(x.shape)} {x.dtype} gave output "
                                      f"{tuple(y.shape)} {y.dtype} on {y.device} ({mode} mode, batch {batch}, length {length})")
    return {"lengths_checked": _lengths(g)}


def randomise_parameters(module: nn.Module, seed: int) -> None:
    """Move every parameter to random non-zero values, so that a leak gated by a zero-initialised
    parameter (or a gate initialised shut) opens."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            # 10% of the parameter's typical magnitude (0.1 where it is all zeros): enough to open a gate
            # initialised shut, small enough that a legitimate parameterisation stays in its domain.
            scale = float(p.detach().abs().mean()) if p.numel() else 0.0
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.dtype)
            p.add_(noise * (RANDOMISE_REL * scale if scale > 0 else RANDOMISE_REL))


def _cut_points(length: int) -> list[int]:
    return sorted({0, length // 3, length // 2, length - 2} & set(range(length - 1)))


def check_causality(attention_cls: type, g: Geometry, atol: float) -> dict:
    lengths = sorted({g.context_len, max(3, g.context_len // 2 + 1), 5} & set(range(2, g.context_len + 1)))
    probes = 0
    for variant in ("initial", "randomised"):
        module = construct(attention_cls, g)
        if variant == "randomised":
            randomise_parameters(module, seed=1234)
        for mode in ("train", "eval", "eval_no_grad"):
            module.train(mode == "train")
            for length in lengths:
                generator = torch.Generator().manual_seed(length)
                x = torch.randn(2, length, g.d_model, generator=generator)
                scale = _gradient_scale(module, x) if mode != "eval_no_grad" else 0.0
                for t in _cut_points(length):
                    where = f"{variant} parameters, {mode} mode, length {length}, cut after position {t}"
                    if mode != "eval_no_grad":
                        _gradient_probe(module, x, t, scale, where)
                    _perturbation_probe(module, x, t, atol, where, no_grad=mode == "eval_no_grad")
                    probes += 1
    return {"causality_probes": probes, "causality_lengths": lengths}


def _input_gradient(module: nn.Module, x: torch.Tensor, upto: int, seed: int, where: str) -> torch.Tensor | None:
    """The gradient, with respect to the residual stream ``x`` under the input (``as_trained``: the LayerNorm keeps
    positions apart), of the outputs at positions < ``upto`` weighted at random."""
    inputs, x = as_trained(x)
    y = _call(module, inputs, "causality")
    weights = torch.randn(y[:, :upto].shape, generator=torch.Generator().manual_seed(seed))
    (y[:, :upto] * weights).sum().backward()
    if x.grad is not None and not bool(torch.isfinite(x.grad).all()):
        raise GateFailure(Reason.NONFINITE, f"the gradient of forward's output with respect to its input has NaN or "
                          f"inf ({where})")
    return x.grad


def _gradient_scale(module: nn.Module, x: torch.Tensor) -> float:
    """The largest input gradient of the whole output: the scale of the round-off in a cut's gradient.

    An FFT convolution computes every gradient through transforms over the whole sequence, so its round-off is
    relative to the whole kernel, not to the few taps that reach the positions before an early cut: at cut 0 of a
    kernel initialised at 0.02 the past's gradient was 1.5e-3 and the round-off 1.8e-9, over the relative bound.
    This scale is the candidate's to inflate (a large gradient from the far past of the last position), but only
    up to where the perturbation probe, which does not use it, still sees a leak."""
    grad = _input_gradient(module, x, x.shape[1], seed=10_000 + x.shape[1], where="the whole output")
    return 0.0 if grad is None else grad.abs().max().item()


def _gradient_probe(module: nn.Module, x: torch.Tensor, t: int, scale: float, where: str) -> None:
    grad = _input_gradient(module, x, t + 1, seed=t, where=where)
    if grad is None:
        return  # no gradient path at all; the perturbation probe still runs
    # Exactly zero for masked matmuls; FFT-based causal convolutions leave float round-off (~1e-8 of the scale).
    leak = grad[:, t + 1 :].abs().max().item()
    past = grad[:, : t + 1].abs().max().item()
    if not leak <= GRADIENT_LEAK_RTOL * max(past, scale, 1e-30):
        raise GateFailure(Reason.CAUSALITY, f"outputs at positions <= {t} have a non-zero gradient "
                          f"({leak:.3g}) with respect to later inputs ({where})")


def _perturbation_probe(module: nn.Module, x: torch.Tensor, t: int, atol: float, where: str, no_grad: bool) -> None:
    future = x.clone()
    future[:, t + 1 :] = torch.randn(future[:, t + 1 :].shape, generator=torch.Generator().manual_seed(99 + t)) * 3.0

    def outputs():
        return _calls_as_run(module, (x, future), "causality", in_training=not no_grad)

    a, b = outputs()
    scale = max(1.0, a[:, : t + 1].abs().max().item())
    diff = (a[:, : t + 1] - b[:, : t + 1]).abs().max().item()
    if not diff <= atol * scale:
        _state_is_the_cause(module, outputs, f"causality check, {where}")
        raise GateFailure(Reason.CAUSALITY, f"changing inputs after position {t} changed outputs at positions "
                          f"<= {t} by {diff:.3g} ({where})")


def _calls_as_run(module: nn.Module, inputs, what: str, in_training: bool) -> tuple[torch.Tensor, ...]:
    """``module``'s output for each of ``inputs`` as the model runs it: with grad on the input as training hands it
    (``as_trained``), or under ``torch.no_grad()`` on the plain tensor, as the scoring's forward."""
    if in_training:
        return tuple(_call(module, as_trained(x)[0], what).detach() for x in inputs)
    with torch.no_grad():
        return tuple(_call(module, x, what) for x in inputs)


def _state_is_the_cause(module: nn.Module, calls, where: str) -> None:
    """Before a difference between two calls is blamed on their inputs: raise ``statefulness`` if the calls change
    the module's state. Power iteration (spectral_norm) updates a buffer at every training call, and its outputs
    differed by 1.7e-5 between the two calls of a causality probe."""
    before = _snapshot(module)
    calls()
    key = _changed(before, _snapshot(module))
    if key is not None:
        raise GateFailure(Reason.STATEFULNESS, f"forward changed the module's state: {key} differs after a call "
                          f"({where})")


def check_batch_independence(attention_cls: type, g: Geometry, atol: float) -> dict:
    module = construct(attention_cls, g)
    randomise_parameters(module, seed=4321)
    for mode in ("train", "eval"):
        module.train(mode == "train")
        x = torch.randn(3, g.context_len, g.d_model, generator=torch.Generator().manual_seed(5))
        other = x.clone()
        other[1] = torch.randn(g.context_len, g.d_model, generator=torch.Generator().manual_seed(6)) * 3.0

        def outputs():
            return _calls_as_run(module, (x, other), "batch independence", in_training=mode == "train")

        a, b = outputs()
        for i in (0, 2):
            diff = (a[i] - b[i]).abs().max().item()
            if not diff <= atol * max(1.0, a[i].abs().max().item()):
                _state_is_the_cause(module, outputs, f"batch independence check, {mode} mode")
                raise GateFailure(Reason.BATCH_INDEPENDENCE, f"changing sequence 1 of a batch changed sequence "
                                  f"{i}'s output by {diff:.3g} ({mode} mode)")
    return {}


def _snapshot(module: nn.Module) -> dict:
    state = {}
    tree = {id(sub) for sub in module.modules()}  # each one's own state is kept under its own name
    for name, sub in module.named_modules():
        for key, value in vars(sub).items():
            if key in ("_modules", "_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                       "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks",
                       "_state_dict_pre_hooks", "_load_state_dict_post_hooks", "_forward_hooks_with_kwargs",
                       "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called", "_is_full_backward_hook"):
                continue
            if key in ("_parameters", "_buffers"):
                # Parameters created during forward are the parity check's business; here only the
                # values of the parameters that already exist must stay put. Buffers one by one, to name the one
                # that changed.
                kind = "parameter" if key == "_parameters" else "buffer"
                for member, tensor in value.items():
                    state[f"{kind} {name + '.' if name else ''}{member}"] = _kept(tensor, tree, set())
                continue
            state[f"{name}.{key}"] = _kept(value, tree, set())
    return state


class _Held:
    """An attribute's object kept by identity (a strong reference, so that no new object can take its address),
    with what it holds that a call could change. Two snapshots of it are the same when they hold the same object
    and the same contents."""

    __slots__ = ("obj", "contents")

    def __init__(self, obj, contents=None):
        self.obj, self.contents = obj, contents


_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size, range,
              type(Ellipsis), type)


def _kept(value, tree: set[int], seen: set[int]):
    """What the snapshot keeps of one attribute: tensors by value, containers item by item, immutable values as
    they are, and every other object by identity plus what it holds (``_Held``): a module of the block's own tree by
    identity alone (its state is kept under its own name), any other module, a plain object or a torch.Generator by
    their state, a function by its closure and defaults, a partial or bound method by what it binds. Kept by
    value, a deep copy of an object that compares by identity differed from every other copy of it, and refused
    legitimate attributes as state: a partial, a bound method, a tuple of the block's own submodules."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, _IMMUTABLE):
        return value
    if id(value) in seen:  # a cycle: the object is already being kept further up
        return _Held(value)
    seen = seen | {id(value)}
    if isinstance(value, dict):
        return {k: _kept(v, tree, seen) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return _Held(type(value), [_kept(v, tree, seen) for v in value])
    if isinstance(value, nn.Module):
        return _Held(value, None if id(value) in tree else _kept(dict(vars(value)), tree, seen))
    if isinstance(value, torch.Generator):
        return _Held(value, value.get_state())
    if isinstance(value, collections.abc.Iterator):
        # its position is state nothing else shows (self.calls = iter(range(n)), then next(self.calls) in forward):
        # kept as pickling would keep it, and where it cannot be, as changed by every call
        try:
            return _Held(value, _kept(value.__reduce_ex__(4), tree, seen))
        except Exception:  # noqa: BLE001 - a generator's position cannot be read
            return _Held(value, object())
    if isinstance(value, functools.partial):
        return _Held(value, _kept((value.func, value.args, value.keywords), tree, seen))
    if isinstance(value, types.MethodType):
        return _Held(value.__func__, _kept(value.__self__, tree, seen))
    if isinstance(value, types.FunctionType):
        cells = tuple(c.cell_contents for c in value.__closure__ or () if _filled(c))
        return _Held(value, _kept((cells, value.__defaults__, value.__kwdefaults__), tree, seen))
    if isinstance(value, (types.BuiltinMethodType, types.ModuleType)):
        owner = getattr(value, "__self__", None)
        bound = owner is not None and not isinstance(owner, types.ModuleType)
        return _Held(value, _kept(owner, tree, seen) if bound else None)
    if hasattr(value, "__dict__"):
        return _Held(type(value), _kept(dict(vars(value)), tree, seen))
    if type(value).__eq__ is object.__eq__:
        return _Held(value)
    try:
        return copy.deepcopy(value)
    except Exception:  # noqa: BLE001 - an uncopyable object is compared by identity
        return _Held(value)


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # a cell not bound yet
        return False
    return True


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and bool(torch.equal(a, b) or (a.isnan() & b.isnan()).all()))
    if isinstance(a, _Held) or isinstance(b, _Held):
        return isinstance(a, _Held) and isinstance(b, _Held) and a.obj is b.obj and _same(a.contents, b.contents)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001
        return a is b


def _changed(before: dict, after: dict) -> str | None:
    """The first entry of a snapshot that a call changed, removed or created (a created parameter is the parity
    check's), as its kind and name; None when there is none."""
    created = {k for k in after.keys() - before.keys() if not k.startswith("parameter ")}
    for key in sorted(before.keys() | created):
        if key not in after or key not in before or not _same(before[key], after[key]):
            kind, _, name = key.rpartition(" ")
            return f"{kind or 'attribute'} {name.lstrip('.')!r}"
    return None


def check_statefulness(attention_cls: type, g: Geometry) -> dict:
    module = construct(attention_cls, g)
    x = torch.randn(2, g.context_len, g.d_model, generator=torch.Generator().manual_seed(7))
    for mode in ("train", "eval"):
        module.train(mode == "train")
        before = _snapshot(module)
        first = _call(module, x, "statefulness", rng_seed=11)
        (first.float().square().mean()).backward()
        after_one = _snapshot(module)
        second = _call(module, x, "statefulness", rng_seed=11)
        module.zero_grad(set_to_none=True)
        key = _changed(before, after_one)
        if key is not None:
            raise GateFailure(Reason.STATEFULNESS, f"forward changed the module's state: {key} differs after one "
                              f"call ({mode} mode)")
        if not torch.equal(first.detach(), second.detach()):
            diff = (first - second).abs().max().item()
            raise GateFailure(Reason.STATEFULNESS, f"two identical calls gave different outputs (max diff "
                              f"{diff:.3g}, {mode} mode)")
    return {}


def _state_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Tensor state a module holds besides trainable parameters (buffers, persistent or not, frozen parameters,
    tensor attributes), each tensor once, with its kind and dotted name."""
    found, seen = [], set()
    for prefix, sub in module.named_modules():
        prefix = f"{prefix}." if prefix else ""
        members = [("buffer", n, v) for n, v in sub._buffers.items()]
        members += [("frozen parameter", n, p) for n, p in sub._parameters.items() if p is not None and not p.requires_grad]
        members += [("attribute", n, v) for n, v in vars(sub).items()
                    if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter)]
        for kind, name, value in members:
            if value is not None and id(value) not in seen:
                seen.add(id(value))
                found.append((f"{kind} {prefix + name!r}", value))
    return found


def _words(value: torch.Tensor) -> float:
    bits = 1 if value.dtype == torch.bool else 8 * value.element_size()
    return value.numel() * bits / 32


def _state_words(module: nn.Module) -> float:
    """Tensor state a module holds besides trainable parameters, in 32-bit words: a float32 element is one, a bool
    one thirty-second, so that a causal-mask buffer costs what it holds, not what a float table of its size would."""
    return sum(_words(value) for _, value in _state_tensors(module))


def _state_budget(base: nn.Module, g: Geometry, gate) -> float:
    return (_state_words(base) + gate.extra_state_words_per_ctx_dmodel * g.context_len * g.d_model
            + (gate.extra_state_words_per_ctx_squared + gate.extra_state_words_per_head_ctx_squared * g.n_heads)
            * g.context_len ** 2)


def _largest_state(module: nn.Module, n: int = 3) -> str:
    largest = sorted(_state_tensors(module), key=lambda item: -_words(item[1]))[:n]
    return "; ".join(f"{name} {tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}" for name, value in largest)


def check_params(attention_cls: type, baseline_cls: type, g: Geometry, profile, tolerance: float) -> dict:
    base = construct(baseline_cls, g)
    cand = construct(attention_cls, g)
    base_n = count_params(base)
    with torch.no_grad():  # _call refuses a forward that creates or changes parameters
        _call(cand, torch.randn(1, g.context_len, g.d_model), "parameter")
    after_n = count_params(cand)
    limit = math.floor(base_n * (1.0 + tolerance))
    metrics = {"attention_params": after_n, "baseline_attention_params": base_n,
               "param_ratio": after_n / base_n}
    if after_n > limit:
        raise GateFailure(Reason.PARAM_PARITY, f"{after_n} trainable attention parameters exceed the budget of "
                          f"{limit} (baseline {base_n} + {tolerance:.0%})", metrics)
    state_limit = _state_budget(base, g, profile.gate)
    state = _state_words(cand)
    metrics["attention_state_words"] = state
    if state > state_limit:
        # persistent=False does not help: a buffer is state whether or not it is saved
        raise GateFailure(Reason.PARAM_PARITY, f"the class holds {state:.0f} 32-bit words of tensor state in "
                          f"buffers, frozen parameters or tensor attributes, over the {state_limit:.0f} allowed "
                          f"(largest: {_largest_state(cand)}); build masks and position tables in forward, e.g. "
                          f"torch.ones(T, T, dtype=torch.bool, device=x.device).tril(), or share one bool mask "
                          f"across heads.", metrics)
    # Whole model at every rung: the frozen parts are identical, so only the attention may differ.
    for rung in profile.ladder:
        models = [LanguageModel(c, profile.vocab_size, rung[0], rung[1], rung[2], profile.context_len_tokens, 0.0, 0)
                  for c in (baseline_cls, attention_cls)]
        whole_base, whole_cand = count_params(models[0]), count_params(models[1])
        attn_base = sum(count_params(b.attn) for b in models[0].blocks)
        if whole_cand > whole_base + tolerance * attn_base:
            raise GateFailure(Reason.PARAM_PARITY, f"whole model at rung {rung} has {whole_cand} parameters, "
                              f"baseline {whole_base}; at most {tolerance:.0%} of the attention's may be added", metrics)
        metrics[f"model_params_d{rung[0]}_l{rung[1]}"] = whole_cand
    return metrics


def model_input(batch: int, length: int, d_model: int, generator: torch.Generator,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """An input as the model hands it to the attention in training (``as_trained``) of a random residual stream.
    Returns the input and the residual stream."""
    return as_trained(torch.randn(batch, length, d_model, generator=generator).to(device))


def as_trained(residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention's input as the model hands it over in training: the block's LayerNorm (with a weight and a
    bias that train) of ``residual`` as a stream that requires grad, so not a leaf, with the LayerNorm's grad_fn and
    statistics. A candidate that did four times the work only when ``x.grad_fn`` was set passed the FLOP audit and
    the step-time probe at 1x on a leaf input and trained at 4x; one that read the future only when its input was
    not a leaf passed the causality probes. The LayerNorm works position by position and sequence by sequence, so
    what the causality and batch probes compare stays apart. Returns the input and the (leaf) residual stream."""
    residual = residual.detach().clone().requires_grad_(True)
    return apply_layer_norm(nn.LayerNorm(residual.shape[-1]).to(residual.device), residual), residual


def _combine(report, other, sign: int = 1):
    """``report`` plus (or, with sign -1, less) ``other``'s counts, field by field and op by op."""
    combined = {}
    for f in dataclasses.fields(report):
        mine, theirs = getattr(report, f.name), getattr(other, f.name)
        if isinstance(mine, dict):
            merged = {op: mine.get(op, 0) + sign * theirs.get(op, 0) for op in mine.keys() | theirs.keys()}
            combined[f.name] = {op: n for op, n in merged.items() if n}
        else:
            combined[f.name] = mine + sign * theirs
    return type(report)(**combined)


def _audit(cls: type, g: Geometry, length: int, regime: str, device: str = "cpu", bf16: bool = False):
    """FLOPs of the attention at this length, in one of the two regimes in which the model runs it: a training step
    (train mode, forward and backward of a ``model_input`` of the training batch, the LayerNorm's own backward taken
    out), or the scoring's forward (eval mode under ``torch.no_grad()`` on a plain tensor of the scoring batch), built
    as the training builds it, on the device they run on: a program can read ``x.is_cuda``. ``bf16``: the training
    step under the training's bf16 autocast (the scoring runs in float32). Returns the report and its forward's
    total."""
    from harness.sandbox.flops import audit_flops
    from harness.sandbox.train import autocast

    train, dev = regime == "train", torch.device(device)
    with torch.random.fork_rng(devices=[]):
        module = construct(cls, g).float().to(dev).train(train)
    generator = torch.Generator().manual_seed(0)
    shape = (g.batch_size if train else g.scoring_batch, length, g.d_model)
    if train:
        x, residual = model_input(*shape, generator, dev)
    else:
        x, residual = torch.randn(shape, generator=generator).to(dev), None
    upstream = torch.randn(shape, generator=generator).to(dev)
    outputs = []

    def forward() -> None:
        with torch.set_grad_enabled(train), autocast(dev, train and bf16):
            out = module(x)
        if not isinstance(out, torch.Tensor) or out.shape != upstream.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"attention output must have shape {tuple(upstream.shape)}, got {got}")
        outputs.append(out)

    with torch.random.fork_rng(devices=[]), _mha_fast_path(train):
        torch.manual_seed(0)
        report = audit_flops(forward)
        forward_total = report.total
        if train:
            report = _combine(report, audit_flops(lambda: outputs[0].backward(upstream.to(outputs[0].dtype))))
    if residual is not None and residual.grad is not None:  # the backward went on into the LayerNorm
        norm, _ = model_input(*shape, torch.Generator().manual_seed(0), dev)
        report = _combine(report, audit_flops(lambda: norm.backward(upstream)), sign=-1)
    return report, forward_total


@contextlib.contextmanager
def _mha_fast_path(enabled: bool):
    """In eval mode under no_grad, nn.MultiheadAttention and nn.TransformerEncoderLayer run one fused kernel whose
    cost the audit cannot know (aten._native_multi_head_attention); without their fast path they compute the same
    attention with the counted ops that training runs. A program cannot read the switch (``backends`` is refused)."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled and before)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def check_flops(attention_cls: type, baseline_cls: type, g: Geometry, gate, device: str = "cpu",
                bf16: bool = False, horizon: bool = True) -> dict:
    """The FLOP budget (see ``_audit`` for ``device`` and ``bf16``); with ``horizon``, also carried beyond the context
    along each program's growth in length (``complexity``): a property of the mechanism, which the gate judges at the
    largest width (at a smaller one a legitimate talking-heads attention, whose heads' mixing is a larger share of
    its cost there, measured 1.11x at 4T)."""
    from harness.sandbox.flops import unaccounted_message

    def audit(cls, length, regime="train"):
        try:
            return _audit(cls, g, length, regime, device, bf16)
        except Exception as exc:
            raise GateFailure(Reason.CRASH, f"forward/backward failed while counting FLOPs: {type(exc).__name__}: {exc}") from exc

    T = g.context_len
    lengths = [max(2, T // 4), max(2, T // 2), T] if horizon else [T]
    audits = {n: audit(attention_cls, n) for n in lengths}
    cand, cand_forward = {n: report for n, (report, _) in audits.items()}, audits[T][1]
    cand_eval, _ = audit(attention_cls, T, "eval")
    unknown = {op: c for r in (*cand.values(), cand_eval) for op, c in r.unknown_ops.items()}
    if unknown:
        raise GateFailure(Reason.UNACCOUNTED_OP, unaccounted_message(unknown), {"unknown_ops": unknown})
    base = {n: audit(baseline_cls, n)[0] for n in lengths}
    base_eval, _ = audit(baseline_cls, T, "eval")
    ratio = cand[T].total / base[T].total
    eval_ratio = cand_eval.total / base_eval.total
    tokens = g.batch_size * T
    eval_over_training = (cand_eval.total / (g.scoring_batch * T)) / max(1e-30, cand_forward / tokens)
    metrics = {
        "flops_per_token": cand[T].total / tokens,
        "baseline_flops_per_token": base[T].total / tokens,
        "flop_ratio": ratio,
        "eval_flop_ratio": eval_ratio,
        "eval_to_training_forward_flop_ratio": eval_over_training,
        "matmul_flop_share": cand[T].matmul / max(1, cand[T].total),
    }
    if ratio > gate.flop_bound_ratio:
        raise GateFailure(Reason.FLOP_PARITY, f"forward+backward costs {ratio:.3f}x the baseline's FLOPs per token "
                          f"at length {T} (bound {gate.flop_bound_ratio:.2f}x)", metrics)
    # Scoring runs the forward alone, in eval mode under no_grad. Work done only there is refused once it is over
    # the bound both against the baseline's and against the candidate's own training forward: a mechanism that does
    # the same work in both regimes is judged by its training step alone (a forward-heavy one measures a higher
    # ratio without the backward: Hyena 1.05x against 0.90x).
    if eval_ratio > gate.flop_bound_ratio and eval_over_training > gate.flop_bound_ratio:
        raise GateFailure(Reason.FLOP_PARITY, f"the forward in eval mode under torch.no_grad() costs "
                          f"{eval_ratio:.3f}x the baseline's FLOPs per token and {eval_over_training:.3f}x the "
                          f"training forward's at length {T} (bound {gate.flop_bound_ratio:.2f}x); do the same work "
                          f"in training and evaluation", metrics)

    if not horizon:
        return metrics

    def growth(reports):
        return math.log(reports[lengths[-1]].total / reports[lengths[-2]].total) / math.log(lengths[-1] / lengths[-2])

    # The bound must also hold beyond the training context: the ratio is carried to ``complexity_horizon`` times
    # the context along each one's growth between T/2 and T. Comparing the exponents alone refused programs that
    # are cheaper at every length (multi-query attention: the same quadratic term, smaller projections, so a
    # steeper-looking local exponent).
    cand_growth, base_growth = growth(cand), growth(base)
    horizon_ratio = ratio * gate.complexity_horizon ** (cand_growth - base_growth)
    metrics.update({"flop_growth_exponent": cand_growth, "baseline_flop_growth_exponent": base_growth,
                    "flop_ratio_at_horizon": horizon_ratio})
    if horizon_ratio > gate.flop_bound_ratio:
        raise GateFailure(Reason.COMPLEXITY, f"cost grows as length^{cand_growth:.2f} between lengths "
                          f"{lengths[-2]} and {lengths[-1]}, the baseline's as length^{base_growth:.2f}: at length "
                          f"{gate.complexity_horizon * T:.0f} it would cost {horizon_ratio:.2f}x the baseline's "
                          f"(bound {gate.flop_bound_ratio:.2f}x)", metrics)
    return metrics


def _step_cost(module: nn.Module, x: torch.Tensor, device: torch.device, bf16: bool = False) -> tuple[float, int]:
    """One training step of the module alone on ``x`` (a ``model_input``): seconds, and bytes saved for backward
    (activation memory). On the CPU the seconds are the process's CPU time: the step runs on one thread
    (``_gate_threads``), and wall time would add whatever time other processes held the core, which lengthens a long
    step more than a short one (a legitimate prefix-sum attention measured 4.4x the baseline's step under a loaded
    test suite, 2.7x alone). On CUDA, wall time between synchronisations."""
    saved, seen = [0], set()
    clock = time.perf_counter if device.type == "cuda" else time.process_time

    def pack(t):
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key not in seen:
            seen.add(key)
            saved[0] += t.numel() * t.element_size()
        return t

    if device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
    from harness.sandbox.train import autocast

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(device, bf16):
        y = module(x)
    y.float().square().mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - start, saved[0]


def check_runtime_memory(attention_cls: type, baseline_cls: type, g: Geometry, gate, device: str, repeats: int = 5,
                         bf16: bool = False) -> dict:
    """Training steps of each attention alone at the training batch, on ``device``, under the training's bf16
    autocast where ``bf16`` (CUDA only): seconds and activation memory against the baseline's; and the candidate's
    state must not change."""
    dev = torch.device(device)
    modules = {"base": construct(baseline_cls, g).to(dev).train(), "cand": construct(attention_cls, g).to(dev).train()}
    generator = torch.Generator().manual_seed(0)

    def inputs():  # a fresh one per step: the step's backward frees the LayerNorm's graph
        return model_input(g.batch_size, g.context_len, g.d_model, generator, dev)[0]

    times = {"base": [], "cand": []}
    memory = {}
    # Training steps at the training's batch: state a forward kept there only (the statefulness check calls it with
    # a batch of 2) would be uncounted weights, trained by hand.
    state_before = _snapshot(modules["cand"])
    try:
        for name, module in modules.items():  # warm-up and memory
            x = inputs()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            _, saved = _step_cost(module, x, dev, bf16)
            peak = torch.cuda.max_memory_allocated() - before if dev.type == "cuda" else saved
            memory[name] = max(saved, peak)
        for _ in range(repeats):  # interleaved, so that load on the machine hits both alike
            for name, module in modules.items():
                times[name].append(_step_cost(module, inputs(), dev, bf16)[0])
                module.zero_grad(set_to_none=True)
    except torch.OutOfMemoryError as exc:
        raise GateFailure(Reason.MEMORY, f"out of memory in a training step at batch {g.batch_size}, length "
                          f"{g.context_len}: {exc}") from exc
    except TensorSubclassError as exc:
        raise GateFailure(Reason.POLICY, str(exc)) from exc
    except Exception as exc:
        raise GateFailure(Reason.CRASH, f"a training step failed: {type(exc).__name__}: {exc}") from exc
    changed = _changed(state_before, _snapshot(modules["cand"]))
    if changed is not None:
        raise GateFailure(Reason.STATEFULNESS, f"forward changed the module's state: {changed} differs after "
                          f"training steps at batch {g.batch_size}")
    time_ratio = statistics.median(times["cand"]) / statistics.median(times["base"])
    memory_ratio = memory["cand"] / max(1, memory["base"])
    metrics = {"step_time_ratio": time_ratio, "memory_ratio": memory_ratio,
               "attention_step_ms": 1000 * statistics.median(times["cand"]),
               "baseline_attention_step_ms": 1000 * statistics.median(times["base"])}
    if memory_ratio > gate.memory_bound_ratio:
        raise GateFailure(Reason.MEMORY, f"a training step needs {memory_ratio:.2f}x the baseline's activation "
                          f"memory (bound {gate.memory_bound_ratio:.1f}x)", metrics)
    if time_ratio > gate.runtime_bound_ratio:
        raise GateFailure(Reason.RUNTIME, f"a training step takes {time_ratio:.2f}x the baseline's time "
                          f"(bound {gate.runtime_bound_ratio:.1f}x)", metrics)
    return metrics


# Ratios of the budget checks: the gate reports, for each, the highest found at any attention width.
WIDTH_RATIOS = ("flop_ratio", "eval_flop_ratio", "eval_to_training_forward_flop_ratio", "flop_ratio_at_horizon",
                "step_time_ratio", "memory_ratio")


def at_every_width(check, widths: list[Geometry]) -> dict:
    """``check(g)`` at each attention width the training builds, the largest first: a program could tell the widths
    apart (``d_model`` is its constructor's argument) and spend more at one the gate never built. The metrics are the
    largest width's, each of ``WIDTH_RATIOS`` the highest at any width; a failure at another width names it."""
    metrics = {}
    for i, g in enumerate(widths):
        try:
            found = check(g)
        except GateFailure as exc:
            if not i:
                raise
            raise GateFailure(exc.reason, f"{exc.message} (at d_model {g.d_model} with {g.n_heads} heads, the "
                              "attention of a smaller rung)", exc.details) from exc
        metrics = metrics or dict(found)
        for key in WIDTH_RATIOS:
            if key in found:
                metrics[key] = max(metrics[key], found[key])
    return metrics


def run_gate(attention_cls: type, baseline_cls: type, profile, device: str, log=None) -> tuple[dict, dict]:
    """All dynamic checks in order; returns (metrics, seconds per check). Raises GateFailure on the first failure."""
    g, gate, widths = Geometry.of(profile), profile.gate, Geometry.every(profile)
    bf16 = bool(profile.bf16_autocast)  # the training's autocast, which applies on CUDA only
    steps = [
        ("shape", lambda: check_shape(attention_cls, g)),
        # Before the probes that compare two calls: a module that updates its state at every call (power iteration)
        # makes them differ whatever their inputs, and they would name a leak.
        ("statefulness", lambda: check_statefulness(attention_cls, g)),
        ("causality", lambda: check_causality(attention_cls, g, gate.causality_atol)),
        ("batch_independence", lambda: check_batch_independence(attention_cls, g, gate.causality_atol)),
        ("param_parity", lambda: check_params(attention_cls, baseline_cls, g, profile, gate.param_tolerance_frac)),
        ("flop_parity", lambda: at_every_width(
            lambda w: check_flops(attention_cls, baseline_cls, w, gate, device, bf16, horizon=w == g), widths)),
        ("runtime_memory", lambda: at_every_width(
            lambda w: check_runtime_memory(attention_cls, baseline_cls, w, gate, device, bf16=bf16), widths)),
    ]
    metrics, timings = {}, {}
    steady_allocator()
    with _gate_threads():
        for name, step in steps:
            start = time.perf_counter()
            try:
                metrics.update(step())
            finally:
                timings[name] = time.perf_counter() - start
                if log:
                    log(f"gate {name}: {timings[name]:.2f}s")
    return metrics, timings


def steady_allocator() -> None:
    """Fix glibc malloc's thresholds for the rest of the process. By default it hands freed memory at the top of the
    heap back to the kernel and moves its mmap threshold as it goes, so a module that allocates large temporaries
    pays page faults in some steps and not in others: the prefix-sum linear attention of ``tests/legitimate.py``
    measured 1.7x one run and 4.8x the next against the baseline's step time, 1.7-2.2x with fixed thresholds.
    Without glibc there is nothing to fix."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES)
    mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES)


@contextlib.contextmanager
def _gate_threads():
    """The probes are thousands of small CPU ops. One intra-op thread runs them as fast as two on a quiet 2-core
    machine, and spares them the many-fold slowdown of a fork/join per op when other processes (parallel
    evaluations) hold the cores (results/bench/gate_timings.md). Every check and both sides of every ratio run
    under the same setting; the caller's thread count is restored for what follows."""
    threads = torch.get_num_threads()
    torch.set_num_threads(GATE_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def check_trained_leak(model: LanguageModel, val_tokens, profile, n_sequences: int = 8) -> dict:
    """On the trained model: scramble the tokens after position t of real validation sequences; the
    logits at positions <= t must not move. Run in float32, eval mode, on the training device."""
    device = next(model.parameters()).device
    if device.type == "cpu":
        with _gate_threads():
            return _trained_leak(model, val_tokens, profile, n_sequences, device)
    return _trained_leak(model, val_tokens, profile, n_sequences, device)


def _trained_leak(model: LanguageModel, val_tokens, profile, n_sequences: int, device) -> dict:
    from harness.sandbox.train import validation_windows

    windows = validation_windows(val_tokens, profile.context_len_tokens, device)[:n_sequences, :-1]
    model.eval()
    T = windows.shape[1]
    generator = torch.Generator(device=device).manual_seed(17)
    worst = 0.0
    with torch.no_grad():
        logits, _ = model(windows)
        for t in _cut_points(T):
            scrambled = windows.clone()
            scrambled[:, t + 1 :] = torch.randint(0, profile.vocab_size, scrambled[:, t + 1 :].shape,
                                                  generator=generator, device=device)
            other, _ = model(scrambled)
            scale = max(1.0, logits[:, : t + 1].abs().max().item())
            diff = (logits[:, : t + 1] - other[:, : t + 1]).abs().max().item()
            worst = max(worst, diff / scale)
            if not diff <= profile.gate.trained_state_rtol * scale:
                raise GateFailure(Reason.LEAK_AFTER_TRAINING, f"after training, scrambling the tokens after position "
                                  f"{t} changed the predictions at positions <= {t} by {diff:.3g}")
    return {"trained_leak_max_rel": worst}

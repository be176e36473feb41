"""Run-time tampering: the callables the frozen model and the harness rely on, checked after each stage where a
program's code ran.

The static policy refuses the known ways to patch torch or the harness (``F.cross_entropy = ...``, through an
alias, through ``type(...)``). This catches what gets past it. Before a program loads, ``take()`` keeps every
watched callable by identity:
- ``torch.nn.functional``, and the functions of ``torch`` and ``torch.autograd``;
- every attribute of ``torch.Tensor`` and of its C base;
- what decides a module's computation on ``torch.nn.Module`` and on each ``torch.nn`` module class
  (``CALL_MEMBERS``), and the properties of those classes;
- the functions, methods and constants of the harness modules that run in the sandbox.

A Python function can change while it stays the same object, so for each watched function (a static or class
method's too) its parts are kept as well (``function_parts``): the code, the defaults, the keyword defaults, the
attribute dictionary and the contents of its closure cells; for a property, its three functions.
``F.layer_norm.__code__ = ...`` would otherwise change what the frozen model computes through the very object it
captured at import.

``changed(before)`` names each one that is no longer the same object, or gone. A ``CALL_MEMBERS`` attribute
added to a class also counts: a new ``forward`` or ``__torch_function__`` on a frozen class changes what it
computes. New names in a module namespace do not count: torch adds attributes to itself as it imports
submodules lazily. Torch itself replaces a few callables at run time, and those are left out (``TORCH_REPLACES``):
importing dynamo wraps ``torch.manual_seed``, the first ``torch.compile`` patches ``Module.__init__``, and the
first optimizer of a class wraps its ``step``; so the optimizers are not watched. Process-wide
settings (matmul precision, default dtype, grad, anomaly, determinism and autocast modes) are kept by value and
compared the same way. The
sandbox checks after loading the program, after the gate, after training and after the forward pass, and refuses
a change as ``policy``, naming it. A patch undone before the next check is not seen here; the static policy is
what refuses those.
"""

from __future__ import annotations

import sys
import types

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim

# The harness modules whose functions a sandbox runs; any of them not imported yet is watched once it is.
HARNESS_MODULES = ("harness.scaffold", "harness.data", "harness.sandbox.train", "harness.sandbox.objective",
                   "harness.sandbox.checks", "harness.sandbox.flops", "harness.sandbox.entry",
                   "harness.sandbox.mixing", "harness.sandbox.loader", "harness.trusted.scoring")


# What a module computes: its forward, how it is called, and the tensor protocol.
CALL_MEMBERS = ("forward", "__call__", "_call_impl", "_wrapped_call_impl", "__torch_function__", "__getattr__",
                "__setattr__", "__getattribute__")
TORCH_REPLACES = ("torch.manual_seed",)


class RuntimeTampering(Exception):
    """The program changed torch or the harness while it ran."""


class Parts(tuple):
    """Values kept by identity, for what can change in place: a dictionary's items, a closure's cells. Equal to
    another ``Parts`` when they hold the same objects in the same order (keys, which are strings, by value)."""

    def same(self, other: object) -> bool:
        return isinstance(other, Parts) and len(self) == len(other) and all(
            a is b or (isinstance(a, str) and a == b) for a, b in zip(self, other))


_EMPTY_CELL = object()


def _cell(cell) -> object:
    try:
        return cell.cell_contents
    except ValueError:  # a cell not filled yet
        return _EMPTY_CELL


def _items(mapping: dict | None) -> Parts:
    return Parts(() if mapping is None else (mapping, *(x for item in mapping.items() for x in item)))


def function_parts(name: str, value: object) -> dict[str, object]:
    """What can be changed in place on a Python function or a property, under names that say which part."""
    if isinstance(value, property):
        # property.__init__ re-initialises a property in place: the same object then runs other functions
        return {f"{name}.fget": value.fget, f"{name}.fset": value.fset, f"{name}.fdel": value.fdel,
                **function_parts(f"{name}.fget", value.fget)}
    function = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
    if not isinstance(function, types.FunctionType):
        return {}
    return {f"{name}.__code__": function.__code__, f"{name}.__defaults__": function.__defaults__,
            f"{name}.__kwdefaults__": _items(function.__kwdefaults__), f"{name}.__dict__": _items(vars(function)),
            f"{name}.__closure__": Parts(_cell(c) for c in function.__closure__ or ())}


def _module_classes() -> list[type]:
    found = [nn.Module] + [v for v in vars(nn).values() if isinstance(v, type) and issubclass(v, nn.Module)]
    return list(dict.fromkeys(found))


def _namespaces() -> list[tuple[str, object]]:
    spaces = [("torch.nn.functional", F), ("torch", torch), ("torch.autograd", torch.autograd)]
    spaces += [(name, sys.modules[name]) for name in HARNESS_MODULES if name in sys.modules]
    return spaces


def _watched() -> tuple[dict[str, object], set[str]]:
    """(every watched object by name, the names of classes' own attributes)."""
    objects, class_attributes = {}, set()
    for name, space in _namespaces():
        for attr, value in list(vars(space).items()):
            # The harness's own constants (its thresholds, its training recipe's numbers) are watched too.
            if attr.startswith("__") or isinstance(value, types.ModuleType) or not (
                    callable(value) or name.startswith("harness.")):
                continue
            objects[f"{name}.{attr}"] = value
            if isinstance(value, type) and value.__module__ == getattr(space, "__name__", None):
                for member, inner in list(vars(value).items()):  # a harness class's own methods
                    objects[f"{name}.{attr}.{member}"] = inner
    for cls in (torch.Tensor, torch._C.TensorBase):
        for attr, value in list(vars(cls).items()):
            objects[f"{cls.__module__}.{cls.__qualname__}.{attr}"] = value
    for cls in _module_classes():
        for attr in CALL_MEMBERS:
            key = f"{cls.__module__}.{cls.__qualname__}.{attr}"
            class_attributes.add(key)
            if attr in vars(cls):
                objects[key] = vars(cls)[attr]
        for attr, value in list(vars(cls).items()):  # what a module computes may read them (RNNBase.all_weights)
            if isinstance(value, property):
                objects[f"{cls.__module__}.{cls.__qualname__}.{attr}"] = value
    for name in TORCH_REPLACES:
        objects.pop(name, None)
    for name, value in list(objects.items()):
        objects.update(function_parts(name, value))
    return objects, class_attributes


def _settings() -> dict[str, object]:
    """Process-wide torch settings a program could change, which would change how the frozen model trains or is
    scored after the program's own code has returned (matmul precision, default dtype, grad and autocast modes),
    by the getter that reads each. Settings the sandbox itself sets after this snapshot (TF32 in the forward pass,
    the number of threads) are not among them; the static policy refuses every ``set_*`` and ``use_*`` function."""
    return {
        "torch.get_float32_matmul_precision()": torch.get_float32_matmul_precision(),
        "torch.get_default_dtype()": torch.get_default_dtype(),
        "torch.get_default_device()": torch.get_default_device(),
        "torch.is_grad_enabled()": torch.is_grad_enabled(),
        "torch.is_inference_mode_enabled()": torch.is_inference_mode_enabled(),
        "torch.is_anomaly_enabled()": torch.is_anomaly_enabled(),
        "torch.are_deterministic_algorithms_enabled()": torch.are_deterministic_algorithms_enabled(),
        "torch.get_deterministic_debug_mode()": torch.get_deterministic_debug_mode(),
        **{f"torch.is_autocast_enabled({device!r})": torch.is_autocast_enabled(device) for device in ("cpu", "cuda")},
    }


def take() -> dict[str, object]:
    """The watched callables and settings, once the harness modules a sandbox runs are imported."""
    import importlib

    for name in HARNESS_MODULES:
        importlib.import_module(name)
    return {**_watched()[0], **_settings()}


def changed(before: dict[str, object]) -> list[str]:
    """The watched names whose object is no longer the one ``before`` holds, or that appeared on a class, and the
    settings whose value is no longer the one ``before`` holds."""
    now, class_attributes = _watched()
    settings = _settings()
    out = [name for name, value in before.items() if name not in settings and not _same(value, now.get(name, _GONE))]
    out += [name for name, value in settings.items() if name in before and before[name] != value]
    out += [name for name in class_attributes if name in now and name not in before]
    return sorted(set(out))


_GONE = object()


def _same(before: object, now: object) -> bool:
    return before.same(now) if isinstance(before, Parts) else before is now


def check(before: dict[str, object], stage: str) -> None:
    """Raise RuntimeTampering naming what changed since ``before``, the snapshot taken before the program loaded."""
    names = changed(before)
    if names:
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        raise RuntimeTampering(f"the program changed {shown} at run time ({stage}): a program may not modify "
                               "torch or the harness")

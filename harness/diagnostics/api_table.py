"""Generate the table of what a block may use from torch, math and einops (``harness/trusted/api_table.py``).

    python -m harness.diagnostics.api_table            # rewrite the table from the installed torch and einops
    python -m harness.diagnostics.api_table --check    # exit 1 when the committed table differs

The static policy runs in OpenEvolve's process, which never imports torch, so it reads a committed table; this
command writes it from the installed packages by the rules below, and ``tests/test_api_table.py`` checks that the
committed table is what the rules give. A new torch release changes the table only through a reviewed diff.

The table has two parts:

- ``MEMBERS``: per module a block may import, the names it may read through the module (``torch.softmax``,
  ``F.scaled_dot_product_attention``, ``nn.Linear``). For torch itself these are torch's operators (the functions
  ``torch.overrides`` lists as dispatching on tensors, and their in-place forms), its dtypes and constants, and a
  short list of the rest, by hand: factories, the types of tensors and devices, and the gradient and precision
  modes. Nothing else of torch's namespace (its JIT, its storage, its threads and its process settings) is in it.
- ``ATTRIBUTES``: the names a block may read on a value it holds (a tensor, a torch.nn module, a dtype, a device,
  a Python str or list, an autograd context). A block may also read the names it gives its own objects.

Every entry then passes the policy's deny rules (``harness.trusted.policy``): no private or special name, no module,
no forbidden attribute, no process-wide setting, no hook.
"""

from __future__ import annotations

import argparse
import ast
import collections.abc
import functools
import importlib
import inspect
import math
import sys
import textwrap
import types
import typing
from pathlib import Path

import einops
import torch

from harness.trusted import policy

TABLE_PATH = Path(__file__).resolve().parents[1] / "trusted" / "api_table.py"

# Of torch's namespace beyond its operators and constants, what a block may use.
TORCH_NON_OPS = frozenset({
    # factories
    "arange", "as_tensor", "bartlett_window", "blackman_window", "empty", "empty_strided", "eye", "full",
    "hamming_window", "hann_window", "kaiser_window", "linspace", "logspace", "normal", "ones", "rand", "rand_like",
    "randint", "randint_like", "randn", "randn_like", "randperm", "range", "scalar_tensor", "tensor", "tril_indices",
    "triu_indices", "vander", "zeros",
    # types of values, and what they tell
    "Generator", "Size", "Tensor", "device", "dtype", "finfo", "iinfo", "layout", "memory_format",
    "broadcast_shapes", "can_cast", "get_default_dtype", "is_tensor", "promote_types", "result_type",
    # gradient and precision modes, scoped by a with block; and what mode is on
    "enable_grad", "inference_mode", "no_grad", "get_autocast_dtype", "is_autocast_enabled", "is_grad_enabled",
    "is_inference_mode_enabled",
    # operators that torch.overrides does not list
    "lu", "pca_lowrank", "svd_lowrank", "sym_sqrt", "unique", "vmap",
})

# Functions of torch.nn.functional that are torch's dispatch machinery, not operators.
FUNCTIONAL_MACHINERY = frozenset({
    "assert_int_or_pair", "boolean_dispatch", "handle_torch_function", "has_torch_function",
    "has_torch_function_unary", "has_torch_function_variadic",
})

# torch.nn's modules but SyncBatchNorm, which synchronises through torch.distributed, and ParameterDict, whose
# ``[key]`` is ``getattr(self, key)``: with a key computed at run time ("_" * 2 + "class" + "_" * 2) it handed a
# block its class, on which every exemption the policy makes for ``self`` applied to any object.
NN_EXCLUDED = frozenset({"SyncBatchNorm", "ParameterDict"})

AUTOGRAD_MEMBERS = frozenset({"Function", "Variable", "enable_grad", "grad", "inference_mode", "no_grad"})

# einops' functions, but not ``asnumpy`` (numpy interop).
EINOPS_EXCLUDED = frozenset({"asnumpy"})


def _public(module: types.ModuleType) -> dict[str, object]:
    return {name: getattr(module, name) for name in dir(module) if not name.startswith("_")}


def _is_function(obj: object) -> bool:
    return isinstance(obj, (types.FunctionType, types.BuiltinFunctionType))


def _defined_in(obj: object, prefix: str) -> bool:
    return (getattr(obj, "__module__", None) or "").startswith(prefix)


def _is_module_class(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, torch.nn.Module)


def _torch_members() -> set[str]:
    members = _public(torch)
    ops = {f.__name__ for f in torch.overrides.get_overridable_functions()[torch]} & members.keys()
    in_place = {f"{name}_" for name in ops} & members.keys()
    values = {name for name, obj in members.items()
              if isinstance(obj, (torch.dtype, torch.layout, torch.memory_format, float))}
    return ops | in_place | values | (TORCH_NON_OPS & members.keys())


def _members() -> dict[str, set[str]]:
    """Per allowed module (but typing and functools, whose members the policy lists by hand), the names the rules
    allow, before the deny rules."""
    nn, functional = torch.nn, torch.nn.functional
    parametrize, parametrizations = torch.nn.utils.parametrize, torch.nn.utils.parametrizations
    layers = importlib.import_module("einops.layers.torch")
    return {
        "torch": _torch_members(),
        "torch.nn": {name for name, obj in _public(nn).items()
                     if _is_module_class(obj) and not _defined_in(obj, "torch.nn.parallel")
                     or name in ("Parameter", "Buffer")} - NN_EXCLUDED,
        "torch.nn.functional": {name for name, obj in _public(functional).items()
                                if _is_function(obj) and name not in FUNCTIONAL_MACHINERY},
        "torch.nn.init": {name for name, obj in _public(nn.init).items() if _defined_in(obj, "torch.nn.init")},
        "torch.nn.utils": {name for name, obj in _public(nn.utils).items()
                           if _is_function(obj) and _defined_in(obj, "torch.nn.utils")},
        "torch.nn.utils.parametrize": {name for name, obj in _public(parametrize).items()
                                       if _defined_in(obj, "torch.nn.utils.parametrize")},
        "torch.nn.utils.parametrizations": {name for name, obj in _public(parametrizations).items()
                                            if _is_function(obj)
                                            and _defined_in(obj, "torch.nn.utils.parametrizations")},
        "torch.fft": {name for name, obj in _public(torch.fft).items() if _is_function(obj)},
        "torch.linalg": {name for name, obj in _public(torch.linalg).items() if _is_function(obj)},
        "torch.special": {name for name, obj in _public(torch.special).items() if _is_function(obj)},
        "torch.autograd": AUTOGRAD_MEMBERS & _public(torch.autograd).keys(),
        "math": set(_public(math)),
        "einops": {name for name, obj in _public(einops).items()
                   if (_is_function(obj) or isinstance(obj, type)) and _defined_in(obj, "einops")} - EINOPS_EXCLUDED,
        "einops.layers": set(),
        "einops.layers.torch": {name for name, obj in _public(layers).items() if _is_module_class(obj)},
    }


def _module_classes(members: dict[str, set[str]]) -> list[type]:
    """The torch.nn modules of the table, einops' layers, and the list that holds a parametrisation."""
    layers = importlib.import_module("einops.layers.torch")
    return [getattr(torch.nn, name) for name in members["torch.nn"]] + [
        getattr(layers, name) for name in members["einops.layers.torch"]] + [
        torch.nn.utils.parametrize.ParametrizationList]


def _stored_attributes(cls: type) -> set[str]:
    """The attributes the methods of ``cls`` and of its bases set on ``self`` (``self.in_features = ...``), and
    those its class body declares, where their source is at hand."""
    return set().union(*(_own_stored_attributes(klass) for klass in cls.__mro__))


@functools.lru_cache(maxsize=None)
def _own_stored_attributes(klass: type) -> frozenset[str]:
    """``_stored_attributes`` of ``klass`` alone, not its bases: parsed once per class (nn.Module's source is in every
    layer's bases)."""
    names = set(getattr(klass, "__annotations__", {})) | set(getattr(klass, "__constants__", ()))
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
    except (OSError, TypeError, SyntaxError):
        return frozenset(names)  # a class written in C: dir() lists what it has
    return frozenset(names | {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                              and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name)
                              and node.value.id == "self"})


def _value_attributes(members: dict[str, set[str]]) -> set[str]:
    """What the values a block may hold have: tensors, parameters, the torch.nn modules of the table (and what their
    methods store on them), dtypes, devices, sizes, generators, the named tuples torch's operators return, autograd's
    context, and Python's own values."""
    names = set()
    for cls in _module_classes(members):
        names |= set(dir(cls)) | _stored_attributes(cls)
    values = [torch.Tensor, torch.nn.Parameter, torch.float32, torch.device("cpu"), torch.Size([1]),
              torch.finfo(torch.float32), torch.iinfo(torch.int32), torch.Generator(),
              torch.autograd.Function, torch.autograd.function.FunctionCtx, torch.autograd.function.BackwardCFunction,
              str, int, float, complex, bool, list, tuple, dict, set, frozenset, slice, range, property,
              functools.partial(int)]
    values += [cls for cls in _public(torch.return_types).values() if isinstance(cls, type)]
    for value in values:
        names |= set(dir(value))
    # An exception's arguments. (Not a generator's send or throw: a generator torch hands out, such as the function
    # behind parametrize.cached(), would enter its with-block and never leave it.)
    names |= {"args"}
    # register_parametrization stores these on the module it parametrises
    return names | _helper_stores(torch.nn.utils.parametrize, on_others_only=False)


def _helper_stores(helper: types.ModuleType, on_others_only: bool) -> set[str]:
    """The attributes ``helper``'s source stores; with ``on_others_only``, those it stores on an object other than
    its own ``self`` (what it puts on the module it is given)."""
    return {node.attr for node in ast.walk(ast.parse(inspect.getsource(helper)))
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
            and not (on_others_only and isinstance(node.value, ast.Name) and node.value.id == "self")}


# What torch.nn stores on a module from outside its classes: the parametrisations and the weight normalisations.
NN_HELPERS = (torch.nn.utils.parametrize, torch.nn.utils.weight_norm, torch.nn.utils.spectral_norm,
              torch.nn.utils.parametrizations)


def _private(names: set[str]) -> set[str]:
    return {name for name in names if name.startswith("_") and not (name.startswith("__") and name.endswith("__"))}


def _module_private_names() -> set[str]:
    """The private names of nn.Module itself (its registries, its call path, its state-dict machinery) and those the
    helpers store on any module they are given (not on their own ``self``): on every block's ``self`` these are
    torch's own."""
    names = set(dir(torch.nn.Module)) | set(vars(torch.nn.Module())) | _stored_attributes(torch.nn.Module)
    for helper in NN_HELPERS:
        names |= _helper_stores(helper, on_others_only=True)
    return _private(names)


def _class_private_names(members: dict[str, set[str]], module_private: set[str]) -> dict[str, set[str]]:
    """Per class of the table (by its full name), the private names it and its torch bases below nn.Module define
    or store: on the ``self`` of a block class derived from it, these are torch's (RNNBase.all_weights does
    ``getattr(self, name)`` for each name in ``self._all_weights``). A block class that derives from nn.Module alone
    may use them as its own (``self._reset_parameters()``)."""
    found = {}
    for cls in _module_classes(members):
        names = set()
        for klass in cls.__mro__:
            if klass in (torch.nn.Module, object):
                continue
            names |= set(vars(klass)) | _stored_attributes(klass)
        names = _private(names) - module_private
        if names:
            found[f"{cls.__module__ if cls.__module__.startswith('einops') else _public_path(cls)}.{cls.__name__}"] = names
    return found


def _public_path(cls: type) -> str:
    """Where a block reads ``cls`` from: torch.nn for its layers, the parametrize module for ParametrizationList."""
    return "torch.nn.utils.parametrize" if cls is torch.nn.utils.parametrize.ParametrizationList else "torch.nn"


def _python_and_torch_objects() -> list[object]:
    """Objects that are handles on the interpreter or on torch's internals, whose attributes the table leaves out:
    Python's functions, generators, frames, code, descriptors, classes and typing aliases, and torch's graph nodes
    and storages. (What an exception has beyond the table is its message's parts, but for ``obj``, which the policy
    refuses by name.)"""
    node = (torch.ones(1, requires_grad=True) * 2).grad_fn
    objects = [types.FunctionType, types.MethodType, types.BuiltinFunctionType, types.WrapperDescriptorType,
                types.MethodWrapperType, types.MethodDescriptorType, types.ClassMethodDescriptorType,
                types.GetSetDescriptorType, types.MemberDescriptorType, types.CodeType, types.FrameType,
                types.TracebackType, types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType,
                types.ModuleType, types.CellType, types.MappingProxyType, types.SimpleNamespace, property,
                staticmethod, classmethod, type, object, super, functools.partial, typing.Type, typing.List,
                typing.Optional[int], typing.Callable[[int], int], typing.Union, typing.Iterable[int],
                collections.abc.Iterable, type(collections.abc.Iterable), node, node.next_functions[0][0],
                torch.UntypedStorage, torch.TypedStorage, torch.autograd.graph.Node]
    return objects


def _unlisted(attributes: set[str]) -> set[str]:
    """The public attributes of ``_python_and_torch_objects`` that the table does not list: a block that gives its
    own objects one of these names may still not read it off anything but self (``e.obj`` is the object an
    AttributeError failed on, whatever the block calls ``self.obj``)."""
    names = set()
    for obj in _python_and_torch_objects():
        names |= {name for name in dir(obj) if not name.startswith("_")}
    return names - attributes


def _submodules() -> dict[str, set[str]]:
    """Per allowed module, its attributes that are modules a block may not use (``torch.distributions``)."""
    found = {}
    for module in policy.ALLOWED_MODULES:
        base = importlib.import_module(module)
        found[module] = {name for name, obj in _public(base).items()
                         if isinstance(obj, types.ModuleType) and f"{module}.{name}" not in policy.ALLOWED_MODULES}
    return found


def _class_holders(members: dict[str, set[str]]) -> set[str]:
    """Attributes that hold a class on the table's module classes (``nn.LazyLinear.cls_to_become`` is
    ``nn.Linear``): read, they hand a block a torch class, whose methods run on any object."""
    return {name for cls in _module_classes(members) for name in dir(cls)
            if not name.startswith("_") and isinstance(inspect.getattr_static(cls, name, None), type)}


def refused_on_values(name: str) -> bool:
    """Whether the policy refuses ``name`` on every object but the block's own (``self.seed``, ``gen.manual_seed``,
    ``self.proj.apply``). The rules that depend on where a name is read (a module's name, a process-wide setting)
    stay the policy's."""
    forbidden = policy.FORBIDDEN_ATTRIBUTES - policy.LOCAL_ATTRIBUTES - {"apply"}
    return (name.startswith("_") or name in forbidden or name in policy.FORBIDDEN_NAMES
            or name in policy.LOOKUP_BUILTINS or "hook" in name.lower())


def refused_through_modules(name: str) -> bool:
    """Whether the policy refuses ``name`` read through a module (``torch.load``, ``torch.set_num_threads``)."""
    return (refused_on_values(name) or name in policy.FORBIDDEN_ATTRIBUTES or name in policy.KNOWN_MODULE_ATTRIBUTES
            or name.startswith(policy.SETTING_PREFIXES))


def generate() -> dict:
    members = _members()
    for module, names in members.items():
        base = importlib.import_module(module)
        members[module] = {n for n in names if not refused_through_modules(n)
                           and not isinstance(getattr(base, n), types.ModuleType)}
    attributes = {n for n in _value_attributes(members) if not refused_on_values(n)} - _class_holders(members)
    module_private = _module_private_names()
    return {"torch": torch.__version__.split("+")[0], "einops": einops.__version__, "members": members,
            "attributes": attributes, "private": module_private,
            "class_private": _class_private_names(members, module_private), "submodules": _submodules(),
            "unlisted": _unlisted(attributes),
            "module_names": {n for n in dir(torch.nn.Module) if not n.startswith("_")},
            "class_holders": _class_holders(members)}


def _names(names: set[str], indent: int) -> str:
    pad = " " * indent
    body = textwrap.fill(", ".join(f'"{n}"' for n in sorted(names)), width=120 - indent, break_long_words=False,
                         break_on_hyphens=False)
    return "frozenset({\n" + textwrap.indent(body, pad) + ",\n" + " " * (indent - 4) + "})" if names \
        else "frozenset()"


def _rows(table: dict[str, set[str]]) -> str:
    return "\n".join(f'    "{module}": {_names(names, 8)},' for module, names in sorted(table.items()))


def render(table: dict) -> str:
    return f'''"""What a block may use: per module, the names it may read through it, and the attributes it may read on the
values it holds. Generated from torch {table["torch"]} and einops {table["einops"]} by ``python -m
harness.diagnostics.api_table``: change the rules there, never this file."""

TORCH_VERSION = "{table["torch"]}"
EINOPS_VERSION = "{table["einops"]}"

# Per module a block may import, the names it may read through it.
MEMBERS = {{
{_rows(table["members"])}
}}

# The attributes a block may read on the values it holds (beside the names it gives its own objects).
ATTRIBUTES = {_names(table["attributes"], 4)}

# The private names of nn.Module and of the helpers that store on a module: refused on self as everywhere.
MODULE_PRIVATE = {_names(table["private"], 4)}

# Per torch.nn class, the private names it adds below nn.Module: refused on the self of a block class derived from it.
CLASS_PRIVATE = {{
{_rows(table["class_private"])}
}}

# What Python's and torch's own objects have that the table leaves out: never readable off anything but self, even
# where the block gives its own objects the name.
UNLISTED = {_names(table["unlisted"], 4)}

# Attributes of the table's module classes that hold a class (nn.LazyLinear.cls_to_become): refused everywhere.
CLASS_HOLDERS = {_names(table["class_holders"], 4)}

# nn.Module's public names: a block's class defines none but forward and extra_repr, and sets none on self but
# training (the harness calls state_dict, train, parameters and the rest on the model).
NN_MODULE_NAMES = {_names(table["module_names"], 4)}

# Per module a block may import, its attributes that are modules it may not use.
SUBMODULES = {{
{_rows(table["submodules"])}
}}
'''


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.diagnostics.api_table", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed table differs")
    args = parser.parse_args(argv)
    text = render(generate())
    if args.check:
        same = TABLE_PATH.exists() and TABLE_PATH.read_text() == text
        print("the table is up to date" if same else f"{TABLE_PATH.name} differs from what the rules give: run "
              "python -m harness.diagnostics.api_table")
        return 0 if same else 1
    TABLE_PATH.write_text(text)
    print(f"wrote {TABLE_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

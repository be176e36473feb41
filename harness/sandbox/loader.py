"""Loading a program: the one place where a candidate's code is executed.

Only processes that may run candidate code call it: the sandbox, its rung processes, and the developer commands
that train a program in their own process (``harness train``, ``harness bench``, ``harness gpu-check``).
"""

from __future__ import annotations

import __future__
import ast
import importlib
import itertools
import sys
import types

from harness.trusted import program
from harness.trusted.policy import (ALLOWED_MODULES, called_with_self, class_use, lookups_as_attributes, module_aliases,
                                    module_chains, module_value_message, parent_map)

_LOADED_PROGRAMS = itertools.count()


class PolicyViolation(Exception):
    """The block reaches a module it may not use; found before any of its code ran."""


def check_module_attributes(source: str) -> None:
    """Resolve each attribute chain of the block that starts at a module, and each name it imports, against the
    installed modules, before the program runs. Refuse any that reaches a module outside ``ALLOWED_MODULES``: the
    static policy knows the common ones by name, this knows them all, for whatever torch is installed. Refuse a
    module, or a class, used as a value (bound, passed, stored): ``self.t = torch.Tensor`` then ``self.t.softmax =
    f`` would patch torch's own class. Sources without markers are not candidate programs and are not checked."""
    try:
        parts = program.split(source)
    except program.FrozenRegionError:
        return
    # as the static policy reads them: hasattr(torch.nn.functional, "scaled_dot_product_attention") reads a function
    block = lookups_as_attributes(ast.parse(parts.block))
    parents = parent_map(block)
    aliases = {**module_aliases(parts.head), **module_aliases(block)}
    uses = list(module_chains(block, aliases))
    uses += [(node, aliases[node.id].rsplit(".", 1)) for node in ast.walk(block)
             if isinstance(node, ast.Name) and node.id in aliases and isinstance(node.ctx, ast.Load)]
    offset = parts.head.count("\n")
    for node, chain in uses:
        try:
            _check_use(node, chain, parents)
        except PolicyViolation as exc:  # where it is, as the static policy says it
            raise PolicyViolation(f"line {getattr(node, 'lineno', 0) + offset}: {exc}") from None


def _check_use(node: ast.AST, chain: list[str], parents: dict[int, ast.AST]) -> None:
    """Refuse one use of a module's name (``node``, reading ``chain``) that the installed modules show to be refused."""
    obj, path = _resolve(chain)
    if isinstance(obj, type) and not class_use(parents, node):
        raise PolicyViolation(f"{'.'.join(chain)} is a class: it may only be instantiated, tested (isinstance), "
                              "derived from or named in an annotation, not bound to a name, passed or stored")
    if isinstance(obj, types.ModuleType) and path == ".".join(chain) and isinstance(node, ast.Attribute):
        raise PolicyViolation(module_value_message(path))
    if isinstance(obj, SHARED_CONTAINERS):
        # torch's own tables (F.GRID_SAMPLE_INTERPOLATION_MODES): written, they are state every call shares
        raise PolicyViolation(f"{'.'.join(chain)} is a {type(obj).__name__} of the module's own, which a block "
                              "may not use: write the values it needs")
    if len(chain) > 2 and not isinstance(obj, type) and _instance_method_of_a_module_class(chain) \
            and not called_with_self(parents, node):
        # nn.Module.train(F.softmax, False) set an attribute on torch's function
        raise PolicyViolation(f"{'.'.join(chain)} may only be called with self as its first argument: call "
                              "methods on an instance")
    method = parents.get(id(node))
    if isinstance(node, ast.Name) and isinstance(method, ast.Attribute) and method.value is node \
            and _instance_method_of_a_module_class(chain + [method.attr]) \
            and not called_with_self(parents, method):
        # the same through an imported class: from torch.nn import Module, then Module.train(F.softmax, False)
        raise PolicyViolation(f"{node.id}.{method.attr} may only be called with self as its first argument: "
                              "call methods on an instance")


SHARED_CONTAINERS = (dict, list, set, bytearray)


def _instance_method_of_a_module_class(chain: list[str]) -> bool:
    """Whether ``chain`` names a method of a class of torch.nn modules that takes the instance first (such methods
    set attributes on it); a staticmethod (``nn.Transformer.generate_square_subsequent_mask``) does not."""
    import inspect

    import torch.nn

    owner, _ = _resolve(chain[:-1])
    if not (isinstance(owner, type) and issubclass(owner, torch.nn.Module)):
        return False
    return not isinstance(inspect.getattr_static(owner, chain[-1], None), (staticmethod, classmethod))


def _resolve(chain: list[str]):
    """The object that ``chain`` (an allowed module's full name, then attributes) names, and the longest module
    path on the way. Raises PolicyViolation at a module outside ``ALLOWED_MODULES``; (None, "") when the first
    module is not an allowed one (the static policy refuses its import) or is not installed (the program then fails
    when it imports it), None for the object when an attribute is missing."""
    if chain[0] not in ALLOWED_MODULES:
        return None, ""
    try:
        obj = importlib.import_module(chain[0])
    except ImportError:
        return None, ""
    path, in_modules = chain[0], True
    for attr in chain[1:]:
        try:
            obj = getattr(obj, attr)
        except Exception:  # noqa: BLE001 - a missing attribute fails when the program runs
            return None, path
        in_modules = in_modules and isinstance(obj, types.ModuleType)
        if in_modules:
            path = f"{path}.{attr}"
            if path not in ALLOWED_MODULES:
                raise PolicyViolation(f"{path} is a module a block may not use; the modules it may use are "
                                      f"{sorted(ALLOWED_MODULES)}")
    return obj, path


def load_attention(source: str, filename: str):
    """Execute a (spliced) program as a fresh module and return its ATTENTION class.

    The module is registered in ``sys.modules`` under a name of its own: torch.compile (dynamo) imports, by name,
    the module of every function it inlines, and fails on a module it cannot import (the engine then trained
    every program eagerly). The name is unique per load, so that a baseline and a candidate loaded in one process
    never share globals."""
    check_module_attributes(source)
    name = f"evolved_program_{next(_LOADED_PROGRAMS)}"
    module = types.ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module
    # annotations are never evaluated, whatever the program's own future imports (one may hold any expression)
    code = compile(source, filename, "exec", flags=__future__.annotations.compiler_flag, dont_inherit=True)
    exec(code, module.__dict__)  # noqa: S102 - this is the sandbox
    return module.ATTENTION

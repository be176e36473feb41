"""Loading a program: the one place where a candidate's code is executed.

Only processes that may run candidate code call it: the sandbox, its rung processes, and the developer commands
that train a program in their own process (``harness train``, ``harness bench``, ``harness gpu-check``).
"""

from __future__ import annotations

import ast
import importlib
import itertools
import sys
import types

from harness.trusted import program
from harness.trusted.policy import ALLOWED_MODULES, module_aliases, module_chains

_LOADED_PROGRAMS = itertools.count()


class PolicyViolation(Exception):
    """The block reaches a module it may not use; found before any of its code ran."""


def check_module_attributes(source: str) -> None:
    """Resolve each attribute chain of the block that starts at a module against the installed modules, before
    the program runs, and refuse any that reaches a module outside ``ALLOWED_MODULES``: the static policy knows
    the common ones by name, this knows them all, for whatever torch is installed. Sources without markers are
    not candidate programs and are not checked."""
    try:
        parts = program.split(source)
    except program.FrozenRegionError:
        return
    block = ast.parse(parts.block)
    aliases = {**module_aliases(parts.head), **module_aliases(block)}
    for _node, chain in module_chains(block, aliases):
        try:
            obj = importlib.import_module(chain[0])
        except ImportError:
            continue  # an allowed module that is not installed: the program fails when it imports it
        path = chain[0]
        for attr in chain[1:]:
            obj = getattr(obj, attr, None)
            if not isinstance(obj, types.ModuleType):
                break
            path = f"{path}.{attr}"
            if path not in ALLOWED_MODULES:
                raise PolicyViolation(f"{path} is a module a block may not use; the modules it may use are "
                                      f"{sorted(ALLOWED_MODULES)}")


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
    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - this is the sandbox
    return module.ATTENTION

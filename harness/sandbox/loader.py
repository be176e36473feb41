"""Loading a program: the one place where a candidate's code is executed.

Only processes that may run candidate code call it: the sandbox, its rung processes, and the developer commands
that train a program in their own process (``harness train``, ``harness bench``, ``harness gpu-check``).
"""

from __future__ import annotations

import itertools
import sys
import types

_LOADED_PROGRAMS = itertools.count()


def load_attention(source: str, filename: str):
    """Execute a (spliced) program as a fresh module and return its ATTENTION class.

    The module is registered in ``sys.modules`` under a name of its own: torch.compile (dynamo) imports, by name,
    the module of every function it inlines, and fails on a module it cannot import (the engine then trained
    every program eagerly). The name is unique per load, so that a baseline and a candidate loaded in one process
    never share globals."""
    name = f"evolved_program_{next(_LOADED_PROGRAMS)}"
    module = types.ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module
    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - this is the sandbox
    return module.ATTENTION

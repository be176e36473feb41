"""Static policy of an evolved block: what code may appear between the markers.

The block is hostile until proven otherwise, and this check is the LLM's first feedback, so each violation is one
short sentence saying what to do instead. It runs on the text alone, before any of the candidate's code executes.
It is an allow-list where the language allows one:

- imports only from ``ALLOWED_IMPORT_ROOTS``, and modules only from ``ALLOWED_MODULES``: an attribute that reaches
  any other module (``torch.os``, ``typing.sys``, ``torch.serialization``) is refused;
- a module is used only as the root of an attribute (``F.softmax(...)``): never bound to a name, passed, returned
  or stored, so no alias escapes the checks below;
- of each module, only the names of its row in ``MODULE_MEMBERS`` (torch's operators, factories, dtypes and
  layers: the generated ``api_table``); on any other object, only the attributes of the table's ``ATTRIBUTES`` (what
  tensors, nn modules, dtypes and Python's values have) and the names the block gives its own objects;
- attributes are assigned only on ``self`` (and on ``ctx`` in a custom autograd Function), and underscore
  attributes are read only on ``self``. ``self`` names only the instance: it is bound only as the first parameter
  of a method, and a method of the block is called through its class only with ``self`` (``Base.forward(self,
  x)``), so no method runs with a torch class as its ``self``;
- classes derive only from ``torch.nn`` classes, ``torch.autograd.Function`` or classes of the block, and define
  no dunder method but ``__init__``, and none of nn.Module's names but ``forward`` and ``extra_repr``; every method
  of an autograd Function is a staticmethod; no builtin is rebound, and a class's name is bound only by its class
  statement; no generator (``yield``);
- no name computed at run time reaches torch's lookups by name (``register_buffer``, ``register_parametrization``,
  ``get_submodule``...): the names given to them are written out;
- no name the frozen region binds is rebound at the block's top level (the frozen code shares its globals);
- a custom autograd Function of the block is used only through ``.apply``;
- deny-lists for what an allowed object still reaches: builtins that reach the interpreter, numpy interop and
  tensor subclassing, frames, hooks, random state and global torch settings.

Python cannot be confined by a static check alone: the sandbox resolves every module attribute against the real
modules before the program runs (``harness.sandbox.loader``), and the OS confines the process.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import re
import string
from dataclasses import dataclass, field

from harness.trusted import api_table

ALLOWED_IMPORT_ROOTS = frozenset({"torch", "math", "typing", "functools", "einops"})

# Every module a block may reach, by its full name.
ALLOWED_MODULES = frozenset({
    "torch", "torch.nn", "torch.nn.functional", "torch.nn.init", "torch.nn.utils", "torch.nn.utils.parametrize",
    "torch.nn.utils.parametrizations", "torch.fft", "torch.linalg", "torch.special", "torch.autograd",
    "math", "typing", "functools", "einops", "einops.layers", "einops.layers.torch",
})

# Names whose call or mere mention gives access to the interpreter, the file system or the process.
FORBIDDEN_NAMES = frozenset({
    "eval", "exec", "compile", "open", "__import__", "globals", "locals", "vars", "setattr", "delattr",
    "input", "breakpoint", "exit", "quit", "help", "memoryview", "__builtins__", "__loader__",
    "__spec__", "os", "sys", "subprocess", "socket", "shutil", "pathlib", "importlib", "builtins",
    "ctypes", "pickle", "marshal", "inspect", "gc", "threading", "multiprocessing", "signal", "time",
    "random", "io", "tempfile", "urllib", "http", "requests",
})

# Modules reachable as attributes of the allowed ones. The static check refuses these names at once, with a clear
# message; the sandbox's resolution against the installed torch refuses every other module as well.
KNOWN_MODULE_ATTRIBUTES = FORBIDDEN_NAMES | frozenset({
    "serialization", "package", "hub", "onnx", "jit", "library", "ops", "cpp_extension", "utils", "backends",
    "cuda", "mps", "xpu", "cpu", "distributed", "fx", "compiler", "export", "profiler", "testing", "storage",
    "overrides", "classes", "quantization", "ao", "amp", "optim", "graph", "forward_ad", "func", "futures",
    "monitor", "warnings", "collections", "contextlib", "copyreg", "functools", "operator", "stdlib_re", "np",
    "numpy", "platform", "textwrap", "glob", "dataclasses", "modules", "parallel", "nested", "sparse", "masked",
    "types", "torch", "math", "typing", "einops",
})

# Attribute names that reach outside the model even on an allowed object.
FORBIDDEN_ATTRIBUTES = frozenset({
    # files, random state and process-wide torch settings
    "load", "save", "hub", "manual_seed", "seed", "set_rng_state", "get_rng_state", "random",
    "backends", "set_default_dtype", "set_default_device", "set_grad_enabled", "set_num_threads",
    "use_deterministic_algorithms", "cpp_extension", "library", "ops", "classes", "jit", "compile",
    "from_file", "fx", "multiprocessing", "distributed", "profiler", "overrides", "default_generator",
    # hooks that reach the frozen model or the training loop
    "register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook",
    "register_backward_hook", "register_module_forward_hook", "register_module_forward_pre_hook",
    "register_hook", "register_load_state_dict_post_hook", "register_state_dict_pre_hook",
    "register_multi_grad_hook", "saved_tensors_hooks", "apply", "storage", "untyped_storage", "data_ptr", "set_",
    # numpy interop (C-level file writes) and tensor subclasses (code run inside the frozen model's ops)
    "numpy", "tofile", "dump", "dumps", "from_numpy", "frombuffer", "as_subclass",
    # frames and code objects
    "f_back", "f_globals", "f_locals", "f_builtins", "f_code", "gi_frame", "gi_code", "cr_frame", "cr_code",
    "ag_frame", "tb_frame", "tb_next", "co_code",
    # the autograd graph: from the attention's input it reaches every parameter of the frozen model
    "grad_fn", "next_functions",
    # calls that hand back a class or a module as a value, out of reach of the checks of module chains
    "mro", "get_device_module", "type_before_parametrizations",
    # the caller's graph: a backward from inside forward writes gradients into every frozen parameter before the
    # attention, and detach_ cuts the frozen model's graph in place
    "backward", "detach_",
    # shared memory outlives the process (share_memory_ backs a tensor with a file of /dev/shm), and a storage class
    # in hand maps a file (x.storage_type().from_file(...))
    "share_memory_", "share_memory", "storage_type",
    # a property's functions: in hand, they run a torch class's getter on any object (nn.LSTM.all_weights.fget(obj)
    # reads every attribute obj._all_weights names)
    "fget", "fset", "fdel",
    # the object an AttributeError failed on: any object at all (typing.Type.x fails on the builtin type)
    "obj",
    # a context manager's generator, and the function that makes it: next(parametrize.cached().func()) entered the
    # with-block and never left it, with the setting on for the rest of the process
    "gen", "func",
})

# A module's functions that change a process-wide setting (torch.set_float32_matmul_precision, torch.use_deterministic_
# algorithms, torch.autograd.set_detect_anomaly): the setting would outlive the program's own code and change how the
# frozen model trains and is scored. An object the block made itself may have them (gen.set_state(...)).
SETTING_PREFIXES = ("set_", "use_")
SETTING_MESSAGE = (": it changes a process-wide torch setting; scope a mode to your own code with a context manager "
                   "(with torch.autocast(...), with torch.no_grad())")

# Forbidden attributes that torch.nn's classes define: on self as well they are nn.Module's own (self.compile()). The
# others name, on self, only what the block stored there (self.seed = seed).
MODULE_METHODS = frozenset({
    "apply", "compile", "share_memory", "register_backward_hook", "register_forward_hook", "register_forward_pre_hook",
    "register_full_backward_hook", "register_load_state_dict_post_hook", "register_state_dict_pre_hook",
})

# Forbidden attributes that are harmless on an object the block made itself and named: a torch.Generator of its
# own may be seeded (``gen = torch.Generator(); gen.manual_seed(0)``), never torch's global one.
LOCAL_ATTRIBUTES = frozenset({"manual_seed"})

FORBIDDEN_ATTRIBUTE_ADVICE = {
    "apply": ": only a custom autograd Function of the block (MyFunction.apply(x)) and the block's own modules "
             "(self.apply(fn)) may be applied",
    "manual_seed": ": seed a generator of your own (gen = torch.Generator(); gen.manual_seed(0)) and pass "
                   "generator=gen",
    "backward": ": the training loop runs the backward pass; for an inner objective use torch.autograd.grad",
    "detach_": ": use x.detach(), which leaves the caller's tensor as it is",
    "func": ": enter a context manager only with a with-statement; for torch.func's transforms use torch.vmap or "
            "torch.autograd.grad",
    "jit": ": the block runs as plain Python, and the harness compiles the whole model itself: drop torch.jit",
    "compile": ": the harness compiles the whole model itself: drop torch.compile",
    "set_grad_enabled": ": use with torch.no_grad() or with torch.enable_grad()",
    "gen": ": enter a context manager only with a with-statement",
}

# What to write instead, where a refused name, dunder or import has an allowed equivalent.
NAME_ADVICE = {
    "setattr": ": assign self.name = value, or for a computed name use self.add_module, self.register_buffer or "
               "self.register_parameter",
    "__class__": ": type(self).__name__ names the class",
    "torch.nn.parameter": ": use nn.Parameter",
}

# What to write instead of assigning a tensor's attribute, which the block may not do on what it did not make.
ASSIGNMENT_ADVICE = {
    "requires_grad": "; to freeze a tensor call t.requires_grad_(False)",
    "data": "; to change a tensor's values copy into it under torch.no_grad() (w.copy_(...))",
}

# What to write instead of a module a block may not use, where there is an allowed way.
MODULE_ADVICE = {
    "cuda": ": for mixed precision use torch.autocast(...), for the device x.device",
    "amp": ": use torch.autocast(...)",
    "compiler": ": the harness compiles the whole model itself: drop torch.compiler",
    "func": ": use torch.vmap",
    "utils": ": checkpointing recomputes the forward, which the FLOP budget counts; torch.nn.utils is allowed",
}

# nn.Module's methods named like a forbidden builtin: called on an object the block holds, they are the method.
MODULE_METHODS_NAMED_LIKE_BUILTINS = frozenset({"eval"})

# Every private name torch's classes of the table have, on a module or on one of those classes: a block may read a
# private name of its own through its own objects only where it is none of these.
TORCH_PRIVATE_NAMES = api_table.MODULE_PRIVATE.union(*api_table.CLASS_PRIVATE.values())

# Builtins that turn a string into an attribute lookup, refused as attributes too (``builtins.getattr``): the rule for
# their constant names applies only to the bare names. ``type`` is also a tensor device's field (``x.device.type``).
LOOKUP_BUILTINS = frozenset({"getattr", "hasattr"})

# str methods whose format fields read attributes and items of their arguments.
STRING_FORMATS = frozenset({"format", "format_map"})

# Builtins that turn a string into an attribute lookup or a class. They may only be called, never bound to a name,
# passed or stored: ``g = getattr`` would take every later ``g(obj, "__globals__")`` past the checks below.
CALL_ONLY_BUILTINS = frozenset({"getattr", "hasattr", "type"})
# Builtins whose checks below read their arguments: those must be written out. ``getattr(x, "gi_frame", **{})`` is a
# call Python accepts and the rewrite into ``x.gi_frame`` did not see; ``type(*("N", (), {}))`` made a class.
WRITTEN_OUT_CALLS = CALL_ONLY_BUILTINS | {"super"}

# What a block may take from the standard library's helper modules: their type names and plain helpers. The rest
# reaches the interpreter: ``typing.get_type_hints`` and ``functools.singledispatch`` evaluate string annotations
# as code.
ALLOWED_MODULE_MEMBERS = {
    "typing": frozenset({
        "Any", "Callable", "ClassVar", "Dict", "Final", "FrozenSet", "Iterable", "Iterator", "List", "Literal",
        "Mapping", "Optional", "Sequence", "Set", "Tuple", "Type", "Union", "cast", "TYPE_CHECKING",
    }),
    # Not ``wraps``: it copies attributes it is told to onto what it wraps (``__code__`` among them). Not ``cache`` or
    # ``lru_cache``: what a cached function returns outlives every call and instance (a dict there counted calls, and
    # a program could change its work once the gate had run).
    "functools": frozenset({"partial", "reduce"}),
}

# What a block may read through each module it may import: typing's and functools' by hand (above), torch's, math's
# and einops' from the table that ``python -m harness.diagnostics.api_table`` writes from the installed packages.
MODULE_MEMBERS = {**api_table.MEMBERS, **ALLOWED_MODULE_MEMBERS}
TABLE_FILE = "harness/trusted/api_table.py"

# Methods that name an attribute of the block's own module by a string (self.register_buffer("mask", ...)).
NAMING_METHODS = frozenset({"register_buffer", "register_parameter", "add_module", "register_module"})

# The torch.nn methods and helpers that look up or store an attribute of a module by a name given as a string, and
# where that name is passed (position, keyword). Computed at run time, a name can be a special one ("_" * 2 + "del"
# + "_" * 2): a parametrisation registered under it became a method of the class, which the interpreter called
# when it collected the instance.
NAME_ARGUMENTS = {
    **{method: ((0, "name"),) for method in NAMING_METHODS},
    **{method: ((0, "target"),) for method in ("get_submodule", "get_parameter", "get_buffer", "set_submodule")},
    **{helper: ((1, "tensor_name"),) for helper in ("register_parametrization", "remove_parametrizations",
                                                     "is_parametrized")},
    "transfer_parametrizations_and_params": ((2, "tensor_name"),),
    **{helper: ((1, "name"),) for helper in ("weight_norm", "spectral_norm", "remove_weight_norm",
                                             "remove_spectral_norm")},
    # orthogonal_map is looked up on an enum by getattr
    "orthogonal": ((1, "name"), (2, "orthogonal_map")),
}

# Members of typing that are plain values, read like any constant (if TYPE_CHECKING:).
HELPER_VALUES = frozenset({"TYPE_CHECKING"})

ALLOWED_DUNDERS = frozenset({"__init__"})  # super().__init__()
ALLOWED_DUNDER_READS = ALLOWED_DUNDERS | {"__name__"}  # type(self).__name__ in an error message

# Names in FORBIDDEN_NAMES that are harmless as a block's own variable (``input``, ``time``): a block cannot import
# those modules, and the builtin ``input`` reads only the sandbox's empty stdin. The others stay forbidden even
# when bound, since a block could bind one in a function and reach the builtin in another.
SHADOWABLE_NAMES = frozenset({
    "input", "os", "sys", "subprocess", "socket", "shutil", "pathlib", "importlib", "builtins", "ctypes", "pickle",
    "marshal", "inspect", "gc", "threading", "multiprocessing", "signal", "time", "random", "io", "tempfile",
    "urllib", "http", "requests",
})

# Python's builtins: a block binds none of them but SHADOWABLE_NAMES, since the rules here rely on what they are
# (``property = staticmethod`` made every ``@property`` a staticmethod, whose first parameter is any argument).
BUILTIN_NAMES = frozenset(name for name in dir(builtins) if not name.startswith("__"))

# Classes a block only derives from: torch.autograd.Function's own methods (save_for_backward, mark_dirty) set
# attributes on whatever they are given as the context (Function.save_for_backward(F.softmax, t)).
BASE_ONLY = frozenset({"torch.autograd.Function"})

# nn.Module's names a block's class may define: the computation, and what its printed form adds.
MODULE_OVERRIDES = frozenset({"forward", "extra_repr"})

# Module-level constants may be computed from literals with these (NEG = float("-inf"), LOG_BASE = math.log(1e4)).
CONSTANT_CALLS = frozenset({"float", "int", "bool", "str", "tuple", "frozenset", "min", "max", "abs", "round"})
TORCH_CONSTANTS = frozenset({"inf", "nan", "pi", "e", "float32", "float16", "bfloat16", "float64", "int64", "int32",
                             "int16", "int8", "uint8", "bool", "long", "float", "half", "double", "complex64"})
ALLOWED_BASES = ("torch.nn.", "torch.autograd.Function")
SELF_MESSAGE = ("the name 'self' may only be the first parameter of a method (decorated, if at all, with property "
                "or torch.no_grad()): use another name")
# The staticmethods of a custom autograd Function whose first parameter is the context autograd hands it.
FUNCTION_CONTEXT_METHODS = frozenset({"forward", "setup_context", "backward", "jvp", "vmap"})
# Decorators under which a method's first parameter is still the instance (``@torch.no_grad()`` as well as
# ``@torch.no_grad``), and a property's own ``@name.setter``. Any other one could bind ``self`` to an argument:
# ``sm = staticmethod`` then ``@sm def poke(self)`` and ``self.poke(torch.Tensor)``.
INSTANCE_DECORATORS = frozenset({"property", "torch.no_grad", "torch.enable_grad",
                                 "torch.inference_mode", "torch.autocast"})


@dataclass
class PolicyReport:
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def add(self, node: ast.AST | None, message: str, line_offset: int) -> None:
        where = f"line {getattr(node, 'lineno', 0) + line_offset}: " if node is not None else ""
        self.violations.append(where + message)


def module_aliases(source: str | ast.AST) -> dict[str, str]:
    """Each name that an import anywhere in ``source`` (text or a parsed tree) binds, with what it names (``nn`` ->
    ``torch.nn``, ``Optional`` -> ``typing.Optional``). Imports inside functions count too: a module bound there
    is as much a way in as one bound at the top."""
    aliases = {}
    for node in ast.walk(ast.parse(source) if isinstance(source, str) else source):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def _allowed_modules(aliases: dict[str, str]) -> dict[str, str]:
    """The aliases that name a module of ``ALLOWED_MODULES``."""
    return {name: path for name, path in aliases.items() if path in ALLOWED_MODULES}


def module_chains(tree: ast.AST, aliases: dict[str, str]):
    """Each attribute chain rooted at a module alias: ``(node, [module path, attr, attr, ...])`` for its longest
    form (``F.softmax(x).sum`` yields ``F.softmax``'s chain once, as ``["torch.nn.functional", "softmax"]``)."""
    modules = _allowed_modules(aliases)
    inner = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            inner.add(id(node.value))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or id(node) in inner:
            continue
        attrs, base = [], node
        while isinstance(base, ast.Attribute):
            attrs.append(base.attr)
            base = base.value
        if isinstance(base, ast.Name) and base.id in modules:
            yield node, [modules[base.id]] + attrs[::-1]


MUTABLE_DISPLAYS = (ast.List, ast.Set, ast.Dict, ast.ListComp, ast.SetComp, ast.DictComp)
SHARED_STATE_MESSAGE = ("a list, set or dict there is state that every call shares (a forward could keep what it saw "
                        "in it): use a tuple, or frozenset((...))")


def _shared_mutable(node: ast.AST) -> bool:
    """Whether ``node`` builds a list, set or dict that outlives a call, other than as the argument that ``tuple`` or
    ``frozenset`` copies at once."""
    parents = parent_map(node)
    for sub in ast.walk(node):
        if isinstance(sub, MUTABLE_DISPLAYS):
            call = parents.get(id(sub))
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                    and call.func.id in ("tuple", "frozenset") and sub in call.args):
                return True
        elif isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id in ("list", "dict", "set"):
            return True
    return False


def _constant_call(call: ast.Call) -> bool:
    """A call of ``CONSTANT_CALLS`` or of ``math``'s functions: it makes a value, never an object a later call could
    change."""
    return (isinstance(call.func, ast.Name) and call.func.id in CONSTANT_CALLS) \
        or (isinstance(call.func, ast.Attribute) and _dotted(call.func) == f"math.{call.func.attr}")


def _is_default_value(node: ast.AST) -> bool:
    """What a default argument may be: literals, names and attributes (a dtype, a function), combined by operators,
    and the calls of ``CONSTANT_CALLS`` and ``math``: nothing that makes an object a later call could change."""
    for sub in ast.walk(node):
        if isinstance(sub, (*MUTABLE_DISPLAYS, ast.GeneratorExp, ast.NamedExpr, ast.Lambda, ast.Yield,
                            ast.YieldFrom, ast.Await)):
            return False  # a generator is a counter every call advances
        if isinstance(sub, ast.Call) and not _constant_call(sub):
            return False
    return True


def _is_constant_expression(node: ast.AST) -> bool:
    """Literals, names, ``math.*`` and a few ``torch`` constants, combined by operators and by the calls of
    ``CONSTANT_CALLS`` and ``math``'s functions: nothing that runs code of an object the block made."""
    allowed = (ast.Constant, ast.Tuple, ast.List, ast.Set, ast.Dict, ast.UnaryOp, ast.BinOp, ast.Name,
               ast.Load, ast.operator, ast.unaryop, ast.Attribute, ast.Call, ast.keyword)
    for sub in ast.walk(node):
        if not isinstance(sub, allowed):
            return False
        if isinstance(sub, ast.Attribute) and not (
                isinstance(sub.value, ast.Name) and (sub.value.id == "math"
                                                     or (sub.value.id == "torch" and sub.attr in TORCH_CONSTANTS))):
            return False
        if isinstance(sub, ast.Call) and not _constant_call(sub):
            return False
        if isinstance(sub, ast.Name) and sub.id in BUILTIN_NAMES and sub.id not in CONSTANT_CALLS:
            return False  # grab = staticmethod: a builtin kept as a constant is a decorator in waiting
    return True


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id] + parts[::-1]) if isinstance(node, ast.Name) else None


def _attribute_of_self(node: ast.AST) -> bool:
    """``self`` or a chain of plain attributes from it (``self.w_o``): the block's own objects."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name) and node.id == "self"


SCOPES = (ast.FunctionDef, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def bindings(node: ast.AST) -> list[str]:
    """The names ``node`` itself binds, in any of Python's ways: an assignment target, a parameter, an import, a
    ``def`` or ``class``, an exception's ``as``, a ``match`` capture."""
    if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
        return [node.id]
    if isinstance(node, ast.arg):
        return [node.arg]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [a.asname or a.name.split(".")[0] for a in node.names if a.name != "*"]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)):
        return [node.name] if node.name else []
    if isinstance(node, ast.MatchMapping):
        return [node.rest] if node.rest else []
    return []


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


class _Checker(ast.NodeVisitor):
    def __init__(self, report: PolicyReport, aliases: dict[str, str], line_offset: int):
        """``aliases``: those of the frozen code and of the block together."""
        self.report = report
        self.aliases = aliases
        self.modules = set(_allowed_modules(aliases))
        self.offset = line_offset
        self.block_classes: set[str] = set()
        self.bound: set[str] = set()  # every name the block assigns or takes as an argument
        self.function_classes: set[str] = set()  # the block's custom autograd Functions
        # Per block class, what may be read through the class itself: the names its body assigns and defines no
        # method under (constants), and its staticmethods; a class defined twice keeps what both definitions agree on.
        self.class_constants: dict[str, set[str]] = {}
        self.static_methods: dict[str, set[str]] = {}
        self.instance_params: set[int] = set()  # ids of the ``self`` parameters of methods
        self.context_params: set[int] = set()  # ids of the ``ctx`` parameters of autograd Functions' staticmethods

    def flag(self, node: ast.AST, message: str) -> None:
        self.report.add(node, message, self.offset)

    def run(self, tree: ast.Module) -> None:
        self.tree, self.scope_names, self.submodules, self.torch_private = tree, {}, None, None
        self.parents = parent_map(tree)
        # every class up front: a class named before its statement (def grab(): return Poker) is a class all the same
        self.block_classes = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
        self.function_names = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        self.class_defined = {name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
                              for name in class_body_names(node)}
        for node in ast.walk(tree):
            names = bindings(node)
            self.bound.update(names)
            # A name, an argument or an import bound as ``ctx``/``cls`` is seen by the rules below; ``self`` bound by
            # an import, a match capture or an ``except ... as`` would take the exemptions of the instance.
            if "self" in names and not isinstance(node, (ast.Name, ast.arg)):
                self.flag(node, SELF_MESSAGE)
            for name in names:
                if name in BUILTIN_NAMES and name not in SHADOWABLE_NAMES:
                    # property = staticmethod made every @property a staticmethod, whose "self" is any argument
                    self.flag(node, f"{name!r} is a builtin, which the policy relies on: use another name")
                elif name in self.block_classes and not isinstance(node, ast.ClassDef):
                    self.flag(node, f"{name!r} names a class of the block: use another name")
                elif name in self.aliases and not isinstance(node, (ast.Import, ast.ImportFrom)):
                    # a local torch = Holder() made @torch.no_grad() whatever Holder's no_grad returned
                    self.flag(node, f"{name!r} names an import: use another name")
        self.own_attributes = own_attributes(tree)
        self.self_attributes = own_attributes(tree, on_self_only=True)
        self._find_classes(tree)
        self.visit(tree)
        self._check_module_chains(tree)

    def _submodule_attributes(self) -> set[str]:
        """The names ``X`` such that every store to ``self.X`` in the block is the sole, direct target of an assignment
        that builds a module: a call of a ``torch.nn`` class or of a class of the block (``self.proj =
        nn.Linear(...)``). Any other store (``(self.act,) = (F.softmax,)``, ``for self.act in ...``) could put anything
        there."""
        if self.submodules is None:
            classes = {n.name for n in ast.walk(self.tree) if isinstance(n, ast.ClassDef)}
            built, other = set(), set()
            for target in ast.walk(self.tree):
                if not (isinstance(target, ast.Attribute) and not isinstance(target.ctx, ast.Load)
                        and isinstance(target.value, ast.Name) and target.value.id == "self"):
                    continue
                node = self.parents.get(id(target))
                sole = isinstance(node, ast.Assign) and node.targets == [target] \
                    or isinstance(node, ast.AnnAssign) and node.target is target and node.value is not None
                value = node.value if sole else None
                name = self._full_name(_dotted(value.func)) if isinstance(value, ast.Call) else None
                module = name is not None and not name.endswith(("Parameter", "Buffer")) and (
                    name.startswith(ALLOWED_BASES[0]) and name.rpartition(".")[2][:1].isupper() or name in classes)
                (built if module else other).add(target.attr)
            # a name a class body defines (a property act beside self.act = nn.Identity()) is what self.act reads:
            # nn.Module keeps the module apart, and the property wins
            defined = {name for cls in ast.walk(self.tree) if isinstance(cls, ast.ClassDef)
                       for name in class_body_names(cls)}
            # a torch layer's own __init__ stores on self as well (nn.TransformerEncoderLayer's self.activation is
            # whatever it is given): where a class derives from one, none of the names torch's layers have is a
            # module the block built for sure
            layered = any((self._full_name(_dotted(b)) or "").startswith(ALLOWED_BASES[0])
                          and self._full_name(_dotted(b)) != "torch.nn.Module"
                          for c in ast.walk(self.tree) if isinstance(c, ast.ClassDef) for b in c.bases)
            self.submodules = built - other - defined - api_table.NN_MODULE_NAMES \
                - (api_table.ATTRIBUTES if layered else frozenset())
        return self.submodules

    def _find_classes(self, tree: ast.Module) -> None:
        """The block's autograd Functions, its classes' methods, and the parameters that name the instance
        (``self``) or an autograd context (``ctx``) where Python binds them."""
        classes = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
        self.classes_by_name, self.classes = {}, classes
        for node in classes:
            self.classes_by_name.setdefault(node.name, []).append(node)
        grew = True
        while grew:  # a Function derived from one the block defines later is a Function all the same
            before = len(self.function_classes)
            self.function_classes |= {c.name for c in classes if any(
                self._full_name(_dotted(b)) == ALLOWED_BASES[1] or _dotted(b) in self.function_classes
                for b in c.bases)}
            grew = len(self.function_classes) > before
        for node in classes:
            direct = all(self._full_name(_dotted(b)) == ALLOWED_BASES[1] for b in node.bases)
            defs = [m for m in node.body if isinstance(m, ast.FunctionDef)]
            method_names = {m.name for m in defs}
            # a name defined twice is a staticmethod only where every definition is one (the last one wins)
            static = method_names - {m.name for m in defs if not self._staticmethod(m)}
            assigned = {t.id for m in node.body if isinstance(m, (ast.Assign, ast.AnnAssign))
                        for t in (m.targets if isinstance(m, ast.Assign) else [m.target]) if isinstance(t, ast.Name)}
            for table, names in ((self.static_methods, static), (self.class_constants, assigned - method_names)):
                table[node.name] = names if node.name not in table else table[node.name] & names
            self._check_method_names(node, method_names | assigned)
            for method in defs:
                positional = method.args.posonlyargs + method.args.args
                decorators = [_dotted(d.func if isinstance(d, ast.Call) else d) for d in method.decorator_list]
                if node.name in self.function_classes:
                    # autograd calls each of them with its graph node first: as "self", that node took the
                    # exemptions of the instance (self.next_functions reached the frozen model's weights)
                    if decorators != ["staticmethod"]:
                        self.flag(method, f"every method of the autograd Function {node.name} must be a "
                                  "@staticmethod (autograd passes the context first: name it ctx)")
                    elif positional and method.name in FUNCTION_CONTEXT_METHODS and not (
                            method.name == "forward" and ("setup_context" in method_names or not direct)):
                        # with setup_context, its own or inherited, forward's first parameter is an input like the
                        # others (Stash.apply(F.softmax, x) stored on F.softmax)
                        self.context_params.add(id(positional[0]))
                elif positional and all(self._full_name(d) in INSTANCE_DECORATORS and _plain_decorator(raw)
                                        or self._property_accessor(node, method, d)
                                        for d, raw in zip(decorators, method.decorator_list)):
                    self.instance_params.add(id(positional[0]))

    def _staticmethod(self, method: ast.FunctionDef) -> bool:
        """Whether ``method`` is a staticmethod: ``@staticmethod`` outermost, under it torch modes alone
        (``@staticmethod @torch.no_grad()``). A mode outside it would make a function of it again, bound to the
        instance."""
        first, *rest = method.decorator_list or [None]
        return isinstance(first, ast.Name) and first.id == "staticmethod" and all(
            self._full_name(_dotted(d.func if isinstance(d, ast.Call) else d)) in INSTANCE_DECORATORS - {"property"}
            and _plain_decorator(d) for d in rest)

    def _class_private(self, cls: ast.ClassDef, seen: frozenset[str] = frozenset()) -> frozenset[str]:
        """The private names that are torch's on the ``self`` of ``cls``: nn.Module's, and those of every torch
        class it derives from, directly or through classes of the block."""
        names = set(api_table.MODULE_PRIVATE)
        for base in cls.bases:
            full, dotted = self._full_name(_dotted(base)), _dotted(base)
            names |= api_table.CLASS_PRIVATE.get(full or "", frozenset())
            for other in self.classes_by_name.get(dotted or "", []) if dotted not in seen else []:
                names |= self._class_private(other, seen | {dotted})
        return frozenset(names)

    def _torch_private(self, node: ast.AST) -> frozenset[str]:
        """The private names that are torch's on any ``self`` of the block: ``_class_private`` of every class of the
        block together, since a mixin's method runs on the instances of every class derived from it (``class
        Cell(nn.LSTM, Setter)``, where Setter sets ``self._all_weights``)."""
        if self.torch_private is None:
            self.torch_private = frozenset().union(api_table.MODULE_PRIVATE, *(
                self._class_private(c) for c in ast.walk(self.tree) if isinstance(c, ast.ClassDef)))
        return self.torch_private

    def _property_accessor(self, cls: ast.ClassDef, method: ast.FunctionDef, decorator: str | None) -> bool:
        """Whether ``decorator`` is ``x.setter`` or ``x.deleter`` of a property ``x`` that ``cls`` defines before
        ``method``, and binds in its body only by methods: otherwise ``x`` could be any object with a ``setter``
        (a class ``x`` defined at the top whose ``setter`` is a staticmethod)."""
        name, _, accessor = (decorator or "").partition(".")
        if accessor not in ("setter", "deleter") or method.name != name:
            return False
        before = cls.body[:cls.body.index(method)]
        binders = [stmt for stmt in cls.body if name in (b for sub in ast.walk(stmt) for b in bindings(sub))
                   and not (isinstance(stmt, ast.FunctionDef) and stmt.name == name)]
        defs = [stmt for stmt in before if isinstance(stmt, ast.FunctionDef) and stmt.name == name]
        # every def of the name before this one: the property, then its accessors (@swap between them made the name
        # an object whose setter returned a staticmethod)
        return not binders and bool(defs) and [_dotted(d) for d in defs[0].decorator_list] == ["property"] and all(
            [_dotted(d) for d in stmt.decorator_list] in ([f"{name}.setter"], [f"{name}.deleter"])
            for stmt in defs[1:])

    def _check_method_names(self, cls: ast.ClassDef, names: set[str]) -> None:
        """A class of the block defines none of nn.Module's names but forward and extra_repr, and none of the private
        names of nn.Module or of the torch classes it derives from: the harness calls state_dict, train, parameters
        and the rest on the model, and torch calls its private methods, outside forward."""
        if cls.name in self.function_classes:
            return
        for name in sorted(names & ((api_table.NN_MODULE_NAMES - MODULE_OVERRIDES) | self._class_private(cls))):
            self.flag(cls, f"class {cls.name} may not define {name!r}: it is torch.nn's own, which torch and the "
                      "harness call outside forward; use another name")

    def _full_name(self, dotted: str | None) -> str | None:
        """``dotted`` with its import alias resolved (``nn.Module`` -> ``torch.nn.Module``)."""
        root, _, rest = (dotted or "").partition(".")
        return f"{self.aliases[root]}.{rest}".rstrip(".") if root in self.aliases else dotted

    def visit_arg(self, node: ast.arg) -> None:
        if node.arg == "self" and id(node) not in self.instance_params:
            self.flag(node, SELF_MESSAGE)
        self.generic_visit(node)

    def _own_object(self, node: ast.Attribute) -> bool:
        """Whether ``node`` is an attribute of ``self`` (``self.name``, or ``self.sub.name...`` where every value the
        block gives ``self.sub`` is a module it builds), or of the context parameter of the autograd Function method
        it is in (``ctx.name``, where that method never rebinds ``ctx``). ``self.act = F.softmax`` then
        ``self.act.store = ...`` would write onto torch's own function."""
        chain, root = [], node
        while isinstance(root, ast.Attribute):
            chain.append(root.attr)
            root = root.value
        if not isinstance(root, ast.Name):
            return False
        if root.id == "self":
            # self.X, or self.sub.X for a module the block builds: deeper, self.lazy.cls_to_become.bias = property(f)
            # put a property on nn.Linear, and every frozen Linear handed its weights to the block
            return len(chain) == 1 or len(chain) == 2 and chain[-1] in self._submodule_attributes()
        if len(chain) != 1:
            return False
        scope = self.parents.get(id(node))
        while scope is not None and not isinstance(scope, (ast.FunctionDef, ast.Lambda)):
            scope = self.parents.get(id(scope))
        if not isinstance(scope, ast.FunctionDef):
            return False
        positional = scope.args.posonlyargs + scope.args.args
        return bool(positional) and id(positional[0]) in self.context_params and positional[0].arg == root.id \
            and not any(root.id in bindings(n) for n in ast.walk(scope) if n is not positional[0])

    # imports -----------------------------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] not in ALLOWED_IMPORT_ROOTS:
                self.flag(node, f"import of {alias.name!r} is not allowed (allowed: {sorted(ALLOWED_IMPORT_ROOTS)})")
            elif alias.name not in ALLOWED_MODULES:
                self.flag(node, f"import of {alias.name!r} is not allowed: the modules a block may use are "
                          f"{sorted(ALLOWED_MODULES)}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level or module.split(".")[0] not in ALLOWED_IMPORT_ROOTS:
            self.flag(node, f"import from {module or '.'!r} is not allowed (allowed: {sorted(ALLOWED_IMPORT_ROOTS)})")
            return
        if module not in ALLOWED_MODULES:
            advice = NAME_ADVICE.get(module, "").replace(": ", "; ", 1)
            self.flag(node, f"import from {module!r} is not allowed: the modules a block may use are "
                      f"{sorted(ALLOWED_MODULES)}{advice}")
        for alias in node.names:
            full = f"{module}.{alias.name}"
            if alias.name == "*":
                self.flag(node, "star imports are not allowed")
            elif alias.name.startswith("_") or alias.name in FORBIDDEN_ATTRIBUTES or alias.name in FORBIDDEN_NAMES:
                self.flag(node, f"importing {alias.name!r} is not allowed")
            elif alias.name.startswith(SETTING_PREFIXES):
                self.flag(node, f"importing {alias.name!r} is not allowed" + SETTING_MESSAGE)
            elif full not in ALLOWED_MODULES and alias.name in KNOWN_MODULE_ATTRIBUTES:
                self.flag(node, f"{full!r} is a module a block may not use")
            elif full not in ALLOWED_MODULES and alias.name not in MODULE_MEMBERS.get(module, alias.name):
                self.flag(node, _member_message(module, alias.name))

    # names ----------------------------------------------------------------------------------------------------
    def visit_Name(self, node: ast.Name) -> None:
        parent = self.parents.get(id(node))
        if isinstance(node.ctx, ast.Load) and self._helper_member(node.id) and not _used_as_it_is(self.parents, node):
            # kinds = Iterable, then kinds.register(float), changed what every isinstance of the process answers
            self.flag(node, _helper_member_message(self.aliases[node.id]))
        if self._name_taker(node) is not None and not (isinstance(parent, ast.Call) and parent.func is node):
            self.flag(node, f"{node.id} may only be called directly, as {node.id}(...): do not bind it to a name, "
                      "pass it or store it")
        if node.id in SHADOWABLE_NAMES and node.id not in self.aliases and node.id in self._bound_in_scope(node):
            pass
        elif node.id in FORBIDDEN_NAMES or _is_dunder(node.id):
            self.flag(node, f"use of {node.id!r} is not allowed" + NAME_ADVICE.get(node.id, ""))
        elif node.id in CALL_ONLY_BUILTINS and not (isinstance(parent, ast.Call) and parent.func is node):
            self.flag(node, f"{node.id} may only be called directly, as {node.id}(...): do not bind it to a name, "
                      "pass it or store it")
        elif node.id in self.modules:
            if isinstance(node.ctx, ast.Load) and not (isinstance(parent, ast.Attribute) and parent.value is node):
                self.flag(node, module_value_message(node.id))
        elif node.id == "self" and not isinstance(node.ctx, ast.Load):
            self.flag(node, SELF_MESSAGE)
        elif node.id in self.function_classes and not (
                isinstance(parent, ast.Attribute) and parent.value is node and parent.attr == "apply"
                or isinstance(parent, ast.ClassDef)):
            self.flag(node, f"the autograd Function {node.id} may only be used as {node.id}.apply(...)")
        elif node.id in self.block_classes and isinstance(node.ctx, ast.Load) and not class_use(self.parents, node):
            self.flag(node, f"the class {node.id} may only be instantiated, tested (isinstance), derived from or "
                      "named in an annotation: do not bind it to a name, pass it or store it")
        elif node.id in self.block_classes and node.id not in self.function_classes \
                and isinstance(parent, ast.Attribute) and parent.attr not in self._readable_through(node.id) \
                and not called_with_self(self.parents, parent):
            # Its own methods and those it inherits (nn.Module.train sets self.training) would run on any object.
            self.flag(node, f"{node.id}.{parent.attr} may only be called with self as its first argument "
                      f"({node.id}.{parent.attr}(self, ...)); call methods on an instance")
        elif node.id in self.block_classes and isinstance(parent, ast.Attribute) \
                and called_with_self(self.parents, parent) and not self._derives_from(node, node.id):
            # Setter.poke(self, ...) from an unrelated class ran a mixin's method on an instance it was not made for
            self.flag(node, f"{node.id}.{parent.attr}(self, ...) may only be called in a class derived from "
                      f"{node.id}")
        self.generic_visit(node)

    def _derives_from(self, node: ast.AST, name: str) -> bool:
        """Whether the class around ``node`` is ``name`` or derives from it through classes of the block."""
        scope = self._enclosing_class(node)
        return scope is not None and (scope.name == name or self._inherits(scope, name))

    def _enclosing_class(self, node: ast.AST) -> ast.ClassDef | None:
        scope = self.parents.get(id(node))
        while scope is not None and not isinstance(scope, ast.ClassDef):
            scope = self.parents.get(id(scope))
        return scope

    def _inherits(self, cls: ast.ClassDef, name: str) -> bool:
        """Whether the block's class ``cls`` derives from the block's class ``name``, directly or through others."""
        todo, seen = [cls], set()
        while todo:
            current = todo.pop()
            seen.add(current.name)
            for base in current.bases:
                dotted = _dotted(base)
                if dotted == name:
                    return True
                todo += [c for c in self.classes_by_name.get(dotted or "", []) if c.name not in seen]
        return False

    def _bound_in_scope(self, node: ast.AST) -> set[str]:
        """The names visible to ``node`` that the block binds itself: those of every function, lambda and
        comprehension around it (its own locals and its closures), or, at the top of the block, the block's top-level
        names. A name bound elsewhere and read here is a global, or a builtin."""
        names, scope, inside = set(), self.parents.get(id(node)), False
        while scope is not None:
            if isinstance(scope, SCOPES):
                names |= self._scope_names(scope)
                inside = True
            scope = self.parents.get(id(scope))
        return names if inside else self._scope_names(self.tree)

    def _scope_names(self, scope: ast.AST) -> set[str]:
        """The names ``scope`` (a function, lambda, comprehension or the block) binds itself: not those its nested
        functions, comprehensions and classes bind, but the names of the functions and classes it defines."""
        key = id(scope)
        if key not in self.scope_names:
            names = set()
            todo = list(scope.generators) if isinstance(scope, SCOPES[2:]) else [
                *((scope.args,) if isinstance(scope, (ast.FunctionDef, ast.Lambda)) else ()),
                *(scope.body if isinstance(scope.body, list) else [scope.body])]
            while todo:
                sub = todo.pop()
                if isinstance(sub, ast.comprehension):  # the targets only: the rest is the comprehension's scope
                    todo.append(sub.target)
                    continue
                names.update(bindings(sub))
                if isinstance(sub, (*SCOPES, ast.ClassDef)):
                    continue
                todo += ast.iter_child_nodes(sub)
            self.scope_names[key] = names
        return self.scope_names[key]

    def _readable_through(self, cls: str) -> set[str]:
        """What the block may read through the class ``cls`` itself: its constants and staticmethods."""
        return self.class_constants.get(cls, set()) | self.static_methods.get(cls, set())

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr, on_self = node.attr, isinstance(node.value, ast.Name) and node.value.id == "self"
        helper = node.value.value if isinstance(node.value, ast.Subscript) else node.value
        if isinstance(helper, ast.Name) and self._helper_member(helper.id):
            # typing.Iterable[int].register(float) registers on collections.abc.Iterable
            self.flag(node, _helper_member_message(self.aliases[helper.id]))
        elif isinstance(node.value, ast.Subscript) and self._helper_chain(helper):
            self.flag(node, _helper_member_message(_dotted(helper) or "a typing name"))
        if attr in api_table.CLASS_HOLDERS:
            # nn.LazyLinear.cls_to_become is nn.Linear: a torch class in hand runs its methods on any object
            self.flag(node, f"attribute {attr!r} is not allowed: it holds a torch class")
        if not isinstance(node.ctx, ast.Load) and attr in api_table.NN_MODULE_NAMES - {"training"}:
            self.flag(node, f"assigning {attr!r} is not allowed: it is nn.Module's own, which the harness calls "
                      "outside forward; use another name")
        if self._name_taker(node) is not None and not self._called(node):
            self.flag(node, f"{attr} may only be called directly, as {attr}(...): do not bind it to a name, pass it "
                      "or store it")
        if attr in STRING_FORMATS:
            call, fields = self.parents.get(id(node)), _format_fields(node.value)
            if not (isinstance(call, ast.Call) and call.func is node and fields is not None
                    and all(_plain_field(f) for f in fields)):
                # A field reads attributes and items of the arguments: "{0.__globals__[os]}".format(f)
                self.flag(node, f".{attr} may only be called, on a string literal whose fields are plain ({{}}, "
                          "{0}, {name}, with any format spec): use an f-string")
        if _is_dunder(attr):
            if attr not in ALLOWED_DUNDER_READS or not isinstance(node.ctx, ast.Load):
                self.flag(node, f"dunder attribute {attr!r} is not allowed" + NAME_ADVICE.get(attr, ""))
            elif attr == "__init__" and not (_is_super_call(node.value) or called_with_self(self.parents, node)
                                             and self._names_a_base(node.value)):
                # nn.RNNBase.all_weights.__init__(fake), and then with self, re-initialised a torch property for the
                # whole process
                self.flag(node, "__init__ may only be called as super().__init__(...) or Base.__init__(self, ...), "
                          "where Base is a base of the class it is in")
        elif attr in LOCAL_ATTRIBUTES and not self._rooted_at_a_module(node):
            pass
        elif attr == "apply" and (_attribute_of_self(node.value) or isinstance(node.value, ast.Name)
                                  and node.value.id in self.function_classes):
            pass  # nn.Module.apply visits the block's own (sub)modules only; Function.apply runs the block's own code
        elif (attr in FORBIDDEN_ATTRIBUTES and (not on_self or attr in MODULE_METHODS
                                                 or attr not in self.self_attributes)
              or "hook" in attr.lower() and (not on_self or attr.startswith(("_", "register")))):
            # on self, only what the block itself put there (self.seed = seed): self.untyped_storage() is a tensor's
            # wherever self is not the instance
            self.flag(node, f"attribute {attr!r} is not allowed" + FORBIDDEN_ATTRIBUTE_ADVICE.get(attr, ""))
        elif on_self and attr in self._torch_private(node) and not (
                attr not in api_table.MODULE_PRIVATE and isinstance(node.ctx, ast.Load) and self._called(node)):
            # nn.Module's registries and call path, and what torch.nn's classes read by name (RNNBase.all_weights
            # does getattr(self, name) for each name in self._all_weights)
            self.flag(node, f"attribute {attr!r} is not allowed: it is torch.nn's own private state; name yours "
                      "differently")
        elif on_self and attr.startswith("_") and attr not in self.self_attributes \
                and attr not in self._torch_private(node):
            self.flag(node, f"private attribute {attr!r} is allowed on self only where the block sets it itself "
                      f"(self.{attr} = ...)")
        elif attr.startswith(SETTING_PREFIXES) and not on_self and self._rooted_at_a_module(node):
            self.flag(node, f"attribute {attr!r} is not allowed" + SETTING_MESSAGE)
        elif attr in MODULE_METHODS_NAMED_LIKE_BUILTINS and self._called(node) and not self._rooted_at_a_module(node):
            pass  # self.proj.eval(): nn.Module's method, not the builtin
        elif (attr in FORBIDDEN_NAMES or attr in LOOKUP_BUILTINS) and not on_self:
            self.flag(node, f"attribute {attr!r} is not allowed: it reaches the interpreter or the host")
        elif attr in KNOWN_MODULE_ATTRIBUTES and not on_self and not self._module_chain(node) \
                and not self._called(node):
            # A module reached from an object that is not a module alias (what a call returned, an attribute of
            # self): the checks of module chains never see it. A method of the same name (x.cuda()) is fine.
            self.flag(node, f"attribute {attr!r} is not allowed here: it names a module, which a block may reach "
                      "only as module.name from its imports")
        elif attr.startswith("_") and not on_self and self._own_private(node):
            pass
        elif attr.startswith("_") and not on_self:
            self.flag(node, f"private attribute {attr!r} is allowed only on self and, where a class of the block "
                      "defines it, through super(), that class or a module the block builds")
        elif not on_self and not self._module_chain(node) and not self._readable(attr) \
                and not self._refused_root(node.value):
            self.flag(node, _attribute_message(attr))
        if isinstance(node.ctx, (ast.Store, ast.Del)) and not self._own_object(node):
            self.flag(node, f"assigning to the attribute {attr!r} of anything but self (monkeypatching) is not allowed; "
                      "a submodule's attribute may be set where each of its assignments is one module built alone "
                      "(self.q = nn.Linear(...))" + ASSIGNMENT_ADVICE.get(attr, ""))
        self.generic_visit(node)

    def _module_chain(self, node: ast.Attribute) -> bool:
        """Whether ``node`` is a plain chain of attributes from a module alias (``nn.utils.parametrize``): the checks
        of module chains, and the sandbox's resolution of them against the installed modules, judge it."""
        base = node.value
        while isinstance(base, ast.Attribute):
            base = base.value
        return isinstance(base, ast.Name) and base.id in self.modules

    def _called(self, node: ast.Attribute) -> bool:
        call = self.parents.get(id(node))
        return isinstance(call, ast.Call) and call.func is node

    def _rooted_at_a_module(self, node: ast.Attribute) -> bool:
        """Whether ``node``'s object may be one that a module holds (``torch.manual_seed``): true unless it is the
        result of a call (``torch.Generator()``) or a name the block bound."""
        base, called = node.value, False
        while isinstance(base, (ast.Attribute, ast.Call, ast.Subscript)):
            called = called or isinstance(base, ast.Call)
            base = base.func if isinstance(base, ast.Call) else base.value
        if not isinstance(base, ast.Name):
            return True
        return not called and (base.id in self.modules or base.id not in self.bound)

    def _check_module_chains(self, tree: ast.Module) -> None:
        """A chain from a module alias: its modules must be allowed ones, the name it reads from the last of them must
        be in the table of that module's members, and what it reads on that member must be in the table of
        attributes (``torch.Tensor.softmax``)."""
        for node, chain in module_chains(tree, self.aliases):
            path = chain[0]
            for i, attr in enumerate(chain[1:], start=1):
                if f"{path}.{attr}" in ALLOWED_MODULES:
                    path = f"{path}.{attr}"
                    continue
                if (attr in KNOWN_MODULE_ATTRIBUTES or attr in api_table.SUBMODULES[path]) \
                        and attr not in FORBIDDEN_ATTRIBUTES:
                    self.flag(node, f"{path}.{attr} is a module a block may not use"
                              + MODULE_ADVICE.get(attr, NAME_ADVICE.get(f"{path}.{attr}", "")))
                elif _refused_by_name(attr):
                    pass  # visit_Attribute names it
                elif attr not in MODULE_MEMBERS[path]:
                    self.flag(node, _member_message(path, attr))
                elif _only_as_it_is(f"{path}.{attr}") and (chain[i + 1:] or not _used_as_it_is(self.parents, node)):
                    self.flag(node, _helper_member_message(f"{path}.{attr}"))
                else:
                    for tail in chain[i + 1:]:
                        if not _refused_by_name(tail) and not self._readable(tail):
                            self.flag(node, _attribute_message(tail))
                break
            else:
                self.flag(node, module_value_message(_dotted(node)))

    def _helper_member(self, name: str) -> bool:
        """Whether ``name`` is what an import binds to a name used only as it is (``from typing import Type``)."""
        return _only_as_it_is(self.aliases.get(name, ""))

    def _helper_chain(self, node: ast.AST) -> bool:
        """Whether ``node`` is a chain from a module alias to a name used only as it is (``typing.Iterable``)."""
        return _only_as_it_is(self._full_name(_dotted(node)) or "")

    def _refused_root(self, node: ast.AST) -> bool:
        """Whether ``node`` is a name already refused as such (``time``, or what a refused import binds): what is
        read on it needs no message of its own."""
        if not isinstance(node, ast.Name):
            return False
        if node.id in FORBIDDEN_NAMES:
            return node.id not in self._bound_in_scope(node)
        path = self.aliases.get(node.id)
        if path is None or path in ALLOWED_MODULES:
            return False
        module, _, member = path.rpartition(".")
        return module not in ALLOWED_MODULES or member not in MODULE_MEMBERS[module]

    def _readable(self, attr: str) -> bool:
        """Whether the table, or the block's own naming, lets ``attr`` be read on a value the block holds."""
        return attr in api_table.ATTRIBUTES or attr in self.own_attributes and attr not in api_table.UNLISTED

    def visit_Constant(self, node: ast.Constant) -> None:
        # A dunder's name in a string is an attribute by another way: register_parametrization(self, "__bool__", ...)
        # put one on the class, get_submodule("__class__") reads one, and a storage's type("torch.nn.functional.
        # softmax.__globals__") imports and walks a dotted path. A docstring may name them.
        if isinstance(node.value, str) and not isinstance(self.parents.get(id(node)), ast.Expr):
            words = set(re.findall(r"(?:^|\.)(__\w+?__)(?=$|\.)", node.value))  # a whole word of a dotted path
            special = sorted(words - ALLOWED_DUNDER_READS)
            if special:
                self.flag(node, f"the string {node.value[:60]!r} names a special attribute ({special[0]}), which a "
                          "block may not reach")

    def _own_private(self, node: ast.Attribute) -> bool:
        """Whether ``node`` reads a private name that a class of the block defines, none of torch's, through the block's
        own objects: ``super()._project(x)``, ``Rope._base(...)``, ``self.rope._rotate(q)`` where every value of
        ``self.rope`` is a module the block builds. (Calls through a class keep the rules of ``visit_Name``.)"""
        value = node.value
        return isinstance(node.ctx, ast.Load) and node.attr in self.class_defined \
            and node.attr not in TORCH_PRIVATE_NAMES and (
                _is_super_call(value) or isinstance(value, ast.Name) and value.id in self.block_classes
                or isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name) and value.value.id == "self"
                and value.attr in self._submodule_attributes())

    def _names_a_base(self, node: ast.AST) -> bool:
        """Whether ``node`` names one of the bases of the class it is in (``nn.Module`` in
        ``class A(torch.nn.Module)``)."""
        owner = self._enclosing_class(node)
        written = self._full_name(_dotted(node))
        return owner is not None and written is not None and any(self._full_name(_dotted(b)) == written
                                                                 for b in owner.bases)

    def visit_MatchClass(self, node: ast.MatchClass) -> None:
        """``case C(attr=v)`` reads the subject's attribute ``attr``: the rules for attributes apply to it, as to an
        attribute of an object that may be a module's (``case object(__globals__=g)`` is ``subject.__globals__``)."""
        for attr in node.kwd_attrs:
            read = ast.copy_location(ast.Attribute(value=ast.Name(id="match_subject", ctx=ast.Load()), attr=attr,
                                                   ctx=ast.Load()), node)
            self.parents[id(read)] = node
            self.visit_Attribute(read)
        self.generic_visit(node)

    # calls, classes, functions --------------------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name in WRITTEN_OUT_CALLS and (node.keywords or any(isinstance(a, ast.Starred) for a in node.args)):
            self.flag(node, f"{name}(...) takes its arguments written out, one by one: no keywords, *args or **kwargs")
        if name in {"getattr", "hasattr"}:
            key = node.args[1] if len(node.args) > 1 else None
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str) and key.value.isidentifier()
                    and not key.value.startswith("_")):
                self.flag(node, f"{name} is allowed only with a constant, non-underscore attribute name; for a "
                          "submodule by a computed name use self.get_submodule(f\"layer_{i}\")")
        parent = self.parents.get(id(node))
        if name == "type" and len(node.args) > 1:
            self.flag(node, "creating classes with type(...) is not allowed")
        elif name == "type" and not (isinstance(parent, ast.Compare) or isinstance(parent, ast.Attribute)
                                     and parent.attr == "__name__" or is_class_test_argument(self.parents, node)):
            # A class in hand calls its methods with any object as self: type(self).forward(torch.Tensor, x)
            self.flag(node, "type(x) may only be compared (type(x) is T), tested (isinstance(y, type(x))) or named "
                      "(type(x).__name__)")
        if name == "super" and node.args and not (len(node.args) == 2 and isinstance(node.args[1], ast.Name)
                                                  and node.args[1].id == "self"):
            self.flag(node, "super may only be called as super() or super(Class, self)")
        elif name == "super" and not node.args and not self._in_instance_method(node):
            # super() is super(Class, first argument): in a classmethod, super(Class, cls) hands out the bases'
            # methods unbound, and super().grab(t) ran a method with a tensor as its self
            self.flag(node, "super() may only be called in a method whose first parameter is self (not in a "
                      "classmethod, a staticmethod, a nested function or a lambda)")
        callee = self._name_taker(node.func)
        if callee is not None:
            given = [value for position, keyword in NAME_ARGUMENTS[callee]
                     for value in [k.value for k in node.keywords if k.arg == keyword] + node.args[position:position + 1]]
            if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords) \
                    or not all(self._written_name(g) for g in given) \
                    or any(isinstance(g, ast.Constant) and g.value in self._torch_private(node) for g in given):
                self.flag(node, f"the name given to {callee} must be written out: a string literal (not one of "
                          "torch.nn's private names), or an f-string or a + of strings that starts with a letter "
                          "(f\"mask_{i}\")")
        self.generic_visit(node)

    def _in_instance_method(self, node: ast.AST) -> bool:
        """Whether the function ``node`` is in is a method whose first parameter is the instance. (A comprehension
        is not a function here: from Python 3.12 it runs in its function's frame; before, super() there fails.)"""
        scope = self.parents.get(id(node))
        while scope is not None and not isinstance(scope, (ast.FunctionDef, ast.Lambda)):
            scope = self.parents.get(id(scope))
        positional = scope.args.posonlyargs + scope.args.args if isinstance(scope, ast.FunctionDef) else []
        return bool(positional) and id(positional[0]) in self.instance_params

    def _written_name(self, node: ast.AST) -> bool:
        """``_written_name``, or a variable that its function binds only to such names: ``for name in ("w_q",
        "w_k"): self.add_module(name, ...)``."""
        if not isinstance(node, ast.Name):
            return _written_name(node)
        scope = self.parents.get(id(node))
        while scope is not None and not isinstance(scope, ast.FunctionDef):
            scope = self.parents.get(id(scope))
        binders = [n for n in ast.walk(scope or self.tree) if node.id in bindings(n)]
        return bool(binders) and all(self._binds_written_names(b) for b in binders)

    def _binds_written_names(self, target: ast.AST) -> bool:
        parent = self.parents.get(id(target))
        if isinstance(parent, (ast.For, ast.comprehension)) and parent.target is target:
            return isinstance(parent.iter, (ast.Tuple, ast.List, ast.Set)) \
                and all(_written_name(e) for e in parent.iter.elts)
        return isinstance(parent, ast.Assign) and target in parent.targets and _written_name(parent.value)

    def _name_taker(self, func: ast.AST) -> str | None:
        """The name of ``NAME_ARGUMENTS`` that ``func`` (a call's function) names, if any."""
        name = func.attr if isinstance(func, ast.Attribute) else \
            self.aliases[func.id].rpartition(".")[2] if isinstance(func, ast.Name) and func.id in self.aliases else None
        return name if name in NAME_ARGUMENTS else None

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for base in node.bases:
            dotted = _dotted(base)
            full = self._full_name(dotted)
            tensor_class = (full or "").endswith(("Parameter", "Buffer"))  # tensors: see as_subclass
            if tensor_class or not (dotted in self.block_classes or (full or "").startswith(ALLOWED_BASES[0])
                                    or full == ALLOWED_BASES[1]):
                self.flag(node, f"class {node.name} may derive only from torch.nn classes (nn.Module), "
                          "torch.autograd.Function or classes of the block")
        if node.keywords:
            self.flag(node, f"class {node.name}: class keywords (metaclass=...) are not allowed")
        if node.decorator_list:
            # a class decorator is handed the class itself, and could call its methods with any object as self
            self.flag(node, f"class {node.name}: class decorators are not allowed")
        for stmt in node.body:
            value = stmt.value if isinstance(stmt, (ast.Assign, ast.AnnAssign)) else None
            if value is not None and any(isinstance(n, ast.Name) and n.id in self.function_names
                                         for n in ast.walk(value)):
                # in the class body a method's name is the bare function (grab = mem): Poker.grab(x) ran it with a
                # tensor as its self
                self.flag(stmt, f"the body of {node.name} may not name a function or method of the block")
        self.block_classes.add(node.name)
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if _is_dunder(node.name) and node.name not in ALLOWED_DUNDERS:
            self.flag(node, f"defining {node.name} is not allowed: of the special methods, only __init__")
        for decorator in node.decorator_list:
            if not self._allowed_decorator(decorator):
                # what a decorator returns becomes the method: functools.partial(classmethod) handed cls the class,
                # a reduce over staticmethod(mem) a staticmethod whose "self" was any argument
                self.flag(decorator, "a decorator may only be staticmethod, classmethod, property, a property's "
                          ".setter or .deleter, or a torch mode (torch.no_grad(), torch.autocast('cuda', "
                          "dtype=torch.bfloat16)) with literal arguments")
        for default in [*node.args.defaults, *node.args.kw_defaults]:
            if default is not None and any(isinstance(n, ast.Name) and n.id in self.function_names
                                           for n in ast.walk(default)):
                # evaluated in the class body, a method's name is the bare function, callable with any first argument
                self.flag(default, f"a default argument of {node.name} may not name a function of the block")
        if any(_dotted(d.func if isinstance(d, ast.Call) else d) == "classmethod" for d in node.decorator_list):
            self._check_classmethod(node)
        args = node.args
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if arg is not None:
                self._check_annotation(arg.annotation)
        for default in [*args.defaults, *args.kw_defaults]:
            if default is not None and (_shared_mutable(default) or not _is_default_value(default)):
                # A default is made once and lives on the function, where no snapshot of the module looks: a list,
                # a tensor or a module there is state every call shares.
                self.flag(default, f"a default argument of {node.name} may only be a constant, a name or an "
                          "attribute (None, 1e-6, (1, 2), torch.float32, F.gelu): default to None and build "
                          "anything else in the call")
        self._check_annotation(node.returns)
        self.generic_visit(node)

    def _allowed_decorator(self, decorator: ast.AST) -> bool:
        dotted = _dotted(decorator.func if isinstance(decorator, ast.Call) else decorator)
        if isinstance(decorator, ast.Name):
            return decorator.id in ("staticmethod", "classmethod", "property")
        if self._full_name(dotted) in INSTANCE_DECORATORS:
            return _plain_decorator(decorator)
        return isinstance(decorator, ast.Attribute) and decorator.attr in ("setter", "deleter") \
            and isinstance(decorator.value, ast.Name)

    def _check_classmethod(self, node: ast.FunctionDef) -> None:
        """A classmethod's ``cls`` is the class in hand: ``cls.method(torch.Tensor)`` would run a method with a torch
        class as its self. It may only be instantiated or read for the class's constants and staticmethods."""
        owner = self.parents.get(id(node))
        positional = node.args.posonlyargs + node.args.args
        if not positional or not isinstance(owner, ast.ClassDef):
            return
        # Called on an instance of a subclass, cls is that subclass, where the same name may be a method: Sub's
        # def poke(self) made cls.poke(gen) run it with a generator as its self. Only a class no class of the block
        # derives from is always the class the method is written in.
        subclassed = any(self._inherits(other, owner.name) for other in self.classes if other is not owner)
        name, readable = positional[0].arg, set() if subclassed else self._readable_through(owner.name)
        for use in ast.walk(node):
            if not (isinstance(use, ast.Name) and use.id == name):
                continue
            parent = self.parents.get(id(use))
            if isinstance(use.ctx, ast.Load) and (isinstance(parent, ast.Call) and parent.func is use
                                                  or isinstance(parent, ast.Attribute) and parent.attr in readable
                                                  and isinstance(parent.ctx, ast.Load)):
                continue
            self.flag(use, f"in the classmethod {node.name}, {name} may only be instantiated ({name}(...))"
                      + (f": a class derives from {owner.name}; read its constants as {owner.name}.NAME" if subclassed
                         else " or read for the class's constants and staticmethods"))

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._check_annotation(node.annotation)
        self.generic_visit(node)

    def _check_annotation(self, annotation: ast.AST | None) -> None:
        # A string annotation is code that typing's helpers evaluate with the interpreter's builtins: only a type's
        # name ("TestTimeRegressionAttention", "Optional[torch.Tensor]") may be written as a string.
        if annotation is None:
            return
        values = {id(v) for node in ast.walk(annotation) for v in self._literal_values(node)}
        # and written as code, only a type expression: the loader never evaluates annotations, and an annotation
        # that calls (def f(a: grab(Poker))) would run the moment anything did
        if not all(isinstance(n, TYPE_EXPRESSION_NODES) for n in ast.walk(annotation)):
            self.flag(annotation, "an annotation may only name a type (torch.Tensor, Optional[int], tuple[int, int], "
                      "int | None)")
        for node in ast.walk(annotation):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in values \
                    and not _is_type_expression(node.value):
                self.flag(annotation, "a string annotation may only name a type (\"Optional[torch.Tensor]\"): "
                          "write the type itself or leave it out")

    def _literal_values(self, node: ast.AST) -> list[ast.AST]:
        """The values of ``typing.Literal[...]`` (strings there are values, never evaluated as code)."""
        if not (isinstance(node, ast.Subscript) and self._full_name(_dotted(node.value)) == "typing.Literal"):
            return []
        return list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        child, scope = node, self.parents.get(id(node))
        while scope is not None and not (isinstance(scope, ast.FunctionDef) and child in scope.body
                                         or isinstance(scope, ast.Lambda) and child is scope.body):
            child, scope = scope, self.parents.get(id(scope))  # a default or a decorator runs outside its function
        if scope is None:  # at the top of the block or in a class body it binds a global: ``@cache(maxsize=(F := 1))``
            self.flag(node, "an assignment expression (:=) is allowed only inside a function")
        self.generic_visit(node)

    def visit_Yield(self, node: ast.Yield) -> None:
        # a suspended generator keeps its with-blocks open after forward returns (torch.no_grad() turned gradients off
        # for the frozen layers after the attention), and runs its finally-blocks when it is collected
        self.flag(node, "generators (yield) are not allowed: return a list or a tuple")
        self.generic_visit(node)

    visit_YieldFrom = visit_Yield

    def visit_Global(self, node: ast.Global) -> None:
        self.flag(node, "'global' is not allowed")

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self.flag(node, "'nonlocal' is not allowed")

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.flag(node, "async code is not allowed")

    def visit_Await(self, node: ast.Await) -> None:
        self.flag(node, "async code is not allowed")


def _format_fields(node: ast.AST) -> list[str] | None:
    """The field names of a string literal used as a format string, nested ones included; None for anything else."""
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        return None
    fields, todo = [], [node.value]
    try:
        while todo:
            for _, field_name, spec, _ in string.Formatter().parse(todo.pop()):
                if field_name is not None:
                    fields.append(field_name)
                if spec:
                    todo.append(spec)
    except ValueError:
        return None
    return fields


def _is_super_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"


def _plain_decorator(node: ast.AST) -> bool:
    """Whether a decorator is a name, or a call whose arguments are literals and torch's dtypes
    (``torch.autocast("cuda", dtype=torch.bfloat16)``): ``torch.no_grad(staticmethod)`` returns
    ``no_grad()(staticmethod)``, a staticmethod whose first parameter is any argument."""
    if not isinstance(node, ast.Call):
        return True
    values = node.args + [k.value for k in node.keywords]
    return all(isinstance(v, ast.Constant) or isinstance(v, ast.Attribute) and isinstance(v.value, ast.Name)
               and v.value.id == "torch" and v.attr in TORCH_CONSTANTS for v in values) \
        and all(k.arg is not None for k in node.keywords)


def _written_name(node: ast.AST) -> bool:
    """Whether ``node`` is a name the block writes out: a string literal (``visit_Constant`` refuses a special one), or
    an f-string or a sum of strings whose first part is a literal that starts with a letter (``f"mask_{i}"``,
    ``"mask_" + str(i)``). Any other string could be computed to a special name."""
    if isinstance(node, ast.Constant):
        return node.value is None or isinstance(node.value, str)
    while isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        node = node.left
    first = node.values[0] if isinstance(node, ast.JoinedStr) and node.values else node
    return isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value[:1].isalpha()


def _plain_field(name: str) -> bool:
    return name == "" or name.isdigit() or name.isidentifier()


def module_value_message(name: str) -> str:
    return f"the module {name} may only be used as {name}.name: do not bind it to a name, pass it, return it or store it"


def called_with_self(parents: dict[int, ast.AST], node: ast.AST) -> bool:
    """Whether ``node`` is called with ``self`` as its first argument (``Base.method(self, ...)``)."""
    call = parents.get(id(node))
    return isinstance(call, ast.Call) and call.func is node and bool(call.args) \
        and isinstance(call.args[0], ast.Name) and call.args[0].id == "self"


def parent_map(tree: ast.AST) -> dict[int, ast.AST]:
    """Each node's parent, by the child's id."""
    return {id(child): parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}


def is_class_test_argument(parents: dict[int, ast.AST], node: ast.AST) -> bool:
    """Whether ``node`` is the class argument of ``isinstance``/``issubclass`` (alone or in a tuple), or the class of
    ``super(Class, self)``."""
    call = parents.get(id(node))
    if isinstance(call, ast.Tuple):
        call = parents.get(id(call))
    return isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and node is not call.func and (
        call.func.id in {"isinstance", "issubclass"} and node is not call.args[0]
        or call.func.id == "super" and node is call.args[0])


def class_use(parents: dict[int, ast.AST], node: ast.AST) -> bool:
    """Whether the class that ``node`` names is used as a class and nothing else: called, an attribute read
    (``Base.forward(self, x)``, ``Base.SCALE``: the method rules apply), a base, the class argument of
    ``isinstance``/``issubclass``/``super``, compared or in an annotation. Bound, passed or stored, a class in hand
    could call its methods with any object as ``self``, or be patched through an attribute of ``self``."""
    parent = parents.get(id(node))
    if isinstance(parent, ast.Call) and parent.func is node or isinstance(parent, ast.Attribute) \
            or isinstance(parent, (ast.ClassDef, ast.Compare)) or is_class_test_argument(parents, node):
        return True
    handler = parents.get(id(parent)) if isinstance(parent, ast.Tuple) else parent
    if isinstance(handler, ast.ExceptHandler) and (handler.type is node or handler.type is parent):
        return True  # except einops.EinopsError:
    child = node
    while parent is not None and not isinstance(parent, (ast.stmt, ast.Lambda)):
        if isinstance(parent, ast.arg) and parent.annotation is child:
            return True
        child, parent = parent, parents.get(id(parent))
    return isinstance(parent, ast.AnnAssign) and parent.annotation is child \
        or isinstance(parent, ast.FunctionDef) and parent.returns is child


def _only_as_it_is(path: str) -> bool:
    """Whether ``path`` (a full dotted name) is a member of typing or functools, but a plain value like
    ``TYPE_CHECKING``, or a class only derived from (``BASE_ONLY``): such a name is only used as it is."""
    module, _, member = path.rpartition(".")
    return module in ALLOWED_MODULE_MEMBERS and member in ALLOWED_MODULE_MEMBERS[module] - HELPER_VALUES \
        or path in BASE_ONLY


def _used_as_it_is(parents: dict[int, ast.AST], node: ast.AST) -> bool:
    """Whether a member of typing or functools (or a class only derived from) is called, subscripted, derived from,
    caught, tested or named in an annotation, and not bound, passed or stored."""
    parent = parents.get(id(node))
    if isinstance(parent, ast.Subscript) and parent.value is node:
        return True
    return not isinstance(parent, ast.Attribute) and class_use(parents, node)


def _is_function_apply(value: ast.AST, tree: ast.Module) -> bool:
    """``MyFunction.apply`` of an autograd Function class defined at the block's top level: a module-level alias
    (``chunk_scan = ChunkScan.apply``) is the usual way to call one."""
    functions = {s.name for s in tree.body if isinstance(s, ast.ClassDef)}
    return isinstance(value, ast.Attribute) and value.attr == "apply" and isinstance(value.value, ast.Name) \
        and value.value.id in functions


# What a type annotation is made of: names, dotted names, subscripts, tuples and lists of them, |, and literals.
TYPE_EXPRESSION_NODES = (ast.Name, ast.Attribute, ast.Subscript, ast.Tuple, ast.List, ast.Load, ast.BinOp, ast.BitOr,
                         ast.Constant, ast.UnaryOp, ast.USub)


def _is_type_expression(text: str) -> bool:
    """Names, dotted names, subscripts, tuples and ``|`` of them, and None: what a type annotation spells."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return False
    allowed = (ast.Expression, ast.Name, ast.Attribute, ast.Subscript, ast.Tuple, ast.List, ast.Load, ast.BinOp,
               ast.BitOr)
    return all(isinstance(n, allowed) or (isinstance(n, ast.Constant) and n.value is None) for n in ast.walk(tree)) \
        and not any(isinstance(n, ast.Name) and (_is_dunder(n.id) or n.id in FORBIDDEN_NAMES) or
                    isinstance(n, ast.Attribute) and n.attr.startswith("_") for n in ast.walk(tree))


def _member_message(module: str, name: str) -> str:
    if module in ALLOWED_MODULE_MEMBERS:
        return (f"{module}.{name} is not allowed: from {module} a block may use only "
                f"{', '.join(sorted(ALLOWED_MODULE_MEMBERS[module]))}")
    return (f"{module}.{name} is not in the table of what a block may use from {module} ({TABLE_FILE})"
            + _close_matches(name, MODULE_MEMBERS[module], module + "."))


def _helper_member_message(name: str) -> str:
    # typing.Type.x reads x on the builtin type, and typing.Iterable.register(float) changed what every isinstance
    # of the process answers
    return (f"{name} may only be used as it is ({name}[...], {name}(...), or as a base or an annotation): not bound, "
            "passed, stored or read for its attributes")


def _attribute_message(attr: str) -> str:
    return (f"attribute {attr!r} is neither in the table of what tensors, torch.nn modules and Python values have "
            f"({TABLE_FILE}) nor set by the block on its own objects" + _close_matches(attr, api_table.ATTRIBUTES))


def _close_matches(name: str, names: frozenset[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, sorted(names), n=3)
    return f"; did you mean {' or '.join(prefix + c for c in close)}?" if close else ""


def _refused_by_name(attr: str) -> bool:
    """Whether ``visit_Attribute`` refuses ``attr`` by its name wherever it is read, with a message of its own."""
    return (attr.startswith("_") or attr in FORBIDDEN_ATTRIBUTES or attr in FORBIDDEN_NAMES
            or attr in LOOKUP_BUILTINS or attr.startswith(SETTING_PREFIXES) or "hook" in attr.lower())


def class_body_names(cls: ast.ClassDef) -> set[str]:
    """The names the statements of ``cls``'s body bind in it: its methods, nested classes, constants and fields."""
    names = set()
    for stmt in cls.body:
        if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
            names.add(stmt.name)
            continue
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] \
            if isinstance(stmt, (ast.AnnAssign, ast.AugAssign)) else []
        names.update(name for target in targets for sub in ast.walk(target) for name in bindings(sub))
    return names


def own_attributes(tree: ast.AST, on_self_only: bool = False) -> set[str]:
    """The attribute names the block gives its own objects: those it assigns (``self.scale = ...``, ``ctx.shape =
    ...``; with ``on_self_only``, only on ``self``), its classes' methods, constants and fields, and the names it
    registers (``self.register_buffer("mask", ...)``). A block may read these on any object, as it may read the
    table's."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Load):
            if not on_self_only or isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
        elif isinstance(node, ast.ClassDef):
            names |= class_body_names(node)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in NAMING_METHODS:
            named = node.args[:1] + [k.value for k in node.keywords if k.arg == "name"]
            names.update(n.value for n in named if isinstance(n, ast.Constant) and isinstance(n.value, str))
    return names


def lookups_as_attributes(tree: ast.AST) -> ast.AST:
    """``tree`` with each ``getattr``/``hasattr`` of a constant name written as the attribute it reads."""
    return _LookupsAsAttributes().visit(tree)


class _LookupsAsAttributes(ast.NodeTransformer):
    """``getattr(obj, "name"[, default])`` and ``hasattr(obj, "name")`` with a constant name become ``obj.name`` (and
    the default beside it), so that every rule for attributes applies to them as well: ``getattr(x, "grad_fn")``
    is ``x.grad_fn``. Only the checked tree is rewritten, never the program."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if not (isinstance(node.func, ast.Name) and node.func.id in {"getattr", "hasattr"} and not node.keywords
                and len(node.args) in (2, 3) and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str) and node.args[1].value.isidentifier()):
            return node
        if node.func.id == "hasattr" and len(node.args) != 2:
            return node
        lookup = ast.copy_location(ast.Attribute(value=node.args[0], attr=node.args[1].value, ctx=ast.Load()), node)
        if len(node.args) == 2:
            return lookup
        return ast.copy_location(ast.Tuple(elts=[lookup, node.args[2]], ctx=ast.Load()), node)


def _top_level_bindings(tree: ast.Module) -> list[tuple[ast.AST, str]]:
    bound = []
    for stmt in tree.body:
        if isinstance(stmt, (ast.ClassDef, ast.FunctionDef)):
            bound.append((stmt, stmt.name))
        elif isinstance(stmt, ast.Assign):
            bound += [(stmt, t.id) for t in stmt.targets if isinstance(t, ast.Name)]
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            bound.append((stmt, stmt.target.id))
    return bound


def check_block(
    block: str,
    class_name: str,
    required_kwargs: tuple[str, ...],
    head_aliases: dict[str, str],
    line_offset: int = 0,
) -> PolicyReport:
    """``head_aliases``: ``module_aliases`` of the frozen code before the block. Raises SyntaxError when the block
    does not parse; otherwise returns every violation found."""
    tree = ast.parse(block)
    report = PolicyReport()
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.ClassDef, ast.FunctionDef)):
            continue
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None and _shared_mutable(stmt.value):
            report.add(stmt, "at the top of the block, " + SHARED_STATE_MESSAGE, line_offset)
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            continue
        if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets) and (
                _is_constant_expression(stmt.value) or _is_function_apply(stmt.value, tree)):
            continue
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and (stmt.value is None or _is_constant_expression(stmt.value)):
            continue
        report.add(stmt, f"module-level {type(stmt).__name__} statement is not allowed: the top of the block may "
                   "hold only imports, classes, functions and constants computed from literals (NEG = "
                   "float('-inf'), math.log(1e4), torch.float32); compute anything else inside the class",
                   line_offset)
    for stmt, name in _top_level_bindings(tree):
        if name in head_aliases:
            report.add(stmt, f"{name!r} is bound by the frozen code above the block: use another name", line_offset)
    block_imports = module_aliases(tree)
    for name, path in block_imports.items():
        if name in head_aliases and head_aliases[name] != path:
            report.add(None, f"the import that binds {name!r} rebinds a name of the frozen code: use another name",
                       line_offset)
    _Checker(report, {**head_aliases, **block_imports}, line_offset).run(lookups_as_attributes(tree))
    _check_class(tree, class_name, required_kwargs, report, line_offset)
    _check_class_bodies(tree, report, line_offset)
    return report


def _check_class(tree: ast.Module, class_name: str, required: tuple[str, ...], report: PolicyReport, offset: int) -> None:
    classes = [s for s in tree.body if isinstance(s, ast.ClassDef) and s.name == class_name]
    if len(classes) != 1:
        report.add(None, f"the block must define class {class_name!r} exactly once at its top level", offset)
        return
    cls = classes[0]
    methods = {s.name: s for s in cls.body if isinstance(s, ast.FunctionDef)}
    for missing in {"__init__", "forward"} - methods.keys():
        report.add(cls, f"class {class_name} must define {missing}()", offset)
    init = methods.get("__init__")
    if init is not None:
        args = init.args
        names = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
        absent = [k for k in required if k not in names]
        if absent and args.kwarg is None:
            report.add(init, f"{class_name}.__init__ must accept the keywords {list(required)}; missing {absent}", offset)


def _check_class_bodies(tree: ast.Module, report: PolicyReport, offset: int) -> None:
    """Every class of the block holds methods and constants only: what its body makes is shared by every instance,
    through ``self`` as well (``self.STORE``), where no snapshot of an instance looks."""
    for cls in (node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)):
        for stmt in cls.body:
            if isinstance(stmt, (ast.FunctionDef, ast.Pass)):
                continue
            if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None \
                    and _shared_mutable(stmt.value):
                report.add(stmt, f"in the body of {cls.name}, " + SHARED_STATE_MESSAGE, offset)
                continue
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                continue
            if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and _is_constant_expression(stmt.value or ast.Constant(None)):
                continue
            report.add(stmt, f"class-level {type(stmt).__name__} statement is not allowed in {cls.name}: a class "
                       "body may hold only methods and constants computed from literals; set anything else in "
                       "__init__", offset)

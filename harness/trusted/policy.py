"""Static policy check of an evolved block: what code may appear between the markers.

The block is hostile until proven otherwise. This is an allow-list where it can be (imports,
module-level statements) and a deny-list of the known ways out (builtins that reach the
interpreter, dunder attributes, private torch internals, patching of modules). It runs on the
text alone, before any of the candidate's code executes.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

ALLOWED_IMPORT_ROOTS = frozenset({"torch", "math", "typing", "functools", "einops"})

# Names whose call or mere mention gives access to the interpreter, the file system or the process.
FORBIDDEN_NAMES = frozenset(
    {
        "eval", "exec", "compile", "open", "__import__", "globals", "locals", "vars", "setattr", "delattr",
        "input", "breakpoint", "exit", "quit", "help", "memoryview", "__builtins__", "__loader__",
        "__spec__", "os", "sys", "subprocess", "socket", "shutil", "pathlib", "importlib", "builtins",
        "ctypes", "pickle", "marshal", "inspect", "gc", "threading", "multiprocessing", "signal", "time",
        "random", "io", "tempfile", "urllib", "http", "requests",
    }
)

# Attribute names that reach outside the model even on an allowed module.
FORBIDDEN_ATTRIBUTES = frozenset(
    {
        "load", "save", "hub", "manual_seed", "seed", "set_rng_state", "get_rng_state", "random",
        "backends", "set_default_dtype", "set_default_device", "set_grad_enabled", "set_num_threads",
        "use_deterministic_algorithms", "cpp_extension", "library", "ops", "classes", "jit", "compile",
        "from_file", "fx", "multiprocessing", "distributed", "profiler", "utils", "overrides",
        "register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook",
        "register_backward_hook", "register_module_forward_hook", "register_module_forward_pre_hook",
        "register_hook", "register_load_state_dict_post_hook", "register_state_dict_pre_hook",
        "_register_load_state_dict_pre_hook", "apply", "storage", "untyped_storage", "data_ptr", "set_",
    }
)

ALLOWED_DUNDERS = frozenset({"__init__"})


@dataclass
class PolicyReport:
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def add(self, node: ast.AST | None, message: str, line_offset: int) -> None:
        where = f"line {getattr(node, 'lineno', 0) + line_offset}: " if node is not None else ""
        self.violations.append(where + message)


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _is_constant_expression(node: ast.AST) -> bool:
    allowed = (ast.Constant, ast.Tuple, ast.List, ast.Set, ast.Dict, ast.UnaryOp, ast.BinOp, ast.Name,
               ast.Load, ast.operator, ast.unaryop, ast.Attribute)
    for sub in ast.walk(node):
        if not isinstance(sub, allowed):
            return False
        if isinstance(sub, ast.Attribute) and _root_name(sub) != "math":
            return False
    return True


class _Checker(ast.NodeVisitor):
    def __init__(self, report: PolicyReport, module_aliases: set[str], line_offset: int):
        self.report = report
        self.modules = set(module_aliases)
        self.offset = line_offset

    def flag(self, node: ast.AST, message: str) -> None:
        self.report.add(node, message, self.offset)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            root = alias.name.split(".")[0]
            if root not in ALLOWED_IMPORT_ROOTS:
                self.flag(node, f"import of {alias.name!r} is not allowed (allowed: {sorted(ALLOWED_IMPORT_ROOTS)})")
            self._check_import_path(node, alias.name)
            self.modules.add(alias.asname or root)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level or module.split(".")[0] not in ALLOWED_IMPORT_ROOTS:
            self.flag(node, f"import from {module or '.'!r} is not allowed (allowed: {sorted(ALLOWED_IMPORT_ROOTS)})")
        self._check_import_path(node, module)
        for alias in node.names:
            if alias.name == "*":
                self.flag(node, "star imports are not allowed")
            elif alias.name.startswith("_") or alias.name in FORBIDDEN_ATTRIBUTES or alias.name in FORBIDDEN_NAMES:
                self.flag(node, f"importing {alias.name!r} is not allowed")
            # Anything imported from a module may itself be a module (torch.nn.functional as F).
            self.modules.add(alias.asname or alias.name)

    def _check_import_path(self, node: ast.AST, dotted: str) -> None:
        for part in dotted.split(".")[1:]:
            if part.startswith("_") or part in FORBIDDEN_ATTRIBUTES:
                self.flag(node, f"import of {dotted!r} reaches a forbidden part of torch ({part!r})")

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in FORBIDDEN_NAMES or (node.id.startswith("__") and node.id.endswith("__")):
            self.flag(node, f"use of {node.id!r} is not allowed")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        if attr.startswith("__") and attr.endswith("__") and attr not in ALLOWED_DUNDERS:
            self.flag(node, f"dunder attribute {attr!r} is not allowed")
        elif attr in FORBIDDEN_ATTRIBUTES:
            self.flag(node, f"attribute {attr!r} is not allowed")
        elif attr.startswith("_") and _root_name(node) in self.modules:
            self.flag(node, f"private module attribute {attr!r} is not allowed")
        if isinstance(node.ctx, (ast.Store, ast.Del)) and _root_name(node) in self.modules:
            self.flag(node, f"assigning to an attribute of module {_root_name(node)!r} (monkeypatching) is not allowed")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name in {"getattr", "hasattr"}:
            key = node.args[1] if len(node.args) > 1 else None
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str) and not key.value.startswith("_")):
                self.flag(node, f"{name} is allowed only with a constant, non-underscore attribute name")
        if name == "type" and len(node.args) > 1:
            self.flag(node, "creating classes with type(...) is not allowed")
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        self.flag(node, "'global' is not allowed")

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self.flag(node, "'nonlocal' is not allowed")

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.flag(node, "async code is not allowed")

    def visit_Await(self, node: ast.Await) -> None:
        self.flag(node, "async code is not allowed")


def check_block(
    block: str,
    class_name: str,
    required_kwargs: tuple[str, ...],
    module_aliases: set[str],
    line_offset: int = 0,
) -> PolicyReport:
    """Raises SyntaxError when the block does not parse; otherwise returns every violation found."""
    tree = ast.parse(block)
    report = PolicyReport()
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.ClassDef, ast.FunctionDef)):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            continue
        if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets) and _is_constant_expression(stmt.value):
            continue
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and (stmt.value is None or _is_constant_expression(stmt.value)):
            continue
        report.add(stmt, f"module-level {type(stmt).__name__} statement is not allowed: only imports, "
                   "classes, functions and constants may appear at the top of the block", line_offset)
    _Checker(report, module_aliases, line_offset).visit(tree)
    _check_class(tree, class_name, required_kwargs, report, line_offset)
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
    for stmt in cls.body:
        if isinstance(stmt, (ast.FunctionDef, ast.Pass)):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and _is_constant_expression(stmt.value or ast.Constant(None)):
            continue
        report.add(stmt, f"class-level {type(stmt).__name__} statement is not allowed in {class_name}", offset)

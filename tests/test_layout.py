"""The import rules of the trust boundary, read from the source (imports inside functions count too):

- no import cycle anywhere in ``harness/``;
- the trusted side (what runs in OpenEvolve's processes: the evaluator, the static gate, the execution layer, the
  ledger, the fingerprint, the reasons, the profiles) imports neither torch nor any module of the untrusted side
  (what runs in the sandbox process: loading the candidate, the dynamic gate, the FLOP audit, training, data);
- a program is executed (``harness.loader``) only by the sandbox, its rung processes, and the developer commands
  that train or time a program in their own process.
"""

import ast
import subprocess
import sys
from pathlib import Path

import harness

HARNESS = Path(harness.__file__).resolve().parent

TRUSTED = {"evaluate", "program", "policy", "executor", "slots", "ledger", "fingerprint", "reasons", "profiles", "scoring",
           "frameworks", "process_lifetime"}
UNTRUSTED = {"sandbox", "loader", "checks", "flops", "train", "objective", "data", "scaffold", "hardware"}
# Who may import harness.loader, i.e. run a program's code in its own process.
LOADS_PROGRAMS = {"sandbox", "objective", "cli", "bench", "gpu_check"}


def _imports(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (top-level names for non-harness ones,
    ``harness.x`` for the package's own)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(".".join(alias.name.split(".")[:2]) if alias.name.startswith("harness.")
                          else alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module == "harness":
                found |= {f"harness.{a.name}" for a in node.names}
            elif node.module.startswith("harness."):
                found.add(".".join(node.module.split(".")[:2]))
            else:
                found.add(node.module.split(".")[0])
    return found


def _graph() -> dict[str, set[str]]:
    modules = {p.stem for p in HARNESS.glob("*.py")}
    return {p.stem: {m.split(".", 1)[1] for m in _imports(p) if m.startswith("harness.")} & modules - {p.stem}
            for p in HARNESS.glob("*.py")}


def test_every_module_is_placed_on_one_side_or_among_the_tools():
    tools = {"__init__", "cli", "analyze", "validate", "stats", "proposer", "bench", "gpu_check", "confinement_probe"}
    assert TRUSTED.isdisjoint(UNTRUSTED)
    assert set(_graph()) == TRUSTED | UNTRUSTED | tools, "a new module: say which side of the boundary it is on"


def test_the_code_hash_covers_the_modules_that_can_change_a_result_and_no_tool():
    from harness.fingerprint import RESULT_MODULES

    assert set(RESULT_MODULES) <= TRUSTED | UNTRUSTED
    assert UNTRUSTED <= set(RESULT_MODULES), "everything the sandbox runs can change a result"
    assert {"ledger", "slots", "process_lifetime"}.isdisjoint(RESULT_MODULES)


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_trusted_side_imports_neither_torch_nor_the_untrusted_side():
    for name in sorted(TRUSTED):
        imported = _imports(HARNESS / f"{name}.py")
        assert "torch" not in imported, f"harness.{name} imports torch"
        reached = {m.split(".", 1)[1] for m in imported if m.startswith("harness.")} & UNTRUSTED
        assert not reached, f"harness.{name} imports the untrusted side: {sorted(reached)}"


def test_only_the_sandbox_and_the_developer_commands_execute_programs():
    loaders = {name for name, deps in _graph().items() if "loader" in deps}
    assert loaders <= LOADS_PROGRAMS, sorted(loaders - LOADS_PROGRAMS)


def test_importing_the_evaluator_loads_no_torch():
    """What OpenEvolve's processes import: evaluators/<fw>_eval.py imports harness.evaluate."""
    code = "import sys, harness.evaluate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"

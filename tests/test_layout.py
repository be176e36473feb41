"""The layout's rules, read from the source (imports inside functions count too).

- ``harness/trusted/`` runs in OpenEvolve's processes and in the commands around the loop. It imports neither torch,
  nor the sandbox side, nor the frozen model, nor any tool.
- ``harness/sandbox/`` and ``harness/scaffold.py`` run in the sandbox process, next to candidate code.
- ``harness/scorer/`` is the trusted scorer: its own process, with torch, and never a program in it. It imports the
  trusted side and the data pipeline (``harness/data.py``, used by both), never the sandbox side or the frozen model.
- The tools around the loop (``proposer/``, ``analysis/``, ``validation/``, ``campaign/``) never import the sandbox side: they reach
  candidate code only through the evaluator's executor. ``diagnostics/`` holds the developer commands that time a
  program in their own process.
- No import cycle anywhere in ``harness/``.
- A program is executed (``harness.sandbox.loader``) only by the sandbox, its rung processes, and the developer
  commands that train or time a program in their own process.
"""

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import harness

HARNESS = Path(harness.__file__).resolve().parent
ROOT = HARNESS.parent

TOOL_PACKAGES = {"proposer", "analysis", "validation", "campaign", "diagnostics"}
TOP_LEVEL = {"harness", "harness.cli", "harness.scaffold", "harness.data"}
LOADS_PROGRAMS = {"harness.sandbox.entry", "harness.sandbox.objective", "harness.cli", "harness.diagnostics.bench",
                  "harness.diagnostics.gpu_check"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in HARNESS.rglob("*.py")}


def _side(module: str) -> str:
    parts = module.split(".")
    if module == "harness.scaffold" or parts[1:2] == ["sandbox"]:
        return "sandbox"
    if parts[1:2] == ["trusted"]:
        return "trusted"
    if parts[1:2] == ["scorer"]:
        return "scorer"
    if module == "harness.data":
        return "data"
    return "tool"


def _imports(path: Path) -> set[str]:
    """Every module named by an import statement in the file: ``harness`` modules by their full dotted name (a name
    imported from a package counts as that module when it is one), other packages by their top-level name."""
    found = set()

    def add(name: str) -> None:
        if not name.startswith("harness"):
            found.add(name.split(".")[0])
            return
        while name not in MODULES:
            name = name.rsplit(".", 1)[0]
        found.add(name)

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert not node.level, f"{path}: use absolute imports"
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                add(full if full in MODULES else node.module)
    return found


GRAPH = {name: {m for m in _imports(path) if m in MODULES} - {name} for name, path in MODULES.items()}


def test_every_module_is_on_one_side_or_in_a_tool_package():
    for name in MODULES:
        parts = name.split(".")
        assert name in TOP_LEVEL or parts[1] in TOOL_PACKAGES | {"trusted", "sandbox", "scorer"}, (
            f"{name}: put it in trusted/, sandbox/, scorer/ or a tool package")


def test_no_import_cycle():
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(GRAPH[node]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_the_trusted_side_imports_neither_torch_nor_the_sandbox_side_nor_a_tool():
    for name, path in MODULES.items():
        if _side(name) != "trusted":
            continue
        imported = _imports(path)
        assert "torch" not in imported, f"{name} imports torch"
        reached = {m for m in imported if m in MODULES and _side(m) != "trusted" and m != "harness"}
        assert not reached, f"{name} imports beyond the trusted side: {sorted(reached)}"


def test_the_scorer_and_the_data_pipeline_never_import_the_sandbox_side_or_a_tool():
    for name in MODULES:
        if _side(name) in ("scorer", "data"):
            reached = {m for m in GRAPH[name] if _side(m) in ("sandbox", "tool") and m != "harness"}
            assert not reached, f"{name} imports beyond the trusted side and the data pipeline: {sorted(reached)}"


def test_the_tools_around_the_loop_never_import_the_sandbox_side():
    for name in MODULES:
        if name.split(".")[1:2] in (["proposer"], ["analysis"], ["validation"], ["campaign"]):
            reached = {m for m in GRAPH[name] if _side(m) == "sandbox"}
            assert not reached, f"{name} imports the sandbox side: {sorted(reached)}"


def test_only_the_sandbox_and_the_developer_commands_execute_programs():
    loaders = {name for name, deps in GRAPH.items() if "harness.sandbox.loader" in deps}
    assert loaders <= LOADS_PROGRAMS, sorted(loaders - LOADS_PROGRAMS)


def test_the_code_hash_covers_what_can_change_a_result_and_no_tool():
    from harness.trusted.fingerprint import result_files

    covered = {_module_name(HARNESS / f) for f in result_files()}
    sandbox_side = {m for m in MODULES if _side(m) == "sandbox"}
    assert sandbox_side <= covered, "everything the sandbox runs can change a result"
    assert {m for m in MODULES if _side(m) in ("scorer", "data")} <= covered, "the scorer and the data set the loss"
    assert all(_side(m) != "tool" for m in covered), "editing a tool must not invalidate cached baselines"
    assert {"harness.trusted.ledger", "harness.trusted.slots", "harness.trusted.process_lifetime"}.isdisjoint(covered)
    assert {"harness.trusted.evaluate", "harness.trusted.scoring", "harness.trusted.policy"} <= covered


def test_importing_the_evaluator_loads_no_torch():
    """What OpenEvolve's processes import: evaluators/<fw>_eval.py imports harness.trusted.evaluate."""
    code = "import sys, harness.trusted.evaluate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_the_wheel_holds_every_module(tmp_path):
    """Ray workers and non-editable installs run from the built package: a subpackage left out of it would
    only show there."""
    source = tmp_path / "source"  # a copy: building in place would leave build/ in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(HARNESS, source / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("harness/") and n.endswith(".py")}
    expected = {p.relative_to(ROOT).as_posix() for p in HARNESS.rglob("*.py")}
    assert expected <= shipped, sorted(expected - shipped)

"""The layout holds: the engine starts nothing, imports flow one way, no cycle, modules stay small.

Read from the source (ast), so these run with no process and no import side effect;
tests/integration/test_packaging.py imports every engine module in a fresh interpreter.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"worker": ROOT / "worker", "tasks": ROOT / "tasks",
           "scorer_local": ROOT / "local" / "scorer_local"}
ENGINE_MAX_LINES = 300
#: The one table of timers (worker/engine/timers.py) is a list of fields, each with its reason:
#: split, "every number in one place" would be two places. It gets a table's allowance.
ENGINE_MAX_LINES_OF = {"worker.engine.timers": 370}
TASKS_MAX_LINES = 150


def _modules() -> dict[str, Path]:
    """Every module of the project's packages: dotted name -> file."""
    out = {}
    for top, base in SOURCES.items():
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            parts = [top, *rel.parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()
ENGINE = sorted(m for m in MODULES if m == "worker.engine" or m.startswith("worker.engine."))


def _resolve(name: str) -> str | None:
    """The project module `name` refers to (the longest known prefix), None if outside."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    """Project modules `module` imports anywhere in its body (top level or inside a function):
    `from a.b import c` counts as a.b.c when c is a module, else as a.b."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            target = _resolve(name)
            # An import of a parent package is implied by Python itself: not an edge.
            if target and target != module and not module.startswith(target + "."):
                found.add(target)
    return found


def _third_party(module: str) -> set[str]:
    path = MODULES[module]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def test_the_engine_imports_no_door_task_local_world_or_celery():
    for module in ENGINE:
        outside = {t for t in GRAPH[module] if not t.startswith("worker.engine")}
        assert not outside, f"{module} imports {sorted(outside)}"
        assert not {"celery", "flower", "uvicorn", "rich", "scorer_local", "tasks"} \
            & _third_party(module), module


def test_tasks_use_the_engine_and_the_app_only():
    for module in (m for m in MODULES if m.startswith("tasks")):
        for target in GRAPH[module]:
            assert target.startswith("worker.engine") or target == "worker.doors.app", \
                f"{module} imports {target}"


def test_the_doors_never_import_the_local_world_at_module_level():
    for module in (m for m in MODULES if m.startswith("worker.doors")):
        tree = ast.parse(MODULES[module].read_text())
        for node in tree.body:  # top level only: the CLI may offer the demo lazily
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) \
                    else [node.module or ""]
                assert not any(n.startswith("scorer_local") for n in names), module


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    # Function-level imports count too: a cycle hidden in a function is still a cycle.
    assert _cycles(GRAPH) == []


def _package(module: str) -> str:
    """The engine part a module belongs to: worker.engine.<package> or a top-level module."""
    return ".".join(module.split(".")[:3])


#: The engine's layers, bottom first, as docs/design.md draws them: a package (or an
#: engine-level module) imports only from layers below its own.
LAYERS = [["timers"], ["state"], ["redis_urls"], ["settings"], ["tencent"], ["runtime"],
          ["events", "deadletters"], ["battles"], ["ingest", "flush"], ["reconcile", "tick"]]


def test_the_engine_packages_form_layers():
    # The data paths read top to bottom (docs/design.md): between the engine's packages too,
    # not only between modules, no import goes back up, nor sideways within a layer.
    layer = {f"worker.engine.{name}": i for i, names in enumerate(LAYERS) for name in names}
    parts = {_package(m) for m in ENGINE if m != "worker.engine"}
    assert parts == set(layer), f"place every engine part in LAYERS: {parts ^ set(layer)}"
    for module in ENGINE:
        for target in GRAPH[module]:
            a, b = _package(module), _package(target)
            if a != b and b.startswith("worker.engine."):
                assert layer[b] < layer[a], f"{module} imports {target}: up or sideways"


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_engine_modules_are_small_and_tasks_thin():
    big = {m: n for m in ENGINE if (n := len(MODULES[m].read_text().splitlines()))
           > ENGINE_MAX_LINES_OF.get(m, ENGINE_MAX_LINES)}
    assert not big, f"engine modules over {ENGINE_MAX_LINES} lines: {big}"
    tasks = sum(len(p.read_text().splitlines()) for p in (ROOT / "tasks").glob("*.py"))
    assert tasks < TASKS_MAX_LINES, f"tasks/ holds {tasks} lines"


def test_every_module_opens_with_a_docstring():
    for module, path in MODULES.items():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{module} has no module docstring"

"""The shape of the code, checked: no import cycle anywhere in app/ and workers/ (imports inside
functions count), and the layers the design names (see .importlinter, run here too)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT
PACKAGES = ("app", "workers")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module → the project modules it imports, from every import statement in its source."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = module.split(".") if is_package else module.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for target in targets:
                # the longest prefix that is a project module: a submodule, or the module whose
                # attribute is imported
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != module:
                    graph[module].add(target)
    # A package's __init__ runs before any of its submodules: importing app.x.y imports app.x.
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_app_and_workers():
    found = cycles(import_graph())
    assert not found, "import cycles (imports inside functions count):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_layers_hold():
    """import-linter's contracts (.importlinter): the engine never imports the service, the
    API never imports the workers, capabilities import only downwards."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), str(ROOT / ".importlinter")], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_tests_do_not_import_benchmarks():
    """Benchmarks are scripts that change for measurement's sake; tests must not depend on them
    (what both need, real deployments and processes, lives in tests/support)."""
    offenders = []
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "benchmarks"]
    assert not offenders, offenders


HEAVY = {"torch", "onnx2torch", "torch_pruning", "onnxruntime", "keras", "tensorflow"}


def _top_level_imports(module: str, path: Path) -> set[str]:
    """Dotted names a module imports at its top level (not inside functions)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


def test_what_the_api_imports_from_the_engine_stays_light():
    """The API imports the pipeline, the catalog and every technique module (to validate params):
    none of them, nor any engine module they import at their top, may import torch, onnxruntime
    or Keras at its top. Helpers only techniques import inside run() may (test_api_imports checks
    the API process itself). FastAPI, SQLAlchemy and Celery appear nowhere in the engine."""
    from app.engine.catalog import technique_modules

    modules = {m: p for m, p in _modules().items() if m.startswith("app.engine")}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not {n.split(".")[0] for n in names} & {"fastapi", "sqlalchemy", "celery"}, (path, node.lineno)
    todo = ["app.engine.pipeline", "app.engine.catalog", *technique_modules()]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        imports = _top_level_imports(module, modules[module])
        heavy = sorted(n for n in imports if n.split(".")[0] in HEAVY)
        assert not heavy, f"{module} imports {heavy} at its top, and the API imports {module}"
        todo += [n for n in imports if n in modules]
    assert "app.engine.quantize.dynamic" in seen and "app.engine.runtime.isolate" in seen

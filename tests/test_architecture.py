"""The dependency rules of docs/architecture.md, checked on the source.

Every import that can run counts, the ones inside functions too: a lazy
import is still a dependency, only a cheaper one (imports under
``if TYPE_CHECKING:`` never run and are left out). The packages form layers — each may import
those below it and never one above — no module cycle hides inside a package,
and the CLI (`search/cli.py`) is the one leaf that wires them all: nothing
imports it but `search/__main__.py`, which only runs it (``python -m search``).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("data_pipeline", "models", "search", "reports", "serving")  # lowest first
CLI = "search.cli"
RUNS_CLI = {"search.__main__"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:``: an import there is for annotations only and
    never runs, so it cannot take part in an import cycle."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports (anywhere in the file)."""
    modules = {_module_name(p): p for layer in LAYERS for p in (ROOT / layer).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:  # `from search import artifacts` imports the module search.artifacts
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back():
    assert cycles(import_graph()) == []


def test_the_cli_is_a_leaf():
    importers = sorted(name for name, targets in import_graph().items() if CLI in targets and name not in RUNS_CLI)
    assert importers == [], f"{', '.join(importers)} import {CLI}; the CLI wires commands, nothing depends on it"


@pytest.mark.parametrize("layer", LAYERS)
def test_packages_import_only_the_layers_below(layer):
    allowed = set(LAYERS[:LAYERS.index(layer) + 1])
    upward = sorted(f"{name} → {target}" for name, targets in import_graph().items()
                    if name.split(".")[0] == layer and name != CLI
                    for target in targets if target.split(".")[0] not in allowed)
    assert upward == [], f"imports pointing up from {layer}: {'; '.join(upward)}"


def _ignored(paths: list[str]) -> set[str]:
    """Which of ``paths`` (relative to the repository) git would ignore."""
    import subprocess

    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
    return set(done.stdout.split())


def test_generated_reports_cannot_meet_code_or_committed_results():
    from reports import OUT_DIR

    code = [f"{layer}/new_subpackage/__init__.py" for layer in LAYERS] + ["reports/bench.md", "reports/bench/results.json"]
    generated = [f"{OUT_DIR.as_posix()}/bench.md", f"{OUT_DIR.as_posix()}/bench/predictions-trial-0.npz"]
    assert _ignored(code + generated) == set(generated)
    assert OUT_DIR.parts[0] == "reports" and len(OUT_DIR.parts) == 2  # one folder of its own, under reports/

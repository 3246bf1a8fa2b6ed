"""The shape of app/ (docs/architecture.md): web → services ← api, no arrows back up, no cycles.

Read from the source with ``ast`` (every import, at any depth), so a new module is covered
without being listed here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from app.config import PROJECT_ROOT

APP = PROJECT_ROOT / "app"
DOORS = ("app.web", "app.api", "app.agent_api")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(path): ast.parse(path.read_text()) for path in APP.rglob("*.py")}


MODULES = _modules()


def _resolve(name: str) -> str:
    """``app.services`` + ``jobs`` may be the module app.services.jobs: prefer the longest."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(tree: ast.Module) -> list[tuple[str, ast.AST]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(f"{node.module}.{alias.name}", node) for alias in node.names]
    return [(_resolve(name), node) for name, node in found if name.startswith("app")]


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _edges(source_package: str) -> set[tuple[str, str]]:
    return {
        (module, target)
        for module, tree in MODULES.items()
        if _within(module, source_package)
        for target, _ in _imports(tree)
        if target and target != module
    }


def test_the_map_is_read():
    assert "app.services.dispatch" in MODULES and "app.web.hosts.routes" in MODULES
    assert ("app.api.jobs", "app.services.dispatch") in _edges("app.api")


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("app.services", (*DOORS, "app.live", "app.transaction", "app.authn", "app.access")),
        ("app.models", ("app.services", *DOORS)),
        ("app.web", ("app.api", "app.agent_api")),
        ("app.api", ("app.web", "app.agent_api")),
        ("app.agent_api", ("app.web", "app.api")),
        ("app.live", DOORS),
    ],
)
def test_no_arrow_points_back_up(package, forbidden):
    wrong = sorted(
        f"{module} imports {target}"
        for module, target in _edges(package)
        if any(_within(target, other) for other in forbidden)
    )
    assert wrong == []


def test_services_know_no_request():
    """Services take explicit arguments: no request, current_user or current_app."""
    wrong = []
    for module, tree in MODULES.items():
        if not _within(module, "app.services"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names]
                source = getattr(node, "module", None) or ""
                if source.startswith(("flask", "flask_login")) or any(
                    name.startswith("flask") for name in names
                ):
                    wrong.append(f"{module}: {ast.unparse(node)}")
    assert wrong == []


def test_services_import_graph_is_acyclic():
    graph: dict[str, set[str]] = {}
    for module, target in _edges("app.services"):
        if _within(target, "app.services") and target != "app.services":
            graph.setdefault(module, set()).add(target)
    state: dict[str, str] = {}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append(" → ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_no_imports_inside_functions_in_services_and_doors():
    """A function-level import is how a cycle hides; the factory (create_app) and the CLI's
    gunicorn check are the only places allowed one."""
    allowed = {"app", "app.cli"}
    wrong = []
    for module, tree in MODULES.items():
        if module in allowed:
            continue
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    wrong.append(f"{module}.{function.name}: {ast.unparse(node)}")
    assert wrong == []


def test_views_commit_only_through_the_transaction_helper():
    """Every door ends a unit of work with app.transaction.commit_and_wake (commit, then
    publish); services flush and never commit."""
    wrong = []
    for module, tree in MODULES.items():
        if not any(_within(module, package) for package in (*DOORS, "app.services")):
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("commit", "publish")
            ):
                wrong.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
    assert wrong == []

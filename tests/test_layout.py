"""The layout keeps its promises: no import cycles between modules, one exception base per
package with every exception drawn in its tree, modules of a readable size, and an explicit,
sorted ``__all__`` in every module and package."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"stream": "StreamError", "store": "StoreError", "models": "ModelError"}
#: Modules allowed past the size bound; each says why in its docstring ("one reader").
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__main__":
                continue  # running it is what it does
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules ``name`` imports when it is loaded (top level only: not inside functions, not
    under ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in known:
                    found.add(submodule)
                elif node.module in known:
                    found.add(node.module)
    found.discard(name)
    return found


def test_no_module_imports_itself_back_through_others() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_exception_of_a_package_derives_from_its_base_and_is_drawn_in_its_tree(package: str) -> None:
    errors = importlib.import_module(f"{package}.errors")
    base = getattr(errors, PACKAGES[package])
    tree = errors.__doc__ or ""
    root = importlib.import_module(package)
    defined = {}
    for info in pkgutil.walk_packages(root.__path__, f"{package}."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and not name.startswith("_")
            ):
                defined[name] = value
    assert PACKAGES[package] in defined
    for name, cls in sorted(defined.items()):
        assert issubclass(cls, base), f"{cls.__module__}.{name} does not derive from {base.__name__}"
        assert re.search(rf"(^|── ){name}\b", tree, re.MULTILINE), f"{name} is not drawn in {package}.errors"


@pytest.mark.parametrize("name", sorted(_modules()))
def test_modules_stay_readable_in_size(name: str) -> None:
    path = _modules()[name]
    lines = len(path.read_text().splitlines())
    if lines > MAX_LINES:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert "one reader" in doc, f"{name} has {lines} lines: split it, or say in its docstring why not"


@pytest.mark.parametrize("name", sorted(_modules()))
def test_every_module_declares_a_sorted_all(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list), f"{name} has no __all__ list"
    assert exported == sorted(exported, key=lambda n: (not n.isupper(), not n[:1].isupper(), n))
    for item in exported:
        assert hasattr(module, item), f"{name}.__all__ names {item}, which it lacks"

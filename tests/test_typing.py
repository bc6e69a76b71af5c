"""What a type checker sees of ``hftdb``: the package root imports the manager and what it hands out lazily (PEP 562
``__getattr__``, so that ``import hftdb.models`` does not load asyncpg), and names each of them again under
``if TYPE_CHECKING:`` so that mypy and the IDEs see the real classes instead of ``__getattr__``'s ``Any``. These tests
keep the three lists (``__all__``, ``_LAZY``, the TYPE_CHECKING imports) from drifting, and check that the
``py.typed`` marker, without which an installed hftdb is untyped to its users' checkers, ships in the wheel.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import hftdb

ROOT = Path(__file__).resolve().parent.parent
INIT = ROOT / "hftdb" / "__init__.py"


def _imports(body: list[ast.stmt]) -> dict[str, str]:
    """Name -> the absolute module it is imported from, for the ``from .x import name`` statements of ``body``."""
    return {alias.asname or alias.name: "hftdb." + node.module
            for node in body if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
            for alias in node.names}


def _type_checking_imports(tree: ast.Module) -> dict[str, str]:
    blocks = [node for node in tree.body if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
              and node.test.id == "TYPE_CHECKING"]
    assert len(blocks) == 1
    return _imports(blocks[0].body)


def _lazy(tree: ast.Module) -> dict[str, str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["_LAZY"]:
            return ast.literal_eval(node.value)
    raise AssertionError("no _LAZY table in hftdb/__init__.py")


def test_the_type_checker_sees_each_lazy_name_from_the_module_that_serves_it() -> None:
    tree = ast.parse(INIT.read_text())
    assert _type_checking_imports(tree) == _lazy(tree)
    for name, module in _lazy(tree).items():
        assert getattr(hftdb, name).__module__ == module, name


def test_all_is_the_eager_names_and_the_lazy_ones() -> None:
    tree = ast.parse(INIT.read_text())
    eager = {name for name, module in _imports(tree.body).items() if module != "hftdb.version"}
    assert sorted(hftdb.__all__) == sorted(eager | set(_lazy(tree)))


def test_the_scan_sees_a_lazy_name_the_type_checker_does_not() -> None:
    tree = ast.parse(INIT.read_text().replace('    "FeedSink": "hftdb.manager",\n', "", 1))
    assert _type_checking_imports(tree) != _lazy(tree)


def test_the_py_typed_marker_ships() -> None:
    assert (ROOT / "hftdb" / "py.typed").is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["hftdb"]

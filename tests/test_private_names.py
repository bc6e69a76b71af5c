"""No module imports a private name (one with a leading underscore) from another hftdb module, and none reads
another object's private attribute: what one module needs of another is public, so the owner can change the rest.

The one exception is the C extensions, which only :mod:`hftdb.wire.loader` imports, from :mod:`hftdb.wire._native`
(that is a private *module*, which the import contracts guard). ``__future__`` and dunder names are not private.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hftdb"
# Importer module -> the private module it alone may import names from.
ALLOWED_MODULES = {"hftdb.wire.loader": "hftdb.wire._native"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _sources(*folders: Path) -> list[tuple[str, Path, ast.Module]]:
    return [(_module_name(p), p, ast.parse(p.read_text(), str(p)))
            for folder in folders or (PACKAGE,) for p in sorted(folder.rglob("*.py"))]


def private_imports(sources: list[tuple[str, Path, ast.Module]]) -> list[str]:
    """``from hftdb.x import _name`` (absolute or relative, at any depth, TYPE_CHECKING included) in another module
    than ``x``; also ``from hftdb.x import _sub`` where ``_sub`` is a private module, unless allowed."""
    found = []
    for module, path, tree in sources:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (target == "hftdb" or target.startswith("hftdb.")) or target == module:
                continue
            for alias in node.names:
                if _private(alias.name) and ALLOWED_MODULES.get(module) != target:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {alias.name} from {target}")
    return found


# namedtuple's public methods carry an underscore only to stay clear of field names.
NAMEDTUPLE = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}


def _own_private_attributes(tree: ast.Module) -> set[str]:
    """The private attributes a module's own classes define: ``self._x = ...``, ``def _x``, ``_x = ...`` in a
    class body, ``__slots__`` entries. A helper in the owner's file may use them (STYLE.md: a helper that needs
    its owner's private state stays in its owner's file)."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name) \
                and node.value.id == "self":
            own.add(node.attr)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    own.add(item.name)
                targets = item.targets if isinstance(item, ast.Assign) else [item.target] \
                    if isinstance(item, ast.AnnAssign) else []
                for t in targets:
                    if isinstance(t, ast.Name):
                        own.add(t.id)
                        if t.id == "__slots__" and isinstance(item.value, (ast.Tuple, ast.List)):
                            own.update(e.value for e in item.value.elts if isinstance(e, ast.Constant))
    return {name for name in own if _private(name)}


def private_attribute_reads(sources: list[tuple[str, Path, ast.Module]]) -> list[str]:
    """``obj._name`` where ``obj`` is not ``self``/``cls``/``super()`` and ``_name`` is not defined by a class
    of the same module: one module reading the private state of another module's objects (or of a third
    party's)."""
    found = []
    for _, path, tree in sources:
        own = _own_private_attributes(tree) | NAMEDTUPLE
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("getattr", "hasattr", "setattr", "delattr") and len(node.args) >= 2 \
                    and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
                # getattr(obj, "_name"): the same read, spelled so an attribute scan misses it.
                attr, owner = node.args[1].value, node.args[0]
            elif isinstance(node, ast.Attribute):
                attr, owner = node.attr, node.value
            else:
                continue
            if not _private(attr) or attr in own:
                continue
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                continue
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_imports_a_private_name_from_another() -> None:
    assert private_imports(_sources()) == []


# Tests and benchmarks use hftdb through its public names too, so its private ones stay free to change.
# "path: name from module" -> why that import cannot be avoided (none so far: the C extensions are reached
# through hftdb.wire.loader).
ALLOWED_IN_TESTS: dict[str, str] = {}


def test_no_test_or_benchmark_imports_a_private_name_from_hftdb() -> None:
    found = private_imports(_sources(ROOT / "tests", ROOT / "benchmarks"))
    assert [f for f in found if f.split(":", 1)[0] + ": " + f.split(": ", 1)[1] not in ALLOWED_IN_TESTS] == []


def test_the_scan_sees_a_planted_private_import() -> None:
    # The scan itself can fail: a relative and an absolute import of a private name are both caught.
    tree = ast.parse("from ..store.writer import _seal\nfrom hftdb.wire.copy import _x\nfrom .rules import ok\n")
    found = private_imports([("hftdb.read.reads", PACKAGE / "read" / "reads.py", tree)])
    assert [f.split(": ", 1)[1] for f in found] == ["_seal from hftdb.store.writer", "_x from hftdb.wire.copy"]
    allowed = ast.parse("from ._native import _vector_fast\n")
    assert private_imports([("hftdb.wire.loader", PACKAGE / "wire" / "loader.py", allowed)]) == []
    in_test = ast.parse("from hftdb.ops.replay import _pieces, ingest_file\nfrom hftdb.wire import _native\n")
    found = private_imports([("tests.test_x", ROOT / "tests" / "test_x.py", in_test)])
    assert [f.split(": ", 1)[1] for f in found] == ["_pieces from hftdb.ops.replay", "_native from hftdb.wire"]


# A third party's private attribute, where it offers no public way: pgserver keeps the postmaster it started and
# has no method to point it at the one a restart started (hftdb.db.server._refresh_handle); asyncpg has no public
# handle on a connection's socket, whose send buffer a commit's COPY widens (hftdb.store.commit._widen_send_buffer).
THIRD_PARTY = {"hftdb/db/server.py: self._handle._postmaster_info",
               "hftdb/store/commit.py: getattr(conn, '_transport', None)"}


def test_no_module_reads_the_private_state_of_another_modules_objects() -> None:
    found = [f for f in private_attribute_reads(_sources()) if f.split(":", 1)[0] + ":" + f.split(":", 2)[2]
             not in THIRD_PARTY]
    assert found == []


def test_the_scan_sees_a_planted_private_attribute_read() -> None:
    tree = ast.parse(
        "class Reader:\n"
        "    def __init__(self, writer):\n"
        "        self._own = 1\n"
        "        self.n = writer._max_rows + self._own + other._own + super()._x\n"
        "        self.m = getattr(writer, '_seal', None), getattr(self, '_own'), getattr(writer, 'public')\n"
    )
    found = private_attribute_reads([("hftdb.read.reads", PACKAGE / "read" / "reads.py", tree)])
    assert sorted(f.split(": ", 1)[1] for f in found) == ["getattr(writer, '_seal', None)", "writer._max_rows"]

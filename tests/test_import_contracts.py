"""The import rule is enforced: pyproject.toml's import-linter contracts hold on the package, and one new bad
import (into the database layer from a feed, of a C extension, of an I/O module from the wire layer, up a layer,
or closing a loop) makes ``lint-imports`` (run by ``./test``, so by CI) fail.

The check runs against a copy of the package's sources with one line added, so it proves the contracts catch a
real violation, not that they happen to pass today.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter not installed (the test extra)")


def _copy(tmp_path: Path) -> Path:
    dest = tmp_path / "src"
    shutil.copytree(ROOT / "hftdb", dest / "hftdb", ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    # lint-imports puts its working directory first on sys.path: the copy's hftdb is the one analysed.
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=100)


def _add_line(path: Path, line: str) -> None:
    text = path.read_text()
    head, sep, rest = text.partition("from __future__ import annotations\n")
    assert sep, path
    path.write_text(head + sep + line + "\n" + rest)


def test_contracts_hold_on_the_package(tmp_path: Path) -> None:
    out = _lint(_copy(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("exchanges/intake.py", "from ..store.writer import BatchWriter", "never import the database layer"),
    ("exchanges/session.py", "import hftdb.store.commit", "never import the database layer"),
    ("exchanges/intake.py", "from ..store.packed import add_packed", "never import the database layer"),
    ("exchanges/runner.py", "from ..read import notify", "never import the database layer"),
    ("exchanges/parsing.py", "from ..db import dberrors", "never import the database layer"),
    ("exchanges/connection.py", "import asyncpg", "never import the database layer"),
    ("store/vector.py", "from ..wire._native import _vector_fast", "Only the wire layer's loader imports"),
    ("wire/rules.py", "import asyncio", "The wire layer does no I/O"),
    ("wire/books.py", "from ..exchanges import parsing", "Layers"),
    ("models.py", "from .wire import rules", "Layers"),
    ("errors.py", "from . import config", "Layers"),
    ("manager.py", "from .service import daemon", "Layers"),
    ("service/daemon.py", "from ..ops import cli", "Layers"),
    ("db/partitions.py", "from ..store import writer", "Layers"),
    ("read/reads.py", "from ..store import tables", "Layers"),
    ("store/writer.py", "from ..read import notify", "Layers"),
    ("store/tables.py", "from ..exchanges import parsing", "Layers"),
    ("exchanges/parsing.py", "from . import intake", "No new import loops"),
    ("store/spool.py", "from . import writer", "No new import loops"),
    ("db/locks.py", "from . import schema", "No new import loops"),
])
def test_a_new_violation_fails_the_check(tmp_path: Path, module: str, line: str, contract: str) -> None:
    src = _copy(tmp_path)
    _add_line(src / "hftdb" / module, line)
    out = _lint(src)
    assert out.returncode != 0
    assert contract in out.stdout
    assert "BROKEN" in out.stdout


def test_only_the_loader_names_a_c_extension():
    # The protected contract sees ``from hftdb.wire._native import x`` and ``import hftdb.wire._native.x`` but
    # not ``from hftdb.wire._native.x import f`` (grimp finds no module file for an extension): this closes it.
    native = {"_binance_fast", "_vector_fast", "_columnar_fast"}
    offenders = []
    for path in sorted((ROOT / "hftdb").rglob("*.py")):
        if path == ROOT / "hftdb" / "wire" / "loader.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            if any(part in native for name in names for part in name.split(".")):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize("module", [
    "hftdb", "hftdb.models", "hftdb.wire", "hftdb.wire.books", "hftdb.exchanges.parse_binance",
])
def test_the_bottom_layers_load_without_the_database_client(module: str) -> None:
    # The package root imports its front lazily (PEP 562): a fresh interpreter that imports the records, the wire
    # formats or a feed's parser has not loaded asyncpg, the write path, the read path or the manager.
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m == 'asyncpg' or m.startswith(" \
           "('hftdb.store', 'hftdb.read', 'hftdb.db', 'hftdb.manager'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_root_still_gives_the_lazy_names() -> None:
    code = "import sys, hftdb; m = hftdb.DatabaseManager; print(m.__module__, 'asyncpg' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.stdout.split() == ["hftdb.manager", "True"], out.stderr

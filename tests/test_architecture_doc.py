"""docs/ARCHITECTURE.md against the tree: its module map names every module under hftdb/ and nothing that is not
there, and its import rule is pyproject.toml's import-linter layers contract.

A module added, renamed or removed without the doc fails here, naming it (issue 13: a newcomer reads the doc, not
the tree).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hftdb"
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text()

_TICKED = re.compile(r"`([^`\s]+)`")


def _section(title: str) -> str:
    """The text of the ``## title`` section."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC, re.MULTILINE | re.DOTALL)
    assert m, f"docs/ARCHITECTURE.md has no section {title!r}"
    return m.group(1)


def _modules_table() -> list[tuple[str, str]]:
    """The module map's rows: (first cell, whole row)."""
    rows = [line for line in _section("Modules").splitlines() if line.startswith("| `")]
    assert len(rows) > 20, "the module map's rows were not found"
    return [(line.split(" | ", 1)[0], line) for line in rows]


def _tree_files() -> set[str]:
    """Every module and C file under hftdb/, as a path relative to it (package __init__ files and migrations aside:
    the table names the package, and db/migrations/ as one)."""
    out = set()
    for path in PACKAGE.rglob("*"):
        rel = path.relative_to(PACKAGE).as_posix()
        if path.suffix not in (".py", ".c") or path.name == "__init__.py" or rel.startswith("db/migrations/"):
            continue
        out.add(rel)
    return out


def _documented() -> tuple[set[str], set[str]]:
    """The module paths (relative to hftdb/) the map names, and the repository-root files it names."""
    modules: set[str] = set()
    root_files: set[str] = set()
    for first, row in _modules_table():
        cells = _TICKED.findall(first)
        packages = [c for c in cells if c.endswith("/")]
        for cell in cells:
            if cell.endswith("/") or "*" in cell:
                continue
            if "(repository root)" in first or cell == "setup.py":
                root_files.add(cell)
            else:
                modules.add(cell)
        # A subpackage's row names its modules by file name (`stream.py`), or under a subfolder (`_template/`
        # with its `adapter.py`); the wire/_native row names its C files.
        for package in packages:
            sub = ""
            for name in _TICKED.findall(row.split(" | ", 1)[1]):
                if name.endswith("/") and "/" not in name[:-1]:
                    sub = name
                elif re.fullmatch(r"[A-Za-z0-9_]+\.(py|c)", name):
                    candidate = package + sub + name
                    if sub and not (PACKAGE / candidate).exists():
                        candidate = package + name
                    if not (PACKAGE / candidate).exists() and (PACKAGE / name).exists():
                        continue  # a reference to a module of the shared base (`venues.py`), named in its own row
                    modules.add(candidate)
        if any(c.endswith("*_fast.c") for c in cells):
            for name in _TICKED.findall(row):
                if re.fullmatch(r"_[a-z]+_fast\.c", name):
                    modules.add("wire/_native/" + name)
    return modules, root_files


def test_the_module_map_names_every_module_and_only_modules_that_exist():
    documented, root_files = _documented()
    tree = _tree_files()
    assert sorted(tree - documented) == [], "modules under hftdb/ that docs/ARCHITECTURE.md's map does not name"
    assert sorted(documented - tree) == [], "modules docs/ARCHITECTURE.md's map names that do not exist"
    assert root_files and all((ROOT / f).is_file() for f in root_files), root_files
    # the check sees a module the map does not name
    assert "store/writer.py" in documented and "exchanges/_template/adapter.py" in documented


def test_every_module_path_the_doc_names_exists():
    # Paths written out anywhere in the doc (the path of a quote, the lists of files to touch): under hftdb/ or
    # the repository root. Placeholders (<exchange>, NNNN, *) are not paths.
    named = set(re.findall(r"(?<![\w./<*-])((?:[a-z_]+/)+[A-Za-z0-9_]+\.(?:py|c|pyi|h|sql|md|toml|json))\b", DOC))
    assert len(named) > 30
    missing = sorted(p for p in named if not (PACKAGE / p).exists() and not (ROOT / p).exists())
    assert missing == [], missing


def _contract_layers() -> list[set[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    return [{name.strip().removeprefix("hftdb.") for name in re.split(r"[|:]", layer)} for layer in layers]


def _doc_layers() -> list[tuple[set[str], list[str]]]:
    """The import rule's block: per line, the layer's subpackages or modules and the names it lists."""
    m = re.search(r"\*\*The import rule\.\*\*.*?```\n(.*?)```", DOC, re.DOTALL)
    assert m, "the import rule's block was not found"
    out: list[tuple[set[str], list[str]]] = []
    for line in m.group(1).splitlines():
        if line.startswith("hftdb/"):
            parts = {"*"} if line.startswith("hftdb/*") else set(re.findall(r"hftdb/(\w+)(?:/|\.py)", line))
            out.append((parts, [line]))
        elif out:
            out[-1][1].append(line)
    return out


def test_the_import_rule_is_the_layers_contract():
    contract = _contract_layers()
    doc = _doc_layers()
    packages = [parts for parts, _ in doc if "*" not in parts]
    # Top to bottom: ops, service, the manager, store | read | exchanges | simulator, db, wire.
    assert packages == contract[:len(packages)], (packages, contract)
    # The last line is the shared base: the contract's remaining layers, named in the same order.
    ((_, base_lines),) = [(p, lines) for p, lines in doc if "*" in p]
    # "config, tablespec, venues, rejects (...) above errors, above redact | models | version (...)"
    text = re.sub(r"\([^)]*\)", "", " ".join(base_lines).split(":", 1)[1])
    listed = [set(re.findall(r"\b([a-z]+)\b", group)) for group in text.split(" above ")]
    assert listed == contract[len(packages):], (listed, contract[len(packages):])
    # Each subpackage line that lists its modules lists all of them.
    for parts, lines in doc:
        text = " ".join(lines)
        if len(parts) != 1 or "*" in parts or ":" not in text:
            continue
        (package,) = parts
        listed = set(re.findall(r"\b([a-z_]+)\b", text.split(":", 1)[1]))
        tree = {p.stem for p in (PACKAGE / package).glob("*.py") if p.name != "__init__.py"}
        assert tree <= listed, (package, sorted(tree - listed))

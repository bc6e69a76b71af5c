"""Backup and restore with PostgreSQL's own tools, ``pg_dump`` and ``pg_restore``, in their custom format.

The tools come from the embedded server's installation (:func:`hftdb.db.server.bin_dir`) when hftdb runs on the
embedded database, so their version matches its server; with a DSN, from ``PATH`` when installed there (a server
newer than the embedded binaries needs its own), else the embedded ones. The password never appears on a command
line (where ``ps`` shows it): it is taken out of the DSN and passed in ``PGPASSWORD``.

Progress is reported per table as the tools print it with ``--verbose``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ..config import redact_dsn
from ..errors import DatabaseError, ValidationError
from ..db.server import bin_dir

__all__ = ["tool_path", "libpq_args", "backup", "restore", "list_tables", "check_backup_file"]

#: ``progress(done, total, what)`` after each table
Progress = Callable[[int, int, str], None]

_DUMPING = re.compile(r'dumping contents of table "(?P<table>[^"]+)"')
_RESTORING = re.compile(r'processing data for table "(?P<table>[^"]+)"')
_TABLE_DATA = re.compile(r"^\d+; \d+ \d+ TABLE DATA ", re.MULTILINE)
#: the lines that explain an error: ``pg_dump: detail: ...``, ``pg_dump: hint: ...`` (or the server's DETAIL:/HINT:)
_EXPLAINS = re.compile(r"^(\S+: )?(detail|hint):", re.IGNORECASE)


def tool_path(name: str, *, embedded: bool) -> str:
    """The ``pg_dump``/``pg_restore`` to run: the embedded server's for the embedded database, else the one on
    ``PATH``, else the embedded one."""
    if not embedded:
        found = shutil.which(name)
        if found:
            return found
    path = bin_dir() / name
    if not path.exists():
        raise DatabaseError(f"{name} not found in {path.parent} nor on PATH")
    return str(path)


def libpq_args(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN without its password (in the userinfo or the query string), and the environment that carries the
    password (``PGPASSWORD``): a command line is readable by every local user (``ps``), the environment is not."""
    parts = urlsplit(dsn)
    env = dict(os.environ)
    if parts.password is not None:
        env["PGPASSWORD"] = unquote(parts.password)
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{user}@{host}" if user else host)
    query = parse_qsl(parts.query, keep_blank_values=True)
    passwords = [v for k, v in query if k == "password"]
    if passwords:
        env["PGPASSWORD"] = passwords[-1]
        parts = parts._replace(query=urlencode([(k, v) for k, v in query if k != "password"]))
    return urlunsplit(parts), env


async def _run(cmd: list[str], env: dict[str, str], pattern: re.Pattern[str], total: int,
               progress: Progress | None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    done = 0
    errors: list[str] = []  # each error with the lines that explain it
    try:
        async for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            m = pattern.search(line)
            if m:
                done += 1
                if progress is not None:
                    progress(done, max(total, done), m.group("table"))
            elif "error" in line.lower() or "fatal" in line.lower():
                errors.append(line)
            elif errors and (_EXPLAINS.match(line) or line[:1].isspace()) and line.strip():
                # The detail or hint after an error (the server's version against the tool's, the query that
                # failed), or libpq's indented continuation of it: without it the error does not say why.
                errors[-1] += "; " + line.strip()
        code = await proc.wait()
    except BaseException:
        # Interrupted: do not leave the tool running behind us (its partial output is the caller's to remove).
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if code != 0:
        detail = redact_dsn("; ".join(errors[-3:])) or f"exit status {code}"
        raise DatabaseError(f"{Path(cmd[0]).name} failed: {detail}")
    return "\n".join(errors)


async def backup(dsn: str, path: str | os.PathLike[str], *, embedded: bool, tables: int = 0,
                 progress: Progress | None = None) -> Path:
    """Dump the database at ``dsn`` to ``path`` (custom format, compressed); return the path.

    Written to a temporary name and renamed when complete, so ``path`` never holds half a dump. ``tables`` (how
    many tables hold data) only scales the progress report.
    """
    target = Path(path)
    if target.is_dir():
        raise ValidationError(f"{target} is a directory; give the backup file's name")
    if not target.parent.is_dir():
        raise ValidationError(f"directory {target.parent} does not exist")
    tmp = target.with_name(f".{target.name}.partial")
    conn, env = libpq_args(dsn)
    cmd = [tool_path("pg_dump", embedded=embedded), "--format=custom", "--verbose", f"--file={tmp}", f"--dbname={conn}"]
    try:
        await _run(cmd, env, _DUMPING, tables, progress)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def check_backup_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path when it is a regular file; a ValidationError saying what it is otherwise."""
    p = Path(path)
    if p.is_dir():
        raise ValidationError(f"{p} is a directory, not a backup file: name the file `hftdb backup` wrote")
    if not p.exists():
        raise ValidationError(f"no such backup file: {p}")
    if not p.is_file():
        raise ValidationError(f"{p} is not a regular file: a backup is the file `hftdb backup` wrote")
    return p


async def list_tables(path: str | os.PathLike[str], *, embedded: bool) -> int:
    """How many tables' data the dump at ``path`` holds; :class:`ValidationError` when it is not a dump."""
    p = check_backup_file(path)
    proc = await asyncio.create_subprocess_exec(
        tool_path("pg_restore", embedded=embedded), "--list", str(p),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise ValidationError(f"{p} is not a backup pg_restore can read: {err.decode('utf-8', 'replace').strip()}")
    return len(_TABLE_DATA.findall(out.decode("utf-8", "replace")))


async def restore(dsn: str, path: str | os.PathLike[str], *, embedded: bool, clean: bool = False,
                  progress: Progress | None = None) -> int:
    """Restore the dump at ``path`` into the database at ``dsn`` in one transaction; return the tables restored.

    Objects are created without their original owner and privileges (the roles may not exist here). ``clean``
    drops the objects the dump holds first. Any error rolls the whole restore back.
    """
    total = await list_tables(path, embedded=embedded)
    conn, env = libpq_args(dsn)
    cmd = [tool_path("pg_restore", embedded=embedded), "--verbose", "--exit-on-error", "--single-transaction",
           "--no-owner", "--no-privileges", f"--dbname={conn}"]
    if clean:
        cmd += ["--clean", "--if-exists"]
    cmd.append(str(path))
    await _run(cmd, env, _RESTORING, total, progress)
    return total

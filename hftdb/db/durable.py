"""Files that survive a power cut: written under a temporary name, fsynced, renamed into place, and the rename
fsynced with its directory. The spool (sealed batches while the database is away) and the Parquet archive's
manifests both rely on it: a reader finds either the whole file or none. No hftdb imports."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir", "write_atomic"]


def write_atomic(path: Path, data: bytes, *, tmp: Path) -> None:
    """Write ``data`` to ``tmp``, fsync it, rename it to ``path`` and fsync the directory. An ``OSError`` may
    leave ``tmp`` behind; the caller decides whether to remove it."""
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` (a rename into it, a file removed from it) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

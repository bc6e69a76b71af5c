"""The on-disk spool: sealed batches that could not be committed wait here, in order, across restarts.

One file per batch, written to a temporary name, fsynced, then renamed, so a crash leaves either the whole batch
or nothing; the writer counts a batch as spooled only once its file and directory are fsynced. Names start with a
zero-padded sequence number, so replay order is the order of spilling, which the writer keeps equal to the order
its rows were accepted (oldest first). A spooled batch keeps its batch id: if it had in fact been committed before
the crash, the ledger catches the replay.

One writer owns a directory at a time: :meth:`Spool.open` takes an exclusive ``flock`` on its ``.lock`` file, held
until :meth:`Spool.close` or the process's end (the kernel drops it, even after SIGKILL). Two writers on one
directory (two processes started with the same ``spool_dir``) would each replay, commit and delete the other's
batches; the second one is refused with a :class:`~hftdb.errors.ConfigError` instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

import msgspec

from ..db.durable import write_atomic
from ..errors import ConfigError

__all__ = ["Spool", "SpooledBatch"]

logger = logging.getLogger(__name__)


class SpooledBatch(msgspec.Struct, array_like=True):
    """A sealed batch as stored on disk: its ledger identity, its latest-row arguments and its COPY payload."""

    table: str
    batch_id: bytes
    rows: int
    min_ts: int
    max_ts: int
    latest: list
    payload: bytes
    parts: list[int] = []


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SpooledBatch)


class Spool:
    """A directory of spooled batches for one table, bounded by ``max_bytes``."""

    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes!r}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.bytes_used = 0
        self._seq = 0
        self._opened = False
        self._lock: int | None = None

    def open(self) -> list[Path]:
        """Create the directory if needed, take it for this writer (``ConfigError`` if another writer has it), drop
        half-written files, and return the spooled batches in order."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # A path under a file, or one this process may not write: the setting is wrong, not the disk.
            raise ConfigError(f"[writer] spool_dir {self.directory}: cannot create it: "
                              f"{exc.strerror or type(exc).__name__}") from None
        self._take()
        for tmp in self.directory.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        files = sorted(self.directory.glob("*.spool"))
        self.bytes_used = sum(f.stat().st_size for f in files)
        if files:
            self._seq = int(files[-1].name.split("-", 1)[0])
            logger.warning("%d spooled batch(es) (%d bytes) found in %s: they will be replayed first",
                           len(files), self.bytes_used, self.directory)
        self._opened = True
        return files

    def _take(self) -> None:
        if self._lock is not None:
            return
        try:
            fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"[writer] spool_dir {self.directory}: cannot write in it: "
                              f"{exc.strerror or type(exc).__name__}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(
                f"[writer] spool_dir {self.directory}: in use by another writer ({holder}); two processes must not "
                "share a spool (each would replay the other's batches): give this one a spool_dir of its own "
                "(DatabaseManager(spool_dir=...), [writer] spool_dir or HFTDB_WRITER_SPOOL_DIR), or none if it "
                'only reads, as a strategy beside the daemon does (DatabaseManager(spool_dir=""))'
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()}\n".encode())
        self._lock = fd

    def close(self) -> None:
        """Give the directory up (another writer may take it now). Idempotent; spooled batches stay."""
        fd, self._lock = self._lock, None
        if fd is not None:
            os.close(fd)  # (closing the descriptor drops its flock)

    def has_room(self, size: int) -> bool:
        """Whether a batch of ``size`` payload bytes fits under ``max_bytes``."""
        return self.bytes_used + size <= self.max_bytes

    def write(self, batch: SpooledBatch) -> Path:
        """Store ``batch`` durably and return its path; on ``OSError`` (disk full, directory gone) nothing of it is
        left behind and the error is raised."""
        if not self._opened:
            self.open()
        self._seq += 1
        path = self.directory / f"{self._seq:020d}-{batch.batch_id.hex()}.spool"
        tmp = path.with_suffix(".tmp")
        data = _encoder.encode(batch)
        try:
            write_atomic(path, data, tmp=tmp)
        except OSError:
            # Not durable, so not spooled: the caller keeps the batch. A file left here would replay it a second
            # time, out of order (the ledger would skip it, but it would hold spool room until then).
            for leftover in (tmp, path):
                with contextlib.suppress(OSError):
                    leftover.unlink(missing_ok=True)
            raise
        self.bytes_used += len(data)
        return path

    def read(self, path: Path) -> SpooledBatch:
        """Load a spooled batch."""
        return _decoder.decode(path.read_bytes())

    def remove(self, path: Path) -> None:
        """Delete a batch once it is committed."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        path.unlink(missing_ok=True)
        self.bytes_used = max(0, self.bytes_used - size)

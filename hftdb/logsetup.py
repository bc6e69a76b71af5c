"""Logging for the daemon and the CLI: one line per event, as text or as JSON, with secrets redacted.

The JSON form is one object per line: ``ts`` (UTC, ISO 8601 with microseconds), ``level``, ``logger``, ``msg``,
any ``extra={...}`` fields the call passed (the status lines pass their counters this way), and ``exc`` with
the traceback when there is one::

    {"ts": "2026-11-22T16:53:46.123456Z", "level": "INFO", "logger": "hftdb.status", "msg": "...", "feed": "okx_spot"}

Every record goes through :class:`RedactingFilter` first, so a DSN password that reaches a message (an asyncpg
error quoting its connection string, say) is printed as ``***``.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from .config import LoggingSettings, redact_dsn
from .errors import ConfigError

__all__ = ["JsonFormatter", "RedactingFilter", "configure_logging"]

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is worth emitting.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class RedactingFilter(logging.Filter):
    """Replaces DSN passwords in the formatted message (and its traceback) by ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; never drops it."""
        message = record.getMessage()
        clean = redact_dsn(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_text is None and record.exc_info[0] is not None:
            record.exc_text = redact_dsn(logging.Formatter().formatException(record.exc_info))
        return True


class _OneLine(logging.Filter):
    """Keeps asyncpg's pool warnings to one line: while the database is away it logs a full traceback every
    second, and the writers already log each failure with its cause."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and record.levelno < logging.ERROR:
            exc = record.exc_info[1]
            record.msg, record.args = f"{record.getMessage()} ({type(exc).__name__}: {exc})", None
            record.exc_info = None
            record.exc_text = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for its fields)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_text is None:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        return orjson.dumps(out, default=str).decode()


def configure_logging(settings: LoggingSettings, *, stream: Any = None) -> None:
    """Send hftdb's logs (and its libraries') to standard error, or to ``settings.file``, in ``settings.format``.

    Replaces the root logger's handlers, so calling it again reconfigures rather than duplicates. Raises
    :class:`~hftdb.errors.ConfigError` when the log file cannot be opened.
    """
    if settings.file:
        path = Path(settings.file).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler: logging.Handler = logging.FileHandler(path, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"[logging] file = {str(path)!r}: cannot open it for writing: {exc.strerror}") from None
    else:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    # Libraries that narrate routine events at INFO (each websocket connect and disconnect, pgserver's every
    # pg_ctl call with its output): their warnings still show; with level = "debug" everything does.
    quiet = logging.DEBUG if settings.level == "debug" else logging.WARNING
    for name in _CHATTY:
        logging.getLogger(name).setLevel(quiet)
    pool = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _OneLine) for f in pool.filters):
        pool.addFilter(_OneLine())


_CHATTY = ("aiohttp.access", "picows", "pgserver")

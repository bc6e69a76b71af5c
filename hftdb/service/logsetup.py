"""Logging for the daemon and the CLI: one line per event, as text or as JSON, with secrets redacted.

The JSON form is one object per line: ``ts`` (UTC, ISO 8601 with microseconds), ``level``, ``logger``, ``msg``,
any ``extra={...}`` fields the call passed (the status lines pass their counters this way), and ``exc`` with
the traceback when there is one::

    {"ts": "2026-11-22T16:53:46.123456Z", "level": "INFO", "logger": "hftdb.service.status", "msg": "...", "feed": "okx_spot"}

The error that stops the daemon goes through the same log (:func:`report_fatal`), so a JSON log holds it as
JSON and a log file holds it at all.

Every handler :func:`configure_logging` installs redacts twice, with :func:`hftdb.redact.redact`: its
:class:`RedactingFilter` cleans the record itself (message, arguments, traceback, stack, ``extra`` strings) before
any formatter or later handler sees it, and its formatter passes the finished line through once more (a secret
inside a non-string ``extra`` value, a JSON-escaped one). So a DSN password that reaches a message (an asyncpg
error quoting its connection string, say) or an API key an exchange echoes back is printed as ``***``.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from ..config import LoggingSettings
from ..errors import ConfigError
from ..redact import redact, register_environment

__all__ = ["JsonFormatter", "RedactingFilter", "RedactingFormatter", "configure_logging", "report_fatal"]

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is worth emitting.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class RedactingFilter(logging.Filter):
    """Replaces secrets in a record (message, traceback, stack, string ``extra`` fields) by ``***``, in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; never drops it."""
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the format: logging would print them raw in its complaint
            message = f"{record.msg!r} (arguments that do not fit: {record.args!r})"
            record.msg, record.args = message, None
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_text is None and record.exc_info[0] is not None:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


class RedactingFormatter(logging.Formatter):
    """Formats with ``inner`` and redacts the finished line: the last net under :class:`RedactingFilter`."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        """The record as ``inner`` formats it, secrets replaced by ``***``."""
        return redact(self.inner.format(record))


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
    register_environment()
    if settings.file:
        path = Path(settings.file).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler: logging.Handler = logging.FileHandler(path, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"[logging] file = {str(path)!r}: cannot open it for writing: {exc.strerror}") from None
    else:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    inner = JsonFormatter() if settings.format == "json" else logging.Formatter(_TEXT_FORMAT)
    handler.setFormatter(RedactingFormatter(inner))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    _Installed.handler, _Installed.to_file, _Installed.json = handler, bool(settings.file), settings.format == "json"
    # Libraries that narrate routine events at INFO (each websocket connect and disconnect, pgserver's every
    # pg_ctl call with its output): their warnings still show; with level = "debug" everything does.
    quiet = logging.DEBUG if settings.level == "debug" else logging.WARNING
    for name in _CHATTY:
        logging.getLogger(name).setLevel(quiet)
    pool = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _OneLine) for f in pool.filters):
        pool.addFilter(_OneLine())


_CHATTY = ("aiohttp.access", "picows", "pgserver")


class _Installed:
    """What :func:`configure_logging` installed last: :func:`report_fatal` needs to know where logs go."""

    handler: logging.Handler | None = None
    to_file = False
    json = False


def report_fatal(message: str) -> None:
    """Report the error that stops the daemon (``hftdb: <message>``), where the person and the log reader look.

    Through the log :func:`configure_logging` set up, at CRITICAL on the ``hftdb`` logger: one JSON object when
    the format is JSON, a line of the file when logs go to a file. On standard error as one plain line too, except
    where that would repeat it there: when the log itself is JSON on standard error (a non-JSON line would break
    the stream), or text on standard error (the plain line alone is the clearer one). Before logging is set up
    (a mistake in the configuration) only the plain line is printed. Redacted like every log line.
    """
    line = f"hftdb: {redact(message)}"
    handler = _Installed.handler
    if handler is None or handler not in logging.getLogger().handlers:
        print(line, file=sys.stderr, flush=True)
        return
    if _Installed.to_file or _Installed.json:
        logging.getLogger("hftdb").critical("%s", message)
        handler.flush()
    if _Installed.to_file or not _Installed.json:
        print(line, file=sys.stderr, flush=True)

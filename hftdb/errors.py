"""The hftdb error hierarchy.

Every error hftdb raises on purpose derives from one root, so callers can catch ``HftdbError`` and know it is
ours. Where the meaning matches a builtin, the builtin is mixed in::

    HftdbError
    ├── ConfigError (ValueError)          a bad config file, key, value or environment override
    ├── ValidationError (ValueError)      a bad argument to a public call
    │   ├── UnknownExchangeError (LookupError)
    │   └── UnknownSymbolError (LookupError)
    ├── StateError (RuntimeError)         a call at the wrong point of the lifecycle
    │   └── ClosedError                   use after close()
    ├── DatabaseError                     the database failed under us
    │   ├── DatabaseUnavailableError      cannot connect (after bounded retries)
    │   └── MigrationError                a migration failed, or an applied one was edited
    ├── BufferFullError                   a writer's buffer is full under the "raise" policy
    └── ExchangeError                     an exchange adapter failed (see hftdb.exchanges)
        ├── ExchangeHTTPError             a REST call answered with an error status
        ├── SignatureError                a signed request was refused
        └── FrameError (ValueError)       a websocket frame could not be parsed

Every message is passed through :func:`hftdb.redact.redact` when the error is built, so an error that quotes a
DSN or an exchange's answer (Bybit's ``error sign!`` echoes the API key) never carries a password or a key.
"""

from __future__ import annotations

from typing import Any

from .redact import redact

__all__ = [
    "HftdbError",
    "ConfigError",
    "ValidationError",
    "UnknownExchangeError",
    "UnknownSymbolError",
    "StateError",
    "ClosedError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "MigrationError",
    "BufferFullError",
    "ExchangeError",
    "ExchangeHTTPError",
    "SignatureError",
    "FrameError",
]


class HftdbError(Exception):
    """Root of every error hftdb raises on purpose. String arguments are redacted (see the module docstring)."""

    def __init__(self, *args: Any) -> None:
        if len(args) == 1 and isinstance(args[0], str):  # the usual case, without a generator's cost
            super().__init__(redact(args[0]))
        else:
            super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigError(HftdbError, ValueError):
    """A configuration file, key, value or environment override is wrong."""


class ValidationError(HftdbError, ValueError):
    """A public call was given a bad argument."""


class UnknownExchangeError(ValidationError, LookupError):
    """The named exchange is not registered."""


class UnknownSymbolError(ValidationError, LookupError):
    """The named symbol (or symbol id) is not registered."""


class StateError(HftdbError, RuntimeError):
    """A call was made at the wrong point of an object's lifecycle."""


class ClosedError(StateError):
    """The object was used after ``close()``."""


class DatabaseError(HftdbError):
    """The database failed in a way hftdb could not recover from by retrying."""


class DatabaseUnavailableError(DatabaseError):
    """The database could not be reached."""


class MigrationError(DatabaseError):
    """A migration failed, is missing, or an applied migration's file has changed."""


class BufferFullError(HftdbError):
    """A writer's buffer is full and its policy is ``raise``."""


class ExchangeError(HftdbError):
    """An exchange adapter failed."""


class ExchangeHTTPError(ExchangeError):
    """A REST call to an exchange answered with an error status."""

    def __init__(self, message: str, *, status: int, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        #: the answer's body, redacted like the message
        self.body = redact(body)


class SignatureError(ExchangeHTTPError):
    """The exchange refused a signed request."""


class FrameError(ExchangeError, ValueError):
    """A websocket frame could not be parsed."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

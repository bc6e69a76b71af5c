"""API credentials and the request signatures of each venue.

Signatures follow the venues' documentation exactly:

* Binance: ``signature`` = hex HMAC-SHA256(secret, the query string as sent, without the signature parameter);
  the key travels in the ``X-MBX-APIKEY`` header.
* Bybit v5: ``X-BAPI-SIGN`` = hex HMAC-SHA256(secret, timestamp + api_key + recv_window + query string) for GET
  (the JSON body instead of the query string for POST).
* OKX v5: ``OK-ACCESS-SIGN`` = base64 HMAC-SHA256(secret, timestamp + METHOD + request path with query + body),
  the timestamp in ISO 8601 with milliseconds (``2020-12-08T09:08:57.715Z``).

Credentials come from the environment (``BINANCE_API_KEY``, ``BINANCE_API_SECRET``; ``BYBIT_...``;
``OKX_API_KEY``, ``OKX_API_SECRET``, ``OKX_API_PASSPHRASE``; a venue-specific ``BINANCE_USDM_API_KEY`` wins over
the exchange-wide one) or from a TOML secrets file with one table per exchange or venue (``[okx]``,
``[binance_usdm]``). Not ``HFTDB_*`` variables: those are reserved for settings. Secrets never appear in a repr,
and building :class:`Credentials` registers the key, secret and passphrase with :mod:`hftdb.redact`, so an
exchange that echoes one back (Bybit's ``error sign!`` quotes the key) has it starred in errors and logs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import msgspec

from ..errors import ConfigError
from ..models import ExchangeName
from ..redact import register_secret

__all__ = [
    "Credentials",
    "binance_signature",
    "bybit_signature",
    "okx_signature",
    "okx_timestamp",
]


class Credentials(msgspec.Struct, frozen=True, kw_only=True):
    """An API key pair (and OKX's passphrase). ``repr`` shows none of them (not even a key's last characters: a
    piece of a key is a piece of a secret)."""

    api_key: str
    api_secret: str
    passphrase: str | None = None

    def __post_init__(self) -> None:
        for value in (self.api_key, self.api_secret, self.passphrase):
            register_secret(value)

    def __repr__(self) -> str:
        phrase = "None" if self.passphrase is None else "'***'"
        return f"Credentials(api_key='***', api_secret='***', passphrase={phrase})"

    __str__ = __repr__

    @classmethod
    def load(
        cls,
        venue: ExchangeName | str,
        *,
        environ: Mapping[str, str] | None = None,
        secrets_file: str | os.PathLike[str] | None = None,
    ) -> Credentials | None:
        """Credentials for ``venue``: environment variables first, then ``secrets_file``; None if neither has them.

        Raises :class:`~hftdb.errors.ConfigError` for a half-given pair or an unreadable secrets file (naming the
        variable or file, never a value).
        """
        venue = ExchangeName(venue)
        environ = os.environ if environ is None else environ
        names = (venue.value.upper(), _family(venue).upper())
        for prefix in names:
            key, secret = environ.get(f"{prefix}_API_KEY"), environ.get(f"{prefix}_API_SECRET")
            if key or secret:
                if not (key and secret):
                    raise ConfigError(f"{prefix}_API_KEY and {prefix}_API_SECRET must be set together")
                return cls(api_key=key, api_secret=secret, passphrase=environ.get(f"{prefix}_API_PASSPHRASE"))
        if secrets_file is None:
            return None
        path = Path(secrets_file)
        try:
            tables = msgspec.toml.decode(path.read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"secrets file not found: {path}") from None
        except msgspec.DecodeError as exc:
            # Only where: the parser's message may quote the line, which may hold a secret.
            where = _WHERE.search(str(exc))
            at = f" at line {where.group(1)}, column {where.group(2)}" if where else ""
            raise ConfigError(f"secrets file {path} is not valid TOML{at}") from None
        except OSError as exc:
            raise ConfigError(f"secrets file {path} cannot be read: {exc.strerror or type(exc).__name__}") from None
        _check_tables(path, tables)
        for table in (venue.value, _family(venue)):
            entry = tables.get(table)
            if isinstance(entry, dict) and ("api_key" in entry or "api_secret" in entry):
                try:
                    return msgspec.convert(entry, cls)
                except msgspec.ValidationError:
                    raise ConfigError(f"secrets file {path}: [{table}] needs api_key and api_secret strings") from None
        return None


def _family(venue: ExchangeName) -> str:
    return venue.value.split("_", 1)[0]


_WHERE = re.compile(r"line (\d+), column (\d+)")
_SECRET_KEYS = ("api_key", "api_secret", "passphrase")


def _check_tables(path: Path, tables: dict[str, object]) -> None:
    # A misspelt table or key would otherwise leave a venue without its keys, found only at the first signed call.
    names = sorted({v.value for v in ExchangeName} | {_family(v) for v in ExchangeName})
    for table, entry in tables.items():
        if table not in names:
            raise ConfigError(f"secrets file {path}: unknown table [{table}] (tables: {', '.join(names)})")
        if not isinstance(entry, dict):
            raise ConfigError(f"secrets file {path}: {table} must be a table ([{table}]) with api_key and api_secret")
        for key in entry:
            if key not in _SECRET_KEYS:
                raise ConfigError(f"secrets file {path}: [{table}] has no key {key!r} (keys: {', '.join(_SECRET_KEYS)})")


def _hmac(secret: str, message: str) -> hmac.HMAC:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256)


def binance_signature(secret: str, query: str) -> str:
    """Binance's ``signature``: hex HMAC-SHA256 of the query string (``symbol=...&timestamp=...``)."""
    return _hmac(secret, query).hexdigest()


def bybit_signature(secret: str, timestamp_ms: int | str, api_key: str, recv_window: int | str, payload: str) -> str:
    """Bybit v5's ``X-BAPI-SIGN``: hex HMAC-SHA256 of timestamp + key + recv window + query string (or body)."""
    return _hmac(secret, f"{timestamp_ms}{api_key}{recv_window}{payload}").hexdigest()


def okx_signature(secret: str, timestamp: str, method: str, request_path: str, body: str = "") -> str:
    """OKX v5's ``OK-ACCESS-SIGN``: base64 HMAC-SHA256 of timestamp + METHOD + path (with query) + body."""
    return base64.b64encode(_hmac(secret, f"{timestamp}{method.upper()}{request_path}{body}").digest()).decode()


def okx_timestamp(seconds: float) -> str:
    """``seconds`` since the epoch as OKX wants it: ISO 8601, UTC, milliseconds, ``Z``."""
    ms = int(seconds * 1000)
    dt = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"

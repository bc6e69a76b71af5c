"""Configuration: frozen, keyword-only structs loaded from TOML, with ``HFTDB_*`` environment overrides.

The file layout mirrors the structs: ``[database]``, ``[writer]``, ``[cache]``, ``[storage]``... Every key can be
overridden by ``HFTDB_<SECTION>_<KEY>`` (``HFTDB_WRITER_BATCH_MAX_ROWS=5000``); ``HFTDB_DSN`` is short for
``HFTDB_DATABASE_DSN``. Overrides are applied in one place, :func:`apply_env`, and validated exactly like the
file, so a bad override names its variable and what was expected.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import msgspec
from msgspec import Meta

from .errors import ConfigError

__all__ = [
    "DatabaseSettings",
    "WriterSettings",
    "CacheSettings",
    "StorageSettings",
    "Settings",
    "load_settings",
    "apply_env",
    "redact_dsn",
]

PosInt = Annotated[int, Meta(gt=0)]
NonNegInt = Annotated[int, Meta(ge=0)]
PosFloat = Annotated[float, Meta(gt=0)]
NonNegFloat = Annotated[float, Meta(ge=0)]

_DSN_PASSWORD = re.compile(r"(://[^:/@]*:)([^@]*)(@)")
_DSN_KV_PASSWORD = re.compile(r"(password\s*=\s*)(\S+)", re.IGNORECASE)


def redact_dsn(dsn: str | None) -> str | None:
    """Return ``dsn`` with any password replaced by ``***``: safe for logs, errors and reprs."""
    if dsn is None:
        return None
    dsn = _DSN_PASSWORD.sub(r"\1***\3", dsn)
    return _DSN_KV_PASSWORD.sub(r"\1***", dsn)


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class DatabaseSettings(_Section):
    """Where the data goes. With no ``dsn`` hftdb starts an embedded PostgreSQL in ``data_dir``."""

    dsn: str | None = None
    data_dir: str = "./data/postgres"
    pool_min_size: PosInt = 2
    pool_max_size: PosInt = 10
    connect_timeout: PosFloat = 10.0
    command_timeout: PosFloat = 60.0

    def __repr__(self) -> str:
        return (
            f"DatabaseSettings(dsn={redact_dsn(self.dsn)!r}, data_dir={self.data_dir!r}, "
            f"pool_min_size={self.pool_min_size}, pool_max_size={self.pool_max_size}, "
            f"connect_timeout={self.connect_timeout}, command_timeout={self.command_timeout})"
        )

    __str__ = __repr__


class WriterSettings(_Section):
    """How the batch writers group rows into COPY transactions and what they do when the database is away."""

    batch_max_rows: PosInt = 10_000
    batch_max_age_ms: PosFloat = 50.0
    linger_ms: NonNegFloat = 0.0
    buffer_max_rows: PosInt = 1_000_000
    full_policy: Literal["block", "drop_oldest", "raise"] = "block"
    spool_dir: str | None = "./data/spool"
    spool_max_bytes: PosInt = 1 << 30
    memory_max_batches: PosInt = 64
    retry_initial_ms: PosFloat = 50.0
    retry_max_ms: PosFloat = 5_000.0
    reject_log_interval_s: PosFloat = 10.0


class CacheSettings(_Section):
    """TTLs of the exchange and symbol caches, and of the optional latest-data cache (0 turns it off)."""

    ttl_s: PosFloat = 300.0
    latest_ttl_ms: NonNegFloat = 0.0


class StorageSettings(_Section):
    """Partitioning, indexing and retention of the time-series tables."""

    partition_interval_s: PosInt = 86_400
    partitions_ahead: NonNegInt = 2
    retention_days: PosFloat = 30.0
    ledger_retention_days: PosFloat = 7.0
    hot_index: Literal["brin", "btree"] = "brin"
    cold_btree: bool = True


class Settings(_Section):
    """Everything hftdb reads from ``config/*.toml``."""

    database: DatabaseSettings = DatabaseSettings()
    writer: WriterSettings = WriterSettings()
    cache: CacheSettings = CacheSettings()
    storage: StorageSettings = StorageSettings()


def _sections(settings_type: type[msgspec.Struct]) -> dict[str, type[msgspec.Struct]]:
    return {
        f.name: f.type
        for f in msgspec.structs.fields(settings_type)
        if isinstance(f.type, type) and issubclass(f.type, msgspec.Struct)
    }


def apply_env(raw: dict[str, Any], environ: Mapping[str, str] | None = None, *, settings_type: type = Settings) -> dict[str, Any]:
    """Merge ``HFTDB_<SECTION>_<KEY>`` variables into the raw (decoded but unvalidated) config mapping.

    Values are parsed as TOML scalars where they parse (``5000``, ``true``, ``1.5``), else taken as strings.
    An ``HFTDB_`` variable that names no section and key is a :class:`ConfigError`.
    """
    environ = os.environ if environ is None else environ
    sections = _sections(settings_type)
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for name, value in environ.items():
        if not name.startswith("HFTDB_") or name in _IGNORED_ENV:
            continue
        key = name[len("HFTDB_"):].lower()
        if key == "dsn":
            section, field = "database", "dsn"
        else:
            section = next((s for s in sorted(sections, key=len, reverse=True) if key.startswith(s + "_")), None)
            if section is None:
                raise ConfigError(f"environment variable {name}: no config section matches (sections: {', '.join(sorted(sections))})")
            field = key[len(section) + 1:]
            known = {f.name for f in msgspec.structs.fields(sections[section])}
            if field not in known:
                raise ConfigError(f"environment variable {name}: [{section}] has no key {field!r} (keys: {', '.join(sorted(known))})")
        merged.setdefault(section, {})[field] = _parse_scalar(value)
    return merged


# Variables that share the prefix but are not config keys.
_IGNORED_ENV = frozenset({"HFTDB_TEST_DSN", "HFTDB_CONFIG"})


def _parse_scalar(text: str) -> Any:
    try:
        return msgspec.toml.decode(f"v = {text}")["v"]
    except msgspec.DecodeError:
        return text


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    settings_type: type = Settings,
) -> Any:
    """Load settings from a TOML file (or defaults when ``path`` is None) and apply environment overrides.

    Raises :class:`ConfigError` naming the file, the key and what was expected.
    """
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            raw = msgspec.toml.decode(p.read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except IsADirectoryError:
            raise ConfigError(f"config path is a directory, not a file: {p}") from None
        except msgspec.DecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    merged = apply_env(raw, environ, settings_type=settings_type)
    try:
        return msgspec.convert(merged, settings_type)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source} (with HFTDB_* overrides): {exc}") from None

"""Configuration: frozen, keyword-only structs loaded from TOML, with ``HFTDB_*`` environment overrides.

The file layout mirrors the structs: ``[database]``, ``[writer]``, ``[cache]``, ``[storage]``... Every key can be
overridden by ``HFTDB_<SECTION>_<KEY>`` (``HFTDB_WRITER_BATCH_MAX_ROWS=5000``); ``HFTDB_DSN`` is short for
``HFTDB_DATABASE_DSN`` (both set to different DSNs is a :class:`~hftdb.errors.ConfigError`, whatever their order).
Overrides are applied in one place, :func:`apply_env`, and validated exactly like the file, so a bad override
names its variable and what was expected.

A DSN is checked when the settings are built (:func:`dsn_problem`): one hftdb cannot use is a
:class:`~hftdb.errors.ConfigError` saying what is wrong, never quoting its password, and every DSN's password is
registered with :mod:`hftdb.redact` so that it is starred wherever it shows up later.
"""

from __future__ import annotations

import os
import sys
import types
import typing
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, Mapping
from urllib.parse import parse_qs, urlsplit

import msgspec
from msgspec import Meta

from . import venues
from .errors import ConfigError
from .redact import redact, register_dsn, register_environment, unencoded_userinfo_password

__all__ = [
    "DatabaseSettings",
    "WriterSettings",
    "CacheSettings",
    "StorageSettings",
    "ReadSettings",
    "VenueSettings",
    "ExchangesSettings",
    "DaemonSettings",
    "MetricsSettings",
    "LoggingSettings",
    "DemoSettings",
    "ArchiveSettings",
    "Settings",
    "VENUE_CHANNELS",
    "load_settings",
    "check_settings",
    "locate_config",
    "apply_env",
    "NOT_CONFIG_ENV",
    "MAX_DAYS",
    "MAX_DEMO_SYMBOLS",
    "redact_dsn",
    "dsn_problem",
]

PosInt = Annotated[int, Meta(gt=0)]
NonNegInt = Annotated[int, Meta(ge=0)]
# Floats are finite (msgspec bounds must be finite: the largest float keeps out inf, and NaN fails every bound).
_FINITE = sys.float_info.max
PosFloat = Annotated[float, Meta(gt=0, le=_FINITE)]
NonNegFloat = Annotated[float, Meta(ge=0, le=_FINITE)]
#: The most days a retention or archive age may name (a century): a longer one is a typo, and past it a cutoff
#: leaves the range of a timestamp.
MAX_DAYS: Final = 36_500
Days = Annotated[float, Meta(gt=0, le=MAX_DAYS)]
#: The most instruments a simulated market may have ([demo] symbols, ``hftdb simulate --symbols``).
MAX_DEMO_SYMBOLS: Final = 20_000

def redact_dsn(dsn: str | None) -> str | None:
    """Return ``dsn`` with any password (and any registered secret) replaced by ``***``: safe for logs, errors and
    reprs. Kept for callers of the DSN-only name; :func:`hftdb.redact.redact` is the one function behind it."""
    return None if dsn is None else redact(dsn)


_KEYVALUE_DSN = re.compile(r"^\s*[A-Za-z_]+\s*=")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def dsn_problem(dsn: str) -> str | None:
    """What is wrong with ``dsn`` in one phrase that never quotes its password, or None when hftdb can use it.

    hftdb connects through asyncpg, which takes ``postgresql://`` (or ``postgres://``) URIs: one host or several
    (``h1:5432,h2:5433``), IPv6 hosts in brackets, a Unix socket directory in ``?host=``.
    """
    if not dsn.strip():
        return "the DSN is empty"
    if _KEYVALUE_DSN.match(dsn):
        return ("a keyword/value DSN (host=... dbname=...) is not supported: write it as a URI, "
                "postgresql://user@host:port/database with the password after the user and a colon")
    scheme = _SCHEME.match(dsn)
    if scheme is None:
        fixed = "postgresql:" + dsn if dsn.startswith("//") else "postgresql://" + dsn
        return (f"{redact(dsn)!r} has no scheme: write it as a URI, {redact(fixed)}"
                if "@" in dsn else f"{redact(dsn)!r} is not a postgresql:// URI")
    if scheme.group(1).lower() not in ("postgresql", "postgres"):
        return f"unknown scheme {scheme.group(1)!r}: a DSN starts with postgresql:// or postgres://"
    if unencoded_userinfo_password(dsn) is not None:
        # urllib would end the host part there and take the password's start for a host and a port.
        return ("the password holds an unencoded '#', '?', '/', '[' or ']': percent-encode it "
                "(%23, %3F, %2F, %5B, %5D: postgresql://user:p%23ss@host/db)")
    try:
        parts = urlsplit(dsn)
        query = parse_qs(parts.query, keep_blank_values=True)
    except ValueError:
        # (not urllib's words: they quote what it could not read, which may be a piece of the password)
        return f"{redact(dsn)!r} cannot be parsed: an unclosed '[' around an IPv6 host, or a stray bracket"
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    if "@" in userinfo:
        # asyncpg splits at the first "@": the rest of the password would be taken for the host.
        return "the user or password holds an '@': percent-encode it as %40 (postgresql://user:p%40ss@host/db)"
    for host in hostlist.split(",") if hostlist else ():
        if host.startswith("["):
            end = host.find("]")
            if end < 0:
                return f"host {host!r} opens a bracket it does not close"
            port = host[end + 1:].removeprefix(":") if host[end + 1:].startswith(":") else None
            if host[end + 1:] and port is None:
                return f"host {host!r}: unexpected text after the bracketed address"
        else:
            port = host.partition(":")[2] if ":" in host else None
        if port is not None and (problem := _port_problem(port)):
            if "@" not in parts.netloc and not port.isdigit():
                # "user:password" with nothing after it: the DSN was cut before its "@" (in a list, at a "," of
                # the password), and the "port" would be the password. Quoted, it would be shown.
                return ("the text after the scheme reads as host:port with a port that is not a number, and no '@' "
                        "follows: if it is a user and a password, the DSN was cut inside the password (in a list, a "
                        "',' ends a DSN: percent-encode it as %2C)")
            return f"host {host!r}: {problem}"
    for port in query.get("port", []):
        for one in port.split(","):
            if problem := _port_problem(one):
                return f"?port={port}: {problem}"
    return None


def _port_problem(port: str) -> str | None:
    if port == "":
        return None  # "host:" means the default port, as in libpq
    if not port.isdigit() or not port.isascii():
        return f"port {port!r} is not a number"
    if not 0 < int(port) <= 65_535:
        return f"port {port} is out of range (1-65535)"
    return None


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

    def __post_init__(self) -> None:
        register_environment()  # $PGPASSWORD: asyncpg and pg_dump read it when the DSN has no password
        if self.dsn is not None:
            register_dsn(self.dsn)  # before the check, whose message could otherwise quote it
            if problem := dsn_problem(self.dsn):
                raise ConfigError(f"dsn: {problem}")
        if self.pool_min_size > self.pool_max_size:
            raise ConfigError(f"pool_min_size: {self.pool_min_size} is more than pool_max_size ({self.pool_max_size})")

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
    commit_max_rows: PosInt = 100_000
    batch_max_age_ms: PosFloat = 50.0
    linger_ms: NonNegFloat = 0.0
    buffer_max_rows: PosInt = 1_000_000
    full_policy: Literal["block", "drop_oldest", "raise"] = "block"
    spool_dir: str | None = "./data/spool"
    spool_max_bytes: PosInt = 1 << 30
    memory_max_batches: NonNegInt = 0
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
    #: At most 9,999: maintenance makes ``now`` .. ``now + partitions_ahead`` intervals in one call, and
    #: hftdb.db.partitions refuses a call of 10,000 partitions or more (past it, a typo reached maintenance first).
    partitions_ahead: Annotated[int, Meta(ge=0, le=9_999)] = 2
    retention_days: Days = 30.0
    ledger_retention_days: Days = 7.0
    hot_index: Literal["brin", "btree"] = "brin"
    cold_btree: bool = True
    #: On a Citus coordinator: distribute the tables at start (``hftdb distribute``; see hftdb.db.citus).
    distribute: bool = False

    def __post_init__(self) -> None:
        if self.partition_interval_s < 60 or self.partition_interval_s % 60:
            raise ConfigError(
                f"partition_interval_s: expected a multiple of 60 seconds, got {self.partition_interval_s}")


#: The channels each venue's adapter can stream (its defaults first), as named in the venue's own API
#: (from the venue registry, :mod:`hftdb.venues`).
VENUE_CHANNELS: dict[str, tuple[str, ...]] = dict(venues.CHANNELS)


class VenueSettings(_Section):
    """One venue: whether the daemon streams it, which symbols and channels, and the account its balances go to."""

    enabled: bool = True
    symbols: Literal["all"] | tuple[str, ...] = "all"
    channels: tuple[str, ...] = ()
    account: str = "default"

    def __post_init__(self) -> None:
        if isinstance(self.symbols, tuple) and not self.symbols:
            raise ConfigError('symbols: give "all" or at least one native symbol')
        if isinstance(self.symbols, tuple) and not all(self.symbols):
            raise ConfigError("symbols: a symbol is an empty string")
        if not self.account:
            raise ConfigError("account must not be empty")


if TYPE_CHECKING:
    class _VenueSections(_Section, frozen=True):
        """What a type checker sees of the venue sections built below: a VenueSettings per venue name."""

        def __getattr__(self, name: str) -> VenueSettings: ...
else:
    # One [exchanges.<venue>] table per venue of the registry (hftdb.venues), in its order: a field of type
    # VenueSettings named as the venue. Built from the registry so that adding a venue does not touch this file.
    _VenueSections = msgspec.defstruct(
        "_VenueSections",
        [(name, VenueSettings, VenueSettings()) for name in venues.NAMES],
        bases=(_Section,),
        module=__name__,
        frozen=True,
        forbid_unknown_fields=True,
    )


class ExchangesSettings(_VenueSections):
    """The venues the daemon streams, and how often it syncs symbols, polls balances and polls funding over REST.

    Each venue of :data:`hftdb.venues.VENUES` is a :class:`VenueSettings` field named as the venue
    (``exchanges.binance_spot`` ... ``exchanges.okx_swap``: the ``[exchanges.<venue>]`` tables), in registry order
    and before the keys below.

    ``funding_poll_interval_s`` paces the REST funding fallback on perpetual venues: seconds between two polls
    where the websocket does not carry funding, and the silence on a streamed funding channel after which REST
    takes over. Funding settles every few hours and moves slowly, so a minute is the default. 0 turns the REST
    funding fallback off (funding then comes only from the websocket).
    """

    symbol_sync_interval_s: PosFloat = 3_600.0
    balance_interval_s: NonNegFloat = 60.0
    funding_poll_interval_s: NonNegFloat = 60.0
    secrets_file: str | None = None
    request_timeout_s: PosFloat = 10.0
    startup_timeout_s: PosFloat = 60.0

    def __post_init__(self) -> None:
        for venue, known in VENUE_CHANNELS.items():
            for channel in getattr(self, venue).channels:
                if channel not in known:
                    raise ConfigError(
                        f"{venue}.channels: {channel!r} is not a channel of {venue} (its channels: {', '.join(known)})"
                    )

    def venues(self) -> dict[str, VenueSettings]:
        """The enabled venues by name, in a fixed order."""
        return {v: getattr(self, v) for v in VENUE_CHANNELS if getattr(self, v).enabled}


class DaemonSettings(_Section):
    """The daemon's periodic work and its shutdown."""

    status_interval_s: NonNegFloat = 10.0
    maintenance_interval_s: PosFloat = 600.0
    feed_stale_after_s: PosFloat = 60.0
    shutdown_timeout_s: PosFloat = 30.0


class MetricsSettings(_Section):
    """The HTTP endpoint serving ``/metrics`` (Prometheus text), ``/health`` and ``/stats``."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65_535)] = 9464
    health_timeout_s: PosFloat = 5.0


class LoggingSettings(_Section):
    """Where logs go and how they look."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    file: str | None = None


class DemoSettings(_Section):
    """``run.py --demo``: the exchange simulator the daemon streams from instead of the exchanges."""

    database: Annotated[str, Meta(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "hftdb_demo"
    rate: PosFloat = 50.0
    symbols: Annotated[int, Meta(gt=0, le=MAX_DEMO_SYMBOLS)] = 5
    seed: int = 0
    funding_interval_s: PosFloat = 1.0
    ledger_file: str | None = None


class ReadSettings(_Section):
    """Where reads go: read replicas (any number; the primary is ``database.dsn``), their health, the read pools.

    Reads rotate over healthy replicas and fall back to the primary when every replica is down or lags more than
    ``max_lag_ms``. Writes always go to the primary. Commit notifications always come from the primary.
    """

    replicas: tuple[str, ...] = ()
    max_lag_ms: PosFloat = 1_000.0
    health_interval_ms: PosFloat = 250.0
    health_timeout_s: PosFloat = 2.0
    pool_min_size: NonNegInt = 1
    pool_max_size: PosInt = 4
    listen_keepalive_s: PosFloat = 5.0
    listen_retry_max_s: PosFloat = 5.0

    def __post_init__(self) -> None:
        for i, dsn in enumerate(self.replicas):
            register_dsn(dsn)
            if problem := dsn_problem(dsn):
                raise ConfigError(f"replicas: replica {i}: {problem}")
        if self.health_interval_ms * 2 > self.max_lag_ms:
            # Lag is measured against primary WAL positions sampled each interval: its resolution is one interval.
            raise ConfigError("max_lag_ms must be at least twice health_interval_ms")
        if self.pool_min_size > self.pool_max_size:
            raise ConfigError("pool_min_size must not exceed pool_max_size")

    def __repr__(self) -> str:
        replicas = tuple(redact_dsn(d) for d in self.replicas)
        return (
            f"ReadSettings(replicas={replicas!r}, max_lag_ms={self.max_lag_ms}, "
            f"health_interval_ms={self.health_interval_ms}, health_timeout_s={self.health_timeout_s}, "
            f"pool_min_size={self.pool_min_size}, pool_max_size={self.pool_max_size}, "
            f"listen_keepalive_s={self.listen_keepalive_s}, listen_retry_max_s={self.listen_retry_max_s})"
        )

    __str__ = __repr__


class ArchiveSettings(_Section):
    """The Parquet tier of the time-series tables (:mod:`hftdb.read.archive`): where sealed partitions go, when, and
    how the files are laid out."""

    root: str = "./data/archive"
    after_days: Days = 7.0
    retention_days: Days | None = None
    row_group_rows: PosInt = 65_536
    compression_level: Annotated[int, Meta(ge=1, le=22)] = 9
    #: Rows the archiver reads from PostgreSQL at a time (rounded down to whole row groups, at least one): its
    #: memory is a piece or two (about 400 bytes a row of piece, whatever the partition's size).
    piece_rows: PosInt = 262_144


class Settings(_Section):
    """Everything hftdb reads from ``config/*.toml``."""

    database: DatabaseSettings = DatabaseSettings()
    writer: WriterSettings = WriterSettings()
    cache: CacheSettings = CacheSettings()
    storage: StorageSettings = StorageSettings()
    reads: ReadSettings = ReadSettings()
    exchanges: ExchangesSettings = ExchangesSettings()
    daemon: DaemonSettings = DaemonSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    demo: DemoSettings = DemoSettings()
    archive: ArchiveSettings = ArchiveSettings()


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _fields(tp: type[msgspec.Struct]) -> dict[str, msgspec.structs.FieldInfo]:
    return {f.name: f for f in msgspec.structs.fields(tp)}


def _resolve_env(name: str, key: str, tp: type[msgspec.Struct], path: tuple[str, ...]) -> tuple[tuple[str, ...], Any]:
    """The key path and field type an ``HFTDB_`` variable names; ConfigError naming what exists otherwise."""
    fields = _fields(tp)
    for fname in sorted(fields, key=len, reverse=True):
        ftype = fields[fname].type
        if _is_struct(ftype) and key.startswith(fname + "_"):
            return _resolve_env(name, key[len(fname) + 1:], ftype, path + (fname,))
        if not _is_struct(ftype) and key == fname:
            return path + (fname,), ftype
    if not path:
        sections = ", ".join(f for f, info in fields.items() if _is_struct(info.type))
        raise ConfigError(f"environment variable {name}: no config section matches (sections: {sections})")
    keys = ", ".join(sorted(f for f, info in fields.items() if not _is_struct(info.type)))
    tables = ", ".join(sorted(f for f, info in fields.items() if _is_struct(info.type)))
    also = f"; tables: {tables}" if tables else ""
    raise ConfigError(
        f"environment variable {name}: [{'.'.join(path)}] has no key {key!r} (keys: {keys}{also})")


def _env_overrides(environ: Mapping[str, str], settings_type: type) -> dict[tuple[str, ...], tuple[str, Any]]:
    out: dict[tuple[str, ...], tuple[str, Any]] = {}
    for name, value in environ.items():
        if not name.startswith("HFTDB_") or name in NOT_CONFIG_ENV:
            continue
        key = name[len("HFTDB_"):].lower()
        if key == "dsn":
            path, ftype = ("database", "dsn"), str
        else:
            path, ftype = _resolve_env(name, key, settings_type, ())
        try:
            parsed = _parse_env_value(value, ftype)
        except ValueError as exc:
            raise ConfigError(f"environment variable {name}: {exc}") from None
        if path in out and out[path][1] != parsed:
            # HFTDB_DSN and HFTDB_DATABASE_DSN name one key: which one wins must not depend on their order.
            first = out[path][0]
            for one in (value, environ[first]):
                register_dsn(one)  # before quoting them, even redacted
            one, two = sorted((name, first))
            raise ConfigError(
                f"environment variables {one} and {two} are both set and differ ({redact(environ[one])!r} and "
                f"{redact(environ[two])!r}): they name the same key, [database] dsn; unset one of them")
        out[path] = (name, parsed)
    return out


def apply_env(raw: dict[str, Any], environ: Mapping[str, str] | None = None, *, settings_type: type = Settings) -> dict[str, Any]:
    """Merge ``HFTDB_<SECTION>_<KEY>`` variables into the raw (decoded but unvalidated) config mapping.

    Nested tables are reached the same way: ``HFTDB_EXCHANGES_OKX_SPOT_SYMBOLS`` sets ``[exchanges.okx_spot]
    symbols``. Values are parsed as TOML values where they parse (``5000``, ``true``, ``1.5``, ``["a", "b"]``),
    else taken as strings; a list key also takes a comma-separated string (``BTCUSDT,ETHUSDT``). An ``HFTDB_``
    variable that names no section and key is a :class:`ConfigError`.
    """
    environ = os.environ if environ is None else environ
    return _merge_env(raw, _env_overrides(environ, settings_type))


def _merge_env(raw: dict[str, Any], overrides: Mapping[tuple[str, ...], tuple[str, Any]]) -> dict[str, Any]:
    merged = _copy_tables(raw)
    for path, (name, value) in overrides.items():
        table = merged
        for i, part in enumerate(path[:-1]):
            sub = table.setdefault(part, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"environment variable {name}: [{'.'.join(path[: i + 1])}] is not a table in the file")
            table = sub
        table[path[-1]] = value
    return merged


def _copy_tables(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _copy_tables(v) if isinstance(v, dict) else v for k, v in raw.items()}


#: hftdb's own environment variables that share the prefix but are not config keys, with what each does. Every
#: other ``HFTDB_`` variable must name a section and key (:func:`apply_env`), so these are the only ones a shell may
#: hold for the daemon, the CLI and :class:`~hftdb.DatabaseManager` without a ConfigError.
NOT_CONFIG_ENV: Final[Mapping[str, str]] = types.MappingProxyType({
    "HFTDB_CONFIG": "the config file to load (locate_config)",
    "HFTDB_NO_C": "1 turns the C extensions off for the process (hftdb.wire.loader)",
    "HFTDB_TEST_DSN": "the server the test suite uses instead of an embedded one",
    "HFTDB_BENCH_DSN": "the server the benchmarks use instead of an embedded one",
    "HFTDB_CITUS_PG_BIN": "the PostgreSQL bin directory with Citus that the Citus tests and bench start",
    "HFTDB_FUZZ_PROFILE": "'long' makes the property-based fuzz tests draw many more examples",
})


def _parse_env_value(text: str, ftype: Any) -> Any:
    value = _parse_scalar(text)
    if isinstance(value, str) and _takes_sequence(ftype):
        if value.strip().startswith("["):
            # Meant as a TOML array, but it does not parse: split at commas it would become names like '["BTC"'.
            raise ValueError('a value that starts with "[" must be a TOML array: write ["A", "B"] (quoted, closed), '
                             'or A,B')
        if value.lower() == "all":
            return "all"
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _item_type(tp: Any) -> Any:
    """The item type of a list key (``tuple[str, ...]``, possibly in a union with a literal)."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    for arg in args:
        if typing.get_origin(arg) in (tuple, list):
            return typing.get_args(arg)[0]
    return tp


def _takes_sequence(tp: Any) -> bool:
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return any(typing.get_origin(a) in (tuple, list) for a in args)


def _parse_scalar(text: str) -> Any:
    try:
        return msgspec.toml.decode(f"v = {text}")["v"]
    except msgspec.DecodeError:
        return text


def locate_config(path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None) -> Path | None:
    """The config file to load: ``path`` if given, else ``$HFTDB_CONFIG``, else ``./config/default.toml`` when it
    exists, else None (the built-in defaults, which are what ``config/default.toml`` documents)."""
    environ = os.environ if environ is None else environ
    if path is not None:
        if not os.fspath(path).strip():
            # Path("") is "." (a directory): say what was given instead.
            raise ConfigError("the config path is empty: name a TOML file (--config PATH)")
        return Path(path)
    if environ.get("HFTDB_CONFIG"):
        return Path(environ["HFTDB_CONFIG"])
    default = Path("config") / "default.toml"
    return default if default.is_file() else None


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    settings_type: type = Settings,
) -> Any:
    """Load settings from a TOML file (or defaults when ``path`` is None) and apply environment overrides.

    Raises :class:`ConfigError` naming the file (or the environment variable), the key and what was expected.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    source = "built-in defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            raw = msgspec.toml.decode(p.read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except IsADirectoryError:
            raise ConfigError(f"config path is a directory, not a file: {p}") from None
        except PermissionError:
            raise ConfigError(f"config file not readable (permission denied): {p}") from None
        except msgspec.DecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    register_environment()  # $PGPASSWORD: asyncpg and pg_dump read it when the DSN has no password
    overrides = _env_overrides(environ, settings_type)
    merged = _merge_env(raw, overrides)
    try:
        return msgspec.convert(merged, settings_type)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(str(exc), source, merged, overrides, settings_type)) from None


def check_settings(settings: Settings) -> Settings:
    """``settings`` checked as :func:`load_settings` checks a file: a :class:`Settings` built in code skips the
    bounds of its keys (msgspec checks them when decoding, not in ``__init__``), so ``WriterSettings(
    batch_max_rows=0)`` would otherwise fail deep inside a writer. A ConfigError naming the key otherwise."""
    if not isinstance(settings, Settings):
        raise ConfigError(f"settings must be hftdb.Settings, got {type(settings).__name__}")
    raw = msgspec.to_builtins(settings)
    try:
        return msgspec.convert(raw, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(str(exc), "settings", raw, {}, Settings)) from None


_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]*)`$")
_KEYED = re.compile(r"^(?P<key>[a-z_][a-z0-9_.]*): (?P<msg>.*)$", re.DOTALL)
_SECRET_KEYS = frozenset({"dsn", "replicas"})  # DSNs: their passwords never reach an error message


def _explain(
    message: str,
    source: str,
    merged: Mapping[str, Any],
    overrides: Mapping[tuple[str, ...], tuple[str, Any]],
    settings_type: type,
) -> str:
    """Turn msgspec's ``Expected `int`, got `str` - at `$.writer.batch_max_rows``` into a sentence naming the file
    (or environment variable), the key, the value and what was expected."""
    m = _AT.match(message)
    assert m is not None  # the pattern matches any text
    msg = m.group("msg")
    steps = _STEP.findall(m.group("path") or "")
    path = tuple(name for name, _ in steps if name)
    index = next((int(i) for name, i in steps if i), None)  # an item of a list key: replicas[0]
    unknown = _UNKNOWN.match(msg)
    if unknown:
        field = unknown.group("field")
        tp = _type_at(settings_type, path)
        names = sorted(_fields(tp)) if _is_struct(tp) else []
        if not path:
            return f"{source}: unknown section [{field}] (sections: {', '.join(names)})"
        table = ".".join(path)
        origin = _origin(path + (field,), source, overrides)
        return f"{origin}: [{table}] has no key {field!r} (keys: {', '.join(names)})"
    origin = _origin(path, source, overrides)
    tp = _type_at(settings_type, path)
    if path and not _is_struct(tp):
        table, key = ".".join(path[:-1]), path[-1]
        value = _value_at(merged, path)
        shown = "***" if key in _SECRET_KEYS else _toml_repr(value)
        expected = _describe(tp)
        if index is not None:
            key, expected = f"{key}[{index}]", _describe(_item_type(tp))
            if key.split("[")[0] not in _SECRET_KEYS and isinstance(value, list) and index < len(value):
                shown = _toml_repr(value[index])
        where = f"[{table}] {key} = {shown}" if table else f"{key} = {shown}"
        return f"{origin}: {where}: expected {expected}"
    # A table-level problem: a check in __post_init__ (whose message starts with the key it is about), or a
    # value where a table belongs.
    sub = _KEYED.match(msg)
    if sub and _type_at(tp, tuple(sub.group("key").split("."))) is not None:
        *tables, key = path + tuple(sub.group("key").split("."))
        origin = _origin((*tables, key), source, overrides)
        return f"{origin}: [{'.'.join(tables)}] {key}: {sub.group('msg')}"
    where = f"[{'.'.join(path)}]" if path else "settings"
    return f"{origin}: {where}: {_lower_first(msg).replace('expected `object`', 'expected a table')}"


def _origin(path: tuple[str, ...], source: str, overrides: Mapping[tuple[str, ...], tuple[str, Any]]) -> str:
    for key, (name, _) in overrides.items():
        if key[: len(path)] == path or path[: len(key)] == key:
            return f"environment variable {name}"
    return source


def _type_at(tp: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not _is_struct(tp):
            return None
        info = _fields(tp).get(part)
        if info is None:
            return None
        tp = info.type
    return tp


def _value_at(merged: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = merged
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _toml_repr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_repr(v) for v in value) + "]"
    return repr(value)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _describe(tp: Any) -> str:
    """Say in words what a field takes: ``an integer > 0``, ``one of "block", "raise"``, ``a list of strings``."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *metas = typing.get_args(tp)
        bounds = []
        finite = False
        for meta in metas:
            if isinstance(meta, Meta):
                for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
                    if getattr(meta, attr) is not None and getattr(meta, attr) != _FINITE:
                        bounds.append(f"{sign} {getattr(meta, attr)}")
                finite = finite or meta.le == _FINITE
                if meta.pattern is not None:
                    bounds.append(f"matching {meta.pattern}")
        what = f"{_describe(base)} {' and '.join(bounds)}" if bounds else _describe(base)
        return f"{what} (finite)" if finite else what
    if origin is Literal:
        return "one of " + ", ".join(_toml_repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(parts)
    if origin in (tuple, list):
        (item, *_) = typing.get_args(tp) or (str,)
        return f"a list of {_describe(item).removeprefix('a ').removeprefix('an ')}s"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))

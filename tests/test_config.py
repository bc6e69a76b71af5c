"""Configuration: the documented defaults, environment overrides, and one clear line for every mistake."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from hftdb.config import (
    NOT_CONFIG_ENV, CacheSettings, DatabaseSettings, Settings, StorageSettings, VENUE_CHANNELS, WriterSettings,
    apply_env, check_settings, load_settings, locate_config,
)
from hftdb.errors import ConfigError
from hftdb.service.logsetup import configure_logging
from hftdb.wire import loader

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "config" / "default.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hftdb.toml"
    path.write_text(text)
    return path


def test_default_toml_states_the_built_in_defaults_and_documents_every_key():
    assert load_settings(DEFAULT, environ={}) == Settings()
    text = DEFAULT.read_text()
    tables = {m.group(1): m.start() for m in re.finditer(r"^\[([a-z_.]+)\]$", text, re.MULTILINE)}

    def check(struct_type: type, table: str) -> None:
        start = tables[table]
        end = min((pos for pos in tables.values() if pos > start), default=len(text))
        body = text[start:end]
        for field in msgspec.structs.fields(struct_type):
            if isinstance(field.type, type) and issubclass(field.type, msgspec.Struct):
                check(field.type, f"{table}.{field.name}")
                continue
            # Each key is set, or shown commented out when it has no default value; a comment line precedes it.
            m = re.search(rf"^(# )?{field.name} = ", body, re.MULTILINE)
            assert m, f"[{table}] {field.name} is not in config/default.toml"
            # Keys that share a comment follow it directly (pool_min_size, pool_max_size).
            before = body[: m.start()].rstrip("\n").splitlines()
            while before and re.match(r"[a-z_]+ = ", before[-1]):
                before.pop()
            assert before and before[-1].startswith("#"), f"[{table}] {field.name} has no comment"

    for field in msgspec.structs.fields(Settings):
        check(field.type, field.name)


def test_environment_overrides_every_kind_of_key():
    s = load_settings(DEFAULT, environ={
        "HFTDB_WRITER_BATCH_MAX_ROWS": "5000",
        "HFTDB_WRITER_FULL_POLICY": "raise",
        "HFTDB_STORAGE_COLD_BTREE": "false",
        "HFTDB_CACHE_TTL_S": "1.5",
        "HFTDB_EXCHANGES_OKX_SPOT_ENABLED": "false",
        "HFTDB_EXCHANGES_BINANCE_SPOT_SYMBOLS": "BTCUSDT, ETHUSDT",
        "HFTDB_EXCHANGES_BYBIT_LINEAR_CHANNELS": '["orderbook.1"]',
        "HFTDB_EXCHANGES_SECRETS_FILE": "/run/secrets/hftdb.toml",
        "HFTDB_METRICS_PORT": "0",
        "HFTDB_LOGGING_FORMAT": "json",
        "HFTDB_DSN": "postgresql://u:pw@db/hftdb",
        "HFTDB_CONFIG": "ignored: names the file, not a key",
        "HFTDB_TEST_DSN": "ignored too",
    })
    assert s.writer.batch_max_rows == 5000 and s.writer.full_policy == "raise"
    assert s.storage.cold_btree is False and s.cache.ttl_s == 1.5
    assert "okx_spot" not in s.exchanges.venues() and len(s.exchanges.venues()) == 5
    assert s.exchanges.binance_spot.symbols == ("BTCUSDT", "ETHUSDT")
    assert s.exchanges.bybit_linear.channels == ("orderbook.1",)
    assert s.exchanges.secrets_file == "/run/secrets/hftdb.toml"
    assert s.metrics.port == 0 and s.logging.format == "json"
    assert s.database.dsn == "postgresql://u:pw@db/hftdb"
    assert "pw" not in repr(s) and "pw" not in str(s.database)
    # "all" is a word, not a symbol, in any case (ALL once loaded as a symbol named ALL).
    okx_spot = load_settings(DEFAULT, environ={"HFTDB_EXCHANGES_OKX_SPOT_SYMBOLS": "ALL"}).exchanges.okx_spot
    assert okx_spot.symbols == "all"


def test_funding_poll_interval_defaults_to_a_minute_and_is_set_from_toml_or_the_environment(tmp_path):
    assert Settings().exchanges.funding_poll_interval_s == 60.0
    assert load_settings(DEFAULT, environ={}).exchanges.funding_poll_interval_s == 60.0
    path = write(tmp_path, "[exchanges]\nfunding_poll_interval_s = 0\n")
    assert load_settings(path, environ={}).exchanges.funding_poll_interval_s == 0.0  # 0: the fallback is off
    env = {"HFTDB_EXCHANGES_FUNDING_POLL_INTERVAL_S": "15.5"}
    assert load_settings(path, environ=env).exchanges.funding_poll_interval_s == 15.5  # the environment wins


def test_apply_env_merges_into_the_raw_mapping_without_touching_it():
    raw = {"writer": {"batch_max_rows": 1}, "exchanges": {"okx_spot": {"enabled": True}}}
    merged = apply_env(raw, {"HFTDB_EXCHANGES_OKX_SPOT_ENABLED": "false", "HFTDB_WRITER_LINGER_MS": "2"})
    assert merged == {"writer": {"batch_max_rows": 1, "linger_ms": 2}, "exchanges": {"okx_spot": {"enabled": False}}}
    assert raw["exchanges"]["okx_spot"]["enabled"] is True


def test_locate_config_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert locate_config(environ={}) is None  # no ./config/default.toml here: built-in defaults
    with pytest.raises(ConfigError, match="the config path is empty"):  # once "a directory, not a file: ."
        locate_config("", environ={})
    assert locate_config(environ={"HFTDB_CONFIG": "/etc/hftdb.toml"}) == Path("/etc/hftdb.toml")
    assert locate_config("mine.toml", environ={"HFTDB_CONFIG": "/etc/hftdb.toml"}) == Path("mine.toml")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "default.toml").write_text("")
    assert locate_config(environ={}) == Path("config/default.toml")


FILE_ERRORS = [
    ("[wrtier]\nx = 1\n", "unknown section [wrtier] (sections: archive, cache, daemon, database, demo, exchanges, logging, "),
    ("[writer]\nbatch_rows = 5\n", "[writer] has no key 'batch_rows' (keys: batch_max_age_ms, batch_max_rows,"),
    ('[writer]\nbatch_max_rows = "many"\n', '[writer] batch_max_rows = "many": expected an integer > 0'),
    ("[writer]\nbatch_max_rows = 0\n", "[writer] batch_max_rows = 0: expected an integer > 0"),
    ('[writer]\nfull_policy = "wait"\n', '[writer] full_policy = "wait": expected one of "block", "drop_oldest", "raise"'),
    ("[metrics]\nport = 70000\n", "[metrics] port = 70000: expected an integer >= 0 and <= 65535"),
    ("[storage]\ncold_btree = 1\n", "[storage] cold_btree = 1: expected true or false"),
    ("[storage]\npartitions_ahead = 10000\n",
     "[storage] partitions_ahead = 10000: expected an integer >= 0 and <= 9999"),
    ('[logging]\nlevel = "loud"\n', '[logging] level = "loud": expected one of "debug", "info", "warning", "error"'),
    ('[exchanges.okx_spot]\nsymbols = "BTC-USDT"\n',
     '[exchanges.okx_spot] symbols = "BTC-USDT": expected one of "all" or a list of strings'),
    ("[exchanges.okx_spot]\nsymbols = []\n", '[exchanges.okx_spot] symbols: give "all" or at least one native symbol'),
    ('[exchanges.binance_spot]\nchannels = ["depth"]\n',
     "[exchanges.binance_spot] channels: 'depth' is not a channel of binance_spot (its channels: bookTicker)"),
    ("[exchanges]\nbinance_spot = true\n", "[exchanges.binance_spot]: expected a table"),
    ("[exchanges]\nfunding_poll_interval_s = -1\n", "[exchanges] funding_poll_interval_s = -1: expected a number >= 0"),
    ('[exchanges]\nfunding_poll_interval_s = "1m"\n',
     '[exchanges] funding_poll_interval_s = "1m": expected a number >= 0'),
    ('[demo]\ndatabase = "Demo DB"\n', '[demo] database = "Demo DB": expected a string matching'),
    ("writer = 3\n", "[writer]: expected a table"),
    ("[writer\n", "not valid TOML"),
    ('[exchanges.okx_spot]\nsymbols = ["BTC-USDT", 5]\n', "[exchanges.okx_spot] symbols[1] = 5: expected a string"),
]


@pytest.mark.parametrize(("text", "message"), FILE_ERRORS, ids=[m.split(":")[0][:40] for _, m in FILE_ERRORS])
def test_a_bad_file_names_itself_the_key_and_what_was_expected(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


ENV_ERRORS = [
    ({"HFTDB_WRITER_BATCH_MAX_ROWS": "-5"},
     "environment variable HFTDB_WRITER_BATCH_MAX_ROWS: [writer] batch_max_rows = -5: expected an integer > 0"),
    ({"HFTDB_WRTIER_BATCH_MAX_ROWS": "5"}, "environment variable HFTDB_WRTIER_BATCH_MAX_ROWS: no config section matches"),
    ({"HFTDB_WRITER_BATCH_ROWS": "5"}, "environment variable HFTDB_WRITER_BATCH_ROWS: [writer] has no key 'batch_rows'"),
    ({"HFTDB_EXCHANGES_OKX_SPOT_SYMBOLZ": "x"},
     "environment variable HFTDB_EXCHANGES_OKX_SPOT_SYMBOLZ: [exchanges.okx_spot] has no key 'symbolz'"),
    ({"HFTDB_EXCHANGES_OKX_SPOT_CHANNELS": "bookTicker"},
     "environment variable HFTDB_EXCHANGES_OKX_SPOT_CHANNELS: [exchanges.okx_spot] channels: 'bookTicker' is not a "
     "channel of okx_spot"),
    ({"HFTDB_EXCHANGES_FUNDING_POLL_INTERVAL_S": "-60"},
     "environment variable HFTDB_EXCHANGES_FUNDING_POLL_INTERVAL_S: [exchanges] funding_poll_interval_s = -60: "
     "expected a number >= 0"),
    ({"HFTDB_DATABASE_DSN": "5"}, "environment variable HFTDB_DATABASE_DSN: [database] dsn = ***: expected a string"),
    ({"HFTDB_READS_REPLICAS": "[1]"}, "environment variable HFTDB_READS_REPLICAS: [reads] replicas[0] = ***: expected a string"),
    # Numbers that parse but no setting can hold (found by a sweep of user mistakes: each once reached a traceback,
    # a wait without end or a late, unnamed error).
    ({"HFTDB_STORAGE_RETENTION_DAYS": "inf"},
     "environment variable HFTDB_STORAGE_RETENTION_DAYS: [storage] retention_days = inf: expected a number > 0 and "
     "<= 36500"),
    ({"HFTDB_ARCHIVE_AFTER_DAYS": "1e300"}, "[archive] after_days = 1e+300: expected a number > 0 and <= 36500"),
    ({"HFTDB_DATABASE_CONNECT_TIMEOUT": "inf"}, "[database] connect_timeout = inf: expected a number > 0 (finite)"),
    ({"HFTDB_DEMO_RATE": "nan"}, "[demo] rate = nan: expected a number > 0 (finite)"),
    ({"HFTDB_WRITER_LINGER_MS": "inf"}, "[writer] linger_ms = inf: expected a number >= 0 (finite)"),
    # Once accepted, then "[1796653945454808, 88196653945454808] spans over 10000 partitions" at maintenance.
    ({"HFTDB_STORAGE_PARTITIONS_AHEAD": "1000000"},
     "environment variable HFTDB_STORAGE_PARTITIONS_AHEAD: [storage] partitions_ahead = 1000000: expected an integer "
     ">= 0 and <= 9999"),
    ({"HFTDB_STORAGE_PARTITION_INTERVAL_S": "30"},
     "environment variable HFTDB_STORAGE_PARTITION_INTERVAL_S: [storage] partition_interval_s: expected a multiple "
     "of 60 seconds, got 30"),
    ({"HFTDB_DATABASE_POOL_MIN_SIZE": "20", "HFTDB_DATABASE_POOL_MAX_SIZE": "5"},
     "[database] pool_min_size: 20 is more than pool_max_size (5)"),
    ({"HFTDB_EXCHANGES_BINANCE_SPOT_SYMBOLS": '["BTCUSDT",'},
     'environment variable HFTDB_EXCHANGES_BINANCE_SPOT_SYMBOLS: a value that starts with "[" must be a TOML array'),
    ({"HFTDB_EXCHANGES_KRAKEN_ENABLED": "true"},
     "[exchanges] has no key 'kraken_enabled' (keys: balance_interval_s, funding_poll_interval_s, request_timeout_s, "
     "secrets_file, startup_timeout_s, symbol_sync_interval_s; tables: binance_spot, binance_usdm, bybit_linear, "
     "bybit_spot, okx_spot, okx_swap)"),
]


@pytest.mark.parametrize(("environ", "message"), ENV_ERRORS, ids=[next(iter(e)) for e, _ in ENV_ERRORS])
def test_a_bad_override_names_its_variable(environ, message):
    with pytest.raises(ConfigError) as info:
        load_settings(DEFAULT, environ=environ)
    assert message in str(info.value)


def test_file_problems(tmp_path):
    with pytest.raises(ConfigError, match=r"^config file not found: .*nope\.toml$"):
        load_settings(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings(tmp_path, environ={})


def test_the_dsn_password_never_shows(tmp_path):
    path = write(tmp_path, '[database]\ndsn = "postgresql://hftdb:s3cret@db/hftdb"\npool_min_size = 0\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert "s3cret" not in str(info.value)
    s = load_settings(environ={"HFTDB_DSN": "postgresql://hftdb:s3cret@db/hftdb"})
    assert "s3cret" not in repr(s)


def test_every_venue_has_channels():
    assert set(VENUE_CHANNELS) == {f for f in Settings().exchanges.venues()}


def test_json_logs_carry_extra_fields_and_never_a_password():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(msgspec.convert({"format": "json", "level": "info"}, type(Settings().logging)), stream=stream)
        logging.getLogger("hftdb.test").info("connecting to %s", "postgresql://u:hunter2@db/x", extra={"feed": "okx"})
        try:
            raise ValueError("dsn postgresql://u:hunter2@db/x refused")
        except ValueError:
            logging.getLogger("hftdb.test").exception("failed")
    finally:
        for h in root.handlers[:]:
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["msg"] == "connecting to postgresql://u:***@db/x" and first["feed"] == "okx"
    assert first["level"] == "INFO" and first["logger"] == "hftdb.test" and first["ts"].endswith("Z")
    assert "ValueError" in second["exc"] and "hunter2" not in stream.getvalue()


@pytest.mark.parametrize("name", sorted(NOT_CONFIG_ENV))
def test_hftdbs_own_variables_that_are_not_config_keys_are_left_alone(name):
    # HFTDB_NO_C=1 (documented in the README) once stopped the daemon, the CLI and DatabaseManager() with
    # "environment variable HFTDB_NO_C: no config section matches".
    assert load_settings(DEFAULT, environ={name: "1"}) == load_settings(DEFAULT, environ={})


_ENV_READ = re.compile(r"""(?:environ(?:\.get)?[\[(]|getenv\()\s*["'](HFTDB_[A-Z0-9_]+)["']""")


def test_every_hftdb_variable_the_code_reads_is_a_config_key_or_declared_as_not_one():
    files = [ROOT / "run.py", *(p for d in ("hftdb", "tests", "benchmarks") for p in (ROOT / d).rglob("*.py"))]
    read = {loader.ENV_DISABLE}
    for path in files:
        read |= set(_ENV_READ.findall(path.read_text()))
    assert {"HFTDB_CONFIG", "HFTDB_TEST_DSN", "HFTDB_BENCH_DSN", "HFTDB_CITUS_PG_BIN", "HFTDB_FUZZ_PROFILE"} <= read
    for name in sorted(read - set(NOT_CONFIG_ENV)):
        apply_env({}, {name: "1"})  # a config key, or ConfigError: declare it in NOT_CONFIG_ENV


# -- what a user sees: one line, no traceback ---------------------------------------------------------------


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    environ.update(env)
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=environ, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("entry", ["run.py", "cli"])
@pytest.mark.parametrize(("text", "env", "message"), [
    (None, {}, "config file not found: "),
    ("[writer]\nbatch_max_rows = -1\n", {}, "[writer] batch_max_rows = -1: expected an integer > 0"),
    ("[writr]\n", {}, "unknown section [writr]"),
    ("", {"HFTDB_METRICS_PORT": "http"}, 'environment variable HFTDB_METRICS_PORT: [metrics] port = "http"'),
], ids=["missing", "range", "section", "env"])
def test_entry_points_print_one_line_and_exit_1(tmp_path, entry, text, env, message):
    config = tmp_path / "missing.toml"
    if text is not None:
        config = write(tmp_path, text)
    cmd = [str(ROOT / "run.py"), "--config", str(config)] if entry == "run.py" else \
        ["-m", "hftdb.ops.cli", "--config", str(config), "status"]
    proc = _run(cmd, tmp_path, **env)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hftdb: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_via_hftdb_config_and_a_disabled_everything(tmp_path):
    path = write(tmp_path, "".join(f"[exchanges.{v}]\nenabled = false\n" for v in VENUE_CHANNELS))
    proc = _run([str(ROOT / "run.py"), "--demo"], tmp_path, HFTDB_CONFIG=str(path))
    assert proc.returncode == 1
    assert proc.stderr.strip() == "hftdb: [exchanges]: every venue is disabled; enable at least one (enabled = true)"


def test_the_c_switch_does_not_stop_the_daemon(tmp_path):
    path = write(tmp_path, "".join(f"[exchanges.{v}]\nenabled = false\n" for v in VENUE_CHANNELS))
    env = {name: "1" for name in NOT_CONFIG_ENV if name != "HFTDB_CONFIG"}
    proc = _run([str(ROOT / "run.py"), "--demo", "--config", str(path)], tmp_path, **env)
    # (Past the configuration: it is the venues, all disabled here, that stop it.)
    assert proc.stderr.strip() == "hftdb: [exchanges]: every venue is disabled; enable at least one (enabled = true)"


def test_a_start_that_fails_writes_no_ledger_and_hides_nothing(tmp_path):
    # The demo wrote the simulator's ledger also after a failed start: a file for a run that never ran.
    ledger = tmp_path / "ledger.json"
    proc = _run([str(ROOT / "run.py"), "--demo", "--ledger", str(ledger)], tmp_path,
                HFTDB_DSN="postgresql://u@127.0.0.1:1/db", HFTDB_DATABASE_CONNECT_TIMEOUT="1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("hftdb: cannot connect to postgresql://u@127.0.0.1:1/db"), proc.stderr
    assert not ledger.exists() and "ledger" not in proc.stderr


@pytest.mark.parametrize("entry", ["run.py", "cli"])
def test_a_ledger_path_that_cannot_be_written_is_refused_before_the_start(tmp_path, entry):
    # run.py did not check it: with a directory it ran, failed to write at the end, and claimed the ledger.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cases = [(tmp_path, f"--ledger {tmp_path} is a directory: name the file to write"),
             (blocker / "ledger.json",
              f"cannot write --ledger {blocker / 'ledger.json'}: {blocker} is not a directory")]
    if Path("/proc/self").is_dir():  # permission bits say root may write there; creating a file says otherwise
        cases.append((Path("/proc/x.json"), "cannot write --ledger /proc/x.json: no file can be created in /proc"))
    for path, message in cases:
        cmd = [str(ROOT / "run.py"), "--demo"] if entry == "run.py" else ["-m", "hftdb.ops.cli", "--demo", "run"]
        proc = _run([*cmd, "--ledger", str(path)], tmp_path, HFTDB_DSN="postgresql://u@127.0.0.1:1/db",
                    HFTDB_DATABASE_CONNECT_TIMEOUT="1", HFTDB_METRICS_ENABLED="false")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith(f"hftdb: {message}"), proc.stderr


def test_settings_built_in_code_are_checked_as_a_file_is():
    # msgspec checks bounds when it decodes, not in __init__: built in code, these failed later, deep inside a
    # writer or the catalog, as a bare ValueError.
    assert check_settings(Settings()) == Settings()
    cases = [
        (Settings(writer=WriterSettings(batch_max_rows=0)),
         "settings: [writer] batch_max_rows = 0: expected an integer > 0"),
        (Settings(cache=CacheSettings(ttl_s=-1.0)), "settings: [cache] ttl_s = -1.0: expected a number > 0 (finite)"),
        (Settings(storage=StorageSettings(partitions_ahead=1_000_000)),
         "settings: [storage] partitions_ahead = 1000000: expected an integer >= 0 and <= 9999"),
        (Settings(database=DatabaseSettings(dsn="postgresql://u:hunter2@h/db", connect_timeout=float("inf"))),
         "[database] connect_timeout = inf: expected a number > 0 (finite)"),
    ]
    for settings, message in cases:
        with pytest.raises(ConfigError) as info:
            check_settings(settings)
        assert message in str(info.value) and "hunter2" not in str(info.value)
    # The checks in __post_init__ run in code too, and raise the typed error, not a bare ValueError.
    with pytest.raises(ConfigError, match="partition_interval_s: expected a multiple of 60 seconds, got 30"):
        StorageSettings(partition_interval_s=30)
    with pytest.raises(ConfigError, match="settings must be hftdb.Settings, got dict"):
        check_settings({})  # type: ignore[arg-type]
    # DatabaseManager checks what it is given (its constructor does no I/O).
    from hftdb import DatabaseManager

    with pytest.raises(ConfigError, match=r"\[writer\] batch_max_rows = 0: expected an integer > 0"):
        DatabaseManager(settings=Settings(writer=WriterSettings(batch_max_rows=0)))
    with pytest.raises(ConfigError, match="settings must be hftdb.Settings, got str"):
        DatabaseManager(settings="config/default.toml")  # type: ignore[arg-type]



def test_a_spool_or_data_directory_that_cannot_be_made_is_a_config_error(tmp_path):
    # Once a bare NotADirectoryError (spool_dir under a file) or ValueError (data_dir = "") from deep inside.
    from hftdb.db.server import EmbeddedServer
    from hftdb.store.spool import Spool

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"\[writer\] spool_dir .*a-file/spool: cannot create it"):
        Spool(blocker / "spool", max_bytes=1 << 20).open()
    with pytest.raises(ConfigError, match=r"\[database\] data_dir must not be empty"):
        EmbeddedServer("")


# -- the demo's database and the live one -------------------------------------------------------------------


@pytest.mark.parametrize("dsn", [
    "postgresql://u:s3cretPassw0rd@127.0.0.1:1/hftdb",
    "postgresql://u:s3cretPassw0rd@127.0.0.1:1/?dbname=hftdb",
    "postgresql://hftdb:s3cretPassw0rd@127.0.0.1:1",  # no database: the user's name
], ids=["path", "query", "user"])
async def test_the_demo_database_cannot_be_the_live_one(dsn):
    # The simulator's quotes went into the live tables: "database ready: database hftdb of ...".
    from hftdb.db.target import open_target

    settings = load_settings(environ={"HFTDB_DSN": dsn, "HFTDB_DEMO_DATABASE": "hftdb"})
    with pytest.raises(ConfigError, match=r"^\[demo\] database 'hftdb' is the live database") as caught:
        await open_target(settings, demo=True)  # refused before any connection (port 1 answers nothing)
    assert "s3cretPassw0rd" not in str(caught.value) and "HFTDB_DEMO_DATABASE" in str(caught.value)


def test_the_demo_switch_refuses_the_live_database_in_one_line(tmp_path):
    path = write(tmp_path, "[demo]\ndatabase = \"live\"\n")
    proc = _run([str(ROOT / "run.py"), "--demo", "--config", str(path)], tmp_path,
                HFTDB_DSN="postgresql://u:s3cretPassw0rd@127.0.0.1:1/live", HFTDB_METRICS_ENABLED="false")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "s3cretPassw0rd" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("hftdb: [demo] database 'live' is the live database")


# -- HFTDB_DSN and HFTDB_DATABASE_DSN -----------------------------------------------------------------------


@pytest.mark.parametrize("order", ["short_first", "long_first"])
def test_two_different_dsn_variables_are_refused_whatever_their_order(order):
    short, long = ("HFTDB_DSN", "postgresql://a:s3cretPassw0rd@h1/x"), ("HFTDB_DATABASE_DSN", "postgresql://b@h2/y")
    environ = dict([short, long] if order == "short_first" else [long, short])
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ)
    message = str(caught.value)
    assert "HFTDB_DATABASE_DSN and HFTDB_DSN are both set and differ" in message, message
    assert "s3cretPassw0rd" not in message and "[database] dsn" in message
    same = {"HFTDB_DSN": long[1], "HFTDB_DATABASE_DSN": long[1]}
    assert load_settings(environ=same).database.dsn == long[1]


# -- the error that stops the daemon goes where its logs go -------------------------------------------------


@pytest.mark.parametrize("entry", ["run.py", "cli"])
def test_the_fatal_error_is_in_the_json_log_and_the_log_file(tmp_path, entry):
    # It was printed to stderr alone: the one non-JSON line of a JSON log, and absent from the log file.
    path = write(tmp_path, "".join(f"[exchanges.{v}]\nenabled = false\n" for v in VENUE_CHANNELS))
    cmd = [str(ROOT / "run.py"), "--demo"] if entry == "run.py" else ["-m", "hftdb.ops.cli", "--demo", "run"]
    why = "[exchanges]: every venue is disabled; enable at least one (enabled = true)"
    proc = _run([*cmd, "--config", str(path)], tmp_path, HFTDB_LOGGING_FORMAT="json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    records = [json.loads(line) for line in proc.stderr.strip().splitlines()]  # every line is JSON
    assert [(r["level"], r["logger"], r["msg"]) for r in records][-1:] == [("CRITICAL", "hftdb", why)], proc.stderr
    log = tmp_path / "logs" / "hftdb.log"
    proc = _run([*cmd, "--config", str(path)], tmp_path, HFTDB_LOGGING_FORMAT="json", HFTDB_LOGGING_FILE=str(log))
    assert proc.returncode == 1 and proc.stderr.strip() == f"hftdb: {why}"  # one line for the person at the terminal
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[-1]["level"] == "CRITICAL" and records[-1]["msg"] == why
    text_log = tmp_path / "logs" / "text.log"
    proc = _run([*cmd, "--config", str(path)], tmp_path, HFTDB_LOGGING_FILE=str(text_log))
    assert proc.returncode == 1 and proc.stderr.strip() == f"hftdb: {why}"
    assert text_log.read_text().splitlines()[-1].endswith(f" CRITICAL hftdb: {why}")

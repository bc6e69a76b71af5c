"""Secrets never appear: DSN passwords, API keys, secrets and passphrases, in any log line, error, repr or CLI output.

The battery runs real failures with long, distinctive secrets set (a wrong password against a private server that
really asks for one, an unreachable host, a bad port, a refused signature against the simulator, a database
outage) and greps everything they produce for each secret, as written and percent-encoded: the records caplog
sees, the text and JSON lines of the handlers :func:`hftdb.service.logsetup.configure_logging` installs, every exception
message and repr, and the stdout and stderr of the ``hftdb`` command run as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote, quote_plus, urlsplit

import aiohttp
import asyncpg
import msgspec
import pytest

from hftdb import DatabaseManager, ExchangeName, Settings
from hftdb.config import DatabaseSettings, LoggingSettings, ReadSettings, load_settings
from hftdb.errors import ConfigError, DatabaseUnavailableError, ExchangeError, HftdbError, SignatureError
from hftdb.exchanges.stream import Backoff
from hftdb.exchanges.registry import create_adapter
from hftdb.exchanges.rest import RestClient
from hftdb.exchanges.signing import Credentials
from hftdb.service.logsetup import configure_logging
from hftdb.service.metrics import MetricsServer
from hftdb.redact import MIN_SECRET_LENGTH, dsn_password, redact, register_dsn, register_secret
from hftdb.ops.dump import libpq_args
from hftdb.db.server import EmbeddedServer
from hftdb.simulator import ExchangeSimulator
from hftdb.simulator.core import Credentials as SimCredentials
from hftdb.db.target import Target

from helpers import settings, tickers

# Long and distinctive, with every character a URL must encode, so that a grep for them means something.
DB_PASSWORD = "dbPw-7f3c9e1b@2d4a/hftdb:s3cr3t #%?&=+"
WRONG_PASSWORD = "wrongPw-5b9e2c7a1d3f-not/the:password@all"
PG_PASSWORD = "pgEnvPw-0b7d3a9e5c1f-hftdb-PGPASSWORD"
API_KEY = "apiKey-3f8a1c5d9e7b2046-hftdb-KEY"
API_SECRET = "apiSecret-71d2c4e6f8a0b395-hftdb-SECRET"
WRONG_SECRET = "wrongSecret-a4c8e2f6b0d9-hftdb-SECRET"
PASSPHRASE = "passPhrase-5e2a9c7b1d3f/hftdb PHRASE"
ROLE = "hftdb_secret_role"

SECRETS = (DB_PASSWORD, WRONG_PASSWORD, PG_PASSWORD, API_KEY, API_SECRET, WRONG_SECRET, PASSPHRASE)


def _forms(secret: str) -> set[str]:
    return {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), json.dumps(secret)[1:-1]}


def assert_clean(text: str, what: str, secrets: tuple[str, ...] = SECRETS) -> None:
    """No secret in ``text``, in any of the forms it travels in."""
    for secret in secrets:
        for form in _forms(secret):
            assert form not in text, f"{what} shows a secret ({form[:6]}...): {text[:2000]}"


def _exc_text(exc: BaseException) -> str:
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


# -- the one function -------------------------------------------------------------------------------------


# Each case has its own password, registered nowhere: what hides it is the DSN's structure alone.
DSN_FORMS = [
    ("postgresql://bob:{pw}@db.example:5432/hftdb", "postgresql://bob:***@db.example:5432/hftdb"),
    ("postgres://bob:{pw}@db.example/hftdb", "postgres://bob:***@db.example/hftdb"),
    ("bob:{pw}@db.example/hftdb", "bob:***@db.example/hftdb"),
    ("postgresql://bob:{enc}@db.example/hftdb", "postgresql://bob:***@db.example/hftdb"),
    ("postgresql://bob:{pw}@[::1]:5432,db2:5433/hftdb?sslmode=require", "postgresql://bob:***@[::1]:5432,db2:5433/hftdb?sslmode=require"),
    ("host=db.example port=5432 password={pw} user=bob", "host=db.example port=5432 password=*** user=bob"),
    ("host=db.example password='{quoted}' user=bob", "host=db.example password='***' user=bob"),
    ("postgresql://bob@db.example/hftdb?password={enc}&sslmode=require", "postgresql://bob@db.example/hftdb?password=***&sslmode=require"),
    ("postgresql://bob@db.example/hftdb?sslmode=require&password={enc}", "postgresql://bob@db.example/hftdb?sslmode=require&password=***"),
    ("host=db.example user=bob password={pw}", "host=db.example user=bob password=***"),
    ("PGPASSWORD={pw} pg_dump -d hftdb", "PGPASSWORD=*** pg_dump -d hftdb"),
    ("host=db.example password=a,b;c){pw} user=bob", "host=db.example password=*** user=bob"),
    ('{{"dsn": "x", "password": "{pw}"}}', '{"dsn": "x", "password": "***"}'),
]


@pytest.mark.parametrize(("template", "expected"), DSN_FORMS, ids=[t.split("{")[0][:24] or "json" for t, _ in DSN_FORMS])
def test_redact_hides_the_password_of_every_dsn_form(template, expected):
    pw = "unregistered-" + os.urandom(6).hex()
    raw = "pa@ss/w:rd " + pw  # what only encoding can carry in a URL
    text = template.format(pw=pw, enc=quote(raw, safe=""), quoted=raw.replace("'", r"\'"))
    clean = redact(f"cannot connect to {text}: refused")
    assert clean == f"cannot connect to {expected}: refused"
    assert pw not in clean and quote(raw, safe="") not in clean


def test_dsn_password_reads_every_form():
    assert dsn_password("postgresql://u:p%40ss%2Fw@h/db") == "p@ss/w"
    assert dsn_password("u:p@ss@h/db") == "p@ss"
    assert dsn_password("host=h password='a \\' b' user=u") == "a ' b"
    assert dsn_password("postgres://u@h/db?password=qs&x=1") == "qs"
    # A ":" that ends a value is the password's in a DSN, and the message's in a line of text.
    assert dsn_password("host=h password=pw:") == "pw:" and dsn_password("postgres://u@h/db?password=q:s:") == "q:s:"
    assert redact("host=h password=pw:x: no") == "host=h password=***: no"
    assert dsn_password("postgresql://postgres:@/postgres?host=/tmp/x") is None


def test_registered_secrets_are_hidden_anywhere_in_every_encoding():
    Credentials(api_key=API_KEY, api_secret=API_SECRET, passphrase=PASSPHRASE)  # building them registers them
    body = (f'{{"retCode":10004,"retMsg":"error sign! origin_string[1700000000000{API_KEY}5000accountType=UNIFIED]"}}'
            f" {quote(PASSPHRASE, safe='')} {quote_plus(PASSPHRASE)} {json.dumps(API_SECRET)} {API_KEY.upper()}")
    clean = redact(body)
    assert_clean(clean, "redacted body")
    assert "error sign! origin_string[1700000000000***5000accountType=UNIFIED]" in clean


def test_a_short_secret_is_hidden_only_where_it_is_a_password():
    register_secret("abc12")  # shorter than the minimum: registered nowhere
    assert MIN_SECRET_LENGTH == 6
    assert redact("abc123 and abc12") == "abc123 and abc12"
    assert redact("postgresql://u:abc12@h/db password=abc12") == "postgresql://u:***@h/db password=***"


def test_a_password_in_sql_is_hidden():
    # pg_stat_statements keeps utility statements as written: `hftdb stats` showed "alter role ... password '...'".
    pw = "Rotated-" + os.urandom(6).hex()
    for sql_text in (f"alter role alice password '{pw}'",
                     f"ALTER ROLE a WITH LOGIN ENCRYPTED PASSWORD '{pw}' VALID UNTIL 'infinity'",
                     f"create role b password '{pw}''x'"):
        clean = redact(sql_text)
        assert pw not in clean and "password '***'" in clean.lower(), clean
    assert redact("CREATE ROLE b PASSWORD NULL") == "CREATE ROLE b PASSWORD NULL"


@pytest.mark.parametrize("raw", ["Long pass'w\"ord-" + "7c1e", "pa ss", "tab\tpw9999", "q'te"],
                         ids=["space-quotes", "short-space", "tab", "short-quote"])
@pytest.mark.parametrize("where", ["userinfo", "query"])
def test_a_password_holding_spaces_or_quotes_is_hidden_whole(raw, where):
    # asyncpg connects with such a password written as it is; its tail (after the space or quote) was printed.
    dsn = (f"postgresql://carol:{raw}@127.0.0.1:5/db" if where == "userinfo"
           else f"postgresql://carol@127.0.0.1:5/db?password={raw}")
    assert dsn_password(dsn) == raw.replace("\t", "")  # (urllib drops a tab, as asyncpg reads the DSN)
    register_dsn(dsn)
    clean = redact(f"cannot connect to {dsn}: InvalidPasswordError")
    expected = dsn.replace(raw, "***")
    assert clean == f"cannot connect to {expected}: InvalidPasswordError"
    assert_clean(repr(DatabaseSettings(dsn=dsn)), "DatabaseSettings", (raw,))


@pytest.mark.parametrize("char", ["#", "?", "/", "["])
def test_a_password_with_an_unencoded_url_character_is_never_quoted(char):
    # urlsplit ends the host part at the character (or refuses a bracket): the message quoted the password's start
    # as a "host" and a "port".
    secret = f"LongPrefix9{char}tail7"
    dsn = f"postgresql://alice:{secret}@127.0.0.1:55501/hftdb"
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"HFTDB_DSN": dsn})
    text = _exc_text(info.value)
    assert "LongPrefix9" not in text and "tail7" not in text, text
    assert "percent-encode" in str(info.value)


def test_a_comma_in_a_replica_password_never_quotes_the_password():
    # HFTDB_READS_REPLICAS is split at commas: the first piece, "postgresql://alice:Repl1ca", was quoted as a host
    # and a port.
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"HFTDB_READS_REPLICAS": "postgresql://alice:Repl1caX,Pass99@h/db"})
    assert "Repl1caX" not in str(info.value) + repr(info.value) and "%2C" in str(info.value), str(info.value)


def test_words_like_passwd_in_messages_are_left_alone():
    assert redact("/etc/passwd: not a directory") == "/etc/passwd: not a directory"
    assert redact("verified 0 file(s) under /etc/passwd: every file matches") == (
        "verified 0 file(s) under /etc/passwd: every file matches")
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"HFTDB_DSN": "host=db password=x user=bob"})
    assert "***" not in str(info.value) and "write it as a URI" in str(info.value), str(info.value)


def test_pg_dump_gets_no_password_on_its_command_line():
    # A password in the query string went on pg_dump's argv (readable by any local user in ps).
    pw = "QueryPw-" + os.urandom(6).hex()
    for dsn in (f"postgresql://u@h/db?password={pw}&sslmode=require", f"postgresql://u:{pw}@h/db?sslmode=require"):
        args, env = libpq_args(dsn)
        assert pw not in args and env["PGPASSWORD"] == pw and "sslmode=require" in args, args


def test_pgpassword_is_hidden_once_settings_are_loaded(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", PG_PASSWORD)
    load_settings(environ={})
    assert_clean(redact(f"the server said {PG_PASSWORD}"), "redacted text")


# -- the bad DSN: one typed line, never a traceback --------------------------------------------------------


BAD_DSNS = [
    (f"postgresql://{ROLE}:{quote(DB_PASSWORD, safe='')}@localhost:abc/hftdb", "port 'abc' is not a number"),
    (f"postgresql://{ROLE}:{quote(DB_PASSWORD, safe='')}@localhost:99999/hftdb", "port 99999 is out of range"),
    (f"mysql://{ROLE}:{quote(DB_PASSWORD, safe='')}@localhost/hftdb", "unknown scheme 'mysql'"),
    (f"{ROLE}:{quote(DB_PASSWORD, safe='')}@localhost/hftdb", "has no scheme"),
    (f"host=localhost user={ROLE} password='{DB_PASSWORD}'", "keyword/value DSN"),
    (f"postgresql://{ROLE}:{quote(DB_PASSWORD, safe='')}@[::1:5432/hftdb", "cannot be parsed"),
    (f"postgresql://{ROLE}:{quote(DB_PASSWORD, safe='')}@localhost/hftdb?port=5o32", "port '5o32' is not a number"),
    # A password with a raw "@" (asyncpg split at the first one and looked up the rest as a host name), and a URI
    # with the scheme left off ("postgresql:////..." was suggested).
    (f"postgresql://{ROLE}:{quote(DB_PASSWORD, safe='')}@x@localhost/hftdb", "percent-encode it as %40"),
    (f"//{ROLE}:{quote(DB_PASSWORD, safe='')}@localhost/hftdb", f"write it as a URI, postgresql://{ROLE}:***@localhost"),
]
BAD_IDS = ["port", "range", "scheme", "no-scheme", "keyword", "unparseable", "query-port", "at-sign", "two-slashes"]


@pytest.mark.parametrize(("dsn", "problem"), BAD_DSNS, ids=BAD_IDS)
def test_a_bad_dsn_is_a_config_error_naming_the_problem(dsn, problem):
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"HFTDB_DSN": dsn})
    assert problem in str(info.value) and "HFTDB_DSN" in str(info.value)
    assert_clean(_exc_text(info.value), "ConfigError")
    with pytest.raises(ConfigError) as info:
        DatabaseManager(dsn, settings=Settings())
    assert problem in str(info.value)
    assert_clean(_exc_text(info.value), "ConfigError")
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"HFTDB_READS_REPLICAS": json.dumps([dsn])})
    assert problem in str(info.value)
    assert_clean(_exc_text(info.value), "ConfigError")


def _hftdb(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HFTDB_", "PG"))}
    environ.update(HFTDB_METRICS_ENABLED="false", **env)
    return subprocess.run([sys.executable, "-m", "hftdb.ops.cli", *args], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=90)


# Each run starts a Python process (about 2 s here): every bad DSN with the two commands users run first, and
# every other database command with one of them.
COMMANDS = [["status"], ["migrate", "status"]]
OTHERS = [["migrate", "up"], ["health", "--db-only"], ["stats"], ["validate"], ["cleanup", "--dry-run"], ["optimize"],
          ["backup", "x.dump"], ["run"]]
CLI_CASES = [(c, d, p) for d, p in BAD_DSNS for c in COMMANDS] + [(c, *BAD_DSNS[0]) for c in OTHERS]


@pytest.mark.parametrize(("command", "dsn", "problem"), CLI_CASES,
                         ids=[f"{' '.join(c)}-{BAD_IDS[BAD_DSNS.index((d, p))]}" for c, d, p in CLI_CASES])
def test_every_command_says_what_is_wrong_with_a_bad_dsn_in_one_line(tmp_path, command, dsn, problem):
    proc = _hftdb(command, tmp_path, HFTDB_DSN=dsn, PGPASSWORD=PG_PASSWORD)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hftdb: ") and problem in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert_clean(proc.stdout + proc.stderr, f"hftdb {' '.join(command)}")


# -- logging: the handlers hftdb installs, and what caplog sees --------------------------------------------


class Logs:
    """Everything logged during a test: hftdb's own text and JSON handlers, and caplog."""

    def __init__(self, text_file: Path, json_stream: io.StringIO, caplog: pytest.LogCaptureFixture) -> None:
        self.text_file = text_file
        self.json_stream = json_stream
        self.caplog = caplog

    def everything(self) -> str:
        for handler in logging.getLogger().handlers:
            handler.flush()
        records = "\n".join(r.getMessage() + (r.exc_text or "") for r in self.caplog.records)
        return "\n".join([self.text_file.read_text(), self.json_stream.getvalue(), self.caplog.text, records])

    def json_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.json_stream.getvalue().splitlines()]


@pytest.fixture
def logs(tmp_path, caplog):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    chatty = {name: logging.getLogger(name).level for name in ("aiohttp.access", "picows", "pgserver")}
    text_file = tmp_path / "hftdb.log"
    stream = io.StringIO()
    configure_logging(LoggingSettings(level="debug", format="text", file=str(text_file)))
    text_handler = root.handlers[0]
    root.removeHandler(text_handler)  # so that configuring the JSON handler keeps it open
    configure_logging(LoggingSettings(level="debug", format="json"), stream=stream)
    root.addHandler(text_handler)
    root.addHandler(caplog.handler)  # last: it sees the records as hftdb's handlers leave them
    caplog.handler.setLevel(logging.DEBUG)
    try:
        yield Logs(text_file, stream, caplog)
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
            if handler is not caplog.handler:
                handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        for name, level in chatty.items():
            logging.getLogger(name).setLevel(level)


def test_log_lines_never_show_a_secret_text_json_traceback_stack_and_extras(logs):
    Credentials(api_key=API_KEY, api_secret=API_SECRET, passphrase=PASSPHRASE)
    enc = quote(DB_PASSWORD, safe="")
    log = logging.getLogger("hftdb.test_secrets")
    log.warning("connecting to %s", f"postgresql://{ROLE}:{enc}@db/x")
    log.warning("connecting to %s and %s", f"{ROLE}:{enc}@db/x", f"host=db password='{DB_PASSWORD}'")
    log.error("bybit said %r", {"retMsg": f"error sign! origin_string[1{API_KEY}5000]"}, extra={"body": API_SECRET})
    log.info("stack", extra={"nested": {"passphrase": PASSPHRASE}}, stack_info=True)
    log.warning("a format its arguments do not fit: %d", f"key {API_KEY}")
    try:
        raise RuntimeError(f"refused postgresql://{ROLE}:{enc}@db/x with key {API_KEY}")
    except RuntimeError:
        log.exception("failed")
    out = logs.everything()
    assert_clean(out, "the log")
    assert out.count(f"postgresql://{ROLE}:***@db/x") >= 4
    lines = logs.json_lines()
    assert [line["msg"] for line in lines][0] == f"connecting to postgresql://{ROLE}:***@db/x"
    assert "RuntimeError" in lines[-1]["exc"] and lines[2]["body"] == "***"


# -- a server that really asks for a password --------------------------------------------------------------


class PasswordServer:
    """A private embedded server on which ROLE logs in with DB_PASSWORD (scram-sha-256 on the Unix socket)."""

    def __init__(self, server: EmbeddedServer, socket_dir: str) -> None:
        self.server = server
        self.socket_dir = socket_dir

    def dsn(self, password: str | None = DB_PASSWORD, *, database: str = "postgres") -> str:
        auth = ROLE if password is None else f"{ROLE}:{quote(password, safe='')}"
        return f"postgresql://{auth}@/{database}?host={self.socket_dir}"


@pytest.fixture(scope="module")
async def password_server(tmp_path_factory):
    server = EmbeddedServer(tmp_path_factory.mktemp("pwpg") / "data")
    admin = await server.start()
    try:
        conn = await asyncpg.connect(admin)
        try:
            # A role name and password cannot be bind parameters; format() quotes them as the server parses them.
            create = await conn.fetchval("SELECT format('CREATE ROLE %I LOGIN SUPERUSER PASSWORD %L', $1::text, $2::text)",
                                         ROLE, DB_PASSWORD)
            await conn.execute(create)
            await conn.execute(f'CREATE DATABASE hftdb_secrets OWNER "{ROLE}"')
            hba = server.data_dir / "pg_hba.conf"
            hba.write_text(f"local all {ROLE} scram-sha-256\n" + hba.read_text())
            await conn.fetchval("SELECT pg_reload_conf()")
        finally:
            await conn.close()
        socket_dir = dict(p.split("=", 1) for p in urlsplit(admin).query.split("&"))["host"]
        pw = PasswordServer(server, socket_dir)
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(pw.dsn(WRONG_PASSWORD))  # the server really checks it
        (await asyncpg.connect(pw.dsn())).terminate()
        yield pw
    finally:
        await server.stop()


async def test_wrong_password_unreachable_host_and_bad_port_leak_nothing(password_server, logs, tmp_path, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", PG_PASSWORD)
    cfg = msgspec.structs.replace(settings(tmp_path), database=DatabaseSettings(connect_timeout=2.0))
    seen: list[str] = []
    cases = [
        password_server.dsn(WRONG_PASSWORD),
        password_server.dsn(None),  # no password in the DSN: asyncpg sends $PGPASSWORD, which is wrong too
        f"postgresql://{ROLE}:{quote(DB_PASSWORD, safe='')}@127.0.0.1:1/hftdb",  # nothing listens on port 1
        f"{ROLE}:{quote(DB_PASSWORD, safe='')}@127.0.0.1:1/hftdb",
        f"postgresql://{ROLE}:{quote(DB_PASSWORD, safe='')}@127.0.0.1:http/hftdb",
    ]
    for dsn in cases:
        try:
            db = DatabaseManager(dsn, settings=cfg)
        except HftdbError as exc:
            seen.append(_exc_text(exc))
            continue
        seen.append(repr(db))
        with pytest.raises((HftdbError, asyncpg.PostgresError)) as info:
            await db.initialize()
        seen.append(_exc_text(info.value))
        seen.append(repr(db))
        logging.getLogger("hftdb.test_secrets").error("initialize failed", exc_info=info.value)
    out = "\n".join(seen) + logs.everything()
    assert "password authentication failed" in out and "Connect call failed" in out and "not a number" in out
    assert_clean(out, "errors, reprs and logs")


async def test_cli_against_the_password_server_leaks_nothing(password_server, tmp_path):
    runs = {
        "right password": dict(HFTDB_DSN=password_server.dsn(database="hftdb_secrets")),
        "wrong password": dict(HFTDB_DSN=password_server.dsn(WRONG_PASSWORD)),
        "wrong PGPASSWORD": dict(HFTDB_DSN=password_server.dsn(None), PGPASSWORD=PG_PASSWORD),
        "unreachable": dict(HFTDB_DSN=f"postgresql://{ROLE}:{quote(DB_PASSWORD, safe='')}@127.0.0.1:1/hftdb",
                            HFTDB_DATABASE_CONNECT_TIMEOUT="2"),
    }
    outputs = {}
    for name, env in runs.items():
        commands = ([["migrate", "up"], ["status"], ["stats"], ["backup", str(tmp_path / "b.dump")]]
                    if name == "right password" else [["status"], ["migrate", "status"]])
        for command in commands:
            proc = await asyncio.to_thread(_hftdb, command, tmp_path, **{"PGPASSWORD": PG_PASSWORD, **env})
            outputs[name, command[-1]] = proc
            assert "Traceback" not in proc.stderr, (name, command, proc.stderr)
            assert_clean(proc.stdout + proc.stderr, f"hftdb {' '.join(command)} ({name})")
    assert outputs["right password", "status"].returncode == 0, outputs["right password", "status"].stderr
    assert f"{ROLE}:***@" in outputs["right password", "status"].stdout
    for name in ("wrong password", "wrong PGPASSWORD", "unreachable"):
        proc = outputs[name, "status"]
        assert proc.returncode == 1 and proc.stderr.startswith("hftdb: "), proc.stderr
    assert "password authentication failed" in outputs["wrong password", "status"].stderr


@pytest.mark.slow
async def test_a_database_outage_leaks_nothing(password_server, logs, tmp_path):
    cfg = msgspec.structs.replace(settings(tmp_path), database=DatabaseSettings(connect_timeout=5.0),
                                  reads=ReadSettings(replicas=(password_server.dsn(database="hftdb_secrets"),)))
    seen: list[str] = []
    db = DatabaseManager(password_server.dsn(database="hftdb_secrets"), settings=cfg)
    await db.initialize()
    try:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        await db.insert_book_ticker_snapshots(tickers(10))
        await db.flush()
        seen += [repr(db), repr(cfg), repr(db.settings), str(db.settings.database)]
        await password_server.server.kill()
        await db.insert_book_ticker_snapshots(tickers(10, start_id=10))
        with pytest.raises(Exception) as info:  # noqa: PT011 - whatever flush raises must not carry the password
            await db.flush(timeout=1.0)
        seen.append(_exc_text(info.value))
        health = await db.health_check(timeout=1.0)
        assert not health["ok"]
        seen.append(json.dumps(health, default=str))
        seen.append(json.dumps(db.writer_stats("book_tickers"), default=str))
        assert db.writer_stats("book_tickers")["retries"] > 0 or db.writer_stats("book_tickers")["batches_spooled"] > 0
    finally:
        await password_server.server.start_again()
        await db.close(timeout=30)
    async with DatabaseManager(password_server.dsn(database="hftdb_secrets"), settings=cfg) as again:
        async with again.connection() as conn:
            assert await conn.fetchval("SELECT count(*) FROM book_tickers") == 20
    out = "\n".join(seen) + logs.everything()
    assert "***" in out
    assert_clean(out, "outage errors, reprs and logs")


# -- exchanges: a refused signature, against the simulator ---------------------------------------------------


@pytest.fixture
async def keyed_sim():
    sim = ExchangeSimulator(rate=50, symbols=3, seed=5,
                            credentials=SimCredentials(api_key=API_KEY, api_secret=API_SECRET, passphrase=PASSPHRASE))
    async with sim:
        yield sim


async def test_the_simulated_bybit_echoes_the_key_like_the_real_one(keyed_sim):
    # The battery below is only meaningful if the refusal really quotes the key (real Bybit: "error sign!
    # origin_string[<ts><api key><recv window><query>]"); Binance and OKX answer a bad signature without echoing.
    import aiohttp

    url = keyed_sim.rest_url(ExchangeName.BYBIT_LINEAR) + "/v5/account/wallet-balance?accountType=UNIFIED"
    headers = {"X-BAPI-API-KEY": API_KEY, "X-BAPI-TIMESTAMP": str(keyed_sim.hosts["bybit"].now_ms()),
               "X-BAPI-RECV-WINDOW": "5000", "X-BAPI-SIGN": "00" * 32}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        body = await resp.text()
    assert "error sign!" in body and API_KEY in body


@pytest.mark.parametrize("source", ["env", "secrets_file"])
@pytest.mark.parametrize("venue", list(ExchangeName), ids=str)
async def test_a_refused_signature_leaks_no_key_secret_or_passphrase(keyed_sim, logs, tmp_path, monkeypatch, venue, source):
    family = venue.value.split("_")[0].upper()
    for prefix in (venue.value.upper(), family):
        for suffix in ("API_KEY", "API_SECRET", "API_PASSPHRASE"):
            monkeypatch.delenv(f"{prefix}_{suffix}", raising=False)
    secrets_file = None
    if source == "env":
        monkeypatch.setenv(f"{family}_API_KEY", API_KEY)
        monkeypatch.setenv(f"{family}_API_SECRET", WRONG_SECRET)
        monkeypatch.setenv(f"{family}_API_PASSPHRASE", PASSPHRASE)
    else:
        secrets_file = tmp_path / "secrets.toml"
        secrets_file.write_text(f'[{family.lower()}]\napi_key = "{API_KEY}"\napi_secret = "{WRONG_SECRET}"\n'
                                f'passphrase = "{PASSPHRASE}"\n')
    adapter = create_adapter(venue, _NoSink(), rest_url=keyed_sim.rest_url(venue), ws_url=keyed_sim.ws_url(venue),
                             secrets_file=secrets_file, reconnect=Backoff(initial=0.01, maximum=0.05), timeout=5.0)
    seen: list[str] = []
    async with adapter:
        with pytest.raises(SignatureError) as info:
            await adapter.fetch_balances()
        seen += [_exc_text(info.value), info.value.body, repr(adapter), str(adapter)]
        poller = asyncio.create_task(adapter.run_balance_poller(0.01))
        try:
            await adapter.wait_until(lambda s: s.rest_errors >= 3, timeout=10)
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
    out = "\n".join(seen) + logs.everything()
    assert "balance request refused" in out
    if venue.value.startswith("bybit"):
        assert "error sign! origin_string[" in out and "***" in out
    assert_clean(out, f"{venue.value} refusal")


class _NoSink:
    """A sink for adapters that only poll balances here: nothing else is asked of it."""

    async def insert_exchange(self, exchange):  # pragma: no cover - not called by a balance poll
        raise AssertionError("not used")


# -- reprs -------------------------------------------------------------------------------------------------


def test_reprs_show_no_secret():
    enc = quote(DB_PASSWORD, safe="")
    s = load_settings(environ={"HFTDB_DSN": f"postgresql://{ROLE}:{enc}@db/hftdb",
                               "HFTDB_READS_REPLICAS": json.dumps([f"postgresql://{ROLE}:{enc}@replica/hftdb"])})
    creds = Credentials(api_key=API_KEY, api_secret=API_SECRET, passphrase=PASSPHRASE)
    db = DatabaseManager(settings=s)
    adapter = create_adapter(ExchangeName.OKX_SPOT, _NoSink(), credentials=creds)
    target = Target(dsn=s.database.dsn, description=redact(s.database.dsn))
    rest = RestClient(f"https://{ROLE}:{quote(DB_PASSWORD, safe='')}@api.example", name="x", backoff=Backoff())
    for obj in (s, s.database, s.reads, creds, db, adapter, target, rest):
        assert_clean(repr(obj) + str(obj), type(obj).__name__)
    assert f"{ROLE}:***@db" in repr(s)
    assert API_KEY[-4:] not in repr(creds)  # (it showed the key's last four characters)


def test_exchange_errors_built_from_bodies_are_redacted():
    Credentials(api_key=API_KEY, api_secret=API_SECRET, passphrase=PASSPHRASE)
    exc = SignatureError(f"bybit GET /v5: refused: error sign! origin_string[1{API_KEY}5000]", status=200,
                         body=f'{{"retMsg":"error sign! origin_string[1{API_KEY}5000]"}}')
    assert_clean(_exc_text(exc) + exc.body, "SignatureError")
    assert_clean(_exc_text(ExchangeError(f"okx: {PASSPHRASE}")), "ExchangeError")
    assert_clean(_exc_text(DatabaseUnavailableError(f"cannot connect to {ROLE}:{DB_PASSWORD}@db/x")), "DatabaseUnavailableError")


async def test_the_metrics_endpoints_star_what_the_snapshot_carries():
    # What goes out on the network is redacted as a whole, like a log line: a secret that reached the snapshot by
    # any way (an error's text, a DSN) never leaves the process.
    register_secret(API_SECRET)
    leak = {"last_error": f"cannot connect to postgresql://{ROLE}:{quote(DB_PASSWORD, safe='')}@db/x ({API_SECRET})",
            "ok": True}
    async with MetricsServer(_async(leak), _async(leak), port=0) as server:
        async with aiohttp.ClientSession() as session:
            for path in ("/stats", "/health", "/metrics"):
                async with session.get(server.url + path) as response:
                    assert_clean(await response.text(), path)


def _async(value: dict) -> Callable[[], Awaitable[dict]]:
    async def get() -> dict:
        return value
    return get

"""The embedded PostgreSQL: a pgserver-managed cluster in a local data directory.

pgserver ships PostgreSQL's binaries in its wheel, so a machine with only Python gets a real server. The cluster
persists in ``data_dir`` across runs; each process holds a handle, and pgserver stops the server when the last
handle in any process is released. The server listens on a Unix socket only.

The server starts with glibc's malloc told to keep freed memory (:data:`MALLOC_ENV`). By default glibc hands
allocations of 128 kB and more to mmap and trims the heap top past twice that, so a backend that builds one large
value per query (a whole exchange's latest rows: 72 kB, in a string_agg state doubled to 128 kB) maps, faults in,
zeroes and unmaps the same pages on every call: most of the 47% of that backend's time perf found in the kernel on
the 2-core bench machine (docs/READS.md, "Server memory"). A commit's COPY is one CopyData message of its whole
group (asyncpg sends a buffer as one), which the backend reads into one buffer doubled up to its size: 8 MiB for
50,000 book tickers, 16 MiB for 100,000 (``commit_max_rows``). The thresholds cover that too: with the first ones
(4 and 16 MiB) that buffer was mapped and faulted in for every commit, 8-10% of the COPY's server CPU (perf), the
most of what a COPY over the socket cost beyond the same COPY from a file (docs/READS.md). A server hftdb does not
start is its operator's to tune the same way.

It also runs with a background writer that keeps ahead of bulk COPY (:data:`SERVER_SETTINGS`, set with ``ALTER
SYSTEM`` where the cluster still has PostgreSQL's default): once the stored rows outgrow ``shared_buffers``, every
page a COPY fills must first evict a dirty one, and with the stock background writer the COPY backend writes
nearly all of them itself, in the middle of its COPY.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import tempfile
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

import asyncpg

from ..errors import ConfigError, DatabaseUnavailableError, StateError

__all__ = ["MALLOC_ENV", "SERVER_SETTINGS", "EmbeddedServer", "bin_dir", "run_tool", "server_environ"]

logger = logging.getLogger(__name__)

# glibc's malloc, through its environment: allocations under 32 MiB from the heap (not a fresh mapping each),
# and the heap top given back to the kernel only past 64 MiB free (not after every large query or commit): the
# most glibc's own sliding threshold would reach (it stops at 32 MiB, trimming past twice that), fixed from the
# start. A backend keeps at most its own peak heap; other C libraries ignore these names.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}
_TUNABLE = {"MALLOC_MMAP_THRESHOLD_": "glibc.malloc.mmap_threshold",
            "MALLOC_TRIM_THRESHOLD_": "glibc.malloc.trim_threshold"}
_environ_lock = threading.Lock()

#: Settings the embedded cluster gets where it has PostgreSQL's default (an operator's own value, in
#: postgresql.conf or by ALTER SYSTEM, is kept). Past ``shared_buffers`` (128 MB, about 1.3M book rows) the stock
#: background writer (at most 100 pages per 200 ms) leaves nearly every eviction to the COPY backend: 10M book rows
#: replayed, 42k-105k writes of 8 kB by the COPY backends, 1.1-6.0 s of their time (pg_stat_io, track_io_timing),
#: none at 1M rows, which fit. With these the background writer wrote 99.7k-152k pages ahead of them in 0.66-1.31 s
#: of its own and the COPY backends wrote 47-157 (BENCHMARKS.md, "ingest-file"). It writes a dirty page only when
#: the clock sweep is about to reuse it, and sleeps when nothing is written.
SERVER_SETTINGS = {"bgwriter_delay": "10ms", "bgwriter_lru_maxpages": "1000", "bgwriter_lru_multiplier": "4"}


def server_environ() -> dict[str, str]:
    """This process's environment with each :data:`MALLOC_ENV` setting it does not make itself.

    A user's own value of either knob wins, given as the same variable or as its tunable in ``GLIBC_TUNABLES``.
    """
    env = dict(os.environ)
    tunables = env.get("GLIBC_TUNABLES", "")
    for name, value in MALLOC_ENV.items():
        if name not in env and _TUNABLE[name] not in tunables:
            env[name] = value
    return env


@contextmanager
def _process_environ() -> Iterator[None]:
    # pgserver starts the server with this process's environment and takes none of its own; lend it ours for the
    # duration. The lock keeps two starts in this process from restoring each other's variables early.
    with _environ_lock:
        lent = {k: v for k, v in server_environ().items() if os.environ.get(k) != v}
        os.environ.update(lent)
        try:
            yield
        finally:
            for k in lent:
                del os.environ[k]


def bin_dir() -> Path:
    """Directory of the PostgreSQL binaries that ship with pgserver (``pg_dump``, ``pg_ctl``, ``psql``...)."""
    from pgserver._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


#: How many started :class:`EmbeddedServer` objects of this process hold each data directory.
_HOLDERS: dict[Path, int] = {}


class EmbeddedServer:
    """A persistent PostgreSQL cluster in ``data_dir``, started and stopped through pgserver.

    >>> server = EmbeddedServer("./data/postgres")
    >>> dsn = await server.start()
    >>> await server.stop()
    """

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        if not str(data_dir).strip():
            raise ConfigError("[database] data_dir must not be empty: name the directory of the embedded server")
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._handle: Any = None
        self._dsn: str | None = None

    def __repr__(self) -> str:
        state = "running" if self._handle is not None else "stopped"
        return f"EmbeddedServer(data_dir={str(self.data_dir)!r}, {state})"

    @property
    def dsn(self) -> str:
        """Connection string for the running server (Unix socket, trust authentication)."""
        if self._dsn is None:
            raise StateError("the embedded server is not started")
        return self._dsn

    @property
    def pid(self) -> int | None:
        """Process id of the postmaster, or None when stopped."""
        info = self._read_postmaster()
        return info.pid if info is not None and info.is_running() else None

    async def start(self, *, timeout: float = 120.0) -> str:
        """Start (or attach to) the cluster, creating it on first use; return its DSN. Idempotent."""
        if self._handle is not None:
            return self.dsn
        failures: list[str] = []
        try:
            with _pgserver_failures(self.data_dir, failures):
                self._handle = await asyncio.wait_for(asyncio.to_thread(self._start_sync), timeout)
        except (subprocess.SubprocessError, OSError, AssertionError, asyncio.TimeoutError) as exc:
            if failures:
                logger.debug("pgserver's account of the failed start:\n%s", "\n".join(failures))
            log = self.data_dir / "log"
            reason = _start_failure(exc, failures, log, timeout=timeout)
            see = f"; see {log}" if log.is_file() else ""
            raise DatabaseUnavailableError(
                f"could not start the embedded PostgreSQL in {self.data_dir}: {reason}{see}") from exc
        _HOLDERS[self.data_dir] = _HOLDERS.get(self.data_dir, 0) + 1
        self._dsn = self._handle.get_uri()
        try:
            await self._apply_settings(self._dsn, timeout=timeout)
        except (asyncpg.PostgresError, OSError, asyncio.TimeoutError) as exc:
            # A server that runs but refuses the settings still serves: it is only slower under bulk loads.
            logger.warning("embedded PostgreSQL in %s: could not apply %s (%s: %s)", self.data_dir,
                           ", ".join(SERVER_SETTINGS), type(exc).__name__, exc)
        logger.info("embedded PostgreSQL running in %s (pid %s)", self.data_dir, self.pid)
        return self._dsn

    @staticmethod
    async def _apply_settings(dsn: str, *, timeout: float) -> None:
        conn = await asyncpg.connect(dsn, timeout=timeout)
        try:
            defaults = [r[0] for r in await conn.fetch(
                "SELECT name FROM pg_settings WHERE name = ANY($1::text[]) AND source = 'default'",
                list(SERVER_SETTINGS), timeout=timeout)]
            for name in defaults:
                # ALTER SYSTEM takes no parameters; names and values come from SERVER_SETTINGS only.
                await conn.execute(f"ALTER SYSTEM SET {name} = '{SERVER_SETTINGS[name]}'", timeout=timeout)
            if defaults:
                await conn.execute("SELECT pg_reload_conf()", timeout=timeout)
        finally:
            await conn.close()

    def _start_sync(self) -> Any:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (root shells, CI); it falls back sanely.
            warnings.simplefilter("ignore")
            import pgserver

            _check_data_dir(self.data_dir)
            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            with _process_environ():
                return pgserver.get_server(self.data_dir, cleanup_mode="stop")

    async def stop(self) -> None:
        """Release this object's hold; the server stops when no other process, and no other EmbeddedServer of this
        process on the same directory, holds it. Idempotent."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        self._dsn = None
        others = _HOLDERS.get(self.data_dir, 1) - 1
        if others > 0:
            # pgserver keeps one handle a process: released now, it would stop the server under the others
            # (two managers on one directory, one of them closed).
            _HOLDERS[self.data_dir] = others
            logger.info("embedded PostgreSQL in %s kept: %d more user(s) in this process", self.data_dir, others)
            return
        _HOLDERS.pop(self.data_dir, None)
        await asyncio.to_thread(handle.cleanup)
        logger.info("embedded PostgreSQL handle released (%s)", self.data_dir)

    async def restart(self, *, mode: Literal["smart", "fast", "immediate"] = "fast", timeout: float = 60.0) -> None:
        """Restart the server process, dropping every connection: for fault tests and operations.

        ``immediate`` is a crash restart (no checkpoint, recovery on start); ``fast`` rolls back open transactions.
        """
        if self._handle is None:
            raise StateError("the embedded server is not started")
        await self.pg_ctl(
            "restart", "-m", mode, "-w", "-t", str(int(timeout)), "-l", str(self.data_dir / "log"), timeout=timeout + 10
        )
        self._refresh_handle()

    async def kill(self) -> None:
        """Stop the server now (``pg_ctl stop -m immediate``), leaving the handle to :meth:`start_again`."""
        await self.pg_ctl("stop", "-m", "immediate", "-w")

    async def start_again(self, *, timeout: float = 60.0) -> None:
        """Start a server that :meth:`kill` stopped, with the options it had (socket directory included)."""
        if self._handle is not None and self._handle.system_user is not None:
            # As root, the server runs as pgserver's own user; it must still reach the data directory, whose
            # parents (e.g. pytest's 0700 temp dirs) may have been created or tightened since the first start.
            from pgserver.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.data_dir)
        opts = (self.data_dir / "postmaster.opts").read_text().split(None, 1)
        args = ["start", "-w", "-l", str(self.data_dir / "log")]
        if len(opts) > 1:
            # postmaster.opts holds the previous command line: the binary, then its options.
            args += ["-o", _strip_data_dir(opts[1])]
        await self.pg_ctl(*args, timeout=timeout)
        self._refresh_handle()

    def _refresh_handle(self) -> None:
        # pgserver remembers the postmaster it started; after a restart it would check (and later stop) the old,
        # dead process. Point it at the new one so release still stops the server.
        if self._handle is not None:
            from pgserver.utils import PostmasterInfo

            self._handle._postmaster_info = PostmasterInfo.read_from_pgdata(self.data_dir)

    def _read_postmaster(self) -> Any:
        from pgserver.utils import PostmasterInfo

        return PostmasterInfo.read_from_pgdata(self.data_dir)

    async def pg_ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``pg_ctl -D data_dir ARGS`` as the server's system user."""
        cmd = [str(bin_dir() / "pg_ctl"), "-D", str(self.data_dir), *args]
        user = getattr(self._handle, "system_user", None)
        return await asyncio.to_thread(run_tool, cmd, user=user, timeout=timeout)


def _check_data_dir(path: Path) -> None:
    # What initdb would refuse, said before pgserver runs it (and, as root, hands the directory to its own user):
    # in the setting's words, not as initdb's failed command line.
    where = f"[database] data_dir = {str(path)!r}"
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{where} is a file, not a directory: name a directory for the embedded PostgreSQL")
    if path.is_dir():
        if (path / "PG_VERSION").exists():
            return
        try:
            entries = sorted(entry.name for entry in path.iterdir())
        except OSError:
            return  # unreadable: pgserver's own error says why
        if entries:
            shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
            raise ConfigError(f"{where} is not empty ({shown}) and holds no PostgreSQL cluster (no PG_VERSION): "
                              "name a new or empty directory, or an embedded cluster's own")
        return
    blocker = next((parent for parent in path.parents if parent.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(f"{where}: {blocker} is a file, not a directory")


@contextmanager
def _pgserver_failures(data_dir: Path, into: list[str]) -> Iterator[None]:
    """While starting the server in ``data_dir``, take pgserver's ERROR records about it (a dump of the failed
    command's output, the server log) into ``into`` instead of the log: the start raises one line made of them."""
    def take(record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit: let logging report them
            return True
        if str(data_dir) not in message:
            return True
        into.append(message)
        return False

    pg_logger = logging.getLogger("pgserver")
    pg_logger.addFilter(take)
    try:
        yield
    finally:
        pg_logger.removeFilter(take)


def _start_failure(exc: BaseException, failures: list[str], log: Path, *, timeout: float) -> str:
    """Why the start failed, in one line: the tool's own ``error:`` line, and the server log's last FATAL one."""
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, subprocess.TimeoutExpired):
        return f"{Path(str(exc.cmd[0])).name if exc.cmd else 'a command'} did not finish within {exc.timeout:g} s"
    if isinstance(exc, subprocess.CalledProcessError):
        tool = Path(str(exc.cmd[0])).name if exc.cmd else "a command"
        lines = [line.strip() for text in failures for line in text.splitlines() if line.strip()]
        said = next((line for line in lines if line.startswith(tool + ":") and ": error:" in line), None) \
            or next((line for line in lines if line.startswith(tool + ":")), None) \
            or f"{tool} exited with status {exc.returncode}"
        server = _last_fatal(log)
        return said + (f"; the server log says: {server}" if server else "")
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _last_fatal(log: Path) -> str | None:
    # The server's own reason for stopping: its last FATAL or PANIC line, else the last line of a short log.
    try:
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - 65536))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    fatal = [line for line in lines if "FATAL:" in line or "PANIC:" in line]
    if fatal:
        return fatal[-1]
    return lines[-1] if lines else None


def run_tool(cmd: list[str], *, user: str | None, timeout: float) -> str:
    """Run a PostgreSQL tool ``cmd`` (blocking) as system ``user`` (None: this process's user) in the server's
    environment; its output (stdout and stderr together), or :class:`DatabaseUnavailableError` if it fails."""
    # Not pipes: a postmaster started by pg_ctl inherits them and holds them open, so reading them never ends.
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                              timeout=timeout, user=user, env=server_environ())
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise DatabaseUnavailableError(f"{Path(cmd[0]).name} {' '.join(cmd[3:])} failed: {text.strip()}")
    return text


def _strip_data_dir(opts: str) -> str:
    # postmaster.opts quotes each argument: "-D" "/path" "-h" "" "-k" "/sock". Drop -D and its value; pg_ctl adds it.
    import shlex

    parts = shlex.split(opts)
    out: list[str] = []
    skip = False
    for part in parts:
        if skip:
            skip = False
            continue
        if part == "-D":
            skip = True
            continue
        out.append(part)
    return " ".join(shlex.quote(p) for p in out)

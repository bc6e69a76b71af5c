"""A real Citus cluster for the tests: a coordinator and two workers on loopback TCP, started by the tests.

It needs a PostgreSQL installation with the ``citus`` extension installed: ``$HFTDB_CITUS_PG_BIN`` (its ``bin``
directory) when set, else the first ``/usr/lib/postgresql/*/bin`` whose ``pg_config --pkglibdir`` holds
``citus.so``. Without one, :func:`find_citus_bin` returns None with the reason, and the Citus tests are skipped
(no cluster is started, nothing is waited for). hftdb never builds or ships Citus: install it from the Citus
project's packages (see README.md).

Each node is a data directory under a private temporary directory, listening on ``127.0.0.1`` at a port in
56400-56499, with ``shared_preload_libraries = citus``. As root, the nodes run as the ``postgres`` user
(PostgreSQL refuses to run as root). :meth:`CitusCluster.new_database` makes a fresh database on every node with
the extension created and the workers registered, so each test starts empty.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import asyncpg

PORT_RANGE = range(56400, 56500)


def find_citus_bin() -> tuple[Path | None, str]:
    """The ``bin`` directory of a PostgreSQL with Citus installed, or None and why there is none."""
    env = os.environ.get("HFTDB_CITUS_PG_BIN")
    candidates = [Path(env)] if env else [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for bin_dir in candidates:
        pg_config = bin_dir / "pg_config"
        if not pg_config.is_file():
            continue
        try:
            libdir = subprocess.run([str(pg_config), "--pkglibdir"], capture_output=True, text=True, timeout=10,
                                    check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if (Path(libdir) / "citus.so").is_file() and (bin_dir / "postgres").is_file():
            return bin_dir, ""
    where = f"$HFTDB_CITUS_PG_BIN={env}" if env else "/usr/lib/postgresql/*/bin"
    return None, (f"no PostgreSQL with the citus extension installed ({where}: no citus.so in pg_config --pkglibdir);"
                  " install Citus (https://docs.citusdata.com) or set HFTDB_CITUS_PG_BIN")


def _free_ports(n: int, *, skip: set[int] = frozenset()) -> list[int]:
    ports = []
    for port in PORT_RANGE:
        if port in skip:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"fewer than {n} free ports in {PORT_RANGE.start}-{PORT_RANGE.stop - 1}")


class Node:
    """One PostgreSQL server of the cluster, controlled with pg_ctl."""

    def __init__(self, cluster: CitusCluster, name: str, port: int) -> None:
        self.cluster = cluster
        self.name = name
        self.port = port
        self.data_dir = cluster.root / name

    def dsn(self, database: str = "postgres") -> str:
        """DSN of ``database`` on this node (trust authentication on loopback)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def init(self, *, citus: bool = True) -> None:
        """initdb and the configuration; ``citus=False`` makes a plain server of the same installation."""
        await self.cluster.run("initdb", "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                               "--no-sync")
        conf = {
            "port": self.port,
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.cluster.root}'",
            "shared_preload_libraries": "'citus'" if citus else "''",
            "max_connections": 300,
            # Citus commits every distributed write with two-phase commit: the workers need prepared transactions.
            "max_prepared_transactions": 300,
            "citus.shard_count": 8,
            # A test restarts nodes: recover a dropped 2PC transaction in 1 s, not the default minute.
            "citus.recover_2pc_interval": "'1s'",
            "citus.node_connection_timeout": "'5s'",
            # Shard moves of a rebalance copy by logical replication, so writes go on during them.
            "wal_level": "logical",
            # Durability against a process crash is what the fault tests need; an OS crash is not tested.
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "'64MB'",
            "log_min_messages": "warning",
        }
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write("\n# hftdb tests (tests/citus_cluster.py)\n")
            f.writelines(f"{k} = {v}\n" for k, v in conf.items())

    async def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        await self.cluster.run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60", "-l",
                               str(self.data_dir / "log"), "start")

    async def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate`` is a crash: no shutdown checkpoint, clients cut)."""
        await self.cluster.run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60", "-m", mode, "stop")

    async def restart(self, mode: str = "fast") -> None:
        """Stop with ``mode`` and start again."""
        await self.stop(mode)
        await self.start()

    async def execute(self, sql: str, *args: object, database: str = "postgres") -> object:
        """Run one statement on this node and return its first value."""
        conn = await asyncpg.connect(self.dsn(database), timeout=30)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()


class CitusCluster:
    """A coordinator and ``workers`` workers on loopback, in a private temporary directory."""

    def __init__(self, bin_dir: Path, *, workers: int = 2) -> None:
        self.bin_dir = bin_dir
        self.user = "postgres" if os.geteuid() == 0 else None
        # Not under pytest's basetemp: its directories are private to root, and the nodes run as postgres.
        self.root = Path(tempfile.mkdtemp(prefix="hftdb-citus-"))
        if self.user is not None:
            shutil.chown(self.root, self.user, self.user)
        ports = _free_ports(workers + 1)
        self.coordinator = Node(self, "coordinator", ports[0])
        self.workers = [Node(self, f"worker{i}", p) for i, p in enumerate(ports[1:], 1)]
        self.databases: list[str] = []
        self.others: list[Node] = []  # servers outside the cluster (add_plain_node)

    @property
    def nodes(self) -> list[Node]:
        """The coordinator, then the workers."""
        return [self.coordinator, *self.workers]

    async def run(self, tool: str, *args: str) -> str:
        """Run one of the installation's programs as the nodes' user; raise with its output if it fails."""
        cmd = [str(self.bin_dir / tool), *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "LD_LIBRARY_PATH"}
        if self.user is not None:
            env["HOME"] = pwd.getpwnam(self.user).pw_dir

        def go() -> str:
            # Not pipes: a postmaster started by pg_ctl inherits them and holds them open.
            with tempfile.TemporaryFile("w+") as out:
                proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      text=True, timeout=180, user=self.user, env=env, cwd=self.root)
                out.seek(0)
                text = out.read()
            if proc.returncode != 0:
                raise RuntimeError(f"{tool} {' '.join(args)} failed: {text.strip()}")
            return text

        return await asyncio.to_thread(go)

    async def start(self) -> None:
        """Create and start every node."""
        # Whatever becomes of the event loop that would run stop(), no server outlives the test process.
        atexit.register(self._stop_now)
        await asyncio.gather(*(n.init() for n in self.nodes))
        await asyncio.gather(*(n.start() for n in self.nodes))

    def _stop_now(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "LD_LIBRARY_PATH"}
        for node in [*self.nodes, *self.others]:
            if (node.data_dir / "postmaster.pid").exists():
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    subprocess.run([str(self.bin_dir / "pg_ctl"), "-D", str(node.data_dir), "-w", "-t", "60", "-m",
                                    "immediate", "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   stdin=subprocess.DEVNULL, timeout=90, user=self.user, env=env, cwd=self.root)
        shutil.rmtree(self.root, ignore_errors=True)

    async def add_worker(self) -> Node:
        """Create and start one more worker (not yet in any database's metadata: ``citus_add_node`` does that)."""
        (port,) = _free_ports(1, skip={n.port for n in self.nodes} | {n.port for n in self.others})
        node = Node(self, f"worker{len(self.workers) + 1}", port)
        await node.init()
        await node.start()
        self.workers.append(node)
        return node

    async def add_plain_node(self, name: str) -> Node:
        """Create and start a server of the same installation without Citus (not part of the cluster), for a
        single-server comparison."""
        (port,) = _free_ports(1, skip={n.port for n in self.nodes} | {n.port for n in self.others})
        node = Node(self, name, port)
        await node.init(citus=False)
        await node.start()
        self.others.append(node)
        return node

    async def prepare_node(self, node: Node, database: str) -> None:
        """Make ``database`` on ``node`` with the citus extension (what every node of a database needs)."""
        await node.execute(f'CREATE DATABASE "{database}"')
        await node.execute("CREATE EXTENSION citus", database=database)

    async def new_database(self, *, workers: int | None = None) -> str:
        """A fresh database on the coordinator and the first ``workers`` workers (default all), the workers
        registered; return the coordinator's DSN for it."""
        name = "hftdb_c_" + uuid.uuid4().hex[:10]
        members = self.workers[: len(self.workers) if workers is None else workers]
        await asyncio.gather(*(self.prepare_node(n, name) for n in [self.coordinator, *members]))
        conn = await asyncpg.connect(self.coordinator.dsn(name), timeout=30)
        try:
            await conn.execute("SELECT citus_set_coordinator_host('127.0.0.1', $1)", self.coordinator.port)
            for w in members:
                await conn.execute("SELECT citus_add_node('127.0.0.1', $1)", w.port)
        finally:
            await conn.close()
        self.databases.append(name)
        return self.coordinator.dsn(name)

    async def drop_database(self, name: str) -> None:
        """Drop ``name`` on every node that has it."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                await node.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def stop(self) -> None:
        """Stop every node and remove the cluster's directory."""
        for node in [*self.nodes, *self.others]:
            with contextlib.suppress(Exception):
                await node.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self._stop_now)

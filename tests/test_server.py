import asyncio
import os
import sys
from pathlib import Path

import asyncpg
import pytest

from hftdb.db.server import MALLOC_ENV, SERVER_SETTINGS, EmbeddedServer, server_environ


async def test_embedded_server_persists_and_restarts(tmp_path):
    server = EmbeddedServer(tmp_path / "pg")
    dsn = await server.start()
    assert await server.start() == dsn  # idempotent
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
    await conn.close()
    first_pid = server.pid
    await server.restart(mode="immediate")
    assert server.pid not in (None, first_pid)
    await server.stop()
    assert server.pid is None
    await server.stop()  # idempotent

    again = EmbeddedServer(tmp_path / "pg")
    dsn = await again.start()
    conn = await asyncpg.connect(dsn)
    assert await conn.fetchval("SELECT v FROM kept") == 42
    await conn.close()
    await again.stop()


async def test_two_users_of_one_directory_in_one_process_stop_it_only_together(tmp_path):
    # pgserver keeps one handle a process: the first to stop once stopped the server under the other (two
    # DatabaseManagers on one data_dir, one of them closed; the other's next read found no server).
    first, second = EmbeddedServer(tmp_path / "pg"), EmbeddedServer(tmp_path / "pg")
    dsn = await first.start()
    assert await second.start() == dsn
    await first.stop()
    conn = await asyncpg.connect(dsn)
    assert await conn.fetchval("SELECT 1") == 1
    await conn.close()
    assert second.pid is not None
    await second.stop()
    assert second.pid is None


async def _settings_when(dsn: str, wanted: dict[str, str]) -> dict[str, str]:
    # pg_reload_conf() only signals the postmaster: a session started after it has read the files sees them.
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        conn = await asyncpg.connect(dsn)
        try:
            got = {r[0]: r[1] for r in await conn.fetch(
                "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY($1::text[])", list(wanted))}
        finally:
            await conn.close()
        if got == wanted or asyncio.get_running_loop().time() > deadline:
            return got
        await asyncio.sleep(0.05)


async def test_embedded_server_sets_its_background_writer_and_keeps_an_operators_own(tmp_path):
    server = EmbeddedServer(tmp_path / "pg")
    dsn = await server.start()
    try:
        assert await _settings_when(dsn, SERVER_SETTINGS) == SERVER_SETTINGS
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("ALTER SYSTEM SET bgwriter_delay = '150ms'")  # the operator's own
        finally:
            await conn.close()
    finally:
        await server.stop()
    again = EmbeddedServer(tmp_path / "pg")
    dsn = await again.start()
    try:
        kept = {**SERVER_SETTINGS, "bgwriter_delay": "150ms"}
        assert await _settings_when(dsn, kept) == kept
    finally:
        await again.stop()


def test_repr_names_directory_not_secrets(tmp_path):
    server = EmbeddedServer(tmp_path / "pg")
    assert "stopped" in repr(server)


# The MALLOC_ variables of the environment pytest started with (collection runs before any server starts).
_OWN_MALLOC = {k for k in os.environ if k.startswith("MALLOC_")}


def test_server_environ_adds_only_the_settings_the_user_does_not_make(monkeypatch):
    for name in [k for k in os.environ if k.startswith("MALLOC_")] + ["GLIBC_TUNABLES"]:
        monkeypatch.delenv(name, raising=False)
    assert {k: v for k, v in server_environ().items() if k.startswith("MALLOC_")} == MALLOC_ENV
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # another knob: kept alongside
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1")  # the same knob: the user's value wins
    env = server_environ()
    assert (env["MALLOC_ARENA_MAX"], env["MALLOC_TRIM_THRESHOLD_"]) == ("2", "1")
    assert env["MALLOC_MMAP_THRESHOLD_"] == MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")  # or as a tunable
    assert "MALLOC_MMAP_THRESHOLD_" not in server_environ()


def _environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _minor_faults(pid: int) -> int:
    # /proc/PID/stat: the command name is in parentheses and may hold spaces; minflt is the 8th field after it.
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the variables are glibc's")
async def test_embedded_server_runs_with_malloc_keeping_freed_memory(fault_server):
    wanted = {k: v for k, v in server_environ().items() if k.startswith("MALLOC_")}
    own = {k: os.environ[k] for k in _OWN_MALLOC}
    if "glibc.malloc" not in os.environ.get("GLIBC_TUNABLES", ""):
        assert wanted == {**MALLOC_ENV, **own}
    assert {k: v for k, v in _environ_of(fault_server.pid).items() if k.startswith("MALLOC_")} == wanted
    # Lent to pgserver for the start only: this process's environment is as it was.
    assert {k for k in os.environ if k.startswith("MALLOC_")} == _OWN_MALLOC
    await fault_server.restart()  # pg_ctl restart: the new postmaster gets them too
    assert {k: v for k, v in _environ_of(fault_server.pid).items() if k.startswith("MALLOC_")} == wanted

    # What they are for: a query that builds one 72 kB value (a whole exchange's packed latest rows) pages nothing
    # in once its backend is warm. With glibc's defaults the value's 128 kB buffer is mapped and unmapped, or the
    # heap top trimmed, on every call: 54 faults a query on the bench machine (5,400 over these 100).
    conn = await asyncpg.connect(fault_server.dsn)
    try:
        await conn.execute("CREATE TABLE rows72 AS SELECT int8send(g) || decode(repeat('ab', 64), 'hex') AS packed"
                           " FROM generate_series(1, 1000) g")
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        query = "SELECT string_agg(packed, NULL) FROM rows72"
        for _ in range(20):
            assert len(await conn.fetchval(query)) == 72_000
        before = _minor_faults(pid)
        for _ in range(100):
            await conn.fetchval(query)
        assert _minor_faults(pid) - before < 100

        # A commit's COPY: one CopyData message of the whole group, read into one buffer doubled up to its size
        # (8 MiB here). Under the mmap threshold, a warm backend reuses it; over it (4 MiB, the first setting),
        # every COPY mapped and faulted it in: ~2,000 faults each on the bench machine.
        await conn.execute("CREATE TABLE sink (v bytea)")
        value = b"x" * 1000
        payload = (b"PGCOPY\n\xff\r\n\x00" + bytes(8)
                   + (b"\x00\x01" + len(value).to_bytes(4, "big") + value) * 5_000 + b"\xff\xff")
        for _ in range(3):
            # (WHERE false: the rows are read and dropped; nothing but the message buffer is touched.)
            await conn.copy_to_table("sink", source=memoryview(payload), format="binary", where="false")
        before = _minor_faults(pid)
        for _ in range(10):
            await conn.copy_to_table("sink", source=memoryview(payload), format="binary", where="false")
        assert _minor_faults(pid) - before < 500
    finally:
        await conn.close()

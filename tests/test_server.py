import asyncpg

from hftdb.server import EmbeddedServer


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


def test_repr_names_directory_not_secrets(tmp_path):
    server = EmbeddedServer(tmp_path / "pg")
    assert "stopped" in repr(server)

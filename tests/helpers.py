"""Small builders shared by the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hftdb import BookTicker, now_us
from hftdb.config import ArchiveSettings, CacheSettings, DatabaseSettings, Settings, StorageSettings, WriterSettings


def settings(tmp_path: Path, **writer: object) -> Settings:
    """Settings for a test: spool under tmp_path, short retries, any writer overrides."""
    w = {"spool_dir": str(tmp_path / "spool"), "retry_initial_ms": 20.0, "retry_max_ms": 200.0, **writer}
    return Settings(
        database=DatabaseSettings(data_dir=str(tmp_path / "pg"), connect_timeout=20.0),
        writer=WriterSettings(**w),  # type: ignore[arg-type]
        cache=CacheSettings(),
        storage=StorageSettings(),
        archive=ArchiveSettings(root=str(tmp_path / "archive")),
    )


def tickers(n: int, *, start_id: int = 0, exchange: str = "binance_spot", symbols: int = 10,
            base_ts: int | None = None) -> list[BookTicker]:
    """``n`` valid tickers with unique, consecutive update ids (for exactly-once counting)."""
    t = base_ts or now_us()
    return [
        BookTicker(exchange, f"SYM{i % symbols}USDT", 100.0 + i % 7, 1.5, 100.5 + i % 7, 2.5, t + i,
                   exchange_ts=t + i - 5, update_id=start_id + i)
        for i in range(n)
    ]


class SQL:
    """A test's own statements on a DatabaseManager's pool, through its public ``connection()`` seam (timestamps
    as integer Unix microseconds, like hftdb's own queries)."""

    def __init__(self, db: Any) -> None:
        self._db = db

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self._db.connection() as conn:
            return await conn.fetchval(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> Any:
        async with self._db.connection() as conn:
            return await conn.fetchrow(query, *args)

    async def fetch(self, query: str, *args: Any) -> Any:
        async with self._db.connection() as conn:
            return await conn.fetch(query, *args)

    async def execute(self, query: str, *args: Any) -> Any:
        async with self._db.connection() as conn:
            return await conn.execute(query, *args)


def sql(db: Any) -> SQL:
    """:class:`SQL` on ``db``."""
    return SQL(db)

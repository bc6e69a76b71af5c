"""Small builders shared by the tests."""

from __future__ import annotations

from pathlib import Path

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

"""The Parquet tier: sealed partitions archived, verified and dropped; crashes at each step; reads across tiers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import sys
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import asyncpg
import msgspec
import pytest

from hftdb import (Balance, BookTicker, DatabaseError, DatabaseManager, ExchangeName, FundingRate, Symbol,
                   ValidationError, now_us)
from hftdb.db import partitions
from hftdb.read import archive
from hftdb.service import metrics
from hftdb.config import ArchiveSettings

from helpers import settings as base_settings
from helpers import sql

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
np = pytest.importorskip("numpy")

pytestmark = pytest.mark.timeout(240)

DAY_US = 86_400_000_000
# Three whole days, 20 to 18 days back (so all three are sealed and older than 10 days), plus rows of today.
DAY0 = (now_us() // DAY_US - 20) * DAY_US


def settings(tmp_path: Path, **archive_kw: object):
    s = base_settings(tmp_path)
    kw = {"root": str(tmp_path / "archive"), "row_group_rows": 64, "piece_rows": 128, **archive_kw}
    return msgspec.structs.replace(s, archive=ArchiveSettings(**kw))  # type: ignore[arg-type]


def _tickers(now: int) -> list[BookTicker]:
    rows = []
    names = (("binance_spot", "BTCUSDT"), ("binance_spot", "ETHUSDT"), ("okx_spot", "BTC-USDT"))
    for day in range(3):
        for i in range(150):
            ex, sym = names[i % 3]
            t = DAY0 + day * DAY_US + i * 1_000_000 + (i % 3)
            rows.append(BookTicker(ex, sym, 100.0 + i * 0.1, 0.5 + i, 100.25 + i * 0.1, 1.5, t,
                                   exchange_ts=None if i % 7 == 0 else t - 3,
                                   update_id=None if i % 5 == 0 else 10_000 + day * 1000 + i))
            if i % 11 == 0:  # two rows of one symbol with one receipt time: ties keep their order
                rows.append(BookTicker(ex, sym, 99.0, 9.0, 101.0, 9.5, t, exchange_ts=t - 1, update_id=None))
    for i in range(30):
        ex, sym = names[i % 3]
        rows.append(BookTicker(ex, sym, 200.0 + i, 1.0, 200.5 + i, 2.0, now - 1_000_000 + i, exchange_ts=now - 2_000_000,
                               update_id=50_000 + i))
    return rows


async def _seed(db: DatabaseManager) -> int:
    await db.insert_exchange(ExchangeName.BINANCE_SPOT)
    await db.insert_exchange(ExchangeName.OKX_SPOT)
    await db.insert_exchange(ExchangeName.BINANCE_USDM)
    now = now_us()
    tickers = _tickers(now)
    assert await db.insert_book_ticker_snapshots(tickers) == len(tickers)
    rates = []
    for day in range(3):
        for i in range(40):
            t = DAY0 + day * DAY_US + i * 60_000_000
            rates.append(FundingRate("binance_usdm", "BTCUSDT", 0.0001 * (i - 20), t, exchange_ts=t - 5,
                                     next_funding_ts=None if i % 4 == 0 else t + 3_600_000_000,
                                     mark_price=None if i % 3 == 0 else 50_000.5 + i, index_price=50_000.25 + i))
    rates.append(FundingRate("binance_usdm", "BTCUSDT", 0.0002, now - 5_000_000, exchange_ts=now - 6_000_000))
    assert await db.insert_funding_rates(rates) == len(rates)
    balances = []
    for day in range(3):
        for i in range(20):
            t = DAY0 + day * DAY_US + i * 3_600_000_000
            balances.append(Balance(exchange="binance_spot", asset="USDT", free=Decimal("1000.123456789012") + i,
                                    locked=Decimal("0.5") * i, recv_ts=t, exchange_ts=None if i % 2 else t - 10))
            balances.append(Balance(exchange="binance_spot", asset="BTC", free=Decimal("-0.00000001") * i,
                                    locked=Decimal("12345678901234.5"), recv_ts=t, account="sub1"))
    balances.append(Balance(exchange="binance_spot", asset="USDT", free=Decimal("7"), locked=Decimal("0"),
                            recv_ts=now - 1_000_000))
    assert await db.insert_balance_snapshots(balances) == len(balances)
    await db.flush()
    return len(tickers)


async def _all_reads(db: DatabaseManager) -> dict[str, object]:
    lo, hi = DAY0 - DAY_US, now_us() + 1
    out: dict[str, object] = {}
    for fmt in ("objects", "columns", "numpy"):
        for ex, sym in (("binance_spot", "BTCUSDT"), ("okx_spot", "BTC-USDT")):
            out[f"bt {ex} {sym} {fmt}"] = await db.get_book_ticker_history(ex, sym, start=lo, end=hi, format=fmt)
            # A window that starts inside the archived days and ends in today's partition.
            out[f"bt-mid {ex} {sym} {fmt}"] = await db.get_book_ticker_history(
                ex, sym, start=DAY0 + DAY_US + 30_000_000, end=hi, format=fmt)
            out[f"bt-limit {ex} {sym} {fmt}"] = await db.get_book_ticker_history(
                ex, sym, start=DAY0 + 30_000_000, end=hi, limit=17, format=fmt)
        out[f"fr {fmt}"] = await db.get_funding_rate_history("binance_usdm", "BTCUSDT", start=lo, end=hi, format=fmt)
        for asset, account in (("USDT", "default"), ("BTC", "sub1")):
            out[f"bal {asset} {fmt}"] = await db.get_balance_history("binance_spot", asset, account=account, start=lo,
                                                                     end=hi, format=fmt)
    return out


def _same(a: object, b: object) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, np.ma.MaskedArray):
        assert isinstance(b, np.ma.MaskedArray) and a.dtype == b.dtype
        assert np.array_equal(np.ma.getmaskarray(a), np.ma.getmaskarray(b))
        assert np.array_equal(a.filled(0), b.filled(0))
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, (a.dtype, getattr(b, "dtype", None))
        if a.dtype.kind == "M":  # NaT (a NULL time) equals itself here
            a, b = a.view(np.int64), b.view(np.int64)
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    else:
        assert a == b


def _comparable(reads: dict[str, object]) -> dict[str, object]:
    # With a LIMIT the server orders by receipt time with a top-N sort, which leaves rows of one receipt time in
    # no defined order: those reads are compared as ordered by everything (objects), or not at all (their
    # numpy and columns twins).
    out = {}
    for key, value in reads.items():
        if key.startswith("bt-limit"):
            if key.endswith("objects"):
                out[key] = sorted(value, key=repr)  # type: ignore[arg-type]
            continue
        out[key] = value
    return out


async def _count(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(f"SELECT count(*) FROM {table}")
    finally:
        await conn.close()


def _archived_rows(root: Path, table: str) -> int:
    files = list((root / table).glob("date=*/exchange=*/*.parquet"))
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


async def test_archive_writes_verified_files_then_drops_the_partitions(dsn, tmp_path):
    s = settings(tmp_path)
    root = Path(s.archive.root)
    async with DatabaseManager(dsn, settings=s) as db:
        n = await _seed(db)
        assert [r.pending for r in (await db.archive_partitions(10, dry_run=True)).values()] == [
            [f"{t}_p{archive._date(DAY0 + d * DAY_US).replace('-', '')}" for d in range(3)]
            for t in ("book_tickers", "funding_rates", "balances")]
        assert not root.exists()  # a dry run writes nothing
        counts = {t: await _count(dsn, t) for t in ("book_tickers", "funding_rates", "balances")}
        reports = await db.archive_partitions(10)
        assert {t: len(r.archived) for t, r in reports.items()} == {"book_tickers": 3, "funding_rates": 3,
                                                                     "balances": 3}
        # Only today's rows stay in PostgreSQL; the rest are in the files, once.
        assert await _count(dsn, "book_tickers") == 30
        assert _archived_rows(root, "book_tickers") == n - 30
        for t in ("funding_rates", "balances"):
            assert await _count(dsn, t) + _archived_rows(root, t) == counts[t]
        # Archiving again writes nothing and drops nothing.
        again = await db.archive_partitions(10)
        assert all(not r.archived and not r.finished for r in again.values())
        # What the archive holds, in the stats and on /metrics (the hot tier's figure needs the planner's rows).
        await sql(db).execute("ANALYZE book_tickers")
        stats = await db.get_database_stats()
        bt = stats["archive"]["tables"]["book_tickers"]
        assert (bt["days"], bt["partitions"], bt["files"], bt["rows"]) == (3, 3, 6, n - 30)
        assert bt["bytes"] == sum(p.stat().st_size for p in (root / "book_tickers").rglob("*.parquet"))
        assert bt["bytes_per_row"] == bt["bytes"] / bt["rows"] and bt["hot_bytes_per_row"] > 0
        text = metrics.render(stats)
        assert f'hftdb_archive_rows{{table="book_tickers"}} {n - 30}' in text
        assert 'hftdb_archive_days{table="balances"} 3' in text and "hftdb_archive_bytes_per_row{" in text
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    env.update(HFTDB_DSN=dsn, HFTDB_ARCHIVE_ROOT=str(root), HFTDB_METRICS_PORT="1")
    rc, out, err = await _cli("stats", env=env, cwd=tmp_path)
    assert rc == 0, err
    assert f"book_tickers   3 day(s) {archive._date(DAY0)} .. {archive._date(DAY0 + 2 * DAY_US)}, 6 file(s), " \
           f"{n - 30:,} rows" in out, out
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet"))
    day = archive._date(DAY0)
    assert f"book_tickers/date={day}/exchange=binance_spot/part-0.parquet" in files
    assert f"book_tickers/date={day}/exchange=okx_spot/part-0.parquet" in files
    manifest = json.loads((root / "book_tickers" / f"date={day}" /
                           f"_manifest.book_tickers_p{day.replace('-', '')}.0.json").read_text())
    assert manifest["state"] == "dropped" and manifest["rows"] == sum(f["rows"] for f in manifest["files"])
    t = pq.read_table(root / f"book_tickers/date={day}/exchange=binance_spot/part-0.parquet")
    assert t.schema.field("recv_ts").type == pa.timestamp("us", tz="UTC")
    assert t.schema.field("bid_price").type == pa.float64()
    assert set(t.column("symbol").to_pylist()) == {"BTCUSDT", "ETHUSDT"}
    assert set(t.column("exchange_name").to_pylist()) == {"binance_spot"}
    b = pq.read_table(root / f"balances/date={day}/exchange=binance_spot/part-0.parquet")
    assert b.schema.field("free").type == pa.decimal128(38, 12)
    assert Decimal("1000.123456789012") in b.column("free").to_pylist()
    meta = pq.ParquetFile(root / f"book_tickers/date={day}/exchange=binance_spot/part-0.parquet").metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"


async def _cli(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hftdb.ops.cli", *args, cwd=str(cwd), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


def _file_rows(root: Path, table: str, *, listed_only: bool) -> list[tuple]:
    """Every row of ``table``'s Parquet files (hidden temporary files never count), as comparable tuples."""
    rows: list[tuple] = []
    for manifest in archive.read_manifests(root, table) if listed_only else [None]:
        paths = ([root / table / f"date={manifest.date}" / f.path for f in manifest.files] if manifest is not None
                 else list((root / table).glob("date=*/exchange=*/*.parquet")))
        for p in paths:
            t = pq.read_table(p, columns=[c.name for c in archive.SPECS[table].cols])
            rows += [tuple(r.values()) for r in t.to_pylist()]
    return rows


async def _pg_rows(dsn: str, table: str) -> list[tuple]:
    cols = ", ".join(c.name for c in archive.SPECS[table].cols)
    conn = await asyncpg.connect(dsn)
    try:
        rows = [tuple(r) for r in await conn.fetch(f"SELECT {cols} FROM {table}")]
        for name in await conn.fetch("SELECT relname FROM pg_class WHERE obj_description(oid, 'pg_class') = $1"
                                     " AND NOT relispartition AND relname LIKE $2", archive.MARKER, table + "_p%"):
            rows += [tuple(r) for r in await conn.fetch(f'SELECT {cols} FROM "{name[0]}"')]
        return rows
    finally:
        await conn.close()


def _norm(row: tuple) -> str:
    # Instants of the datetimes and values of the decimals (the files keep one scale per partition, PostgreSQL
    # each value's own), as one sortable string.
    return repr(tuple(v.timestamp() if hasattr(v, "timestamp") else v.normalize() if isinstance(v, Decimal) else v
                      for v in row))


@pytest.mark.parametrize("step", archive.STEPS)
async def test_killed_at_each_step_then_rerun_loses_nothing_and_writes_nothing_twice(dsn, tmp_path, step):
    root = tmp_path / "archive"
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await _seed(db)
        before = _comparable(await _all_reads(db))
    want = {t: sorted(map(_norm, await _pg_rows(dsn, t))) for t in archive.SPECS}
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    env.update(HFTDB_DSN=dsn, HFTDB_ARCHIVE_ROOT=str(root), HFTDB_METRICS_PORT="1",
               HFTDB_WRITER_SPOOL_DIR=str(tmp_path / "spool"), _HFTDB_ARCHIVE_STOP_AT=step)
    rc, out, err = await _cli("archive", "--older-than-days", "10", env=env, cwd=tmp_path)
    assert rc == -9, (out, err)
    # After the crash every row is in PostgreSQL (attached, or detached and marked) or in a complete archive.
    for t in archive.SPECS:
        pg = await _pg_rows(dsn, t)
        archived_parts = {m.partition for m in archive.read_manifests(root, t)}
        present = sorted(map(_norm, pg + _file_rows(root, t, listed_only=True)))
        assert set(present) == set(want[t]), (t, step)
        assert len(present) >= len(want[t])
        assert archived_parts or t != "book_tickers" or step in ("fetched", "written", "verified", "renamed")
    # Reads in the crash's state take each row from exactly one tier.
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        for key, value in _comparable(await _all_reads(db)).items():
            _same(before[key], value)
    del env["_HFTDB_ARCHIVE_STOP_AT"]
    rc, out, err = await _cli("archive", "--older-than-days", "10", env=env, cwd=tmp_path)
    assert rc == 0, (out, err)
    if step not in ("fetched", "written", "verified", "renamed"):
        assert "finished book_tickers_p" in out
    for t in archive.SPECS:
        # Exactly once across both tiers: every row, and each one once; no temporary file left behind.
        got = sorted(map(_norm, await _pg_rows(dsn, t) + _file_rows(root, t, listed_only=False)))
        assert got == want[t], (t, step)
        assert all(m.state == "dropped" for m in archive.read_manifests(root, t))
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    # A third run finds nothing to do.
    rc, out, err = await _cli("archive", "--older-than-days", "10", env=env, cwd=tmp_path)
    assert rc == 0 and "archived 0 partition(s)" in out, (out, err)


@pytest.mark.parametrize("interval_s", [86_400, 3_600])
async def test_reads_across_the_archive_boundary_return_the_same_rows(dsn, tmp_path, interval_s):
    s = settings(tmp_path)
    s = msgspec.structs.replace(s, storage=msgspec.structs.replace(s.storage, partition_interval_s=interval_s))
    async with DatabaseManager(dsn, settings=s) as db:
        await _seed(db)
        before = await _all_reads(db)
        await db.archive_partitions(10)
        assert await _count(dsn, "book_tickers") == 30
        after = _comparable(await _all_reads(db))
        before = _comparable(before)
        assert list(before) == list(after)
        for key in before:
            _same(before[key], after[key])
        assert len(before["bt binance_spot BTCUSDT objects"]) > 100  # type: ignore[arg-type]
        assert len(before["bt-limit okx_spot BTC-USDT objects"]) == 17  # type: ignore[arg-type]
        assert len(before["bal BTC columns"]["free"]) == 60  # type: ignore[index]
    stem = "part-0000-0.parquet" if interval_s == 3_600 else "part-0.parquet"
    assert (tmp_path / "archive" / "book_tickers" / f"date={archive._date(DAY0)}" / "exchange=okx_spot" / stem).is_file()


async def test_upkeep_archives_then_drops_and_expires_old_archives(dsn, tmp_path):
    s = settings(tmp_path, retention_days=19.0)
    root = Path(s.archive.root)
    async with DatabaseManager(dsn, settings=s) as db:
        await _seed(db)
        before = _comparable(await _all_reads(db))
        counts = {t: await _count(dsn, t) for t in archive.SPECS}
        report = await db.run_maintenance()  # after_days 7 (< storage retention 30): all three old days go
        days = [archive._date(DAY0 + d * DAY_US).replace("-", "") for d in range(3)]
        assert sorted(report.dropped) == sorted(f"{t}_p{d}" for t in archive.SPECS for d in days)
        # The oldest day is past [archive] retention_days (19): its archive is deleted too, the others kept.
        assert not (root / "book_tickers" / f"date={archive._date(DAY0)}").exists()
        kept = {m.partition for m in archive.read_manifests(root, "book_tickers")}
        assert kept == {f"book_tickers_p{d}" for d in days[1:]}
        assert await _count(dsn, "book_tickers") == 30
        after = _comparable(await _all_reads(db))
        # Reads that cover only the two kept days and today give what they gave before.
        lo = DAY0 + DAY_US
        for fmt in ("objects", "numpy"):
            got = await db.get_book_ticker_history("binance_spot", "BTCUSDT", start=lo, format=fmt)
            want = before[f"bt binance_spot BTCUSDT {fmt}"]
            if fmt == "objects":
                assert got == [r for r in want if r.recv_ts >= lo]  # type: ignore[attr-defined, union-attr]
            else:
                keep = want["recv_ts"].view(np.int64) >= lo  # type: ignore[index]
                _same({k: v[keep] for k, v in want.items()}, got)  # type: ignore[union-attr]
        assert after.keys() == before.keys()
        # Nothing is left to do on the next pass.
        assert (await db.run_maintenance()).dropped == []
        assert {t: await _count(dsn, t) for t in archive.SPECS}["balances"] < counts["balances"]


async def test_without_pyarrow_retention_keeps_everything_and_says_which_extra(dsn, tmp_path, monkeypatch, caplog):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await _seed(db)
        counts = {t: await _count(dsn, t) for t in archive.SPECS}
        monkeypatch.setitem(sys.modules, "pyarrow", None)  # what `import pyarrow` meets where it is not installed
        report = await db.run_maintenance()
        assert report.dropped == []
        assert "pip install 'hftdb[archive]'" in caplog.text
        assert {t: await _count(dsn, t) for t in archive.SPECS} == counts
        from hftdb import ValidationError

        for call in (db.archive_partitions(10), db.cleanup_old_data(10)):
            with pytest.raises(ValidationError, match=r"hftdb\[archive\]"):
                await call
        assert {t: await _count(dsn, t) for t in archive.SPECS} == counts


@pytest.mark.parametrize("step", (None, *archive.RESTORE_STEPS))
async def test_restore_loads_an_archived_day_back_even_after_a_crash(dsn, tmp_path, step):
    root = tmp_path / "archive"
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await _seed(db)
        before = _comparable(await _all_reads(db))
        want = sorted(map(_norm, await _pg_rows(dsn, "book_tickers")))
        await db.archive_partitions(10)
    day = archive._date(DAY0 + DAY_US)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    env.update(HFTDB_DSN=dsn, HFTDB_ARCHIVE_ROOT=str(root), HFTDB_METRICS_PORT="1",
               HFTDB_WRITER_SPOOL_DIR=str(tmp_path / "spool"))
    if step is not None:
        rc, out, err = await _cli("archive", "restore", "--table", "book_tickers", "--date", day,
                                  env={**env, "_HFTDB_ARCHIVE_STOP_AT": step}, cwd=tmp_path)
        assert rc == -9, (out, err)
        async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:  # mid-restore reads: each row once
            for key, value in _comparable(await _all_reads(db)).items():
                _same(before[key], value)
    rc, out, err = await _cli("archive", "restore", "--table", "book_tickers", "--date", day, env=env, cwd=tmp_path)
    assert rc == 0, (out, err)
    assert f"restored book_tickers_p{day.replace('-', '')}" in out
    assert sorted(map(_norm, await _pg_rows(dsn, "book_tickers") + _file_rows(root, "book_tickers",
                                                                              listed_only=False))) == want
    assert await _count(dsn, "book_tickers") == 30 + 150 + 150 // 11 + 1
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        for key, value in _comparable(await _all_reads(db)).items():
            _same(before[key], value)
    rc, out, err = await _cli("archive", "restore", "--table", "book_tickers", "--date", day, env=env, cwd=tmp_path)
    assert rc == 1 and "nothing of book_tickers is archived for" in err and "Traceback" not in err


async def test_late_rows_go_to_a_new_generation_or_into_the_rewrite(dsn, tmp_path, monkeypatch):
    root = tmp_path / "archive"
    day1 = DAY0 + DAY_US
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        n = await _seed(db)
        want = sorted(map(_norm, await _pg_rows(dsn, "book_tickers")))
        # Rows committed after the snapshot was read but before the detach: the detached table no longer
        # changes, so its files are written again from it, with the late row.
        real = archive.partitions.detach_partition
        late = 0

        async def day1_ids(fmt: str) -> list[tuple[int, int]]:
            # (receipt time, update id or -1) of the day's rows of one symbol, in the read's format.
            h = await db.get_book_ticker_history("okx_spot", "BTC-USDT", start=day1, end=day1 + DAY_US, format=fmt)
            if fmt == "objects":
                return sorted((r.recv_ts, -1 if r.update_id is None else r.update_id) for r in h)
            if fmt == "columns":
                return sorted(zip(h["recv_ts"], (-1 if u is None else u for u in h["update_id"])))
            return sorted(zip(h["recv_ts"].astype("int64").tolist(), h["update_id"].filled(-1).tolist()))

        before = await day1_ids("objects")
        assert before and (day1 + 5, 777) not in before
        seen: dict[str, list[int]] = {}

        async def detach_after_a_late_row(conn, table, name, *, marker):
            nonlocal late
            ours = table == "book_tickers" and name.endswith(archive._date(day1).replace("-", ""))
            if ours:
                await db.insert_book_ticker_snapshots([BookTicker("okx_spot", "BTC-USDT", 1.0, 2.0, 1.5, 3.0,
                                                                  day1 + 5, update_id=777)])
                await db.flush()
                late += 1
            await real(conn, table, name, marker=marker)
            if ours:
                # Detached, its files not yet written again: the late row is read from the detached table.
                for fmt in ("objects", "columns", "numpy"):
                    seen[fmt] = await day1_ids(fmt)

        monkeypatch.setattr(archive.partitions, "detach_partition", detach_after_a_late_row)
        report = (await db.archive_partitions(10, tables=["book_tickers"]))["book_tickers"]
        monkeypatch.undo()
        assert late == 1 and await _count(dsn, "book_tickers") == 30
        assert seen == {fmt: sorted(before + [(day1 + 5, 777)]) for fmt in ("objects", "columns", "numpy")}
        assert await day1_ids("numpy") == sorted(before + [(day1 + 5, 777)])
        assert _archived_rows(root, "book_tickers") == n - 30 + 1
        # The report counts what the archive holds: the rewrite's rows and bytes, not the first write's.
        assert report.rows == n - 30 + 1
        assert report.bytes == sum(p.stat().st_size for p in (root / "book_tickers").rglob("*.parquet"))
        # A row for an archived day arriving later recreates its partition; archiving that writes part-1.
        await db.insert_book_ticker_snapshots([BookTicker("binance_spot", "BTCUSDT", 1.0, 2.0, 1.5, 3.0, day1 + 7,
                                                          update_id=888)])
        await db.flush()
        assert await _count(dsn, "book_tickers") == 31
        history = await db.get_book_ticker_history("binance_spot", "BTCUSDT", start=day1, end=day1 + DAY_US)
        assert [r.update_id for r in history if r.recv_ts == day1 + 7] == [888]  # read from PostgreSQL, once
        report = (await db.archive_partitions(10, tables=["book_tickers"]))["book_tickers"]
        assert report.archived == [f"book_tickers_p{archive._date(day1).replace('-', '')}"]
        files = sorted(p.name for p in (root / "book_tickers" / f"date={archive._date(day1)}").rglob("*.parquet"))
        assert files == ["part-0.parquet", "part-0.parquet", "part-1.parquet"]
        assert await _count(dsn, "book_tickers") == 30
        got = sorted(map(_norm, await _pg_rows(dsn, "book_tickers") + _file_rows(root, "book_tickers",
                                                                                 listed_only=False)))
        assert len(got) == len(want) + 2 and set(want) <= set(got)
        again = await db.get_book_ticker_history("binance_spot", "BTCUSDT", start=day1, end=day1 + DAY_US)
        assert again == history


# Run in a child process: the archive command as a user runs it, and its peak resident set (VmHWM) against its
# resident set once everything it imports is loaded, just before the command starts. Not ru_maxrss: that keeps
# the peak of the image before exec, here the forked test process's.
_MEMORY_PROBE = r"""
import json, os, sys
import asyncpg, msgspec, numpy, pyarrow, pyarrow.compute, pyarrow.parquet
from hftdb import manager
from hftdb.ops import cli
from hftdb.read import archive, columnar

def status_kb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak resident set starts again from the current one
base = status_kb("VmRSS")
assert status_kb("VmHWM") <= base + 1024
rc = cli.main(sys.argv[1:])
with open(os.environ["PROBE_OUT"], "w") as f:
    json.dump({"rc": rc, "base_kb": base, "peak_kb": status_kb("VmHWM")}, f)
sys.exit(rc)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
async def test_a_partition_larger_than_the_memory_budget_is_archived_within_it(dsn, tmp_path):
    # 600,000 book tickers in one day. Whole in memory (the COPY buffer, numpy columns, the Arrow copy) the
    # archive took 269 MB above the loaded process (measured on the whole-partition archiver this replaced); in
    # pieces of 16,384 rows it takes about 40 MB (allocator arenas and Parquet metadata), however big the day.
    rows, budget_mb = 600_000, 64

    s = settings(tmp_path)
    root = Path(s.archive.root)
    day = DAY0 + DAY_US
    async with DatabaseManager(dsn, settings=s) as db:
        ex = await db.insert_exchange(ExchangeName.BINANCE_USDM)
        syms = [Symbol(exchange_id=ex.id, symbol=f"S{i:03d}USDT", kind="perpetual", status="trading")
                for i in range(200)]
        await db.sync_symbols(ExchangeName.BINANCE_USDM, syms)
        ids = np.array([(await db.get_symbol(ExchangeName.BINANCE_USDM, x.symbol)).id for x in syms])
        rng = np.random.default_rng(7)
        for lo in range(0, rows, 200_000):
            n = min(200_000, rows - lo)
            recv = day + np.sort(rng.integers(0, DAY_US, n))
            price = 100 + rng.integers(0, 1000, n) * 0.01
            await db.insert_book_ticker_columns(ids[rng.integers(0, len(ids), n)], price, rng.random(n), price + 0.01,
                                                rng.random(n), recv, exchange_ts=recv - 7,
                                                update_id=np.arange(lo, lo + n))
        await db.flush()
    assert await _count(dsn, "book_tickers") == rows
    want = await _server_total(dsn, "book_tickers")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    out = tmp_path / "probe.json"
    env.update(HFTDB_DSN=dsn, HFTDB_ARCHIVE_ROOT=str(root), HFTDB_METRICS_PORT="1", PROBE_OUT=str(out),
               HFTDB_WRITER_SPOOL_DIR=str(tmp_path / "spool"), HFTDB_ARCHIVE_ROW_GROUP_ROWS="4096",
               HFTDB_ARCHIVE_PIECE_ROWS="16384")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _MEMORY_PROBE, "archive", "--older-than-days", "10", "--table", "book_tickers",
        cwd=str(tmp_path), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(200):
        stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, (stdout.decode(), stderr.decode())
    probe = json.loads(out.read_text())
    growth_mb = (probe["peak_kb"] - probe["base_kb"]) / 1024
    print(f"archive of {rows:,} rows: peak RSS {growth_mb:.1f} MB above the loaded process")
    assert growth_mb < budget_mb, probe
    # And the partition is archived whole: every row, verified, in row groups of 4,096.
    assert await _count(dsn, "book_tickers") == 0
    (m,) = archive.read_manifests(root, "book_tickers")
    assert m.state == "dropped" and (m.rows, m.checksum) == (rows, str(want))
    meta = pq.ParquetFile(root / "book_tickers" / f"date={m.date}" / m.files[0].path).metadata
    assert meta.num_rows == rows
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == \
        [4096] * (rows // 4096) + [rows % 4096]


async def _server_total(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return (await archive._server_checksum(conn, archive.SPECS[table], table, 0))[1]
    finally:
        await conn.close()


def _totals(summary: dict) -> dict:
    keys = ("days", "partitions", "files", "rows", "bytes", "first_day", "last_day")
    return {t: {k: v[k] for k in keys} for t, v in summary["tables"].items()}


async def test_archive_summary_reads_again_only_the_days_that_changed(dsn, tmp_path):
    s = settings(tmp_path)
    root = Path(s.archive.root)
    async with DatabaseManager(dsn, settings=s) as db:
        n = await _seed(db)
        await db.archive_partitions(10)
        # Archived a while ago (a directory changed within the last seconds is read again at every call).
        for day in root.glob("*/date=*"):
            os.utime(day, ns=(now_us() * 1000 - 60 * 10**9,) * 2)
        want = _totals((await db.get_database_stats())["archive"])
        assert want["book_tickers"]["rows"] == n - 30 and want["book_tickers"]["days"] == 3
        # Later calls read no manifest of an unchanged day: one spoiled in place (its directory unchanged) is
        # not noticed, by the daemon's stats (/metrics) nor by a new process's (hftdb stats: the summary file).
        day0 = root / "book_tickers" / f"date={archive._date(DAY0)}"
        (manifest,) = day0.glob("_manifest.*.json")
        good = manifest.read_bytes()
        manifest.write_bytes(b"spoiled")
        assert _totals((await db.get_database_stats())["archive"]) == want
        assert _totals(archive.summary(root)) == want
        env = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
        env.update(HFTDB_DSN=dsn, HFTDB_ARCHIVE_ROOT=str(root), HFTDB_METRICS_PORT="1")
        rc, out, err = await _cli("stats", "--json", env=env, cwd=tmp_path)
        assert rc == 0, err
        assert _totals(json.loads(out)["archive"]) == want
        manifest.write_bytes(good)
        # A day that changes is read again: restored, it leaves the summary; the other days are not re-read.
        day1 = archive._date(DAY0 + DAY_US)
        _, restored = await db.restore_archive("book_tickers", day1)
        manifest.write_bytes(b"spoiled")
        got = _totals((await db.get_database_stats())["archive"])
        assert got["book_tickers"]["rows"] == n - 30 - restored and got["book_tickers"]["days"] == 2
        assert got["funding_rates"] == want["funding_rates"]
        assert _totals(archive.summary(root)) == got
        manifest.write_bytes(good)
        # Archived again: back in the summary.
        await db.archive_partitions(10, tables=["book_tickers"])
        assert _totals((await db.get_database_stats())["archive"])["book_tickers"]["rows"] == n - 30


async def test_without_pyarrow_reads_of_archived_days_and_restore_name_the_extra(dsn, tmp_path, monkeypatch):
    from hftdb import ValidationError

    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await _seed(db)
        await db.archive_partitions(10)
        monkeypatch.setitem(sys.modules, "pyarrow", None)  # what `import pyarrow` meets where it is not installed
        for fmt in ("objects", "columns", "numpy"):
            with pytest.raises(ValidationError, match=r"pip install 'hftdb\[archive\]'"):
                await db.get_book_ticker_history("binance_spot", "BTCUSDT", start=DAY0, end=now_us() + 1, format=fmt)
        with pytest.raises(ValidationError, match=r"hftdb\[archive\]"):
            await db.get_balance_history("binance_spot", "USDT", start=DAY0, format="columns")
        with pytest.raises(ValidationError, match=r"hftdb\[archive\]"):
            await db.restore_archive("book_tickers", archive._date(DAY0))
        # What needs no Parquet file still works: today's rows, and the archive's figures.
        today = await db.get_book_ticker_history("binance_spot", "BTCUSDT", start=now_us() - 3_600_000_000)
        assert len(today) == 10
        stats = await db.get_database_stats()
        assert stats["archive"]["tables"]["book_tickers"]["days"] == 3


async def test_archive_verify_reads_every_file_back_and_names_each_mismatch(dsn, tmp_path):
    s = settings(tmp_path)
    root = Path(s.archive.root)
    async with DatabaseManager(dsn, settings=s) as db:
        n = await _seed(db)
        await db.archive_partitions(10)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    env.update(HFTDB_DSN=dsn, HFTDB_ARCHIVE_ROOT=str(root), HFTDB_METRICS_PORT="1")
    rc, out, err = await _cli("archive", "verify", env=env, cwd=tmp_path)
    assert rc == 0, (out, err)
    assert "verified 12 file(s) of 9 archived partition(s)" in out and "every file matches its manifest" in out
    report = archive.verify(root, table="book_tickers", batch_rows=64)
    assert (report.files, report.rows, report.problems) == (6, n - 30, [])
    # One value changed (a file rewritten as the archiver writes it), one file cut short, one gone.
    day0, day1, day2 = (f"date={archive._date(DAY0 + d * DAY_US)}" for d in range(3))
    changed = root / "book_tickers" / day0 / "exchange=binance_spot" / "part-0.parquet"
    t = pq.read_table(changed)
    bids = t.column("bid_price").to_pylist()
    bids[7] += 0.5
    t = t.set_column(t.column_names.index("bid_price"), "bid_price", pa.array(bids))
    archive._write_parquet(pa, t, changed, s.archive, archive.SPECS["book_tickers"])
    cut = root / "book_tickers" / day1 / "exchange=okx_spot" / "part-0.parquet"
    cut.write_bytes(cut.read_bytes()[:-100])
    (root / "funding_rates" / day2 / "exchange=binance_usdm" / "part-0.parquet").unlink()
    report = archive.verify(root)
    assert len(report.problems) == 3, report.problems
    assert report.problems[0].startswith(f"book_tickers/{day0}/exchange=binance_spot/part-0.parquet: ")
    assert "checksum" in report.problems[0]
    assert report.problems[1].startswith(f"book_tickers/{day1}/exchange=okx_spot/part-0.parquet: unreadable")
    assert report.problems[2] == f"funding_rates/{day2}/exchange=binance_usdm/part-0.parquet: missing"
    rc, out, err = await _cli("archive", "verify", "--table", "funding_rates", env=env, cwd=tmp_path)
    assert rc == 1 and "MISMATCH funding_rates/" in out and "1 problem(s)" in out and "Traceback" not in err
    rc, out, err = await _cli("archive", "verify", "--date", archive._date(DAY0 + DAY_US), env=env, cwd=tmp_path)
    assert rc == 1 and "verified 4 file(s) of 3 archived partition(s)" in out and "okx_spot" in out
    # A day before the archive begins: nothing to verify is no pass (as `archive restore` says of that day).
    before = time.strftime("%Y-%m-%d", time.gmtime((DAY0 - DAY_US) // 1_000_000))
    rc, out, err = await _cli("archive", "verify", "--table", "book_tickers", "--date", before, env=env, cwd=tmp_path)
    assert (rc, out) == (1, "") and "Traceback" not in err
    assert err.strip() == f"hftdb: nothing of book_tickers is archived for {before} under {root}"
    rc, _, err = await _cli("archive", "restore", "--table", "book_tickers", "--date", before, env=env, cwd=tmp_path)
    assert rc == 1 and err.strip() == f"hftdb: nothing of book_tickers is archived for {before} under {root}"


async def test_archive_verify_of_a_root_that_is_not_a_directory_is_one_error_line(tmp_path):
    # A missing root, or a file, was read as an empty archive: "verified 0 file(s) of 0 archived partition(s) ...
    # every file matches its manifest", exit 0.
    a_file = tmp_path / "a-file"
    a_file.write_text("not an archive")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    env.update(HFTDB_DSN="postgresql://u@127.0.0.1:1/nowhere", HFTDB_METRICS_PORT="1")  # verify needs no database
    for root, what in ((tmp_path / "missing", "does not exist"), (a_file, "is not a directory")):
        rc, out, err = await _cli("archive", "verify", env={**env, "HFTDB_ARCHIVE_ROOT": str(root)}, cwd=tmp_path)
        assert (rc, out) == (1, ""), (out, err)
        assert err.strip() == f"hftdb: [archive] root = {str(root)!r} {what}: there is no archive there to verify"
        with pytest.raises(ValidationError, match=what):
            archive.verify(root)
    assert not (tmp_path / "missing").exists()


async def test_copy_out_pieces_streams_the_rows_copy_out_returns_whole(dsn, tmp_path):
    from hftdb.read import columnar

    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await _seed(db)
    spec = archive.SPECS["book_tickers"]
    query = f"SELECT {spec.layout.select_list} FROM book_tickers ORDER BY symbol_id, recv_ts, ctid"
    conn = await asyncpg.connect(dsn)
    try:
        whole = await columnar.copy_out(conn, spec.layout, query, format="numpy")
        pieces: list[dict] = []

        async def sink(piece: dict) -> None:
            pieces.append(piece)

        n = await columnar.copy_out_pieces(conn, spec.layout, query, piece_rows=5, sink=sink)
        assert n == len(whole["recv_ts"]) == sum(len(p["recv_ts"]) for p in pieces) > 0
        for name, col in whole.items():
            joined = np.ma.concatenate([p[name] for p in pieces]) if isinstance(col, np.ma.MaskedArray) \
                else np.concatenate([p[name] for p in pieces])
            _same(col, joined)
        pieces.clear()
        assert await columnar.copy_out_pieces(conn, spec.layout, query + " LIMIT 0", piece_rows=5, sink=sink) == 0
        assert pieces == []
        with pytest.raises(ValueError, match="piece_rows"):
            await columnar.copy_out_pieces(conn, spec.layout, query, piece_rows=0, sink=sink)
    finally:
        await conn.close()


async def test_a_file_that_reads_back_wrong_is_removed_and_nothing_is_dropped(dsn, tmp_path, monkeypatch):
    from hftdb import DatabaseError

    s = settings(tmp_path)
    root = Path(s.archive.root)
    async with DatabaseManager(dsn, settings=s) as db:
        await _seed(db)
        want = sorted(map(_norm, await _pg_rows(dsn, "book_tickers")))
        real = archive._file_values

        def one_value_off(spec, table, scale):  # what a bad disk or a writer bug would read back
            values = real(spec, table, scale)
            values["bid_price"] = values["bid_price"].copy()
            values["bid_price"][0] += 1
            return values

        monkeypatch.setattr(archive, "_file_values", one_value_off)
        with pytest.raises(DatabaseError, match="does not match the partition"):
            await db.archive_partitions(10, tables=["book_tickers"])
        assert sorted(map(_norm, await _pg_rows(dsn, "book_tickers"))) == want
        assert not [p for p in root.rglob("*") if p.is_file()]  # no file, temporary or not, and no manifest
        monkeypatch.undo()
        assert len((await db.archive_partitions(10, tables=["book_tickers"]))["book_tickers"].archived) == 3
        assert sorted(map(_norm, await _pg_rows(dsn, "book_tickers") + _file_rows(root, "book_tickers",
                                                                                  listed_only=False))) == want



# -- cancellation: the daemon's upkeep stopped, Ctrl-C on `hftdb archive` --------------------------------------

_CANCEL_POINTS = ("copy", "stream", "write", "finish", "verify", "rename", "detach", "drop", "mark")


async def _waiting(dsn: str, like: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            " AND query LIKE $1", like))
    finally:
        await conn.close()


async def _until(condition) -> None:
    while not await condition():
        await asyncio.sleep(0.01)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("point", _CANCEL_POINTS)
async def test_an_archive_cancelled_at_each_point_unwinds_and_a_rerun_finishes_it(dsn, tmp_path, monkeypatch, point):
    import threading

    # Three partitions of about 164 book tickers, each read in three pieces of 64 rows (row groups of 16). No
    # command_timeout to end a wait for the server early: a wait that never ends shows as a hang.
    s = settings(tmp_path, piece_rows=64, row_group_rows=16)
    s = msgspec.structs.replace(s, database=msgspec.structs.replace(s.database, command_timeout=3600.0))
    root = Path(s.archive.root)
    async with DatabaseManager(dsn, settings=s) as db:
        await _seed(db)
        want = sorted(map(_norm, await _pg_rows(dsn, "book_tickers")))
        before = _comparable(await _all_reads(db))
        loop = asyncio.get_running_loop()
        reached = asyncio.Event()
        release = threading.Event()  # lets a worker thread held at the point go on
        done: list[str] = []  # the held step, once it returned
        blocker = await asyncpg.connect(dsn)
        calls = 0
        hold_at = 2 if point in ("write", "verify") else 1  # the second piece, the second file's read-back

        def held_thread(real):  # on a worker thread: hold the step there until the test lets it go
            def run(*args, **kw):
                nonlocal calls
                if point == "mark" and b'"state":"dropped"' not in args[1]:
                    return real(*args, **kw)
                calls += 1
                if calls == hold_at:
                    loop.call_soon_threadsafe(reached.set)
                    release.wait(60)
                    out = real(*args, **kw)
                    done.append(point)
                    return out
                return real(*args, **kw)
            return run

        if point in ("copy", "stream"):
            real_add = archive._Pieces.add

            async def add(self, piece):  # on the event loop, inside asyncpg's COPY OUT: the stream's sink
                nonlocal calls
                calls += 1
                await real_add(self, piece)
                if calls == 2:
                    reached.set()
                    if point == "copy":
                        await asyncio.Event().wait()  # cancelled here, in the sink

            monkeypatch.setattr(archive._Pieces, "add", add)
        elif point == "write":
            monkeypatch.setattr(archive._Generation, "add", held_thread(archive._Generation.add))
        elif point == "finish":
            monkeypatch.setattr(archive._Generation, "finish", held_thread(archive._Generation.finish))
        elif point == "verify":
            monkeypatch.setattr(archive._ExchangeFile, "verify", held_thread(archive._ExchangeFile.verify))
        elif point == "rename":  # after the first file's rename, before the second's
            monkeypatch.setattr(archive, "fsync_dir", held_thread(archive.fsync_dir))
        elif point == "mark":  # the manifest's rewrite in state dropped, after the DROP
            monkeypatch.setattr(archive, "_write_atomic", held_thread(archive._write_atomic))
        elif point == "detach":
            # An open transaction that read the table: DETACH ... CONCURRENTLY waits for it in its second step.
            await blocker.execute("BEGIN; SELECT count(*) FROM book_tickers")
        elif point == "drop":
            real_drop = archive.partitions.drop_detached

            async def drop(conn, table, name, *, marker):
                await blocker.execute(f'BEGIN; LOCK TABLE "{name}" IN ACCESS SHARE MODE')  # DROP TABLE waits
                return await real_drop(conn, table, name, marker=marker)

            monkeypatch.setattr(archive.partitions, "drop_detached", drop)
        task = asyncio.create_task(db.archive_partitions(10, tables=["book_tickers"]))
        async with asyncio.timeout(60):  # hang guards only, here and below
            if point == "detach":
                await _until(lambda: _waiting(dsn, "%DETACH PARTITION%"))
            elif point == "drop":
                await _until(lambda: _waiting(dsn, "DROP TABLE%"))
            else:
                await reached.wait()
        task.cancel()
        # The step held on a thread goes on once the event loop runs this: a loop blocked waiting for the
        # thread would never run it (the hang this test guards against).
        loop.call_soon(release.set)
        async with asyncio.timeout(60):
            with pytest.raises(asyncio.CancelledError):
                await task
            if point in ("detach", "drop"):
                await blocker.execute("ROLLBACK")
        await blocker.close()
        monkeypatch.undo()
        if point in ("finish", "verify", "rename", "mark", "write"):
            assert done == [point]  # the step on the thread ended before the cancellation did
        # The connection is back in the pool, its lock released, nothing left running on the server.
        async with asyncio.timeout(60), contextlib.AsyncExitStack() as stack:
            conns = [await stack.enter_async_context(db.connection())
                     for _ in range(s.database.pool_max_size)]
            assert await conns[0].fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
            assert await conns[0].fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND (state <> 'idle' OR xact_start IS NOT NULL)") == 0
        # No temporary file; no file in place that no manifest lists; reads take each row from one tier.
        assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]
        listed = {root / "book_tickers" / f"date={m.date}" / f.path
                  for m in archive.read_manifests(root, "book_tickers") for f in m.files}
        assert set(root.rglob("*.parquet")) == listed
        for key, value in _comparable(await _all_reads(db)).items():
            _same(before[key], value)
        # A rerun finishes the job: every row once across both tiers.
        report = (await db.archive_partitions(10, tables=["book_tickers"]))["book_tickers"]
        assert len(report.archived) + len(report.finished) >= 1
        assert await _count(dsn, "book_tickers") == 30
        assert sorted(map(_norm, await _pg_rows(dsn, "book_tickers") + _file_rows(root, "book_tickers",
                                                                                  listed_only=False))) == want
        assert [m.state for m in archive.read_manifests(root, "book_tickers")] == ["dropped"] * 3
        assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]
        for key, value in _comparable(await _all_reads(db)).items():
            _same(before[key], value)


async def _seed_one_day(db: DatabaseManager, rows: int, day: int) -> None:
    ex = await db.insert_exchange(ExchangeName.BINANCE_USDM)
    syms = [Symbol(exchange_id=ex.id, symbol=f"S{i:03d}USDT", kind="perpetual", status="trading") for i in range(200)]
    await db.sync_symbols(ExchangeName.BINANCE_USDM, syms)
    ids = np.array([(await db.get_symbol(ExchangeName.BINANCE_USDM, x.symbol)).id for x in syms])
    rng = np.random.default_rng(7)
    for lo in range(0, rows, 200_000):
        n = min(200_000, rows - lo)
        recv = day + np.sort(rng.integers(0, DAY_US, n))
        price = 100 + rng.integers(0, 1000, n) * 0.01
        await db.insert_book_ticker_columns(ids[rng.integers(0, len(ids), n)], price, rng.random(n), price + 0.01,
                                            rng.random(n), recv, exchange_ts=recv - 7, update_id=np.arange(lo, lo + n))
    await db.flush()


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT")
async def test_ctrl_c_during_hftdb_archive_exits_at_once_with_one_line_and_a_rerun_finishes(dsn, tmp_path):
    import signal

    rows = 300_000
    s = settings(tmp_path)
    root = Path(s.archive.root)
    async with DatabaseManager(dsn, settings=s) as db:
        await _seed_one_day(db, rows, DAY0 + DAY_US)
    want = await _server_total(dsn, "book_tickers")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    env.update(HFTDB_DSN=dsn, HFTDB_ARCHIVE_ROOT=str(root), HFTDB_METRICS_PORT="1",
               HFTDB_WRITER_SPOOL_DIR=str(tmp_path / "spool"), HFTDB_ARCHIVE_ROW_GROUP_ROWS="1024",
               HFTDB_ARCHIVE_PIECE_ROWS="4096")
    # The command as a terminal runs it: SIGINT handled (a test run started in the background, by a shell without
    # job control, hands its children SIGINT ignored, and Python then leaves it so).
    main = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "sys.argv[0] = 'hftdb'; runpy.run_module('hftdb.ops.cli', run_name='__main__')")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", main, "archive", "--older-than-days", "10", cwd=str(tmp_path), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(120):  # hang guards only
        # Mid-stream: the first row groups are in a temporary file, more pieces to come (74 in all).
        while not [p for p in root.rglob("*") if p.name.endswith(".tmp")] and proc.returncode is None:
            await asyncio.sleep(0.005)
        assert proc.returncode is None, "the archive ended before a temporary file was seen"
        proc.send_signal(signal.SIGINT)
        out, err = await proc.communicate()
    assert proc.returncode == 130, (out, err)
    assert err.decode().splitlines()[-1:] == ["hftdb: interrupted"] and "Traceback" not in err.decode(), err
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    # Nothing lost: the day whole in PostgreSQL (attached, or detached with its marker: the signal may land as late
    # as the detach), or a complete archive, or both; and no session of the command is left on the server.
    listed = [m for m in archive.read_manifests(root, "book_tickers") if (m.rows, m.checksum) == (rows, str(want))]
    assert len(await _pg_rows(dsn, "book_tickers")) == rows or listed
    conn = await asyncpg.connect(dsn)
    try:
        async with asyncio.timeout(60):
            await _until(lambda: _no_other_session(conn))
        assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    finally:
        await conn.close()
    rc, out, err = await _cli("archive", "--older-than-days", "10", env=env, cwd=tmp_path)
    assert rc == 0 and "archived 1 partition(s)" in out, (out, err)
    assert await _count(dsn, "book_tickers") == 0
    (m,) = archive.read_manifests(root, "book_tickers")
    assert m.state == "dropped" and (m.rows, m.checksum) == (rows, str(want))
    assert archive.verify(root).problems == []


async def _no_other_session(conn: asyncpg.Connection) -> bool:
    # The interrupted command's backend goes once the server sees its socket closed.
    return not await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                   " AND pid <> pg_backend_pid() AND backend_type = 'client backend'")


async def test_with_the_embedded_default_hftdb_cleanup_archives_before_it_drops(tmp_path):
    # No DSN anywhere: DatabaseManager and the `hftdb` command each start the embedded server in [database]
    # data_dir, as a user's first run does; retention (`hftdb cleanup`) archives each partition before dropping it.
    s = settings(tmp_path)
    root = Path(s.archive.root)
    async with DatabaseManager(settings=s) as db:
        n = await _seed(db)
        before = _comparable(await _all_reads(db))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    env.update(HFTDB_DATABASE_DATA_DIR=s.database.data_dir, HFTDB_ARCHIVE_ROOT=str(root), HFTDB_METRICS_PORT="1",
               HFTDB_WRITER_SPOOL_DIR=str(tmp_path / "spool"))
    rc, out, err = await _cli("cleanup", "--retention-days", "10", env=env, cwd=tmp_path)
    assert rc == 0, (out, err)
    assert out.count("(archived first)") == 9 and f"each archived under {root} first" in out, out
    assert _archived_rows(root, "book_tickers") == n - 30
    async with DatabaseManager(settings=s) as db:
        assert await sql(db).fetchval("SELECT count(*) FROM book_tickers") == 30
        for key, value in _comparable(await _all_reads(db)).items():
            _same(before[key], value)
    assert [m.state for t in archive.SPECS for m in archive.read_manifests(root, t)] == ["dropped"] * 9


# -- history reads racing the archiver --------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def _read_each_day_during(dsn: str, tmp_path: Path, monkeypatch, step: str, during) -> None:
    # Archive three seeded days with one step of hftdb.db.partitions (``step``) replaced, for book tickers, by
    # ``during(real_step, blocker, conn, name, marker, read)``, which returns (the task of a ``read()``, the step's
    # result). ``read()`` starts a history read of the whole window, in a format of its own for each day, and
    # ``blocker`` is a connection of the test's own. Each read must return what it returned before the archive.
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await _seed(db)
        lo, hi = DAY0 - DAY_US, now_us() + 1
        formats = {partitions.partition_name("book_tickers", DAY0 + d * DAY_US, interval_s=86_400): fmt
                   for d, fmt in enumerate(("numpy", "columns", "objects"))}
        want = {fmt: _recv(await db.get_book_ticker_history("binance_spot", "BTCUSDT", start=lo, end=hi, format=fmt))
                for fmt in formats.values()}
        assert len(want["objects"]) > 100
        got: dict[str, list[int]] = {}
        real = getattr(archive.partitions, step)
        blocker = await asyncpg.connect(dsn)

        async def replaced(conn, table, name, *, marker):
            if table != "book_tickers":
                return await real(conn, table, name, marker=marker)
            fmt = formats[name]

            def read() -> asyncio.Task:
                return asyncio.create_task(
                    db.get_book_ticker_history("binance_spot", "BTCUSDT", start=lo, end=hi, format=fmt))

            task, result = await during(real, blocker, conn, name, marker, read)
            got[fmt] = _recv(await task)
            return result

        monkeypatch.setattr(archive.partitions, step, replaced)
        try:
            async with asyncio.timeout(90):
                report = (await db.archive_partitions(10, tables=["book_tickers"]))["book_tickers"]
        finally:
            await blocker.close()
        monkeypatch.undo()
        assert len(report.archived) == 3 and await _count(dsn, "book_tickers") == 30
        assert {fmt: len(got[fmt]) for fmt in want} == {fmt: len(want[fmt]) for fmt in want}
        assert got == want


async def test_a_read_whose_partition_is_detached_between_its_steps_takes_its_rows_from_the_files(dsn, tmp_path,
                                                                                                   monkeypatch):
    # The archiver has written and verified a day's files and its manifest (state written); the partition is still
    # attached. A history read starts; before it reads PostgreSQL the partition is detached and the detach
    # commits. Made deterministic with the test's own connection: it holds the parent table in ACCESS EXCLUSIVE
    # mode until the read waits for it, then detaches the partition in that transaction, as the archiver's
    # DETACH ... CONCURRENTLY would, and commits. The read must still return every row once: one day per format.
    async def detach_during_a_read(real, blocker, conn, name, marker, read):
        (m,) = [m for m in archive.read_manifests(tmp_path / "archive", "book_tickers") if m.partition == name]
        assert m.state == "written"
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE book_tickers IN ACCESS EXCLUSIVE MODE")
            task = read()
            await _until(lambda: _waiting(dsn, "%book_tickers%"))
            await blocker.execute(f'ALTER TABLE book_tickers DETACH PARTITION "{name}"')
            # The archiver's own marker, so that its next step drops the detached table.
            await blocker.execute(f"COMMENT ON TABLE \"{name}\" IS 'hftdb: archived - drop in progress'")
        return task, None

    assert archive.MARKER == "hftdb: archived - drop in progress"
    await _read_each_day_during(dsn, tmp_path, monkeypatch, "detach_partition", detach_during_a_read)


async def test_a_read_whose_detached_table_is_dropped_under_it_is_made_again_from_the_files(dsn, tmp_path,
                                                                                          monkeypatch):
    # A read lists an archived partition's table as detached, not yet dropped, and reads its rows from it (the
    # files may lack late rows). The archiver drops it between the read's catalog query and its read of the table:
    # made deterministic with the test's own connection, which holds the detached table while the archiver's DROP
    # queues behind it and the read then queues behind the DROP. The read is made again, from the files; every row
    # comes back once. One day per format.
    async def drop_during_a_read(real, blocker, conn, name, marker, read):
        async with blocker.transaction():
            await blocker.execute(f'LOCK TABLE "{name}" IN ACCESS EXCLUSIVE MODE')
            drop = asyncio.create_task(real(conn, "book_tickers", name, marker=marker))
            await _until(lambda: _waiting(dsn, "DROP TABLE%"))
            task = read()
            await _until(lambda: _waiting(dsn, f'%FROM "{name}"%'))
        return task, await drop

    await _read_each_day_during(dsn, tmp_path, monkeypatch, "drop_detached", drop_during_a_read)


async def test_history_reads_through_the_archive_cut_short_leave_no_transaction_open(dsn, tmp_path, caplog):
    # A read whose window holds an archived day runs in a transaction of its own on a held read connection. Cut
    # short anywhere (deadlines drawn around the read's own duration: in BEGIN, the catalog query, the COPY or
    # fetch, COMMIT, or reading the files), it must leave no connection inside a transaction, and the reads after
    # it, on the same pool, answer in full.
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await _seed(db)
        await db.archive_partitions(10, tables=["book_tickers"])
        lo, hi = DAY0 - DAY_US, now_us() + 1
        formats = ("numpy", "columns", "objects")

        async def history(fmt: str) -> list[int]:
            return _recv(await db.get_book_ticker_history("binance_spot", "BTCUSDT", start=lo, end=hi, format=fmt))

        want = await history("objects")
        assert len(want) > 100
        took = []
        for fmt in formats * 4:
            start = asyncio.get_running_loop().time()
            assert await history(fmt) == want
            took.append(asyncio.get_running_loop().time() - start)
        typical = sorted(took)[len(took) // 2]
        draw = random.Random(1303)

        async def timed(fmt: str, i: int) -> list[int]:
            # One read in six with room to finish even on a busy machine, so that both outcomes come up.
            async with asyncio.timeout(50 * typical if i % 6 == 0 else draw.uniform(0, 1.5 * typical)):
                return await history(fmt)

        outcomes: dict[str, int] = {}
        for i in range(90):
            fmt = formats[i % 3]
            for r in await asyncio.gather(*(timed(fmt, i + j) for j in range(3)), return_exceptions=True):
                key = "rows" if r == want else type(r).__name__
                outcomes[key] = outcomes.get(key, 0) + 1
            assert await history(fmt) == want
        assert set(outcomes) <= {"rows", "TimeoutError"}, outcomes
        assert outcomes.get("TimeoutError", 0) > 0 and outcomes.get("rows", 0) > 0, outcomes
        # A connection closed by its read (cut short in a COPY) leaves a backend that ends once it reads the
        # close: give those a moment. A connection handed back inside its transaction would stay there.
        for _ in range(100):
            open_xacts = await sql(db).fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND xact_start IS NOT NULL"
                " AND pid <> pg_backend_pid()")
            if not open_xacts:
                break
            await asyncio.sleep(0.05)
        assert open_xacts == 0
        assert db.read_status()[0]["last_error"] is None
    assert not [r for r in caplog.records if "transaction" in r.getMessage()]


def _recv(rows: object) -> list[int]:
    """The receipt times of a history read in any format, as Unix µs."""
    if isinstance(rows, list):
        return [r.recv_ts for r in rows]
    ts = rows["recv_ts"]  # type: ignore[index]
    return ts.view("int64").tolist() if isinstance(ts, np.ndarray) else list(ts)


async def test_rows_for_a_partition_left_detached_by_a_killed_archive_wait_and_are_stored_after_the_rerun(
        dsn, tmp_path, caplog):
    # `hftdb archive` SIGKILLed right after the detach leaves the partition's table detached (with its marker) under
    # the partition's name until a rerun drops it. A writer with late rows for that day finds no partition, and
    # creating one meets the name taken: it waits as for an outage (rows kept), without a traceback a retry, and
    # stores them once the rerun has finished the archive.
    s = settings(tmp_path)
    root = Path(s.archive.root)
    day1 = DAY0  # the first partition archived, the one left detached
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    env.update(HFTDB_DSN=dsn, HFTDB_ARCHIVE_ROOT=str(root), HFTDB_METRICS_PORT="1",
               HFTDB_WRITER_SPOOL_DIR=str(tmp_path / "spool2"))
    async with DatabaseManager(dsn, settings=s) as db:
        n = await _seed(db)
        rc, out, err = await _cli("archive", "--older-than-days", "10", "--table", "book_tickers",
                                  env={**env, "_HFTDB_ARCHIVE_STOP_AT": "detached"}, cwd=tmp_path)
        assert rc == -9, (out, err)
        caplog.set_level("INFO")
        late = [BookTicker("okx_spot", "BTC-USDT", 1.0, 2.0, 1.5, 3.0, day1 + 11 + i, update_id=900_000 + i)
                for i in range(5)]
        assert await db.insert_book_ticker_snapshots(late) == 5
        flushed = asyncio.create_task(db.flush())
        async with asyncio.timeout(60):
            while db.writer_stats("book_tickers")["retries"] < 3:
                await asyncio.sleep(0.01)
        assert not flushed.done()
        stats = db.writer_stats("book_tickers")
        assert stats["rows_committed"] == n and "ObjectInUse" in stats["last_error"], stats
        assert not [r for r in caplog.records if r.exc_info or "unexpected error" in r.getMessage()]
        rc, out, err = await _cli("archive", "--older-than-days", "10", "--table", "book_tickers", env=env,
                                  cwd=tmp_path)
        assert rc == 0 and "finished book_tickers_p" in out, (out, err)
        async with asyncio.timeout(60):
            await flushed
        assert db.writer_stats("book_tickers")["rows_committed"] == n + 5
        history = await db.get_book_ticker_history("okx_spot", "BTC-USDT", start=day1, end=day1 + DAY_US)
        assert sorted(r.update_id for r in history if r.update_id and r.update_id >= 900_000) == list(
            range(900_000, 900_005))
        assert len(history) == len({(r.recv_ts, r.update_id, r.bid_price) for r in history})
        # The late rows' new partition goes to the archive as the next generation.
        report = (await db.archive_partitions(10, tables=["book_tickers"]))["book_tickers"]
        assert report.archived == [f"book_tickers_p{archive._date(day1).replace('-', '')}"] and report.rows == 5
        assert await db.get_book_ticker_history("okx_spot", "BTC-USDT", start=day1, end=day1 + DAY_US) == history
    assert not [r for r in caplog.records if r.exc_info or "unexpected error" in r.getMessage()]


@contextlib.contextmanager
def _full_tmpfs(path: Path):
    """A 16 KiB tmpfs mounted at ``path`` (root only; the test is skipped where mounting is not allowed)."""
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k,nr_inodes=64", "tmpfs", str(path)],
                          capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.mark.skipif(sys.platform != "linux", reason="mounts a tmpfs")
async def test_a_manifest_the_disk_has_no_room_for_leaves_no_file_in_place(dsn, tmp_path):
    # The day's directory is a full file system; its exchange directories (symbolic links) are elsewhere, so the
    # Parquet files are written, verified and renamed into place, and the manifest's write fails for real.
    s = settings(tmp_path)
    root = Path(s.archive.root)
    async with DatabaseManager(dsn, settings=s) as db:
        await _seed(db)
        want = sorted(map(_norm, await _pg_rows(dsn, "book_tickers")))
        day = root / "book_tickers" / f"date={archive._date(DAY0)}"
        with _full_tmpfs(day):
            for ex in ("binance_spot", "okx_spot"):
                (tmp_path / "elsewhere" / ex).mkdir(parents=True)
                (day / f"exchange={ex}").symlink_to(tmp_path / "elsewhere" / ex)
            with contextlib.suppress(OSError), open(day / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 1024)
                    f.flush()
            with pytest.raises(OSError) as failed:
                await db.archive_partitions(10, tables=["book_tickers"])
            assert failed.value.errno == 28  # ENOSPC
            # Nothing published without its manifest, no temporary file, the partition still attached.
            assert not list(day.glob("_manifest.*")) and not list(day.glob(".*"))
            assert not [p for p in (tmp_path / "elsewhere").rglob("*") if p.is_file()]
            assert sorted(map(_norm, await _pg_rows(dsn, "book_tickers"))) == want
            assert archive.read_manifests(root, "book_tickers") == []
        report = (await db.archive_partitions(10, tables=["book_tickers"]))["book_tickers"]
        assert len(report.archived) == 3
    got = sorted(map(_norm, await _pg_rows(dsn, "book_tickers") + _file_rows(root, "book_tickers",
                                                                             listed_only=False)))
    assert got == want


@pytest.mark.parametrize("damage", ["truncated", "missing"])
async def test_a_day_with_a_damaged_file_is_not_restored_and_reads_name_the_file(dsn, tmp_path, damage):
    s = settings(tmp_path)
    s = msgspec.structs.replace(s, storage=msgspec.structs.replace(s.storage, partition_interval_s=60))
    root = Path(s.archive.root)
    day1 = DAY0 + DAY_US
    async with DatabaseManager(dsn, settings=s) as db:
        await _seed(db)
        await db.archive_partitions(10, tables=["book_tickers"])
        pg_before = await _count(dsn, "book_tickers")
        manifests = [m for m in archive.read_manifests(root, "book_tickers") if m.date == archive._date(day1)]
        assert len(manifests) == 3  # the day's rows span three minutes
        last = manifests[-1]
        (entry,) = [f for f in last.files if f.exchange == "binance_spot"]
        path = root / "book_tickers" / f"date={last.date}" / entry.path
        if damage == "missing":
            path.unlink()
        else:
            path.write_bytes(path.read_bytes()[:entry.bytes // 2])
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    env.update(HFTDB_DSN=dsn, HFTDB_ARCHIVE_ROOT=str(root), HFTDB_METRICS_PORT="1",
               HFTDB_WRITER_SPOOL_DIR=str(tmp_path / "spool"), HFTDB_STORAGE_PARTITION_INTERVAL_S="60")
    rc, out, err = await _cli("archive", "restore", "--table", "book_tickers", "--date", last.date, env=env,
                              cwd=tmp_path)
    assert rc == 1 and "Traceback" not in err, (out, err)
    (line,) = err.strip().splitlines()
    assert entry.path in line and "hftdb archive verify" in line, line
    # Nothing of the day restored: every partition's rows still only in its files.
    assert await _count(dsn, "book_tickers") == pg_before
    assert [m.state for m in archive.read_manifests(root, "book_tickers")] == ["dropped"] * 9
    async with DatabaseManager(dsn, settings=s) as db:
        # A read of the day meets the file: one error naming it and the command that checks the archive.
        with pytest.raises(DatabaseError) as failed:
            await db.get_book_ticker_history("binance_spot", "BTCUSDT", start=day1, end=day1 + DAY_US)
        assert entry.path in str(failed.value) and "hftdb archive verify" in str(failed.value)


async def test_restore_with_the_archive_off_is_the_one_line_every_archive_command_gives(dsn, tmp_path):
    # root = "" turns the archive off: restore must not read a relative ./book_tickers under the current directory.
    (tmp_path / "book_tickers" / "date=2026-11-18").mkdir(parents=True)
    async with DatabaseManager(dsn, settings=settings(tmp_path, root="")) as db:
        with pytest.raises(ValidationError, match="^the archive is off: "):
            await db.restore_archive("book_tickers", "2026-11-18")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    env.update(HFTDB_DSN=dsn, HFTDB_ARCHIVE_ROOT="", HFTDB_METRICS_PORT="1",
               HFTDB_WRITER_SPOOL_DIR=str(tmp_path / "spool"))
    for args in (("archive",), ("archive", "restore", "--table", "book_tickers", "--date", "2026-11-18")):
        rc, out, err = await _cli(*args, env=env, cwd=tmp_path)
        assert rc == 1 and err.strip().splitlines() == ["hftdb: the archive is off: [archive] root is empty"], (
            args, out, err)


async def test_a_late_row_after_a_crash_between_drop_and_manifest_does_not_overwrite_the_archived_files(
        dsn, tmp_path):
    # `hftdb archive` SIGKILLed after the DROP, before its manifest says "dropped"; then a late row makes the
    # partition again. The rerun took the manifest for the new table's and wrote its generation again from the new
    # table alone: the archived rows' files were replaced by one row's (100 rows of 101 lost).
    s = settings(tmp_path)
    root = Path(s.archive.root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    env.update(HFTDB_DSN=dsn, HFTDB_ARCHIVE_ROOT=str(root), HFTDB_METRICS_PORT="1",
               HFTDB_WRITER_SPOOL_DIR=str(tmp_path / "spool2"))
    async with DatabaseManager(dsn, settings=s) as db:
        await db.insert_exchange(ExchangeName.BINANCE_USDM)
        rows = [BookTicker("binance_usdm", "AAA", 1.0, 1.0, 2.0, 1.0, DAY0 + i, update_id=i) for i in range(100)]
        assert await db.insert_book_ticker_snapshots(rows) == 100
        await db.flush()
        rc, out, err = await _cli("archive", "--older-than-days", "10", "--table", "book_tickers",
                                  env={**env, "_HFTDB_ARCHIVE_STOP_AT": "dropped"}, cwd=tmp_path)
        assert rc == -9, (out, err)
        assert [m.state for m in archive.read_manifests(root, "book_tickers")] == ["written"]
        assert await db.insert_book_ticker_snapshots(
            [BookTicker("binance_usdm", "AAA", 1.0, 1.0, 2.0, 1.0, DAY0 + 500, update_id=500)]) == 1
        await db.flush()
        rc, out, err = await _cli("archive", "--older-than-days", "10", "--table", "book_tickers", env=env,
                                  cwd=tmp_path)
        assert rc == 0, (out, err)
        manifests = archive.read_manifests(root, "book_tickers")
        assert [(m.generation, m.state, m.rows) for m in manifests] == [(0, "dropped", 100), (1, "dropped", 1)]
        history = await db.get_book_ticker_history("binance_usdm", "AAA", start=DAY0, end=DAY0 + DAY_US)
        assert sorted(r.update_id for r in history) == [*range(100), 500]


# -- a damaged manifest ---------------------------------------------------------------------------------------
#
# One manifest cut short (or of another shape) ended `hftdb archive verify`, `archive restore` and `hftdb stats` in
# a msgspec.DecodeError traceback, made history reads over its day raise that raw error naming no file, and made
# get_database_stats() (the daemon's /metrics and /stats) fail altogether.

_DAMAGED = {"cut short": b"{", "another shape": b'{"table": "book_tickers", "rows": "many"}'}


def _day(us: int) -> str:
    return datetime.fromtimestamp(us // 1_000_000, tz=timezone.utc).strftime("%Y-%m-%d")


def _damage_manifest(root: Path, table: str, day_us: int, content: bytes) -> tuple[Path, str, int]:
    """Overwrite the one manifest of ``table``'s day with ``content``; return its path, its name as hftdb names
    it (``<table>/date=<day>/<file>``) and the rows it listed."""
    (path,) = (root / table / f"date={_day(day_us)}").glob("_manifest.*.json")
    rows = json.loads(path.read_bytes())["rows"]
    path.write_bytes(content)
    return path, f"{table}/date={_day(day_us)}/{path.name}", rows


def _tree(top: Path) -> list[tuple[str, bytes]]:
    return sorted((p.relative_to(top).as_posix(), p.read_bytes()) for p in top.rglob("*") if p.is_file())


def _cli_env(dsn: str, root: Path, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    env.update(HFTDB_DSN=dsn, HFTDB_ARCHIVE_ROOT=str(root), HFTDB_METRICS_PORT="1",
               HFTDB_WRITER_SPOOL_DIR=str(tmp_path / "spool-cli"))
    return env


@pytest.mark.parametrize("content", list(_DAMAGED.values()), ids=list(_DAMAGED))
async def test_a_damaged_manifest_fails_reads_of_its_day_and_restore_naming_it_and_verify_reports_it(
        dsn, tmp_path, content):
    s = settings(tmp_path)
    root = Path(s.archive.root)
    day1 = DAY0 + DAY_US
    async with DatabaseManager(dsn, settings=s) as db:
        await _seed(db)
        await db.archive_partitions(10)
        day0_rows = await db.get_book_ticker_history("binance_spot", "BTCUSDT", start=DAY0, end=DAY0 + DAY_US)
        path, where, _ = _damage_manifest(root, "book_tickers", day1, content)
        # A read whose window needs the day: one hftdb error naming the manifest and the command that checks it.
        for start, end, fmt in ((DAY0, now_us() + 1, "objects"), (day1 + 1, day1 + 2, "numpy"),
                                (day1, day1 + DAY_US, "columns")):
            with pytest.raises(DatabaseError) as failed:
                await db.get_book_ticker_history("okx_spot", "BTC-USDT", start=start, end=end, format=fmt)
            assert where in str(failed.value) and "hftdb archive verify" in str(failed.value), failed.value
        # The other days, and the other tables, read as before.
        assert await db.get_book_ticker_history("binance_spot", "BTCUSDT", start=DAY0, end=DAY0 + DAY_US) == day0_rows
        rates = await db.get_funding_rate_history("binance_usdm", "BTCUSDT", start=DAY0, end=now_us() + 1)
        assert len(rates) == 3 * 40 + 1
        with pytest.raises(DatabaseError, match="not restored, nothing loaded") as failed:
            await db.restore_archive("book_tickers", _day(day1))
        assert where in str(failed.value) and "hftdb archive verify" in str(failed.value)
        pg_rows = await _count(dsn, "book_tickers")
    env = _cli_env(dsn, root, tmp_path)
    # verify names it as a mismatch and goes on with every other file.
    rc, out, err = await _cli("archive", "verify", env=env, cwd=tmp_path)
    assert rc == 1 and "Traceback" not in err, (out, err)
    assert f"MISMATCH {where}: damaged manifest (" in out, out
    assert "verified 10 file(s) of 9 archived partition(s)" in out and ": 1 problem(s)" in out, out
    rc, out, err = await _cli("archive", "verify", "--table", "book_tickers", "--date", _day(DAY0), env=env,
                              cwd=tmp_path)
    assert rc == 0 and "every file matches its manifest" in out, (out, err)
    # restore refuses the day with one line naming it; nothing is loaded, the manifest is left as it was.
    rc, out, err = await _cli("archive", "restore", "--table", "book_tickers", "--date", _day(day1), env=env,
                              cwd=tmp_path)
    assert rc == 1 and "Traceback" not in err, (out, err)
    (line,) = err.strip().splitlines()
    assert where in line and "hftdb archive verify" in line, line
    assert await _count(dsn, "book_tickers") == pg_rows
    assert path.read_bytes() == content


async def test_a_damaged_manifest_is_left_out_of_the_stats_counted_there_and_logged_once(dsn, tmp_path, caplog):
    s = settings(tmp_path)
    root = Path(s.archive.root)
    day1 = DAY0 + DAY_US
    async with DatabaseManager(dsn, settings=s) as db:
        n = await _seed(db)
        await db.archive_partitions(10)
        path, where, day1_rows = _damage_manifest(root, "book_tickers", day1, b"{")
        with caplog.at_level(logging.WARNING):
            for _ in range(3):  # the daemon's /metrics and /stats call it at every scrape
                stats = await db.get_database_stats()
        bt = stats["archive"]["tables"]["book_tickers"]
        assert (bt["days"], bt["partitions"], bt["rows"], bt["damaged_manifests"]) == (2, 2, n - 30 - day1_rows, 1)
        assert stats["archive"]["tables"]["funding_rates"]["damaged_manifests"] == 0
        warned = [r for r in caplog.records if where in r.getMessage()]
        assert [r.levelno for r in warned] == [logging.WARNING], caplog.text
        assert "hftdb archive verify" in warned[0].getMessage()
        text = metrics.render(stats)
        assert 'hftdb_archive_damaged_manifests{table="book_tickers"} 1' in text
        assert 'hftdb_archive_damaged_manifests{table="balances"} 0' in text
    env = _cli_env(dsn, root, tmp_path)
    for _ in range(2):  # the second from the summary the first saved
        rc, out, err = await _cli("stats", env=env, cwd=tmp_path)
        assert rc == 0 and "Traceback" not in err, (out, err)
        assert "DAMAGED: 1 manifest(s) cannot be read" in out and "hftdb archive verify --table book_tickers" in out
    rc, out, err = await _cli("stats", "--json", env=env, cwd=tmp_path)
    assert rc == 0 and "Traceback" not in err, (out, err)
    assert json.loads(out)["archive"]["tables"]["book_tickers"]["damaged_manifests"] == 1
    assert path.read_bytes() == b"{"


async def test_the_archiver_leaves_a_day_with_a_damaged_manifest_as_it_is_and_names_it(dsn, tmp_path):
    s = settings(tmp_path)
    root = Path(s.archive.root)
    day1, day2 = DAY0 + DAY_US, DAY0 + 2 * DAY_US
    async with DatabaseManager(dsn, settings=s) as db:
        await _seed(db)
        await db.archive_partitions(10)
        # Late rows recreate the partitions of two archived days: the archiver has work on both.
        for t, uid in ((day1 + 7, 888), (day2 + 7, 999)):
            await db.insert_book_ticker_snapshots([BookTicker("binance_spot", "BTCUSDT", 1.0, 2.0, 1.5, 3.0, t,
                                                              update_id=uid)])
        await db.flush()
        assert await _count(dsn, "book_tickers") == 32
        path, where, _ = _damage_manifest(root, "book_tickers", day1, b"{")
        day1_dir = path.parent
        day1_files = _tree(day1_dir)
        with pytest.raises(DatabaseError) as failed:
            await db.archive_partitions(10, tables=["book_tickers"])
        message = str(failed.value)
        assert where in message and "hftdb archive verify" in message and f"p{_day(day1).replace('-', '')}" in message
        # The other day's late row is archived (part-1); the damaged day's stays in PostgreSQL, its files as they were.
        assert sorted(p.name for p in (root / "book_tickers" / f"date={_day(day2)}").rglob("*.parquet")) == [
            "part-0.parquet", "part-0.parquet", "part-1.parquet"]
        assert await _count(dsn, "book_tickers") == 31
        assert _tree(day1_dir) == day1_files
        # The upkeep pass fails with that hftdb error (the daemon logs it as one line, and tries again later), once
        # the other tables are archived: a late funding rate for day 2 goes to the files all the same.
        await db.insert_funding_rates([FundingRate("binance_usdm", "BTCUSDT", 0.0003, day2 + 9, exchange_ts=day2 + 8)])
        await db.flush()
        funding = await _count(dsn, "funding_rates")
        with pytest.raises(DatabaseError, match="damaged"):
            await db.run_maintenance()
        assert await _count(dsn, "book_tickers") == 31
        assert await _count(dsn, "funding_rates") == funding - 1
        # Expiry deletes the other days and leaves the damaged one.
        gone = await archive.expire(root, "book_tickers", now_us())
        assert len(gone) == 3 and f"book_tickers_p{_day(day1).replace('-', '')}" not in gone
        assert path.read_bytes() == b"{"
    rc, out, err = await _cli("archive", "--older-than-days", "10", "--table", "book_tickers",
                              env=_cli_env(dsn, root, tmp_path), cwd=tmp_path)
    assert rc == 1 and "Traceback" not in err, (out, err)
    assert where in err.strip().splitlines()[-1] and "not archived, left in PostgreSQL" in err, err
    assert await _count(dsn, "book_tickers") == 31
    assert _tree(day1_dir) == day1_files

import asyncio
import importlib.resources
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest

from hftdb.config import StorageSettings
from hftdb.errors import MigrationError, StateError, ValidationError
from hftdb.db.partitions import (
    TIME_SERIES_TABLES,
    drop_partitions_before,
    ensure_partitions,
    index_cold_partitions,
    list_partitions,
    maintain,
    partition_bounds,
    partition_name,
)
from hftdb.db.schema import MIGRATION_LOCK_KEY, Migrator, load_migrations, migrate

TABLES = [
    "exchanges", "symbols", "book_tickers", "book_tickers_latest", "funding_rates", "funding_rates_latest",
    "balances", "balances_latest", "ingest_batches",
]
US = 1_000_000
DAY_US = 86_400 * US
HOUR_US = 3_600 * US
# 2026-11-22 13:45:30.5 UTC
NOW_US = int(datetime(2026, 11, 22, 13, 45, 30, 500_000, tzinfo=timezone.utc).timestamp()) * US + 500_000


def us(*args: int) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp()) * US


@pytest.fixture
async def conn(dsn):
    connection = await asyncpg.connect(dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def migrated(conn):
    await migrate(conn)
    return conn


def shipped_files() -> dict[str, bytes]:
    root = importlib.resources.files("hftdb.db.migrations")
    return {e.name: e.read_bytes() for e in root.iterdir() if e.name.endswith(".sql")}


async def existing_tables(conn) -> set[str]:
    rows = await conn.fetch("SELECT t FROM unnest($1::text[]) t WHERE to_regclass(t) IS NOT NULL", TABLES)
    return {r["t"] for r in rows}


async def insert_book_ticker(conn, recv_us: int, symbol_id: int = 1) -> None:
    await conn.execute(
        "INSERT INTO book_tickers (symbol_id, recv_ts, bid_price, bid_qty, ask_price, ask_qty)"
        " VALUES ($1, $2, 1, 1, 2, 1)",
        symbol_id, datetime.fromtimestamp(recv_us / US, timezone.utc),
    )


async def wait_for_lock_waiters(conn, count: int) -> None:
    query = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND (classid::bigint << 32 | objid::bigint) = $1"
    )
    while await conn.fetchval(query, MIGRATION_LOCK_KEY) < count:
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------------------------------------------- migrations

#: The versions hftdb ships, in order; the tests below add their own files after them.
SHIPPED = [m.version for m in load_migrations()]
NEXT = SHIPPED[-1] + 1


async def test_up_from_empty_creates_all_tables(conn):
    assert await existing_tables(conn) == set()
    assert await migrate(conn) == SHIPPED
    assert await existing_tables(conn) == set(TABLES)
    assert await migrate(conn) == []  # nothing pending


async def test_status_before_and_after(conn):
    migrator = Migrator(conn)
    pending = (await migrator.status())[0]
    assert (pending.version, pending.name, pending.applied, pending.applied_at, pending.checksum_ok) == (
        1, "initial", False, None, None
    )
    await migrator.up()
    applied = (await migrator.status())[0]
    assert applied.applied and applied.checksum_ok
    assert applied.applied_at is not None and applied.applied_at.tzinfo is not None
    row = await conn.fetchrow("SELECT name, checksum FROM schema_migrations WHERE version = 1")
    assert row["name"] == "initial"
    assert row["checksum"] == load_migrations()[0].checksum and len(row["checksum"]) == 64


async def test_down_to_zero_then_up_restores(migrated):
    conn = migrated
    await ensure_partitions(conn, "book_tickers", NOW_US, NOW_US, interval_s=86_400)
    migrator = Migrator(conn)
    assert await migrator.down(0) == SHIPPED[::-1]
    assert await existing_tables(conn) == set()
    assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 0
    assert [s.applied for s in await migrator.status()] == [False] * len(SHIPPED)
    assert await migrator.down(0) == []
    assert await migrator.up() == SHIPPED
    assert await existing_tables(conn) == set(TABLES)


async def test_up_and_down_with_targets(conn):
    files = shipped_files() | {
        f"{NEXT:04d}_extra.up.sql": b"CREATE TABLE extra (v int);",
        f"{NEXT:04d}_extra.down.sql": b"DROP TABLE extra;",
        f"{NEXT + 1:04d}_more.up.sql": b"CREATE TABLE more (v int);",
        f"{NEXT + 1:04d}_more.down.sql": b"DROP TABLE more;",
    }
    migrator = Migrator(conn, source=files)
    assert await migrator.up(target=NEXT) == SHIPPED + [NEXT]
    assert await migrator.up() == [NEXT + 1]
    assert await migrator.down(1) == [NEXT + 1, NEXT] + SHIPPED[:0:-1]
    assert await conn.fetchval("SELECT to_regclass('extra') IS NULL AND to_regclass('more') IS NULL")
    assert [s.applied for s in await migrator.status()] == [True] + [False] * (len(SHIPPED) + 1)


async def test_edited_applied_migration_stops_startup(migrated):
    files = shipped_files()
    files["0001_initial.up.sql"] += b"\n-- a harmless-looking edit\n"
    migrator = Migrator(migrated, source=files)
    with pytest.raises(MigrationError, match=r"version 0001: 0001_initial\.up\.sql has changed since it was applied"):
        await migrator.up()
    with pytest.raises(MigrationError, match="0001_initial.up.sql"):
        await migrator.verify()
    status = (await migrator.status())[0]
    assert status.applied and status.checksum_ok is False
    await Migrator(migrated).verify()  # the shipped file still matches


async def test_applied_version_without_file(migrated):
    await migrated.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (7, 'future', 'x')")
    with pytest.raises(MigrationError, match=r"version 0007 \(future\) is applied but no file"):
        await Migrator(migrated).up()
    assert (await Migrator(migrated).status())[-1].checksum_ok is False


async def test_failed_migration_rolls_back(conn):
    files = shipped_files() | {f"{NEXT:04d}_bad.up.sql": b"CREATE TABLE half (v int); SELECT no_such_function();"}
    with pytest.raises(MigrationError, match=f"{NEXT:04d}_bad.up.sql failed"):
        await Migrator(conn, source=files).up()
    assert await conn.fetchval("SELECT to_regclass('half') IS NULL")
    assert await conn.fetchval("SELECT array_agg(version ORDER BY version) FROM schema_migrations") == SHIPPED


def test_bad_migration_file_names():
    with pytest.raises(MigrationError, match="not named"):
        load_migrations({"0002-oops.up.sql": "SELECT 1"})
    with pytest.raises(MigrationError, match="down file but no up file"):
        load_migrations({"0002_x.down.sql": "SELECT 1"})


async def test_concurrent_migrators_apply_each_version_once(dsn, conn):
    # Hold the lock so both migrators are provably waiting on it, then let them race.
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    first, second = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        tasks = [asyncio.create_task(Migrator(c).up()) for c in (first, second)]
        await wait_for_lock_waiters(conn, 2)
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        results = await asyncio.gather(*tasks)
    finally:
        await first.close()
        await second.close()
    assert sorted(results) == [[], SHIPPED]
    assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(SHIPPED)
    assert await existing_tables(conn) == set(TABLES)


async def test_lock_timeout_names_the_holder(dsn, conn):
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    other = await asyncpg.connect(dsn)
    try:
        with pytest.raises(MigrationError, match="another process held the migration lock"):
            await Migrator(other, lock_timeout=0.05).up()
        assert await other.fetchval("SELECT current_setting('lock_timeout')") == "0"  # SET LOCAL did not leak
    finally:
        await other.close()


async def test_migrator_refuses_open_transaction(conn):
    async with conn.transaction():
        with pytest.raises(StateError):
            await Migrator(conn).up()


# ---------------------------------------------------------------------------------------------------- partitions


def test_partition_naming_and_bounds():
    assert partition_bounds(NOW_US, 86_400) == (us(2026, 11, 22), us(2026, 11, 23))
    assert partition_bounds(NOW_US, 3_600) == (us(2026, 11, 22, 13), us(2026, 11, 22, 14))
    assert partition_name("book_tickers", NOW_US, interval_s=86_400) == "book_tickers_p20261122"
    assert partition_name("balances", NOW_US, interval_s=7 * 86_400) == "balances_p20261119"  # epoch-aligned weeks
    assert partition_name("funding_rates", NOW_US, interval_s=3_600) == "funding_rates_p20261122_1300"
    assert partition_name("book_tickers", NOW_US, interval_s=900) == "book_tickers_p20261122_1345"
    assert partition_bounds(-1, 86_400) == (-DAY_US, 0)  # floor, not truncation
    with pytest.raises(ValidationError, match="interval_s"):
        partition_bounds(NOW_US, 90)
    with pytest.raises(ValidationError, match="table must be one of"):
        partition_name("symbols", NOW_US, interval_s=86_400)


async def test_maintain_creates_partitions_ahead_and_is_idempotent(migrated):
    conn = migrated
    settings = StorageSettings(partitions_ahead=2, cold_btree=False)
    report = await maintain(conn, settings, NOW_US)
    assert len(report.created) == 9
    for table in TIME_SERIES_TABLES:
        parts = await list_partitions(conn, table)
        assert [p.name for p in parts] == [f"{table}_p20261122", f"{table}_p20261123", f"{table}_p20261124"]
        assert [(p.lower_us, p.upper_us) for p in parts] == [
            (us(2026, 11, 22) + i * DAY_US, us(2026, 11, 23) + i * DAY_US) for i in range(3)
        ]
        assert not any(p.has_btree for p in parts)
    brin = await conn.fetchval(
        "SELECT pg_get_indexdef('book_tickers_p20261122_brin'::regclass) || ' ' ||"
        " array_to_string(reloptions, ',') FROM pg_class WHERE relname = 'book_tickers_p20261122_brin'"
    )
    assert "USING brin (recv_ts)" in brin and "pages_per_range=32" in brin
    await insert_book_ticker(conn, NOW_US + 2 * DAY_US)
    again = await maintain(conn, settings, NOW_US)
    assert again.created == again.dropped == again.indexed == []


async def test_hourly_partitions_and_hot_btree(migrated):
    created = await ensure_partitions(
        migrated, "balances", us(2026, 11, 22, 23, 30), us(2026, 11, 23, 0, 10), interval_s=3_600, hot_index="btree"
    )
    assert created == ["balances_p20261122_2300", "balances_p20261123_0000"]
    parts = await list_partitions(migrated, "balances")
    assert all(p.has_btree for p in parts)
    definition = await migrated.fetchval("SELECT pg_get_indexdef('balances_p20261122_2300_btree'::regclass)")
    assert "(exchange_id, account, asset, recv_ts)" in definition


async def test_backfill_creates_old_partition_on_demand(migrated):
    conn = migrated
    old = us(2020, 3, 1, 12)
    with pytest.raises(asyncpg.CheckViolationError):  # no partition for that time yet
        await insert_book_ticker(conn, old)
    assert await ensure_partitions(conn, "book_tickers", old, old + HOUR_US, interval_s=86_400) == [
        "book_tickers_p20200301"
    ]
    await insert_book_ticker(conn, old)
    assert await ensure_partitions(conn, "book_tickers", old, old, interval_s=86_400) == []
    # Already covered by the daily partition: a switch to hourly neither duplicates nor fails.
    assert await ensure_partitions(conn, "book_tickers", old, old, interval_s=3_600) == []
    # Works inside the caller's transaction (a writer backfilling before its COPY).
    async with conn.transaction():
        assert await ensure_partitions(conn, "book_tickers", old + DAY_US, old + DAY_US, interval_s=86_400) == [
            "book_tickers_p20200302"
        ]
        await insert_book_ticker(conn, old + DAY_US)
    assert await conn.fetchval("SELECT count(*) FROM book_tickers") == 2


async def test_partial_overlap_is_refused(migrated):
    await ensure_partitions(migrated, "funding_rates", NOW_US, NOW_US, interval_s=3_600)
    with pytest.raises(ValidationError, match="would overlap"):
        await ensure_partitions(migrated, "funding_rates", NOW_US, NOW_US, interval_s=86_400)


async def test_concurrent_ensure_creates_each_partition_once(dsn, migrated):
    others = [await asyncpg.connect(dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(
            ensure_partitions(c, "book_tickers", NOW_US, NOW_US + 5 * DAY_US, interval_s=86_400) for c in others
        ))
    finally:
        for c in others:
            await c.close()
    assert sorted(name for names in results for name in names) == sorted(
        partition_name("book_tickers", NOW_US + i * DAY_US, interval_s=86_400) for i in range(6)
    )
    assert len(await list_partitions(migrated, "book_tickers")) == 6


async def test_ensure_partitions_validates(migrated):
    with pytest.raises(ValidationError, match="table must be one of"):
        await ensure_partitions(migrated, "symbols; DROP TABLE x", 0, 0, interval_s=86_400)
    with pytest.raises(ValidationError, match="before start_us"):
        await ensure_partitions(migrated, "book_tickers", 10, 0, interval_s=86_400)
    with pytest.raises(ValidationError, match="hot_index"):
        await ensure_partitions(migrated, "book_tickers", 0, 0, interval_s=86_400, hot_index="hash")
    with pytest.raises(ValidationError, match="spans over"):
        await ensure_partitions(migrated, "book_tickers", 0, 10**9 * US, interval_s=3_600)


async def test_retention_drops_only_old_partitions(migrated):
    conn = migrated
    old_day = NOW_US - 40 * DAY_US
    await ensure_partitions(conn, "book_tickers", old_day, old_day + 2 * DAY_US, interval_s=86_400)
    await ensure_partitions(conn, "book_tickers", NOW_US - DAY_US, NOW_US + DAY_US, interval_s=86_400)
    for i in range(3):
        await insert_book_ticker(conn, old_day + i * DAY_US)
    await insert_book_ticker(conn, NOW_US)
    cutoff = NOW_US - 30 * DAY_US
    expected = [partition_name("book_tickers", old_day + i * DAY_US, interval_s=86_400) for i in range(3)]

    assert await drop_partitions_before(conn, "book_tickers", cutoff, dry_run=True) == expected
    assert len(await list_partitions(conn, "book_tickers")) == 6
    assert await conn.fetchval("SELECT count(*) FROM book_tickers") == 4

    assert await drop_partitions_before(conn, "book_tickers", cutoff) == expected
    remaining = await list_partitions(conn, "book_tickers")
    assert [p.name for p in remaining] == ["book_tickers_p20261121", "book_tickers_p20261122", "book_tickers_p20261123"]
    assert await conn.fetchval("SELECT count(*) FROM book_tickers") == 1
    assert await conn.fetchval("SELECT count(*) FROM pg_class WHERE relname = ANY($1::text[])", expected) == 0
    assert await drop_partitions_before(conn, "book_tickers", cutoff) == []


async def test_retention_spares_foreign_partitions_and_finishes_interrupted_runs(migrated):
    conn = migrated
    old = NOW_US - 60 * DAY_US
    lo, hi = partition_bounds(old, 86_400)
    await conn.execute(
        "CREATE TABLE archive_by_hand PARTITION OF book_tickers"
        f" FOR VALUES FROM ('{datetime.fromtimestamp(lo / US, timezone.utc).isoformat()}')"
        f" TO ('{datetime.fromtimestamp(hi / US, timezone.utc).isoformat()}')"
    )
    [interrupted] = await ensure_partitions(conn, "book_tickers", old + DAY_US, old + DAY_US, interval_s=86_400)
    # A run that died between DETACH and DROP left its marked table behind.
    await conn.execute(f"COMMENT ON TABLE {interrupted} IS 'hftdb: retention drop in progress'")
    await conn.execute(f"ALTER TABLE book_tickers DETACH PARTITION {interrupted} CONCURRENTLY")

    assert await drop_partitions_before(conn, "book_tickers", NOW_US) == []
    assert [p.name for p in await list_partitions(conn, "book_tickers")] == ["archive_by_hand"]
    assert await conn.fetchval("SELECT to_regclass($1) IS NULL", interrupted)


async def test_index_cold_partitions(migrated):
    conn = migrated
    await ensure_partitions(conn, "book_tickers", NOW_US - 2 * DAY_US, NOW_US + DAY_US, interval_s=86_400)
    await ensure_partitions(conn, "balances", NOW_US - DAY_US, NOW_US, interval_s=86_400)
    await insert_book_ticker(conn, NOW_US - DAY_US)
    assert await index_cold_partitions(conn, "book_tickers", NOW_US) == [
        "book_tickers_p20261120", "book_tickers_p20261121"
    ]
    assert {p.name: p.has_btree for p in await list_partitions(conn, "book_tickers")} == {
        "book_tickers_p20261120": True,
        "book_tickers_p20261121": True,
        "book_tickers_p20261122": False,  # hot: BRIN only
        "book_tickers_p20261123": False,
    }
    definition = await conn.fetchval("SELECT pg_get_indexdef('book_tickers_p20261121_btree'::regclass)")
    assert "USING btree (symbol_id, recv_ts)" in definition
    assert await index_cold_partitions(conn, "book_tickers", NOW_US) == []
    assert await index_cold_partitions(conn, "balances", NOW_US) == ["balances_p20261121"]


async def _activity(conn, like: str, wait_event: str) -> bool:
    return bool(await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE $1"
        " AND wait_event = $2", like, wait_event))


async def test_a_caller_waiting_for_the_maintenance_lock_does_not_deadlock_an_index_build(migrated, dsn, caplog):
    # One caller builds a sealed partition's btree CONCURRENTLY under the maintenance lock; the build waits for
    # every transaction older than it, and a second caller waiting for that lock inside a statement is one: the
    # server then broke the cycle with "deadlock detected" (hftdb optimize + hftdb archive, DatabaseManagers
    # starting at once).
    conn = migrated
    [name] = await ensure_partitions(conn, "book_tickers", NOW_US - DAY_US, NOW_US - DAY_US, interval_s=86_400)
    blocker, first, second = [await asyncpg.connect(dsn) for _ in range(3)]
    try:
        # A writer's open transaction into the partition: the build waits for it to end.
        tx = blocker.transaction()
        await tx.start()
        await insert_book_ticker(blocker, NOW_US - DAY_US)
        building = asyncio.create_task(index_cold_partitions(first, "book_tickers", NOW_US))
        while not await _activity(conn, "CREATE INDEX CONCURRENTLY%", "virtualxid"):
            await asyncio.sleep(0.01)
        caplog.set_level("INFO", logger="hftdb.db.partitions")
        waiting = asyncio.create_task(index_cold_partitions(second, "book_tickers", NOW_US))
        while not (await _activity(conn, "%pg_advisory_lock%", "advisory")
                   or any("waiting for the maintenance lock" in r.getMessage() for r in caplog.records)):
            await asyncio.sleep(0.01)
        await tx.rollback()
        assert await building == [name]
        assert await waiting == []
    finally:
        for c in (blocker, first, second):
            await c.close()


async def test_index_cold_partitions_rebuilds_invalid_index(migrated):
    conn = migrated
    [name] = await ensure_partitions(conn, "funding_rates", NOW_US - DAY_US, NOW_US - DAY_US, interval_s=86_400)
    # What an interrupted CREATE INDEX CONCURRENTLY leaves behind.
    await conn.execute(f"CREATE INDEX {name}_btree ON {name} (symbol_id, recv_ts)")
    await conn.execute(
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = $1::regclass", f"{name}_btree"
    )
    assert not (await list_partitions(conn, "funding_rates"))[0].has_btree
    assert await index_cold_partitions(conn, "funding_rates", NOW_US) == [name]
    assert (await list_partitions(conn, "funding_rates"))[0].has_btree


async def test_maintain_full_pass(migrated):
    conn = migrated
    settings = StorageSettings(partitions_ahead=1, retention_days=30, ledger_retention_days=7)
    old = NOW_US - 45 * DAY_US
    await ensure_partitions(conn, "funding_rates", old, old, interval_s=86_400)
    await ensure_partitions(conn, "book_tickers", NOW_US - DAY_US, NOW_US - DAY_US, interval_s=86_400)
    now = datetime.fromtimestamp(NOW_US / US, timezone.utc)
    await conn.executemany(
        "INSERT INTO ingest_batches (batch_id, table_name, row_count, committed_at)"
        " VALUES (gen_random_uuid(), $1, 1, $2)",
        [("book_tickers", now - timedelta(days=8)), ("book_tickers", now - timedelta(days=6))],
    )
    startup = await maintain(conn, settings, NOW_US, retention=False)  # deletes nothing
    assert startup.dropped == [] and startup.ledger_rows_deleted == 0 and len(startup.created) == 6
    assert await conn.fetchval("SELECT count(*) FROM ingest_batches") == 2
    report = await maintain(conn, settings, NOW_US)
    assert report.dropped == [partition_name("funding_rates", old, interval_s=86_400)]
    # With retention off the expired partition is kept, so as a sealed partition it gets its btree too.
    assert sorted(startup.indexed) == ["book_tickers_p20261121", "funding_rates_p20261008"]
    assert report.indexed == []
    assert report.created == []
    assert report.ledger_rows_deleted == 1
    assert await conn.fetchval("SELECT count(*) FROM ingest_batches") == 1


async def test_maintenance_refuses_open_transaction(migrated):
    async with migrated.transaction():
        with pytest.raises(StateError):
            await drop_partitions_before(migrated, "book_tickers", NOW_US)

"""The table registry (hftdb.tablespec) against what it describes: the migrated schema and the writers."""

import asyncpg

from hftdb.store import tables
from hftdb import tablespec
from hftdb.db.schema import migrate


async def test_registry_names_every_table_the_migrations_create(dsn):
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        names = {r[0] for r in await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition")}
        assert set(tablespec.ALL_TABLES) == names - {"schema_migrations"}
        for spec in tablespec.TABLES:
            # The latest table's primary key is the registered key: one newest row per key.
            key = await conn.fetchval(
                """SELECT array_agg(a.attname ORDER BY k.ord) FROM pg_index i
                   CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                   WHERE i.indrelid = $1::regclass AND i.indisprimary""", spec.latest)
            assert tuple(key) == spec.key, spec.name
    finally:
        await conn.close()


def test_each_table_names_its_writer_and_record():
    for spec in tablespec.TABLES:
        cls = getattr(tables, spec.encoder)
        assert cls.table == spec.name
        assert tablespec.spec(spec.name) is spec
    assert tablespec.TIME_SERIES == ("book_tickers", "funding_rates", "balances")


def test_feed_rows_and_the_sink_follow_the_registry():
    # A feed's batch has one field per table, named by it; the sink (and the manager) take each table's list
    # through the method the registry names, and the feed counts it in the counter the registry names.
    import msgspec

    from hftdb.exchanges.stream import FeedStats
    from hftdb.exchanges.parsing import Parsed
    from hftdb.exchanges.sink import Sink
    from hftdb.manager import DatabaseManager
    from hftdb.models import FeedRows
    from hftdb.rejects import Rejects

    assert tuple(f.name for f in msgspec.structs.fields(FeedRows)) == tablespec.TIME_SERIES
    assert tuple(f.name for f in msgspec.structs.fields(Parsed))[:len(tablespec.TABLES)] == tablespec.TIME_SERIES
    for spec in tablespec.TABLES:
        assert callable(getattr(Sink, spec.insert)), spec.name
        assert callable(getattr(DatabaseManager, spec.insert)), spec.name
        assert isinstance(getattr(FeedStats("binance_spot", Rejects("feed")), spec.feed_rows), int), spec.name
    assert not FeedRows().has_rows()
    assert all(FeedRows(**{name: [object()]}).has_rows() for name in tablespec.TIME_SERIES)
    assert list(FeedRows(**{name: [name] for name in tablespec.TIME_SERIES}).every_row()) == \
        list(tablespec.TIME_SERIES)

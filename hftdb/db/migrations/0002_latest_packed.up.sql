-- Whole-exchange latest reads without a join and without per-value output (see docs/READS.md, "Latest quotes").
--
-- Measured on the 2-core bench machine, 1,000 symbols: of ~0.9 ms of server CPU per whole-exchange read, ~0.57 ms
-- was the binary output of 8,000 values (one send-function call each) and ~0.22 ms the hash join to symbols
-- that found the exchange's ids. So each *_latest row now also holds:
--
--   exchange_id  its symbol's exchange (fixed for the id's lifetime), filled once when the row is first inserted
--                by a statement-level trigger that sees only the inserted rows (the writers' upserts are unchanged;
--                updates of existing rows never fire it);
--   packed       the row as fixed-width big-endian 8-byte fields, a stored generated column computed on write:
--                symbol_id, a NULL bitmask, then the record's fields in its positional order, with timestamps as
--                Unix microseconds and NULLs as zero bytes with their bit set. timezone(interval, timestamptz) is
--                the one immutable built-in that shifts a timestamptz (by a fixed offset: the Unix epoch is
--                946,684,800 s before PostgreSQL's), and timestamp_send gives its int64 as it stands.
--
-- A read then aggregates the packed rows of a filter into one bytea (string_agg) that hftdb.columnar decodes with
-- the array module.
--
-- The cost moves to the writers' latest upsert: a wider row, and the packed value computed for each upserted row.
-- Fill factor 50 leaves room on each page for the next version of its rows, so updates stay HOT (no index
-- entries, pages pruned in place): with it, one upsert of 1,000 book tickers took ~7-9 ms of server CPU against
-- ~5-6 ms at 0001, where without it 0002 took ~12-13 ms (benchmarks/bench_reads.py, test_upsert). These tables
-- hold one row per symbol, so the doubled size is a few hundred kB.

ALTER TABLE book_tickers_latest SET (fillfactor = 50);
ALTER TABLE funding_rates_latest SET (fillfactor = 50);

ALTER TABLE book_tickers_latest ADD COLUMN exchange_id integer;
ALTER TABLE book_tickers_latest ADD COLUMN packed bytea GENERATED ALWAYS AS (
    int8send(symbol_id::int8)
    || int8send(((exchange_ts IS NULL)::int4 | ((update_id IS NULL)::int4 << 1))::int8)
    || float8send(bid_price) || float8send(bid_qty) || float8send(ask_price) || float8send(ask_qty)
    || timestamp_send(timezone(interval '946684800 seconds', recv_ts))
    || coalesce(timestamp_send(timezone(interval '946684800 seconds', exchange_ts)), '\x0000000000000000'::bytea)
    || coalesce(int8send(update_id), '\x0000000000000000'::bytea)
) STORED;
UPDATE book_tickers_latest l SET exchange_id = s.exchange_id FROM symbols s WHERE s.id = l.symbol_id;
-- exchange_id never changes after the first insert, so this index does not stop HOT updates.
CREATE INDEX book_tickers_latest_exchange_id ON book_tickers_latest (exchange_id);

ALTER TABLE funding_rates_latest ADD COLUMN exchange_id integer;
ALTER TABLE funding_rates_latest ADD COLUMN packed bytea GENERATED ALWAYS AS (
    int8send(symbol_id::int8)
    || int8send(((exchange_ts IS NULL)::int4 | ((next_funding_ts IS NULL)::int4 << 1)
                 | ((mark_price IS NULL)::int4 << 2) | ((index_price IS NULL)::int4 << 3))::int8)
    || float8send(rate)
    || timestamp_send(timezone(interval '946684800 seconds', recv_ts))
    || coalesce(timestamp_send(timezone(interval '946684800 seconds', exchange_ts)), '\x0000000000000000'::bytea)
    || coalesce(timestamp_send(timezone(interval '946684800 seconds', next_funding_ts)), '\x0000000000000000'::bytea)
    || coalesce(float8send(mark_price), '\x0000000000000000'::bytea)
    || coalesce(float8send(index_price), '\x0000000000000000'::bytea)
) STORED;
UPDATE funding_rates_latest l SET exchange_id = s.exchange_id FROM symbols s WHERE s.id = l.symbol_id;
CREATE INDEX funding_rates_latest_exchange_id ON funding_rates_latest (exchange_id);

CREATE FUNCTION hftdb_book_tickers_latest_exchange() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE book_tickers_latest l SET exchange_id = s.exchange_id
    FROM inserted i JOIN symbols s ON s.id = i.symbol_id
    WHERE l.symbol_id = i.symbol_id AND l.exchange_id IS NULL;
    RETURN NULL;
END $$;

CREATE FUNCTION hftdb_funding_rates_latest_exchange() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE funding_rates_latest l SET exchange_id = s.exchange_id
    FROM inserted i JOIN symbols s ON s.id = i.symbol_id
    WHERE l.symbol_id = i.symbol_id AND l.exchange_id IS NULL;
    RETURN NULL;
END $$;

CREATE TRIGGER fill_exchange_id AFTER INSERT ON book_tickers_latest REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION hftdb_book_tickers_latest_exchange();
CREATE TRIGGER fill_exchange_id AFTER INSERT ON funding_rates_latest REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION hftdb_funding_rates_latest_exchange();

-- Back to 0003's column order: packed last, after exchange_id (see 0004's up file).

CREATE TEMP TABLE hftdb_0004_book_tickers_latest ON COMMIT DROP AS
    SELECT symbol_id, exchange_id, recv_ts, exchange_ts, bid_price, bid_qty, ask_price, ask_qty, update_id
    FROM book_tickers_latest;
DROP TABLE book_tickers_latest;
CREATE TABLE book_tickers_latest (
    symbol_id    integer PRIMARY KEY,
    recv_ts      timestamptz NOT NULL,
    exchange_ts  timestamptz,
    bid_price    double precision NOT NULL,
    bid_qty      double precision NOT NULL,
    ask_price    double precision NOT NULL,
    ask_qty      double precision NOT NULL,
    update_id    bigint,
    exchange_id  integer,
    packed       bytea GENERATED ALWAYS AS (
        int8send(symbol_id::int8)
        || int8send(((exchange_ts IS NULL)::int4 | ((update_id IS NULL)::int4 << 1))::int8)
        || float8send(bid_price) || float8send(bid_qty) || float8send(ask_price) || float8send(ask_qty)
        || timestamp_send(timezone(interval '946684800 seconds', recv_ts))
        || coalesce(timestamp_send(timezone(interval '946684800 seconds', exchange_ts)), '\x0000000000000000'::bytea)
        || coalesce(int8send(update_id), '\x0000000000000000'::bytea)
    ) STORED
) WITH (fillfactor = 50);
INSERT INTO book_tickers_latest
    (symbol_id, exchange_id, recv_ts, exchange_ts, bid_price, bid_qty, ask_price, ask_qty, update_id)
    SELECT symbol_id, exchange_id, recv_ts, exchange_ts, bid_price, bid_qty, ask_price, ask_qty, update_id
    FROM hftdb_0004_book_tickers_latest;
CREATE INDEX book_tickers_latest_exchange_id ON book_tickers_latest (exchange_id);
ANALYZE book_tickers_latest;

CREATE TEMP TABLE hftdb_0004_funding_rates_latest ON COMMIT DROP AS
    SELECT symbol_id, exchange_id, recv_ts, exchange_ts, rate, next_funding_ts, mark_price, index_price
    FROM funding_rates_latest;
DROP TABLE funding_rates_latest;
CREATE TABLE funding_rates_latest (
    symbol_id        integer PRIMARY KEY,
    recv_ts          timestamptz NOT NULL,
    exchange_ts      timestamptz,
    rate             double precision NOT NULL,
    next_funding_ts  timestamptz,
    mark_price       double precision,
    index_price      double precision,
    exchange_id      integer,
    packed           bytea GENERATED ALWAYS AS (
        int8send(symbol_id::int8)
        || int8send(((exchange_ts IS NULL)::int4 | ((next_funding_ts IS NULL)::int4 << 1)
                     | ((mark_price IS NULL)::int4 << 2) | ((index_price IS NULL)::int4 << 3))::int8)
        || float8send(rate)
        || timestamp_send(timezone(interval '946684800 seconds', recv_ts))
        || coalesce(timestamp_send(timezone(interval '946684800 seconds', exchange_ts)), '\x0000000000000000'::bytea)
        || coalesce(timestamp_send(timezone(interval '946684800 seconds', next_funding_ts)),
                    '\x0000000000000000'::bytea)
        || coalesce(float8send(mark_price), '\x0000000000000000'::bytea)
        || coalesce(float8send(index_price), '\x0000000000000000'::bytea)
    ) STORED
) WITH (fillfactor = 50);
INSERT INTO funding_rates_latest
    (symbol_id, exchange_id, recv_ts, exchange_ts, rate, next_funding_ts, mark_price, index_price)
    SELECT symbol_id, exchange_id, recv_ts, exchange_ts, rate, next_funding_ts, mark_price, index_price
    FROM hftdb_0004_funding_rates_latest;
CREATE INDEX funding_rates_latest_exchange_id ON funding_rates_latest (exchange_id);
ANALYZE funding_rates_latest;

-- The writers' latest upserts now set exchange_id themselves (joined from symbols as rows are first inserted),
-- so the statement triggers of 0002 go. They used transition tables (REFERENCING NEW TABLE), which Citus does
-- not support on distributed tables: without them the *_latest tables stay distributable on symbol_id.
-- Rows inserted by other means (hand-written SQL) get exchange_id NULL and are not found by exchange until a
-- writer next upserts them; the same as before 0002's backfill.
DROP TRIGGER fill_exchange_id ON book_tickers_latest;
DROP TRIGGER fill_exchange_id ON funding_rates_latest;
DROP FUNCTION hftdb_book_tickers_latest_exchange();
DROP FUNCTION hftdb_funding_rates_latest_exchange();

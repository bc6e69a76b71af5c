DROP TRIGGER IF EXISTS fill_exchange_id ON funding_rates_latest;
DROP TRIGGER IF EXISTS fill_exchange_id ON book_tickers_latest;
DROP FUNCTION IF EXISTS hftdb_funding_rates_latest_exchange();
DROP FUNCTION IF EXISTS hftdb_book_tickers_latest_exchange();
ALTER TABLE funding_rates_latest DROP COLUMN IF EXISTS packed, DROP COLUMN IF EXISTS exchange_id;
ALTER TABLE book_tickers_latest DROP COLUMN IF EXISTS packed, DROP COLUMN IF EXISTS exchange_id;
ALTER TABLE funding_rates_latest RESET (fillfactor);
ALTER TABLE book_tickers_latest RESET (fillfactor);

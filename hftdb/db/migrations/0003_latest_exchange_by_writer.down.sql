-- Restores 0002's triggers that fill exchange_id on insert.
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

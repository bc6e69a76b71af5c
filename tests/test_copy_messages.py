"""A commit's COPY sent in CopyData messages (hftdb.store.commit.copy_in_messages): several batches' payloads, each
with its own header and trailer, arrive as one COPY stream, whatever their sizes against the message size."""

from hftdb import DatabaseManager, ExchangeName, Symbol, now_us
from hftdb.store.commit import COPY_MESSAGE_BYTES, copy_in_messages
from hftdb.store.tables import BookTickerWriter
from hftdb.wire.books import LAYOUT, SIZE
from hftdb.wire.copy import HEADER, PG_EPOCH_US, TRAILER

from helpers import settings, sql


def _payload(sid: int, first_id: int, n: int, t: int) -> bytes:
    # One batch's COPY stream: header, n book-ticker tuples (update ids first_id...), trailer.
    rows = b"".join(
        LAYOUT.row.pack(8, 4, sid, 8, t + i - PG_EPOCH_US, 8, t + i - 5 - PG_EPOCH_US, 8, 100.0 + i % 7, 8, 1.5,
                        8, 100.5 + i % 7, 8, 2.5, 8, first_id + i)
        for i in range(n))
    return HEADER + rows + TRAILER


async def test_payloads_of_any_size_arrive_as_one_copy(dsn, tmp_path):
    per_message = COPY_MESSAGE_BYTES // SIZE
    # A one-row payload, payloads that end just short of, on and past a message boundary, one of several messages.
    sizes = [1, per_message - 1, per_message, per_message + 1, 3 * per_message + 17, 2]
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        ex = await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        sym = await db.insert_symbol(Symbol(exchange_id=ex.id, symbol="BTCUSDT"))
        t = now_us()
        payloads, first = [], 0
        for n in sizes:
            payloads.append(_payload(sym.id, first, n, t + first))
            first += n
        async with db.connection() as conn:
            async with conn.transaction():
                await copy_in_messages(conn, "book_tickers", payloads, BookTickerWriter.columns, None)
            # One payload alone, too (its own header and trailer kept).
            async with conn.transaction():
                await copy_in_messages(conn, "book_tickers", [_payload(sym.id, first, 5, t + first)],
                                       BookTickerWriter.columns, None)
        total = first + 5
        row = await sql(db).fetchrow(
            "SELECT count(*), count(DISTINCT update_id), min(update_id), max(update_id),"
            " sum(bid_price)::float8, bool_and((extract(epoch FROM recv_ts) * 1000000)::bigint = $1::bigint + update_id)"
            " FROM book_tickers", t)
    assert row[0] == row[1] == total
    assert (row[2], row[3]) == (0, total - 1)
    assert row[4] == sum(100.0 + i % 7 for n in sizes + [5] for i in range(n))  # (whole numbers: exact)
    assert row[5] is True  # each row's receipt time is t + its update id: no tuple torn at a boundary

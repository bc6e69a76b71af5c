"""One connection's frames to rows: parse, sequence, admit. The consumer of a live session and the file
replay (:mod:`hftdb.ops.replay`) both run their frames through an :class:`Intake`.

* **Parse.** A parser with a hot path (``book_ticker(raw, recv_ts)``, a book row or None) gets it first;
  any other frame goes through ``parse``. A frame that fails is counted by reason and never stops the feed:
  *any* exception raised while handling one frame rejects that frame alone (``parser_error`` unless the parser
  named a reason) and the loop goes on with the next frame of the same read. The general decode refuses frames
  past :data:`~hftdb.exchanges.parsing.MAX_FRAME_BYTES` (``frame_too_large``) before decoding them, and rows
  whose symbol the venue's parser refuses (``bad_symbol``, ``wrong_market``) or whose exchange time the writers
  would refuse (``bad_time``) before admission, where a corrupt time would pass for a duplicate. The parsers
  refuse an update id outside ``0`` to ``2**63 - 1`` (``bad_update_id``) for the same reason: admitted, it would
  become the symbol's last id and every later frame of the symbol a duplicate.
* **Sequence.** Within one connection an update id that jumps is a gap (counted where the venue's ids are
  consecutive) and one that repeats or goes back is a duplicate (dropped). A snapshot may restart ids (Bybit
  sends ``u=1`` after a service restart): on a live connection it resets the stream. Unsequenced book rows are
  dropped where a sequenced channel already gives the same quotes.
* **Admit.** Rows already stored by another connection of the runner (same or older update id, else exchange
  time, per symbol) are dropped, unless the intake is *holding* (a handover's successor): its rows are
  admitted when released, after the predecessor's.

The hot path is one loop with no per-frame object besides the row itself: at 50k frames/s every 100 ns per
frame is half a percent of a core.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import FrameError
from ..models import FUTURE_SLACK_US, MIN_TS_US, Balance, BookTicker, FeedRows, FundingRate, now_us
from ..wire.books import SIZE, BookTuples, PackedBooks
from .connection import Chunk
from .parsing import CONTROL_SNAPSHOT, MAX_FRAME_BYTES, name_ok, time_ok
from .sink import PackedSink

if TYPE_CHECKING:
    from .stream import StreamOwner

__all__ = ["Intake", "exchange_time_ok"]

logger = logging.getLogger(__name__)


def exchange_time_ok(ts: int | None) -> bool:
    """Whether an exchange time (µs; None: none sent) is one the writers take (2009 to a day past the local
    clock). A row outside is rejected ``bad_time`` before admission, which keys on exchange times."""
    return time_ok(ts, MIN_TS_US, now_us() + FUTURE_SLACK_US)


class Intake:
    """Turns one connection's frames into admitted rows (see the module docstring).

    ``on_control(control, detail)`` receives the parser's control signals (acknowledgements, errors,
    announced shutdowns) except snapshots; ``on_lost_book()`` is called when the parser lost a book to a
    corrupt frame and only a fresh subscription can restore it.
    """

    def __init__(
        self,
        runner: StreamOwner,
        parser: Any,
        *,
        holding: bool = False,
        on_control: Callable[[str, str | None], None] | None = None,
        on_lost_book: Callable[[], None] | None = None,
    ) -> None:
        self.runner = runner
        self.parser = parser
        self.holding = holding
        self.on_control = on_control
        self.on_lost_book = on_lost_book
        self.seq: dict[str, int] = {}
        self.got_data = False
        self._fast = getattr(parser, "book_ticker", None)
        # With a hot path, the rest of the frames skip a second try of it.
        self._parse = getattr(parser, "parse_general", parser.parse) if self._fast is not None else parser.parse
        # Book rows are packed for the writer as they are parsed when the sink takes them so (hftdb.wire.books).
        self._book_read = (getattr(parser, "book_read", None)
                           if isinstance(runner.adapter.sink, PackedSink) else None)
        # A buffer of frames, one a line, scanned without records (the file replay; process_lines).
        self._book_tuples = getattr(parser, "book_tuples", None) if self._book_read is not None else None

    def process(self, chunks: list[Chunk]) -> FeedRows:
        """Parse, sequence and (unless holding) admit the frames of ``chunks``, in order; the rows by table.

        When the sink takes packed rows and the intake admits without counting gaps (a live feed's usual case),
        the book rows come as a :class:`~hftdb.wire.books.PackedBooks` (a list of ``BookTicker``) whose COPY tuples
        the parser's hot path packed from the values it decoded (its ``book_read``)."""
        runner = self.runner
        stats = runner.adapter.stats
        count_gaps = runner.adapter.count_gaps
        seq = self.seq
        seq_get = seq.get
        admit = not self.holding
        ids = runner.book_ids
        ids_get = ids.get
        fast = self._fast
        # Live and not counting gaps: admission (every connection's last id per symbol) already drops whatever
        # this connection's own order would, so the hot path keeps one map, not two.
        admit_only = admit and not count_gaps
        books: list[BookTicker]
        funding: list[FundingRate] = []
        balances: list[Balance] = []
        frames = duplicates = 0
        packing = admit_only and self._book_read is not None
        if packing:
            books = packed = PackedBooks()
            buf = bytearray()
            ts_max = now_us() + FUTURE_SLACK_US
            book_read = self._book_read
            general = self._general
            lo = hi = 0
        else:
            books = []
        out = FeedRows(books, funding, balances)
        append = books.append
        for recv_ts, payloads in chunks:
            frames += len(payloads)
            if packing and MIN_TS_US <= recv_ts <= ts_max:
                # A read at a time: the parser admits and packs its bookTicker frames; anything else goes the
                # general decode, in order. A receipt time the writer would refuse packs nothing (below).
                before = len(books)
                n = len(payloads)
                start = 0  # where the book_read call in progress began
                mark = before  # how many rows there were when it began
                try:  # free while nothing raises (3.11); _general never raises
                    i, dups = book_read(payloads, 0, recv_ts, ts_max, ids, books, buf)
                    duplicates += dups
                    while i < n:
                        general(payloads[i], recv_ts, admit, out)
                        start = i + 1
                        mark = len(books)
                        i, dups = book_read(payloads, start, recv_ts, ts_max, ids, books, buf)
                        duplicates += dups
                except Exception:
                    # The redo drops the frames the failing call had admitted as duplicates of themselves: one
                    # each, not duplicates of the feed. (Those it had dropped are counted again rightly: the failing
                    # call's own count was lost with it.)
                    taken = len(books) - mark
                    duplicates += self._read_after(payloads, start, recv_ts, ts_max, out, buf) - taken
                if len(books) > before:
                    if not lo:
                        lo = recv_ts
                    elif recv_ts < hi:
                        packed.ordered = False
                    if recv_ts < lo:
                        lo = recv_ts
                    if recv_ts > hi:
                        hi = recv_ts
                continue
            # One try per read, not per frame (free while nothing raises, 3.11): a frame whose handling raises is
            # rejected alone and the loop resumes after it, on the same iterator.
            frames_left = iter(payloads)
            while True:
                try:
                    for payload in frames_left:
                        if fast is not None:
                            row = fast(payload, recv_ts)
                            if row is not None:
                                symbol = row.symbol
                                u = row.update_id
                                if not admit_only:
                                    prev = seq_get(symbol)
                                    if prev is not None:
                                        if u <= prev:
                                            duplicates += 1
                                            continue
                                        if count_gaps and u > prev + 1:
                                            stats.gaps += 1
                                            stats.missed_ids += u - prev - 1
                                    seq[symbol] = u
                                if admit:  # always, when admit_only
                                    last = ids_get(symbol)
                                    if last is not None and u <= last:
                                        duplicates += 1
                                        continue
                                    ids[symbol] = u
                                append(row)
                                continue
                        self._general(payload, recv_ts, admit, out)
                except Exception as exc:
                    self._reject(exc)
                    continue
                break
        # Every row has its tuple, or the call goes the public path (a row the writer would not take, rows from
        # the general decode, a read with a receipt time out of range).
        if packing and len(buf) == len(books) * SIZE:
            packed.buf = buf
            packed.lo, packed.hi = lo, hi
        stats.messages += frames
        stats.duplicates += duplicates
        if chunks:
            stats.last_message_us = chunks[-1][0]
        if books or funding:
            self.got_data = True
        return out

    def process_lines(self, recv_ts: int, data: bytes, start: int, end: int) -> tuple[int, list[FeedRows]]:
        """:meth:`process` for the frames of a buffer, one a line (``data[start:end]``, whole lines; each stripped
        as by ``bytes.strip``, a blank line is no frame), all received at ``recv_ts``: the file replay's block.

        Returns the frames and their rows as groups, in order. Where the parser can scan a buffer (its
        ``book_tuples``; the USD-M bookTicker C path), the book rows it takes come as
        :class:`~hftdb.wire.books.BookTuples`, COPY tuples without records, and a line it hands back goes
        :meth:`process` alone, as its own group; otherwise the lines go :meth:`process` as one read."""
        tuples_of = self._book_tuples
        tuples = None
        if (tuples_of is not None and self._book_read is not None and not self.holding
                and not self.runner.adapter.count_gaps):
            ts_max = now_us() + FUTURE_SLACK_US
            if MIN_TS_US <= recv_ts <= ts_max:
                tuples = tuples_of(recv_ts)
        if tuples is None:
            lines = [line for line in map(bytes.strip, data[start:end].split(b"\n")) if line]
            return len(lines), [self.process([(recv_ts, lines)])] if lines else []
        stats = self.runner.adapter.stats
        scan = self.parser.book_scan
        ids = self.runner.book_ids
        groups: list[FeedRows] = []
        frames = 0
        pos = start
        while True:
            pos, taken, dups = scan(data, pos, end, ts_max, ids, tuples)
            frames += taken
            stats.messages += taken
            stats.duplicates += dups
            if pos >= end:
                break
            # A line the scan hands back: the whole path, alone, after the tuples taken before it.
            nl = data.find(b"\n", pos, end)
            stop = end if nl < 0 else nl
            line = data[pos:stop].strip()
            pos = stop + 1
            if line:
                frames += 1
                rows = self.process([(recv_ts, [line])])
                if tuples is not None and _joins(rows, tuples):
                    # Book rows packed as the scan would have (the usual line handed back: a symbol's first, before
                    # its id was cached): in the same tuples, in order. A new group per symbol cost the writer a
                    # call each, ~500 calls in a capture's first block.
                    tuples.buf += rows.book_tickers.buf  # type: ignore[attr-defined]
                elif rows.has_rows():
                    if tuples:
                        groups.append(FeedRows(tuples))  # type: ignore[arg-type]
                        tuples = BookTuples(recv_ts, tuples.exchange, tuples.ids)
                    groups.append(rows)
            if pos >= end:
                break
        if tuples:
            groups.append(FeedRows(tuples))  # type: ignore[arg-type]
        if frames:
            stats.last_message_us = recv_ts
            if groups:
                self.got_data = True
        return frames, groups

    def _reject(self, exc: Exception) -> None:
        # Any exception raised while handling one frame: that frame is rejected, counted by reason and logged
        # (rate-limited by Rejects); the traceback of an unexpected one goes to DEBUG only.
        rejects = self.runner.adapter.rejects
        if isinstance(exc, FrameError):
            rejects.add_error(exc)
        elif isinstance(exc, RecursionError):
            rejects.add("too_deep", f"{type(exc).__name__}: {exc}")
        else:
            rejects.add("parser_error", f"{type(exc).__name__}: {exc}")
            logger.debug("%s: frame handling raised", self.runner.adapter.venue.value, exc_info=exc)

    def _read_after(self, payloads: list[bytes], i: int, recv_ts: int, ts_max: int, out: FeedRows,
                    buf: bytearray) -> int:
        # The parser's book_read raised somewhere from payloads[i] on (which frame, it cannot say): redo the rest
        # of the read one frame at a time, so that only the frame that raises (again) is lost and counted. The
        # bookTicker frames it had already taken are then dropped by admission (not stored twice; the caller
        # takes them off the duplicates returned); it takes no other frame, so nothing else is redone.
        book_read = self._book_read
        ids = self.runner.book_ids
        books = out.book_tickers
        duplicates = 0
        for payload in payloads[i:]:
            try:
                taken, dups = book_read([payload], 0, recv_ts, ts_max, ids, books, buf)
                duplicates += dups
                if not taken:
                    self._general(payload, recv_ts, True, out)
            except Exception as again:
                self._reject(again)
        return duplicates

    def _general(self, payload: bytes, recv_ts: int, admit: bool, out: FeedRows) -> None:
        runner = self.runner
        try:
            if len(payload) > MAX_FRAME_BYTES:
                raise FrameError(f"a frame of {len(payload)} bytes (at most {MAX_FRAME_BYTES})",
                                 reason="frame_too_large")
            parsed = self._parse(payload, recv_ts)
            control = parsed.control
            if control is not None and control != CONTROL_SNAPSHOT and self.on_control is not None:
                self.on_control(control, parsed.detail)
            found = parsed.book_tickers
            rates = parsed.funding_rates
            if found or rates:
                found, rates = self._checked(found, rates)
            rows: list[BookTicker] = []
            if found:
                self._sequence(found, control == CONTROL_SNAPSHOT, rows)
        except FrameError as exc:
            runner.adapter.rejects.add_error(exc)
            if exc.reason == "no_snapshot" and self.on_lost_book is not None:
                self.on_lost_book()
            return
        except Exception as exc:  # a parser bug rejects the frame, never the feed
            self._reject(exc)
            return
        if admit and (rows or rates):
            rows, rates = runner.admit(rows, rates)
        out.book_tickers.extend(rows)
        out.funding_rates.extend(rates)
        if parsed.balances:
            out.balances.extend(self._checked_balances(parsed.balances))

    def _checked(self, books: list[BookTicker], rates: list[FundingRate]) -> tuple[list[BookTicker], list[FundingRate]]:
        # Rows the parser built without its symbol check (it runs where a row gets its symbol id), and rows
        # whose exchange time the writers would refuse: refused here, before sequencing and admission key on
        # them. A row is rejected alone; the frame's other rows go on.
        check = self.parser.check_symbol
        rejects = self.runner.adapter.rejects
        ts_max = now_us() + FUTURE_SLACK_US
        out_books: list[BookTicker] = []
        out_rates: list[FundingRate] = []
        for rows, out in ((books, out_books), (rates, out_rates)):
            for row in rows:
                try:
                    check(row.symbol)
                except FrameError as exc:
                    rejects.add_error(exc)
                    continue
                if not time_ok(row.exchange_ts, MIN_TS_US, ts_max):
                    rejects.add("bad_time", f"{row.symbol}: exchange time {row.exchange_ts} µs")
                    continue
                out.append(row)  # type: ignore[arg-type]
        return out_books, out_rates

    def _checked_balances(self, rows: list[Balance]) -> list[Balance]:
        # An asset's text reaches the database as a symbol's does: the same rule (bad_symbol), without the market;
        # and its exchange time as a quote's (bad_time): a replay looks stored balances up by it.
        out = []
        ts_max = now_us() + FUTURE_SLACK_US
        for row in rows:
            if not name_ok(row.asset):
                self.runner.adapter.rejects.add("bad_symbol", f"balance asset {row.asset!r:.80}")
            elif not time_ok(row.exchange_ts, MIN_TS_US, ts_max):
                self.runner.adapter.rejects.add("bad_time", f"balance {row.asset}: exchange time {row.exchange_ts} µs")
            else:
                out.append(row)
        return out

    def _sequence(self, rows: list[BookTicker], snapshot: bool, out: list[BookTicker]) -> None:
        runner = self.runner
        stats = runner.adapter.stats
        seq = self.seq
        count_gaps = runner.adapter.count_gaps
        for row in rows:
            u = row.update_id
            if u is None:
                if not runner.drop_unsequenced:
                    out.append(row)
                continue
            symbol = row.symbol
            prev = seq.get(symbol)
            if snapshot or prev is None:
                if snapshot and not self.holding:
                    runner.restart_if_lower(symbol, u)
            elif u <= prev:
                stats.duplicates += 1
                continue
            elif count_gaps and u > prev + 1:
                stats.gaps += 1
                stats.missed_ids += u - prev - 1
            seq[symbol] = u
            out.append(row)


def _joins(rows: FeedRows, tuples: BookTuples) -> bool:
    """Whether ``rows`` are book rows alone whose packed tuples can go on the end of ``tuples`` as they are: each
    row packed, received at ``tuples``' time, with the symbol id ``tuples`` names it by."""
    books = rows.book_tickers
    if rows.funding_rates or rows.balances or not books or type(books) is not PackedBooks:
        return False
    buf = books.buf
    if buf is None or len(buf) != len(books) * SIZE:
        return False
    recv, ids = tuples.recv_ts, tuples.ids
    return all(r.recv_ts == recv and r.symbol_id is not None and ids.get(r.symbol) == r.symbol_id for r in books)

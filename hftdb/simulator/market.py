"""The simulated market: instruments per venue and their random-walk quotes and funding.

Prices are held in integer ticks and printed with the instrument's decimals, so every price on the wire is an
exact multiple of the tick, as on a real exchange. All randomness comes from one seeded ``random.Random`` per
market, so a run is reproducible from its seed (given the same sequence of calls).

The simulator must offer 50k+ messages a second from one process, so a book step draws from tables of
pre-drawn random steps, spreads and sizes (indexed by ``getrandbits``, a few hundred ns instead of several
µs of ``gauss``/``lognormvariate``), and price and size texts are remembered per instrument: the walk keeps
revisiting the same few ticks, and sizes come from a table.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from ..models import ExchangeName
from ..venues import VENUES, spec

__all__ = ["Instrument", "Quote", "Market", "PERPETUAL_VENUES"]

PERPETUAL_VENUES = frozenset(v.name for v in VENUES if v.market == "derivatives")

# Bases with roughly realistic prices; beyond these the universe continues with synthetic names.
_BASES = (
    ("BTC", 65_000.0), ("ETH", 3_400.0), ("SOL", 150.0), ("BNB", 580.0), ("XRP", 0.52), ("DOGE", 0.12),
    ("ADA", 0.45), ("AVAX", 35.0), ("LINK", 14.0), ("DOT", 6.5), ("LTC", 80.0), ("TRX", 0.12), ("ATOM", 8.0),
    ("NEAR", 5.0), ("APT", 9.0), ("ARB", 1.1), ("OP", 2.2), ("FIL", 5.0), ("UNI", 7.0), ("AAVE", 90.0),
)


@dataclass(slots=True)
class Instrument:
    """One tradable instrument as the venue lists it."""

    symbol: str  # native: BTCUSDT, BTC-USDT, BTC-USDT-SWAP
    base: str
    quote: str
    kind: str  # "spot" or "perpetual"
    price_decimals: int
    qty_decimals: int
    trading: bool = True  # False once delisted: still listed over REST (halted), no longer streamed
    price_texts: dict[int, str] = field(default_factory=dict, repr=False, compare=False)
    qty_texts: dict[float, str] = field(default_factory=dict, repr=False, compare=False)
    sizes: list[float] = field(default_factory=list, repr=False, compare=False)  # the size table of its decimals

    @property
    def tick(self) -> str:
        """The price step as the venue prints it."""
        return _fmt(1, self.price_decimals)

    @property
    def lot(self) -> str:
        """The quantity step as the venue prints it."""
        return _fmt(1, self.qty_decimals)


@dataclass(slots=True)
class Quote:
    """The current state of one instrument. ``update_id`` counts book updates, gaps included."""

    bid: int  # ticks
    ask: int
    bid_qty: float
    ask_qty: float
    prev_bid: int
    prev_ask: int
    update_id: int
    funding_rate: float = 0.0001
    mark: int = 0
    index: int = 0
    next_funding_ms: int = 0


_TABLE_BITS = 12  # 4,096 pre-drawn values per table
_TEXTS = 8192  # remembered texts per instrument before the memo starts over


def _fmt(ticks: int, decimals: int) -> str:
    if decimals == 0:
        return str(ticks)
    sign = "-" if ticks < 0 else ""
    whole, frac = divmod(abs(ticks), 10**decimals)
    return f"{sign}{whole}.{frac:0{decimals}d}"


class Market:
    """The instruments of one venue and their quotes."""

    def __init__(self, venue: ExchangeName, symbols: int, *, seed: int = 0) -> None:
        if symbols <= 0:
            raise ValueError(f"symbols must be > 0, got {symbols!r}")
        registered = spec(venue)
        if registered is None:
            raise ValueError(f"venue: {venue!r} is not a registered venue (hftdb.venues)")
        self.venue = venue
        self._spec = registered
        self.rng = random.Random(f"{seed}:{venue.value}")
        self.instruments: list[Instrument] = []
        self.by_symbol: dict[str, Instrument] = {}
        #: the trading symbols, in listing order: the ones the generator moves (one list, changed in place)
        self.listed: list[str] = []
        #: bumped by every listing change, so the generator knows to re-read :attr:`listed`
        self.version = 0
        self.quotes: dict[str, Quote] = {}
        self._last_ts: dict[tuple[str, str], int] = {}
        self._perpetual = venue in PERPETUAL_VENUES
        rng = self.rng
        n = 1 << _TABLE_BITS
        self._steps = [2 * round(rng.gauss(0, 1.5)) for _ in range(n)]
        self._spreads = [rng.choice((1, 1, 1, 2, 3)) for _ in range(n)]
        self._sizes = [rng.lognormvariate(0, 1) * 10 for _ in range(n)]
        self._qty_tables: dict[int, list[float]] = {}
        for i in range(symbols):
            if i < len(_BASES):
                base, price = _BASES[i]
            else:
                base, price = f"X{i:03d}", round(10 ** self.rng.uniform(-2, 3), 4)
            self._add(base, price)

    def _add(self, base: str, price: float) -> Instrument:
        pdec = min(8, max(0, 5 - math.floor(math.log10(price))))
        qdec = min(6, max(0, math.floor(math.log10(price)) - 1))
        kind = "perpetual" if self._perpetual else "spot"
        inst = Instrument(self._native(base), base, "USDT", kind, pdec, qdec)
        inst.sizes = self._qty_table(qdec)
        self.instruments.append(inst)
        self.by_symbol[inst.symbol] = inst
        self.listed.append(inst.symbol)
        mid = round(price * 10**pdec)
        # A first update id far from zero, as on a live venue.
        first_id = self.rng.randrange(1_000_000, 100_000_000)
        self.quotes[inst.symbol] = Quote(
            bid=mid - 1, ask=mid + 1, bid_qty=1.0, ask_qty=1.0, prev_bid=mid - 1, prev_ask=mid + 1,
            update_id=first_id, mark=mid, index=mid,
        )
        self.version += 1
        return inst

    def trading(self, symbol: str) -> bool:
        """Whether ``symbol`` is listed and trading (so that it can be subscribed and is streamed)."""
        inst = self.by_symbol.get(symbol)
        return inst is not None and inst.trading

    def list_symbol(self, symbol: str, *, price: float = 1.0) -> Instrument:
        """List ``symbol`` (native, quoted in USDT) at about ``price``, or list again a delisted one; from now on
        it is in the instruments answer as trading and its quotes move."""
        if price <= 0:
            raise ValueError(f"price must be > 0, got {price!r}")
        inst = self.by_symbol.get(symbol)
        if inst is not None:
            if inst.trading:
                raise ValueError(f"symbol: {symbol!r} is already listed on {self.venue.value}")
            inst.trading = True
            self.listed.append(symbol)
            self.version += 1
            return inst
        # The text around the base in the venue's symbols: ("", "USDT"), ("", "-USDT-SWAP")...
        head, _, tail = self._native("\0").partition("\0")
        base = symbol[len(head):len(symbol) - len(tail)] if symbol.startswith(head) and symbol.endswith(tail) else ""
        if not base.isalnum() or self._native(base) != symbol:  # a base of letters and digits: BTC, 1000SHIB
            raise ValueError(f"symbol: {symbol!r} is not a USDT {'perpetual' if self._perpetual else 'spot'} "
                             f"symbol of {self.venue.value} (e.g. {self._native('ABC')!r})")
        return self._add(base, price)

    def delist_symbol(self, symbol: str) -> Instrument:
        """Stop trading ``symbol``: the instruments answer shows it halted, and no more messages are generated."""
        inst = self.by_symbol.get(symbol)
        if inst is None or not inst.trading:
            raise ValueError(f"symbol: {symbol!r} is not trading on {self.venue.value}")
        inst.trading = False
        self.listed.remove(symbol)
        self.version += 1
        return inst

    def _native(self, base: str) -> str:
        return self._spec.native_symbol(base, "USDT")

    def step_book(self, symbol: str, *, skip: int = 0) -> Quote:
        """Move the quote of ``symbol`` one random step; ``skip`` ids are consumed unsent (an injected gap)."""
        q = self.quotes[symbol]
        bits = self.rng.getrandbits
        q.prev_bid, q.prev_ask = q.bid, q.ask
        mid2 = q.bid + q.ask + self._steps[bits(_TABLE_BITS)]
        spread = self._spreads[bits(_TABLE_BITS)]
        bid = (mid2 - spread) // 2
        if bid < 1:
            bid = 1
        q.bid, q.ask = bid, bid + spread
        sizes = self.by_symbol[symbol].sizes
        q.bid_qty = sizes[bits(_TABLE_BITS)]
        q.ask_qty = sizes[bits(_TABLE_BITS)]
        q.update_id += 1 + skip
        return q

    def _qty_table(self, decimals: int) -> list[float]:
        table = self._qty_tables.get(decimals)
        if table is None:
            scale = 10**decimals
            table = self._qty_tables[decimals] = [max(1, round(x * scale)) / scale for x in self._sizes]
        return table

    def book_texts(self, symbol: str, q: Quote) -> tuple[str, str, str, str]:
        """Bid, bid size, ask and ask size of ``q`` as the venue prints them (one lookup for all four)."""
        inst = self.by_symbol[symbol]
        prices, sizes = inst.price_texts, inst.qty_texts
        b = prices.get(q.bid)
        if b is None:
            b = self.price(symbol, q.bid)
        a = prices.get(q.ask)
        if a is None:
            a = self.price(symbol, q.ask)
        bq = sizes.get(q.bid_qty)
        if bq is None:
            bq = self.qty(symbol, q.bid_qty)
        aq = sizes.get(q.ask_qty)
        if aq is None:
            aq = self.qty(symbol, q.ask_qty)
        return b, bq, a, aq

    def step_funding(self, symbol: str, now_ms: int) -> Quote:
        """Move the funding rate, mark and index price of ``symbol`` one random step."""
        q = self.quotes[symbol]
        rng = self.rng
        q.funding_rate = min(0.00375, max(-0.00375, q.funding_rate + rng.gauss(0, 0.00001)))
        mid = (q.bid + q.ask) // 2
        q.mark = mid + round(rng.gauss(0, 1))
        q.index = mid + round(rng.gauss(0, 2))
        period = 8 * 3600 * 1000
        q.next_funding_ms = (now_ms // period + 1) * period
        return q

    def next_ts(self, channel: str, symbol: str, now_ms: int) -> int:
        """An exchange time for a message on ``channel``: ``now_ms``, but strictly increasing per stream, so
        that the time identifies the message (see :mod:`hftdb.simulator.ledger`)."""
        key = (channel, symbol)
        ts = max(now_ms, self._last_ts.get(key, 0) + 1)
        self._last_ts[key] = ts
        return ts

    def price(self, symbol: str, ticks: int) -> str:
        """``ticks`` of ``symbol`` as the venue prints a price."""
        inst = self.by_symbol[symbol]
        texts = inst.price_texts
        text = texts.get(ticks)
        if text is None:
            if len(texts) >= _TEXTS:
                texts.clear()
            text = texts[ticks] = _fmt(ticks, inst.price_decimals)
        return text

    def qty(self, symbol: str, qty: float) -> str:
        """``qty`` of ``symbol`` as the venue prints a size."""
        inst = self.by_symbol[symbol]
        texts = inst.qty_texts
        text = texts.get(qty)
        if text is None:
            if len(texts) >= _TEXTS:
                texts.clear()
            text = texts[qty] = f"{qty:.{inst.qty_decimals}f}"
        return text

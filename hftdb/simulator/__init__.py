"""A local exchange simulator: Binance, Bybit and OKX over real HTTP and websockets on loopback.

It speaks the subset of each venue's public protocol that hftdb's adapters use (same paths, parameters,
subscription messages, envelopes, field names, heartbeats, limits and error bodies), streams seeded random-walk
quotes, checks signed requests, injects faults on request, and keeps an exact :class:`Ledger` of every data
message it sent, so tests can prove that the database holds each one exactly once::

    async with ExchangeSimulator(rate=500, symbols=20) as sim:
        adapter = BinanceAdapter(ExchangeName.BINANCE_SPOT, sink,
                                 rest_url=sim.rest_url("binance_spot"), ws_url=sim.ws_url("binance_spot"))
        ...

Run it standalone with ``python -m hftdb.simulator``.
"""

from .core import Credentials, Limits
from .ledger import IdRanges, Ledger, Tally
from .server import HOST_OF, ExchangeSimulator, argument_problem

__all__ = ["ExchangeSimulator", "Limits", "Credentials", "Ledger", "Tally", "IdRanges", "HOST_OF", "argument_problem"]

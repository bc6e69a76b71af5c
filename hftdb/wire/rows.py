"""The binary COPY tuples of ``funding_rates`` and ``balances``, one row at a time (neither is hot enough for a
vectorized path). Layouts in column order; a NULL field is a length of -1 and no value.

* ``funding_rates``: symbol_id int4, recv_ts timestamptz, exchange_ts timestamptz?, rate float8,
  next_funding_ts timestamptz?, mark_price float8?, index_price float8?;
* ``balances``: exchange_id int4, account text, asset text, recv_ts timestamptz, exchange_ts timestamptz?,
  free numeric, locked numeric.

The rows are checked first (:func:`hftdb.wire.rules.funding_reason`, :func:`~hftdb.wire.rules.balance_check`).
"""

from __future__ import annotations

import struct
from decimal import Decimal

from ..models import Balance, FundingRate
from .copy import PG_EPOCH_US, encode_numeric

__all__ = ["funding_tuple", "balance_tuple"]

_TS = struct.Struct("!iq")
_F8 = struct.Struct("!id")
_I4 = struct.Struct("!i")
_NULL = _I4.pack(-1)
_FUNDING_HEAD = struct.Struct("!hiiiq")
_FUNDING_FULL = struct.Struct("!hiiiqiqidiqidid")
_BALANCE_HEAD = struct.Struct("!hii")


def _opt_ts(value: int | None) -> bytes:
    return _NULL if value is None else _TS.pack(8, value - PG_EPOCH_US)


def _opt_f8(value: float | None) -> bytes:
    return _NULL if value is None else _F8.pack(8, value)


def funding_tuple(symbol_id: int, r: FundingRate) -> bytes:
    """The COPY tuple of a checked funding row."""
    ex, nxt, mark, index = r.exchange_ts, r.next_funding_ts, r.mark_price, r.index_price
    if ex is not None and nxt is not None and mark is not None and index is not None:
        # Every field set (a feed's row): one pack, not six and a join.
        return _FUNDING_FULL.pack(7, 4, symbol_id, 8, r.recv_ts - PG_EPOCH_US, 8, ex - PG_EPOCH_US, 8, r.rate,
                                  8, nxt - PG_EPOCH_US, 8, mark, 8, index)
    return b"".join((
        _FUNDING_HEAD.pack(7, 4, symbol_id, 8, r.recv_ts - PG_EPOCH_US),
        _opt_ts(r.exchange_ts),
        _F8.pack(8, r.rate),
        _opt_ts(r.next_funding_ts),
        _opt_f8(r.mark_price),
        _opt_f8(r.index_price),
    ))


def balance_tuple(exchange_id: int, r: Balance, free: Decimal, locked: Decimal) -> bytes:
    """The COPY tuple of a checked balance row, with its amounts as exact Decimals."""
    account, asset = r.account.encode(), r.asset.encode()
    f_bytes, l_bytes = encode_numeric(free), encode_numeric(locked)
    return b"".join((
        _BALANCE_HEAD.pack(7, 4, exchange_id),
        _I4.pack(len(account)), account,
        _I4.pack(len(asset)), asset,
        _TS.pack(8, r.recv_ts - PG_EPOCH_US),
        _opt_ts(r.exchange_ts),
        _I4.pack(len(f_bytes)), f_bytes,
        _I4.pack(len(l_bytes)), l_bytes,
    ))

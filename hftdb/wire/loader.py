"""The one import of hftdb's C extensions, and the one supported way to turn them off.

Each C function is optional: ``setup.py`` builds its extension where a C compiler is present, and every caller
has a pure-Python twin that gives the same results (the twins are also what the C code's tests compare it
with). The functions in use are the attributes of :data:`NATIVE`, None where not built or turned off; callers
read them there at call time (one attribute lookup per call, not per row), so a switch takes effect at once.

Turn the C code off for a whole process with the environment variable ``HFTDB_NO_C=1`` (read at import), or
for a block of code with :func:`disabled` (tests comparing the C and Python paths), or with :func:`set_enabled`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["NATIVE", "Native", "ENV_DISABLE", "built", "enabled", "set_enabled", "disabled"]

#: Set to ``1`` (or any value but ``0`` and the empty string) to run without the C extensions.
ENV_DISABLE = "HFTDB_NO_C"

try:
    from ._native import _binance_fast
except ImportError:  # built without a C compiler: BinanceParser.book_read runs its Python loop alone
    _binance_fast = None  # type: ignore[assignment]
try:
    from ._native import _vector_fast
except ImportError:  # add_tickers packs with struct alone
    _vector_fast = None  # type: ignore[assignment]
try:
    from ._native import _columnar_fast
except ImportError:  # PackedRows.decode slices columns in Python
    _columnar_fast = None  # type: ignore[assignment]

_BUILT: dict[str, Callable[..., Any] | None] = {
    "book_read": getattr(_binance_fast, "book_read", None),
    "pack_tickers": getattr(_vector_fast, "pack_tickers", None),
    "decode_packed": getattr(_columnar_fast, "decode_packed", None),
}

# Functions built in the same extension as one of _BUILT's, and reported under its name by built().
_WITH: dict[str, Callable[..., Any] | None] = {
    "book_scan": getattr(_binance_fast, "book_scan", None),  # with book_read
    "cached_ids": getattr(_vector_fast, "cached_ids", None),  # with pack_tickers
}


class Native:
    """The C functions in use (None: not built, or turned off).

    * ``book_read``: USD-M bookTicker frames of a socket read into admitted rows and COPY tuples
      (``_binance_fast.c``; :meth:`hftdb.exchanges.parse_binance.BinanceParser.book_read`);
    * ``book_scan``: the same from a whole buffer of newline-separated frames, tuples only, no records
      (``_binance_fast.c``; :meth:`hftdb.exchanges.parse_binance.BinanceParser.book_scan`, the file replay);
    * ``pack_tickers``: a call's ``BookTicker`` rows into COPY tuples (``_vector_fast.c``; ``hftdb.store.vector``);
    * ``cached_ids``: a call's named rows' ids, when all are cached (``_vector_fast.c``;
      :func:`hftdb.wire.books.cached_ids`);
    * ``decode_packed``: packed latest rows into records (``_columnar_fast.c``; ``hftdb.read.columnar``).
    """

    __slots__ = ("book_read", "book_scan", "pack_tickers", "cached_ids", "decode_packed")

    def __init__(self) -> None:
        self.book_read: Callable[..., Any] | None = None
        self.book_scan: Callable[..., Any] | None = None
        self.pack_tickers: Callable[..., Any] | None = None
        self.cached_ids: Callable[..., Any] | None = None
        self.decode_packed: Callable[..., Any] | None = None


NATIVE = Native()
_enabled = False


def built() -> dict[str, bool]:
    """Which C functions this installation has, by name, whether turned on or not."""
    return {name: fn is not None for name, fn in _BUILT.items()}


def enabled() -> bool:
    """Whether the built C functions are in use (:data:`NATIVE` holds them)."""
    return _enabled


def set_enabled(on: bool) -> None:
    """Use the built C functions (``True``) or the pure-Python paths alone (``False``) from now on."""
    global _enabled
    _enabled = bool(on)
    for name, fn in (*_BUILT.items(), *_WITH.items()):
        setattr(NATIVE, name, fn if _enabled else None)


@contextmanager
def disabled() -> Iterator[None]:
    """Run a block with the C functions turned off, then restore what was in use before."""
    was = _enabled
    set_enabled(False)
    try:
        yield
    finally:
        set_enabled(was)


set_enabled(os.environ.get(ENV_DISABLE, "") in ("", "0"))

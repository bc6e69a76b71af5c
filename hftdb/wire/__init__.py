"""The wire formats: hftdb's bottom layer, which does no I/O (no asyncio, no asyncpg, no sockets).

* :mod:`hftdb.wire.copy`: binary COPY framing, the PostgreSQL epoch, exact ``numeric`` encoding, and
  ``copy_columns`` (rows given as columns as one COPY stream);
* :mod:`hftdb.wire.rules`: the acceptance rules of book tickers, funding rates and balances, with their reject
  reasons, written once: the feeds' hot paths, the writers' per-row and vectorized paths call them, and
  ``tests/test_wire_rules.py`` holds the C code to them on the same inputs;
* :mod:`hftdb.wire.books`: the ``book_tickers`` COPY row layouts and :class:`~hftdb.wire.books.PackedBooks`, the
  structure a feed builds for the writer;
* :mod:`hftdb.wire.rows`: the ``funding_rates`` and ``balances`` COPY tuples;
* :mod:`hftdb.wire.loader`: the only import of the C extensions (``hftdb.wire._native``), and the one switch
  that turns them off (``HFTDB_NO_C=1``, or :func:`hftdb.wire.loader.disabled`).

Both the feeds (:mod:`hftdb.exchanges`) and the write path import this package; neither imports the other, and
this package imports neither (pyproject.toml's import-linter contracts, checked by ``./test``).
"""

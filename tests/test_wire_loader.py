"""The one switch for the C extensions (:mod:`hftdb.wire.loader`): ``HFTDB_NO_C=1`` for a process, ``disabled()``
for a block; with either, every caller takes its pure-Python path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from hftdb.wire import loader
from hftdb.wire.loader import NATIVE

PROBE = """
import json
from hftdb.wire import loader
print(json.dumps([loader.enabled(), loader.NATIVE.book_read is None, loader.NATIVE.pack_tickers is None,
                  loader.NATIVE.decode_packed is None]))
"""


def _probe(**env: str) -> list[bool]:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=60, check=True)
    return json.loads(out.stdout)


def test_the_environment_variable_turns_every_c_function_off():
    assert _probe(HFTDB_NO_C="1") == [False, True, True, True]
    built = loader.built()
    assert _probe(HFTDB_NO_C="0") == [True, not built["book_read"], not built["pack_tickers"],
                                      not built["decode_packed"]]


def test_disabled_turns_them_off_for_a_block_and_restores_them():
    before = (loader.enabled(), NATIVE.book_read, NATIVE.pack_tickers, NATIVE.decode_packed)
    with loader.disabled():
        assert not loader.enabled()
        assert (NATIVE.book_read, NATIVE.pack_tickers, NATIVE.decode_packed) == (None, None, None)
    assert (loader.enabled(), NATIVE.book_read, NATIVE.pack_tickers, NATIVE.decode_packed) == before

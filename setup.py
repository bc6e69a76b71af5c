"""Build hook for the optional C hot paths; everything else about the package is in pyproject.toml.

``optional=True``: where no C compiler is available the build skips an extension and hftdb does the same work in
pure Python. They live in ``hftdb.wire._native`` and only ``hftdb.wire.loader`` imports them (``HFTDB_NO_C=1``
turns them off).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(f"hftdb.wire._native.{name}", [f"hftdb/wire/_native/{name}.c"],
                  depends=["hftdb/wire/_native/_copy_fast.h"], optional=True, extra_compile_args=["-O2"])
        for name in ("_binance_fast", "_vector_fast", "_columnar_fast")
    ]
)

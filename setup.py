"""Build hook for the optional C hot paths; everything else about the package is in pyproject.toml.

``optional=True``: where no C compiler is available the build skips an extension and hftdb does the same work in
pure Python (``hftdb.exchanges.parse_binance``, ``hftdb.vector`` and ``hftdb.columnar`` import them when present).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "hftdb.exchanges._binance_fast",
            ["hftdb/exchanges/_binance_fast.c"],
            depends=["hftdb/_copy_fast.h"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension("hftdb._vector_fast", ["hftdb/_vector_fast.c"], depends=["hftdb/_copy_fast.h"], optional=True,
                  extra_compile_args=["-O2"]),
        Extension("hftdb._columnar_fast", ["hftdb/_columnar_fast.c"], depends=["hftdb/_copy_fast.h"], optional=True,
                  extra_compile_args=["-O2"]),
    ]
)

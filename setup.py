"""Build hook for the optional C hot path; everything else about the package is in pyproject.toml.

``optional=True``: where no C compiler is available the build skips the extension and hftdb runs the same parse
in pure Python (``hftdb.exchanges.parse_binance`` imports it when present).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "hftdb.exchanges._binance_fast",
            ["hftdb/exchanges/_binance_fast.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)

"""hftdb's optional C extensions (built by ``setup.py`` where a compiler is present). Import them only through
:mod:`hftdb.wire.loader`: an import-linter contract refuses any other importer."""

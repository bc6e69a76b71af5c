"""hftdb's version, in one place: the package root, ``hftdb --version`` and the archive's manifests read it."""

__version__ = "0.1.0"

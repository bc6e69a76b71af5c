"""Operator commands: the ``hftdb`` command line and what only it runs (dump, inventory, schema drift, the
ingest-file replay). The top layer: nothing in hftdb imports it."""

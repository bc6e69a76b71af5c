"""Exchange adapters and the parsers that turn their payloads into hftdb records.

Parsers live in ``parse_<venue>.py`` beside the shared helpers of :mod:`hftdb.exchanges.parsing`; they do no I/O
and import nothing from the network side, so they can be used (and tested) on recorded payloads alone.
"""

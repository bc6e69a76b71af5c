"""A new venue's starting point: copy ``adapter.py`` to ``hftdb/exchanges/<exchange>.py`` and fill in each hook.

Not imported by hftdb. The whole list of files a venue touches is in docs/ARCHITECTURE.md, "Adding a table or a venue".
"""

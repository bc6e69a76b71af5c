"""The write path: the symbol catalog and row resolution, per-table writers, the vectorized and packed book-ticker
paths, ``BatchWriter`` with its ``Committer`` and spool, and units of work. Imported by the manager; imports the
database utilities and the wire formats, never the read path or the feeds."""

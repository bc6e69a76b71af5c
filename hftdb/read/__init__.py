"""The read path: the strategy-side reads, binary COPY decoding, read replicas, notifications and the Parquet
archive tier. Imported by the manager; imports the database utilities and the wire formats, never the write path
or the feeds."""

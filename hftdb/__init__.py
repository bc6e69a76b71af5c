"""hftdb: high-throughput market-data persistence on PostgreSQL."""

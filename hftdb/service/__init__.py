"""The long-running service: the daemon, its feeds, the metrics endpoint, status reporting and logging setup.
Builds on the ``DatabaseManager`` front and the feeds (:mod:`hftdb.exchanges`)."""

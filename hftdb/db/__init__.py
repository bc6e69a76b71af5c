"""The database utilities: the embedded server, migrations, partitions, the SQLSTATE rule, advisory locks,
durable files, connection targets, TTL caches and Citus. Below the write path, the read path and the manager;
above the wire formats. Nothing here imports the write path, the read path or the feeds."""

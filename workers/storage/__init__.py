"""PostgreSQL: the only event SQL (COPY, partitions, migrations, rejected calls, reports)."""

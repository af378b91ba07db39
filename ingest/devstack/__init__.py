"""The embedded Valkey and PostgreSQL of `ingest dev`, and the dev stack itself."""

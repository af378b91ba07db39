"""The HTTP edge of copernica-ingest and its command line."""

__version__ = "0.2.0"

"""edgeloop fleet server: device registry and identity, Sync ingest, operator REST API."""

__version__ = "0.1.0"

"""Append-only, hash-chained audit log: who did what to which thing, from where.

`chain.py` (pure: canonical encoding, hashes, verification), `port.py` (the `AuditRecorder` port
and its in-memory fake), `store.py` (SQL appends serialized on a chain-head row lock, head
signing), `keys.py` (the server's Ed25519 audit key), `middleware.py` (records operator REST
writes), `routes.py`, `cli.py`, `models.py` (tables, with migrations/versions/0010_audit_rollouts.py).
"""

"""The `AuditRecorder` port every service calls (`audit.record(...)`) and its in-memory fake.

The fake keeps a real chain (same `chain.seal` and `ChainVerifier`), so tests of services that
record can also assert the log verifies. The SQL adapter is store.SqlAuditLog.

Services record a state change *after* it has committed (`record_change`): the changes span the
database, TUF metadata files and worker threads, so they cannot share the audit append's
transaction. A failed append never undoes or blocks a change that already happened; it is logged
at ERROR with the whole entry (actor, action, target, details), so an operator can reconcile it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import Connection

from fleet_server.audit.chain import (
    GENESIS_HASH,
    NO_SOURCE,
    NO_TARGET,
    Actor,
    ChainVerifier,
    Entry,
    Source,
    Target,
    VerifyReport,
    seal,
)

logger = logging.getLogger(__name__)


class AuditRecorder(Protocol):
    def record(
        self,
        actor: Actor,
        action: str,
        target: Target = NO_TARGET,
        details: Mapping[str, Any] | None = None,
        source: Source = NO_SOURCE,
    ) -> Entry:
        """Append one entry and return it sealed (seq, hash). Raises on storage failure."""
        ...


@runtime_checkable
class TransactionalAudit(AuditRecorder, Protocol):
    """A recorder that can also append inside a caller's database transaction, so a state change
    and its entry commit together (or neither does)."""

    def record_in(
        self,
        conn: Connection,
        actor: Actor,
        action: str,
        *,
        target: Target = NO_TARGET,
        details: Mapping[str, Any] | None = None,
        source: Source = NO_SOURCE,
    ) -> Entry:
        """Append inside `conn`'s open transaction. Raises LookupError when the head row is missing
        (call `ensure_head` outside the transaction, then retry)."""
        ...

    def ensure_head(self) -> None: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


class MemoryAuditLog:
    """A working in-memory `AuditRecorder` (thread-safe) with the same chain and verification."""

    def __init__(self, clock: Callable[[], datetime] = _utcnow) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.entries: list[Entry] = []

    def record(
        self,
        actor: Actor,
        action: str,
        target: Target = NO_TARGET,
        details: Mapping[str, Any] | None = None,
        source: Source = NO_SOURCE,
    ) -> Entry:
        with self._lock:
            prev = self.entries[-1].hash if self.entries else GENESIS_HASH
            entry = seal(seq=len(self.entries) + 1, ts=self._clock(), actor=actor, action=action,
                         target=target, details=details, source=source, prev_hash=prev)  # fmt: skip
            self.entries.append(entry)
            return entry

    def record_in(
        self,
        conn: Connection,
        actor: Actor,
        action: str,
        *,
        target: Target = NO_TARGET,
        details: Mapping[str, Any] | None = None,
        source: Source = NO_SOURCE,
    ) -> Entry:
        """Appends at once: memory has no transaction to join (a rolled-back caller keeps it)."""
        return self.record(actor, action, target, details, source)

    def ensure_head(self) -> None:
        return None

    def actions(self) -> list[str]:
        return [e.action for e in self.entries]

    def verify(self) -> VerifyReport:
        verifier = ChainVerifier()
        for entry in list(self.entries):
            if not verifier.feed(entry):
                break
        return verifier.finish(None, [], None)


class Identity(Protocol):
    """An authenticated operator token (fleet_server.models.OperatorToken has these)."""

    id: str
    name: str
    role: str


def operator_actor(token: Identity) -> Actor:
    """The actor of a change an operator asked for through the API."""
    return Actor.operator(token.id, token.name, token.role)


def record_change(
    audit: AuditRecorder,
    actor: Actor,
    action: str,
    target: Target = NO_TARGET,
    details: Mapping[str, Any] | None = None,
) -> Entry | None:
    """Record a state change that has already committed; never raises (the change stands).

    On any recorder failure the entry is logged at ERROR in full and None is returned.
    """
    try:
        return audit.record(actor, action, target, details)
    except Exception as err:  # any storage failure: the change is done, the log must say so loudly
        entry = {
            "actor": vars(actor),
            "action": action,
            "target": vars(target),
            "details": dict(details or {}),
        }
        logger.error("AUDIT ENTRY NOT WRITTEN (%s: %s): %s", type(err).__name__, err,
                     json.dumps(entry, default=str, sort_keys=True))  # fmt: skip
        return None

"""The `AuditRecorder` port every service calls (`audit.record(...)`) and its in-memory fake.

The fake keeps a real chain (same `chain.seal` and `ChainVerifier`), so tests of services that
record can also assert the log verifies. The SQL adapter is store.SqlAuditLog.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

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

    def actions(self) -> list[str]:
        return [e.action for e in self.entries]

    def verify(self) -> VerifyReport:
        verifier = ChainVerifier()
        for entry in list(self.entries):
            if not verifier.feed(entry):
                break
        return verifier.finish(None, [], None)

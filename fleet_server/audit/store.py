"""SQL adapter of the audit log: appends serialized by the database, verification, head signing.

An append locks the one `audit_head` row (PostgreSQL: ``SELECT … FOR UPDATE``; SQLite: an UPDATE of
that row first, which takes the database write lock at once, i.e. ``BEGIN IMMEDIATE`` semantics),
seals the entry on the locked head, inserts it and moves the head, all in one transaction. So any
number of threads and server processes sharing one database produce one chain. Does not decide
what is recorded (callers and middleware.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, insert, select, update
from sqlalchemy.exc import IntegrityError

from fleet_server.audit.chain import (
    GENESIS_HASH,
    NO_SOURCE,
    NO_TARGET,
    Actor,
    ChainVerifier,
    Entry,
    HeadSignature,
    Source,
    Target,
    VerifyReport,
    head_message,
    seal,
)
from fleet_server.audit.keys import AuditKey
from fleet_server.audit.models import HEAD_ID, AuditEntry, AuditHead, AuditSignature

logger = logging.getLogger(__name__)

_ENTRY = AuditEntry.__table__  # type: ignore[attr-defined]
_HEAD = AuditHead.__table__  # type: ignore[attr-defined]
_SIG = AuditSignature.__table__  # type: ignore[attr-defined]
MAX_PAGE = 1000


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _entry(row: Row[Any]) -> Entry:
    m = row._mapping
    return Entry(
        seq=m["seq"],
        ts=_aware(m["ts"]),
        actor=Actor(m["actor_kind"], m["actor_id"], m["actor_name"], m["actor_role"]),
        action=m["action"],
        target=Target(m["target_kind"], m["target_id"]),
        details=dict(m["details"] or {}),
        source=Source(m["source_ip"], m["source_agent"]),
        prev_hash=m["prev_hash"],
        hash=m["hash"],
    )


def _row(entry: Entry) -> dict[str, Any]:
    return {
        "seq": entry.seq, "ts": entry.ts, "actor_kind": entry.actor.kind, "actor_id": entry.actor.id,
        "actor_name": entry.actor.name, "actor_role": entry.actor.role, "action": entry.action,
        "target_kind": entry.target.kind, "target_id": entry.target.id, "details": entry.details,
        "source_ip": entry.source.ip, "source_agent": entry.source.user_agent,
        "prev_hash": entry.prev_hash, "hash": entry.hash,
    }  # fmt: skip


class SqlAuditLog:
    """`AuditRecorder` over the audit tables; `key` signs heads (None: no signing, verify skips sigs)."""

    def __init__(self, engine: Engine, key: AuditKey | None = None,
                 clock: Callable[[], datetime] = _utcnow) -> None:  # fmt: skip
        self._engine = engine
        self._key = key
        self._clock = clock

    # ------------------------------------------------------------ append

    def _lock_head(self, conn: Connection) -> tuple[int, str]:
        if conn.dialect.name == "sqlite":
            # Take SQLite's write lock before reading, so no two writers read the same head.
            conn.execute(update(_HEAD).where(_HEAD.c.id == HEAD_ID).values(seq=_HEAD.c.seq))
        locked = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == HEAD_ID).with_for_update()
        row = conn.execute(locked).first()
        if row is None:
            raise LookupError("audit head row missing")
        return int(row.seq), str(row.hash)

    def ensure_head(self) -> None:
        try:
            with self._engine.begin() as conn:
                if conn.execute(select(_HEAD.c.id).where(_HEAD.c.id == HEAD_ID)).first() is None:
                    conn.execute(insert(_HEAD).values(id=HEAD_ID, seq=0, hash=GENESIS_HASH))
        except IntegrityError:
            pass  # another process created it first

    def record(
        self,
        actor: Actor,
        action: str,
        target: Target = NO_TARGET,
        details: Mapping[str, Any] | None = None,
        source: Source = NO_SOURCE,
    ) -> Entry:
        """Append one entry. Raises: sqlalchemy errors when the database is unavailable."""
        for attempt in (1, 2):
            try:
                with self._engine.begin() as conn:
                    return self.record_in(conn, actor, action, target=target, details=details, source=source)
            except LookupError:
                if attempt == 2:
                    raise
                self.ensure_head()
        raise AssertionError("unreachable")

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
        """Append one entry inside the caller's transaction: it commits or rolls back with the
        caller's own writes (the rollout engine pops an audit effect in the same transaction, so
        the entry is written exactly once). Raises LookupError when the head row is missing."""
        seq, head_hash = self._lock_head(conn)
        entry = seal(seq=seq + 1, ts=self._clock(), actor=actor, action=action, target=target,
                     details=details, source=source, prev_hash=head_hash)  # fmt: skip
        conn.execute(insert(_ENTRY).values(**_row(entry)))
        conn.execute(update(_HEAD).where(_HEAD.c.id == HEAD_ID).values(seq=entry.seq, hash=entry.hash))
        return entry

    # ------------------------------------------------------------ read

    def page(self, *, after_seq: int = 0, limit: int = 100) -> list[Entry]:
        limit = max(1, min(limit, MAX_PAGE))
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(_ENTRY).where(_ENTRY.c.seq > after_seq).order_by(_ENTRY.c.seq).limit(limit)
            ).all()
        return [_entry(r) for r in rows]

    def iter_all(self, *, after_seq: int = 0, batch: int = MAX_PAGE) -> Iterator[Entry]:
        while True:
            rows = self.page(after_seq=after_seq, limit=batch)
            yield from rows
            if len(rows) < batch:
                return
            after_seq = rows[-1].seq

    def head(self) -> tuple[int, str] | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == HEAD_ID)).first()
        return (int(row.seq), str(row.hash)) if row is not None else None

    def signatures(self) -> list[HeadSignature]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(_SIG).order_by(_SIG.c.seq, _SIG.c.id)).all()
        return [HeadSignature(r.seq, r.hash, r.key_id, r.signature, _aware(r.signed_at)) for r in rows]

    # ------------------------------------------------------------ sign and verify

    def sign_head(self) -> HeadSignature | None:
        """Sign the current head unless it is already signed (or empty, or there is no key)."""
        if self._key is None:
            return None
        head = self.head()
        if head is None or head[0] == 0:
            return None
        seq, head_hash = head
        with self._engine.begin() as conn:
            done = conn.execute(
                select(_SIG.c.id).where(_SIG.c.seq == seq, _SIG.c.key_id == self._key.key_id)
            ).first()
            if done is not None:
                return None
            sig = HeadSignature(seq, head_hash, self._key.key_id,
                                self._key.sign(head_message(seq, head_hash)), self._clock())  # fmt: skip
            conn.execute(insert(_SIG).values(seq=seq, hash=head_hash, key_id=sig.key_id,
                                             signature=sig.signature, signed_at=sig.signed_at))  # fmt: skip
        logger.info("audit head signed seq=%d key=%s", seq, sig.key_id)
        return sig

    def _check(self, sig: HeadSignature) -> bool:
        if self._key is None or sig.key_id != self._key.key_id:
            return False
        return self._key.verify(sig.signature, head_message(sig.seq, sig.hash))

    def verify(self) -> VerifyReport:
        """Walk the whole chain, then check the head row and every head signature."""
        sigs = self.signatures()
        verifier = ChainVerifier(signed_seqs={s.seq for s in sigs})
        for entry in self.iter_all():
            if not verifier.feed(entry):
                break
        return verifier.finish(self.head(), sigs, self._check if self._key is not None else None)

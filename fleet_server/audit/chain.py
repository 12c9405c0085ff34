"""The hash chain, pure: canonical encoding of an entry, its hash, and verification of a chain.

Owns what an entry *is* (`Entry`, `Actor`, `Target`, `Source`), the byte encoding its hash covers
and the rules a chain must satisfy; does not own storage (store.py) or keys (keys.py). The hash of
entry n is sha256 over a canonical JSON object (sorted keys, no whitespace, UTF-8) of every field
of the entry including `prev_hash` = hash of entry n-1 (64 zeros for the first). Any edit, deleted
row, reordered or inserted row breaks a link that `ChainVerifier` names.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
MAX_DETAILS_BYTES = 8192
# Column widths (models.py); longer values are cut before hashing so what is stored is what is hashed.
LIMITS = {"kind": 16, "id": 128, "name": 128, "role": 16, "action": 128, "target_kind": 64,
          "target_id": 256, "ip": 64, "user_agent": 256}  # fmt: skip


@dataclass(frozen=True)
class Actor:
    """Who acted: an operator token (id, name, role), a server component ("system"), or nobody known."""

    kind: str
    id: str = ""
    name: str = ""
    role: str = ""

    @classmethod
    def system(cls, component: str) -> Actor:
        return cls("system", component, component)

    @classmethod
    def operator(cls, token_id: str, name: str, role: str) -> Actor:
        return cls("operator", token_id, name, role)


@dataclass(frozen=True)
class Target:
    kind: str = ""
    id: str = ""


@dataclass(frozen=True)
class Source:
    ip: str = ""
    user_agent: str = ""


NO_TARGET = Target()
NO_SOURCE = Source()


@dataclass(frozen=True)
class Entry:
    seq: int
    ts: datetime
    actor: Actor
    action: str
    target: Target
    details: dict[str, Any]
    source: Source
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON form used by the API and by export (every field the hash covers, plus the hash)."""
        return {**_fields(self), "hash": self.hash}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Entry:
        """Raises: KeyError / ValueError / TypeError on a malformed object."""
        a, t, s = data["actor"], data["target"], data["source"]
        return cls(
            seq=int(data["seq"]),
            ts=datetime.strptime(str(data["ts"]), _TS_FORMAT).replace(tzinfo=UTC),
            actor=Actor(str(a["kind"]), str(a["id"]), str(a["name"]), str(a["role"])),
            action=str(data["action"]),
            target=Target(str(t["kind"]), str(t["id"])),
            details=dict(data["details"]),
            source=Source(str(s["ip"]), str(s["user_agent"])),
            prev_hash=str(data["prev_hash"]),
            hash=str(data["hash"]),
        )


def format_ts(ts: datetime) -> str:
    if ts.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware (UTC)")
    return ts.astimezone(UTC).strftime(_TS_FORMAT)


def _fields(e: Entry) -> dict[str, Any]:
    """Every field the hash covers (all but the hash itself)."""
    return {
        "seq": e.seq,
        "ts": format_ts(e.ts),
        "actor": {"kind": e.actor.kind, "id": e.actor.id, "name": e.actor.name, "role": e.actor.role},
        "action": e.action,
        "target": {"kind": e.target.kind, "id": e.target.id},
        "details": dict(e.details),
        "source": {"ip": e.source.ip, "user_agent": e.source.user_agent},
        "prev_hash": e.prev_hash,
    }


def canonical(fields: Mapping[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()  # fmt: skip


def compute_hash(entry: Entry) -> str:
    return hashlib.sha256(canonical(_fields(entry))).hexdigest()


def _cut(value: str, key: str) -> str:
    return value[: LIMITS[key]]


def _jsonable(value: Any, depth: int = 0) -> Any:
    """JSON-safe copy: str keys, finite numbers, lists; anything else becomes its str()."""
    if depth > 8:
        return "<nested too deep>"
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v, depth + 1) for v in value]
    return str(value)


def normalize_details(details: Mapping[str, Any] | None) -> dict[str, Any]:
    """Details as they will be stored and hashed: JSON-safe and at most MAX_DETAILS_BYTES encoded."""
    out: dict[str, Any] = _jsonable(dict(details or {}))
    size = len(canonical(out))
    if size > MAX_DETAILS_BYTES:
        return {"truncated": True, "bytes": size, "keys": sorted(out)[:50]}
    return out


def seal(*, seq: int, ts: datetime, actor: Actor, action: str, target: Target,
         details: Mapping[str, Any] | None, source: Source, prev_hash: str) -> Entry:  # fmt: skip
    """The entry that follows a chain whose head hash is `prev_hash`, with its fields normalized."""
    entry = Entry(
        seq=seq,
        ts=ts,
        actor=Actor(
            _cut(actor.kind, "kind"), _cut(actor.id, "id"), _cut(actor.name, "name"), _cut(actor.role, "role")
        ),
        action=_cut(action, "action"),
        target=Target(_cut(target.kind, "target_kind"), _cut(target.id, "target_id")),
        details=normalize_details(details),
        source=Source(_cut(source.ip, "ip"), _cut(source.user_agent, "user_agent")),
        prev_hash=prev_hash,
        hash="",
    )
    return Entry(**{**entry.__dict__, "hash": compute_hash(entry)})


def head_message(seq: int, head_hash: str) -> bytes:
    """The bytes the server key signs for a chain head."""
    return f"edgeloop-audit-head/v1\n{seq}\n{head_hash}".encode()


@dataclass(frozen=True)
class HeadSignature:
    seq: int
    hash: str
    key_id: str
    signature: str  # hex
    signed_at: datetime


@dataclass
class VerifyReport:
    ok: bool
    entries: int  # entries walked (up to and including the first broken link)
    head_seq: int
    signatures: int  # signatures checked
    last_signed_seq: int
    broken_seq: int | None = None  # the first entry (seq) at which the chain is broken
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ChainVerifier:
    """Walks entries in seq order (`feed`), then checks the stored head and its signatures (`finish`).

    `check_signature(sig) -> bool` verifies one signature with the server's public key.
    """

    signed_seqs: set[int] = field(default_factory=set)
    walked: int = 0
    last_seq: int = 0
    last_hash: str = GENESIS_HASH
    broken_seq: int | None = None
    reason: str = ""
    _hash_at: dict[int, str] = field(default_factory=dict)

    def feed(self, entry: Entry) -> bool:
        """Check one entry; False once the chain is broken (stop feeding then)."""
        if self.broken_seq is not None:
            return False
        expected = self.last_seq + 1
        self.walked += 1
        if entry.seq != expected:
            return self._break(expected, f"entry {expected} is missing (next stored entry is {entry.seq})")
        if compute_hash(entry) != entry.hash:
            return self._break(entry.seq, f"entry {entry.seq} does not match its hash (edited or moved)")
        if entry.prev_hash != self.last_hash:
            return self._break(
                entry.seq, f"entry {entry.seq} does not link to entry {entry.seq - 1} (prev_hash differs)"
            )
        self.last_seq, self.last_hash = entry.seq, entry.hash
        if entry.seq in self.signed_seqs:
            self._hash_at[entry.seq] = entry.hash
        return True

    def _break(self, seq: int, reason: str) -> bool:
        self.broken_seq, self.reason = seq, reason
        return False

    def finish(self, head: tuple[int, str] | None, signatures: Iterable[HeadSignature],
               check_signature: Callable[[HeadSignature], bool] | None) -> VerifyReport:  # fmt: skip
        sigs = sorted(signatures, key=lambda s: s.seq)
        checked = 0
        last_signed = 0
        if self.broken_seq is None and head is not None and head != (self.last_seq, self.last_hash):
            seq = min(head[0], self.last_seq) + 1
            self._break(seq, f"chain ends at entry {self.last_seq} but its head says {head[0]} "
                             "(entries deleted from the end, or appended around the lock)")  # fmt: skip
        for sig in sigs:
            if self.broken_seq is not None:
                break
            checked += 1
            if check_signature is not None and not check_signature(sig):
                self._break(sig.seq, f"head signature at entry {sig.seq} does not verify with the server key")
            elif sig.seq > self.last_seq:
                self._break(
                    self.last_seq + 1, f"entries {self.last_seq + 1}..{sig.seq} were signed but are gone"
                )
            elif sig.seq > 0 and self._hash_at.get(sig.seq) != sig.hash:
                self._break(sig.seq, f"entry {sig.seq} differs from the signed head (chain rewritten)")
            else:
                last_signed = sig.seq
        return VerifyReport(
            ok=self.broken_seq is None,
            entries=self.walked,
            head_seq=head[0] if head is not None else self.last_seq,
            signatures=checked,
            last_signed_seq=last_signed,
            broken_seq=self.broken_seq,
            reason=self.reason or "chain intact",
        )

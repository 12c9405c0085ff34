"""The audit hash chain (pure), the in-memory AuditRecorder fake and the audit key."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleet_server.audit.chain import (
    GENESIS_HASH,
    MAX_DETAILS_BYTES,
    Actor,
    ChainVerifier,
    Entry,
    HeadSignature,
    Source,
    Target,
    compute_hash,
    head_message,
    seal,
)
from fleet_server.audit.keys import AuditKey
from fleet_server.audit.port import AuditRecorder, MemoryAuditLog
from fleet_server.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def _log(n: int) -> MemoryAuditLog:
    log = MemoryAuditLog(clock=Clock())
    for i in range(n):
        log.record(
            Actor.operator("tok1", "alice", "admin"),
            "rollout.pause",
            Target("rollout", f"r{i}"),
            {"i": i, "why": "canary"},
            Source("10.0.0.1", "edgeloop-cli"),
        )
    return log


def _verify(entries: list[Entry]) -> tuple[int | None, str]:
    v = ChainVerifier()
    for e in entries:
        if not v.feed(e):
            break
    report = v.finish(None, [], None)
    return report.broken_seq, report.reason


def test_entries_link_and_hash_over_every_field() -> None:
    log = _log(3)
    first, second = log.entries[0], log.entries[1]
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    assert [e.seq for e in log.entries] == [1, 2, 3]
    for name, value in [
        ("action", "x"),
        ("details", {"i": 9}),
        ("prev_hash", "1" * 64),
        ("actor", Actor("system")),
        ("target", Target("t", "u")),
        ("source", Source("1.2.3.4")),
        ("ts", first.ts + timedelta(microseconds=1)),
        ("seq", 7),
    ]:
        assert compute_hash(dataclasses.replace(first, **{name: value})) != first.hash, name
    assert log.verify().ok


def test_fake_is_a_recorder_and_thread_safe() -> None:
    log: AuditRecorder = MemoryAuditLog()
    threads = [
        threading.Thread(target=lambda: [log.record(Actor.system("t"), "a") for _ in range(200)])
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(log, MemoryAuditLog)
    assert len(log.entries) == 800
    assert log.verify().ok


def test_edited_entry_is_named() -> None:
    entries = _log(5).entries
    entries[2] = dataclasses.replace(entries[2], details={"i": 2, "why": "nothing to see"})
    assert _verify(entries) == (3, "entry 3 does not match its hash (edited or moved)")


def test_edited_and_rehashed_entry_breaks_the_next_link() -> None:
    entries = _log(5).entries
    forged = dataclasses.replace(entries[2], action="rollout.resume")
    entries[2] = dataclasses.replace(forged, hash=compute_hash(forged))
    broken, reason = _verify(entries)
    assert broken == 4
    assert "does not link to entry 3" in reason


def test_deleted_entry_is_named() -> None:
    entries = _log(5).entries
    del entries[1]
    assert _verify(entries) == (2, "entry 2 is missing (next stored entry is 3)")


def test_reordered_entries_are_detected_at_the_first_moved_one() -> None:
    entries = _log(5).entries
    a, b = entries[1], entries[2]
    entries[1], entries[2] = dataclasses.replace(b, seq=2), dataclasses.replace(a, seq=3)
    broken, _ = _verify(entries)
    assert broken == 2


def test_inserted_entry_is_detected() -> None:
    entries = _log(4).entries
    forged = seal(
        seq=3,
        ts=entries[1].ts,
        actor=Actor.system("x"),
        action="key.add",
        target=Target(),
        details={},
        source=Source(),
        prev_hash=entries[1].hash,
    )
    renumbered = [dataclasses.replace(e, seq=e.seq + 1) for e in entries[2:]]
    broken, _ = _verify([*entries[:2], forged, *renumbered])
    assert broken == 4  # the old entry 3, now at 4, no longer matches its hash


def test_head_and_signatures_catch_a_rewritten_or_truncated_chain() -> None:
    key = AuditKey.generate()
    entries = _log(4).entries
    sig = HeadSignature(
        4, entries[3].hash, key.key_id, key.sign(head_message(4, entries[3].hash)), datetime.now(UTC)
    )

    def check(s: HeadSignature) -> bool:
        return s.key_id == key.key_id and key.verify(s.signature, head_message(s.seq, s.hash))

    v = ChainVerifier(signed_seqs={4})
    for e in entries:
        v.feed(e)
    report = v.finish((4, entries[3].hash), [sig], check)
    assert report.ok, report.reason
    assert (report.signatures, report.last_signed_seq) == (1, 4)

    # Truncated tail, head row moved back too: only the signature still remembers entry 4.
    v = ChainVerifier(signed_seqs={4})
    for e in entries[:3]:
        v.feed(e)
    report = v.finish((3, entries[2].hash), [sig], check)
    assert (report.ok, report.broken_seq) == (False, 4)
    assert "signed but are gone" in report.reason

    # Whole chain rewritten with valid hashes: the signed hash no longer matches.
    rewritten = _log(4).entries
    rewritten = [dataclasses.replace(e, details={"x": 1}) for e in rewritten]
    prev = GENESIS_HASH
    fixed = []
    for e in rewritten:
        e2 = dataclasses.replace(e, prev_hash=prev)
        e2 = dataclasses.replace(e2, hash=compute_hash(e2))
        fixed.append(e2)
        prev = e2.hash
    v = ChainVerifier(signed_seqs={4})
    for e in fixed:
        v.feed(e)
    report = v.finish((4, fixed[3].hash), [sig], check)
    assert (report.ok, report.broken_seq) == (False, 4)
    assert "differs from the signed head" in report.reason

    # A forged signature does not verify.
    bad = dataclasses.replace(sig, signature=AuditKey.generate().sign(head_message(4, entries[3].hash)))
    v = ChainVerifier(signed_seqs={4})
    for e in entries:
        v.feed(e)
    assert "does not verify" in v.finish((4, entries[3].hash), [bad], check).reason

    # Head row says more than the chain holds (tail deleted, head untouched).
    v = ChainVerifier()
    for e in entries[:2]:
        v.feed(e)
    report = v.finish((4, entries[3].hash), [], None)
    assert (report.ok, report.broken_seq) == (False, 3)


def test_details_are_normalized_before_hashing_and_bounded() -> None:
    e = seal(
        seq=1,
        ts=datetime.now(UTC),
        actor=Actor("a" * 100),
        action="x" * 500,
        target=Target(),
        details={"nan": float("nan"), "t": (1, 2), 3: {"b": b"x"}},
        source=Source(),
        prev_hash=GENESIS_HASH,
    )
    assert e.details == {"nan": "nan", "t": [1, 2], "3": {"b": "b'x'"}}
    assert len(e.action) == 128 and len(e.actor.kind) == 16
    big = seal(
        seq=1,
        ts=datetime.now(UTC),
        actor=Actor("a"),
        action="x",
        target=Target(),
        details={"blob": "z" * (MAX_DETAILS_BYTES + 1)},
        source=Source(),
        prev_hash=GENESIS_HASH,
    )
    assert big.details["truncated"] is True
    assert compute_hash(e) == e.hash


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        seal(
            seq=1,
            ts=datetime(2026, 1, 1),
            actor=Actor("a"),
            action="x",
            target=Target(),
            details={},
            source=Source(),
            prev_hash=GENESIS_HASH,
        )


def test_export_form_round_trips() -> None:
    for e in _log(3).entries:
        back = Entry.from_dict(json.loads(json.dumps(e.to_dict())))
        assert back == e
        assert compute_hash(back) == e.hash


def test_key_file_is_owner_only_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "head_key.pem"
    key = AuditKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = AuditKey.load_or_create(path)
    assert again.key_id == key.key_id
    assert again.verify(key.sign(b"m"), b"m")
    assert not again.verify("00" * 64, b"m")
    assert not again.verify("not hex", b"m")
    os.chmod(path, 0o644)
    AuditKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="not a readable PEM"):
        AuditKey.load_or_create(path)

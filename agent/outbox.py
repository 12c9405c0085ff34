"""Bounded on-disk store-and-forward queue for telemetry (SQLite, WAL, synchronous=FULL).

Every record gets a per-device `seq` that is never reused (AUTOINCREMENT); the server stores
(device_id, seq) uniquely and acks after commit, and we delete only acked records — so a record
is delivered exactly once from the user's view, across crashes on either side.

When the bound is reached the *oldest* records are dropped and `dropped_total` grows; the count
is persisted and reported to the server in every DeviceReport, never silent. `dropped_total`
counts records removed without an ack: a record acked after it was dropped is taken back out,
but one whose ack was lost with a dead session stays counted, so the figure can overstate real
loss by at most one in-flight window and never understates it.

Does not know about the network: the daemon decides what to send and when.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from agent.errors import StorageError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS record (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    metrics TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta(key, value) VALUES ('dropped_total', 0);
INSERT OR IGNORE INTO meta(key, value) VALUES ('rejected_total', 0);
"""


@dataclass(frozen=True)
class OutboxRecord:
    seq: int
    timestamp_ms: int
    kind: str
    metrics: dict[str, float]
    payload: bytes


@dataclass(frozen=True)
class OutboxStats:
    queued: int
    dropped_total: int
    last_seq: int
    rejected_total: int = 0  # records the server refused for good (discarded, never resent)


class TelemetryOutbox:
    def __init__(self, path: Path, *, max_records: int) -> None:
        self.max_records = max_records
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._count = int(self._db.execute("SELECT COUNT(*) FROM record").fetchone()[0])
        except sqlite3.Error as err:
            raise StorageError(f"telemetry outbox {path} is unusable: {err}") from err

    def append(self, *, timestamp_ms: int, kind: str, metrics: dict[str, float], payload: bytes = b"") -> int:
        """Store one record durably; drop the oldest first if the bound is reached. Returns its seq."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            overflow = self._count + 1 - self.max_records
            if overflow > 0:
                self._db.execute(
                    "DELETE FROM record WHERE seq IN (SELECT seq FROM record ORDER BY seq LIMIT ?)",
                    (overflow,),
                )
                self._db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped_total'", (overflow,))
                self._count -= overflow
            cur = self._db.execute(
                "INSERT INTO record(ts_ms, kind, metrics, payload) VALUES (?, ?, ?, ?)",
                (timestamp_ms, kind, json.dumps(metrics), payload),
            )
            self._db.execute("COMMIT")
        except sqlite3.Error as err:
            self._rollback()
            raise StorageError(f"cannot append telemetry: {err}") from err
        self._count += 1
        return int(cur.lastrowid or 0)

    def peek(self, *, after_seq: int, limit: int) -> list[OutboxRecord]:
        rows = self._db.execute(
            "SELECT seq, ts_ms, kind, metrics, payload FROM record WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return [OutboxRecord(int(s), int(t), str(k), json.loads(m), bytes(p)) for s, t, k, m, p in rows]

    def ack(self, seqs: list[int]) -> int:
        """Delete acknowledged records.

        A record dropped for space while it was already in flight, and then acked, *was*
        delivered: it is taken back out of `dropped_total`, so dropped + delivered always
        equals produced. (Each seq is acked at most once per agent: a batch is resent only
        when its session died before the ack was read.)
        """
        if not seqs:
            return 0
        try:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.executemany("DELETE FROM record WHERE seq = ?", [(s,) for s in seqs])
            delivered_after_drop = len(seqs) - cur.rowcount
            if delivered_after_drop > 0:
                self._db.execute(
                    "UPDATE meta SET value = MAX(0, value - ?) WHERE key = 'dropped_total'",
                    (delivered_after_drop,),
                )
            self._db.execute("COMMIT")
        except sqlite3.Error as err:
            self._rollback()
            raise StorageError(f"cannot delete acked telemetry: {err}") from err
        self._count -= cur.rowcount
        return cur.rowcount

    def discard(self, seqs: list[int]) -> int:
        """Delete records the server refused for good (counted in `rejected_total`). Returns deleted."""
        if not seqs:
            return 0
        try:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.executemany("DELETE FROM record WHERE seq = ?", [(s,) for s in seqs])
            self._db.execute(
                "UPDATE meta SET value = value + ? WHERE key = 'rejected_total'", (cur.rowcount,)
            )
            self._db.execute("COMMIT")
        except sqlite3.Error as err:
            self._rollback()
            raise StorageError(f"cannot discard rejected telemetry: {err}") from err
        self._count -= cur.rowcount
        return cur.rowcount

    def stats(self) -> OutboxStats:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'record'").fetchone()
        return OutboxStats(
            queued=self._count,
            dropped_total=int(meta.get("dropped_total", 0)),
            last_seq=int(row[0]) if row else 0,
            rejected_total=int(meta.get("rejected_total", 0)),
        )

    def close(self) -> None:
        self._db.close()

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

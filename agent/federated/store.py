"""Bounded on-device store of labelled samples (SQLite), the trainer's only data source.

Retention: at most `max_samples` rows (oldest dropped first) and nothing older than
`max_age_s`. Features are float32 blobs of one fixed width per store. A sample of another width
means the serving model's feature space changed (an update replaced the backbone): with
`replace_on_width_change` (what the daemon uses) the old rows, useless to the new head, are
deleted and counted in `replaced_total`; otherwise the sample is refused. Data never leaves the
device: only model updates do. The clock is injected.
Safe to share between threads (the inference API's Feedback writes while the trainer reads).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from agent.errors import InvalidInputError, StorageError

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sample (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  ts REAL NOT NULL,
  label INTEGER NOT NULL,
  features BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_sample_ts ON sample(ts);
"""


class SampleStore:
    """Labelled feature vectors with count and age limits."""

    def __init__(
        self,
        path: Path,
        *,
        max_samples: int = 5000,
        max_age_s: float = 30 * 86400,
        clock: Callable[[], float] = time.time,
        replace_on_width_change: bool = False,
    ) -> None:
        self._max_samples = max_samples
        self._replace = replace_on_width_change
        self.replaced_total = 0  # rows deleted because a new feature width arrived
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.RLock()  # one connection shared by threads: one statement group at a time
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False)
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise StorageError(f"sample store {path}: {err}") from err

    def add_many(self, x: np.ndarray, y: np.ndarray) -> int:
        """Append samples, then apply retention. Returns how many rows the store holds.

        Raises:
            InvalidInputError: shapes disagree, labels negative, or (unless replacing) the width
                differs from the stored rows.
        """
        x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        if len(x) != len(y) or (len(y) and int(np.min(y)) < 0) or not np.all(np.isfinite(x)):
            raise InvalidInputError("samples need finite features and one non-negative label each")
        now = self._clock()
        rows = [(now, int(label), feats.tobytes()) for feats, label in zip(x, y, strict=True)]
        with self._lock:
            width = self.width()
            if width and len(x) and x.shape[1] != width:
                if not self._replace:
                    raise InvalidInputError(f"feature width {x.shape[1]} != stored width {width}")
                dropped = self.count()
                with self._db:
                    self._db.execute("DELETE FROM sample")
                self.replaced_total += dropped
                logger.warning(
                    "feature width changed %d -> %d: %d stored samples of the old model dropped",
                    width,
                    x.shape[1],
                    dropped,
                )
            with self._db:
                self._db.executemany("INSERT INTO sample(ts, label, features) VALUES (?, ?, ?)", rows)
            return self.enforce_retention()

    def enforce_retention(self) -> int:
        with self._lock, self._db:
            self._db.execute("DELETE FROM sample WHERE ts < ?", (self._clock() - self._max_age_s,))
            self._db.execute(
                "DELETE FROM sample WHERE id NOT IN (SELECT id FROM sample ORDER BY id DESC LIMIT ?)",
                (self._max_samples,),
            )
        return self.count()

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM sample").fetchone()[0])

    def width(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT features FROM sample LIMIT 1").fetchone()
        return len(row[0]) // 4 if row else 0

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """All retained samples as (x float32 (n, d), y int64 (n,))."""
        with self._lock:
            self.enforce_retention()
            rows = self._db.execute("SELECT label, features FROM sample ORDER BY id").fetchall()
        if not rows:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
        x = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
        return x, np.array([r[0] for r in rows], dtype=np.int64)

    def close(self) -> None:
        self._db.close()

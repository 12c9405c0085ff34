"""Durable storage of the update record (``ota/update.json``): temp file, fsync, rename, fsync dir.

Persisted values are strings and plain JSON; an unknown ``format`` or unreadable file is a
StorageError (the daemon must not guess what an interrupted update was doing).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from agent.errors import StorageError
from agent.fsutil import atomic_write
from agent.ota.machine import FORMAT, UpdateRecord
from agent.ota.states import UpdateState


class RecordStore:
    def __init__(self, path: Path) -> None:
        self._path = path

    def load(self) -> UpdateRecord:
        """The saved record, or a fresh IDLE one.

        Raises:
            StorageError: the file exists but cannot be read or has an unknown format.
        """
        try:
            raw = json.loads(self._path.read_bytes())
        except FileNotFoundError:
            return UpdateRecord()
        except (OSError, ValueError) as err:
            raise StorageError(f"cannot read update record {self._path}: {err}") from err
        if raw.get("format") != FORMAT:
            raise StorageError(f"update record {self._path} has unknown format {raw.get('format')!r}")
        try:
            return UpdateRecord(**{**raw, "state": UpdateState(raw["state"])})
        except (TypeError, ValueError, KeyError) as err:
            raise StorageError(f"update record {self._path} is invalid: {err}") from err

    def save(self, record: UpdateRecord) -> None:
        """Replace the record atomically and durably.

        Raises:
            StorageError: the write failed.
        """
        try:
            atomic_write(self._path, json.dumps(asdict(record), sort_keys=True).encode())
        except OSError as err:
            raise StorageError(f"cannot write update record {self._path}: {err}") from err

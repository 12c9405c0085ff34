"""Opt-in LRU prediction cache keyed on a hash of the inputs, per model version.

Owns the key (BLAKE2b over model version, input names, dtypes, shapes and bytes) and a bounded
`OrderedDict` of output copies. Entries of other model versions simply never match and age out.
Does not count hits or misses for telemetry (the engine reports them to `ServingStats`).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np


def input_key(model: str, inputs: Mapping[str, np.ndarray]) -> bytes:
    digest = hashlib.blake2b(model.encode(), digest_size=20)
    for name in sorted(inputs):
        array = np.ascontiguousarray(inputs[name])
        digest.update(f"|{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.data)
    return digest.digest()


class PredictionCache:
    """Thread-safe LRU of `max_entries` predictions."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._entries: OrderedDict[bytes, dict[str, np.ndarray]] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def get(self, key: bytes) -> dict[str, np.ndarray] | None:
        with self._lock:
            outputs = self._entries.get(key)
            if outputs is not None:
                self._entries.move_to_end(key)
            return outputs

    def put(self, key: bytes, outputs: Mapping[str, np.ndarray]) -> None:
        with self._lock:
            self._entries[key] = {k: np.array(v, copy=True) for k, v in outputs.items()}
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

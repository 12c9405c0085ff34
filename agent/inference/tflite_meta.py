"""Read the name -> bytes metadata entries of a ``.tflite`` file (no TensorFlow, no schema package).

Owns a minimal, bounds-checked flatbuffer walk of the TFLite ``Model`` table: ``metadata``
(field 6, a vector of ``{name: string, buffer: uint}``) and ``buffers`` (field 4, a vector of
``{data: [ubyte], offset: ulong, size: ulong}``; large models keep data after the flatbuffer at
``offset``). Used to read ``edgeloop.batched_inputs``. A file that is not a well-formed flatbuffer
yields no metadata (the interpreter itself reports bad files). Does not write models.
"""

from __future__ import annotations

import struct
from pathlib import Path

_MODEL_BUFFERS = 4
_MODEL_METADATA = 6


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def u32(self, pos: int) -> int:
        return int(struct.unpack_from("<I", self.data, pos)[0])

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of field `index` of the table at `table`, None when absent."""
        vtable = table - struct.unpack_from("<i", self.data, table)[0]
        vsize = struct.unpack_from("<H", self.data, vtable)[0]
        slot = 4 + 2 * index
        if slot >= vsize:
            return None
        offset = struct.unpack_from("<H", self.data, vtable + slot)[0]
        return table + offset if offset else None

    def deref(self, pos: int) -> int:
        return pos + self.u32(pos)

    def vector(self, pos: int) -> tuple[int, int]:
        start = self.deref(pos)
        return start + 4, self.u32(start)

    def string(self, pos: int) -> str:
        start, length = self.vector(pos)
        return self.data[start : start + length].decode("utf-8", errors="replace")


def read_metadata(path: Path, *, max_value_bytes: int = 1 << 16) -> dict[str, bytes]:
    """The model's metadata entries (values longer than `max_value_bytes` are skipped)."""
    try:
        data = path.read_bytes()
        return _metadata(_Reader(data), max_value_bytes)
    except (OSError, struct.error, IndexError, UnicodeDecodeError):
        return {}


def _metadata(r: _Reader, max_value_bytes: int) -> dict[str, bytes]:
    root = r.u32(0)
    meta_pos, buffers_pos = r.field(root, _MODEL_METADATA), r.field(root, _MODEL_BUFFERS)
    if meta_pos is None or buffers_pos is None:
        return {}
    buffers, n_buffers = r.vector(buffers_pos)
    entries, n_entries = r.vector(meta_pos)
    out: dict[str, bytes] = {}
    for i in range(n_entries):
        entry = r.deref(entries + 4 * i)
        name_pos, buffer_pos = r.field(entry, 0), r.field(entry, 1)
        if name_pos is None or buffer_pos is None:
            continue
        index = r.u32(buffer_pos)
        if index >= n_buffers:
            continue
        value = _buffer(r, r.deref(buffers + 4 * index), max_value_bytes)
        if value is not None:
            out[r.string(name_pos)] = value
    return out


def _buffer(r: _Reader, table: int, max_value_bytes: int) -> bytes | None:
    data_pos = r.field(table, 0)
    if data_pos is not None:
        start, length = r.vector(data_pos)
        return r.data[start : start + length] if length <= max_value_bytes else None
    offset_pos, size_pos = r.field(table, 1), r.field(table, 2)
    if offset_pos is None or size_pos is None:
        return b""
    offset = int(struct.unpack_from("<Q", r.data, offset_pos)[0])
    size = int(struct.unpack_from("<Q", r.data, size_pos)[0])
    if size > max_value_bytes or offset + size > len(r.data):
        return None
    return r.data[offset : offset + size]

"""Chunk manifests for model-aware deltas: one chunk per ONNX tensor, content-defined elsewhere.

The manifest lists ``[offset, length, sha256]`` for consecutive chunks covering the whole artifact.
For ONNX files the protobuf wire format is walked (ModelProto.graph -> GraphProto.initializer ->
TensorProto) and every large length-delimited field of an initializer (``raw_data`` or packed
``*_data``) becomes its own chunk, so a fine-tune that changes one layer changes one chunk. Tensors
above `max_tensor_chunk` are cut in fixed pieces from the tensor start. Everything else (graph
structure, opaque formats such as .tflite) is cut with a gear-hash content-defined chunker, so an
insertion shifts no boundaries far away. Pure bytes-in/manifest-out plus streaming file reads;
the agent never runs this code (it only follows a signed manifest).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 1
MIN_TENSOR_FIELD = 64  # bytes; smaller fields stay in the surrounding glue
MAX_TENSOR_CHUNK = 4 << 20  # bytes
CDC_MIN, CDC_AVG_BITS, CDC_MAX = 8 << 10, 15, 128 << 10  # avg ~32 KiB
_GEAR = np.random.default_rng(0x0EDE100F).integers(0, 2**32, size=256, dtype=np.uint64).astype(np.uint32)

Segment = tuple[int, int, bool]  # offset, length, is_tensor


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, payload start, payload end) of each field in buf[start:end]."""
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos)
        number, wtype = tag >> 3, tag & 7
        if wtype == 0:
            _, nxt = _varint(buf, pos)
        elif wtype == 1:
            nxt = pos + 8
        elif wtype == 5:
            nxt = pos + 4
        elif wtype == 2:
            size, pos = _varint(buf, pos)
            nxt = pos + size
        else:
            raise WireError(f"unsupported wire type {wtype}")
        if nxt > end:
            raise WireError("field runs past the end of its message")
        yield number, wtype, pos, nxt
        pos = nxt


def onnx_tensor_spans(data: bytes) -> list[tuple[int, int]]:
    """Byte spans of initializer payloads in a serialized ONNX ModelProto (sorted).

    Raises:
        WireError: the bytes are not a ModelProto.
    """
    buf = memoryview(data)
    spans: list[tuple[int, int]] = []
    for number, wtype, g0, g1 in _fields(buf, 0, len(buf)):
        if number != 7 or wtype != 2:  # ModelProto.graph
            continue
        for n2, w2, t0, t1 in _fields(buf, g0, g1):
            if n2 != 5 or w2 != 2:  # GraphProto.initializer
                continue
            for _, w3, p0, p1 in _fields(buf, t0, t1):
                if w3 == 2 and p1 - p0 >= MIN_TENSOR_FIELD:
                    spans.append((p0, p1 - p0))
    return sorted(spans)


def segments(data_len: int, spans: list[tuple[int, int]]) -> list[Segment]:
    out: list[Segment] = []
    pos = 0
    for start, length in spans:
        if start > pos:
            out.append((pos, start - pos, False))
        out.append((start, length, True))
        pos = start + length
    if pos < data_len:
        out.append((pos, data_len - pos, False))
    return out


def cdc_cuts(block: bytes) -> list[int]:
    """Content-defined cut points (exclusive ends) of `block`; the last one is len(block)."""
    n = len(block)
    if n <= CDC_MIN:
        return [n] if n else []
    g = _GEAR[np.frombuffer(block, dtype=np.uint8)]
    h = np.zeros(n, dtype=np.uint32)
    for k in range(32):  # gear hash over a 32-byte window: h_i = sum G[b_{i-k}] << k
        h[k:] += g[: n - k] << np.uint32(k)
    candidates = np.flatnonzero((h & np.uint32((1 << CDC_AVG_BITS) - 1)) == 0) + 1
    cuts: list[int] = []
    last = 0
    for c in candidates.tolist():
        while c - last > CDC_MAX:
            last += CDC_MAX
            cuts.append(last)
        if c - last >= CDC_MIN:
            cuts.append(c)
            last = c
    while n - last > CDC_MAX:
        last += CDC_MAX
        cuts.append(last)
    if last < n:
        cuts.append(n)
    return cuts


def _split(segment: Segment, data: memoryview) -> list[tuple[int, int]]:
    offset, length, is_tensor = segment
    if is_tensor:
        return [
            (o, min(MAX_TENSOR_CHUNK, offset + length - o))
            for o in range(offset, offset + length, MAX_TENSOR_CHUNK)
        ]
    out: list[tuple[int, int]] = []
    prev = 0
    for cut in cdc_cuts(bytes(data[offset : offset + length])):
        out.append((offset + prev, cut - prev))
        prev = cut
    return out


def build_manifest(path: Path) -> dict[str, Any]:
    """The chunk manifest of the artifact at `path` (ONNX-aware when it parses as ONNX)."""
    data = path.read_bytes()
    spans: list[tuple[int, int]] = []
    if path.suffix == ".onnx":
        try:
            spans = onnx_tensor_spans(data)
        except WireError:
            spans = []
    view = memoryview(data)
    chunks = [
        [o, n, hashlib.sha256(view[o : o + n]).hexdigest()]
        for seg in segments(len(data), spans)
        for o, n in _split(seg, view)
    ]
    return {
        "format": FORMAT,
        "length": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "kind": "onnx-tensors" if spans else "cdc",
        "chunks": chunks,
    }

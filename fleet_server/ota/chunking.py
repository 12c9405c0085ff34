"""How a model file is cut into chunks for model-aware deltas: per tensor, content-defined elsewhere.

A chunk is a span of the file named by its sha256; the device rebuilds a release from chunks of any
model it holds plus the bytes it lacks. Where the cuts go decides what can be reused:

- ONNX: the protobuf wire format is walked (ModelProto.graph -> GraphProto.initializer ->
  TensorProto) to find each initializer's payload (``raw_data`` or packed ``*_data``) and name;
- TFLite: the flatbuffer is walked (Model.buffers -> Buffer.data, or Buffer.offset/size for data
  appended after the flatbuffer) to find each tensor buffer (keyed by its index);
- anything else (or a file that does not parse): a gear-hash content-defined chunker, so an
  insertion shifts no boundary far away.

The bytes before the first tensor (the ONNX header up to the graph's length prefix, the TFLite
flatbuffer tables) are a chunk of their own: they change with any tensor's shape, so a sibling
model with another head still shares every chunk after them. A tensor of at least `min_chunk`
bytes (32 KiB) starts a chunk; the graph glue and the smaller
tensors before it ride along in that chunk (a 32-byte digest per 1 KiB bias costs more than
reusing it saves), so a head-only fine-tune changes the chunks holding the head and nothing else.
Chunks are cut at `MAX_CHUNK` from the tensor start, which bounds the agent's memory per chunk;
a run of glue longer than `GAP_MAX` is cut content-defined. Each chunk carries a *key* (the names
of the tensors it holds) that `patches.py` uses to pair it with the same tensor of an older
release even when offsets moved. Server-only: the agent never cuts, it follows a signed manifest.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protos.edgeloop import chunk_manifest
from protos.edgeloop.chunk_manifest import (
    LAYOUT_NAMES,
    LAYOUT_ONNX,
    LAYOUT_OPAQUE,
    LAYOUT_TFLITE,
    ChunkManifest,
    ManifestChunk,
    PatchRef,
)

MIN_CHUNK = 32 << 10  # a tensor this large starts its own chunk
MAX_CHUNK = 4 << 20
GAP_MAX = 128 << 10  # glue between large tensors up to this rides along; longer runs are cut by content
MIN_TENSOR_FIELD = 64  # ONNX fields smaller than this are glue
CDC_MIN, CDC_AVG_BITS, CDC_MAX = 16 << 10, 16, 256 << 10  # avg ~64 KiB
_GEAR = np.random.default_rng(0x0EDE100F).integers(0, 2**32, size=256, dtype=np.uint64).astype(np.uint32)


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message or flatbuffer."""


@dataclass(frozen=True, slots=True)
class Span:
    offset: int
    length: int
    key: str  # tensor name (ONNX) or buffer index (TFLite)


@dataclass(frozen=True, slots=True)
class Chunk:
    offset: int
    length: int
    sha256: bytes
    key: str  # the large tensor this chunk holds (a piece of it: "name#2"), "" for glue


@dataclass(frozen=True, slots=True)
class Layout:
    """A file cut into chunks (tiles [0, length) in order)."""

    length: int
    sha256: str
    layout: int  # chunk_manifest.LAYOUT_*
    chunks: tuple[Chunk, ...]

    @property
    def kind(self) -> str:
        return LAYOUT_NAMES[self.layout]


# ------------------------------------------------------------------ ONNX


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


def onnx_tensors(data: bytes) -> list[Span]:
    """Initializer payloads of a serialized ONNX ModelProto with their tensor names (sorted).

    Raises:
        WireError: the bytes are not a ModelProto.
    """
    buf = memoryview(data)
    spans: list[Span] = []
    for number, wtype, g0, g1 in _fields(buf, 0, len(buf)):
        if number != 7 or wtype != 2:  # ModelProto.graph
            continue
        for n2, w2, t0, t1 in _fields(buf, g0, g1):
            if n2 != 5 or w2 != 2:  # GraphProto.initializer
                continue
            name, payloads = "", []
            for n3, w3, p0, p1 in _fields(buf, t0, t1):
                if n3 == 8 and w3 == 2:  # TensorProto.name
                    name = bytes(buf[p0:p1]).decode("utf-8", "replace")
                elif w3 == 2 and p1 - p0 >= MIN_TENSOR_FIELD:
                    payloads.append((p0, p1 - p0))
            spans += [Span(o, n, name) for o, n in payloads]
    return sorted(spans, key=lambda s: s.offset)


def onnx_graph_start(data: bytes) -> int:
    """Where ModelProto.graph's payload starts (0 if absent): the bytes before it (the header and
    the graph's length, which changes with any tensor's size) are a chunk of their own.

    Raises:
        WireError: the bytes are not a ModelProto.
    """
    buf = memoryview(data)
    for number, wtype, g0, _ in _fields(buf, 0, len(buf)):
        if number == 7 and wtype == 2:
            return g0
    return 0


def onnx_tensor_spans(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each initializer payload (see `onnx_tensors`)."""
    return [(s.offset, s.length) for s in onnx_tensors(data)]


# ------------------------------------------------------------------ TFLite


def tflite_buffers(data: bytes) -> list[Span]:
    """Tensor buffers of a TFLite flatbuffer (``Model.buffers[i].data`` or offset/size), sorted.

    Raises:
        WireError: not a TFLite model, or an offset outside the file.
    """
    n = len(data)
    if n < 8 or data[4:8] != b"TFL3":
        raise WireError("no TFL3 file identifier")

    def u32(pos: int) -> int:
        if pos < 0 or pos + 4 > n:
            raise WireError("offset outside the file")
        return int(struct.unpack_from("<I", data, pos)[0])

    def field(table: int, index: int) -> int:
        """Absolute position of a table field, 0 when absent."""
        vtable = table - int(struct.unpack_from("<i", data, table)[0])
        if vtable < 0 or vtable + 4 > n:
            raise WireError("vtable outside the file")
        vsize = int(struct.unpack_from("<H", data, vtable)[0])
        slot = 4 + 2 * index
        if slot + 2 > vsize or vtable + slot + 2 > n:
            return 0
        rel = int(struct.unpack_from("<H", data, vtable + slot)[0])
        return table + rel if rel else 0

    root = u32(0)
    pos = field(root, 4)  # Model.buffers
    if not pos:
        return []
    vector = pos + u32(pos)
    spans: list[Span] = []
    for i in range(u32(vector)):
        element = vector + 4 + 4 * i
        buffer = element + u32(element)
        data_pos = field(buffer, 0)
        if data_pos:
            vec = data_pos + u32(data_pos)
            size = u32(vec)
            start = vec + 4
        else:
            off_pos, size_pos = field(buffer, 1), field(buffer, 2)
            if not (off_pos and size_pos):
                continue
            start, size = struct.unpack_from(
                "<QQ", data[off_pos : off_pos + 8] + data[size_pos : size_pos + 8]
            )
        if size and start + size <= n:
            spans.append(Span(int(start), int(size), f"buffer{i}"))
        elif size:
            raise WireError(f"buffer {i} runs past the end of the file")
    return sorted(spans, key=lambda s: s.offset)


# ------------------------------------------------------------------ content-defined cuts


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


# ------------------------------------------------------------------ layout


def cut(
    data: bytes, spans: list[Span], *, header: int = 0, min_chunk: int = MIN_CHUNK
) -> list[tuple[int, int, str]]:
    """(offset, length, key) chunks tiling `data`: ``[0, header)`` alone, then each tensor of
    `min_chunk` bytes or more starts a chunk holding the glue before it (glue longer than `GAP_MAX`
    is cut by content instead)."""
    out: list[tuple[int, int, str]] = []
    view = memoryview(data)

    def glue(start: int, end: int) -> None:
        prev = start
        for c in cdc_cuts(bytes(view[start:end])) if end - start > GAP_MAX else [end - start]:
            out.append((prev, start + c - prev, ""))
            prev = start + c

    pos = min(header, len(data))
    if pos:
        glue(0, pos)
    for span in spans:
        if span.length < min_chunk or span.offset < pos:
            continue
        first = pos
        if span.offset - pos > GAP_MAX:
            glue(pos, span.offset)
            first = span.offset
        end = span.offset + span.length
        for piece, o in enumerate(range(span.offset, end, MAX_CHUNK)):
            start = first if piece == 0 else o
            out.append(
                (start, min(o + MAX_CHUNK, end) - start, span.key if piece == 0 else f"{span.key}#{piece}")
            )
        pos = end
    if pos < len(data):
        glue(pos, len(data))
    return out


def _spans(path: Path, data: bytes) -> tuple[int, list[Span], int]:
    """(layout, tensor spans, end of the header chunk)."""
    if path.suffix == ".onnx":
        try:
            return LAYOUT_ONNX, onnx_tensors(data), onnx_graph_start(data)
        except WireError:
            pass
    if path.suffix == ".tflite" or data[4:8] == b"TFL3":
        try:
            spans = tflite_buffers(data)
            return LAYOUT_TFLITE, spans, spans[0].offset if spans else 0
        except WireError:
            pass
    return LAYOUT_OPAQUE, [], 0


def build_layout(path: Path, *, min_chunk: int = MIN_CHUNK) -> Layout:
    """The chunk layout of the artifact at `path` (tensor-aware for ONNX and TFLite)."""
    data = path.read_bytes()
    layout, spans, header = _spans(path, data)
    view = memoryview(data)
    chunks = tuple(
        Chunk(o, n, hashlib.sha256(view[o : o + n]).digest(), key)
        for o, n, key in cut(data, spans, header=header, min_chunk=min_chunk)
    )
    return Layout(len(data), hashlib.sha256(data).hexdigest(), layout, chunks)


def manifest_bytes(layout: Layout, patches: Mapping[int, PatchRef] | None = None) -> bytes:
    """The signed chunk manifest (format 2) of `layout` with its chunks' patches."""
    refs = patches or {}
    chunks = tuple(ManifestChunk(c.length, c.sha256, refs.get(i)) for i, c in enumerate(layout.chunks))
    return chunk_manifest.encode(ChunkManifest(layout.length, layout.layout, chunks))

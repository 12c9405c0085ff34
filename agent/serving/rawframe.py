"""Raw tensor frames: the byte layout of the framed data plane (v2) and of the sample side channel.

One frame = a fixed 20-byte header, a *meta* section (strings and tensor descriptors) and a *data*
section (tensor bytes, each tensor 8-byte aligned). All integers are little-endian::

    header: magic "ELT" | u8 version (2) | u8 kind-or-status | u8 flags | u16 count
            | u32 meta_len | u64 data_len
    tensor descriptor (count of them, in meta): u8 dtype | u8 ndim | u16 name_len | u64 offset
            | ndim x i64 dims | name (UTF-8)

A `METRICS` frame (side channel: an in-process app's live model metric window) has no tensors; its
meta section is, after a u8 format (`METRICS_FORMAT`; another one is refused, not guessed)::

    u8 flags (0) | u16 hist_len | u16 classes_len | u16 buckets_len | u64 predictions | u64 errors
    | f64 confidence_sum, confidence_sum_sq, latency_sum_ms, latency_sum_sq_ms
    | name, version, sha256 (length-prefixed strings) | hist_len x u32 | classes_len x u32
    | buckets_len x (u16 index, u32 count)

A descriptor's `offset` points into the data section, or into the client's shared-memory segment
for `PREDICT_SHM`, so decoding is the same for both (`np.frombuffer`, no copy). A frame whose
first four bytes are not the magic comes from a v1 (protobuf) peer; see `agent.serving.framed`.

Owns the layout, the dtype codes and strict decoding: a truncated descriptor, an unknown dtype, a
negative dimension or a tensor reaching past its buffer is an `InvalidInputError` naming what is
wrong. Does not do I/O, validate against a model's signature or enforce request-size limits.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from agent.errors import InvalidInputError
from agent.inference.model_metrics import ModelId, WindowCounts

MAGIC = b"ELT\x02"
VERSION = 2
HEADER = struct.Struct("<4sBBHIQ")  # magic+version, kind/status, flags, count, meta_len, data_len
_DESC = struct.Struct("<BBHQ")  # dtype, ndim, name_len, offset
_STR = struct.Struct("<H")
_METRICS = struct.Struct("<BBHHHQQdddd")  # format, flags, hist, classes, buckets, counts, sums
_BUCKET = struct.Struct("<HI")

# Request kinds (the response reuses the byte for its gRPC status number, 0 = OK).
PREDICT, PREDICT_SHM, ATTACH_SHM = 1, 2, 3
SAMPLE = 9  # side channel: one captured (inputs, outputs) pair from an in-process app
METRICS = 10  # side channel: one model's metric window from an in-process app
METRICS_FORMAT = 1
MAX_METRICS_FRAME = 16 * 1024  # a full window (1000 classes, every latency bucket) is ~6 KB
FLAG_USE_CACHE = 1  # request
FLAG_CACHE_HIT = 1  # response

MAX_META = 1 << 16  # bytes of descriptors and strings in one frame
MAX_NDIM = 16
_DIMS = tuple(struct.Struct(f"<{n}q") for n in range(MAX_NDIM + 1))

_CODES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")
_DTYPES: tuple[np.dtype[Any], ...] = tuple(np.dtype(n).newbyteorder("<") for n in _CODES)
_BY_DTYPE: dict[np.dtype[Any], int] = {d: i + 1 for i, d in enumerate(_DTYPES)}
_ZERO = bytes(8)


def _pad(n: int) -> int:
    return (n + 7) & ~7


def header(kind: int, *, flags: int = 0, count: int = 0, meta_len: int = 0, data_len: int = 0) -> bytes:
    return HEADER.pack(MAGIC, kind, flags, count, meta_len, data_len)


def pack_str(text: str) -> bytes:
    raw = text.encode()
    return _STR.pack(len(raw)) + raw


def unpack_str(meta: memoryview, pos: int) -> tuple[str, int]:
    """Read one length-prefixed string at `pos`; returns it and the position after it.

    Raises:
        InvalidInputError: truncated or not UTF-8.
    """
    if pos + _STR.size > len(meta):
        raise InvalidInputError("malformed frame: truncated string")
    (size,) = _STR.unpack_from(meta, pos)
    end = pos + _STR.size + size
    if end > len(meta):
        raise InvalidInputError("malformed frame: truncated string")
    try:
        return str(meta[pos + _STR.size : end], "utf-8"), end
    except UnicodeDecodeError as err:
        raise InvalidInputError(f"malformed frame: string is not UTF-8 ({err})") from err


def little(array: np.ndarray, name: str) -> np.ndarray:
    """`array` as little-endian C-contiguous (a copy only when it is not already).

    Raises:
        InvalidInputError: a dtype the wire does not carry.
    """
    if array.dtype in _BY_DTYPE and array.flags.c_contiguous:  # the common case: no new dtype object
        return array
    dtype = array.dtype.newbyteorder("<")
    if dtype not in _BY_DTYPE:
        raise InvalidInputError(f"tensor {name!r} has unsupported dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=dtype)


def pack_tensors(arrays: Iterable[tuple[str, np.ndarray]], *, base: int = 0) -> tuple[bytes, list[Any], int]:
    """Descriptors plus the data pieces (arrays and padding) laid out from offset `base`.

    Returns:
        (descriptor bytes, pieces to send or copy in order, total data length including padding).

    Raises:
        InvalidInputError: an unsupported dtype or too many dimensions.
    """
    meta: list[bytes] = []
    pieces: list[Any] = []
    offset = base
    for name, raw in arrays:
        array = little(raw, name)
        if array.ndim > MAX_NDIM:
            raise InvalidInputError(f"tensor {name!r} has {array.ndim} dimensions (limit {MAX_NDIM})")
        encoded = name.encode()
        meta.append(_DESC.pack(_BY_DTYPE[array.dtype], array.ndim, len(encoded), offset))
        meta.append(_DIMS[array.ndim].pack(*array.shape))
        meta.append(encoded)
        size = array.nbytes
        if size:
            pieces.append(array.data.cast("B"))
        padded = _pad(size)
        if padded != size:
            pieces.append(_ZERO[: padded - size])
        offset += padded
    return b"".join(meta), pieces, offset - base


def unpack_tensors(
    meta: memoryview, pos: int, count: int, data: Any
) -> tuple[list[tuple[str, np.ndarray]], int]:
    """Decode `count` descriptors at `meta[pos:]` into arrays viewing `data` (no copy).

    Returns:
        The (name, array) pairs in order and the position after the last descriptor.

    Raises:
        InvalidInputError: truncated descriptor, unknown dtype, bad rank or dimension, or a tensor
            reaching past the end of `data`.
    """
    out: list[tuple[str, np.ndarray]] = []
    limit = len(data)
    for _ in range(count):
        if pos + _DESC.size > len(meta):
            raise InvalidInputError("malformed frame: truncated tensor descriptor")
        code, ndim, name_len, offset = _DESC.unpack_from(meta, pos)
        pos += _DESC.size
        if ndim > MAX_NDIM:
            raise InvalidInputError(f"malformed frame: tensor has {ndim} dimensions (limit {MAX_NDIM})")
        end = pos + 8 * ndim + name_len
        if end > len(meta):
            raise InvalidInputError("malformed frame: truncated tensor descriptor")
        shape = _DIMS[ndim].unpack_from(meta, pos)
        try:
            name = str(meta[pos + 8 * ndim : end], "utf-8")
        except UnicodeDecodeError as err:
            raise InvalidInputError(f"malformed frame: tensor name is not UTF-8 ({err})") from err
        pos = end
        if not 1 <= code <= len(_DTYPES):
            raise InvalidInputError(f"tensor {name!r} has an unspecified or unknown dtype ({code})")
        if any(d < 0 for d in shape):
            raise InvalidInputError(f"tensor {name!r} has a negative dimension in shape {list(shape)}")
        dtype = _DTYPES[code - 1]
        count_items = math.prod(shape)
        nbytes = count_items * dtype.itemsize
        if offset > limit or nbytes > limit - offset:
            raise InvalidInputError(
                f"tensor {name!r} {dtype.name}{list(shape)} needs {nbytes} bytes at offset {offset}, "
                f"the frame carries {limit}"
            )
        out.append((name, np.ndarray(shape, dtype, buffer=data, offset=offset)))
    return out, pos


def copy_into(buffer: memoryview, pieces: Iterable[Any], at: int = 0) -> int:
    """Copy `pieces` contiguously into `buffer` from `at`; returns the end offset."""
    for piece in pieces:
        size = len(piece) if isinstance(piece, bytes) else piece.nbytes
        buffer[at : at + size] = piece
        at += size
    return at


def pack_sample(model_key: str, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> bytes:
    """One side-channel datagram: the model key, then inputs and outputs as tensor blocks."""
    in_meta, in_pieces, in_len = pack_tensors(inputs.items())
    out_meta, out_pieces, out_len = pack_tensors(outputs.items(), base=in_len)
    meta = pack_str(model_key) + _STR.pack(len(inputs)) + in_meta + out_meta
    head = header(SAMPLE, count=len(inputs) + len(outputs), meta_len=len(meta), data_len=in_len + out_len)
    return b"".join([head, meta, *(bytes(p) for p in in_pieces), *(bytes(p) for p in out_pieces)])


def unpack_sample(frame: bytes) -> tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Decode a side-channel datagram (arrays view `frame`).

    Raises:
        InvalidInputError: not a sample frame, or malformed.
    """
    if len(frame) < HEADER.size:
        raise InvalidInputError("malformed sample: shorter than a header")
    magic, kind, _, count, meta_len, data_len = HEADER.unpack_from(frame)
    if magic != MAGIC or kind != SAMPLE or HEADER.size + meta_len + data_len != len(frame):
        raise InvalidInputError("malformed sample: bad magic, kind or length")
    view = memoryview(frame)
    meta = view[HEADER.size : HEADER.size + meta_len]
    data = view[HEADER.size + meta_len :]
    key, pos = unpack_str(meta, 0)
    if pos + _STR.size > len(meta):
        raise InvalidInputError("malformed sample: truncated")
    (n_inputs,) = _STR.unpack_from(meta, pos)
    tensors, _ = unpack_tensors(meta, pos + _STR.size, count, data)
    if n_inputs > len(tensors):
        raise InvalidInputError("malformed sample: more inputs than tensors")
    return key, dict(tensors[:n_inputs]), dict(tensors[n_inputs:])


def pack_metrics(model: ModelId, counts: WindowCounts) -> bytes:
    """One side-channel datagram: `model`'s window of counts (counts over u32 are clamped).

    Raises:
        InvalidInputError: it does not fit the layout or `MAX_METRICS_FRAME` (names too long).
    """
    u32 = (1 << 32) - 1
    hist = [min(c, u32) for c in counts.confidence_hist]
    classes = [min(c, u32) for c in counts.class_counts]
    buckets = counts.latency_buckets
    sums = (counts.confidence_sum, counts.confidence_sum_sq, counts.latency_sum_ms, counts.latency_sum_sq_ms)
    try:
        fixed = _METRICS.pack(
            METRICS_FORMAT, 0, len(hist), len(classes), len(buckets), counts.predictions, counts.errors, *sums
        )
        strings = pack_str(model.name) + pack_str(model.version) + pack_str(model.sha256)
        tail = struct.pack(f"<{len(hist) + len(classes)}I", *hist, *classes)
        tail += b"".join(_BUCKET.pack(i, min(n, u32)) for i, n in buckets)
    except struct.error as err:
        raise InvalidInputError(f"metrics window does not fit the frame layout: {err}") from err
    size = HEADER.size + len(fixed) + len(strings) + len(tail)
    if size > MAX_METRICS_FRAME:
        raise InvalidInputError(f"metrics frame of {size} bytes, limit {MAX_METRICS_FRAME}")
    return b"".join([header(METRICS, meta_len=size - HEADER.size), fixed, strings, tail])


def unpack_metrics(frame: bytes) -> tuple[ModelId, WindowCounts]:
    """Decode a metrics datagram (structure only: `check_counts` judges the values).

    Raises:
        InvalidInputError: not a metrics frame, another format, oversize, truncated or trailing bytes.
    """
    if len(frame) > MAX_METRICS_FRAME:
        raise InvalidInputError(f"metrics frame of {len(frame)} bytes, limit {MAX_METRICS_FRAME}")
    if len(frame) < HEADER.size + 1:
        raise InvalidInputError("malformed metrics: shorter than a header")
    magic, kind, _, _, meta_len, data_len = HEADER.unpack_from(frame)
    if magic != MAGIC or kind != METRICS or data_len or HEADER.size + meta_len != len(frame):
        raise InvalidInputError("malformed metrics: bad magic, kind or length")
    meta = memoryview(frame)[HEADER.size :]
    if meta[0] != METRICS_FORMAT:
        raise InvalidInputError(f"metrics format {meta[0]}, this agent reads {METRICS_FORMAT}")
    if len(meta) < _METRICS.size:
        raise InvalidInputError("malformed metrics: truncated")
    _, _, n_hist, n_classes, n_buckets, predictions, errors, c_sum, c_sq, l_sum, l_sq = _METRICS.unpack_from(
        meta
    )
    name, pos = unpack_str(meta, _METRICS.size)
    version, pos = unpack_str(meta, pos)
    sha256, pos = unpack_str(meta, pos)
    end = pos + 4 * (n_hist + n_classes) + _BUCKET.size * n_buckets
    if end != len(meta):
        raise InvalidInputError(f"malformed metrics: {len(meta)} bytes of meta, the counts need {end}")
    hist = struct.unpack_from(f"<{n_hist}I", meta, pos)
    classes = struct.unpack_from(f"<{n_classes}I", meta, pos + 4 * n_hist)
    at = pos + 4 * (n_hist + n_classes)
    buckets = tuple(_BUCKET.unpack_from(meta, at + _BUCKET.size * k) for k in range(n_buckets))
    counts = WindowCounts(
        predictions=predictions,
        errors=errors,
        confidence_hist=hist,
        class_counts=classes,
        confidence_sum=c_sum,
        confidence_sum_sq=c_sq,
        latency_buckets=buckets,
        latency_sum_ms=l_sum,
        latency_sum_sq_ms=l_sq,
    )
    return ModelId(name, version, sha256), counts

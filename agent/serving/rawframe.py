"""Raw tensor frames: the byte layout of the framed data plane (v2) and of the sample side channel.

One frame = a fixed 20-byte header, a *meta* section (strings and tensor descriptors) and a *data*
section (tensor bytes, each tensor 8-byte aligned). All integers are little-endian::

    header: magic "ELT" | u8 version (2) | u8 kind-or-status | u8 flags | u16 count
            | u32 meta_len | u64 data_len
    tensor descriptor (count of them, in meta): u8 dtype | u8 ndim | u16 name_len | u64 offset
            | ndim x i64 dims | name (UTF-8)

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

MAGIC = b"ELT\x02"
VERSION = 2
HEADER = struct.Struct("<4sBBHIQ")  # magic+version, kind/status, flags, count, meta_len, data_len
_DESC = struct.Struct("<BBHQ")  # dtype, ndim, name_len, offset
_STR = struct.Struct("<H")

# Request kinds (the response reuses the byte for its gRPC status number, 0 = OK).
PREDICT, PREDICT_SHM, ATTACH_SHM = 1, 2, 3
SAMPLE = 9  # side channel: one captured (inputs, outputs) pair from an in-process app
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

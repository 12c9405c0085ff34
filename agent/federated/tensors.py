"""`edgeloop.v1` federated tensors and config <-> numpy / Python values (the agent's codec).

Owns the byte layout (little-endian raw buffers). Refuses dtypes other than float32/float64 and
buffers whose size does not match the shape, so a corrupt task never reaches the trainer.
"""

from __future__ import annotations

import math

import numpy as np

from agent.errors import IntegrityError
from protos.edgeloop.v1 import federated_pb2 as pb

ALLOWED_DTYPES = frozenset({"float32", "float64"})


def tensor_to_proto(name: str, value: np.ndarray) -> pb.FlTensor:
    arr = value if value.flags.c_contiguous else np.array(value, order="C")  # 0-d stays 0-d
    little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    return pb.FlTensor(name=name, shape=list(arr.shape), dtype=str(arr.dtype), data=little.tobytes())


def tensor_from_proto(t: pb.FlTensor, *, max_bytes: int) -> np.ndarray:
    """Raises: IntegrityError on a foreign dtype, a size mismatch or an oversized tensor."""
    if t.dtype not in ALLOWED_DTYPES:
        raise IntegrityError(f"tensor {t.name!r}: dtype {t.dtype!r} not allowed")
    if len(t.data) > max_bytes:
        raise IntegrityError(f"tensor {t.name!r}: {len(t.data)} bytes over the {max_bytes} limit")
    shape = tuple(int(d) for d in t.shape)
    dtype = np.dtype(t.dtype).newbyteorder("<")
    # math.prod is exact (np.prod wraps around at 2^63 and could let a bogus shape through)
    if any(d < 0 for d in shape) or len(shape) > 32 or math.prod(shape) * dtype.itemsize != len(t.data):
        raise IntegrityError(f"tensor {t.name!r}: shape {shape} does not match {len(t.data)} bytes")
    try:
        return np.frombuffer(t.data, dtype=dtype).reshape(shape).astype(t.dtype)
    except ValueError as err:  # e.g. a zero-size shape numpy still finds too big: (2**62, 0)
        raise IntegrityError(f"tensor {t.name!r}: shape {shape} cannot be built") from err


def config_from_proto(config: dict[str, pb.ConfigValue]) -> dict[str, float | str | bool | bytes]:
    out: dict[str, float | str | bool | bytes] = {}
    for key, value in config.items():
        kind = value.WhichOneof("value")
        if kind == "text":
            out[key] = value.text
        elif kind == "flag":
            out[key] = value.flag
        elif kind == "integer":
            out[key] = float(value.integer)
        elif kind == "number":
            out[key] = value.number
        elif kind == "blob":
            out[key] = value.blob
    return out


def num(config: dict[str, float | str | bool | bytes], key: str, default: float) -> float:
    value = config.get(key, default)
    return float(value) if isinstance(value, int | float) else default


def blob(config: dict[str, float | str | bool | bytes], key: str) -> bytes:
    value = config.get(key, b"")
    return value if isinstance(value, bytes) else b""

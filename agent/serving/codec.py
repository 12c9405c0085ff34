"""numpy / domain types <-> `edgeloop.v1` inference messages (the only place `inference_pb2` meets numpy).

Owns the dtype table, tensor (de)serialization as raw little-endian bytes (`np.frombuffer`, no copy
on decode) and the `TensorSpec` / `SlotInfo` conversions. A malformed tensor (unknown dtype, byte
count that does not match the shape) is an `InvalidInputError`. Does not validate against a model's
signature (`agent.inference.signature`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from agent.errors import InvalidInputError
from agent.inference.signature import TensorSpec
from agent.slots import SlotInfo
from protos.edgeloop.v1 import inference_pb2 as pb

_TO_PROTO: dict[str, pb.ElementType] = {
    "float32": pb.ELEMENT_TYPE_FLOAT32,
    "float16": pb.ELEMENT_TYPE_FLOAT16,
    "float64": pb.ELEMENT_TYPE_FLOAT64,
    "int8": pb.ELEMENT_TYPE_INT8,
    "uint8": pb.ELEMENT_TYPE_UINT8,
    "int16": pb.ELEMENT_TYPE_INT16,
    "int32": pb.ELEMENT_TYPE_INT32,
    "int64": pb.ELEMENT_TYPE_INT64,
    "bool": pb.ELEMENT_TYPE_BOOL,
}
_FROM_PROTO: dict[int, np.dtype[np.generic]] = {
    v: np.dtype(k).newbyteorder("<") for k, v in _TO_PROTO.items()
}


_BY_DTYPE: dict[np.dtype[np.generic], pb.ElementType] = {np.dtype(k): v for k, v in _TO_PROTO.items()}


def tensor_to_proto(name: str, array: np.ndarray) -> pb.Tensor:
    """Serialize one array (any byte order/layout) as little-endian C-order bytes."""
    little = array.dtype.newbyteorder("<")
    dtype = _BY_DTYPE.get(little)
    if dtype is None:
        raise InvalidInputError(f"tensor {name!r} has unsupported dtype {array.dtype}")
    if array.dtype != little or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=little)
    return pb.Tensor(name=name, dtype=dtype, shape=array.shape, data=array.tobytes())


def tensor_from_proto(tensor: pb.Tensor) -> np.ndarray:
    """Decode one tensor without copying its bytes.

    Raises:
        InvalidInputError: unknown dtype, negative dimension or a byte count that does not match.
    """
    dtype = _FROM_PROTO.get(tensor.dtype)
    if dtype is None:
        raise InvalidInputError(
            f"tensor {tensor.name!r} has an unspecified or unknown dtype ({tensor.dtype})"
        )
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidInputError(f"tensor {tensor.name!r} has a negative dimension in shape {list(shape)}")
    expected = math.prod(shape) * dtype.itemsize
    if len(tensor.data) != expected:
        raise InvalidInputError(
            f"tensor {tensor.name!r} {dtype.name}{list(shape)} needs {expected} bytes, got {len(tensor.data)}"
        )
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)


def inputs_from_proto(tensors: Sequence[pb.Tensor], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Decode request tensors; a single unnamed tensor binds to a single-input model's input."""
    return bind_inputs([(t.name, tensor_from_proto(t)) for t in tensors], names)


def bind_inputs(tensors: Sequence[tuple[str, np.ndarray]], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Named arrays -> the request mapping; one unnamed array binds to a single-input model's input.

    Raises:
        InvalidInputError: the same input name given twice.
    """
    if len(tensors) == 1 and not tensors[0][0] and len(names) == 1:
        return {names[0]: tensors[0][1]}
    bound: dict[str, np.ndarray] = {}
    for name, array in tensors:
        if name in bound:
            raise InvalidInputError(f"input {name!r} given twice")
        bound[name] = array
    return bound


def outputs_to_proto(outputs: Mapping[str, np.ndarray]) -> list[pb.Tensor]:
    return [tensor_to_proto(name, array) for name, array in outputs.items()]


def spec_to_proto(spec: TensorSpec) -> pb.TensorSpec:
    shape = [-1 if d is None else d for d in spec.shape]
    dtype = _TO_PROTO.get(spec.dtype, pb.ELEMENT_TYPE_UNSPECIFIED)
    return pb.TensorSpec(name=spec.name, dtype=dtype, shape=shape)


def spec_from_proto(spec: pb.TensorSpec) -> TensorSpec:
    dtype = _FROM_PROTO.get(spec.dtype)
    shape = tuple(None if d < 0 else int(d) for d in spec.shape)
    return TensorSpec(name=spec.name, dtype=dtype.name if dtype is not None else "unknown", shape=shape)


def slots_to_proto(listing: Mapping[str, SlotInfo | None]) -> Iterable[pb.SlotEntry]:
    for slot, info in listing.items():
        if info is None:
            yield pb.SlotEntry(slot=slot)
        else:
            yield pb.SlotEntry(
                slot=slot, name=info.name, version=info.version, sha256=info.sha256, reason=info.reason
            )

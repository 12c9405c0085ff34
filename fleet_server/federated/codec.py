"""Flower `Message` <-> `edgeloop.v1` federated protobuf, plus validation of device results.

Owns the only place where Flower records meet our wire types (Flower's `common/serde.py` idea).
Validation is strict because a device's result is untrusted input: wrong shapes, NaN/inf,
oversized tensors and foreign dtypes are refused here with a short reason, and the caller counts
the reason. Does not decide what a refused result means for the round (grid.py does).

Copies are counted because a round moves N x model-size bytes: a tensor's bytes are taken out of
the message once (each `FlTensor.data` access copies them), validated through a read-only view
(min/max, no temporaries), and written once into the npy bytes a Flower `Array` holds;
`array_view` reads an `Array` back without copying (np.load would).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from protos.edgeloop.v1 import federated_pb2 as pb

ALLOWED_DTYPES = frozenset({"float32", "float64"})
MAX_DIMS = 32  # numpy allows 64; no model tensor comes near either
NUM_EXAMPLES_KEY = "num-examples"
RAW_LE = "edgeloop.raw-le"  # Array stype: the tensor's little-endian bytes exactly as received


class ResultRejectedError(ValueError):
    """A device result failed validation; `reason` is a short counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str


def _c_order(value: np.ndarray) -> np.ndarray:
    """C-contiguous `value`, 0-d kept 0-d (np.ascontiguousarray turns () into (1,))."""
    return value if value.flags.c_contiguous else np.array(value, order="C")


def tensor_to_proto(name: str, value: np.ndarray) -> pb.FlTensor:
    arr = _c_order(value)
    return pb.FlTensor(
        name=name,
        shape=list(arr.shape),
        dtype=arr.dtype.name,
        data=arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes(),
    )


def tensor_from_proto(
    t: pb.FlTensor, *, max_bytes: int, dtypes: frozenset[str] = ALLOWED_DTYPES
) -> np.ndarray:
    """A read-only array viewing the tensor's bytes (taken out of the message once).

    Raises: ResultRejectedError on a foreign dtype, a size mismatch or an oversized tensor.
    """
    return _decode(t, t.data, max_bytes=max_bytes, dtypes=dtypes)


def _decode(t: pb.FlTensor, data: bytes, *, max_bytes: int, dtypes: frozenset[str]) -> np.ndarray:
    if t.dtype not in dtypes:
        raise ResultRejectedError("bad_dtype", t.dtype)
    if len(data) > max_bytes:
        raise ResultRejectedError("oversized", f"{t.name}: {len(data)} bytes")
    shape = tuple(int(d) for d in t.shape)
    if any(d < 0 for d in shape) or len(shape) > MAX_DIMS:
        raise ResultRejectedError("bad_shape", str(shape)[:200])
    dtype = np.dtype(t.dtype).newbyteorder("<")
    if math.prod(shape) * dtype.itemsize != len(data):  # exact: np.prod wraps around at 2^63
        raise ResultRejectedError("bad_shape", f"{t.name}: {shape} vs {len(data)} bytes")
    try:
        return np.frombuffer(data, dtype=dtype).reshape(shape).astype(t.dtype, copy=False)
    except ValueError as err:  # e.g. a zero-size shape numpy still finds too big: (2**62, 0)
        raise ResultRejectedError("bad_shape", f"{t.name}: {str(shape)[:200]}") from err


def npy_array(value: np.ndarray) -> Array:
    """Flower `Array` of `value` with one copy of its bytes (`Array(ndarray)` runs np.save)."""
    arr = _c_order(value)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(arr))
    data = b"".join((header.getvalue(), arr.reshape(-1).view(np.uint8).data))
    return Array(dtype=str(arr.dtype), shape=tuple(arr.shape), stype="numpy.ndarray", data=data)


def raw_array(dtype: str, shape: tuple[int, ...], data: bytes) -> Array:
    """Flower `Array` holding `data` as is (C order, little-endian; stype `RAW_LE`): no copy.

    For arrays only our own code reads back (`array_view`), such as SecAgg+ masked vectors;
    Flower's `Array.numpy()` refuses the stype, so never hand one to a Flower strategy.
    """
    return Array(dtype=dtype, shape=shape, stype=RAW_LE, data=data)


def array_view(array: Array) -> np.ndarray:
    """Read-only view of a Flower `Array`'s bytes (no copy; `Array.numpy()` copies).

    Raises: ValueError when a `RAW_LE` array's bytes do not match its dtype and shape.
    """
    if array.stype == RAW_LE:
        dtype = np.dtype(array.dtype).newbyteorder("<")
        return np.frombuffer(array.data, dtype=dtype).reshape(array.shape)
    if array.stype != "numpy.ndarray":
        return array.numpy()
    fp = io.BytesIO(array.data)  # shares the bytes until written to
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    if dtype.hasobject:
        return array.numpy()  # np.load refuses it with a clear error (no pickles)
    flat = np.frombuffer(array.data, dtype=dtype, count=math.prod(shape), offset=fp.tell())
    return flat.reshape(shape, order="F" if fortran else "C")


def _config_value(value: object) -> pb.ConfigValue:
    if isinstance(value, bytes):
        return pb.ConfigValue(blob=value)
    if isinstance(value, bool):
        return pb.ConfigValue(flag=value)
    if isinstance(value, int):
        return pb.ConfigValue(integer=value)
    if isinstance(value, float):
        return pb.ConfigValue(number=value)
    return pb.ConfigValue(text=str(value))


def array_key(content: RecordDict) -> str:
    keys = [k for k, v in content.items() if isinstance(v, ArrayRecord)]
    return keys[0] if keys else "arrays"


TensorCache = dict[int, tuple[bytes, TensorSpec]]  # id(Array) -> (a TrainTask holding only it, spec)


def message_to_task(
    msg: Message, *, round_id: str, deadline_s: float, cache: TensorCache | None = None
) -> tuple[pb.TrainTask, list[TensorSpec]]:
    """Encode a Flower instruction message; returns the task and the specs a reply must match.

    Strategies send the same ArrayRecord to every device: pass one `cache` for a batch of messages
    so each array is serialized once (keyed by object identity, valid only within the batch) and
    merged into each task from its wire bytes (4x cheaper than appending a message: upb copies
    an appended message through an encode and a decode).
    """
    cache = {} if cache is None else cache
    task = pb.TrainTask(
        task_id=msg.metadata.message_id,
        round_id=round_id,
        server_round=server_round_of(msg),
        kind=msg.metadata.message_type,
        deadline_s=deadline_s,
    )
    specs: list[TensorSpec] = []
    for record in msg.content.values():
        if isinstance(record, ArrayRecord):
            for name, array in record.items():
                if id(array) not in cache:
                    nd = array_view(array)
                    cache[id(array)] = (
                        _arrays_wire(name, nd),
                        TensorSpec(name, tuple(nd.shape), str(nd.dtype)),
                    )
                wire, spec = cache[id(array)]
                task.MergeFromString(wire)  # appends the one tensor to task.arrays
                specs.append(spec)
        elif isinstance(record, ConfigRecord):
            for key, value in record.items():
                task.config[key].CopyFrom(_config_value(value))
    return task, specs


def _arrays_wire(name: str, value: np.ndarray) -> bytes:
    arr = _c_order(value)
    little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    holder = pb.TrainTask()
    holder.arrays.add(name=name, shape=list(arr.shape), dtype=arr.dtype.name, data=little.tobytes())
    return holder.SerializeToString()


def server_round_of(msg: Message) -> int:
    for record in msg.content.values():
        if isinstance(record, ConfigRecord) and "server-round" in record:
            value = record["server-round"]
            return int(value) if isinstance(value, int | float) else 0
    return 0


def check_arrays(
    result: pb.TaskResult, specs: list[TensorSpec], *, max_bytes: int, max_abs: float
) -> dict[str, np.ndarray]:
    """Decode and validate a train result against what was sent.

    Raises:
        ResultRejectedError: wrong tensor names/shapes, NaN/inf, magnitude over `max_abs`, oversized.
    """
    datas = [t.data for t in result.arrays]  # each access copies: take the bytes out once
    if sum(len(d) for d in datas) > max_bytes:
        raise ResultRejectedError("oversized")
    if [t.name for t in result.arrays] != [s.name for s in specs]:
        raise ResultRejectedError("bad_shape", "tensor names differ from the task")
    out: dict[str, np.ndarray] = {}
    for t, data, spec in zip(result.arrays, datas, specs, strict=True):
        value = _decode(t, data, max_bytes=max_bytes, dtypes=ALLOWED_DTYPES)
        if value.shape != spec.shape:
            raise ResultRejectedError("bad_shape", f"{t.name}: {value.shape} != {spec.shape}")
        if value.size:
            lo, hi = float(value.min()), float(value.max())  # NaN propagates through both
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ResultRejectedError("non_finite", t.name)
            if max(-lo, hi) > max_abs:
                raise ResultRejectedError("out_of_range", t.name)
        out[t.name] = value.astype(spec.dtype, copy=False)
    return out


def check_metrics(result: pb.TaskResult, *, max_examples: int) -> dict[str, float]:
    metrics = {k: float(v) for k, v in result.metrics.items() if np.isfinite(v)}
    if len(metrics) != len(result.metrics):
        raise ResultRejectedError("non_finite", "metrics")
    if not 0 < result.num_examples <= max_examples:
        raise ResultRejectedError("bad_num_examples", str(result.num_examples))
    metrics[NUM_EXAMPLES_KEY] = int(result.num_examples)
    return metrics


def reply_message(
    request: Message, *, arrays_key: str, arrays: Mapping[str, np.ndarray] | None, metrics: dict[str, float]
) -> Message:
    content = RecordDict({"metrics": MetricRecord(dict(metrics))})
    if arrays is not None:
        content[arrays_key] = ArrayRecord({k: npy_array(v) for k, v in arrays.items()})
    return Message(content, reply_to=request)


def secagg_reply(request: Message, result: pb.TaskResult, *, max_bytes: int) -> Message:
    """Reply of a secure-aggregation stage: blobs in ConfigRecord "secagg", uint32 vectors in "masked"
    (`RAW_LE` arrays holding the received bytes: read them with `array_view`).

    Raises:
        ResultRejectedError: oversized, or a tensor that is not a well-formed uint32 vector.
    """
    datas = [t.data for t in result.arrays]
    if sum(len(b) for b in result.blobs.values()) + sum(len(d) for d in datas) > max_bytes:
        raise ResultRejectedError("oversized")
    metrics = MetricRecord({**dict(result.metrics), NUM_EXAMPLES_KEY: int(result.num_examples)})
    content = RecordDict({"secagg": ConfigRecord(dict(result.blobs)), "metrics": metrics})
    if result.arrays:
        uint32 = frozenset({"uint32"})
        vectors = {
            t.name: raw_array("uint32", _decode(t, d, max_bytes=max_bytes, dtypes=uint32).shape, d)
            for t, d in zip(result.arrays, datas, strict=True)
        }
        content["masked"] = ArrayRecord(vectors)
    return Message(content, reply_to=request)

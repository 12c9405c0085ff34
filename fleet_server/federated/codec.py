"""Flower `Message` <-> `edgeloop.v1` federated protobuf, plus validation of device results.

Owns the only place where Flower records meet our wire types (Flower's `common/serde.py` idea).
Validation is strict because a device's result is untrusted input: wrong shapes, NaN/inf,
oversized tensors and foreign dtypes are refused here with a short reason, and the caller counts
the reason. Does not decide what a refused result means for the round (grid.py does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from protos.edgeloop.v1 import federated_pb2 as pb

ALLOWED_DTYPES = frozenset({"float32", "float64"})
MAX_DIMS = 32  # numpy allows 64; no model tensor comes near either
NUM_EXAMPLES_KEY = "num-examples"


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


def tensor_to_proto(name: str, value: np.ndarray) -> pb.FlTensor:
    arr = np.ascontiguousarray(value)
    return pb.FlTensor(
        name=name,
        shape=list(arr.shape),
        dtype=str(arr.dtype),
        data=arr.astype(arr.dtype.newbyteorder("<")).tobytes(),
    )


def tensor_from_proto(
    t: pb.FlTensor, *, max_bytes: int, dtypes: frozenset[str] = ALLOWED_DTYPES
) -> np.ndarray:
    """Raises: ResultRejectedError on a foreign dtype, a size mismatch or an oversized tensor."""
    if t.dtype not in dtypes:
        raise ResultRejectedError("bad_dtype", t.dtype)
    if len(t.data) > max_bytes:
        raise ResultRejectedError("oversized", f"{t.name}: {len(t.data)} bytes")
    shape = tuple(int(d) for d in t.shape)
    if any(d < 0 for d in shape) or len(shape) > MAX_DIMS:
        raise ResultRejectedError("bad_shape", str(shape)[:200])
    dtype = np.dtype(t.dtype).newbyteorder("<")
    if math.prod(shape) * dtype.itemsize != len(t.data):  # exact: np.prod wraps around at 2^63
        raise ResultRejectedError("bad_shape", f"{t.name}: {shape} vs {len(t.data)} bytes")
    try:
        return np.frombuffer(t.data, dtype=dtype).reshape(shape).astype(t.dtype)
    except ValueError as err:  # e.g. a zero-size shape numpy still finds too big: (2**62, 0)
        raise ResultRejectedError("bad_shape", f"{t.name}: {str(shape)[:200]}") from err


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


TensorCache = dict[int, tuple[pb.FlTensor, TensorSpec]]


def message_to_task(
    msg: Message, *, round_id: str, deadline_s: float, cache: TensorCache | None = None
) -> tuple[pb.TrainTask, list[TensorSpec]]:
    """Encode a Flower instruction message; returns the task and the specs a reply must match.

    Strategies send the same ArrayRecord to every device: pass one `cache` for a batch of messages
    so each array is serialized once (keyed by object identity, valid only within the batch).
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
                    nd = array.numpy()
                    cache[id(array)] = (
                        tensor_to_proto(name, nd),
                        TensorSpec(name, tuple(nd.shape), str(nd.dtype)),
                    )
                tensor, spec = cache[id(array)]
                task.arrays.append(tensor)
                specs.append(spec)
        elif isinstance(record, ConfigRecord):
            for key, value in record.items():
                task.config[key].CopyFrom(_config_value(value))
    return task, specs


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
    if sum(len(t.data) for t in result.arrays) > max_bytes:
        raise ResultRejectedError("oversized")
    if [t.name for t in result.arrays] != [s.name for s in specs]:
        raise ResultRejectedError("bad_shape", "tensor names differ from the task")
    out: dict[str, np.ndarray] = {}
    for t, spec in zip(result.arrays, specs, strict=True):
        value = tensor_from_proto(t, max_bytes=max_bytes)
        if value.shape != spec.shape:
            raise ResultRejectedError("bad_shape", f"{t.name}: {value.shape} != {spec.shape}")
        if not np.all(np.isfinite(value)):
            raise ResultRejectedError("non_finite", t.name)
        if value.size and float(np.max(np.abs(value))) > max_abs:
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
        content[arrays_key] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return Message(content, reply_to=request)


def secagg_reply(request: Message, result: pb.TaskResult, *, max_bytes: int) -> Message:
    """Reply of a secure-aggregation stage: blobs in ConfigRecord "secagg", uint32 vectors in "masked".

    Raises:
        ResultRejectedError: oversized, or a tensor that is not a well-formed uint32 vector.
    """
    if sum(len(b) for b in result.blobs.values()) + sum(len(t.data) for t in result.arrays) > max_bytes:
        raise ResultRejectedError("oversized")
    metrics = MetricRecord({**dict(result.metrics), NUM_EXAMPLES_KEY: int(result.num_examples)})
    content = RecordDict({"secagg": ConfigRecord(dict(result.blobs)), "metrics": metrics})
    if result.arrays:
        vectors = {
            t.name: tensor_from_proto(t, max_bytes=max_bytes, dtypes=frozenset({"uint32"}))
            for t in result.arrays
        }
        content["masked"] = ArrayRecord({k: Array(v) for k, v in vectors.items()})
    return Message(content, reply_to=request)

"""Client side of `Feedback`: send a labelled data set to the running agent, a batch at a time.

Owns `send_feedback` (what `edgeloop-agent feedback` calls; usable from Python too): it asks the
agent which model serves, casts float inputs to that model's float dtype (an .npz of float64 is
common), then sends `batch_rows` rows per request naming that model, so a model swapped in mid-way
is refused rather than mixed in. Errors come back as `InferenceError` subclasses carrying the
agent's message and how many rows were stored before the failing batch. Does not retry.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np

from agent.errors import (
    BackendCrashedError,
    InferenceError,
    InvalidInputError,
    NoModelError,
    RequestTooLargeError,
)
from agent.serving import codec
from agent.serving.feedback import FeedbackRefusedError
from protos.edgeloop.v1 import inference_pb2 as pb
from protos.edgeloop.v1 import inference_pb2_grpc as pb_grpc

_R = TypeVar("_R")

_ERRORS: dict[grpc.StatusCode, type[InferenceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInputError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RequestTooLargeError,
    grpc.StatusCode.UNAVAILABLE: NoModelError,
    grpc.StatusCode.FAILED_PRECONDITION: FeedbackRefusedError,
    grpc.StatusCode.INTERNAL: BackendCrashedError,
}


@dataclass(frozen=True)
class FeedbackSummary:
    rows: int
    batches: int
    accepted: int
    stored_total: int  # labelled samples the device holds after the last batch
    model_name: str
    model_version: str
    feature_source: str  # "features" or "input"
    feature_width: int


def send_feedback(
    target: Path | str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    input_name: str = "",
    batch_rows: int = 256,
    timeout_s: float = 30.0,
) -> FeedbackSummary:
    """Store labelled rows ``x`` (batch first) with labels ``y`` on the device behind `target`.

    Args:
        target: the agent's inference socket path, or "host:port".
        x: inputs, batch first, as the serving model takes them.
        y: one integer class label per row of `x`.
        input_name: the model input `x` binds to ("" when the model has one input).
        batch_rows: rows per request.
        timeout_s: per call.

    Raises:
        InvalidInputError: x/y do not match (checked here) or the agent refused a batch's content.
        FeedbackRefusedError: federated learning is disabled on the device, or the model changed.
        NoModelError: the agent is unreachable or serves no model.
        InferenceError: any other failure.
    """
    if batch_rows < 1:
        raise InvalidInputError(f"batch_rows must be >= 1, got {batch_rows}")
    if x.ndim < 1 or y.ndim != 1 or len(x) != len(y):
        raise InvalidInputError(f"need one label per row: x has shape {list(x.shape)}, y {list(y.shape)}")
    if len(y) == 0:
        raise InvalidInputError("no rows to send")
    if y.dtype.kind not in "iu":
        raise InvalidInputError(f"labels must be integers, got {y.dtype}")
    address = f"unix:{target}" if isinstance(target, Path) else target
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(address, options=options) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        info: pb.ModelInfoResponse = _call(lambda: stub.ModelInfo(pb.ModelInfoRequest(), timeout=timeout_s))
        x = _as_model_dtype(x, info, input_name)
        accepted, batches, last = 0, 0, pb.FeedbackResponse()
        for start in range(0, len(x), batch_rows):
            stop = min(start + batch_rows, len(x))
            request = pb.FeedbackRequest(
                inputs=[codec.tensor_to_proto(input_name, x[start:stop])],
                labels=y[start:stop].tolist(),
                model_name=info.name,
            )
            try:
                last = _call(functools.partial(stub.Feedback, request, timeout=timeout_s))
            except InferenceError as err:
                stored = f"; the {accepted} rows before were stored" if accepted else ""
                raise type(err)(f"rows {start}..{stop - 1}: {err}{stored}") from err
            accepted += last.accepted
            batches += 1
    return FeedbackSummary(
        rows=len(x),
        batches=batches,
        accepted=accepted,
        stored_total=last.stored_total,
        model_name=last.model_name,
        model_version=last.model_version,
        feature_source=last.feature_source,
        feature_width=last.feature_width,
    )


def _as_model_dtype(x: np.ndarray, info: pb.ModelInfoResponse, input_name: str) -> np.ndarray:
    specs = [codec.spec_from_proto(s) for s in info.inputs]
    spec = next((s for s in specs if s.name == input_name), specs[0] if len(specs) == 1 else None)
    if spec is None or spec.dtype == "unknown":
        return x
    if x.dtype != spec.dtype and x.dtype.kind == "f" and np.dtype(spec.dtype).kind == "f":
        return x.astype(spec.dtype)
    return x  # the agent names the mismatch


def _call(fn: Callable[[], _R]) -> _R:
    try:
        return fn()
    except grpc.RpcError as err:
        code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = err.details() if isinstance(err, grpc.Call) else str(err)
        raise _ERRORS.get(code, InferenceError)(f"{code.name}: {details}") from err

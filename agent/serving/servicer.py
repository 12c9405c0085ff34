"""gRPC servicer of `edgeloop.v1.InferenceService`: decode, call the engine, encode, map errors.

Owns the one mapping from `InferenceError` subclasses to gRPC status codes (INVALID_ARGUMENT for a
request that does not fit the signature, RESOURCE_EXHAUSTED over a limit, UNAVAILABLE with no model,
FAILED_PRECONDITION for feedback the device cannot take, INTERNAL when the backend failed even after
a restart or the sample store could not be written). Does not load models or hold state of its own;
Feedback's rules live in `feedback`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from agent.errors import (
    BackendCrashedError,
    InferenceError,
    InvalidInputError,
    ModelLoadError,
    NoModelError,
    RequestTooLargeError,
    StorageError,
)
from agent.inference.engine import InferenceEngine, Prediction, ServingOptions
from agent.inference.handle import ModelHolder
from agent.inference.model_metrics import ModelMetrics
from agent.serving import codec
from agent.serving.feedback import FeedbackHandler, FeedbackRefusedError, FeedbackSink
from agent.serving.models import ModelManager
from protos.edgeloop.v1 import inference_pb2 as pb
from protos.edgeloop.v1 import inference_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

_STATUS: tuple[tuple[type[InferenceError], grpc.StatusCode], ...] = (
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (FeedbackRefusedError, grpc.StatusCode.FAILED_PRECONDITION),
    (RequestTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NoModelError, grpc.StatusCode.UNAVAILABLE),
    (BackendCrashedError, grpc.StatusCode.INTERNAL),
    (ModelLoadError, grpc.StatusCode.INTERNAL),
)


def status_for(err: InferenceError) -> grpc.StatusCode:
    for kind, code in _STATUS:
        if isinstance(err, kind):
            return code
    return grpc.StatusCode.INTERNAL


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """Thin adapter from gRPC to `InferenceEngine` and `ModelManager`."""

    def __init__(
        self,
        *,
        engine: InferenceEngine,
        holder: ModelHolder,
        models: ModelManager,
        options: ServingOptions,
        stats: Callable[[], dict[str, float]],
        feedback_sink: FeedbackSink | None = None,
        metrics: ModelMetrics | None = None,
    ) -> None:
        self._engine = engine
        self._metrics = metrics if metrics is not None else ModelMetrics()  # live model metrics windows
        self._holder = holder
        self._models = models
        self._options = options
        self._stats = stats
        self._feedback = FeedbackHandler(engine=engine, holder=holder, options=options, sink=feedback_sink)

    async def Predict(self, request: pb.PredictRequest, context: Context) -> pb.PredictResponse:
        try:
            return await self.predict_message(request)
        except InferenceError as err:
            await context.abort(status_for(err), str(err))
            raise  # unreachable: abort raises

    async def PredictStream(
        self,
        request_iterator: AsyncIterator[pb.PredictRequest],
        context: Context,
    ) -> AsyncIterator[pb.PredictResponse]:
        async for request in request_iterator:
            try:
                response = await self.predict_message(request)
            except InferenceError as err:
                await context.abort(status_for(err), str(err))
                return
            yield response

    async def ModelInfo(self, request: pb.ModelInfoRequest, context: Context) -> pb.ModelInfoResponse:
        handle = self._holder.current
        if handle is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no model is loaded")
            raise AssertionError("unreachable")
        sig = handle.runtime.signature
        return pb.ModelInfoResponse(
            name=handle.meta.name,
            version=handle.meta.version,
            slot=handle.meta.slot,
            backend=handle.runtime.backend,
            inputs=[codec.spec_to_proto(s) for s in sig.inputs],
            outputs=[codec.spec_to_proto(s) for s in sig.outputs],
            sha256=handle.meta.sha256,
            max_batch=self._options.max_batch,
            max_request_bytes=self._options.max_request_bytes,
        )

    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        handle = self._holder.current
        return pb.ListModelsResponse(
            slots=list(codec.slots_to_proto(self._models.listing())),
            serving_version=handle.meta.version if handle else "",
            stats=self._stats(),
        )

    async def Feedback(self, request: pb.FeedbackRequest, context: Context) -> pb.FeedbackResponse:
        try:
            return await self.feedback_message(request)
        except InferenceError as err:
            await context.abort(status_for(err), str(err))
            raise  # unreachable: abort raises
        except StorageError as err:
            await context.abort(grpc.StatusCode.INTERNAL, f"sample store: {err}")
            raise

    async def feedback_message(self, request: pb.FeedbackRequest) -> pb.FeedbackResponse:
        """Decode and store labelled rows; raises `InferenceError` or `StorageError`."""
        self._feedback.require_sink()
        handle = self._holder.current
        names = handle.runtime.signature.input_names() if handle is not None else ()
        inputs = codec.inputs_from_proto(request.inputs, names)
        result = await self._feedback.submit(inputs, request.labels, model_name=request.model_name)
        return pb.FeedbackResponse(
            accepted=result.accepted,
            stored_total=result.stored_total,
            model_name=result.meta.name,
            model_version=result.meta.version,
            feature_source=result.feature_source,
            feature_width=result.feature_width,
            request_id=request.request_id,
        )

    async def predict_message(self, request: pb.PredictRequest) -> pb.PredictResponse:
        """Decode, predict, encode; raises `InferenceError` (callers map it to a status)."""
        pairs = ((t.name, t) for t in request.inputs)
        prediction = await self.predict_arrays(
            [(name, tensor) for name, tensor in pairs], use_cache=request.use_cache, decode=True
        )
        return pb.PredictResponse(
            outputs=codec.outputs_to_proto(prediction.outputs),
            model_name=prediction.meta.name,
            model_version=prediction.meta.version,
            cache_hit=prediction.cache_hit,
            request_id=request.request_id,
        )

    async def predict_arrays(
        self, tensors: Sequence[tuple[str, Any]], *, use_cache: bool = False, decode: bool = False
    ) -> Prediction:
        """Bind named tensors to the model's inputs, predict, observe; the path every transport takes.

        `tensors` are numpy arrays (the raw framed plane), or `pb.Tensor` with `decode=True`.

        Raises:
            InferenceError: invalid input, over a limit, no model, or a backend failure.
        """
        handle = self._holder.current
        names = handle.runtime.signature.input_names() if handle is not None else ()
        try:
            if decode:
                tensors = [(name, codec.tensor_from_proto(t)) for name, t in tensors]
            inputs = codec.bind_inputs(tensors, names)
        except InvalidInputError:
            if handle is not None:
                self._engine.stats.record_error(handle.meta.key, "invalid_input")
                self._metrics.error(handle.meta)
            raise
        started = time.perf_counter()
        try:
            prediction = await self._engine.predict(inputs, use_cache=use_cache)
        except InferenceError:
            if handle is not None:
                self._metrics.error(handle.meta)
            raise
        self._metrics.observe(prediction.meta, prediction.outputs, time.perf_counter() - started)
        return prediction

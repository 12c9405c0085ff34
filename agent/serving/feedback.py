"""Labelled feedback for on-device training: check a `Feedback` request, derive features, store them.

What is stored per batch row is the feature vector the federated trainer's softmax head sees:

- the serving model's output named ``features`` when the model has one: the rows are run through the
  model once (through the engine, like Predict, so the run counts in the serving stats) and that
  embedding is kept, so a frozen backbone feeds a trainable head;
- otherwise the input itself, flattened and cast to float32 (the digits head trains on the 64
  pixels in [0, 1]). Such a model must have exactly one input.

A request is refused with `InvalidInputError` (INVALID_ARGUMENT, the message says what is wrong)
when its inputs do not fit the serving model's signature (names, dtype, shape, batch limit), hold
NaN or infinity, or its labels are not one non-negative class index per batch row, below the
number of classes when the model declares it (the fixed last dimension of its first rank-2 output
other than ``features``). Refusals about the device rather than the request are a
`FeedbackRefusedError` (FAILED_PRECONDITION): no sink is wired (federated learning is disabled),
the request names another model than the one serving, or the model offers nothing to store.
A request is stored whole or not at all.

Owns the `FeedbackSink` port (the federated `SampleStore` satisfies it) and `FeedbackHandler`.
Does not speak gRPC (`servicer`), decide when to train (`agent.federated.client`) or keep samples.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.errors import InferenceError, InvalidInputError, NoModelError, RequestTooLargeError
from agent.inference.engine import InferenceEngine, ServingOptions
from agent.inference.handle import ModelHolder, ModelMeta
from agent.inference.signature import Signature, validate_inputs

logger = logging.getLogger(__name__)

FEATURES_OUTPUT = "features"


class FeedbackSink(Protocol):
    """Where accepted labelled rows go (the federated learning sample store)."""

    def add_many(self, x: np.ndarray, y: np.ndarray) -> int:
        """Append rows ``x`` (n, d) float32 with labels ``y`` (n,) int64.

        Returns:
            How many labelled samples the sink holds afterwards (after retention).

        Raises:
            InvalidInputError: the rows do not fit what is stored (e.g. another feature width).
            StorageError: the sink cannot be written.
        """
        ...


class FeedbackRefusedError(InferenceError):
    """This device cannot take feedback now (federated learning off, another model serving)."""


@dataclass(frozen=True)
class FeedbackResult:
    accepted: int
    stored_total: int
    meta: ModelMeta
    feature_source: str  # "features" (model output) or "input" (flattened input)
    feature_width: int


def num_classes(signature: Signature) -> int | None:
    """Classes of the model output labels index into, or None when the signature does not say."""
    for spec in signature.outputs:
        if spec.name == FEATURES_OUTPUT:
            continue
        return spec.shape[-1] if len(spec.shape) == 2 else None
    return None


def validate_feedback(
    signature: Signature,
    inputs: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    max_batch: int,
    max_request_bytes: int,
) -> int:
    """Check one feedback request against the serving model; returns its batch size.

    Raises:
        InvalidInputError: signature mismatch, non-finite values or bad labels.
        RequestTooLargeError: more than `max_request_bytes` of input data.
    """
    size = sum(a.nbytes for a in inputs.values())
    if size > max_request_bytes:
        limit = max_request_bytes
        raise RequestTooLargeError(f"request carries {size} bytes of tensors, the limit is {limit}")
    batch = validate_inputs(signature, inputs, max_batch=max_batch)
    for name, array in inputs.items():
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            flat = array.reshape(batch, -1) if array.ndim else array.reshape(1, 1)
            row = int(np.argwhere(~np.isfinite(flat))[0][0])
            raise InvalidInputError(f"input {name!r} has a non-finite value (NaN or inf) in batch row {row}")
    if labels.shape != (batch,):
        raise InvalidInputError(f"{labels.size} labels given for a batch of {batch} rows: one label per row")
    if batch and int(labels.min()) < 0:
        row = int(np.argmax(labels < 0))
        raise InvalidInputError(f"label {int(labels[row])} in batch row {row} is negative")
    classes = num_classes(signature)
    if classes is not None and batch and int(labels.max()) >= classes:
        row = int(np.argmax(labels >= classes))
        raise InvalidInputError(
            f"label {int(labels[row])} in batch row {row} is out of range: the model has {classes} classes"
            f" (labels 0..{classes - 1})"
        )
    return batch


class FeedbackHandler:
    """Validates feedback against the serving model and hands the rows to the sink."""

    def __init__(
        self,
        *,
        engine: InferenceEngine,
        holder: ModelHolder,
        options: ServingOptions,
        sink: FeedbackSink | None,
    ) -> None:
        self._engine = engine
        self._holder = holder
        self._options = options
        self._sink = sink

    def require_sink(self) -> FeedbackSink:
        """The sink, or `FeedbackRefusedError` when federated learning is disabled (checked first)."""
        if self._sink is None:
            raise FeedbackRefusedError("federated learning is disabled on this device")
        return self._sink

    async def submit(
        self, inputs: Mapping[str, np.ndarray], labels: Sequence[int], *, model_name: str = ""
    ) -> FeedbackResult:
        """Validate, derive the features and store every row, or none.

        Raises:
            FeedbackRefusedError: federated learning is disabled, another model serves, or the
                model has nothing to store.
            NoModelError: nothing is loaded (or the model changed mid-request; retry).
            InvalidInputError: the request does not fit the model or the stored samples.
            RequestTooLargeError: over the request size or batch limit.
            StorageError: the sink failed.
        """
        sink = self.require_sink()
        with self._holder.lease() as handle:
            meta, signature = handle.meta, handle.runtime.signature
        if model_name and model_name != meta.name:
            raise FeedbackRefusedError(
                f"feedback is for model {model_name!r} but this device serves {meta.key}"
            )
        has_features = FEATURES_OUTPUT in {s.name for s in signature.outputs}
        if not has_features and len(signature.inputs) != 1:
            raise FeedbackRefusedError(
                f"model {meta.key} has {len(signature.inputs)} inputs and no {FEATURES_OUTPUT!r} output:"
                " no feature vector to store per sample"
            )
        y = np.asarray(labels, dtype=np.int64)
        batch = validate_feedback(
            signature,
            inputs,
            y,
            max_batch=self._options.max_batch,
            max_request_bytes=self._options.max_request_bytes,
        )
        if has_features:
            x = await self._embed(meta, inputs, batch)
            source = FEATURES_OUTPUT
        else:
            x = np.asarray(inputs[signature.inputs[0].name], dtype=np.float32).reshape(batch, -1)
            source = "input"
        total = await asyncio.to_thread(sink.add_many, x, y)
        logger.debug("feedback stored model=%s rows=%d source=%s total=%d", meta.key, batch, source, total)
        return FeedbackResult(
            accepted=batch, stored_total=total, meta=meta, feature_source=source, feature_width=x.shape[1]
        )

    async def _embed(self, meta: ModelMeta, inputs: Mapping[str, np.ndarray], batch: int) -> np.ndarray:
        prediction = await self._engine.predict(inputs)
        if prediction.meta != meta:
            raise NoModelError(f"the serving model changed from {meta.key} during feedback; retry")
        out = prediction.outputs[FEATURES_OUTPUT]
        if out.ndim < 1 or out.shape[0] != batch:
            raise FeedbackRefusedError(
                f"model {meta.key} output {FEATURES_OUTPUT!r} has shape {list(out.shape)}, not {batch} rows"
            )
        x = np.asarray(out, dtype=np.float32).reshape(batch, -1)
        if not np.isfinite(x).all():
            problem = f"model {meta.key} produced non-finite {FEATURES_OUTPUT!r} for this batch"
            raise InvalidInputError(problem)
        return x

"""The request path: validate, cache, (micro-)batch, run off the event loop, restart a crashed backend.

Owns `ServingOptions` (limits, batching, cache and capture switches) and `InferenceEngine.predict`,
the one coroutine every transport calls. A request leases the current model handle for its whole
life (see `handle`), so swaps never fail requests. When the runtime fails mid-call the backend is
reloaded from the same artifact, the restart is counted in the stats, and the request is retried
once; the process stays up. Models with a non-batched input (a recurrent state, a 0-d scalar: see
`signature`) are never micro-batched: each call runs alone with the caller's own state, because a
state belongs to one caller and joining two callers' batches would mix them. Does not speak gRPC
(`agent.serving`) or manage slots (`service`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from agent.errors import BackendCrashedError, InferenceError, RequestTooLargeError
from agent.inference.batching import MicroBatcher
from agent.inference.cache import PredictionCache, input_key
from agent.inference.capture import SampleCapture
from agent.inference.handle import ModelHandle, ModelHolder, ModelMeta
from agent.inference.runtime import RuntimeLoader
from agent.inference.signature import Signature, validate_inputs
from agent.inference.stats import ServingStats

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class ServingOptions:
    """Limits and opt-in features of the local inference API."""

    max_batch: int = 256  # samples per request
    max_request_bytes: int = 16 * 2**20  # bytes of input tensor data per request
    micro_batch: bool = False
    micro_batch_max: int = 32  # samples per formed batch
    micro_batch_wait_s: float = 0.0  # 0: batch only what is already queued
    cache_entries: int = 0  # 0: prediction cache off
    capture_per_second: float = 0.0  # 0: sample capture off
    capture_capacity: int = 256
    workers: int = 2  # threads running backend calls
    inline_below_s: float = 0.0005  # requests cheaper than this run on the event loop (no thread hop)
    restart_min_interval_s: float = 1.0  # a backend crashing again sooner fails requests without reload


@dataclass(frozen=True)
class Prediction:
    outputs: Arrays
    meta: ModelMeta
    cache_hit: bool = False


class InferenceEngine:
    """Serves predictions from the holder's current model."""

    def __init__(
        self,
        *,
        holder: ModelHolder,
        loader: RuntimeLoader,
        executor: Executor,
        options: ServingOptions,
        stats: ServingStats,
        capture: SampleCapture | None = None,
    ) -> None:
        self._holder = holder
        self._loader = loader
        self._executor = executor
        self._options = options
        self.stats = stats
        self.capture = capture
        self._cache = PredictionCache(options.cache_entries) if options.cache_entries else None
        self._restart_lock = asyncio.Lock()
        self._last_restart = float("-inf")
        self._batcher: MicroBatcher | None = None
        if options.micro_batch:
            self._batcher = MicroBatcher(
                self._run_in_executor,
                max_batch=options.micro_batch_max,
                max_wait_s=options.micro_batch_wait_s,
                max_inflight=options.workers,
            )

    def start(self) -> None:
        if self._batcher is not None:
            self._batcher.start()

    async def stop(self) -> None:
        if self._batcher is not None:
            await self._batcher.stop()

    async def predict(self, inputs: Mapping[str, np.ndarray], *, use_cache: bool = False) -> Prediction:
        """Validate and run one request (one sample or a batch).

        Raises:
            NoModelError: nothing is loaded.
            InvalidInputError: names, dtype, shape or batch do not match the signature.
            RequestTooLargeError: more than `max_request_bytes` of input data.
            BackendCrashedError: the backend failed again after a restart.
            ModelLoadError: the backend could not be restarted.
        """
        started = time.perf_counter()
        arrays = dict(inputs)
        with self._holder.lease() as handle:
            try:
                prediction = await self._predict(handle, arrays, use_cache=use_cache)
            except InferenceError as err:
                self.stats.record_error(handle.meta.key, _error_kind(err))
                raise
            batch = batch_size(handle.runtime.signature, arrays)
        self.stats.record_success(prediction.meta.key, time.perf_counter() - started, batch)
        if self.capture is not None:
            self.capture.offer(prediction.meta.key, arrays, prediction.outputs)
        return prediction

    async def _predict(self, handle: ModelHandle, arrays: Arrays, *, use_cache: bool) -> Prediction:
        size = sum(a.nbytes for a in arrays.values())
        if size > self._options.max_request_bytes:
            limit = self._options.max_request_bytes
            raise RequestTooLargeError(f"request carries {size} bytes of tensors, the limit is {limit}")
        batch = validate_inputs(handle.runtime.signature, arrays, max_batch=self._options.max_batch)
        key = input_key(handle.meta.key, arrays) if (use_cache and self._cache is not None) else None
        if key is not None and self._cache is not None:
            cached = self._cache.get(key)
            self.stats.record_cache(handle.meta.key, hit=cached is not None)
            if cached is not None:
                return Prediction(cached, handle.meta, cache_hit=True)
        try:
            outputs = await self._execute(handle, arrays, batch)
        except BackendCrashedError as err:
            logger.error("backend crashed model=%s error=%s; restarting", handle.meta.key, err)
            await self._restart(handle, err)
            with self._holder.lease() as fresh:
                outputs = await self._run_in_executor(fresh, arrays)
                handle = fresh
        if key is not None and self._cache is not None:
            self._cache.put(key, outputs)
        return Prediction(outputs, handle.meta)

    async def _execute(self, handle: ModelHandle, arrays: Arrays, batch: int) -> Arrays:
        if self._batcher is not None and handle.runtime.signature.dynamic_batch:
            return await self._batcher.submit(handle, arrays, batch)
        if handle.cost_per_sample_s * batch < self._options.inline_below_s:
            return self._timed_run(handle, arrays)  # cheaper than the thread hop it would need
        return await self._run_in_executor(handle, arrays)

    async def _run_in_executor(self, handle: ModelHandle, arrays: Arrays) -> Arrays:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._timed_run, handle, arrays)

    @staticmethod
    def _timed_run(handle: ModelHandle, arrays: Arrays) -> Arrays:
        started = time.perf_counter()
        outputs = handle.runtime.run(arrays)
        handle.record_cost(time.perf_counter() - started, batch_size(handle.runtime.signature, arrays))
        return outputs

    async def _restart(self, crashed: ModelHandle, err: BackendCrashedError) -> None:
        async with self._restart_lock:
            if self._holder.current is not crashed:
                return  # another request already restarted it (or a swap replaced it)
            now = time.monotonic()
            if now - self._last_restart < self._options.restart_min_interval_s:
                raise err  # crash loop (e.g. one input that always crashes it): fail fast, don't reload
            self._last_restart = now
            loop = asyncio.get_running_loop()
            runtime = await loop.run_in_executor(self._executor, self._loader, crashed.meta.artifact)
            self._holder.swap(ModelHandle(runtime, crashed.meta), expected=crashed)
            self.stats.record_restart(crashed.meta.key)
            logger.warning("backend restarted model=%s", crashed.meta.key)


def batch_size(signature: Signature, arrays: Mapping[str, np.ndarray]) -> int:
    """Samples in a validated request: the first axis of its batched inputs (1 when none is)."""
    for spec in signature.inputs:
        array = arrays.get(spec.name)
        if spec.is_batched and array is not None and array.ndim:
            return int(array.shape[0])
    return 1


def _error_kind(err: InferenceError) -> str:
    name = type(err).__name__.removesuffix("Error")
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")

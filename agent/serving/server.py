"""`InferenceService`: the object the daemon builds, starts and stops to serve models on the device.

Owns the wiring of one serving stack (slots -> model manager -> holder -> engine -> grpc.aio server on
a Unix domain socket, optionally loopback TCP, the framed data plane and the sample socket of
in-process apps) and its public surface for the daemon and the OTA
flow: `start`/`stop`, `stats_snapshot` and `model_metrics` (live metric windows per serving
model) for telemetry, `drain_samples` for the drift monitor, `set_feedback_sink` for labelled
samples (Feedback), and `load_candidate`/`promote`/`rollback`/`install` for model updates. Does
not decide *when* to update (that is the OTA state machine) and configures no logging.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

from agent.errors import ConfigError
from agent.inference.capture import Sample, SampleCapture
from agent.inference.engine import InferenceEngine, ServingOptions
from agent.inference.handle import ModelHolder, ModelMeta
from agent.inference.model_metrics import ModelMetrics
from agent.inference.registry import ProfileLoader
from agent.inference.runtime import RuntimeLoader
from agent.inference.stats import ServingStats
from agent.profile import DeviceProfile
from agent.serving.feedback import FeedbackSink
from agent.serving.framed import FramedServer
from agent.serving.models import ModelManager
from agent.serving.sample_intake import SampleIntake
from agent.serving.servicer import InferenceServicer
from agent.slots import LocalSlotFS, Slots
from protos.edgeloop.v1 import inference_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

_MESSAGE_OVERHEAD = 1 << 20  # room for protobuf framing on top of max_request_bytes


class InferenceService:
    """Local inference API for applications on the device (grpc.aio)."""

    def __init__(
        self,
        slots_root: Path,
        profile: DeviceProfile,
        socket_path: Path,
        tcp_port: int | None = None,
        *,
        options: ServingOptions | None = None,
        loader: RuntimeLoader | None = None,
        fast_socket_path: Path | None = None,
        sample_socket_path: Path | None = None,
    ) -> None:
        """Build the stack; nothing runs until `start()`.

        Args:
            slots_root: directory holding ``current/ previous/ candidate/ broken/``.
            profile: the device profile (backend choice, threads).
            socket_path: Unix domain socket the API listens on.
            tcp_port: also listen on 127.0.0.1:<port> (0 picks a free port); None: socket only.
            options: limits, micro-batching, cache and sample capture.
            loader: artifact -> runtime; defaults to the registry bound to `profile`.
            fast_socket_path: also serve Predict as length-prefixed frames here (`framed`), the
                low-latency data plane; None: gRPC only.
            sample_socket_path: receive captured predictions (into the capture ring, when capture
                is on) and live metric windows (into `model_metrics`) from in-process apps
                (`agent.local.LocalModel`) on this datagram socket; None: off.
        """
        self._options = options or ServingOptions(workers=max(1, profile.runtime.threads))
        self._socket_path = socket_path
        self._tcp_port = tcp_port
        self._fast_socket_path = fast_socket_path
        self._framed: FramedServer | None = None
        self._sample_socket_path = sample_socket_path
        self._intake: SampleIntake | None = None
        self._executor = ThreadPoolExecutor(max_workers=self._options.workers, thread_name_prefix="inference")
        # Model loads and slot I/O get their own thread so neither starves the other under load.
        self._admin_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference-admin")
        self._holder = ModelHolder()
        self._consumers: dict[str, deque[Sample]] = {}
        self._stats = ServingStats()
        self.model_metrics = ModelMetrics()  # live metric windows per serving model (the daemon rotates them)
        loader = loader or ProfileLoader(profile)
        self._slots_root = slots_root
        self._loader = loader
        self._capture = (
            SampleCapture(
                capacity=self._options.capture_capacity, per_second=self._options.capture_per_second
            )
            if self._options.capture_per_second > 0
            else None
        )
        self._feedback_sink: FeedbackSink | None = None
        self._models: ModelManager | None = None
        self._engine: InferenceEngine | None = None
        self._server: grpc.aio.Server | None = None
        self.bound_tcp_port: int | None = None

    def set_feedback_sink(self, sink: FeedbackSink | None) -> None:
        """Where Feedback stores labelled rows (the federated sample store); call before `start`.

        Without a sink (federated learning disabled) Feedback answers FAILED_PRECONDITION.
        """
        if self._server is not None:
            raise RuntimeError("set_feedback_sink() must be called before start()")
        self._feedback_sink = sink

    async def start(self) -> ModelMeta | None:
        """Recover the slots, load the current model (if any) and start listening.

        Returns:
            The model now serving, or None (Predict answers UNAVAILABLE until one is installed).

        Raises:
            SlotError: the slots directory is unusable.
            ConfigError: the socket or TCP port cannot be bound.
        """
        self._models = ModelManager(
            slots=Slots(LocalSlotFS(self._slots_root)),
            holder=self._holder,
            loader=self._loader,
            executor=self._admin_executor,
        )
        serving = await self._models.load_current()
        self._engine = InferenceEngine(
            holder=self._holder,
            loader=self._loader,
            executor=self._executor,
            options=self._options,
            stats=self._stats,
            capture=self._capture,
        )
        self._engine.start()
        servicer = InferenceServicer(
            engine=self._engine,
            holder=self._holder,
            models=self._models,
            options=self._options,
            stats=self.stats_snapshot,
            feedback_sink=self._feedback_sink,
            metrics=self.model_metrics,
        )
        self._server = self._build_server(servicer)
        await self._server.start()
        if self._fast_socket_path is not None:
            limit = self._options.max_request_bytes + _MESSAGE_OVERHEAD
            self._framed = FramedServer(servicer, self._fast_socket_path, max_frame_bytes=limit)
            await self._framed.start()
        if self._sample_socket_path is not None:
            self._intake = SampleIntake(
                self._capture, self._sample_socket_path, metrics=self.model_metrics, serving=self.serving
            )
            self._intake.start()
        logger.info(
            "inference API listening socket=%s tcp_port=%s model=%s",
            self._socket_path,
            self.bound_tcp_port,
            serving.key if serving else None,
        )
        return serving

    def _build_server(self, servicer: InferenceServicer) -> grpc.aio.Server:
        limit = self._options.max_request_bytes + _MESSAGE_OVERHEAD
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
            ]
        )
        pb_grpc.add_InferenceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        try:
            self._socket_path.parent.mkdir(parents=True, exist_ok=True)
            self._socket_path.unlink(missing_ok=True)  # a stale socket from a previous run
        except OSError as err:
            raise ConfigError(f"cannot prepare socket path {self._socket_path}: {err}") from err
        _listen(server, f"unix:{self._socket_path}")
        if self._tcp_port is not None:
            self.bound_tcp_port = _listen(server, f"127.0.0.1:{self._tcp_port}")
        return server

    async def stop(self, grace_s: float = 1.0) -> None:
        """Stop accepting requests, let in-flight ones finish (up to `grace_s`), release models."""
        if self._intake is not None:
            self._intake.stop()
        if self._framed is not None:
            await self._framed.stop()
        if self._server is not None:
            await self._server.stop(grace_s)
        if self._engine is not None:
            await self._engine.stop()
        self._holder.clear()
        self._executor.shutdown(wait=True)
        self._admin_executor.shutdown(wait=True)
        if self._socket_path.exists():
            os.unlink(self._socket_path)

    def stats_snapshot(self, *, reset: bool = False) -> dict[str, float]:
        """Flat serving metrics (latency p50/p95/p99 ms, errors, throughput, cache, restarts) per version."""
        return self._stats.snapshot(reset=reset)

    def drain_samples(self, consumer: str = "default") -> list[Sample]:
        """Captured input/output samples this `consumer` has not seen yet (empty when capture is off).

        Several consumers (the drift monitor, the OTA shadow run) each see every sample: a drain
        tees fresh samples into every known consumer's bounded queue, then empties the caller's.
        """
        if self._capture is None:
            return []
        mine = self._consumers.setdefault(consumer, deque(maxlen=self._options.capture_capacity))
        fresh = self._capture.drain()
        for queue in self._consumers.values():
            queue.extend(fresh)
        out = list(mine)
        mine.clear()
        return out

    def serving(self) -> ModelMeta | None:
        handle = self._holder.current
        return handle.meta if handle is not None else None

    async def load_candidate(
        self, artifact: Path, *, name: str, version: str, warmup: Mapping[str, np.ndarray] | None = None
    ) -> ModelMeta:
        """Stage, load and warm up a candidate; see `ModelManager.load_candidate` (ModelLoadError)."""
        return await self._manager().load_candidate(artifact, name=name, version=version, warmup=warmup)

    async def promote(self) -> ModelMeta:
        """Swap the loaded candidate in without failing requests; see `ModelManager.promote`."""
        return await self._manager().promote()

    async def rollback(self) -> ModelMeta:
        """Serve the previous model again; see `ModelManager.rollback`."""
        return await self._manager().rollback()

    async def install(
        self, artifact: Path, *, name: str, version: str, warmup: Mapping[str, np.ndarray] | None = None
    ) -> ModelMeta:
        """`load_candidate` then `promote` (no shadow/gates: the OTA issue inserts those in between)."""
        await self.load_candidate(artifact, name=name, version=version, warmup=warmup)
        return await self.promote()

    def _manager(self) -> ModelManager:
        if self._models is None:
            raise RuntimeError("InferenceService.start() has not been called")
        return self._models


def _listen(server: grpc.aio.Server, address: str) -> int:
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as err:  # grpcio raises RuntimeError("Failed to bind ...")
        raise ConfigError(f"cannot listen on {address}: {err}") from err
    if not port:
        raise ConfigError(f"cannot listen on {address}")
    return port

"""`LocalModel`: run the agent's current model inside an app's own process, following its updates.

Owns the app-side request path: lease the current handle (`ModelHolder`, the agent's own
reference-counted swap, so no call fails across a swap), bind and validate inputs (the agent's
`validate_inputs`, remembered per model for shapes already seen), enforce the agent's limits,
`runtime.run`, restart a crashed backend once, count the call in the app's live model metrics
(predictions, errors, confidence, latency per model version: `MetricsFlusher` hands each window
to the agent, whose reported metrics the rollout gates judge), offer the prediction to the sample
side channel, and answer with the model version that computed it. Models are loaded with the
agent's loader and device profile (same backends, execution providers and session options) by
`SlotFollower`, which polls the slot pointer, verifies every artifact against its slot record and
refuses tampered files. Does not download, stage, switch or roll back anything: the agent owns the
slots.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from agent.errors import BackendCrashedError, RequestTooLargeError
from agent.inference.handle import ModelHandle, ModelHolder, ModelMeta
from agent.inference.registry import ProfileLoader
from agent.inference.runtime import RuntimeLoader
from agent.inference.signature import Signature, validate_inputs
from agent.local.follow import Refusal, SlotFollower
from agent.local.metrics import MetricsFlusher
from agent.local.samples import SampleSender
from agent.profile import DeviceProfile, load_profile

logger = logging.getLogger(__name__)

_SHAPES_PER_MODEL = 64  # validated (dtype, shape) keys remembered per model


@dataclass(frozen=True)
class LocalPrediction:
    """One answer and the model version that computed all of it."""

    outputs: dict[str, np.ndarray]
    model_name: str
    model_version: str


class _Known:
    """Per-handle facts cached on the hot path: input names and input layouts already validated."""

    __slots__ = ("handle", "names", "ok")

    def __init__(self, handle: ModelHandle) -> None:
        self.handle = handle
        self.names = handle.runtime.signature.input_names()
        self.ok: set[tuple[Any, ...]] = set()


class LocalModel:
    """``LocalModel(slots_root).predict(x) -> y`` with the agent's committed model, in this process."""

    def __init__(
        self,
        slots_root: Path,
        *,
        profile: DeviceProfile | str = "generic-x86",
        sample_socket: Path | None = None,
        samples_per_second: float = 20.0,
        metrics_interval_s: float = 1.0,
        poll_interval_s: float = 0.1,
        max_batch: int = 256,
        max_request_bytes: int = 16 * 2**20,
        max_concurrent: int | None = None,
        loader: RuntimeLoader | None = None,
    ) -> None:
        """Load the current model (if any) and start following the agent's slots.

        Args:
            slots_root: the agent's slots directory (``inference.slots_root``; readable by the app).
            profile: the agent's device profile (or its name): backend, providers, threads.
            sample_socket: the agent's sample socket (None: send no samples to the agent).
            samples_per_second: how many predictions per second may be offered to the agent.
            metrics_interval_s: how often the app's live model metrics window is sent to the agent
                on `sample_socket` (0: not counted, not sent).
            poll_interval_s: how often the slot pointer is checked (a switch is seen within it).
            max_batch: samples per call (the agent's limit).
            max_request_bytes: bytes of input per call (the agent's limit).
            max_concurrent: at most this many backend calls at once (e.g. the profile's thread
                count, as the agent's worker pool does); None: every calling thread runs at once.
            loader: artifact -> runtime; defaults to the agent's registry bound to `profile`.

        Raises:
            IntegrityError: the current model's bytes do not match its slot record (refused).
            SlotError: the current model does not load.
            ConfigError: unknown profile.
        """
        if isinstance(profile, str):
            profile = load_profile(profile)
        self._holder = ModelHolder()
        self._known: _Known | None = None
        self._max_batch = max_batch
        self._max_bytes = max_request_bytes
        self._loader = loader or ProfileLoader(profile)
        self._gate = threading.BoundedSemaphore(max_concurrent) if max_concurrent else None
        self._restart_lock = threading.Lock()
        self._last_restart = float("-inf")
        self._follower = SlotFollower(slots_root, loader=self._loader, holder=self._holder)
        self.calls = 0
        self.errors = 0
        self._follower.check()
        self._sender = (
            SampleSender(sample_socket, per_second=samples_per_second)
            if sample_socket is not None and samples_per_second > 0
            else None
        )
        self._flusher = (
            MetricsFlusher(sample_socket, interval_s=metrics_interval_s)
            if sample_socket is not None and metrics_interval_s > 0
            else None
        )
        self._follower.run(poll_interval_s)

    @classmethod
    def for_agent(cls, config_path: Path | None = None, **overrides: Any) -> LocalModel:
        """Build from the agent's own config file (slots, profile, limits, sample socket).

        Raises:
            ConfigError: the config is invalid (plus what `__init__` raises).
        """
        from agent.config import load

        config = load(config_path)
        inf = config.inference
        kwargs: dict[str, Any] = {
            "profile": config.device.profile,
            "sample_socket": config.inference_socket.with_suffix(".samples"),
            "samples_per_second": inf.capture_per_second,
            "max_request_bytes": inf.max_request_bytes,
        }
        kwargs.update(overrides)
        return cls(config.slots_root, **kwargs)

    def predict(self, x: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """Run one sample or a batch; returns the first output.

        Raises:
            InvalidInputError: the input does not match the model's signature (message names it).
            RequestTooLargeError: over the agent's size or batch limit.
            NoModelError: no verified model is available yet.
            BackendCrashedError: the backend failed again after a restart.
        """
        return next(iter(self.predict_full(x).outputs.values()))

    def predict_all(self, x: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Like `predict` but returns every output by name."""
        return self.predict_full(x).outputs

    def predict_full(self, x: np.ndarray | Mapping[str, np.ndarray]) -> LocalPrediction:
        """Like `predict_all`, plus the name and version of the model that answered."""
        flusher = self._flusher
        started = time.perf_counter()
        with self._holder.lease() as handle:
            try:
                inputs = self._check(handle, x)
                try:
                    if self._gate is None:
                        outputs = handle.runtime.run(inputs)
                    else:
                        with self._gate:
                            outputs = handle.runtime.run(inputs)
                except BackendCrashedError:
                    outputs = self._restart_and_run(handle, inputs)
            except Exception:
                self.errors += 1
                if flusher is not None:
                    flusher.metrics.error(handle.meta)
                raise
            meta = handle.meta
        self.calls += 1
        if flusher is not None:
            flusher.observe(meta, outputs, time.perf_counter() - started)
        if self._sender is not None:
            self._sender.offer(meta.key, inputs, outputs)
        return LocalPrediction(outputs, meta.name, meta.version)

    @property
    def serving(self) -> ModelMeta | None:
        handle = self._holder.current
        return handle.meta if handle is not None else None

    def signature(self) -> Signature | None:
        handle = self._holder.current
        return handle.runtime.signature if handle is not None else None

    @property
    def refusals(self) -> list[Refusal]:
        """Models the app refused to load (tampered or unloadable), oldest first (last 32)."""
        return list(self._follower.refusals)

    def refresh(self) -> ModelMeta | None:
        """Check the slots now instead of waiting for the next poll; returns a newly loaded model.

        Raises:
            IntegrityError: the current model's bytes do not match its slot record (refused).
            SlotError: the current model does not load.
        """
        return self._follower.check()

    def stats(self) -> dict[str, int]:
        sender, flusher = self._sender, self._flusher
        return {
            "calls": self.calls,
            "errors": self.errors,
            "swaps": self._follower.swaps,
            "refusals": len(self._follower.refusals),
            "samples_sent": sender.sent if sender else 0,
            "samples_dropped": sender.dropped if sender else 0,
            "metrics_windows_sent": flusher.sent if flusher else 0,
            "metrics_windows_dropped": flusher.dropped if flusher else 0,
        }

    def close(self) -> None:
        self._follower.stop()
        self._holder.clear()
        if self._flusher is not None:
            self._flusher.close()  # the last window goes to the agent
        if self._sender is not None:
            self._sender.close()

    def __enter__(self) -> LocalModel:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check(self, handle: ModelHandle, x: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        known = self._known
        if known is None or known.handle is not handle:
            known = self._known = _Known(handle)
        if isinstance(x, np.ndarray):
            if len(known.names) != 1:
                validate_inputs(handle.runtime.signature, {"": x})  # raises, naming the signature
            inputs = {known.names[0]: x}
            key: tuple[Any, ...] = (x.dtype, x.shape)
        else:
            inputs = dict(x)
            key = tuple((name, a.dtype, a.shape) for name, a in inputs.items())
        if key in known.ok:
            return inputs
        size = sum(a.nbytes for a in inputs.values())
        if size > self._max_bytes:
            raise RequestTooLargeError(
                f"request carries {size} bytes of tensors, the limit is {self._max_bytes}"
            )
        validate_inputs(handle.runtime.signature, inputs, max_batch=self._max_batch)
        if len(known.ok) >= _SHAPES_PER_MODEL:
            known.ok.clear()
        known.ok.add(key)
        return inputs

    def _restart_and_run(self, crashed: ModelHandle, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Reload the crashed backend once (not again within a second) and retry the call."""
        with self._restart_lock:
            now = time.monotonic()
            if self._holder.current is crashed:
                if now - self._last_restart < 1.0:
                    raise BackendCrashedError(f"{crashed.meta.key} crashed again within a second")
                self._last_restart = now
                self._holder.swap(self._follower.reload(crashed.meta), expected=crashed)
                logger.warning("backend restarted in the app model=%s", crashed.meta.key)
        with self._holder.lease() as fresh:
            return fresh.runtime.run(inputs)

"""Emits the live model metric windows into the telemetry outbox (issue 12).

Owns `ModelMetricsReporter.emit()`: close the current window of `ModelMetrics`, add to each model's
counts where it came from and how it was judged (deployment id, the drift monitor's latest score,
the shadow agreement measured before its switch: a `Provenance` from the injected lookup), encode
one `model_metrics` record per model that served or failed in the window, and append it to the
outbox (store-and-forward, exactly-once by seq). Time comes from an injected clock; the daemon
decides how often to call it (`[metrics] window_s`). Does not accumulate (model_metrics.py) or
encode (model_metrics_codec.py) itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from agent.inference.model_metrics import ModelId, ModelMetrics
from agent.inference.model_metrics_codec import KIND, Provenance, encode_window

logger = logging.getLogger(__name__)


class Outbox(Protocol):
    def append(
        self, *, timestamp_ms: int, kind: str, metrics: dict[str, float], payload: bytes = b""
    ) -> int: ...


class Clock(Protocol):
    def time_ms(self) -> int: ...


class ModelMetricsReporter:
    def __init__(
        self,
        metrics: ModelMetrics,
        outbox: Outbox,
        *,
        clock: Clock,
        provenance: Callable[[ModelId], Provenance] = lambda _model: Provenance(),
    ) -> None:
        self._metrics = metrics
        self._outbox = outbox
        self._clock = clock
        self._provenance = provenance
        self._window_start_ms = clock.time_ms()
        self.scaled_windows = 0  # windows whose class counts were scaled down to fit 2 KB

    def emit(self) -> int:
        """Close the window and append its records; returns how many were appended.

        Raises:
            StorageError: the outbox could not store a record (the window's counts are lost).
        """
        now = self._clock.time_ms()
        start, self._window_start_ms = self._window_start_ms, now
        windows = self._metrics.rotate()
        for window in windows:
            try:
                provenance = self._provenance(window.model)
            except Exception:  # a lookup bug must not cost the window's counts
                logger.exception("model metrics provenance failed model=%s", window.model.name)
                provenance = Provenance()
            encoded = encode_window(
                window, window_start_ms=start, window_s=max(0.0, now - start) / 1e3, provenance=provenance
            )
            self.scaled_windows += encoded.class_counts_scaled > 0
            self._outbox.append(
                timestamp_ms=now,
                kind=KIND,
                metrics={
                    "predictions": float(window.predictions),
                    "errors": float(window.errors),
                    "class_counts_scaled": float(encoded.class_counts_scaled),
                    "inprocess_predictions": float(window.inprocess_predictions),  # of which apps' own
                    "inprocess_errors": float(window.inprocess_errors),
                },
                payload=encoded.payload,
            )
        return len(windows)

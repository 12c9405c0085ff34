"""Live model metrics per serving model and window: what the fleet judges a rollout on (issue 12).

Owns `ModelMetrics`, a thread-safe registry of bounded per-model window accumulators fed from the
request path (`observe` after a successful prediction, `error` after a failed request), and
`rotate`, which closes the window and hands back one `ModelWindow` per model that served (or
failed) in it. Per request it keeps counts only: predictions (batch rows), errors, a 10-bin
histogram of the top-1 probability with its sum and sum of squares, predicted top-1 class counts
(at most `MAX_CLASSES`; higher class indices are counted in the last bin) and the request latency
(the log-bucketed `LatencyHistogram` of stats.py, plus sum and sum of squares). Top-1 probability
is the softmax of the first output when it is a float (batch, k>=2) tensor, unless its rows
already are probabilities (non-negative, summing to 1 +/- 1e-3); rows with a non-finite value
count as predictions but stay out of the histogram and class counts; other outputs give
predictions, errors and latency only.

Does not read a clock, encode protobuf (model_metrics_codec.py) or send anything (the daemon
does, through the outbox); the drift score and the shadow agreement of a switch are added by the
daemon when it emits a window.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.inference.stats import LatencyHistogram

CONFIDENCE_BINS = 10
MAX_CLASSES = 1000
MAX_MODELS = 8
"""Models tracked per window (a swap makes two); further ones are counted in `dropped_models`."""
_PROBABILITY_TOLERANCE = 1e-3
_SCALAR_VALUES = 128  # outputs up to this many values are read in plain Python (cheaper than numpy calls)


class ServedModel(Protocol):
    """What `observe`/`error` read of a model (agent.inference.handle.ModelMeta is one)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def sha256(self) -> str: ...


@dataclass(frozen=True)
class ModelId:
    """Which model a window is about (the serving artifact's identity)."""

    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class ModelWindow:
    """One model's counts over one window, as `rotate` hands them out."""

    model: ModelId
    predictions: int
    errors: int
    confidence_hist: tuple[int, ...]  # empty when the model has no classifier output
    class_counts: tuple[int, ...]
    confidence_sum: float
    confidence_sum_sq: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_sum_ms: float
    latency_sum_sq_ms: float
    latency_count: int


class _Window:
    __slots__ = (
        "classes", "classified", "conf_sq", "conf_sum", "errors", "hist", "lat_sq", "lat_sum",
        "latency", "predictions",
    )  # fmt: skip

    def __init__(self) -> None:
        self.predictions = 0
        self.errors = 0
        self.classified = False
        self.hist = [0] * CONFIDENCE_BINS
        self.classes: np.ndarray | None = None  # int64 counts, allocated on the first classifier output
        self.conf_sum = 0.0
        self.conf_sq = 0.0
        self.latency = LatencyHistogram()
        self.lat_sum = 0.0
        self.lat_sq = 0.0

    def add_outputs(self, outputs: Mapping[str, np.ndarray]) -> None:
        first = next(iter(outputs.values()), None)
        if first is None:
            return
        if first.ndim != 2 or first.shape[1] < 2 or first.dtype.kind != "f":
            self.predictions += int(first.shape[0]) if first.ndim else 1
            return
        rows, k = first.shape
        self.predictions += rows
        if rows == 0:
            return
        if self.classes is None or self.classes.shape[0] < min(k, MAX_CLASSES):
            grown = np.zeros(min(k, MAX_CLASSES), dtype=np.int64)
            if self.classes is not None:
                grown[: self.classes.shape[0]] = self.classes
            self.classes = grown
        if rows * k <= _SCALAR_VALUES:
            self._add_rows(first.tolist())
        else:
            self._add_batch(first)

    def _add_rows(self, rows: list[list[float]]) -> None:
        """Small outputs in plain Python: a handful of numpy calls would cost more than the math."""
        assert self.classes is not None
        classes, last, hist = self.classes, self.classes.shape[0] - 1, self.hist
        for row in rows:
            top = max(row)
            if not _finite(top):
                continue
            low, total = min(row), sum(row)
            if low >= 0 and abs(total - 1.0) <= _PROBABILITY_TOLERANCE:
                p = min(top, 1.0)
            else:
                p = 1.0 / sum([math.exp(v - top) for v in row])
                if not _finite(p):
                    continue
            c = row.index(top)
            b = int(p * CONFIDENCE_BINS)
            hist[b if b < CONFIDENCE_BINS else CONFIDENCE_BINS - 1] += 1
            classes[c if c < last else last] += 1
            self.conf_sum += p
            self.conf_sq += p * p
            self.classified = True

    def _add_batch(self, first: np.ndarray) -> None:
        assert self.classes is not None
        top, cls = top1(first)
        if not np.isfinite(top).all():
            keep = np.isfinite(top)
            top, cls = top[keep], cls[keep]
            if top.shape[0] == 0:
                return
        self.classified = True
        classes = self.classes
        bins = (top * CONFIDENCE_BINS).astype(np.intp)
        np.minimum(bins, CONFIDENCE_BINS - 1, out=bins)
        for i, n in enumerate(np.bincount(bins, minlength=CONFIDENCE_BINS).tolist()):
            self.hist[i] += n
        classes += np.bincount(np.minimum(cls, classes.shape[0] - 1), minlength=classes.shape[0])
        self.conf_sum += float(top.sum())
        self.conf_sq += float(np.dot(top, top))

    def add_latency(self, seconds: float) -> None:
        self.latency.record(seconds)
        ms = seconds * 1e3
        self.lat_sum += ms
        self.lat_sq += ms * ms

    def result(self, model: ModelId) -> ModelWindow:
        classified = self.classified and self.classes is not None
        counts = self.classes.tolist() if classified and self.classes is not None else []
        while counts and counts[-1] == 0:  # trailing classes never predicted cost bytes, say nothing
            counts.pop()
        return ModelWindow(
            model=model,
            predictions=self.predictions,
            errors=self.errors,
            confidence_hist=tuple(self.hist) if classified else (),
            class_counts=tuple(counts),
            confidence_sum=self.conf_sum,
            confidence_sum_sq=self.conf_sq,
            latency_p50_ms=self.latency.quantile(0.50) * 1e3,
            latency_p95_ms=self.latency.quantile(0.95) * 1e3,
            latency_sum_ms=self.lat_sum,
            latency_sum_sq_ms=self.lat_sq,
            latency_count=self.latency.total,
        )


def top1(logits_or_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 probability (float64, in [0, 1]) and top-1 class of each row of a (batch, k) output.

    Row by row: softmax unless the row already is a probability vector (non-negative, sum 1 +/-
    1e-3). The softmax top-1 probability is 1 / sum(exp(x - max)), so no probability vector is
    materialised. A row with a non-finite value gives a non-finite probability (the caller drops it).
    """
    x = logits_or_probs
    cls = x.argmax(axis=1)
    mx = x.max(axis=1).astype(np.float64)
    is_prob = (x.min(axis=1) >= 0) & (np.abs(x.sum(axis=1, dtype=np.float64) - 1.0) <= _PROBABILITY_TOLERANCE)
    if is_prob.all():
        return np.minimum(mx, 1.0), cls
    if np.isfinite(mx).all():  # (np.errstate costs more than the arithmetic: only when needed)
        soft = 1.0 / np.exp(x - mx[:, None].astype(x.dtype)).sum(axis=1, dtype=np.float64)
    else:
        with np.errstate(invalid="ignore"):  # inf - inf in a row that is dropped anyway
            soft = 1.0 / np.exp(x - mx[:, None].astype(x.dtype)).sum(axis=1, dtype=np.float64)
    if not is_prob.any():
        return soft, cls
    return np.where(is_prob, np.minimum(mx, 1.0), soft), cls


def _finite(v: float) -> bool:
    return v - v == 0.0  # False for nan and +/-inf


class ModelMetrics:
    """Window accumulators keyed by model, safe to feed from any thread."""

    def __init__(self, max_models: int = MAX_MODELS) -> None:
        self._lock = threading.Lock()
        self._max_models = max_models
        self._windows: dict[ModelId, _Window] = {}
        self._last: tuple[object, ModelId, _Window] | None = None  # (meta, id, window) of the last call
        self.dropped_models = 0  # observations of models beyond `max_models` in a window (lost)
        self.failures = 0  # outputs the accumulator could not read (counted, never raised)

    def _window(self, meta: ServedModel) -> _Window | None:
        last = self._last
        if last is not None and last[0] is meta:
            return last[2]
        model = ModelId(meta.name, meta.version, meta.sha256)
        window = self._windows.get(model)
        if window is None:
            if len(self._windows) >= self._max_models:
                self.dropped_models += 1
                return None
            window = self._windows[model] = _Window()
        self._last = (meta, model, window)
        return window

    def observe(self, meta: ServedModel, outputs: Mapping[str, np.ndarray], latency_s: float) -> None:
        """One successful request: its outputs (batch rows) and its latency in seconds."""
        with self._lock:
            window = self._window(meta)
            if window is None:
                return
            window.add_latency(latency_s)
            try:
                window.add_outputs(outputs)
            except (ValueError, TypeError, IndexError, AttributeError):  # an odd output never fails a request
                self.failures += 1

    def error(self, meta: ServedModel) -> None:
        """One failed request attributed to the model that was serving it."""
        with self._lock:
            window = self._window(meta)
            if window is not None:
                window.errors += 1

    def rotate(self) -> list[ModelWindow]:
        """Close the window: one `ModelWindow` per model that served or failed in it; start afresh."""
        with self._lock:
            windows, self._windows, self._last = self._windows, {}, None
        return [
            w.result(model)
            for model, w in sorted(windows.items(), key=lambda kv: (kv[0].name, kv[0].version, kv[0].sha256))
            if w.predictions or w.errors
        ]

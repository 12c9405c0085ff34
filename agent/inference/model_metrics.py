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

In-process apps (`agent.local.LocalModel`) keep their own `ModelMetrics` and hand their windows
over as `WindowCounts` (`rotate_counts`); the agent adds them to its window for the same model
with `merge`, checked first (`check_counts`: a malformed or oversize window is refused whole), and
each window says how many of its predictions and errors came that way (`inprocess_*`).

Does not read a clock, encode protobuf (model_metrics_codec.py) or send anything (the daemon
does, through the outbox); the drift score and the shadow agreement of a switch are added by the
daemon when it emits a window.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.inference.stats import LatencyHistogram
from agent.inference.window_counts import (
    CONFIDENCE_BINS,
    MAX_CLASSES,
    MAX_MERGED_COUNT,
    WindowCounts,
    check_counts,
    is_finite,
)

__all__ = [
    "CONFIDENCE_BINS",
    "MAX_CLASSES",
    "MAX_MERGED_COUNT",
    "MAX_MODELS",
    "ModelId",
    "ModelMetrics",
    "ModelWindow",
    "ServedModel",
    "WindowCounts",
    "check_counts",
    "top1",
]

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
    inprocess_predictions: int = 0  # of `predictions`, how many in-process apps reported (`merge`)
    inprocess_errors: int = 0


class _Window:
    __slots__ = (
        "classes", "classified", "conf_sq", "conf_sum", "errors", "hist", "inproc_errors",
        "inproc_predictions", "lat_sq", "lat_sum", "latency", "predictions",
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
        self.inproc_predictions = 0
        self.inproc_errors = 0

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
            if not is_finite(top):
                continue
            low, total = min(row), sum(row)
            if low >= 0 and abs(total - 1.0) <= _PROBABILITY_TOLERANCE:
                p = min(top, 1.0)
            else:
                p = 1.0 / sum([math.exp(v - top) for v in row])
                if not is_finite(p):
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

    def add_latencies(self, seconds: Sequence[float]) -> None:
        """`add_latency` of each (numpy: bisect_left is searchsorted 'left')."""
        s = np.asarray(seconds, dtype=np.float64)
        self.latency.record_many(s)
        ms = s * 1e3
        self.lat_sum += float(ms.sum())
        self.lat_sq += float(np.dot(ms, ms))

    def add_counts(self, counts: WindowCounts) -> None:
        """Add a window checked by `check_counts` (an in-process app's)."""
        self.predictions += counts.predictions
        self.errors += counts.errors
        self.inproc_predictions += counts.predictions
        self.inproc_errors += counts.errors
        if counts.confidence_hist:
            self.classified = True
            self.hist = [a + b for a, b in zip(self.hist, counts.confidence_hist, strict=True)]
            n = len(counts.class_counts)
            if self.classes is None or self.classes.shape[0] < n:
                grown = np.zeros(n, dtype=np.int64)
                if self.classes is not None:
                    grown[: self.classes.shape[0]] = self.classes
                self.classes = grown
            self.classes[:n] += np.asarray(counts.class_counts, dtype=np.int64)
            self.conf_sum += counts.confidence_sum
            self.conf_sq += counts.confidence_sum_sq
        self.latency.add_buckets(counts.latency_buckets)
        self.lat_sum += counts.latency_sum_ms
        self.lat_sq += counts.latency_sum_sq_ms

    def counts(self) -> WindowCounts:
        classified = self.classified and self.classes is not None
        return WindowCounts(
            predictions=self.predictions,
            errors=self.errors,
            confidence_hist=tuple(self.hist) if classified else (),
            class_counts=tuple(self._class_counts()),
            confidence_sum=self.conf_sum,
            confidence_sum_sq=self.conf_sq,
            latency_buckets=tuple((i, n) for i, n in enumerate(self.latency.counts) if n),
            latency_sum_ms=self.lat_sum,
            latency_sum_sq_ms=self.lat_sq,
        )

    def _class_counts(self) -> list[int]:
        classified = self.classified and self.classes is not None
        counts = self.classes.tolist() if classified and self.classes is not None else []
        while counts and counts[-1] == 0:  # trailing classes never predicted cost bytes, say nothing
            counts.pop()
        return counts

    def result(self, model: ModelId) -> ModelWindow:
        classified = self.classified and self.classes is not None
        counts = self._class_counts()
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
            inprocess_predictions=self.inproc_predictions,
            inprocess_errors=self.inproc_errors,
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
        window = self._window_of(model)
        if window is not None:
            self._last = (meta, model, window)
        return window

    def _window_of(self, model: ModelId) -> _Window | None:
        """The model's window, opened if there is room (else counted in `dropped_models`)."""
        window = self._windows.get(model)
        if window is None:
            if len(self._windows) >= self._max_models:
                self.dropped_models += 1
                return None
            window = self._windows[model] = _Window()
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

    def observe_many(
        self, meta: ServedModel, firsts: Sequence[np.ndarray], latencies_s: Sequence[float]
    ) -> None:
        """Successful requests of one model at once, by their first outputs and latencies: the
        counts of one `observe` each, with numpy doing the work once (an in-process app's calls)."""
        if not firsts:
            return
        with self._lock:
            window = self._window(meta)
            if window is None:
                return
            window.add_latencies(latencies_s)
            try:
                try:  # rows stacked give the same counts as row blocks (predictions: leading dims)
                    stacked = np.concatenate(firsts)
                except ValueError:  # scalars, or ranks or widths that differ
                    stacked = None
                if stacked is not None and stacked.dtype == firsts[0].dtype:
                    window.add_outputs({"": stacked})
                else:
                    for a in firsts:
                        window.add_outputs({"": a})
            except (ValueError, TypeError, IndexError, AttributeError):
                self.failures += 1

    def error(self, meta: ServedModel) -> None:
        """One failed request attributed to the model that was serving it."""
        with self._lock:
            window = self._window(meta)
            if window is not None:
                window.errors += 1

    def merge(self, model: ModelId, counts: WindowCounts) -> bool:
        """Add an in-process app's window to this window's counts of `model`.

        Returns:
            False when `max_models` other models already have a window (counted in `dropped_models`).

        Raises:
            ValueError: `counts` fails `check_counts` (nothing is added).
        """
        check_counts(counts)
        with self._lock:
            window = self._window_of(model)
            if window is None:
                return False
            window.add_counts(counts)
        return True

    def rotate(self) -> list[ModelWindow]:
        """Close the window: one `ModelWindow` per model that served or failed in it; start afresh."""
        return [w.result(model) for model, w in self._take()]

    def rotate_counts(self) -> list[tuple[ModelId, WindowCounts]]:
        """Like `rotate`, but the raw counts (what an in-process app sends for `merge`)."""
        return [(model, w.counts()) for model, w in self._take()]

    def _take(self) -> list[tuple[ModelId, _Window]]:
        with self._lock:
            windows, self._windows, self._last = self._windows, {}, None
        return [
            (model, w)
            for model, w in sorted(windows.items(), key=lambda kv: (kv[0].name, kv[0].version, kv[0].sha256))
            if w.predictions or w.errors
        ]

"""Detectors under test, one interface: fit on the reference, stream rows, return alarm positions.

Anchors at their library defaults: river ADWIN / KSWIN / PageHinkley (one per feature, alarm if any
feature alarms, raw values), a windowed two-sample KS with Bonferroni (alibi-detect KSDrift's rule on
a sliding window: W=500, tested every 50, p < 0.05/d), PSI with 10 reference-decile bins at 0.10 and
0.25 (same windows). Ours: agent.drift.DriftMonitor fed 25-row micro-batches ("edgeloop"; and
"edgeloop-seasonal" on streams with timestamps: the reference models the daily cycle with 24
hourly bins and every row is fed with its timestamp); an alarm is an episode
report in state "open": the opening, or the update sent when a channel new to the open episode crosses
(at most one per channel), so an earlier episode cannot hide a new change. Windowed anchors clear
their window after an alarm (W-sample refractory period).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable

import numpy as np
from scipy import stats

from agent.drift.monitor import DriftMonitor
from agent.drift.reference import build_reference
from agent.drift.seasonal import Seasonality

Result = tuple[list[int], float, int, float, int]
"""Alarm positions, CPU s, state bytes (incl. reference copy), setup CPU s, mutable state bytes."""
Times = tuple[np.ndarray, np.ndarray] | None  # (reference, stream) timestamps in seconds
W, EVERY = 500, 50


Detector = Callable[[np.ndarray, np.ndarray, int, Times], Result]


def _river(factory: Callable[[], object]) -> Detector:
    def run(ref: np.ndarray, x: np.ndarray, seed: int, times: Times = None) -> Result:
        dets = [_with_seed(factory, seed) for _ in range(x.shape[1])]
        alarms: list[int] = []
        t = time.process_time()
        for i, row in enumerate(x.tolist()):
            hit = False
            for det, v in zip(dets, row, strict=True):
                det.update(v)  # type: ignore[attr-defined]
                hit |= bool(det.drift_detected)  # type: ignore[attr-defined]
            if hit:
                alarms.append(i)
        size = len(pickle.dumps(dets))
        return alarms, time.process_time() - t, size, 0.0, size

    return run


def _with_seed(factory: Callable[[], object], seed: int) -> object:
    try:
        return factory(seed=seed)  # type: ignore[call-arg]
    except TypeError:
        return factory()


def _windowed(
    test: Callable[[np.ndarray, np.ndarray], bool],
) -> Detector:
    def run(ref: np.ndarray, x: np.ndarray, seed: int, times: Times = None) -> Result:
        alarms: list[int] = []
        start = 0
        t = time.process_time()
        for end in range(EVERY, x.shape[0] + 1, EVERY):
            if end - start < W:
                continue
            if test(ref, x[end - W : end]):
                alarms.append(end - 1)
                start = end
        size = (W + ref.shape[0]) * ref.shape[1] * 8
        return alarms, time.process_time() - t, size, 0.0, W * ref.shape[1] * 8

    return run


def ks_bonferroni(ref: np.ndarray, win: np.ndarray) -> bool:
    d = ref.shape[1]
    p = [stats.ks_2samp(ref[:, j], win[:, j], method="asymp").pvalue for j in range(d)]
    return min(p) < 0.05 / d


def _psi(threshold: float) -> Callable[[np.ndarray, np.ndarray], bool]:
    def test(ref: np.ndarray, win: np.ndarray) -> bool:
        for j in range(ref.shape[1]):
            edges = np.quantile(ref[:, j], np.linspace(0.1, 0.9, 9))
            r = np.bincount(np.searchsorted(edges, ref[:, j], side="right"), minlength=10) / ref.shape[0]
            c = np.bincount(np.searchsorted(edges, win[:, j], side="right"), minlength=10) / win.shape[0]
            r, c = np.maximum(r, 1e-4), np.maximum(c, 1e-4)
            if float(((c - r) * np.log(c / r)).sum()) > threshold:
                return True
        return False

    return test


def profile_nbytes(monitor: DriftMonitor) -> int:
    """Bytes of the reference arrays the monitor keeps in memory (knots, moments, precision, ...)."""
    p = monitor.profile
    arrays = [p.inputs.score_mean, p.inputs.score_std, p.inputs.precision, p.inputs.max_atom, p.deciles]
    arrays += [p.inputs.channels.mean, p.inputs.channels.std]
    if p.seasonal is not None:
        arrays += [p.seasonal.mean, p.seasonal.std]
    size = sum(a.nbytes for a in arrays) + sum(m.nbytes for m in p.inputs.maps)
    return int(size + 16 * len(p.calibration.input_thresholds))


def _ours(seasonal: bool) -> Detector:
    def run(ref: np.ndarray, x: np.ndarray, seed: int, times: Times = None) -> Result:
        setup = time.process_time()
        if seasonal and times is not None:
            profile = build_reference(ref, seasonality=Seasonality(), timestamps=times[0], seed=seed)
        else:
            profile = build_reference(ref, seed=seed)
        monitor = DriftMonitor(profile)
        setup_s = time.process_time() - setup
        stamps = times[1] if seasonal and times is not None else None
        alarms: list[int] = []
        t = time.process_time()
        for i in range(0, x.shape[0], 25):
            batch_t = None if stamps is None else stamps[i : i + 25]
            events = monitor.observe(x[i : i + 25], timestamps=batch_t)
            alarms += [e.reported_sample - 1 for e in events if e.state == "open"]
        state = monitor.state_bytes + profile_nbytes(monitor)
        return alarms, time.process_time() - t, state, setup_s, monitor.state_bytes

    return run


def detectors() -> dict[str, Detector]:
    from river import drift

    return {
        "ADWIN": _river(drift.ADWIN),
        "KSWIN": _river(drift.KSWIN),
        "PageHinkley": _river(drift.PageHinkley),
        "KS-bonf": _windowed(ks_bonferroni),
        "PSI>0.10": _windowed(_psi(0.10)),
        "PSI>0.25": _windowed(_psi(0.25)),
        "edgeloop": _ours(seasonal=False),
        "edgeloop-seasonal": _ours(seasonal=True),
    }

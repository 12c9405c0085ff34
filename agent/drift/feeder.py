"""Feeds the inference service's captured samples into a drift monitor for the serving model.

Owns the binding between "which model is serving" and "which reference profile and monitor are
active": when the serving model changes (an OTA switch, a rollback) the monitor is rebuilt from the
`drift_reference.json` that ships beside that model's artifact in its slot; without one, nothing
is monitored and `status` says why. A slot switch is recognised by the model's identity and by the
reference file itself (inode, mtime, size), so a release that re-ships the same model name and
version with another reference (or none) still gets its own monitor. The output view is softmax of
the model's first output, the same transform the compiler applies when it builds the reference.
Captured rows that the reference can never monitor (a model whose input width or type differs
from the reference's: a mis-wired feeder) are not dropped silently: the monitor's data-quality
episode is reported, `status` and `last_error` say what is wrong, and `feed` raises
`DriftInputError` to its caller after reporting. A seasonal reference gets the drain time as the
rows' timestamp (samples are drained every few seconds; the seasonal bins are hours).
Does not capture samples (agent.inference.capture) or send anything itself (DriftReporter writes
to the outbox).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.drift.monitor import DriftInputError, DriftMonitor
from agent.drift.reference import ReferenceProfile
from agent.drift.reporter import DriftReporter

logger = logging.getLogger(__name__)

REFERENCE_FILE = "drift_reference.json"


class ServingModel(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def artifact(self) -> Path: ...


class CapturedSample(Protocol):
    @property
    def inputs(self) -> dict[str, np.ndarray]: ...
    @property
    def outputs(self) -> dict[str, np.ndarray]: ...


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _stack(samples: Sequence[CapturedSample]) -> tuple[np.ndarray, np.ndarray] | None:
    xs, ys = [], []
    for s in samples:
        if not s.inputs or not s.outputs:
            continue
        x = np.asarray(next(iter(s.inputs.values())), dtype=np.float64)
        y = np.asarray(next(iter(s.outputs.values())), dtype=np.float64)
        n = x.shape[0] if x.ndim > 1 else 1
        xs.append(x.reshape(n, -1))
        ys.append(y.reshape(n, -1))
    if not xs:
        return None
    try:
        return np.concatenate(xs), _softmax(np.concatenate(ys))
    except ValueError:  # samples of different shapes: a model swap mid-drain; skip this drain
        return None


class DriftFeeder:
    def __init__(self, make_reporter: Callable[[str, str], DriftReporter]) -> None:
        self._make_reporter = make_reporter
        self._key: tuple[str, str, str, tuple[int, int, int] | None] | None = None
        self._monitor: DriftMonitor | None = None
        self._reporter: DriftReporter | None = None
        self.status = "no model serving"
        self.last_error = ""
        self._bound_status = ""

    def feed(self, serving: ServingModel | None, samples: Sequence[CapturedSample]) -> int:
        """Observe `samples` with the serving model's monitor; returns drift records written.

        Raises:
            DriftInputError: the captured inputs do not fit the model's drift reference; the
                data-quality episode was reported before raising.
        """
        self._bind(serving)
        if self._monitor is None or self._reporter is None or not samples:
            return 0
        stacked = _stack(samples)
        if stacked is None:
            return 0
        inputs, probs = stacked
        stamp = self._reporter.now_ms() / 1000.0 if self._monitor.profile.seasonal is not None else None
        try:
            events = self._monitor.observe(inputs, probs, timestamps=stamp)
        except DriftInputError as err:
            self._reporter.publish(self._monitor, err.events)
            self.last_error = err.reason
            self.status = f"misfed: {err.reason}"
            raise
        if self.last_error:
            self.last_error = ""
            self.status = self._bound_status
        return self._reporter.publish(self._monitor, events)

    def _bind(self, serving: ServingModel | None) -> None:
        if serving is None:
            self._key, self._monitor, self._reporter = None, None, None
            self.status = "no model serving"
            return
        path = serving.artifact.parent / REFERENCE_FILE
        key = (serving.name, serving.version, str(serving.artifact), _file_tag(path))
        if key == self._key:
            return
        self._key, self._monitor, self._reporter = key, None, None
        try:
            profile = ReferenceProfile.from_bytes(path.read_bytes())
        except FileNotFoundError:
            self.status = f"{serving.name}@{serving.version} ships no {REFERENCE_FILE}: not monitored"
            logger.info("drift monitoring off: %s", self.status)
            return
        except (OSError, ValueError) as err:
            self.status = f"{serving.name}@{serving.version}: unusable drift reference ({err})"
            logger.warning("drift monitoring off: %s", self.status)
            return
        self._monitor = DriftMonitor(profile)
        self._reporter = self._make_reporter(serving.name, serving.version)
        self.status = self._bound_status = f"monitoring {serving.name}@{serving.version}"
        logger.info("drift monitoring on model=%s version=%s", serving.name, serving.version)

    @property
    def monitor(self) -> Any:
        return self._monitor


def _file_tag(path: Path) -> tuple[int, int, int] | None:
    """What tells one reference file from another across slot renames (None: no readable file)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size

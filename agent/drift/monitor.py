"""On-device drift monitor: validated inputs/outputs/labels in, drift episodes out (sans-IO).

Owns input validation and bad-input handling, the per-stream micro-batch buffers (at most one
block of rows), the window banks, the stuck-sensor runs (stuck.py) and the episode trackers. Feed rows
one at a time or in micro-batches; statistics are evaluated at block boundaries
(`profile.calibration.bank.block` rows).

Bad input never reaches a statistic and is never silent:

* rows the monitor can never use (wrong width, not numbers, a missing named feature, no timestamp
  for a seasonal reference) raise `DriftInputError` *and* open a data-quality episode (evidence
  kind "bad_input"), carried on the error as `.events` so the caller can report it;
* NaN/inf values are counted per feature and their rows dropped (`nonfinite="drop"`, the default:
  sensors drop out now and then); a feature non-finite for a whole block of rows in a row opens a
  data-quality episode. With `nonfinite="raise"` any NaN/inf is treated like a misfed row.

A data-quality episode closes after a quiet period of good blocks, like a drift episode.
Does not persist or send anything (reporter.py does) and reads no clock: a seasonal reference
needs the caller's timestamps.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from agent.drift.bank import Crossing, WindowBank
from agent.drift.episodes import Episode, EpisodeTracker
from agent.drift.quality import NONFINITE_POLICIES, BadInput, DriftInputError, trailing_run
from agent.drift.reference import ReferenceProfile
from agent.drift.sketch import EdgeCounts, FloatArray
from agent.drift.stats import ChannelModel
from agent.drift.stuck import StuckRuns, usual_values

__all__ = ["BadInput", "DriftInputError", "DriftMonitor", "InputRows", "Timestamps"]

logger = logging.getLogger(__name__)

InputRows = FloatArray | Mapping[str, float] | list[float] | list[list[float]]
Timestamps = FloatArray | list[float] | float | None


class _Stream:
    """Row buffer (less than one block) + window bank + episode tracker for one kind of observation."""

    def __init__(
        self, name: str, channels: ChannelModel, profile: ReferenceProfile, thresholds: dict[str, float]
    ) -> None:
        cal = profile.calibration
        self.block = cal.bank.block
        self.bank = WindowBank(channels, cal.bank, thresholds)
        self.tracker = EpisodeTracker(
            stream=name, budget_per_10k=cal.budget_per_10k, quiet_blocks=cal.bank.warmup_blocks
        )
        self._pending: list[FloatArray] = []
        self._pending_rows = 0
        self.position = 0  # rows in completed blocks

    def add(self, rows: FloatArray) -> FloatArray | None:
        """Buffer valid rows; returns the rows of newly completed blocks (a multiple of `block`)."""
        if not self._pending_rows and rows.shape[0] % self.block == 0:
            return rows  # whole blocks and nothing buffered: the daemon's usual feed
        self._pending.append(rows)
        self._pending_rows += rows.shape[0]
        if self._pending_rows < self.block:
            return None
        allrows = np.concatenate(self._pending) if len(self._pending) > 1 else rows
        full = self._pending_rows // self.block * self.block
        rest = allrows[full:]
        self._pending = [rest] if rest.shape[0] else []
        self._pending_rows = rest.shape[0]
        return allrows[:full]

    def push(self, values: FloatArray) -> list[list[Crossing]]:
        """Channel values of complete blocks -> crossings per block."""
        nb = values.shape[0] // self.block
        crossings = self.bank.push(values.reshape(nb, self.block, -1).sum(axis=1))
        self.position += values.shape[0]
        return crossings

    @property
    def rows(self) -> int:
        return self.position + self._pending_rows

    @property
    def nbytes(self) -> int:
        return self.bank.nbytes + sum(int(p.nbytes) for p in self._pending)


class DriftMonitor:
    """Drift monitor for one model, built from its reference profile."""

    def __init__(self, profile: ReferenceProfile, *, nonfinite: str = "drop") -> None:
        """Args:
            profile: the model's calibrated reference.
            nonfinite: "drop" (count NaN/inf rows and leave them out; a feature non-finite for a
                whole block in a row opens a data-quality episode) or "raise" (any NaN/inf raises
                DriftInputError like a misfed row).

        Raises:
            ValueError: an unknown `nonfinite` policy.
        """
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        self.profile = profile
        self._nonfinite = nonfinite
        cal = profile.calibration
        self.bad = BadInput()
        self._quality = EpisodeTracker(
            stream="inputs", budget_per_10k=cal.budget_per_10k, quiet_blocks=cal.bank.warmup_blocks
        )
        self._bad_reason = ""
        self._quality_events: list[Episode] = []
        self._nan_run = np.zeros(len(profile.input_names), dtype=np.int32)
        self._next_id = 1
        self._inputs = _Stream("inputs", profile.inputs.channels, profile, cal.input_thresholds)
        self._outputs = (
            _Stream("outputs", profile.outputs.channels, profile, cal.output_thresholds)
            if profile.outputs is not None
            else None
        )
        self._labels = (
            _Stream("labels", profile.errors, profile, cal.error_thresholds)
            if profile.errors is not None
            else None
        )
        median = profile.deciles[:, profile.deciles.shape[1] // 2]  # the 9 deciles: the 5th is the median
        self._stuck = StuckRuns(cal.stuck_runs, usual_values(profile.inputs.max_atom, median))
        self._bins = EdgeCounts(profile.deciles)
        self._nan_seen = False

    # ------------------------------------------------------------ public API

    def observe(
        self, inputs: InputRows, outputs: FloatArray | None = None, *, timestamps: Timestamps = None
    ) -> list[Episode]:
        """Feed one row or a micro-batch of inputs (and optionally the model's class probabilities).

        Args:
            inputs: rows (n, d) or one row, or a mapping feature name -> value.
            outputs: optional class probabilities (n, K) of the same rows.
            timestamps: seconds at which the rows were taken, one per row or one for all; required
                when the reference is seasonal, ignored otherwise.

        Returns:
            Episode events (opened/updated/closed) produced by this call, usually none.

        Raises:
            DriftInputError: the inputs can never be monitored (wrong width or type, a missing
                feature, a missing timestamp, NaN/inf under `nonfinite="raise"`); `.events` holds
                the data-quality episode it opened and must be reported.
        """
        events: list[Episode] = []
        self._bad_reason, self._quality_events = "", []
        x = self._valid_rows(inputs)
        if x is not None and x.shape[0]:
            x = self._deseason(x, timestamps)
        if x is not None and x.shape[0]:
            events += self._feed_inputs(x)
        if outputs is not None and self._outputs is not None:
            p = self._valid_outputs(outputs)
            full = self._outputs.add(p) if p is not None and p.shape[0] else None
            if full is not None:
                assert self.profile.outputs is not None
                events += self._run_stream(
                    self._outputs, self._outputs.push(self.profile.outputs.values(full))
                )
        events = self._quality_events + events
        if self._bad_reason:
            raise DriftInputError(self._bad_reason, events)
        return events

    @property
    def budget_per_10k(self) -> float:
        """False-alarm budget of this monitor's thresholds (expected false episodes per 10k samples)."""
        return self.profile.calibration.budget_per_10k

    def observe_labels(self, errors: FloatArray | list[int] | int) -> list[Episode]:
        """Feed late labels as a 0/1 error indicator per prediction (1 = the model was wrong)."""
        if self._labels is None:
            return []
        try:
            e = np.asarray(errors, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            self.bad.bad_labels += 1
            return []
        ok = (e == 0) | (e == 1)
        self.bad.bad_labels += int((~ok).sum())
        full = self._labels.add(e[ok].reshape(-1, 1)) if ok.any() else None
        return [] if full is None else self._run_stream(self._labels, self._labels.push(full))

    @property
    def samples(self) -> int:
        return self._inputs.rows

    def open_episodes(self) -> list[Episode]:
        streams = [s for s in (self._inputs, self._outputs, self._labels) if s is not None]
        trackers = [s.tracker for s in streams] + [self._quality]
        return [e for t in trackers if (e := t.current) is not None]

    @property
    def episodes_opened(self) -> int:
        streams = [s for s in (self._inputs, self._outputs, self._labels) if s is not None]
        return sum(s.tracker.opened_total for s in streams) + self._quality.opened_total

    @property
    def state_bytes(self) -> int:
        """Bytes of mutable per-stream state (rings, running sums, pending rows, counters, bins).

        Pending rows are the input of an unfinished block (at most block - 1 rows); the profile's
        read-only arrays (score maps, thresholds, stuck run lengths) are not counted.
        """
        streams = [s for s in (self._inputs, self._outputs, self._labels) if s is not None]
        fixed = self._stuck.nbytes + self._bins.nbytes + self._nan_run.nbytes
        return fixed + sum(s.nbytes for s in streams)

    def take_bins(self) -> FloatArray:
        """Counts per feature in the reference's decile bins since the last call (mergeable sketch)."""
        return self._bins.take()

    # ------------------------------------------------------------ internals

    def _misfed(self, channel: str, feature: str, rows: int, reason: str) -> None:
        """Record input that can never be monitored: a data-quality crossing now, an error later."""
        self._bad_reason = self._bad_reason or reason
        # No ":" in a structural channel name: the evidence names no feature (episodes.evidence_of).
        crossing = Crossing(f"bad_input/{channel}", "bad_input", float(rows), 1.0, max(1, rows))
        if feature:
            crossing = Crossing(f"bad_input:{feature}", "bad_input", float(rows), 1.0, max(1, rows))
        self._quality_step([crossing])
        logger.warning("drift monitor: misfed input: %s", reason)

    def _quality_step(self, crossings: list[Crossing]) -> None:
        event = self._quality.step(crossings, self.samples, self._next_id)
        if event is not None:
            if event.episode_id == self._next_id:
                self._next_id += 1
            self._quality_events.append(event)

    def _valid_rows(self, inputs: InputRows) -> FloatArray | None:
        names = self.profile.input_names
        if isinstance(inputs, Mapping):
            return self._mapping_row(inputs)
        try:
            x = np.asarray(inputs, dtype=np.float64)
        except (TypeError, ValueError):
            self.bad.bad_shape += 1
            self._misfed("type", "", 1, f"inputs are not numbers ({type(inputs).__name__})")
            return None
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[1] != len(names):
            rows = max(1, x.shape[0] if x.ndim == 2 else 1)
            self.bad.bad_shape += rows
            got = f"rows of {x.shape[1]} values" if x.ndim == 2 else f"an array of shape {x.shape}"
            self._misfed("width", "", rows, f"inputs are {got}; the reference has {len(names)} features")
            return None
        finite = np.isfinite(x)
        if not finite.all():
            self._count_nonfinite(finite)
            self._nan_seen = True
            return x[finite.all(axis=1)]
        if self._nan_seen:
            self._nan_run[:] = 0
            self._nan_seen = False
        return x

    def _count_nonfinite(self, finite: npt.NDArray[np.bool_]) -> None:
        names = self.profile.input_names
        bad_cols = np.flatnonzero(~finite.all(axis=0))
        for j in bad_cols:
            self.bad.nonfinite[names[j]] = self.bad.nonfinite.get(names[j], 0) + int((~finite[:, j]).sum())
        if self._nonfinite == "raise":
            first = names[bad_cols[0]]
            self._misfed(
                "nonfinite", first, int((~finite).any(axis=1).sum()), f"NaN/inf in feature {first!r}"
            )
            return
        run = trailing_run(~finite, self._nan_run)
        block = self._inputs.block
        dead = np.flatnonzero((run >= block) & ((~finite).sum(axis=0) > 0))
        self._nan_run = run.astype(np.int32)
        if dead.size:
            self._quality_step(
                [
                    Crossing(f"nonfinite:{names[j]}", "bad_input", float(run[j]), float(block), int(run[j]))
                    for j in dead
                ]
            )

    def _deseason(self, x: FloatArray, timestamps: Timestamps) -> FloatArray | None:
        seasonal = self.profile.seasonal
        if seasonal is None:
            return x
        if timestamps is None:
            self._misfed("timestamp", "", x.shape[0], "this reference is seasonal: pass timestamps=")
            return None
        try:
            t = np.broadcast_to(np.asarray(timestamps, dtype=np.float64).ravel(), (x.shape[0],))
        except (TypeError, ValueError):
            self._misfed(
                "timestamp", "", x.shape[0], f"need one timestamp per row ({x.shape[0]}) or one for all"
            )
            return None
        if not np.isfinite(t).all():
            self._misfed("timestamp", "", x.shape[0], "timestamps must be finite seconds")
            return None
        return seasonal.apply(x, t)

    def _mapping_row(self, row: Mapping[str, float]) -> FloatArray | None:
        values = []
        missing = []
        for name in self.profile.input_names:
            if name not in row:
                self.bad.missing[name] = self.bad.missing.get(name, 0) + 1
                missing.append(name)
                continue
            values.append(row[name])
        if missing:
            self._misfed("missing", missing[0], 1, f"input row has no feature {missing[0]!r}")
            return None
        try:
            return self._valid_rows(np.asarray(values, dtype=np.float64).reshape(1, -1))
        except (TypeError, ValueError):
            self.bad.bad_shape += 1
            self._misfed("type", "", 1, "input row values are not numbers")
            return None

    def _valid_outputs(self, outputs: FloatArray) -> FloatArray | None:
        assert self.profile.outputs is not None
        try:
            p = np.asarray(outputs, dtype=np.float64)
        except (TypeError, ValueError):
            self.bad.bad_outputs += 1
            return None
        p = p.reshape(1, -1) if p.ndim == 1 else p
        if p.ndim != 2 or p.shape[1] != self.profile.outputs.n_classes:
            self.bad.bad_outputs += 1
            return None
        ok = np.isfinite(p).all(axis=1)
        self.bad.bad_outputs += int((~ok).sum())
        return p[ok]

    def _feed_inputs(self, x: FloatArray) -> list[Episode]:
        stream = self._inputs
        full = stream.add(x)
        if full is None:
            return []
        mx = self.profile.project(full)
        self._bins.add(mx)
        stuck = self._stuck.push(mx, stream.block)
        crossings = stream.push(self.profile.inputs.values(mx))
        if stuck:
            names = self.profile.feature_names
            for i, j, run, limit in stuck:
                crossings[i].append(Crossing(f"stuck:{names[j]}", "stuck", float(run), float(limit), run))
        events = self._run_stream(stream, crossings)
        if self._quality.current is not None:  # good blocks count toward closing a quality episode
            b = stream.block
            base = stream.position - len(crossings) * b
            for i in range(len(crossings)):
                event = self._quality.step([], base + (i + 1) * b, self._next_id)
                if event is not None:
                    events.append(event)
        return events

    def _run_stream(self, stream: _Stream, crossings: list[list[Crossing]]) -> list[Episode]:
        events = []
        base = stream.position - len(crossings) * stream.block
        for i, block in enumerate(crossings):
            if not block and stream.tracker.current is None:
                continue
            event = stream.tracker.step(block, base + (i + 1) * stream.block, self._next_id)
            if event is not None:
                if event.episode_id == self._next_id:
                    self._next_id += 1
                logger.info(
                    "drift episode id=%d stream=%s state=%s severity=%.2f",
                    event.episode_id,
                    event.stream,
                    event.state,
                    event.severity,
                )
                events.append(event)
        return events

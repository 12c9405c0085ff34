"""Drift episodes and sketches <-> edgeloop.v1 protobuf (the only drift module that imports *_pb2).

Owns the wire form of what the monitor found. Does not decide when to report (reporter.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.drift.episodes import Episode, EpisodeState
from agent.drift.monitor import DriftMonitor
from protos.edgeloop.v1 import drift_pb2

_STATE = {
    EpisodeState.OPEN: drift_pb2.DRIFT_EPISODE_OPEN,
    EpisodeState.CLOSED: drift_pb2.DRIFT_EPISODE_CLOSED,
}


@dataclass(frozen=True)
class Origin:
    """Which model and monitor instance a report comes from."""

    model_name: str
    model_version: str
    monitor_id: str


def episode_to_proto(
    episode: Episode, *, origin: Origin, samples_seen: int, opened_ms: int, closed_ms: int = 0
) -> drift_pb2.DriftEpisode:
    return drift_pb2.DriftEpisode(
        episode_id=episode.episode_id,
        stream=episode.stream,
        state=_STATE[episode.state],
        model_name=origin.model_name,
        model_version=origin.model_version,
        start_sample=episode.start_sample,
        detected_sample=episode.detected_sample,
        end_sample=episode.end_sample,
        opened_ms=opened_ms,
        closed_ms=closed_ms,
        severity=episode.severity,
        evidence=[
            drift_pb2.DriftEvidence(
                channel=e.channel,
                kind=e.kind,
                feature=e.feature,
                statistic=e.statistic,
                threshold=e.threshold,
                window_rows=e.window_rows,
            )
            for e in episode.evidence
        ],
        budget_per_10k=episode.budget_per_10k,
        samples_seen=samples_seen,
        monitor_id=origin.monitor_id,
        reported_sample=episode.reported_sample,
    )


def sketch_to_proto(
    monitor: DriftMonitor, bins: np.ndarray, *, origin: Origin, from_ms: int, to_ms: int
) -> drift_pb2.DriftSketch:
    """Sketch of the rows binned since the previous sketch plus the monitor's running counters."""
    bad = monitor.bad
    return drift_pb2.DriftSketch(
        model_name=origin.model_name,
        model_version=origin.model_version,
        monitor_id=origin.monitor_id,
        from_ms=from_ms,
        to_ms=to_ms,
        samples=int(bins[0].sum()) if bins.size else 0,
        samples_total=monitor.samples,
        bins=[
            drift_pb2.FeatureBins(feature=name, counts=[int(c) for c in row])
            for name, row in zip(monitor.profile.feature_names, bins, strict=True)
        ],
        bad_shape=bad.bad_shape,
        missing=bad.missing,
        nonfinite=bad.nonfinite,
        bad_outputs=bad.bad_outputs,
        bad_labels=bad.bad_labels,
        episodes_opened_total=monitor.episodes_opened,
        budget_per_10k=monitor.profile.calibration.budget_per_10k,
        open_episodes=len(monitor.open_episodes()),
    )

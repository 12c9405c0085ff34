"""On-device drift detection: reference profiles, calibrated monitor, episode reporting (numpy only)."""

from agent.drift.episodes import Episode, EpisodeState, Evidence
from agent.drift.monitor import BadInput, DriftMonitor
from agent.drift.reference import ReferenceProfile, build_reference
from agent.drift.reporter import DriftReporter

__all__ = [
    "BadInput",
    "DriftMonitor",
    "DriftReporter",
    "Episode",
    "EpisodeState",
    "Evidence",
    "ReferenceProfile",
    "build_reference",
]

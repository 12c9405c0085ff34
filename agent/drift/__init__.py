"""On-device drift detection: reference profiles, calibrated monitor, episode reporting (numpy only).

The false-alarm budget is the one knob: `build_reference(..., budget_per_10k=0.5)` (expected false
drift episodes per 10,000 monitored samples; `DEFAULT_BUDGET_PER_10K`), read back as
`ReferenceProfile.budget_per_10k` / `DriftMonitor.budget_per_10k`.
"""

from agent.drift.calibrate import CalibrationPlan
from agent.drift.episodes import Episode, EpisodeState, Evidence
from agent.drift.monitor import DriftMonitor
from agent.drift.quality import BadInput, DriftInputError
from agent.drift.reference import DEFAULT_BUDGET_PER_10K, ReferenceProfile, build_reference
from agent.drift.reporter import DriftReporter
from agent.drift.seasonal import Seasonality

__all__ = [
    "DEFAULT_BUDGET_PER_10K",
    "BadInput",
    "CalibrationPlan",
    "DriftInputError",
    "DriftMonitor",
    "DriftReporter",
    "Episode",
    "EpisodeState",
    "Evidence",
    "ReferenceProfile",
    "Seasonality",
    "build_reference",
]

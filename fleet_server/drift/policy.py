"""Policy hook: what the federated loop should do about drift, per cohort.

`drift_policy(session)` returns plain `CohortAction`s; the federated issue calls it (or any
function of the `DriftPolicy` shape) to open a retraining round for a drifted cohort with the
shifted devices as participants and anomalous devices excluded from training. Pure decision over
crud.cohort_reports(); does not start rounds itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from sqlmodel import Session

from fleet_server.drift.analysis import ClassifyConfig, CohortKey, CohortReport
from fleet_server.drift.crud import cohort_reports

logger = logging.getLogger(__name__)

OPEN_RETRAINING_ROUND = "open_retraining_round"
EXCLUDE_DEVICES = "exclude_devices"


@dataclass(frozen=True)
class CohortAction:
    cohort: CohortKey
    action: str  # OPEN_RETRAINING_ROUND | EXCLUDE_DEVICES
    include_devices: tuple[str, ...]  # shifted devices (participants of the round)
    exclude_devices: tuple[str, ...]  # anomalous devices: keep their data out of training
    reason: str


class DriftPolicy(Protocol):
    def __call__(self, session: Session) -> list[CohortAction]: ...


def actions_for(report: CohortReport) -> list[CohortAction]:
    excluded = tuple(a.device_id for a in report.anomalies)
    shift = report.population_shift
    if shift is not None:
        reason = (
            f"{len(shift.devices)} of {report.devices} devices drifted on {', '.join(shift.keys)} "
            f"(p={shift.p_value:.1e}, {shift.expected_false_devices:.2f} false alarms expected)"
        )
        include = tuple(d for d in shift.devices if d not in excluded)
        return [CohortAction(report.key, OPEN_RETRAINING_ROUND, include, excluded, reason)]
    if excluded:
        reason = "device anomalies: " + ", ".join(f"{a.device_id} ({a.signature})" for a in report.anomalies)
        return [CohortAction(report.key, EXCLUDE_DEVICES, (), excluded, reason)]
    return []


def drift_policy(
    session: Session, *, label: str | None = None, since_ms: int = 0, config: ClassifyConfig | None = None
) -> list[CohortAction]:
    """Actions for every cohort with a population shift or device anomalies (see module doc)."""
    actions = [
        a
        for r in cohort_reports(session=session, label=label, since_ms=since_ms, config=config)
        for a in actions_for(r)
    ]
    for a in actions:
        logger.info(
            "drift policy action=%s cohort=%s devices=%d excluded=%d",
            a.action,
            a.cohort,
            len(a.include_devices),
            len(a.exclude_devices),
        )
    return actions

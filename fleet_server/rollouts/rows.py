"""Small reads shared by deciding and by running effects.

Owns: a rollout's batch row, the OTA device statuses of (device, deployment) pairs and which of
their states count as a failed install, the deployment a holder made before it died, and the
epoch-millisecond stamps kept in a batch's gate state and in the rollback progress. Writes nothing
and decides nothing.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, select

from fleet_server.errors import ConflictError
from fleet_server.ota.models import OtaDeviceStatus
from fleet_server.rollouts.models import RolloutBatch

FAILED_STATES = frozenset({"failed", "refused", "rolled_back"})  # agent's terminal non-commits


def ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def batch_row(s: Session, rid: str, index: int) -> RolloutBatch:
    return s.exec(
        select(RolloutBatch).where(RolloutBatch.rollout_id == rid, RolloutBatch.index == index)
    ).one()


def statuses(s: Session, keys: list[tuple[str, str]]) -> dict[tuple[str, str], OtaDeviceStatus]:
    out: dict[tuple[str, str], OtaDeviceStatus] = {}
    deployments = sorted({dep for _, dep in keys if dep})
    wanted = set(keys)
    for i in range(0, len(deployments), 100):
        for r in s.exec(
            select(OtaDeviceStatus).where(col(OtaDeviceStatus.deployment_id).in_(deployments[i : i + 100]))
        ).all():
            if (r.device_id, r.deployment_id) in wanted:
                out[(r.device_id, r.deployment_id)] = r
    return out


def recover_deployment(s: Session, device_id: str, release_seq: int) -> str:
    """The deployment a holder made before dying (its progress mark committed with the rows).

    Raises:
        ConflictError: the mark says done but no status row of that release exists for the device.
    """
    row = s.exec(
        select(OtaDeviceStatus)
        .where(OtaDeviceStatus.device_id == device_id, OtaDeviceStatus.release_seq == release_seq)
        .order_by(col(OtaDeviceStatus.updated_at).desc())
    ).first()
    if row is None:
        raise ConflictError(f"deployment of release {release_seq} to {device_id} marked done but not found")
    return row.deployment_id

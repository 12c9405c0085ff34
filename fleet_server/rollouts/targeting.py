"""Which devices and releases a rollout covers, read from the database.

Owns the reads behind targeting: the rollout's releases and which profile each one serves (one
release per profile; a release without profiles is the wildcard), the enrolled active devices as
`planning.Candidate`s, each device's previous committed release (what a rollback returns it to),
and late joiners: devices enrolled after the plan that match join the last batch not assigned yet.

Does not select or plan (pure, `planning.py`), create rollouts (`authoring.py`) or assign batches
(`deploying.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.orm.attributes import flag_modified
from sqlmodel import Session, col, select

from fleet_server.errors import InvalidRequestError, NotFoundError
from fleet_server.models import Device
from fleet_server.ota.models import OtaDeviceStatus, OtaRelease
from fleet_server.rollouts.models import Rollout, RolloutBatch, RolloutDevice, RolloutHold
from fleet_server.rollouts.planning import Candidate, Selector, select_targets

logger = logging.getLogger(__name__)

WILDCARD = "*"  # a release published without profiles fits every profile


def profiles_of(rel: OtaRelease) -> list[str]:
    return [str(p) for p in (rel.custom.get("edgeloop", {}).get("profiles") or [])]


def release_entry(rel: OtaRelease) -> dict[str, Any]:
    return {
        "seq": rel.seq,
        "profiles": profiles_of(rel),
        "sha256": rel.sha256,
        "model_name": rel.model_name,
        "model_version": rel.model_version,
    }


def pick(by_profile: dict[str, int], profile: str) -> int | None:
    return by_profile.get(profile, by_profile.get(WILDCARD))


def releases(s: Session, seqs: list[int]) -> tuple[list[OtaRelease], dict[str, int]]:
    """The releases and, per profile, the release that serves it.

    Raises:
        NotFoundError: a release does not exist.
        InvalidRequestError: a release is listed twice, or two releases serve one profile.
    """
    found: list[OtaRelease] = []
    by_profile: dict[str, int] = {}
    if len(set(seqs)) != len(seqs):
        raise InvalidRequestError("a release is listed twice")
    for seq in seqs:
        rel = s.get(OtaRelease, seq)
        if rel is None:
            raise NotFoundError(f"release {seq} not found")
        assert rel.seq is not None
        found.append(rel)
        for profile in profiles_of(rel) or [WILDCARD]:
            if profile in by_profile:
                raise InvalidRequestError(
                    f"releases {by_profile[profile]} and {seq} both have an artifact for profile "
                    f"{profile}: a rollout takes one release per profile"
                )
            by_profile[profile] = rel.seq
    return found, by_profile


def release_profiles(by_profile: dict[str, int], candidates: list[Candidate]) -> set[str]:
    if WILDCARD in by_profile:
        return set(by_profile) | {c.profile for c in candidates}
    return set(by_profile)


def candidates(s: Session) -> list[Candidate]:
    devices = s.exec(select(Device).where(Device.status == "active").order_by(col(Device.id))).all()
    return [Candidate(d.id, d.profile, dict(d.labels)) for d in devices]


def previous_releases(s: Session, device_ids: list[str], exclude: list[int]) -> dict[str, int]:
    """Each device's newest committed release (what a rollback returns it to)."""
    out: dict[str, int] = {}
    ids = sorted(set(device_ids))
    for i in range(0, len(ids), 500):
        rows = s.exec(
            select(OtaDeviceStatus).where(
                col(OtaDeviceStatus.device_id).in_(ids[i : i + 500]),
                OtaDeviceStatus.state == "committed",
                col(OtaDeviceStatus.release_seq).not_in(exclude),
            )
        ).all()
        for r in rows:
            out[r.device_id] = max(out.get(r.device_id, 0), r.release_seq)
    return out


def join_late_devices(s: Session, row: Rollout, clock: Callable[[], datetime]) -> None:
    """Devices enrolled since the plan that match join the last batch not yet assigned."""
    selector = Selector(
        labels=dict(row.selector.get("labels") or {}),
        profiles=frozenset(row.selector.get("profiles") or []),
    )
    by_profile = {p: int(r["seq"]) for r in row.releases for p in (r["profiles"] or [WILDCARD])}
    enrolled = candidates(s)
    if row.selector.get("devices"):
        return  # a rollout to named devices takes no one else
    known = set(s.exec(select(RolloutDevice.device_id).where(RolloutDevice.rollout_id == row.id)).all())
    held = set(s.exec(select(RolloutHold.device_id)).all())
    fresh = [c for c in enrolled if c.device_id not in known and c.device_id not in held]
    if not fresh:
        return
    profiles = release_profiles(by_profile, enrolled)
    joined = select_targets(fresh, selector, profiles).devices
    if not joined:
        return
    last = s.exec(
        select(RolloutBatch).where(RolloutBatch.rollout_id == row.id, RolloutBatch.index == row.batches - 1)
    ).one()
    if last.index < row.batch:
        return
    previous = previous_releases(s, [c.device_id for c in joined], [int(r["seq"]) for r in row.releases])
    last.devices = [*last.devices, *(c.device_id for c in joined)]
    flag_modified(last, "devices")
    s.add(last)
    now = clock()
    for c in joined:
        s.add(
            RolloutDevice(
                rollout_id=row.id,
                device_id=c.device_id,
                batch=last.index,
                profile=c.profile,
                release_seq=pick(by_profile, c.profile),
                previous_release_seq=previous.get(c.device_id),
                updated_at=now,
            )
        )
        s.add(RolloutHold(device_id=c.device_id, rollout_id=row.id))
    logger.info("rollout %s: %d late device(s) join batch %d", row.id, len(joined), last.index)

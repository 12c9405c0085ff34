"""Drift queries: episode listing, one episode, and the per-cohort inputs of analysis.py.

Owns SQL over drift_episode / drift_sketch joined with the device registry. Keyword-only,
typed, raises FleetError subclasses. Does not judge (analysis.py).
"""

from __future__ import annotations

from collections import defaultdict

from sqlmodel import Session, col, select

from fleet_server.drift.analysis import (
    ClassifyConfig,
    CohortKey,
    CohortReport,
    Exposure,
    FeatureComparison,
    classify_cohort,
    compare_sketches,
)
from fleet_server.drift.models import DriftEpisodeRow, DriftSketchRow
from fleet_server.errors import NotFoundError
from fleet_server.models import Device


def list_episodes(
    *,
    session: Session,
    device_id: str | None = None,
    state: str | None = None,
    model_version: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[DriftEpisodeRow]:
    stmt = select(DriftEpisodeRow)
    if device_id:
        stmt = stmt.where(DriftEpisodeRow.device_id == device_id)
    if state:
        stmt = stmt.where(DriftEpisodeRow.state == state)
    if model_version:
        stmt = stmt.where(DriftEpisodeRow.model_version == model_version)
    stmt = stmt.order_by(col(DriftEpisodeRow.id).desc()).offset(offset).limit(limit)
    return list(session.exec(stmt).all())


def get_episode(*, session: Session, episode_row_id: int) -> DriftEpisodeRow:
    row = session.get(DriftEpisodeRow, episode_row_id)
    if row is None:
        raise NotFoundError(f"drift episode {episode_row_id} not found")
    return row


def _devices(session: Session, ids: set[str]) -> dict[str, Device]:
    """Only the devices that reported drift (not the whole fleet: 10,000 rows per request)."""
    out: dict[str, Device] = {}
    wanted = sorted(ids)
    for i in range(0, len(wanted), 1000):
        chunk = wanted[i : i + 1000]
        out.update((d.id, d) for d in session.exec(select(Device).where(col(Device.id).in_(chunk))).all())
    return out


def _cohort(device: Device | None, model_name: str, model_version: str, label: str | None) -> CohortKey:
    profile = device.profile if device else ""
    value = (device.labels.get(label, "") if device else "") if label else ""
    return CohortKey(profile, model_name, model_version, value)


def cohort_reports(
    *, session: Session, label: str | None = None, since_ms: int = 0, config: ClassifyConfig | None = None
) -> list[CohortReport]:
    """Classify every cohort (profile, model, version[, label value]) that reported drift telemetry."""
    exposures: dict[CohortKey, dict[str, Exposure]] = defaultdict(dict)
    sketches = session.exec(select(DriftSketchRow).order_by(col(DriftSketchRow.seq))).all()
    stmt = select(DriftEpisodeRow).where(DriftEpisodeRow.opened_ms >= since_ms)
    all_episodes = session.exec(stmt.order_by(col(DriftEpisodeRow.id))).all()
    devices = _devices(session, {s.device_id for s in sketches} | {e.device_id for e in all_episodes})
    for s in sketches:  # later sketches overwrite: samples_total is cumulative
        key = _cohort(devices.get(s.device_id), s.model_name, s.model_version, label)
        exposures[key][s.device_id] = Exposure(s.samples_total, s.budget_per_10k, len(s.bins))
    episodes: dict[CohortKey, list[DriftEpisodeRow]] = defaultdict(list)
    for ep in all_episodes:
        key = _cohort(devices.get(ep.device_id), ep.model_name, ep.model_version, label)
        episodes[key].append(ep)
        known = exposures[key].get(ep.device_id)
        if known is None or known.samples < ep.samples_seen:
            n_features = known.n_features if known else len(ep.features) or 1
            exposures[key][ep.device_id] = Exposure(ep.samples_seen, ep.budget_per_10k, n_features)
    return [classify_cohort(k, episodes.get(k, []), exposures[k], config) for k in sorted(exposures)]


def _sum_bins(into: dict[str, list[int]], bins: dict[str, list[int]]) -> None:
    for feature, counts in bins.items():
        acc = into.setdefault(feature, [0] * len(counts))
        if len(acc) == len(counts):
            into[feature] = [a + c for a, c in zip(acc, counts, strict=True)]


def device_sketch(*, session: Session, device_id: str) -> tuple[str, list[FeatureComparison]]:
    """Merged sketch of a device's latest model version against the rest of its cohort."""
    mine = session.exec(select(DriftSketchRow).where(DriftSketchRow.device_id == device_id)).all()
    if not mine:
        raise NotFoundError(f"no drift sketches from device {device_id}")
    version = max(mine, key=lambda s: s.seq).model_version
    device_bins: dict[str, list[int]] = {}
    for s in mine:
        if s.model_version == version:
            _sum_bins(device_bins, s.bins)
    stmt = select(DriftSketchRow).where(
        DriftSketchRow.model_version == version, DriftSketchRow.device_id != device_id
    )
    others = session.exec(stmt).all()
    devices = _devices(session, {device_id} | {s.device_id for s in others})
    profile = devices[device_id].profile if device_id in devices else ""
    cohort_bins: dict[str, list[int]] = {}
    for s in others:
        other = devices.get(s.device_id)
        if (other.profile if other else "") == profile:
            _sum_bins(cohort_bins, s.bins)
    return version, compare_sketches(device_bins, cohort_bins)

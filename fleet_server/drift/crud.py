"""Drift queries: episode listing, one episode, and the per-cohort inputs of analysis.py.

Owns SQL over drift_episode / drift_sketch joined with the device registry. Keyword-only,
typed, raises FleetError subclasses. Does not judge (analysis.py).
"""

from __future__ import annotations

from collections import defaultdict

from sqlmodel import Session, col, select

from fleet_server.drift.analysis import ClassifyConfig, CohortKey, CohortReport, Exposure, classify_cohort
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


def _cohort(device: Device | None, model_name: str, model_version: str, label: str | None) -> CohortKey:
    profile = device.profile if device else ""
    value = (device.labels.get(label, "") if device else "") if label else ""
    return CohortKey(profile, model_name, model_version, value)


def cohort_reports(
    *, session: Session, label: str | None = None, since_ms: int = 0, config: ClassifyConfig | None = None
) -> list[CohortReport]:
    """Classify every cohort (profile, model, version[, label value]) that reported drift telemetry."""
    devices = {d.id: d for d in session.exec(select(Device)).all()}
    exposures: dict[CohortKey, dict[str, Exposure]] = defaultdict(dict)
    sketches = session.exec(select(DriftSketchRow).order_by(col(DriftSketchRow.seq))).all()
    for s in sketches:  # later sketches overwrite: samples_total is cumulative
        key = _cohort(devices.get(s.device_id), s.model_name, s.model_version, label)
        exposures[key][s.device_id] = Exposure(s.samples_total, s.budget_per_10k, len(s.bins))
    episodes: dict[CohortKey, list[DriftEpisodeRow]] = defaultdict(list)
    stmt = select(DriftEpisodeRow).where(DriftEpisodeRow.opened_ms >= since_ms)
    for ep in session.exec(stmt.order_by(col(DriftEpisodeRow.id))).all():
        key = _cohort(devices.get(ep.device_id), ep.model_name, ep.model_version, label)
        episodes[key].append(ep)
        known = exposures[key].get(ep.device_id)
        if known is None or known.samples < ep.samples_seen:
            n_features = known.n_features if known else len(ep.features) or 1
            exposures[key][ep.device_id] = Exposure(ep.samples_seen, ep.budget_per_10k, n_features)
    return [classify_cohort(k, episodes.get(k, []), exposures[k], config) for k in sorted(exposures)]

"""Drift REST routes (viewer role): episodes, one episode, cohort verdicts with policy actions, and a
device's merged sketch against its cohort."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from fleet_server.api.deps import SessionDep, Viewer
from fleet_server.api.errors import NOT_FOUND
from fleet_server.api.params import (
    LABEL_KEY_PATTERN,
    DeviceIdPath,
    IdQuery,
    Offset,
    RowId,
    SinceMs,
    page_size,
)
from fleet_server.drift import crud
from fleet_server.drift.models import DriftEpisodePublic, DriftEpisodeRow
from fleet_server.drift.policy import actions_for

router = APIRouter(prefix="/drift", tags=["drift"])


class CohortPublic(BaseModel):
    profile: str
    model_name: str
    model_version: str
    label: str
    devices: int
    alarming_devices: int
    verdict: str  # population_shift | device_anomaly | stable
    population_shift: dict[str, Any] | None
    anomalies: list[dict[str, Any]]
    actions: list[dict[str, Any]]
    classification: dict[int, str]


def _public(row: DriftEpisodeRow, classification: str = "") -> DriftEpisodePublic:
    return DriftEpisodePublic.model_validate(row, update={"classification": classification})


def _verdicts(session: SessionDep) -> dict[int, str]:
    out: dict[int, str] = {}
    for report in crud.cohort_reports(session=session):
        out.update(report.classification)
    return out


@router.get("/episodes", response_model=list[DriftEpisodePublic])
def list_episodes(
    *,
    session: SessionDep,
    _: Viewer,
    device_id: IdQuery = None,
    state: Annotated[str | None, Query(pattern="^(open|closed)$")] = None,
    model_version: IdQuery = None,
    limit: Annotated[int, page_size(5000)] = 100,
    offset: Offset = 0,
) -> list[DriftEpisodePublic]:
    rows = crud.list_episodes(
        session=session,
        device_id=device_id,
        state=state,
        model_version=model_version,
        limit=limit,
        offset=offset,
    )
    verdicts = _verdicts(session) if rows else {}
    return [_public(r, verdicts.get(int(r.id or 0), "")) for r in rows]


@router.get("/episodes/{episode_row_id}", response_model=DriftEpisodePublic, responses=NOT_FOUND)
def get_episode(episode_row_id: RowId, session: SessionDep, _: Viewer) -> DriftEpisodePublic:
    row = crud.get_episode(session=session, episode_row_id=episode_row_id)
    return _public(row, _verdicts(session).get(episode_row_id, ""))


@router.get("/cohorts", response_model=list[CohortPublic])
def cohorts(
    session: SessionDep,
    _: Viewer,
    label: Annotated[
        str | None, Query(description="also group by this device label", pattern=LABEL_KEY_PATTERN)
    ] = None,
    since_ms: SinceMs = 0,
) -> list[CohortPublic]:
    out = []
    for r in crud.cohort_reports(session=session, label=label, since_ms=since_ms):
        verdict = "population_shift" if r.population_shift else "device_anomaly" if r.anomalies else "stable"
        out.append(
            CohortPublic(
                **asdict(r.key),
                devices=r.devices,
                alarming_devices=r.alarming_devices,
                verdict=verdict,
                population_shift=asdict(r.population_shift) if r.population_shift else None,
                anomalies=[asdict(a) for a in r.anomalies],
                actions=[{**asdict(a), "cohort": asdict(a.cohort)} for a in actions_for(r)],
                classification=r.classification,
            )
        )
    return out


class FeatureSketchPublic(BaseModel):
    feature: str
    device_samples: int
    psi_vs_reference: float
    psi_vs_cohort: float
    cohort_psi_vs_reference: float


class DeviceSketchPublic(BaseModel):
    device_id: str
    model_version: str
    features: list[FeatureSketchPublic]


@router.get("/devices/{device_id}/sketch", response_model=DeviceSketchPublic, responses=NOT_FOUND)
def device_sketch(device_id: DeviceIdPath, session: SessionDep, _: Viewer) -> DeviceSketchPublic:
    """The device's merged decile sketch vs the reference and vs the rest of its cohort (PSI per feature)."""
    version, rows = crud.device_sketch(session=session, device_id=device_id)
    features = [FeatureSketchPublic(**asdict(r)) for r in rows]
    return DeviceSketchPublic(device_id=device_id, model_version=version, features=features)

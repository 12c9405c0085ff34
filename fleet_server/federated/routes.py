"""Federated REST routes: start a run (operator), list runs and show one run's rounds (viewer).

A run that names a registry `model` starts from that model's head (its newest version, or
`model_version`) and hands its final head back to the registry, which compiles and releases it.
Otherwise it starts from the previous completed run's final model when `from_last` is set, or
from a zero softmax head of the requested size (`features` x `classes`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from flwr.app import Array, ArrayRecord
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from fleet_server.api.deps import Operator, SessionDep, Viewer
from fleet_server.errors import InvalidRequestError, NotFoundError
from fleet_server.federated.cohort import CohortFilter, CohortSpec
from fleet_server.federated.models import FlRound, FlRun
from fleet_server.federated.runner import RunSpec
from fleet_server.federated.secagg import SecAggParams
from fleet_server.federated.strategy import StrategySpec
from fleet_server.federated.trigger import DriftRetrainTrigger
from fleet_server.federated.wiring import FederatedRuntime
from fleet_server.registry.service import ModelRegistry

router = APIRouter(prefix="/federated", tags=["federated"])


class RunRequest(BaseModel):
    strategy: str = "fedavg"
    rounds: int = Field(default=3, ge=1, le=1000)
    min_nodes: int = Field(default=2, ge=1)
    max_nodes: int = Field(default=0, ge=0)  # 0 = no cap; else a fresh sample of at most this many per round
    fraction: float = Field(default=1.0, gt=0, le=1)
    malicious: int = Field(default=0, ge=0)
    round_timeout_s: float = Field(default=60.0, gt=0)
    norm_bound: float = Field(default=0.0, ge=0)
    secure_aggregation: bool = False
    secagg_clip: float = Field(default=1.0, gt=0)
    dp_noise_multiplier: float = Field(default=0.0, ge=0)
    dp_clip: float = Field(default=1.0, gt=0)
    lr: float = Field(default=0.1, gt=0)
    local_epochs: int = Field(default=1, ge=1)
    labels: dict[str, str] = Field(default_factory=dict)
    profile: str = ""
    drifted_only: bool = False
    require_conditions: list[str] = Field(default_factory=list)
    features: int = Field(default=64, ge=1)
    classes: int = Field(default=10, ge=2)
    from_last: bool = False
    model: str = Field(default="", max_length=128)
    model_version: int | None = Field(default=None, ge=1)


def _initial(
    req: RunRequest, session: SessionDep, out_dir: Path, models: ModelRegistry
) -> tuple[ArrayRecord, int]:
    if req.model:
        version, head = models.head(session, req.model, req.model_version)
        return ArrayRecord({k: Array(v) for k, v in head.items()}), version.version
    if req.from_last:
        last = session.exec(
            select(FlRun).where(FlRun.status == "completed").order_by(col(FlRun.finished_at).desc())
        ).first()
        if last is not None and (out_dir / last.id / "final.npz").exists():
            data = np.load(out_dir / last.id / "final.npz")
            return ArrayRecord({k: Array(data[k]) for k in data.files}), 0
    w = np.zeros((req.features, req.classes), np.float32)
    return ArrayRecord({"w": Array(w), "b": Array(np.zeros(req.classes, np.float32))}), 0


def _spec(req: RunRequest, parent_version: int = 0) -> RunSpec:
    return RunSpec(
        strategy=StrategySpec(req.strategy, req.min_nodes, req.fraction, req.malicious),
        num_rounds=req.rounds,
        round_timeout_s=req.round_timeout_s,
        norm_bound=req.norm_bound,
        secure_aggregation=req.secure_aggregation,
        secagg=SecAggParams(clip=req.secagg_clip),
        train_config={"lr": req.lr, "local-epochs": req.local_epochs},
        dp_noise_multiplier=req.dp_noise_multiplier,
        dp_clip=req.dp_clip,
        cohort={"labels": [f"{k}={v}" for k, v in req.labels.items()], "profile": req.profile},
        model=req.model,
        parent_version=parent_version,
    )


@router.post("/runs", status_code=202)
def start_run(req: RunRequest, request: Request, session: SessionDep, _: Operator) -> dict[str, str]:
    fl: FederatedRuntime = request.app.state.federated
    if 0 < req.max_nodes < req.min_nodes:
        raise InvalidRequestError(f"max_nodes {req.max_nodes} is below min_nodes {req.min_nodes}")
    cohort = CohortSpec(
        req.labels, req.profile, tuple(req.require_conditions), True, req.drifted_only, req.max_nodes
    )
    fl.grid.eligible = CohortFilter(engine=request.app.state.engine, spec=cohort, conditions=fl.grid.state_of)
    initial, parent_version = _initial(req, session, fl.runner.out_dir, request.app.state.models)
    run_id = fl.runner.start(_spec(req, parent_version), initial)
    return {"run_id": run_id}


@router.put("/auto-retrain")
def enable_auto_retrain(
    req: RunRequest, request: Request, _: Operator, interval_s: float = 30.0
) -> dict[str, bool]:
    """Let the drift policy open runs (with these settings) for drifted cohorts automatically."""
    fl: FederatedRuntime = request.app.state.federated
    engine = request.app.state.engine
    out_dir = fl.runner.out_dir
    models: ModelRegistry = request.app.state.models
    if req.model:
        with Session(engine) as s:
            models.head(s, req.model, req.model_version)  # fail now (404/422), not in the trigger thread

    def initial() -> ArrayRecord:
        with Session(engine) as s:  # a registry model: its newest version at the time of the drift
            return _initial(
                req.model_copy(update={"from_last": True, "model_version": None}), s, out_dir, models
            )[0]

    trigger = DriftRetrainTrigger(
        engine=engine, grid=fl.grid, runner=fl.runner, spec=_spec(req), initial=initial, interval_s=interval_s
    )
    fl.set_trigger(trigger)
    return {"enabled": True}


@router.delete("/auto-retrain")
def disable_auto_retrain(request: Request, _: Operator) -> dict[str, bool]:
    fl: FederatedRuntime = request.app.state.federated
    fl.set_trigger(None)
    return {"enabled": False}


@router.get("/runs")
def list_runs(session: SessionDep, _: Viewer, limit: int = 20) -> list[dict[str, Any]]:
    rows = session.exec(select(FlRun).order_by(col(FlRun.created_at).desc()).limit(limit)).all()
    return [r.model_dump(mode="json") for r in rows]


@router.get("/runs/{run_id}")
def show_run(run_id: str, request: Request, session: SessionDep, _: Viewer) -> dict[str, Any]:
    run = session.get(FlRun, run_id)
    if run is None:
        raise NotFoundError(f"no federated run {run_id!r}")
    rounds = session.exec(
        select(FlRound).where(FlRound.run_id == run_id).order_by(col(FlRound.server_round))
    ).all()
    fl: FederatedRuntime = request.app.state.federated
    return {
        "run": run.model_dump(mode="json"),
        "rounds": [r.model_dump(mode="json") for r in rounds],
        "online_devices": len(list(fl.grid.get_node_ids())),
    }

"""Federated REST routes: start and cancel a run, toggle auto-retrain (operator); list runs,
show one run's rounds, show the auto-retrain state (viewer).

A run that names a registry `model` starts from that model's head (its newest version, or
`model_version`) and hands its final head back to the registry, which compiles and releases it.
Otherwise it starts from the previous completed run's final model when `from_last` is set (a
409 when that run's files are on another replica's disk, never a silent zero start), or
from a zero softmax head of the requested size (`features` x `classes`).

Every field is bounded in the schema (limits.py), so a bad body is a 422 before anything runs;
a run in progress anywhere in the fleet is a 409 before the initial model is built, so a refused
start allocates nothing. Any replica records the run; the `federated-runner` lease holder
executes it (scheduler.py). The auto-retrain policy is stored in the database (autoretrain.py):
any replica's PUT/GET/DELETE sees the same policy, and the `drift-trigger` holder runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from flwr.app import Array, ArrayRecord
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from fleet_server.api.deps import Operator, SessionDep, Viewer
from fleet_server.api.params import INT32_MAX, Labels, NoNul
from fleet_server.audit.port import operator_actor
from fleet_server.errors import ConflictError, InvalidRequestError, NotFoundError
from fleet_server.federated import limits as lim
from fleet_server.federated.cohort import CohortSpec
from fleet_server.federated.models import FlRound, FlRun
from fleet_server.federated.runner import RunSpec
from fleet_server.federated.secagg import SecAggParams
from fleet_server.federated.strategy import LINEAR, ROBUST, StrategySpec
from fleet_server.federated.trigger import DriftRetrainTrigger
from fleet_server.registry.service import ModelRegistry

if TYPE_CHECKING:
    from fleet_server.federated.wiring import FederatedRuntime

router = APIRouter(prefix="/federated", tags=["federated"])

Condition = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NoNul)]
STRATEGIES = tuple(sorted(LINEAR | ROBUST))


def _known_strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return name


StrategyName = Annotated[
    str,
    AfterValidator(_known_strategy),
    WithJsonSchema({"type": "string", "enum": list(STRATEGIES), "description": "Flower strategy"}),
]
RunId = Annotated[str, PathParam(min_length=1, max_length=64, description="federated run id")]


class RunRequest(BaseModel):
    """A federated run's settings; every number is finite and within limits.py's bounds."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    strategy: StrategyName = "fedavg"
    rounds: int = Field(default=3, ge=1, le=lim.MAX_ROUNDS)
    min_nodes: int = Field(default=2, ge=1, le=lim.MAX_NODES)
    max_nodes: int = Field(default=0, ge=0, le=lim.MAX_NODES)  # 0 = no cap; else at most this many per round
    fraction: float = Field(default=1.0, gt=0, le=1)
    malicious: int = Field(default=0, ge=0, le=lim.MAX_NODES)
    round_timeout_s: float = Field(default=60.0, ge=lim.MIN_ROUND_TIMEOUT_S, le=lim.MAX_ROUND_TIMEOUT_S)
    norm_bound: float = Field(default=0.0, ge=0, le=lim.MAX_NORM_BOUND)
    clipping_norm: float = Field(
        default=0.0,
        ge=0,
        le=lim.MAX_NORM_BOUND,
        description="device-side: each device clips its update's L2 norm to this before upload (and "
        "before masking under secure aggregation); 0 = off",
    )
    secure_aggregation: bool = False
    secagg_clip: float = Field(default=1.0, ge=lim.MIN_SECAGG_CLIP, le=lim.MAX_SECAGG_CLIP)
    dp_noise_multiplier: float = Field(
        default=0.0, ge=0, le=lim.MAX_DP_NOISE, description=f"0 = off, else >= {lim.MIN_DP_NOISE}"
    )
    dp_clip: float = Field(default=1.0, ge=lim.MIN_DP_CLIP, le=lim.MAX_DP_CLIP)
    dp_delta: float = Field(default=1e-5, ge=lim.MIN_DP_DELTA, le=lim.MAX_DP_DELTA)
    lr: float = Field(default=0.1, gt=0, le=lim.MAX_LR)
    local_epochs: int = Field(default=1, ge=1, le=lim.MAX_LOCAL_EPOCHS)
    labels: Labels = Field(default_factory=dict, max_length=lim.MAX_LABELS)
    profile: str = Field(default="", max_length=128, pattern=NoNul)
    drifted_only: bool = False
    require_conditions: list[Condition] = Field(default_factory=list, max_length=lim.MAX_CONDITIONS)
    features: int = Field(default=64, ge=1, le=lim.MAX_FEATURES)
    classes: int = Field(default=10, ge=2, le=lim.MAX_CLASSES)
    from_last: bool = False
    model: str = Field(default="", max_length=128, pattern=NoNul)
    model_version: int | None = Field(default=None, ge=1, le=INT32_MAX)  # INTEGER on PostgreSQL

    @model_validator(mode="after")
    def _consistent(self) -> RunRequest:
        if 0 < self.dp_noise_multiplier < lim.MIN_DP_NOISE:
            raise ValueError(f"dp_noise_multiplier must be 0 (off) or at least {lim.MIN_DP_NOISE}")
        if self.malicious >= self.min_nodes:
            raise ValueError(f"malicious {self.malicious} must be below min_nodes {self.min_nodes}")
        size = lim.head_bytes(self.features, self.classes)
        if size > lim.MAX_HEAD_BYTES:
            raise ValueError(
                f"a {self.features} x {self.classes} head is {size} bytes; at most {lim.MAX_HEAD_BYTES}"
            )
        return self


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=400, description="why (recorded on the run)")


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
        if last is not None:
            final = out_dir / last.id / "final.npz"
            if not final.exists():  # with replicas, run files are on the runner replica's disk
                raise ConflictError(
                    f"from_last: the final model of run {last.id} is not on this replica "
                    f"(it ran on {last.runner or 'another replica'}); start the run there, or name a "
                    "registry model (`model`), which every replica reads from the database"
                )
            data = np.load(final)
            return ArrayRecord({k: Array(data[k]) for k in data.files}), 0
    w = np.zeros((req.features, req.classes), np.float32)
    return ArrayRecord({"w": Array(w), "b": Array(np.zeros(req.classes, np.float32))}), 0


def _spec(req: RunRequest, parent_version: int = 0) -> RunSpec:
    train: dict[str, float | int | str] = {"lr": req.lr, "local-epochs": req.local_epochs}
    if req.clipping_norm > 0:  # 0 = off: not sent, so older agents see the config they know
        train["clipping_norm"] = req.clipping_norm
    return RunSpec(
        strategy=StrategySpec(req.strategy, req.min_nodes, req.fraction, req.malicious),
        num_rounds=req.rounds,
        round_timeout_s=req.round_timeout_s,
        norm_bound=req.norm_bound,
        secure_aggregation=req.secure_aggregation,
        secagg=SecAggParams(clip=req.secagg_clip),
        train_config=train,
        dp_noise_multiplier=req.dp_noise_multiplier,
        dp_clip=req.dp_clip,
        dp_delta=req.dp_delta,
        cohort={"labels": [f"{k}={v}" for k, v in req.labels.items()], "profile": req.profile},
        model=req.model,
        parent_version=parent_version,
    )


@router.post("/runs", status_code=202)
def start_run(req: RunRequest, request: Request, session: SessionDep, operator: Operator) -> dict[str, str]:
    """Validate (422), refuse while a run is in progress (409), then build the initial model and
    record the run for the runner replica."""
    fl: FederatedRuntime = request.app.state.federated
    if 0 < req.max_nodes < req.min_nodes:
        raise InvalidRequestError(f"max_nodes {req.max_nodes} is below min_nodes {req.min_nodes}")
    fl.runner.validate(_spec(req))
    cohort = CohortSpec(
        req.labels, req.profile, tuple(req.require_conditions), True, req.drifted_only, req.max_nodes
    )
    fl.scheduler.check_idle()
    initial, parent_version = _initial(req, session, fl.runner.out_dir, request.app.state.models)
    run_id = fl.scheduler.submit(
        _spec(req, parent_version),
        initial,
        eligible={"cohort": asdict(cohort)},
        actor=operator_actor(operator),
    )
    return {"run_id": run_id}


@router.post("/runs/{run_id}/cancel")
def cancel_run(
    run_id: RunId, request: Request, operator: Operator, body: CancelRequest | None = None
) -> dict[str, Any]:
    """Stop a running run at once (its round is abandoned) and free the slot; 409 if it already ended."""
    fl: FederatedRuntime = request.app.state.federated
    reason = body.reason if body is not None else ""
    run = fl.scheduler.cancel(run_id, by=operator.name, reason=reason, actor=operator_actor(operator))
    return run.model_dump(mode="json")


Interval = Annotated[
    float,
    Query(
        ge=lim.MIN_TRIGGER_INTERVAL_S,
        le=lim.MAX_TRIGGER_INTERVAL_S,
        allow_inf_nan=False,
        description="seconds between drift checks",
    ),
]


@router.put("/auto-retrain")
def enable_auto_retrain(
    req: RunRequest, request: Request, operator: Operator, interval_s: Interval = 30.0
) -> dict[str, Any]:
    """Let the drift policy open runs (with these settings) for drifted cohorts automatically."""
    fl: FederatedRuntime = request.app.state.federated
    return fl.autoretrain.enable(req.model_dump(mode="json"), interval_s, by=operator.name)


@router.get("/auto-retrain")
def auto_retrain_status(request: Request, _: Viewer) -> dict[str, Any]:
    """Whether auto-retrain is on, which replica runs it and what it has done (checks, errors, last run)."""
    fl: FederatedRuntime = request.app.state.federated
    return fl.trigger_status()


@router.delete("/auto-retrain")
def disable_auto_retrain(request: Request, operator: Operator) -> dict[str, bool]:
    fl: FederatedRuntime = request.app.state.federated
    fl.autoretrain.disable(by=operator.name)
    return {"enabled": False}


def trigger_factory(
    fl: FederatedRuntime, engine: Engine, models: Callable[[], ModelRegistry] | None
) -> Callable[[dict[str, Any], float], DriftRetrainTrigger]:
    """Builds the drift trigger of a stored policy (a RunRequest body and an interval) for the
    `drift-trigger` holder; refuses what PUT would (a bad body, an unknown registry model)."""

    def make(body: dict[str, Any], interval_s: float) -> DriftRetrainTrigger:
        req = RunRequest.model_validate(body)
        registry = models() if models is not None else None
        if req.model:
            if registry is None:
                raise InvalidRequestError("the model registry is not ready")
            with Session(engine) as s:
                registry.head(s, req.model, req.model_version)  # fail now (404/422), not in the trigger

        def initial() -> ArrayRecord:
            with Session(engine) as s:  # a registry model: its newest version at the time of the drift
                latest = req.model_copy(update={"from_last": True, "model_version": None})
                return _initial(latest, s, fl.runner.out_dir, registry)[0]  # type: ignore[arg-type]

        return DriftRetrainTrigger(
            engine=engine, grid=fl.grid, runner=fl.scheduler, spec=_spec(req), initial=initial,
            interval_s=interval_s,
        )  # fmt: skip

    return make


@router.get("/runs")
def list_runs(
    session: SessionDep, _: Viewer, limit: Annotated[int, Query(ge=1, le=500)] = 20
) -> list[dict[str, Any]]:
    rows = session.exec(select(FlRun).order_by(col(FlRun.created_at).desc()).limit(limit)).all()
    return [r.model_dump(mode="json") for r in rows]


@router.get("/runs/{run_id}")
def show_run(run_id: RunId, request: Request, session: SessionDep, _: Viewer) -> dict[str, Any]:
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

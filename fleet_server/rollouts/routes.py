"""Rollout REST routes under /api/v1/rollouts: create, list, show, devices, gate results, and the
operator actions start / pause / resume / abort / rollback.

Reads are for viewers; creating and every action are operator actions (a viewer gets a 403).
Thin: validation in schemas.py, work in `RolloutEngine` (an action runs its step and effects
before answering, so the answer shows the new state). Errors: unknown rollout or release 404, a
state that refuses the action or overlapping rollouts 409, bad plans or releases 422.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from sqlmodel import Session, col, func, select

from fleet_server.api.deps import Operator, SessionDep, Viewer
from fleet_server.api.errors import CONFLICT, NOT_FOUND
from fleet_server.api.params import IdPath, NamePath, Offset, page_size
from fleet_server.audit.port import operator_actor
from fleet_server.errors import NotFoundError
from fleet_server.rollouts.engine import RolloutEngine
from fleet_server.rollouts.models import Rollout, RolloutBatch, RolloutDevice, RolloutGateResult
from fleet_server.rollouts.schemas import (
    Action,
    BatchPublic,
    DevicePublic,
    GateResultPublic,
    RolloutCreate,
    RolloutDetail,
    RolloutPolicy,
    RolloutPolicyPublic,
    RolloutPublic,
)
from fleet_server.rollouts.states import RolloutEvent, RolloutState

router = APIRouter(prefix="/rollouts", tags=["rollouts"])


def get_rollouts(request: Request) -> RolloutEngine:
    engine: RolloutEngine = request.app.state.rollouts
    return engine


RolloutsDep = Annotated[RolloutEngine, Depends(get_rollouts)]
StateQuery = Annotated[RolloutState | None, Query(description="only rollouts in this state")]
BatchQuery = Annotated[int | None, Query(ge=0, le=1000, description="only this batch")]


def _counts(session: Session, rollout_ids: list[str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {r: {} for r in rollout_ids}
    if not rollout_ids:
        return out
    stmt = (
        select(RolloutDevice.rollout_id, RolloutDevice.status, func.count())
        .where(col(RolloutDevice.rollout_id).in_(rollout_ids))
        .group_by(col(RolloutDevice.rollout_id), col(RolloutDevice.status))
    )
    for rid, status, n in session.exec(stmt).all():
        out[rid][status] = int(n)
    return out


def _public(row: Rollout, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "state": row.state,
        "batch": row.batch,
        "batches": row.batches,
        "on_breach": row.on_breach,
        "reason": row.reason,
        "transition": row.transition,
        "releases": row.releases,
        "selector": row.selector,
        "batch_spec": row.batch_spec,
        "gates": row.gates,
        "rollback": {k: v for k, v in row.rollback.items() if not k.startswith("_")},
        "devices": counts,
        "created_by": row.created_by,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def _gate(r: RolloutGateResult) -> GateResultPublic:
    return GateResultPublic.model_validate(r, from_attributes=True)


def describe(session: Session, rollout_id: str) -> RolloutDetail:
    row = session.get(Rollout, rollout_id)
    if row is None:
        raise NotFoundError(f"rollout {rollout_id} not found")
    devices = session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)).all()
    per_batch: dict[int, Counter[str]] = {}
    for d in devices:
        per_batch.setdefault(d.batch, Counter())[d.status] += 1
    batches = session.exec(
        select(RolloutBatch).where(RolloutBatch.rollout_id == rollout_id).order_by(col(RolloutBatch.index))
    ).all()
    plan = [
        BatchPublic(
            index=b.index,
            size=len(b.devices),
            assigned_at=b.assigned_at,
            settled_at=b.settled_at,
            looks=b.looks,
            deployments={str(k): str(v) for k, v in b.deployments.items()},
            devices=dict(per_batch.get(b.index, Counter())),
        )
        for b in batches
    ]
    latest: list[GateResultPublic] = []
    if row.batch >= 0:
        newest = session.exec(
            select(RolloutGateResult)
            .where(RolloutGateResult.rollout_id == rollout_id, RolloutGateResult.batch == row.batch)
            .order_by(col(RolloutGateResult.id).desc())
            .limit(50)
        ).all()
        seen: set[str] = set()
        for r in newest:  # the newest result of each gate
            if r.gate not in seen:
                seen.add(r.gate)
                latest.append(_gate(r))
        latest.sort(key=lambda g: g.gate)
    counts = dict(Counter(d.status for d in devices))
    return RolloutDetail.model_validate({**_public(row, counts), "plan": plan, "latest_gates": latest})


@router.post("", response_model=RolloutDetail, status_code=201, responses=NOT_FOUND | CONFLICT)
def create_rollout(
    spec: RolloutCreate, session: SessionDep, rollouts: RolloutsDep, operator: Operator
) -> RolloutDetail:
    rid = rollouts.create(spec, operator_actor(operator))
    return describe(session, rid)


@router.get("", response_model=list[RolloutPublic])
def list_rollouts(
    session: SessionDep,
    _: Viewer,
    state: StateQuery = None,
    limit: Annotated[int, page_size(500)] = 100,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    stmt = select(Rollout).order_by(col(Rollout.created_at).desc(), col(Rollout.id))
    if state is not None:
        stmt = stmt.where(Rollout.state == state.value)
    rows = session.exec(stmt.offset(offset).limit(limit)).all()
    counts = _counts(session, [r.id for r in rows])
    return [_public(r, counts[r.id]) for r in rows]


@router.get("/policies/{model_name}", response_model=RolloutPolicyPublic)
def show_policy(model_name: NamePath, rollouts: RolloutsDep, _: Viewer) -> RolloutPolicyPublic:
    """How approved (and auto-released) versions of a registered model roll out."""
    policy, stored = rollouts.policy(model_name)
    return RolloutPolicyPublic(**policy.model_dump(), model_name=model_name, stored=stored)


@router.put("/policies/{model_name}", response_model=RolloutPolicyPublic)
def set_policy(
    model_name: NamePath, body: RolloutPolicy, rollouts: RolloutsDep, operator: Operator
) -> RolloutPolicyPublic:
    rollouts.set_policy(model_name, body, operator_actor(operator))
    return RolloutPolicyPublic(**body.model_dump(), model_name=model_name, stored=True)


@router.get("/{rollout_id}", response_model=RolloutDetail, responses=NOT_FOUND)
def show_rollout(rollout_id: IdPath, session: SessionDep, _: Viewer) -> RolloutDetail:
    return describe(session, rollout_id)


@router.get("/{rollout_id}/devices", response_model=list[DevicePublic], responses=NOT_FOUND)
def rollout_devices(
    rollout_id: IdPath,
    session: SessionDep,
    _: Viewer,
    limit: Annotated[int, page_size(10000)] = 1000,
    offset: Offset = 0,
) -> list[RolloutDevice]:
    if session.get(Rollout, rollout_id) is None:
        raise NotFoundError(f"rollout {rollout_id} not found")
    stmt = select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)
    order = (col(RolloutDevice.batch), col(RolloutDevice.device_id))
    return list(session.exec(stmt.order_by(*order).offset(offset).limit(limit)).all())


@router.get("/{rollout_id}/gates", response_model=list[GateResultPublic], responses=NOT_FOUND)
def rollout_gates(
    rollout_id: IdPath,
    session: SessionDep,
    _: Viewer,
    batch: BatchQuery = None,
    limit: Annotated[int, page_size(5000)] = 500,
    offset: Offset = 0,
) -> list[GateResultPublic]:
    """Every stored gate evaluation (statistic, p or e value, samples, verdict), oldest first."""
    if session.get(Rollout, rollout_id) is None:
        raise NotFoundError(f"rollout {rollout_id} not found")
    stmt = select(RolloutGateResult).where(RolloutGateResult.rollout_id == rollout_id)
    if batch is not None:
        stmt = stmt.where(RolloutGateResult.batch == batch)
    rows = session.exec(stmt.order_by(col(RolloutGateResult.id)).offset(offset).limit(limit)).all()
    return [_gate(r) for r in rows]


def _action(event: RolloutEvent, doc: str) -> None:
    def act(
        rollout_id: IdPath,
        session: SessionDep,
        rollouts: RolloutsDep,
        operator: Operator,
        body: Action | None = None,
    ) -> RolloutDetail:
        rollouts.act(rollout_id, event, operator_actor(operator), (body or Action()).reason)
        return describe(session, rollout_id)

    act.__doc__ = doc
    act.__name__ = f"{event.value}_rollout"
    router.post(
        f"/{{rollout_id}}/{event.value}",
        response_model=RolloutDetail,
        responses=NOT_FOUND | CONFLICT,
        name=act.__name__,
    )(act)


_action(RolloutEvent.START, "Start a draft rollout: assigns its first batch.")
_action(RolloutEvent.PAUSE, "Pause: no further batch is assigned until resumed.")
_action(
    RolloutEvent.RESUME, "Resume a paused rollout (after a breach: an override, the next batch is assigned)."
)
_action(RolloutEvent.ABORT, "Abort: no further batch; devices already assigned keep what they installed.")
_action(
    RolloutEvent.ROLLBACK,
    "Roll every device that got the release back to its previous model (a new release).",
)

"""SQLModel tables of rollouts (changed together with migrations/versions/0010_audit_rollouts.py).

`rollout` holds the spec (release, selector, batch plan spec, gate config, breach policy), the
machine's persisted `RolloutRecord` fields and a lease for the replica advancing it;
`rollout_batch` the planned devices of each batch and when it was assigned and settled;
`rollout_device` each targeted device's progress (and, after a rollback, its return to the
previous model: devices that never report stay `unknown`); `rollout_hold` one row per device
held by an active rollout (primary key = device id: the database refuses a second active rollout
on a device); `rollout_gate_result` every gate evaluation as shown to operators. Conversion
between a row and the machine's record lives here too (`to_record`, `store_record`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

from fleet_server.models import UtcDateTime
from fleet_server.rollouts.machine import RolloutRecord
from fleet_server.rollouts.states import BreachPolicy, RolloutState

# Device progress within a rollout (strings, persisted as they are).
DEVICE_PENDING = "pending"  # planned into a later batch
DEVICE_ASSIGNED = "assigned"
DEVICE_COMMITTED = "committed"
DEVICE_FAILED = "failed"
DEVICE_SILENT = "silent"  # no report within the install timeout: counts as a failure
DEVICE_ROLLING_BACK = "rolling_back"
DEVICE_ROLLED_BACK = "rolled_back"  # reported the previous model committed
DEVICE_UNKNOWN = "unknown"  # never reported after the rollback; never silently "done"


def _ts(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(UtcDateTime(), nullable=nullable))


def _json() -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


def _json_list() -> Any:
    return Field(default_factory=list, sa_column=Column(JSON, nullable=False))


def _bigint(default: int = 0) -> Any:
    return Field(default=default, sa_column=Column(BigInteger, nullable=False, default=default))


class Rollout(SQLModel, table=True):
    __tablename__ = "rollout"

    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(default="", max_length=128)
    release_seq: int = _bigint()
    previous_release_seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    rollback_release_seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    selector: dict[str, Any] = _json()  # {"labels": {...}, "profiles": [...]}
    batch_spec: dict[str, Any] = _json()  # planning.BatchSpec fields
    gates: dict[str, Any] = _json()  # gate configuration (alpha, margins, windows, timeouts)
    on_breach: str = Field(default=BreachPolicy.PAUSE.value, max_length=16)
    state: str = Field(default=RolloutState.DRAFT.value, max_length=16, index=True)
    batch: int = Field(default=-1)
    batches: int = Field(default=1)
    paused_from: str = Field(default="", max_length=16)
    paused_by_breach: bool = False
    reason: str = Field(default="", max_length=1024)
    transition: int = _bigint()
    lease_owner: str = Field(default="", max_length=64)
    lease_expires_at: datetime | None = _ts()
    # Migration 0012 (engine): one release per profile [{"seq", "profiles", "sha256", "model_name",
    # "model_version"}]; the effects of `transition` not run yet (engine.py runs them before the
    # next step); the rollback releases {str(previous seq): {"release_seq", "deployment_id",
    # "devices"}}; a fencing token bumped at every claim.
    releases: list[dict[str, Any]] = _json_list()
    pending_effects: list[dict[str, Any]] = _json_list()
    rollback: dict[str, Any] = _json()
    lease_token: int = _bigint()
    created_by: str = Field(default="", max_length=128)
    created_at: datetime | None = _ts()
    updated_at: datetime | None = _ts()


class RolloutBatch(SQLModel, table=True):
    __tablename__ = "rollout_batch"
    __table_args__ = (UniqueConstraint("rollout_id", "index", name="uq_rollout_batch_index"),)

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: str = Field(max_length=32, index=True)
    index: int
    devices: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    assigned_at: datetime | None = _ts()
    settled_at: datetime | None = _ts()
    looks: int = 0  # gate evaluations so far (alpha spending)
    gate_state: dict[str, Any] = _json()  # per gate: running always-valid p
    deployments: dict[str, Any] = _json()  # str(release seq) -> deployment id (migration 0012)


class RolloutDevice(SQLModel, table=True):
    __tablename__ = "rollout_device"

    rollout_id: str = Field(primary_key=True, max_length=32)
    device_id: str = Field(primary_key=True, max_length=128, index=True)
    batch: int
    status: str = Field(default=DEVICE_PENDING, max_length=16)
    detail: str = Field(default="", max_length=1024)
    updated_at: datetime | None = _ts()
    # Migration 0012: the device's profile and the release it gets, the deployment that assigned
    # it, the release it had committed before (what a rollback returns it to) and the rollback's
    # deployment.
    profile: str = Field(default="", max_length=64)
    release_seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    deployment_id: str = Field(default="", max_length=64)
    previous_release_seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    rollback_deployment_id: str = Field(default="", max_length=64)


class RolloutHold(SQLModel, table=True):
    __tablename__ = "rollout_hold"

    device_id: str = Field(primary_key=True, max_length=128)
    rollout_id: str = Field(max_length=32, index=True)


class RolloutPolicyRow(SQLModel, table=True):
    """A registered model's rollout policy (schemas.RolloutPolicy as JSON; migration 0012)."""

    __tablename__ = "rollout_policy"

    model_name: str = Field(primary_key=True, max_length=128)
    policy: dict[str, Any] = _json()
    updated_by: str = Field(default="", max_length=128)
    updated_at: datetime | None = _ts()


class RolloutGateResult(SQLModel, table=True):
    __tablename__ = "rollout_gate_result"

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    rollout_id: str = Field(max_length=32, index=True)
    batch: int
    look: int
    gate: str = Field(max_length=64)
    verdict: str = Field(max_length=16)
    statistic: float = 0.0
    p_value: float = 1.0
    e_value: float | None = None
    threshold: float = 0.0
    effect: float = 0.0
    samples_canary: int = _bigint()
    samples_control: int = _bigint()
    devices_canary: int = 0
    devices_control: int = 0
    detail: str = Field(default="", max_length=1024)
    evaluated_at: datetime | None = _ts()
    value_canary: float | None = None  # what the console plots canary vs control (gates.GateResult)
    value_control: float | None = None


def to_record(row: Rollout) -> RolloutRecord:
    return RolloutRecord(
        rollout_id=row.id,
        batches=row.batches,
        state=RolloutState(row.state),
        batch=row.batch,
        on_breach=BreachPolicy(row.on_breach),
        paused_from=RolloutState(row.paused_from) if row.paused_from else None,
        paused_by_breach=row.paused_by_breach,
        reason=row.reason,
        transition=row.transition,
    )


def store_record(row: Rollout, record: RolloutRecord) -> None:
    """Copy the machine's record onto the row (the caller commits, before running effects)."""
    if record.rollout_id != row.id:
        raise ValueError(f"record of rollout {record.rollout_id} stored on rollout {row.id}")
    row.state = record.state.value
    row.batch = record.batch
    row.batches = record.batches
    row.on_breach = record.on_breach.value
    row.paused_from = record.paused_from.value if record.paused_from else ""
    row.paused_by_breach = record.paused_by_breach
    row.reason = record.reason[:1024]
    row.transition = record.transition

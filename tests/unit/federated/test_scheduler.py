"""The fleet-wide run slot, the runner takeover and fencing, and the persisted auto-retrain policy,
on SQLite and real PostgreSQL (the scheduler's and AutoRetrain's steps called directly: no threads).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from sqlalchemy import Engine, update
from sqlmodel import Session, select

from fleet_server.audit.port import MemoryAuditLog
from fleet_server.coordination.bus import LocalBus
from fleet_server.coordination.leases import LeaseLost, LeaseStore
from fleet_server.coordination.models import CoordinationLease
from fleet_server.db import make_engine
from fleet_server.errors import ConflictError
from fleet_server.federated import autoretrain, scheduler
from fleet_server.federated.autoretrain import AutoRetrain
from fleet_server.federated.grid import FleetGrid
from fleet_server.federated.lifecycle import RunStatus, replica_lost_reason
from fleet_server.federated.models import FlRound, FlRun
from fleet_server.federated.runner import FederatedRunner, RunSpec, record_of
from fleet_server.federated.scheduler import RunScheduler, arrays_from_bytes, arrays_to_bytes
from fleet_server.federated.strategy import StrategySpec
from fleet_server.federated.trigger import DriftRetrainTrigger
from fleet_server.migrate import upgrade
from fleet_server.models import utcnow


@pytest.fixture
def engine(database_url: str, tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(database_url or f"sqlite:///{tmp_path / 'fl.db'}")
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def model() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.ones((4, 2), np.float32)), "b": Array(np.zeros(2, np.float32))})


def make_scheduler(
    engine: Engine, loop: asyncio.AbstractEventLoop, tmp: Path, rid: str
) -> tuple[RunScheduler, FederatedRunner, MemoryAuditLog]:
    audit = MemoryAuditLog()
    runner = FederatedRunner(engine=engine, grid=FleetGrid(loop=loop), out_dir=tmp / rid, audit=audit)
    runner.replica_id = rid
    sched = RunScheduler(
        engine=engine, runner=runner, leases=LeaseStore(engine), bus=LocalBus(), replica_id=rid,
        audit=audit, eligible_for=lambda saved: None,
    )  # fmt: skip
    return sched, runner, audit


def expire(engine: Engine, name: str) -> None:
    """The holder stopped renewing and its lease ran out (as after a SIGKILL)."""
    with engine.begin() as conn:
        conn.execute(
            update(CoordinationLease).where(CoordinationLease.name == name).values(expires_at=utcnow())
        )


def run_of(engine: Engine, run_id: str) -> FlRun:
    with Session(engine, expire_on_commit=False) as s:
        row = s.get(FlRun, run_id)
        assert row is not None
        return row


def test_initial_arrays_survive_the_trip_through_the_database() -> None:
    back = arrays_from_bytes(arrays_to_bytes(model()))
    assert list(back.keys()) == ["w", "b"]
    np.testing.assert_array_equal(back["w"].numpy(), model()["w"].numpy())


def test_one_running_run_fleet_wide_a_second_start_on_any_replica_is_a_conflict(
    engine: Engine, loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    a, _, _ = make_scheduler(engine, loop, tmp_path, "ra")
    b, _, _ = make_scheduler(engine, loop, tmp_path, "rb")
    spec = RunSpec(StrategySpec("fedavg", min_nodes=1), num_rounds=1)
    first = a.submit(spec, model(), eligible={}, actor=None)
    assert b.busy() and b.running() == first
    with pytest.raises(ConflictError, match=first):
        b.check_idle()
    with pytest.raises(ConflictError, match=first):  # past the check: the partial unique index refuses
        b.submit(spec, model(), eligible={}, actor=None)
    with Session(engine) as s:
        assert len(s.exec(select(FlRun)).all()) == 1


def test_a_new_holder_fails_the_dead_holders_run_once_with_the_round_and_fences_the_old_holder(
    engine: Engine, loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    leases = LeaseStore(engine)
    old = leases.try_acquire(scheduler.LEASE, "ra", 30)
    assert old is not None
    _, runner_a, _ = make_scheduler(engine, loop, tmp_path, "ra")
    spec = RunSpec(StrategySpec("fedavg", min_nodes=1), num_rounds=3)
    with Session(engine) as s:  # the run "ra" executes, in round 2
        s.add(record_of("r" * 32, spec, model(), runner="ra", lease_token=old.token, current_round=2))
        s.commit()

    expire(engine, scheduler.LEASE)
    b, _, audit_b = make_scheduler(engine, loop, tmp_path, "rb")
    new = leases.try_acquire(scheduler.LEASE, "rb", 30)
    assert new is not None and new.token == old.token + 1
    b.on_acquired(new)
    b.tick()
    b.tick()  # idempotent: the end is recorded once
    run = run_of(engine, "r" * 32)
    assert (run.status, run.detail) == ("failed", replica_lost_reason("ra", 2))
    assert run.detail == "runner replica ra lost during round 2"
    assert [e.action for e in audit_b.entries] == ["federated_run.failed"]

    def fence(session: Session) -> None:
        leases.guard(session, old)

    with pytest.raises(LeaseLost):  # the old holder's round write after the takeover
        runner_a._save(FlRound(run_id="r" * 32, server_round=2), fence=fence)
    with pytest.raises(LeaseLost):  # ... and its end
        runner_a._end("r" * 32, RunStatus.COMPLETED, "", fence=fence)
    with Session(engine) as s:
        assert s.exec(select(FlRound)).all() == []
    assert run_of(engine, "r" * 32).detail == "runner replica ra lost during round 2"


def test_the_holder_claims_a_run_recorded_on_another_replica_under_its_token(
    engine: Engine, loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    b, _, _ = make_scheduler(engine, loop, tmp_path, "rb")
    a, runner_a, _ = make_scheduler(engine, loop, tmp_path, "ra")
    grant = LeaseStore(engine).try_acquire(scheduler.LEASE, "ra", 30)
    assert grant is not None
    a.on_acquired(grant)
    spec = RunSpec(StrategySpec("fedavg", min_nodes=1), num_rounds=1, round_timeout_s=1)
    run_id = b.submit(spec, model(), eligible={}, actor=None)  # no device: the run fails on A
    a.tick()
    run = run_of(engine, run_id)
    assert (run.runner, run.lease_token) == ("ra", grant.token)
    runner_a.wait(10)
    run = run_of(engine, run_id)
    assert run.status == "failed" and "only 0 eligible devices" in run.detail


def test_a_lost_lease_abandons_the_run_without_writing(
    engine: Engine, loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    a, runner_a, audit = make_scheduler(engine, loop, tmp_path, "ra")
    grant = LeaseStore(engine).try_acquire(scheduler.LEASE, "ra", 30)
    assert grant is not None
    a.on_acquired(grant)
    spec = RunSpec(StrategySpec("fedavg", min_nodes=1), num_rounds=1, round_timeout_s=60)
    run_id = a.submit(spec, model(), eligible={}, actor=None)
    a.tick()
    assert runner_a.current() == run_id
    a.on_lost()
    assert runner_a.current() is None
    runner_a.wait(10)
    assert run_of(engine, run_id).status == "running"  # left for the next holder to end
    assert [e.action for e in audit.entries] == ["federated_run.started"]


def test_the_auto_retrain_policy_is_shared_and_runs_only_on_the_lease_holder(
    engine: Engine, loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    def factory(rid: str) -> AutoRetrain:
        sched, _, _ = make_scheduler(engine, loop, tmp_path, rid)
        auto = AutoRetrain(engine=engine, leases=LeaseStore(engine), bus=LocalBus(), replica_id=rid)

        def make(body: dict[str, object], interval_s: float) -> DriftRetrainTrigger:
            spec = RunSpec(StrategySpec("fedavg", min_nodes=int(str(body.get("min_nodes", 2)))))
            return DriftRetrainTrigger(
                engine=engine, grid=FleetGrid(loop=loop), runner=sched, spec=spec, initial=model,
                policy=lambda session: [], interval_s=interval_s,
            )  # fmt: skip

        auto.make_trigger = make
        return auto

    x, y = factory("rx"), factory("ry")
    grant = LeaseStore(engine).try_acquire(autoretrain.LEASE, "ry", 30)
    assert grant is not None
    y.on_acquired(grant)
    try:
        assert x.status() == {"enabled": False}
        out = x.enable({"min_nodes": 3}, 5.0, by="op")  # PUT on the replica that does not hold it
        assert out["enabled"] and out["interval_s"] == 5.0 and out["holder"] == "ry"
        assert x.trigger is None
        y.reload()  # the holder's wake-up / poll
        assert y.trigger is not None and y.trigger.status()["alive"]
        y.trigger.check_safely()
        y._report()
        seen = x.status()  # GET on the other replica shows the holder's counters
        assert seen["checks"] == 1 and seen["alive"] and seen["holder"] == "ry"
        x.disable(by="op")
        y.reload()
        assert y.trigger is None and x.status() == {"enabled": False}
    finally:
        y.stop()

"""Rollout tables on real SQLite and PostgreSQL: the machine's record round-trips through a row,
a device can be held by one active rollout only, and gate results are stored as computed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from fleet_server.db import make_engine
from fleet_server.migrate import upgrade
from fleet_server.rollouts.gates import install_gate
from fleet_server.rollouts.machine import Ctx, step
from fleet_server.rollouts.models import (
    Rollout,
    RolloutBatch,
    RolloutGateResult,
    RolloutHold,
    store_record,
    to_record,
)
from fleet_server.rollouts.states import BreachPolicy, RolloutEvent
from fleet_server.settings import Settings


@pytest.fixture
def engine(tmp_path: Path, database_url: str) -> Engine:
    eng = make_engine(Settings(data_dir=tmp_path, database_url=database_url).resolved_database_url())
    upgrade(eng)
    return eng


def test_record_round_trips_through_the_row(engine: Engine) -> None:
    with Session(engine) as s:
        s.add(
            Rollout(
                id="r1",
                release_seq=7,
                batches=3,
                on_breach=BreachPolicy.ROLLBACK.value,
                selector={"labels": {"site": "p3"}},
                created_at=datetime.now(UTC),
            )
        )
        s.add(RolloutBatch(rollout_id="r1", index=0, devices=["d1", "d2"]))
        s.commit()
    with Session(engine) as s:
        row = s.get(Rollout, "r1")
        assert row is not None
        record = to_record(row)
        record, _ = step(record, RolloutEvent.START)
        record, _ = step(record, RolloutEvent.BATCH_SETTLED)
        record, _ = step(record, RolloutEvent.PAUSE, Ctx(actor="alice"))
        store_record(row, record)
        s.add(row)
        s.commit()
    with Session(engine) as s:
        row = s.get(Rollout, "r1")
        assert row is not None
        assert to_record(row) == record
        assert (row.state, row.paused_from, row.transition) == ("paused", "waiting", 3)
        batch = s.exec(select(RolloutBatch).where(RolloutBatch.rollout_id == "r1")).one()
        assert batch.devices == ["d1", "d2"] and batch.gate_state == {}


def test_a_device_is_held_by_one_active_rollout_only(engine: Engine) -> None:
    with Session(engine) as s:
        s.add(RolloutHold(device_id="d1", rollout_id="r1"))
        s.commit()
    with Session(engine) as s:
        s.add(RolloutHold(device_id="d1", rollout_id="r2"))
        with pytest.raises(IntegrityError):
            s.commit()


def test_gate_results_are_stored(engine: Engine) -> None:
    result = install_gate(batch_size=20, committed=17, failed=1, silent=2, max_failure_rate=0.1)
    with Session(engine) as s:
        s.add(
            RolloutGateResult(
                rollout_id="r1",
                batch=0,
                look=1,
                gate=result.gate,
                verdict=result.verdict.value,
                statistic=result.statistic,
                p_value=result.p_value,
                e_value=result.e_value,
                threshold=result.threshold,
                effect=result.effect,
                samples_canary=result.samples[0],
                samples_control=result.samples[1],
                devices_canary=result.devices[0],
                devices_control=result.devices[1],
                detail=result.detail,
                evaluated_at=datetime.now(UTC),
            )
        )
        s.commit()
        stored = s.exec(select(RolloutGateResult)).one()
    assert (stored.verdict, stored.samples_canary, stored.e_value) == ("fail", 20, None)
    assert "2 silent" in stored.detail


def test_a_record_is_stored_only_on_its_own_row() -> None:
    row = Rollout(id="r1", batches=2)
    with pytest.raises(ValueError, match="stored on rollout r1"):
        store_record(row, to_record(Rollout(id="r2", batches=2)))

"""Two rollout engines (two replicas: each its own engine instance, on its own thread) advancing the
same rollouts on one real PostgreSQL, with the real OTA service signing deployments and the real
SQL audit log: every rollout completes, no batch is assigned twice (one deployment per device and
batch, one transition of each number), and a holder that dies between persisting a step and running
its effects leaves the effects listed for the other replica, which takes over after the lease."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from fleet_server.audit.chain import Actor
from fleet_server.audit.store import SqlAuditLog
from fleet_server.db import make_engine
from fleet_server.migrate import upgrade
from fleet_server.models import Device
from fleet_server.ota.models import OtaDeviceStatus, ReleaseCreate
from fleet_server.ota.releases import OtaService
from fleet_server.rollouts.engine import RolloutEngine
from fleet_server.rollouts.models import Rollout
from fleet_server.rollouts.schemas import BatchPlan, GateConfig, RolloutCreate, Selector
from tests.conftest import drop_pg_database, make_pg_database
from tests.unit.fleet_server.test_rollout_engine import FakeMetrics

pytestmark = pytest.mark.postgres
OPERATOR = Actor.operator("tok", "alice", "operator")
SITES = ["a", "b", "c", "d"]
GATES = GateConfig(min_window_s=0, look_interval_s=0, min_devices=2, min_samples=10, permutations=99)


class Killed(BaseException):
    """The replica's process dies here (nothing after it runs, the lease is not released)."""


@pytest.fixture
def pg(pg_available: bool) -> Iterator[Engine]:
    if not pg_available:
        pytest.fail("PostgreSQL is not reachable (start it: .ci/run does)")
    name, url = make_pg_database()
    engine = make_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()
        drop_pg_database(name)


def _publish(ota: OtaService, db: Engine, content: bytes, version: str) -> tuple[int, str]:
    upload = ota.new_upload()
    upload.write_bytes(content)
    sha, _ = ota.adopt_blob(upload)
    with Session(db) as s:
        row = ota.publish(
            session=s,
            spec=ReleaseCreate(
                model_name="m",
                model_version=version,
                artifact_sha256=sha,
                filename="model.bin",
                profiles=["pi"],
            ),
            created_by="test",
        )
        assert row.seq is not None
        return row.seq, sha


class Devices:
    """Every assigned device commits shortly after (as its agent would report), and from then on
    serves the new model in its metric windows."""

    def __init__(self, db: Engine, metrics: FakeMetrics, new_sha: str) -> None:
        self.db, self.metrics, self.new_sha = db, metrics, new_sha
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            with Session(self.db) as s:
                for row in s.exec(select(OtaDeviceStatus).where(OtaDeviceStatus.state == "assigned")).all():
                    row.state, row.transition = "committed", row.transition + 1
                    s.add(row)
                    self.metrics.serving[row.device_id] = self.new_sha
                s.commit()


def _loop(engine: RolloutEngine, stop: threading.Event, errors: list[BaseException]) -> None:
    try:
        while not stop.is_set():
            engine.tick()
            time.sleep(0.02)
    except Killed as err:
        errors.append(err)


def test_two_replicas_advance_every_rollout_exactly_once(pg: Engine, tmp_path: Path) -> None:
    ota = OtaService(tmp_path / "ota")  # one repository on disk, as replicas sharing a data dir
    old_seq, _ = _publish(ota, pg, b"old model" * 100, "1")
    new_seq, new_sha = _publish(ota, pg, b"new model" * 100, "2")
    with Session(pg) as s:
        for site in SITES:
            for i in range(15):
                s.add(Device(id=f"{site}-{i:02d}", profile="pi", labels={"site": site}))
                s.add(
                    OtaDeviceStatus(
                        device_id=f"{site}-{i:02d}",
                        deployment_id="dep_old",
                        release_seq=old_seq,
                        state="committed",
                    )
                )
        s.commit()
    metrics = FakeMetrics(min_windows=2)
    audit = SqlAuditLog(pg)
    replicas = [
        RolloutEngine(engine=pg, ota=ota, audit=audit, metrics=metrics, holder=name, lease_s=2.0)
        for name in ("replica-a", "replica-b")
    ]
    deaths = {"left": 1}

    def die_once(point: str) -> None:  # replica-a dies right after persisting its first step
        if point == "persisted" and deaths["left"]:
            deaths["left"] -= 1
            raise Killed

    ids = [
        replicas[1].create(
            RolloutCreate(
                releases=[new_seq],
                selector=Selector(labels={"site": site}),
                batches=BatchPlan(percents=[20, 60, 100]),
                gates=GATES,
                start=False,
            ),
            OPERATOR,
        )
        for site in SITES
    ]
    replicas[0].crash_hook = die_once
    for rid in ids:  # started as drafts; the loops pick them up
        with Session(pg) as s:
            row = s.get(Rollout, rid)
            assert row is not None
    devices = Devices(pg, metrics, new_sha)
    devices.thread.start()
    stop = threading.Event()
    errors: list[BaseException] = []
    killed_first = threading.Thread(target=lambda: _start_and_loop(replicas[0], ids[0], stop, errors))
    other = threading.Thread(target=_loop, args=(replicas[1], stop, errors))
    killed_first.start()
    other.start()
    for rid in ids[1:]:
        replicas[1].act(rid, _start(), OPERATOR)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with Session(pg) as s:
            states = [s.get(Rollout, rid).state for rid in ids]  # type: ignore[union-attr]
        if all(x == "completed" for x in states):
            break
        time.sleep(0.2)
    stop.set()
    devices.stop.set()
    killed_first.join(10)
    other.join(10)
    assert states == ["completed"] * len(SITES), states
    assert [type(e) for e in errors] == [Killed]  # replica-a died once, mid-step

    with Session(pg) as s:
        statuses = s.exec(select(OtaDeviceStatus).where(OtaDeviceStatus.release_seq == new_seq)).all()
        rows = {rid: s.get(Rollout, rid) for rid in ids}
    per_device = Counter(st.device_id for st in statuses)
    assert len(per_device) == 60 and set(per_device.values()) == {1}  # every device assigned exactly once
    assert len({st.deployment_id for st in statuses}) == 3 * len(SITES)  # one deployment per batch
    for row in rows.values():
        assert row is not None and row.pending_effects == [] and row.lease_owner == ""
    entries = list(audit.iter_all())
    for rid in ids:
        ours = [e for e in entries if e.target.id == rid and e.action != "rollout.create"]
        transitions = [int(e.details["transition"]) for e in ours]
        assert transitions == list(range(1, len(transitions) + 1)), (rid, transitions)  # each once, in order
        actions = Counter(e.action for e in ours)
        assert actions["rollout.gates_passed"] == 3 and actions["rollout.batch_settled"] == 3
    assert audit.verify().ok


def _start() -> Any:
    from fleet_server.rollouts.states import RolloutEvent

    return RolloutEvent.START


def _start_and_loop(
    engine: RolloutEngine, rid: str, stop: threading.Event, errors: list[BaseException]
) -> None:
    try:
        engine.act(rid, _start(), OPERATOR)  # dies after persisting START, before assigning batch 0
    except Killed as err:
        errors.append(err)
        return
    _loop(engine, stop, errors)

"""The rollout engine with fakes (clock, OTA port, metric windows) on a real SQLite database:
every path a rollout can take — batches through to completed, a breach paused or rolled back,
silent devices, late joiners, operator actions, refusals — and the claim/effect discipline
(effects persisted before they run, a holder that dies mid-step, two engines on one rollout)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from fleet_server.audit.chain import Actor
from fleet_server.audit.port import MemoryAuditLog
from fleet_server.audit.store import SqlAuditLog
from fleet_server.db import make_engine
from fleet_server.errors import ConflictError, InvalidRequestError, NotFoundError
from fleet_server.migrate import upgrade
from fleet_server.models import Device
from fleet_server.ota.models import OtaDeviceStatus, OtaRelease, ReleaseCreate
from fleet_server.rollouts.engine import RolloutEngine
from fleet_server.rollouts.models import Rollout, RolloutDevice, RolloutGateResult, RolloutHold
from fleet_server.rollouts.schemas import BatchPlan, GateConfig, RolloutCreate, Selector
from fleet_server.rollouts.states import RolloutEvent
from fleet_server.settings import Settings

OPERATOR = Actor.operator("tok1", "alice", "operator")
OLD_SHA, NEW_SHA = "a" * 64, "b" * 64


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class FakeOta:
    """Deployments as OtaService makes them (one status row per device, committed with the
    caller's session); publish_once keyed like the real one."""

    def __init__(self) -> None:
        self.deployments: list[tuple[int, list[str]]] = []
        self.published: dict[str, int] = {}

    def deploy(self, *, session: Session, release_seq: int, device_ids: list[str]) -> str:
        dep = f"dep_{secrets.token_hex(4)}"
        for d in device_ids:
            session.merge(OtaDeviceStatus(device_id=d, deployment_id=dep, release_seq=release_seq))
        session.commit()
        self.deployments.append((release_seq, list(device_ids)))
        return dep

    def publish_once(
        self, *, session: Session, spec: ReleaseCreate, created_by: str, idempotency_key: str
    ) -> tuple[OtaRelease, bool]:
        if idempotency_key in self.published:
            row = session.get(OtaRelease, self.published[idempotency_key])
            assert row is not None
            return row, False
        row = _release(session, spec.artifact_sha256, spec.profiles, created_by=created_by)
        assert row.seq is not None
        self.published[idempotency_key] = row.seq
        return row, True


@dataclass(frozen=True)
class Sums:
    device_id: str
    model_sha256: str
    windows: int
    predictions: int
    errors: int
    confidence_hist: tuple[int, ...]
    class_counts: tuple[int, ...]
    confidence_sum: float
    confidence_sum_sq: float
    latency_sum_ms: float
    latency_sum_sq_ms: float
    latency_count: int
    latency_p95_ms_max: float = 0.0
    drift_score_mean: float = -1.0
    shadow_agreement_min: float = -1.0


@dataclass
class FakeMetrics:
    """Per device: which model it serves and how confident it is (seeded, per call)."""

    serving: dict[str, str] = field(default_factory=dict)
    bad_sha: str = ""
    calls: int = 0
    min_windows: int = 0  # report at least this many windows (for tests on the wall clock)
    silent: bool = False  # no device reports metric windows

    def __call__(
        self,
        conn: Any,
        device_ids: Sequence[str],
        since_ms: int,
        until_ms: int,
        model_sha256: str | None = None,
    ) -> dict[str, Sums]:
        self.calls += 1
        out: dict[str, Sums] = {}
        if self.silent:
            return out
        windows = max(self.min_windows, (until_ms - since_ms) // 30_000)
        for d in device_ids:
            sha = self.serving.get(d, OLD_SHA)
            if (model_sha256 is not None and sha != model_sha256) or windows <= 0:
                continue
            rng = np.random.default_rng(abs(hash((d, windows))) % 2**32)
            n = 50 * windows
            mean = 0.45 if sha == self.bad_sha else 0.9
            conf = np.clip(rng.normal(mean, 0.05, n), 0, 0.999)
            hist = np.bincount((conf * 10).astype(int), minlength=10)
            classes = rng.integers(0, 3 if sha == self.bad_sha else 10, n)
            lat = rng.normal(10, 1, n)
            out[d] = Sums(
                d,
                sha,
                windows,
                n,
                0,
                tuple(int(x) for x in hist),
                tuple(int(x) for x in np.bincount(classes, minlength=10)),
                float(conf.sum()),
                float((conf**2).sum()),
                float(lat.sum()),
                float((lat**2).sum()),
                n,
            )
        return out


def _release(session: Session, sha: str, profiles: list[str], *, created_by: str = "test") -> OtaRelease:
    row = OtaRelease(
        model_name="m",
        model_version=sha[:4],
        target_path=f"models/m/{sha[:4]}/model.onnx",
        sha256=sha,
        length=1,
        custom={"edgeloop": {"profiles": profiles}},
        created_by=created_by,
    )
    session.add(row)
    session.commit()
    session.refresh(row)
    return row


@dataclass
class World:
    db: Engine
    clock: Clock
    ota: FakeOta
    metrics: FakeMetrics
    audit: MemoryAuditLog
    old: int
    new: int

    def engine(self, **kw: Any) -> RolloutEngine:
        return RolloutEngine(
            engine=self.db, ota=self.ota, audit=self.audit, metrics=self.metrics, clock=self.clock, **kw
        )

    def devices(self, n: int, prefix: str = "d", profile: str = "pi", **labels: str) -> list[str]:
        ids = [f"{prefix}{i:03d}" for i in range(n)]
        with Session(self.db) as s:
            for d in ids:
                s.add(Device(id=d, profile=profile, labels=dict(labels)))
                s.add(
                    OtaDeviceStatus(
                        device_id=d, deployment_id="dep_old", release_seq=self.old, state="committed"
                    )
                )
            s.commit()
        return ids

    def report(
        self, device_ids: Sequence[str], state: str, rollout_id: str, *, rollback: bool = False
    ) -> None:
        """Devices report their install of this rollout's deployment (as the OTA observer stores it)."""
        with Session(self.db) as s:
            for rd in s.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)).all():
                if rd.device_id not in device_ids:
                    continue
                dep = rd.rollback_deployment_id if rollback else rd.deployment_id
                row = s.get(OtaDeviceStatus, (rd.device_id, dep))
                assert row is not None, (rd.device_id, dep)
                row.state, row.transition = state, row.transition + 1
                s.add(row)
                if state == "committed" and not rollback:
                    self.metrics.serving[rd.device_id] = NEW_SHA
                if state == "committed" and rollback:
                    self.metrics.serving[rd.device_id] = OLD_SHA
            s.commit()

    def row(self, rid: str) -> Rollout:
        with Session(self.db) as s:
            row = s.get(Rollout, rid)
            assert row is not None
            return row

    def devs(self, rid: str) -> dict[str, RolloutDevice]:
        with Session(self.db) as s:
            return {
                d.device_id: d for d in s.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rid))
            }

    def batch_devices(self, rid: str, batch: int) -> list[str]:
        return sorted(d for d, r in self.devs(rid).items() if r.batch == batch)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    db = make_engine(Settings(data_dir=tmp_path).resolved_database_url())
    upgrade(db)
    with Session(db) as s:
        old = _release(s, OLD_SHA, ["pi"]).seq
        new = _release(s, NEW_SHA, ["pi"]).seq
    assert old is not None and new is not None
    yield World(db, Clock(), FakeOta(), FakeMetrics(), MemoryAuditLog(), old, new)
    db.dispose()


FAST = GateConfig(
    silent_timeout_s=300,
    min_window_s=60,
    look_interval_s=30,
    min_devices=3,
    min_samples=100,
    max_wait_s=1800,
    permutations=199,
)


def spec(world: World, **kw: Any) -> RolloutCreate:
    base: dict[str, Any] = {
        "releases": [world.new],
        "batches": BatchPlan(percents=[10, 50, 100]),
        "gates": FAST,
    }
    return RolloutCreate(**(base | kw))


def drive(world: World, eng: RolloutEngine, rid: str, *, bad: bool = False, max_rounds: int = 40) -> str:
    """Devices of each assigned batch commit; time passes in report windows; returns the end state."""
    for _ in range(max_rounds):
        row = world.row(rid)
        if row.state in ("completed", "paused", "rolled_back", "aborted"):
            return row.state
        if row.state == "rolling_back":
            world.report(
                [d for d, r in world.devs(rid).items() if r.status == "rolling_back"],
                "committed",
                rid,
                rollback=True,
            )
        else:
            assigned = [d for d, r in world.devs(rid).items() if r.status == "assigned"]
            world.report(assigned, "committed", rid)
        world.clock.advance(30)
        eng.tick()
    return world.row(rid).state


def test_a_good_model_goes_through_every_batch_to_every_device(world: World) -> None:
    ids = world.devices(40)
    eng = world.engine()
    rid = eng.create(spec(world), OPERATOR)
    sizes = [len(world.batch_devices(rid, i)) for i in range(3)]
    assert sizes == [4, 16, 20]
    assert world.ota.deployments == [(world.new, world.batch_devices(rid, 0))]  # batch 0 only, at once
    assert drive(world, eng, rid) == "completed"
    deployed = [d for _, ds in world.ota.deployments for d in ds]
    assert sorted(deployed) == ids  # every device exactly once
    assert len(world.ota.deployments) == 3
    assert {r.status for r in world.devs(rid).values()} == {"committed"}
    with Session(world.db) as s:
        assert s.exec(select(RolloutHold)).all() == []  # holds released at the end
        gates = s.exec(select(RolloutGateResult).where(RolloutGateResult.rollout_id == rid)).all()
    assert {g.gate for g in gates if g.batch == 0} >= {"install_failures", "confidence_mean", "class_mix"}
    judged = [g for g in gates if g.gate == "confidence_mean" and g.verdict == "pass"]
    assert judged and all(g.value_canary is not None and g.value_control is not None for g in judged)
    assert not [g for g in gates if g.verdict == "fail"]  # (inconclusive looks: it kept looking)
    actions = world.audit.actions()
    assert actions[0] == "rollout.create" and actions[-1] == "rollout.gates_passed"
    assert actions.count("rollout.gates_passed") == 3 and actions.count("rollout.batch_settled") == 3
    assert world.audit.verify().ok


def test_a_silently_bad_model_halts_at_the_canary_and_is_rolled_back(world: World) -> None:
    world.devices(60)
    world.metrics.bad_sha = NEW_SHA
    eng = world.engine()
    rid = eng.create(spec(world, on_breach="rollback", batches=BatchPlan(percents=[10, 100])), OPERATOR)
    canary = world.batch_devices(rid, 0)
    assert drive(world, eng, rid) == "rolled_back"
    row = world.row(rid)
    assert "breached" in row.reason and ("confidence" in row.reason or "class_mix" in row.reason)
    exposed = {d for seq, ds in world.ota.deployments if seq == world.new for d in ds}
    assert exposed == set(canary)  # no device outside the canary got the release
    rollback = [(seq, ds) for seq, ds in world.ota.deployments if seq not in (world.new,)]
    assert len(rollback) == 1 and sorted(rollback[0][1]) == canary
    with Session(world.db) as s:
        rel = s.get(OtaRelease, rollback[0][0])
        assert rel is not None and rel.sha256 == OLD_SHA and rel.seq > world.new  # a new release, old bytes
    statuses = {r.status for d, r in world.devs(rid).items() if d in canary}
    assert statuses == {"rolled_back"}
    assert {r.status for d, r in world.devs(rid).items() if d not in canary} == {"pending"}
    assert (
        "rollout.gates_failed" in world.audit.actions() and "rollout.rollback_done" in world.audit.actions()
    )


def test_breach_with_pause_policy_waits_for_an_operator(world: World) -> None:
    world.devices(60)
    world.metrics.bad_sha = NEW_SHA
    eng = world.engine()
    rid = eng.create(spec(world, batches=BatchPlan(percents=[10, 100])), OPERATOR)
    assert drive(world, eng, rid) == "paused"
    assert world.row(rid).paused_by_breach
    n = len(world.ota.deployments)
    for _ in range(5):
        world.clock.advance(60)
        eng.tick()
    assert len(world.ota.deployments) == n  # nothing assigned while paused
    eng.act(rid, RolloutEvent.ROLLBACK, OPERATOR, "bad confidence")
    assert world.row(rid).state == "rolling_back"
    assert drive(world, eng, rid) == "rolled_back"


def test_silent_devices_count_as_failures_and_never_stall(world: World) -> None:
    world.devices(20)
    eng = world.engine()
    rid = eng.create(
        spec(world, batches=BatchPlan(counts=[5]), gates=FAST.model_copy(update={"max_failure_rate": 0.2})),
        OPERATOR,
    )
    canary = world.batch_devices(rid, 0)
    world.report(canary[:3], "committed", rid)  # two never report
    for _ in range(15):
        world.clock.advance(30)
        eng.tick()
    row = world.row(rid)
    assert row.state == "paused" and "2 silent" in row.reason
    assert sorted(d for d, r in world.devs(rid).items() if r.status == "silent") == canary[3:]


def test_install_failures_breach_mid_batch(world: World) -> None:
    world.devices(30)
    eng = world.engine()
    rid = eng.create(spec(world, batches=BatchPlan(counts=[10]), on_breach="rollback"), OPERATOR)
    canary = world.batch_devices(rid, 0)
    world.report(canary[:2], "failed", rid)  # 2/10 > 10%: no need to wait for the rest
    eng.tick()
    assert world.row(rid).state == "rolling_back"
    rb = world.row(rid).rollback
    rb_devices = sorted(d for k, v in rb.items() if not k.startswith("_") for d in v["devices"])
    assert rb_devices == canary[2:]  # the failed ones reverted on the device; the rest go back
    world.clock.advance(FAST.rollback_timeout_s + 1)
    eng.tick()
    row = world.row(rid)
    assert row.state == "rolled_back"
    statuses = {d: r.status for d, r in world.devs(rid).items() if d in canary}
    assert {statuses[d] for d in canary[2:]} == {"unknown"}  # never reported: unknown, not done
    assert {statuses[d] for d in canary[:2]} == {"failed"}


def test_bad_requests_are_refused_with_a_reason(world: World) -> None:
    world.devices(10)
    eng = world.engine()
    with pytest.raises(NotFoundError):
        eng.create(spec(world, releases=[999]), OPERATOR)
    with pytest.raises(InvalidRequestError, match="no artifact for profile"):
        eng.create(spec(world, selector=Selector(profiles=["jetson"])), OPERATOR)
    with pytest.raises(InvalidRequestError, match="do not add up"):
        eng.create(spec(world, batches=BatchPlan(percents=[10, 50])), OPERATOR)
    with pytest.raises(InvalidRequestError, match="both have an artifact"):
        eng.create(spec(world, releases=[world.new, world.old]), OPERATOR)
    rid = eng.create(spec(world), OPERATOR)
    with pytest.raises(ConflictError, match="overlapping"):
        eng.create(spec(world), OPERATOR)
    with pytest.raises(ConflictError, match="already paused"):
        eng.act(rid, RolloutEvent.PAUSE, OPERATOR)
        eng.act(rid, RolloutEvent.PAUSE, OPERATOR)
    eng.act(rid, RolloutEvent.ABORT, OPERATOR)
    assert world.row(rid).state == "aborted"
    eng.create(spec(world), OPERATOR)  # the abort released the devices


def test_devices_that_enroll_mid_rollout_join_later_batches(world: World) -> None:
    world.devices(20)
    eng = world.engine()
    rid = eng.create(spec(world, batches=BatchPlan(percents=[10, 100])), OPERATOR)
    late = world.devices(3, prefix="late")
    world.devices(2, prefix="other", profile="jetson")  # no artifact for its profile: never joins
    assert drive(world, eng, rid) == "completed"
    devs = world.devs(rid)
    assert all(devs[d].batch == 1 and devs[d].status == "committed" for d in late)
    assert not any(d.startswith("other") for d in devs)


def test_a_holder_killed_between_persist_and_effects_leaves_the_effects_for_the_next(world: World) -> None:
    world.devices(20)
    dead = world.engine(holder="dead", lease_s=30)

    class Killed(BaseException):
        pass

    def die(point: str) -> None:
        if point == "persisted":
            raise Killed

    dead.crash_hook = die
    with pytest.raises(Killed):
        dead.create(spec(world), OPERATOR)
    rid = _only_rollout(world)
    row = world.row(rid)
    assert row.state == "running" and [e["kind"] for e in row.pending_effects] == ["assign_batch", "audit"]
    assert world.ota.deployments == []  # nothing half-done: the record says running, effects listed
    other = world.engine(holder="other")
    assert other.tick() == 0  # the dead holder's lease has not expired
    world.clock.advance(31)
    assert other.tick() == 1
    assert len(world.ota.deployments) == 1 and world.row(rid).pending_effects == []
    assert world.audit.actions().count("rollout.start") == 1


def test_a_crash_inside_the_deploy_commit_is_not_deployed_twice(world: World) -> None:
    world.devices(20)
    eng = world.engine(holder="a", lease_s=30)

    class Killed(BaseException):
        pass

    def die(point: str) -> None:
        if point == "deployed":
            raise Killed

    eng.crash_hook = die
    with pytest.raises(Killed):
        eng.create(spec(world), OPERATOR)
    rid = _only_rollout(world)
    world.clock.advance(31)
    assert world.engine(holder="b").tick() == 1
    assert len(world.ota.deployments) == 1  # the progress mark was committed with the deployment
    canary = world.batch_devices(rid, 0)
    assert {world.devs(rid)[d].status for d in canary} == {"assigned"}


def test_a_holder_killed_inside_an_audit_effect_leaves_one_entry_not_two(world: World) -> None:
    """The SQL log joins the effect's transaction: append and pop commit together or not at all."""
    world.devices(20)
    audit = SqlAuditLog(world.db)
    dead = RolloutEngine(
        engine=world.db, ota=world.ota, audit=audit, clock=world.clock, holder="dead", lease_s=30
    )

    class Killed(BaseException):
        pass

    def die(point: str) -> None:
        if point == "audited":  # the entry is written in the open transaction, not committed
            raise Killed

    dead.crash_hook = die
    with pytest.raises(Killed):
        dead.create(spec(world), OPERATOR)
    rid = _only_rollout(world)
    assert [e["kind"] for e in world.row(rid).pending_effects] == ["audit"]  # assigned; audit left
    assert [e.action for e in audit.iter_all()].count("rollout.start") == 0  # rolled back with the pop
    world.clock.advance(31)
    other = RolloutEngine(engine=world.db, ota=world.ota, audit=audit, clock=world.clock, holder="other")
    assert other.tick() == 1
    entries = [e for e in audit.iter_all() if e.action == "rollout.start"]
    assert len(entries) == 1 and entries[0].details["replica"] == "other"
    assert world.row(rid).pending_effects == [] and audit.verify().ok


def test_a_stale_holder_cannot_write_after_losing_its_lease(world: World) -> None:
    world.devices(20)
    a = world.engine(holder="a", lease_s=30)
    rid = a.create(spec(world, start=False), OPERATOR)
    claim = a._claim(rid)
    assert claim is not None
    world.clock.advance(31)
    b = world.engine(holder="b")
    b.act(rid, RolloutEvent.START, OPERATOR)
    from fleet_server.rollouts.engine import LeaseLost

    with Session(world.db) as s, pytest.raises(LeaseLost):
        a._guard(s, claim)
    assert len(world.ota.deployments) == 1


def _only_rollout(world: World) -> str:
    with Session(world.db) as s:
        return s.exec(select(Rollout.id)).one()


def test_an_operator_override_after_a_breach_assigns_the_next_batch(world: World) -> None:
    world.devices(40)
    world.metrics.bad_sha = NEW_SHA
    eng = world.engine()
    rid = eng.create(spec(world, batches=BatchPlan(percents=[10, 100])), OPERATOR)
    assert drive(world, eng, rid) == "paused"
    eng.act(rid, RolloutEvent.RESUME, OPERATOR, "known shift, accepted")
    row = world.row(rid)
    assert (row.state, row.batch) == ("running", 1)
    assert len(world.ota.deployments) == 2 and len(world.ota.deployments[1][1]) == 36
    assert "rollout.resume" in world.audit.actions()
    resumed = next(e for e in world.audit.entries if e.action == "rollout.resume")
    assert resumed.actor.name == "alice" and resumed.details["detail"] == "known shift, accepted"


def test_a_draft_starts_on_request_and_a_completed_rollout_can_still_be_rolled_back(world: World) -> None:
    world.devices(10)
    eng = world.engine()
    rid = eng.create(spec(world, start=False, batches=BatchPlan(percents=[100])), OPERATOR)
    assert world.row(rid).state == "draft" and world.ota.deployments == []
    eng.tick()
    assert world.row(rid).state == "draft"  # a draft is never advanced by the loop
    eng.act(rid, RolloutEvent.START, OPERATOR)
    assert drive(world, eng, rid) == "completed"
    eng.act(rid, RolloutEvent.ROLLBACK, OPERATOR, "field reports")
    assert drive(world, eng, rid) == "rolled_back"
    assert {r.status for r in world.devs(rid).values()} == {"rolled_back"}


def test_metric_gates_without_data_follow_on_no_data(world: World) -> None:
    world.devices(20)
    world.metrics.silent = True  # the devices never report metric windows
    eng = world.engine()
    gates = FAST.model_copy(update={"on_no_data": "breach", "max_wait_s": 300})
    rid = eng.create(spec(world, batches=BatchPlan(percents=[20, 100]), gates=gates), OPERATOR)
    assert drive(world, eng, rid) == "paused"
    assert "not enough metric data after 300 s" in world.row(rid).reason
    rid2_world_gates = FAST.model_copy(update={"on_no_data": "pass", "max_wait_s": 300})
    eng.act(rid, RolloutEvent.ABORT, OPERATOR)
    rid2 = eng.create(spec(world, batches=BatchPlan(percents=[20, 100]), gates=rid2_world_gates), OPERATOR)
    assert drive(world, eng, rid2) == "completed"


def test_a_last_batch_with_no_control_left_is_judged_on_installs_at_once(world: World) -> None:
    """A one-batch rollout of every matching device (the registry's default policy) has no
    control cohort: it completes as soon as its installs commit, never by waiting out max_wait_s
    (which held the next registry version's rollout of the same devices for an hour)."""
    world.devices(6)
    eng = world.engine()
    rid = eng.create(spec(world, batches=BatchPlan(percents=[100])), OPERATOR)
    world.report(world.batch_devices(rid, 0), "committed", rid)
    for _ in range(3):  # one tick settles the batch's installs, the next judges it
        eng.tick()
    assert world.row(rid).state == "completed"
    with Session(world.db) as s:
        gates = s.exec(select(RolloutGateResult).where(RolloutGateResult.rollout_id == rid)).all()
    assert any(g.gate == "canary_vs_control" and "no control cohort" in g.detail for g in gates)
    with Session(world.db) as s:
        assert s.exec(select(RolloutHold)).all() == []  # the devices are free for the next rollout


def test_a_batch_its_gates_cannot_call_safe_is_promoted_only_after_max_looks(world: World) -> None:
    # With no margin, non-inferiority of an equal model is never shown: every look is inconclusive,
    # and the batch passes after its max_looks looks without harm, not at the first look that
    # fails to reject "harmless" (which is how a far worse canary beside a noisy control got through).
    world.devices(40)
    eng = world.engine()
    gates = FAST.model_copy(
        update={"metrics": ["confidence_mean"], "confidence_margin": 0.0, "max_looks": 4, "alpha": 0.001}
    )
    rid = eng.create(spec(world, gates=gates, batches=BatchPlan(percents=[10, 100])), OPERATOR)
    assert drive(world, eng, rid) == "completed"
    with Session(world.db) as s:
        looks = s.exec(
            select(RolloutGateResult).where(
                RolloutGateResult.rollout_id == rid,
                RolloutGateResult.batch == 0,
                RolloutGateResult.gate == "confidence_mean",
            )
        ).all()
    assert [g.verdict for g in sorted(looks, key=lambda g: g.look)] == ["inconclusive"] * 4
    assert world.row(rid).state == "completed"

"""Federated runs across two replica stacks on one real PostgreSQL database (PgBus LISTEN/NOTIFY,
real leases): each stack is the production `build_federated` runtime on its own event loop; the
devices are the agent's `FederatedClient` attached to one replica's grid and pushing their results
to the *other* replica (what an L4 balancer may do), so every task and every result crosses the
relay at least once.

- A SecAgg+ run recorded on the replica that does not hold the runner lease completes with every
  device of both replicas in every round.
- The runner replica stalls (its lease renewals stop, as when it is SIGKILLed or frozen): the other
  replica takes the lease within ttl + poll and fails the run once with "runner replica <id> lost
  during round 1"; the stalled holder later finishes its round but every write is refused
  (fencing), so no round is recorded and the end is audited once.
- A device streaming on B that leaves mid-round is answered as a dropout on A (the runner re-reads
  the stream directory every second), so the round ends without waiting for its timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql
from sqlmodel import Session, select

from agent.federated.client import FederatedClient, FederatedConfig
from agent.identity import Identity
from fleet_server.audit.port import MemoryAuditLog
from fleet_server.coordination.leases import LeaseStore
from fleet_server.coordination.models import ServerReplica
from fleet_server.db import make_engine
from fleet_server.federated import scheduler
from fleet_server.federated.models import FlRound, FlRun
from fleet_server.federated.runner import RunSpec
from fleet_server.federated.strategy import StrategySpec
from fleet_server.federated.wiring import FederatedRuntime, build_federated
from fleet_server.migrate import upgrade
from fleet_server.models import utcnow
from tests.conftest import _pg_available, drop_pg_database, make_pg_database

pytestmark = pytest.mark.postgres
TTL_S = 2.0


@pytest.fixture
def engine() -> Iterator[Engine]:
    if not _pg_available():
        pytest.fail("PostgreSQL is not reachable")
    name, url = make_pg_database()
    eng = make_engine(url)
    upgrade(eng)
    try:
        yield eng
    finally:
        eng.dispose()
        drop_pg_database(name)


class Heartbeats:
    """`server_replica` rows kept fresh for the replicas listed in `alive` (ReplicaHeartbeat's job)."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.alive = engine, set[str]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def beat(self) -> None:
        with self.engine.begin() as conn:
            for rid in list(self.alive):
                row = {"id": rid, "hostname": "test", "pid": 0, "version": "t", "heartbeat_at": utcnow()}
                stmt = postgresql.insert(ServerReplica).values(**row, started_at=utcnow())
                conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=row))

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Replica:
    rid: str
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    fl: FederatedRuntime
    audit: MemoryAuditLog = field(default_factory=MemoryAuditLog)

    def stall(self) -> None:
        """Freeze the lease renewals (a SIGKILLed or paused process): nothing is released."""
        for singleton in self.fl.singletons:
            singleton._stop.set()  # the thread ends without calling on_lost or releasing
            assert singleton._thread is not None
            singleton._thread.join(5)


def make_replica(engine: Engine, tmp: Path, rid: str, beats: Heartbeats) -> Replica:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    audit = MemoryAuditLog()
    fl = build_federated(
        engine=engine, loop=loop, data_dir=tmp / rid, audit=audit, replica_id=rid,
        lease_ttl_s=TTL_S, replica_ttl_s=TTL_S, poll_s=0.2,
    )  # fmt: skip
    beats.alive.add(rid)
    beats.beat()
    fl.start()
    return Replica(rid, loop, thread, fl, audit)


def add_device(did: str, tmp: Path, stream: Replica, push: Replica, seed: int) -> FederatedClient:
    """A device whose task stream is on `stream` and whose results go to `push`."""
    cfg = FederatedConfig(require_idle=False, require_charging=False, require_unmetered=False)
    client = FederatedClient(
        identity=Identity(did, b"", b"", b"", ""), endpoint="", data_dir=tmp / did, config=cfg
    )
    rng = np.random.default_rng(seed)
    x = rng.random((40, 16)).astype(np.float32)
    client.store.add_many(x, (x[:, :4].argmax(axis=1) + seed) % 4)

    async def run() -> None:
        queue = stream.fl.grid.attach(did, {})
        try:
            while (task := await queue.get()) is not None:
                result = await asyncio.to_thread(client.handle, task)
                await asyncio.to_thread(push.fl.grid.forward_result, did, result)
        finally:
            stream.fl.grid.detach(did, queue)

    asyncio.run_coroutine_threadsafe(run(), stream.loop)
    return client


def model() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.zeros((16, 4), np.float32)), "b": Array(np.zeros(4, np.float32))})


def wait_until(cond: object, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():  # type: ignore[operator]
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - t0


def holder(engine: Engine, name: str) -> str | None:
    g = LeaseStore(engine).current(name)
    return g.holder if g is not None else None


def run_row(engine: Engine, run_id: str) -> FlRun:
    with Session(engine, expire_on_commit=False) as s:
        row = s.get(FlRun, run_id)
        assert row is not None
        return row


def rounds(engine: Engine, run_id: str) -> list[FlRound]:
    with Session(engine) as s:
        return list(
            s.exec(select(FlRound).where(FlRound.run_id == run_id).order_by(FlRound.server_round)).all()
        )


@pytest.fixture
def cluster(engine: Engine, tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    beats = Heartbeats(engine)
    a = make_replica(engine, tmp_path, "ra", beats)
    wait_until(lambda: holder(engine, scheduler.LEASE) == "ra", 10, "ra to hold the runner lease")
    b = make_replica(engine, tmp_path, "rb", beats)
    yield a, b

    async def cancel_devices() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    for r in (b, a):
        asyncio.run_coroutine_threadsafe(cancel_devices(), r.loop).result(10)
        r.fl.shutdown()
        r.loop.call_soon_threadsafe(r.loop.stop)
        r.thread.join(5)
    beats.stop()


def test_a_secagg_run_over_devices_on_two_replicas_completes(
    engine: Engine, cluster: tuple[Replica, Replica], tmp_path: Path
) -> None:
    a, b = cluster
    for i in range(3):
        add_device(f"a{i}", tmp_path, stream=a, push=b, seed=i)  # streams on the runner, results via B
        add_device(f"b{i}", tmp_path, stream=b, push=a, seed=10 + i)  # streams on B: tasks relayed
    wait_until(lambda: len(list(a.fl.grid.get_node_ids())) == 6, 10, "6 devices fleet-wide on A")
    assert len(b.fl.grid.online_devices()) == 6  # B sees A's streams too

    spec = RunSpec(
        StrategySpec("fedavg", min_nodes=6), num_rounds=2, round_timeout_s=30, secure_aggregation=True
    )
    run_id = b.fl.scheduler.submit(spec, model(), eligible={}, actor=None)  # recorded on B, runs on A
    wait_until(lambda: run_row(engine, run_id).status != "running", 90, "the run to end")
    run = run_row(engine, run_id)
    assert run.status == "completed", run.detail
    assert (run.runner, run.lease_token) == ("ra", 1)
    rows = rounds(engine, run_id)
    assert [r.metrics["secagg-survivors"] for r in rows] == [6, 6]
    assert rows[0].parent_digest != rows[-1].arrays_digest  # the model moved
    assert b.fl.link.relayed["result"] > 0 and a.fl.link.relayed["task"] > 0
    assert b.fl.link.relayed["task"] == 0  # B never sends tasks: it is not the runner
    assert [e.action for e in a.audit.entries].count("federated_run.completed") == 1


def test_the_runner_replica_stalls_mid_round_the_other_fails_the_run_once_and_fences_it(
    engine: Engine, cluster: tuple[Replica, Replica], tmp_path: Path
) -> None:
    a, b = cluster
    for i in range(2):
        add_device(f"a{i}", tmp_path, stream=a, push=a, seed=i)
        add_device(f"b{i}", tmp_path, stream=b, push=a, seed=10 + i)  # results reach A straight
    spec = RunSpec(StrategySpec("fedavg", min_nodes=5), num_rounds=1, round_timeout_s=120)
    run_id = b.fl.scheduler.submit(spec, model(), eligible={}, actor=None)
    wait_until(lambda: run_row(engine, run_id).current_round == 1, 20, "round 1 on A (waiting for 5 devices)")

    a.stall()  # A keeps running its round but stops renewing: B must take over
    took = wait_until(lambda: holder(engine, scheduler.LEASE) == "rb", 3 * TTL_S + 5, "B to take the lease")
    wait_until(lambda: run_row(engine, run_id).status != "running", 10, "B to end the run")
    run = run_row(engine, run_id)
    assert (run.status, run.detail) == ("failed", "runner replica ra lost during round 1")
    assert run_id in b.fl.scheduler.taken_over

    add_device("c0", tmp_path, stream=a, push=a, seed=99)  # now A's stale round has its 5 devices
    wait_until(lambda: a.fl.runner.current() is None, 60, "A's stale round to finish and be refused")
    assert rounds(engine, run_id) == []  # A aggregated, but its fenced round write was refused
    again = run_row(engine, run_id)
    assert (again.status, again.detail) == (run.status, run.detail)
    ends = [
        e
        for r in (a, b)
        for e in r.audit.entries
        if e.action.startswith("federated_run.") and e.target.id == run_id
    ]
    assert [e.action for e in ends].count("federated_run.failed") == 1
    assert not any(e.action == "federated_run.round_aggregated" for e in ends)
    print(f"takeover after stall: {took:.1f}s (lease ttl {TTL_S}s, poll 0.2s)")


def test_a_device_leaving_another_replica_mid_round_is_a_dropout_not_a_straggler(
    engine: Engine, cluster: tuple[Replica, Replica], tmp_path: Path
) -> None:
    a, b = cluster
    for i in range(2):
        add_device(f"a{i}", tmp_path, stream=a, push=a, seed=i)
    gone = threading.Event()

    async def silent() -> None:  # streams on B, takes its task, never answers, then disconnects
        queue = b.fl.grid.attach("mute", {})
        await queue.get()
        gone.set()
        b.fl.grid.detach("mute", queue)

    asyncio.run_coroutine_threadsafe(silent(), b.loop)
    wait_until(lambda: len(a.fl.grid.online_devices()) == 3, 10, "3 devices fleet-wide")
    spec = RunSpec(StrategySpec("fedavg", min_nodes=3), num_rounds=1, round_timeout_s=120, min_results=2)
    run_id = a.fl.scheduler.submit(spec, model(), eligible={}, actor=None)
    wait_until(gone.is_set, 20, "the muted device to receive its relayed task and leave")
    took = wait_until(lambda: run_row(engine, run_id).status != "running", 30, "the round to end")
    run = run_row(engine, run_id)
    [row] = rounds(engine, run_id)
    assert run.status == "completed" and (row.sampled, row.results) == (3, 2)
    assert row.dropped == {"disconnected": 1}  # seen by the runner on A within ~1 s, not at 120 s
    assert took < 30

"""Property tests over the agent's protobuf decoding paths (issue 11, "must show").

Whatever the server (or something posing as it) sends, SyncResponse/DesiredState decoding and the
reconcile decision never raise; federated task tensors and config are refused with a precise
error or decoded within bounds. And a record the server refuses for good is dropped, counted and
never resent, across broken sessions.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.config import AgentConfig, SyncConfig, TelemetryConfig
from agent.errors import IntegrityError
from agent.federated.client import FederatedClient, FederatedConfig
from agent.federated.tensors import blob, config_from_proto, num, tensor_from_proto
from agent.identity import Identity
from agent.outbox import TelemetryOutbox
from agent.reconcile import reconcile
from agent.state import AgentSettings, DesiredState, ObservedState, Resources, TelemetryAcked
from agent.statefile import StateFile
from agent.sync import Reconciler, SyncLoop
from agent.transport.codec import MAX_REASON, inbound_from_proto
from protos.edgeloop.v1 import device_pb2 as pb
from protos.edgeloop.v1 import federated_pb2 as fpb
from tests.fakes.fleet import FakeClock, FakeFleet
from tests.helpers.proto_strategies import messages, wire_bytes

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(raw=wire_bytes(pb.SyncResponse))
@example(
    raw=pb.SyncResponse(
        telemetry_ack=pb.TelemetryAck(rejected=[pb.RejectedRecord(seq=2**64 - 1, reason="x\n" * 500)])
    ).SerializeToString()
)
def test_sync_responses_decode_or_are_refused_never_crash(raw: bytes) -> None:
    try:
        msg = pb.SyncResponse.FromString(raw)
    except DecodeError:
        return  # the gRPC layer turns this into a transport error and the session reconnects
    inbound = inbound_from_proto(msg)
    if isinstance(inbound, DesiredState):
        list(reconcile(inbound, ObservedState()))  # the decision over any desired state never raises
        assert inbound.settings.report_interval_s > 0 and inbound.settings.telemetry_batch_max > 0
    if isinstance(inbound, TelemetryAcked):
        assert all(len(reason) <= MAX_REASON for _, reason in inbound.rejected)


@PROPS
@given(t=messages(fpb.FlTensor), max_bytes=st.integers(0, 4096))
@example(t=fpb.FlTensor(name="w", shape=[2**32, 2**32], dtype="float32", data=b""), max_bytes=64)
@example(t=fpb.FlTensor(name="w", shape=[2**62, 0], dtype="float64", data=b""), max_bytes=64)
@example(t=fpb.FlTensor(name="w", shape=[1] * 70, dtype="float32", data=b"\0" * 4), max_bytes=64)
def test_federated_task_tensors_decode_or_are_refused(t: fpb.FlTensor, max_bytes: int) -> None:
    try:
        value = tensor_from_proto(t, max_bytes=max_bytes)
    except IntegrityError:
        return
    assert value.nbytes == len(t.data) <= max_bytes and value.dtype in (np.float32, np.float64)


@PROPS
@given(task=messages(fpb.TrainTask))
def test_federated_task_config_always_decodes(task: fpb.TrainTask) -> None:
    config = config_from_proto(dict(task.config))
    for key in config:
        assert isinstance(num(config, key, 1.0), float)
        assert isinstance(blob(config, key), bytes)


_KINDS = ["train", "evaluate", "train.secagg_keys", "train.secagg_share", "train.secagg_masked", "x"]
# Sizes that only make training long, not wrong (the server is trusted to pick them sanely).
_SLOW_KEYS = ("local-epochs", "batch-size", "secagg-max-examples")


def test_any_federated_task_gets_a_result_never_an_exception(tmp_path: Path) -> None:
    client = FederatedClient(
        identity=Identity("dev", b"", b"", b"", ""), endpoint="", data_dir=tmp_path, config=FederatedConfig()
    )
    client.store.add_many(np.eye(3), np.array([0, 1, 0]))

    @PROPS
    @given(task=messages(fpb.TrainTask), kind=st.sampled_from(_KINDS))
    @example(task=fpb.TrainTask(task_id="t"), kind="train.secagg_share")  # roster blob is not JSON
    def handle(task: fpb.TrainTask, kind: str) -> None:
        task.kind = kind
        for key in _SLOW_KEYS:
            if key in task.config:
                del task.config[key]
        if kind == "train.secagg_share":
            client.handle(fpb.TrainTask(task_id="k", round_id=task.round_id, kind="train.secagg_keys"))
        result = client.handle(task)
        assert result.task_id == task.task_id

    handle()


# ---------------------------------------------------------------- refused records in the sync loop


def _loop(tmp_path: Path, fleet: FakeFleet) -> tuple[SyncLoop, TelemetryOutbox]:
    cfg = AgentConfig(
        telemetry=TelemetryConfig(batch_max=5, max_in_flight_batches=2),
        sync=SyncConfig(backoff_initial_s=0.01, backoff_max_s=0.05, shutdown_flush_s=2.0),
    )
    outbox = TelemetryOutbox(tmp_path / "outbox.db", max_records=10_000)
    loop = SyncLoop(
        config=cfg,
        device_id="dev-1",
        outbox=outbox,
        connector=fleet,
        reconciler=Reconciler(StateFile(tmp_path / "state.json")),
        clock=FakeClock(),
        resources=lambda: Resources(0.1, 1, 1, 1, float("nan"), 1),
        status_path=tmp_path / "status.json",
        rng=random.Random(1),
    )
    return loop, outbox


async def _run(loop: SyncLoop, outbox: TelemetryOutbox, kinds: list[str]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    for i, kind in enumerate(kinds):
        outbox.append(timestamp_ms=i, kind=kind, metrics={"i": float(i)})
        loop.telemetry_ready.set()
        await asyncio.sleep(0)
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.wait_for(task, 10)


def test_refused_records_are_dropped_counted_and_never_resent(tmp_path: Path) -> None:
    fleet = FakeFleet(
        desired=DesiredState(generation=1, settings=AgentSettings(max_messages_per_s=1000)),
        drop_after_messages=4,  # sessions break, so unacked records are resent: refused ones must not be
        refuse_kind="poison",
        refuse_reports="telemetry_dropped_total_out_of_range",
    )
    loop, outbox = _loop(tmp_path, fleet)
    kinds = ["poison" if i % 7 == 3 else "ok" for i in range(60)]
    asyncio.run(_run(loop, outbox, kinds))
    poison = {i + 1 for i, k in enumerate(kinds) if k == "poison"}
    assert fleet.sessions > 2
    assert set(fleet.refused) == poison and set(fleet.refused.values()) == {1}  # sent once each
    assert set(fleet.received) == set(range(1, 61)) - poison
    stats = outbox.stats()
    assert stats.queued == 0 and stats.rejected_total == len(poison) and stats.dropped_total == 0
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["telemetry_rejected_total"] == len(poison) and status["reports_rejected"] >= 1
    assert "out_of_range" in status["last_rejection"]

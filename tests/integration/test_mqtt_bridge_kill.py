"""A fleet server SIGKILLed while devices publish over MQTT loses nothing and duplicates nothing.

The bridge acks a QoS 1 delivery only after its rows are committed, and its session is
persistent, so whatever was in flight at the kill is delivered again to the restarted server
(the (device_id, seq) key absorbs what was committed but not yet acked). The device here never
resends: every batch must be acked and stored by the broker's redelivery alone.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlmodel import SQLModel, create_engine, func, select

from fleet_server.models import TelemetryRecord
from protos.edgeloop import mqtt
from protos.edgeloop.v1 import device_pb2 as pb
from tests.helpers.inproc import enroll, telemetry
from tests.helpers.procs import ServerProc, wait_until
from tests.integration.test_mqtt_bridge import Device_, broker  # noqa: F401  (fixture)

BATCHES, PER = 300, 10
PACE_S = 0.01  # 3 s of publishing: the server is killed after its first acks, well before the end


@pytest.mark.slow
def test_sigkill_mid_stream_loses_and_duplicates_nothing(
    tmp_path: Path,
    database_url: str,
    broker: int,  # noqa: F811  (the fixture imported above)
) -> None:
    server = ServerProc(
        tmp_path / "server",
        database_url,
        env_extra={
            "EDGELOOP_MQTT_URL": f"mqtt://127.0.0.1:{broker}",
            "EDGELOOP_MQTT_CLIENT_ID": f"kill-{uuid.uuid4().hex[:6]}",
            "EDGELOOP_DEVICE_MAX_MESSAGES_PER_S": "100000",
            "EDGELOOP_DEVICE_BURST": "100000",
        },
    )
    server.init()
    server.start()
    device_id = f"mq-{uuid.uuid4().hex[:10]}"
    enroll(server, device_id, server.bootstrap_token(), tmp_path)  # type: ignore[arg-type]
    dev = Device_(broker, device_id)
    acked: set[int] = set()

    def drain() -> int:
        while not dev.inbox[mqtt.DOWN].empty():
            msg = pb.SyncResponse.FromString(dev.inbox[mqtt.DOWN].get())
            if msg.WhichOneof("msg") == "telemetry_ack":
                acked.add(msg.telemetry_ack.batch_id)
        return len(acked)

    def publish_all() -> None:  # paced, so the kill lands mid-stream however fast the server drains
        for b in range(BATCHES):
            payload = telemetry(b, list(range(b * PER + 1, b * PER + PER + 1))).SerializeToString()
            dev.client.publish(mqtt.topic(device_id, mqtt.UP), payload, qos=1)
            time.sleep(PACE_S)

    publisher = threading.Thread(target=publish_all, name="publisher", daemon=True)
    try:
        publisher.start()
        wait_until(lambda: drain() >= 5, 30, what="first acks")
        server.kill()
        killed_at = drain()
        server.start()
        publisher.join(BATCHES * PACE_S + 30)
        wait_until(lambda: drain() == BATCHES, 60, what="every batch acked")
        url = server.env()["EDGELOOP_DATABASE_URL"] or f"sqlite:///{server.data_dir / 'fleet.db'}"
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        table = SQLModel.metadata.tables[TelemetryRecord.__tablename__]
        with engine.connect() as conn:
            count = conn.execute(select(func.count()).where(table.c.device_id == device_id)).scalar_one()
            distinct = conn.execute(
                select(func.count(func.distinct(table.c.seq))).where(table.c.device_id == device_id)
            ).scalar_one()
        engine.dispose()
        assert count == distinct == BATCHES * PER
        assert killed_at < BATCHES, "the kill came after everything was acked: nothing was tested"
    finally:
        dev.close()
        server.stop()

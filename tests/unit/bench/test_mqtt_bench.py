"""Smoke test of the MQTT benchmark's own machinery (bench/mqtt/) against a private Mosquitto.

The bench's claims rest on its counting: the load generator must publish exactly devices x seqs
messages on the contract's uplink topics, and the bare subscriber must find every (device, seq)
once. Small numbers, so it runs in seconds; the bridge arm is covered by the bench run itself and
by tests/integration/test_mqtt_bridge.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.mqtt.loadgen import payload
from bench.mqtt.run import SIZED, Broker, bare_rep
from protos.edgeloop.v1 import device_pb2 as pb

pytestmark = pytest.mark.skipif(not Path("/usr/sbin/mosquitto").exists(), reason="needs mosquitto")


def test_payload_is_a_bare_sync_request_with_one_record_of_that_seq() -> None:
    req = pb.SyncRequest.FromString(payload(42))
    assert req.WhichOneof("msg") == "telemetry"
    assert [r.seq for r in req.telemetry.records] == [42]


def test_every_device_seq_published_arrives_exactly_once(tmp_path: Path) -> None:
    broker = Broker(tmp_path, "smoke", SIZED).start()
    try:
        r = bare_rep(broker, n=50, per_device=4, first_seq=7)
    finally:
        broker.stop()
    assert r["published"] == r["acked"] == r["expected"] == 200
    assert (r["unique"], r["missing"], r["duplicates"]) == (200, 0, 0)
    assert r["rate"] > 0

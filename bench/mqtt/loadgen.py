"""MQTT load generator: simulated devices publishing QoS 1 telemetry on the contract's uplink topic.

Each device `{prefix}-{i:05d}` publishes `device.SyncRequest(telemetry=TelemetryBatch(...))`,
serialized bare, on `edgeloop/v1/devices/{id}/up` (protos/edgeloop/mqtt.py), one record per
message with a per-device strictly increasing `seq` (`--first-seq`, `--first-seq + 1`, ...), so the
receiver can count every (device, seq) exactly: loss and duplicates are exact, not estimated.

Multiplexing (stated, since it matters for what is measured): 10,000 paho clients in one Python
process would measure paho, not the server. Devices are spread over `--conns` MQTT connections
(device i on connection i % conns); a connection publishes on many device topics, which the bench
broker allows because it has no ACL. Topics, payloads and seqs are exactly what N real devices
send; what differs is the broker's connection count (a few instead of N), which costs the broker
memory, not the consumer side this bench measures.

Protocol on stdio: prints `READY` once every connection is up, waits for `GO` on stdin, publishes
round-robin (seq s of every device, then s + 1, ...) as fast as the QoS 1 window allows, and prints
one JSON line when every PUBACK is in: published, acked, t_go, t_done (time.time()).

    python bench/mqtt/loadgen.py --port 1883 --devices 0:1000 --per-device 30 --conns 2
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protos.edgeloop import mqtt as contract
from protos.edgeloop.v1 import device_pb2 as pb


def device_id(prefix: str, i: int) -> str:
    return f"{prefix}-{i:05d}"


def payload(seq: int) -> bytes:
    record = pb.TelemetryRecord(
        seq=seq,
        timestamp_ms=int(time.time() * 1000),
        kind="system",
        metrics={"cpu_load_1m": 0.5, "temperature_c": 48.5},
    )
    return pb.SyncRequest(telemetry=pb.TelemetryBatch(batch_id=seq, records=[record])).SerializeToString()


class Connection:
    """One paho client publishing for a slice of the devices."""

    def __init__(self, port: int, name: str, inflight: int) -> None:
        self.acked = 0
        self.done = threading.Event()
        self.expected = -1
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311)
        self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = lambda *_a: self.connected.set()
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.loop_start()

    def _on_publish(self, *_args: object) -> None:
        with self._lock:
            self.acked += 1
            if self.acked == self.expected:
                self.done.set()

    def publish_all(self, topics: list[str], first_seq: int, per_device: int) -> int:
        with self._lock:
            self.expected = len(topics) * per_device
            if self.expected == 0:
                self.done.set()
        sent = 0
        for seq in range(first_seq, first_seq + per_device):
            body = payload(seq)
            for t in topics:
                self.client.publish(t, body, qos=contract.QOS)
                sent += 1
        return sent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--devices", required=True, help="first:end device indexes (end exclusive)")
    p.add_argument("--prefix", default="bench")
    p.add_argument("--per-device", type=int, default=10)
    p.add_argument("--first-seq", type=int, default=1)
    p.add_argument("--conns", type=int, default=2)
    p.add_argument("--inflight", type=int, default=200)
    p.add_argument("--name", default="loadgen")
    ns = p.parse_args()
    first, end = (int(x) for x in ns.devices.split(":"))
    conns = [Connection(ns.port, f"{ns.name}-{c}", ns.inflight) for c in range(ns.conns)]
    for c in conns:
        if not c.connected.wait(30):
            raise SystemExit("loadgen: broker connection timed out")
    slices: list[list[str]] = [[] for _ in conns]
    for i in range(first, end):
        slices[i % len(conns)].append(contract.topic(device_id(ns.prefix, i), contract.UP))
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return 1
    t_go = time.time()
    results = [0] * len(conns)

    def run(k: int) -> None:
        results[k] = conns[k].publish_all(slices[k], ns.first_seq, ns.per_device)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(conns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = all(c.done.wait(300) for c in conns)
    t_done = time.time()
    for c in conns:
        c.client.disconnect()
        c.client.loop_stop()
    print(
        json.dumps(
            {
                "published": sum(results),
                "acked": sum(c.acked for c in conns),
                "complete": ok,
                "t_go": t_go,
                "t_done": t_done,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

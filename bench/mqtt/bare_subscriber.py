"""Baseline consumer: a bare paho subscriber that only counts the uplink, the ceiling for the bridge.

Subscribes like the fleet server does (shared subscription `$share/edgeloop/edgeloop/v1/devices/+/up`,
QoS 1, MQTT 5 like the bridge), parses the topic with the contract and the payload as
`device.SyncRequest`, and counts every (device, seq); it stores nothing. Its rate is what Python +
paho + Mosquitto give before any server work, so the bridge's rate divided by it is the cost of
decoding, validating and persisting.

Prints `READY` once the subscription is acknowledged, then exits when it has every expected
(device, seq), when nothing arrived for `--idle-s`, or at `--timeout-s`, printing one JSON line:
received, unique, duplicates, missing (exact, against the expected devices x seqs), t_first,
t_last (time.time()). `--slow-us` sleeps that long per message: the slow subscriber that shows
Mosquitto's default queue limit dropping QoS 1 messages. `--session ID --prime` creates a persistent
session and leaves; `--session ID` then takes over what the broker queued meanwhile (drain mode).

    python bench/mqtt/bare_subscriber.py --port 1883 --devices 0:1000 --seqs 1:31
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protos.edgeloop import mqtt as contract
from protos.edgeloop.v1 import device_pb2 as pb

FILTER = contract.shared(f"{contract.PREFIX}/+/{contract.UP}")


class Counting:
    def __init__(self, expected: set[tuple[str, int]], slow_s: float) -> None:
        self.expected = expected
        self.seen: Counter[tuple[str, int]] = Counter()
        self.received = 0
        self.unique_expected = 0
        self.t_first = 0.0
        self.t_last = 0.0
        self.slow_s = slow_s
        self.all_in = threading.Event()
        self.subscribed = threading.Event()

    def on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        if not self.received:
            self.t_first = now
        self.t_last = now
        self.received += 1
        parsed = contract.parse(msg.topic)
        if parsed is None:
            return
        req = pb.SyncRequest.FromString(bytes(msg.payload))
        for record in req.telemetry.records:
            key = (parsed[0], record.seq)
            self.seen[key] += 1
            if self.seen[key] == 1 and key in self.expected:
                self.unique_expected += 1
                if self.unique_expected == len(self.expected):
                    self.all_in.set()
        if self.slow_s:
            time.sleep(self.slow_s)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--devices", required=True, help="first:end device indexes (end exclusive)")
    p.add_argument("--seqs", required=True, help="first:end seqs each device sends (end exclusive)")
    p.add_argument("--prefix", default="bench")
    p.add_argument("--slow-us", type=float, default=0.0)
    p.add_argument("--idle-s", type=float, default=5.0)
    p.add_argument("--timeout-s", type=float, default=300.0)
    p.add_argument("--session", default="", help="client id of a persistent session (drain mode)")
    p.add_argument("--prime", action="store_true", help="create the session, subscribe, and exit")
    ns = p.parse_args()
    d0, d1 = (int(x) for x in ns.devices.split(":"))
    s0, s1 = (int(x) for x in ns.seqs.split(":"))
    expected = {(f"{ns.prefix}-{i:05d}", s) for i in range(d0, d1) for s in range(s0, s1)}
    counting = Counting(expected, ns.slow_us / 1e6)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=ns.session or "bench-bare", protocol=mqtt.MQTTv5
    )
    client.on_message = counting.on_message
    client.on_subscribe = lambda *_a: counting.subscribed.set()
    client.on_connect = lambda c, *_a: c.subscribe(FILTER, qos=contract.QOS)
    props = None
    if ns.session:  # the broker queues for it while it is away, like the server's session
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", ns.port, keepalive=60, clean_start=not ns.session, properties=props)
    client.loop_start()
    if not counting.subscribed.wait(30):
        raise SystemExit("bare subscriber: no SUBACK")
    if ns.prime:
        client.disconnect()
        client.loop_stop()
        print("READY", flush=True)
        return 0
    cpu0 = time.process_time()
    print("READY", flush=True)
    deadline = time.monotonic() + ns.timeout_s
    while not counting.all_in.wait(0.2) and time.monotonic() < deadline:
        if counting.received and time.time() - counting.t_last > ns.idle_s:
            break
    cpu_s = time.process_time() - cpu0
    client.disconnect()
    client.loop_stop()
    duplicates = sum(n - 1 for n in counting.seen.values() if n > 1)
    print(
        json.dumps(
            {
                "received": counting.received,
                "unique": counting.unique_expected,
                "duplicates": duplicates,
                "missing": len(expected) - counting.unique_expected,
                "unexpected": sum(1 for k in counting.seen if k not in expected),
                "t_first": counting.t_first,
                "t_last": counting.t_last,
                "cpu_s": cpu_s,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

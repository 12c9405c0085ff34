"""Desired-state fan-out: how long until N subscribed devices each hold their new DesiredState.

Device side (this script, a separate process): devices `{prefix}-{i:05d}` subscribe to their own
retained `edgeloop/v1/devices/{id}/desired` topic (QoS 1), multiplexed over `--conns` connections
like loadgen.py, print `READY`, and then wait until every device got a `DesiredState` whose
generation is `--generation` (older retained states, from earlier repetitions, are ignored, as
the agent does). Prints one JSON line: got (devices that got theirs), t_last (time.time()).

Publisher side: `publish_desired()`, one paho client publishing one retained QoS 1 message per
device, as the fleet server's bridge does (`MqttDevices.push_desired`).

    python bench/mqtt/fanout.py --port 1883 --devices 1000 --generation 7
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


def desired_payload(generation: int) -> bytes:
    return pb.DesiredState(generation=generation, labels={"site": "bench"}).SerializeToString()


def publish_desired(port: int, device_ids: list[str], generation: int) -> float:
    """Publish every device's DesiredState (retained, QoS 1); returns time.time() at the first."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-desired", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)
    acked = threading.Semaphore(0)
    client.on_publish = lambda *_a: acked.release()
    client.connect("127.0.0.1", port)
    client.loop_start()
    body = desired_payload(generation)
    t0 = time.time()
    for d in device_ids:
        client.publish(contract.topic(d, contract.DESIRED), body, qos=contract.QOS, retain=True)
    for _ in device_ids:
        acked.acquire(timeout=60)
    client.disconnect()
    client.loop_stop()
    return t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--generation", type=int, required=True)
    p.add_argument("--prefix", default="bench")
    p.add_argument("--conns", type=int, default=4)
    p.add_argument("--timeout-s", type=float, default=60.0)
    ns = p.parse_args()
    ids = [f"{ns.prefix}-{i:05d}" for i in range(ns.devices)]
    got: set[str] = set()
    lock = threading.Lock()
    all_in = threading.Event()
    t_last = [0.0]

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        parsed = contract.parse(msg.topic)
        if parsed is None or pb.DesiredState.FromString(bytes(msg.payload)).generation != ns.generation:
            return
        with lock:
            got.add(parsed[0])
            t_last[0] = time.time()
            if len(got) == len(ids):
                all_in.set()

    clients = []
    subscribed = threading.Semaphore(0)
    for k in range(ns.conns):
        mine = ids[k :: ns.conns]
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-fanout-{k}", protocol=mqtt.MQTTv5)
        c.on_message = on_message
        c.on_subscribe = lambda *_a: subscribed.release()
        c.connect("127.0.0.1", ns.port)
        c.loop_start()
        for chunk in range(0, len(mine), 100):
            c.subscribe(
                [(contract.topic(d, contract.DESIRED), contract.QOS) for d in mine[chunk : chunk + 100]]
            )
            subscribed.acquire(timeout=30)
        clients.append(c)
    print("READY", flush=True)
    all_in.wait(ns.timeout_s)
    for c in clients:
        c.disconnect()
        c.loop_stop()
    print(json.dumps({"got": len(got), "t_last": t_last[0]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

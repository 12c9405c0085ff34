"""`python -m agent.federated`: run only the federated client of an enrolled device.

For benchmarks and end-to-end tests (real processes on loopback) and for devices that run
federated learning as a separate service. The daemon composes `FederatedClient` itself.
Optional `--samples x_y.npz` (arrays `x`, `y`) loads labelled samples into the device store first.
`--mqtt-endpoint mqtts://host:port` uses the MQTT link (the device's certificate from `--data-dir`)
instead of gRPC on `--endpoint`. `--slow-s` delays every answer to emulate a slow device;
`--attack` (bench only) makes this device Byzantine: `sign_flip`, `scale` (x10 delta) or
`label_flip` (y -> 9 - y before import).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from pathlib import Path

import numpy as np

from agent.federated.client import FederatedClient, FederatedConfig
from agent.identity import IdentityStore
from protos.edgeloop.v1 import federated_pb2 as pb


class _TestingClient(FederatedClient):
    def __init__(self, *, slow_s: float, attack: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._slow_s = slow_s
        self._attack = attack

    def handle(self, task: pb.TrainTask) -> pb.TaskResult:
        time.sleep(self._slow_s)
        result = super().handle(task)
        if self._attack in {"sign_flip", "scale"} and result.arrays:
            factor = -1.0 if self._attack == "sign_flip" else 10.0
            for sent, got in zip(task.arrays, result.arrays, strict=True):
                old = np.frombuffer(sent.data, dtype=sent.dtype)
                new = np.frombuffer(got.data, dtype=got.dtype)
                got.data = (old + factor * (new - old)).astype(got.dtype).tobytes()
        return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.federated")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--endpoint", default="")
    p.add_argument("--mqtt-endpoint", default="")
    p.add_argument("--server-name", default="")
    p.add_argument("--samples", type=Path)
    p.add_argument("--slow-s", type=float, default=0.0)
    p.add_argument("--attack", default="", choices=["", "sign_flip", "scale", "label_flip"])
    p.add_argument("--epsilon-budget", type=float, default=10.0)
    ns = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not (ns.endpoint or ns.mqtt_endpoint):
        p.error("one of --endpoint or --mqtt-endpoint is required")
    store = IdentityStore(ns.data_dir)
    identity = store.load()
    config = FederatedConfig(server_name=ns.server_name, epsilon_budget=ns.epsilon_budget)
    link_factory = None
    if ns.mqtt_endpoint:
        from agent.federated.mqtt_link import MqttFederatedLink

        def link_factory() -> MqttFederatedLink:
            return MqttFederatedLink(
                endpoint=ns.mqtt_endpoint,
                device_id=identity.device_id,
                store=store,
                server_name=ns.server_name,
                max_task_bytes=config.max_task_bytes,
            )

    client = _TestingClient(
        slow_s=ns.slow_s,
        attack=ns.attack,
        identity=identity,
        endpoint=ns.endpoint,
        data_dir=ns.data_dir,
        config=config,
        link_factory=link_factory,
    )
    if ns.samples is not None:
        data = np.load(ns.samples)
        y = 9 - data["y"] if ns.attack == "label_flip" else data["y"]
        client.store.add_many(data["x"], y)
    return asyncio.run(_run(client))


async def _run(client: FederatedClient) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await client.run(stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The metrics of a replica (observability/collectors.py) over the real SessionRegistry with a
fleet-wide presence (a working fake of coordination/presence.py): devices online anywhere are
counted by their real transport, streams and served devices are this replica's only."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry

from fleet_server.grpc_api.servicer import SessionRegistry, _Session
from fleet_server.observability.collectors import FleetCollector, Sources
from tests.unit.coordination.test_presence_registry import FakeFanout, FakePresence
from tests.unit.fleet_server.test_observability_collectors import Ingest, engine_with, samples


def online(transport: str, profile: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return ("edgeloop_devices_online", frozenset({("transport", transport), ("profile", profile)}))


def test_remote_grpc_devices_count_as_grpc_and_streams_are_local(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, {"here": "pi", "far": "pi", "mq": "jetson", "heard": "jetson"})
    presence = FakePresence({"far": "grpc", "mq": "mqtt"})  # on other replicas
    registry = SessionRegistry(presence=presence, fanout=FakeFanout())

    async def connect() -> None:
        registry.bind_loop(asyncio.get_running_loop())
        registry.add(_Session("here", None))  # type: ignore[arg-type]
        registry.set_present("heard", True)

    asyncio.run(connect())
    metrics = CollectorRegistry()
    metrics.register(FleetCollector(lambda: Sources(engine, registry, Ingest())))
    s = samples(metrics)
    assert s[online("grpc", "pi")] == 2  # "far" has no stream here but is a gRPC device
    assert s[online("mqtt", "jetson")] == 2
    assert s[("edgeloop_sync_streams", frozenset())] == 1
    assert s[("edgeloop_devices_served", frozenset())] == 2

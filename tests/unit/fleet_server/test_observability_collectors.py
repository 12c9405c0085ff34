"""The scrape-time collector (observability/collectors.py) on a real SQLite database: database
gauges cached between scrapes, profiles looked up once per device, bounded label values."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, event
from sqlmodel import Session

from fleet_server.db import make_engine
from fleet_server.ingest import IngestStats
from fleet_server.migrate import upgrade
from fleet_server.models import Device
from fleet_server.observability.collectors import MAX_PROFILES, OTHER, FleetCollector, Sources


@dataclass
class Sessions:
    grpc: set[str] = field(default_factory=set)
    mqtt: set[str] = field(default_factory=set)

    def online(self) -> set[str]:
        return self.grpc | self.mqtt

    def local(self) -> set[str]:
        return self.online()

    def get(self, device_id: str, /) -> object | None:
        return object() if device_id in self.grpc else None

    def transport(self, device_id: str, /) -> str | None:
        return "grpc" if device_id in self.grpc else "mqtt" if device_id in self.mqtt else None


@dataclass
class Ingest:
    stats: IngestStats = field(default_factory=IngestStats)
    queue_depth: int = 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def engine_with(tmp_path: Path, profiles: dict[str, str]) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    upgrade(engine)
    with Session(engine) as s:
        s.add_all(Device(id=d, profile=p) for d, p in profiles.items())
        s.commit()
    return engine


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def count_queries(engine: Engine) -> list[str]:
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


def test_gauges_by_transport_and_profile_and_db_cache(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, {"a": "pi", "b": "pi", "c": "jetson", "d": ""})
    sessions, ingest, clock = Sessions(grpc={"a"}, mqtt={"c", "d"}), Ingest(), Clock()
    ingest.stats.telemetry_rows, ingest.queue_depth = 42, 3
    registry = CollectorRegistry()
    registry.register(FleetCollector(lambda: Sources(engine, sessions, ingest), clock=clock))
    queries = count_queries(engine)

    s = samples(registry)
    assert s[("edgeloop_devices_online", frozenset({("transport", "grpc"), ("profile", "pi")}))] == 1
    assert s[("edgeloop_devices_online", frozenset({("transport", "mqtt"), ("profile", "jetson")}))] == 1
    assert s[("edgeloop_devices_online", frozenset({("transport", "mqtt"), ("profile", "none")}))] == 1
    assert s[("edgeloop_devices_total", frozenset({("profile", "pi")}))] == 2
    assert s[("edgeloop_sync_streams", frozenset())] == 1
    assert s[("edgeloop_telemetry_records_total", frozenset())] == 42
    assert s[("edgeloop_ingest_queue_depth", frozenset())] == 3
    first = len(queries)

    sessions.grpc.add("b")  # online changes show at once; a known device costs no query
    s = samples(registry)
    assert s[("edgeloop_devices_online", frozenset({("transport", "grpc"), ("profile", "pi")}))] == 2
    assert len(queries) == first + 1  # only b's profile; the GROUP BYs are cached

    clock.now += 5  # past the cache: the database gauges are read again
    samples(registry)
    assert len(queries) == first + 1 + 4


def test_profiles_are_bounded(tmp_path: Path) -> None:
    profiles = {f"d{i}": f"p{i}" for i in range(MAX_PROFILES + 10)}
    engine = engine_with(tmp_path, profiles)
    registry = CollectorRegistry()
    registry.register(FleetCollector(lambda: Sources(engine, Sessions(grpc=set(profiles)), Ingest())))
    s = samples(registry)
    total = {dict(k[1])["profile"]: v for k, v in s.items() if k[0] == "edgeloop_devices_total"}
    online = {dict(k[1])["profile"] for k, v in s.items() if k[0] == "edgeloop_devices_online" and v}
    assert len(total) == MAX_PROFILES and total[OTHER] == 11
    assert len(online) == MAX_PROFILES and OTHER in online


def test_nothing_before_the_server_is_built() -> None:
    registry = CollectorRegistry()
    registry.register(FleetCollector(lambda: None))
    assert samples(registry) == {}

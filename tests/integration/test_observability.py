"""/metrics, /readyz, request ids and JSON logs against a real server (in-process LiveServer on
SQLite and PostgreSQL, and the `edgeloop-server run` process for the log format).

Metrics are parsed with prometheus_client's own parser and must move with what happens: devices
enrolled (by profile), a live Sync stream (online by transport and profile), telemetry pushed
through the real ingest (records counter, flush histogram), REST calls (latency histogram
labelled by route template, never by the raw path).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from fleet_server.db import make_engine
from fleet_server.main import create_app
from fleet_server.settings import Settings
from tests.conftest import drop_pg_database, make_pg_database
from tests.helpers.inproc import LiveServer, RawStream, device_channel, enroll, prepare, report, telemetry
from tests.helpers.procs import ServerProc, wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _app(settings: Settings) -> object:
    app = create_app(settings)
    assert hasattr(app.state, "observability"), "create_app installs /metrics and /readyz"
    return app


def _live(settings: Settings, tokens: dict[str, str]) -> Iterator[LiveServer]:
    with TestClient(_app(settings)) as client:  # type: ignore[arg-type]
        yield LiveServer(settings, client, tokens)


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[LiveServer]:
    settings, tokens = prepare(tmp_path / "srv", database_url)
    yield from _live(settings, tokens)


def scrape(server: LiveServer) -> Samples:
    resp = server.client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_move_with_devices_sessions_and_telemetry(server: LiveServer, tmp_path: Path) -> None:
    before = scrape(server)
    assert value(before, "edgeloop_devices_online", transport="grpc", profile="none") == 0
    assert value(before, "edgeloop_rollouts", state="running") == 0  # every state is present
    assert ("edgeloop_federated_runs", frozenset({("state", "running")})) in before
    records_before = value(before, "edgeloop_telemetry_records_total")

    pi = enroll(server, "pi-0001", server.bootstrap_token(), tmp_path, profile="pi")
    enroll(server, "pi-0002", server.bootstrap_token(), tmp_path, profile="pi")
    enroll(server, "jet-0001", server.bootstrap_token(), tmp_path, profile="jetson")

    with device_channel(server, pi) as channel:
        stream = RawStream(channel)
        stream.send(report(pi.device_id))
        stream.next_of("report_ack")
        stream.send(telemetry(1, [1, 2, 3, 4, 5]))
        ack = stream.next_of("telemetry_ack")
        assert list(ack.telemetry_ack.seqs) == [1, 2, 3, 4, 5]

        def settled() -> Samples | None:  # database gauges are cached ~2 s
            s = scrape(server)
            return s if value(s, "edgeloop_devices_total", profile="pi") == 2 else None

        during = wait_until(settled, 15, what="devices_total{profile=pi} == 2")
        assert value(during, "edgeloop_devices_total", profile="jetson") == 1
        assert value(during, "edgeloop_devices_online", transport="grpc", profile="pi") == 1
        assert value(during, "edgeloop_devices_online", transport="grpc", profile="jetson") == 0
        assert value(during, "edgeloop_sync_streams") == 1
        assert value(during, "edgeloop_telemetry_records_total") == records_before + 5
        assert value(during, "edgeloop_reports_total") >= 1
        assert value(during, "edgeloop_ingest_flush_seconds_count") >= 1
        assert value(during, "edgeloop_ingest_queue_depth") == 0
        assert value(during, "edgeloop_metrics_database_up") == 1
        stream.close()

    def closed() -> Samples | None:
        s = scrape(server)
        return s if value(s, "edgeloop_sync_streams") == 0 else None

    after = wait_until(closed, 15, what="the Sync stream to close")
    assert value(after, "edgeloop_devices_online", transport="grpc", profile="pi") == 0


def test_rest_latency_is_labelled_by_route_template(server: LiveServer) -> None:
    for device_id in ("a-1", "b-2", "c-3"):
        assert server.client.get(f"/api/v1/devices/{device_id}", headers=server.auth()).status_code == 404
    assert server.client.get("/api/v1/devices", headers=server.auth()).status_code == 200
    assert server.client.get("/no/such/path/x-9").status_code == 404

    samples = scrape(server)
    name = "edgeloop_http_request_duration_seconds_count"
    one = {"method": "GET", "route": "/api/v1/devices/{device_id}", "status": "4xx"}
    assert value(samples, name, **one) == 3
    assert value(samples, name, method="GET", route="/api/v1/devices", status="2xx") == 1
    assert value(samples, name, method="GET", route="(unmatched)", status="4xx") == 1
    routes = {dict(labels)["route"] for (n, labels) in samples if n == name}
    assert not any(raw in route for route in routes for raw in ("a-1", "b-2", "c-3", "x-9"))


def test_request_id_is_echoed_or_made(server: LiveServer) -> None:
    given = server.client.get("/healthz", headers={"X-Request-Id": "trace-42.a"})
    assert given.headers["x-request-id"] == "trace-42.a"
    made = server.client.get("/api/v1/devices/nope", headers=server.auth())
    assert made.status_code == 404 and len(made.headers["x-request-id"]) == 32
    forged = server.client.get("/metrics", headers={"X-Request-Id": "a\tb" + "x" * 300})
    assert forged.headers["x-request-id"] != "a\tb" + "x" * 300
    assert len(forged.headers["x-request-id"]) == 32


def test_readyz_is_ready_then_names_migrations_behind(server: LiveServer) -> None:
    ok = server.client.get("/readyz")
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["ready"] is True
    assert set(body["checks"]) == {"database", "migrations", "keys", "artifacts", "grpc"}
    assert all(c["ok"] for c in body["checks"].values())

    engine = make_engine(server.settings.resolved_database_url())
    try:
        with engine.begin() as conn:
            head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
            conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
        behind = server.client.get("/readyz")
        assert behind.status_code == 503
        assert behind.json()["ready"] is False
        assert behind.json()["failing"] == ["migrations"]
        assert "0001" in behind.json()["checks"]["migrations"]["detail"]
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})
        assert server.client.get("/readyz").status_code == 200
    finally:
        engine.dispose()


def test_readyz_names_missing_keys(server: LiveServer) -> None:
    audit_key = server.settings.data_dir / "audit" / "head_key.pem"
    saved = audit_key.read_bytes()
    audit_key.unlink()
    try:
        resp = server.client.get("/readyz")
        assert resp.status_code == 503
        assert resp.json()["failing"] == ["keys"]
        assert "head_key.pem" in resp.json()["checks"]["keys"]["detail"]
    finally:
        audit_key.write_bytes(saved)
    assert server.client.get("/readyz").status_code == 200


def test_readyz_names_an_artifact_store_without_the_repository(server: LiveServer) -> None:
    ota = server.client.app.state.ota  # type: ignore[attr-defined]
    key = ota.repo.metadata_key("timestamp.json")
    saved = ota.store.get(key)
    ota.store.delete(key)
    try:
        resp = server.client.get("/readyz")
        assert resp.status_code == 503, resp.text
        assert resp.json()["failing"] == ["artifacts"], resp.text
        assert "timestamp.json" in resp.json()["checks"]["artifacts"]["detail"]
    finally:
        ota.store.put(key, saved)
    # Ready again once the repository is back: nothing sticks. A probe may still miss its 3 s
    # deadline on a loaded CI box (that is a 503 too, naming the slow check), so poll briefly.
    last: list[str] = []

    def ready_again() -> bool:
        resp = server.client.get("/readyz")
        last[:] = [resp.text]
        return resp.status_code == 200

    try:
        wait_until(ready_again, timeout=20, interval=0.5, what="/readyz 200 again")
    except AssertionError as err:
        raise AssertionError(f"{err}; last answer: {last}") from None


@pytest.mark.postgres
def test_readyz_503_when_the_database_is_gone(tmp_path: Path) -> None:
    name, url = make_pg_database()
    try:
        settings, tokens = prepare(tmp_path / "srv", url)
        for live_server in _live(settings, tokens):
            assert live_server.client.get("/readyz").status_code == 200
            drop_pg_database(name)  # terminates the server's connections too (WITH FORCE)
            resp = live_server.client.get("/readyz")
            assert resp.status_code == 503
            failing = resp.json()["failing"]
            assert "database" in failing and "migrations" in failing
            assert "unreachable" in resp.json()["checks"]["database"]["detail"]
            metrics = live_server.client.get("/metrics")  # still answers, flags its database gauges
            assert metrics.status_code == 200
            assert "edgeloop_metrics_database_up 0.0" in metrics.text
    finally:
        drop_pg_database(name)


def test_json_logs_from_the_server_process(tmp_path: Path) -> None:
    srv = ServerProc(tmp_path / "srv", env_extra={"EDGELOOP_LOG_FORMAT": "json"})
    srv.init()
    log = tmp_path / "server.log"
    srv.start(log)
    try:
        httpx.get(srv.url + "/healthz", headers={"X-Request-Id": f"t-{uuid.uuid4().hex[:8]}"}, timeout=5)
    finally:
        assert srv.stop() == 0
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for rec in records:
        assert {"ts", "level", "logger", "msg"} <= set(rec)
    assert any(r["msg"].startswith("fleet server started") for r in records)

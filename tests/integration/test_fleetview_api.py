"""The fleet view REST API (/me, /fleet/summary, /fleet/devices, /devices/{id}/series) against a
real server on SQLite and PostgreSQL: counts, filters, sorting and paging in SQL, the model and
health columns following real device reports, bad query strings as 422s, CSRF and CORS refusals,
and a bounded statement count for a page of a 10,000-device fleet on PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, insert

from fleet_server.drift.models import DriftEpisodeRow
from fleet_server.main import create_app
from fleet_server.models import Device, TelemetryRecord, utcnow
from fleet_server.ota.models import OtaDeviceStatus
from protos.edgeloop.v1 import device_pb2 as pb
from tests.conftest import drop_pg_database, make_pg_database
from tests.helpers.inproc import LiveServer, RawStream, device_channel, enroll, prepare

# ------------------------------------------------------------------ wiring until main.py has it


@pytest.fixture
def fv(tmp_path: Path, database_url: str) -> Iterator[LiveServer]:
    settings, tokens = prepare(tmp_path / "srv", database_url)
    with TestClient(create_app(settings)) as client:
        yield LiveServer(settings, client, tokens)


def _device(i: int | str, **kw: Any) -> dict[str, Any]:
    now = utcnow()
    row: dict[str, Any] = {
        "id": i if isinstance(i, str) else f"dev-{i:05d}",
        "profile": "pi",
        "labels": {},
        "status": "active",
        "cert_serial": "",
        "cert_fingerprint": "",
        "agent_version": "t",
        "enrolled_at": now,
        "first_seen_at": now,
        "last_seen_at": now,
        "observed": {},
        "desired_generation": 1,
        "telemetry_dropped_total": 0,
        "transport": "grpc",
        "pending_cert_serial": "",
        "pending_cert_fingerprint": "",
        "model": "",
        "reported_health": "ok",
    }
    row.update(kw)
    return row


def _insert(server: LiveServer, table: Any, rows: list[dict[str, Any]]) -> None:
    engine = server.client.app.state.engine  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(insert(table), rows)


def _fleet(server: LiveServer) -> None:
    """Six devices, one per interesting case."""
    old = utcnow() - timedelta(hours=2)
    _insert(
        server,
        Device,
        [
            _device("a-ok", model="digits@3", labels={"site": "a"}),
            _device("b-stale", model="digits@3", labels={"site": "a"}, last_seen_at=old, profile="jetson"),
            _device("c-revoked", status="revoked", labels={"site": "b"}, transport="mqtt"),
            _device("d-failing", model="digits@2", reported_health="failing"),
            _device("e-drift", model="digits@3"),
            _device("f-ota", model="digits@2", last_seen_at=None, first_seen_at=None),
            _device("g-ota", model="digits@2"),
        ],
    )
    _insert(
        server,
        DriftEpisodeRow,
        [
            {
                "device_id": "e-drift", "monitor_id": "m", "episode_id": 1, "stream": "input",
                "state": "open", "start_sample": 0, "detected_sample": 1, "end_sample": 0,
                "samples_seen": 1, "opened_ms": 1, "closed_ms": 0, "severity": 2.0, "budget_per_10k": 1.0,
                "signature": "s", "last_seq": 1, "features": [], "evidence": [],
            }
        ],
    )  # fmt: skip
    _insert(
        server,
        OtaDeviceStatus,
        [  # g-ota: failed in an old deployment, committed in a later one -> healthy
            {
                "device_id": "g-ota",
                "deployment_id": "d1",
                "release_seq": 1,
                "state": "failed",
                "transition": 3,
            },
            {
                "device_id": "g-ota",
                "deployment_id": "d2",
                "release_seq": 2,
                "state": "committed",
                "transition": 9,
            },
        ],
    )


def test_me_says_who_and_what_role(fv: LiveServer) -> None:
    body = fv.client.get("/api/v1/me", headers=fv.auth("viewer")).json()
    assert body["name"] == "viewer-user" and body["role"] == "viewer" and body["id"]
    assert "expires_at" in body
    assert fv.client.get("/api/v1/me").status_code == 401


def test_summary_counts_the_fleet(fv: LiveServer) -> None:
    _fleet(fv)
    s = fv.client.get("/api/v1/fleet/summary", headers=fv.auth("viewer")).json()
    assert (s["total"], s["online"], s["offline"], s["revoked"]) == (7, 0, 7, 1)
    assert s["by_transport"] == {"grpc": 6, "mqtt": 1}
    assert s["by_profile"] == {"pi": 6, "jetson": 1}
    assert s["by_model"] == {"digits@3": 3, "digits@2": 3, "none": 1}
    assert s["by_health"] == {"healthy": 2, "stale": 2, "degraded": 2, "revoked": 1}
    assert s["by_label"][0] == {"key": "site", "value": "a", "count": 2}
    assert {"key": "site", "value": "b", "count": 1} in s["by_label"]


def _page(server: LiveServer, query: str) -> dict[str, Any]:
    resp = server.client.get(f"/api/v1/fleet/devices?{query}", headers=server.auth("viewer"))
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def test_devices_filter_sort_and_page_in_sql(fv: LiveServer) -> None:
    _fleet(fv)
    ids = lambda q: [d["id"] for d in _page(fv, q)["items"]]  # noqa: E731
    assert ids("") == ["a-ok", "b-stale", "c-revoked", "d-failing", "e-drift", "f-ota", "g-ota"]
    assert ids("sort=-id&limit=2&offset=1") == ["f-ota", "e-drift"]
    assert _page(fv, "limit=2")["total"] == 7
    assert ids("health=degraded") == ["d-failing", "e-drift"]
    assert ids("health=stale") == ["b-stale", "f-ota"]
    assert ids("health=healthy") == ["a-ok", "g-ota"]
    assert ids("health=revoked") == ["c-revoked"]
    assert ids("model=digits@2&sort=-id") == ["g-ota", "f-ota", "d-failing"]
    assert ids("model=none") == ["c-revoked"]
    assert ids("label=site=a") == ["a-ok", "b-stale"]
    assert ids("label=site=a&label=site=b") == []
    assert ids("profile=jetson") == ["b-stale"]
    assert ids("q=ota") == ["f-ota", "g-ota"]
    assert ids("q=100%25") == []  # a LIKE wildcard in q is a literal
    assert ids("online=true") == [] and len(ids("online=false")) == 7
    assert ids("sort=-last_seen_at")[-1] == "f-ota"  # never seen: last, whatever the direction
    assert ids("sort=last_seen_at")[-1] == "f-ota"
    assert ids("sort=model")[0] == "c-revoked"
    item = _page(fv, "q=a-ok")["items"][0]
    assert item["model"] == "digits@3" and item["health"] == "healthy" and item["online"] is False
    assert item["labels"] == {"site": "a"} and "observed" in item
    assert _page(fv, "q=c-revoked")["items"][0]["model"] is None


@pytest.mark.parametrize(
    "query",
    [
        "/api/v1/fleet/devices?sort=garbage",
        "/api/v1/fleet/devices?limit=-1",
        "/api/v1/fleet/devices?limit=0",
        "/api/v1/fleet/devices?limit=501",
        "/api/v1/fleet/devices?offset=-5",
        "/api/v1/fleet/devices?label=site",
        "/api/v1/fleet/devices?label=%20bad=x",
        "/api/v1/fleet/devices?online=maybe",
        "/api/v1/fleet/devices?health=sick",
        "/api/v1/fleet/devices?q=a%00b",
        "/api/v1/fleet/devices?limit=99999999999999999999999",
        "/api/v1/devices/dev-1/series?window_s=10",
        "/api/v1/devices/dev-1/series?points=0",
        "/api/v1/devices/dev-1/series?window_s=100&points=1000",
        "/api/v1/devices/dev-1/series?window_s=abc",
    ],
)
def test_bad_query_strings_are_422_with_a_reason(fv: LiveServer, query: str) -> None:
    resp = fv.client.get(query, headers=fv.auth("viewer"))
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert isinstance(body["detail"], str) and body["detail"] and "Traceback" not in body["detail"]


def test_label_without_equals_names_the_problem(fv: LiveServer) -> None:
    resp = fv.client.get("/api/v1/fleet/devices?label=site", headers=fv.auth("viewer"))
    assert "must be key=value" in resp.json()["detail"]


def test_model_and_health_columns_follow_real_reports(fv: LiveServer, tmp_path: Path) -> None:
    creds = enroll(fv, "dev-r", fv.bootstrap_token(labels={"site": "r"}), tmp_path)
    with device_channel(fv, creds) as ch:
        stream = RawStream(ch)
        stream.next_of("desired")
        slot = pb.SlotState(slot="default", model_name="digits", model_version="3")
        msg = pb.DeviceReport(device_id="dev-r", sequence=1, agent_version="t", slots=[slot])
        msg.health = pb.HEALTH_DEGRADED
        stream.send(pb.SyncRequest(report=msg))
        stream.next_of("report_ack")
        item = _page(fv, "q=dev-r")["items"][0]
        assert item["online"] is True
        assert (item["model"], item["health"]) == ("digits@3", "degraded")
        assert _page(fv, "online=true&model=digits@3")["total"] == 1
        ok = pb.DeviceReport(device_id="dev-r", sequence=2, agent_version="t", health=pb.HEALTH_OK)
        stream.send(pb.SyncRequest(report=ok))  # no slots any more: no model
        stream.next_of("report_ack")
        item = _page(fv, "q=dev-r")["items"][0]
        assert (item["model"], item["health"]) == (None, "healthy")
        stream.close()


def _telemetry(device_id: str, seq: int, ts_s: float, received_s: float, **metrics: float) -> dict[str, Any]:
    from datetime import UTC, datetime

    return {
        "device_id": device_id, "seq": seq, "timestamp_ms": int(ts_s * 1000),
        "kind": "inference" if metrics else "system", "metrics": metrics, "payload": b"",
        "received_at": datetime.fromtimestamp(received_s, UTC),
    }  # fmt: skip


def test_series_buckets_the_devices_inference_and_outbox(fv: LiveServer) -> None:
    _insert(fv, Device, [_device("dev-s", observed={"telemetry_queued": 0})])
    now = time.time()
    m = "inference.digits@3."
    rows = [
        # 50-40 min ago: two windows in one 10-minute bucket (100 and 300 requests)
        _telemetry("dev-s", 1, now - 2900, now - 2899, **{m + "requests": 100, m + "latency_p50_ms": 2,
                   m + "latency_p95_ms": 4, m + "errors": 1}),
        _telemetry("dev-s", 2, now - 2800, now - 2799, **{m + "requests": 300, m + "latency_p50_ms": 6,
                   m + "latency_p95_ms": 8, m + "errors": 2}),
        # created 25 min ago while offline, delivered 5 min ago: in the outbox for 20 minutes
        _telemetry("dev-s", 3, now - 1500, now - 300),
        _telemetry("dev-s", 4, now - 1400, now - 300),
    ]  # fmt: skip
    _insert(fv, TelemetryRecord, rows)
    resp = fv.client.get("/api/v1/devices/dev-s/series?window_s=3600&points=6", headers=fv.auth("viewer"))
    s = resp.json()
    assert len(s["t"]) == 6 and s["t"][1] - s["t"][0] == pytest.approx(600)
    assert s["latency_p50_ms"][1] == pytest.approx(5.0)  # (2*100 + 6*300) / 400
    assert s["latency_p95_ms"][1] == pytest.approx(7.0)
    assert s["throughput_per_s"][1] == pytest.approx(400 / 600)
    assert s["errors"][1] == 3
    assert s["latency_p50_ms"][0] is None and s["throughput_per_s"][3] is None
    # bucket ends: -3000,-2400,-1800,-1200,-600,0 s; records 3 and 4 wait from -1500/-1400 to -300
    assert s["outbox"][3:5] == [2, 2]
    assert s["outbox"][5] == 0
    missing = fv.client.get("/api/v1/devices/nope/series", headers=fv.auth("viewer"))
    assert missing.status_code == 404 and "not found" in missing.json()["detail"]


def test_no_csrf_cookies_are_never_credentials_and_no_cors(fv: LiveServer) -> None:
    _insert(fv, Device, [_device("dev-c")])
    token = fv.tokens["admin"]
    for name in ("token", "session", "Authorization", "edgeloop_token"):
        fv.client.cookies.set(name, token)
    try:
        patch = fv.client.patch("/api/v1/devices/dev-c/labels", json={"labels": {"x": "y"}})
        revoke = fv.client.post("/api/v1/devices/dev-c/revoke", json={"reason": "csrf"})
        assert patch.status_code == 401 and revoke.status_code == 401
        assert fv.client.get("/api/v1/fleet/devices").status_code == 401
    finally:
        fv.client.cookies.clear()
    evil = {"Origin": "https://evil.example", "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
    preflight = fv.client.options("/api/v1/devices/dev-c/labels", headers=evil)
    assert preflight.status_code != 200 or "access-control-allow-origin" not in preflight.headers
    answer = fv.client.get("/api/v1/fleet/summary", headers={**fv.auth("viewer"), "Origin": evil["Origin"]})
    assert answer.status_code == 200
    cors = [h for h in answer.headers if h.lower().startswith("access-control-")]
    assert cors == [] and all(not h.lower().startswith("access-control-") for h in preflight.headers)
    device = fv.client.get("/api/v1/fleet/devices?q=dev-c", headers=fv.auth("viewer")).json()["items"][0]
    assert device["labels"] == {} and device["status"] == "active"  # nothing changed


# ------------------------------------------------------------------ 10,000 devices on PostgreSQL


@pytest.fixture
def pg_fleet(tmp_path: Path, pg_available: bool) -> Iterator[LiveServer]:
    if not pg_available:
        pytest.fail("PostgreSQL is not reachable (start it: .ci/run does)")
    name, url = make_pg_database()
    try:
        settings, tokens = prepare(tmp_path / "srv", url)
        with TestClient(create_app(settings)) as client:
            yield LiveServer(settings, client, tokens)
    finally:
        drop_pg_database(name)


class _Statements:
    """SQL statements the request runs: those on the threads FastAPI runs sync routes and
    dependencies on (AnyIO workers), not the server's background loops on the same engine
    (the rollout engine, the audit signer), which run on their own threads."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.sql = engine, []

    def __enter__(self) -> _Statements:
        event.listen(self.engine, "before_cursor_execute", self._on)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._on)

    def _on(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.current_thread().name.startswith("AnyIO worker"):
            self.sql.append(statement)


@pytest.mark.postgres
def test_ten_thousand_devices_page_with_a_bounded_number_of_statements(pg_fleet: LiveServer) -> None:
    n = 10_000
    rows = [
        _device(i, model=f"digits@{i % 4}", labels={"site": f"s{i % 20}", "ring": str(i % 3)},
                profile="pi" if i % 2 else "jetson", reported_health="failing" if i % 97 == 0 else "ok")
        for i in range(n)
    ]  # fmt: skip
    _insert(pg_fleet, Device, rows)
    engine = pg_fleet.client.app.state.engine  # type: ignore[attr-defined]
    headers = pg_fleet.auth("viewer")
    pg_fleet.client.get("/api/v1/me", headers=headers)  # the token's throttled last-use write, done once
    counts = {}
    for query in ("limit=1", "limit=500", "limit=500&offset=9000&sort=-model",
                  "limit=500&label=site=s3&online=false&health=degraded&sort=-last_seen_at",
                  "limit=500&q=dev-0&profile=pi&model=digits@1"):  # fmt: skip
        with _Statements(engine) as seen:
            resp = pg_fleet.client.get(f"/api/v1/fleet/devices?{query}", headers=headers)
        assert resp.status_code == 200, resp.text
        counts[query] = len(seen.sql)
    # The token, the count, the page: whatever the page size, offset, filters or sort.
    assert set(counts.values()) == {3}, counts
    page = pg_fleet.client.get(
        "/api/v1/fleet/devices?limit=500&offset=9000&sort=-model", headers=headers
    ).json()
    assert page["total"] == n and len(page["items"]) == 500
    assert page["items"][0]["model"] == "digits@0"
    degraded = pg_fleet.client.get("/api/v1/fleet/devices?health=degraded&limit=500", headers=headers).json()
    assert degraded["total"] == len(range(0, n, 97))
    with _Statements(engine) as seen:
        summary = pg_fleet.client.get("/api/v1/fleet/summary", headers=headers).json()
    assert len(seen.sql) <= 7, seen.sql  # the token + six aggregates
    assert summary["total"] == n and summary["by_model"]["digits@1"] == n // 4
    assert summary["by_profile"] == {"pi": n // 2, "jetson": n // 2}
    assert len(summary["by_label"]) == 23 and summary["by_health"]["degraded"] == len(range(0, n, 97))

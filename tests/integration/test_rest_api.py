"""Operator REST API: authentication, roles, validation, against SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from fleet_server.console.routes import STATIC_DIR
from tests.helpers.inproc import LiveServer, enroll

CONSOLE_JS = STATIC_DIR / "console.js"


def test_healthz_and_openapi(server: LiveServer) -> None:
    health = server.client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    paths = server.client.get("/openapi.json").json()["paths"]
    assert "/api/v1/devices" in paths and "/api/v1/bootstrap-tokens" in paths


def test_no_token_is_401_and_bad_token_is_401(server: LiveServer) -> None:
    assert server.client.get("/api/v1/devices").status_code == 401
    bad = server.client.get("/api/v1/devices", headers={"Authorization": "Bearer op_x.y"})
    assert bad.status_code == 401 and "unknown" in bad.json()["detail"]
    junk = server.client.get("/api/v1/devices", headers={"Authorization": "Bearer garbage"})
    assert junk.status_code == 401


def test_roles(server: LiveServer) -> None:
    c = server.client
    assert c.get("/api/v1/devices", headers=server.auth("viewer")).status_code == 200
    denied = c.post("/api/v1/bootstrap-tokens", json={}, headers=server.auth("viewer"))
    assert denied.status_code == 403 and "needs 'operator'" in denied.json()["detail"]
    created = c.post(
        "/api/v1/bootstrap-tokens", json={"labels": {"site": "a"}}, headers=server.auth("operator")
    )
    assert created.status_code == 201 and created.json()["token"].startswith("bt_")
    assert (
        c.post("/api/v1/operator-tokens", json={"name": "x"}, headers=server.auth("operator")).status_code
        == 403
    )
    minted = c.post(
        "/api/v1/operator-tokens", json={"name": "ci", "role": "viewer"}, headers=server.auth("admin")
    )
    assert minted.status_code == 201
    assert (
        c.get("/api/v1/devices", headers={"Authorization": f"Bearer {minted.json()['token']}"}).status_code
        == 200
    )


def test_bad_requests_get_clear_4xx(server: LiveServer, tmp_path: Path) -> None:
    c, h = server.client, server.auth("admin")
    assert c.get("/api/v1/devices/nope", headers=h).status_code == 404
    assert c.post("/api/v1/bootstrap-tokens", json={"ttl_s": 1}, headers=h).status_code == 422
    assert c.post("/api/v1/bootstrap-tokens", content=b"{not json", headers=h).status_code == 422
    assert c.get("/api/v1/devices", params={"label": "novalue"}, headers=h).status_code == 422
    assert c.get("/api/v1/devices", params={"limit": -1}, headers=h).status_code == 422
    enroll(server, "dev-a", server.bootstrap_token(), tmp_path)
    bad_key = c.patch("/api/v1/devices/dev-a/labels", json={"labels": {"bad key!": "x"}}, headers=h)
    assert bad_key.status_code == 422 and "bad key!" in bad_key.json()["detail"]
    assert bad_key.json()["errors"][0]["loc"] == ["body", "labels", "bad key!", "[key]"]
    assert c.patch("/api/v1/devices/dev-a/labels", json={"labels": "x"}, headers=h).status_code == 422


def test_label_and_filter(server: LiveServer, tmp_path: Path) -> None:
    c, h = server.client, server.auth("operator")
    enroll(server, "dev-a", server.bootstrap_token(labels={"site": "a"}), tmp_path)
    enroll(server, "dev-b", server.bootstrap_token(labels={"site": "b"}), tmp_path)
    resp = c.patch(
        "/api/v1/devices/dev-b/labels", json={"labels": {"tier": "canary", "site": None}}, headers=h
    )
    assert resp.status_code == 200
    assert resp.json()["labels"] == {"tier": "canary"} and resp.json()["desired_generation"] == 2
    only_a = c.get("/api/v1/devices", params={"label": "site=a"}, headers=h).json()
    assert [d["id"] for d in only_a] == ["dev-a"]


# ---------------------------------------------------------------- issue 11: no 500s, schema = API

TOO_BIG = str(2**63)  # one past BIGINT: the driver overflowed and the API answered 500
INT64_MAX = str(2**63 - 1)
INT32_MAX = str(2**31 - 1)  # model version numbers are INTEGER on PostgreSQL


def _refused(resp: httpx.Response, field: str | int) -> None:
    """A 422 in the documented shape that names the offending field."""
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert isinstance(body["detail"], str) and str(field) in body["detail"], body
    assert body["error"] == "InvalidRequestError"
    assert [e["loc"][-1] for e in body["errors"]] == [field], body["errors"]


def test_out_of_range_numbers_are_422_never_500(server: LiveServer, tmp_path: Path) -> None:
    """Integers >= 2^63 and non-positive page sizes, as a viewer (the least a caller needs)."""
    c, h = server.client, server.auth("viewer")
    enroll(server, "dev-a", server.bootstrap_token(), tmp_path)
    refused = {
        f"/api/v1/devices?offset={TOO_BIG}": "offset",
        "/api/v1/devices?limit=-1": "limit",
        "/api/v1/devices?limit=0": "limit",
        f"/api/v1/devices?limit={TOO_BIG}": "limit",
        f"/api/v1/devices/dev-a/telemetry?after_seq={TOO_BIG}": "after_seq",
        "/api/v1/devices/dev-a/telemetry?after_seq=-1": "after_seq",
        f"/api/v1/drift/cohorts?since_ms={TOO_BIG}": "since_ms",
        f"/api/v1/drift/episodes?offset={TOO_BIG}": "offset",
        "/api/v1/drift/episodes?limit=-1": "limit",
        f"/api/v1/drift/episodes/{TOO_BIG}": "episode_row_id",
        f"/api/v1/releases/{TOO_BIG}/deployments": "seq",
        f"/api/v1/models/m/versions/{TOO_BIG}": "version",
        f"/api/v1/models/m/versions/{2**31}": "version",
    }
    for url, field in refused.items():
        _refused(c.get(url, headers=h), field)
    # The largest value a BIGINT holds reaches the database on both backends and is answered.
    assert c.get(f"/api/v1/devices/dev-a/telemetry?after_seq={INT64_MAX}", headers=h).json() == []
    assert c.get(f"/api/v1/drift/cohorts?since_ms={INT64_MAX}", headers=h).status_code == 200
    assert c.get(f"/api/v1/drift/episodes/{INT64_MAX}", headers=h).status_code == 404
    assert c.get(f"/api/v1/releases/{INT64_MAX}/deployments", headers=h).status_code == 404
    assert c.get(f"/api/v1/models/m/versions/{INT32_MAX}", headers=h).status_code == 404
    assert c.get("/api/v1/devices?offset=1000000000", headers=h).json() == []
    deploy = c.post(
        f"/api/v1/releases/{TOO_BIG}/deployments", json={"device_ids": ["dev-a"]}, headers=server.auth()
    )
    _refused(deploy, "seq")


def test_strings_longer_than_their_columns_or_with_nul_are_422(server: LiveServer, tmp_path: Path) -> None:
    """PostgreSQL refuses over-long varchars and NUL in text: that was a 500, now a 422 up front."""
    c, admin = server.client, server.auth()
    enroll(server, "dev-a", server.bootstrap_token(), tmp_path)
    _refused(c.post("/api/v1/operator-tokens", json={"name": "n" * 65}, headers=admin), "name")
    _refused(c.post("/api/v1/bootstrap-tokens", json={"profile": "p" * 65}, headers=admin), "profile")
    nul = c.patch("/api/v1/devices/dev-a/labels", json={"labels": {"site": "a\x00b"}}, headers=admin)
    _refused(nul, "site")
    long_value = c.patch("/api/v1/devices/dev-a/labels", json={"labels": {"k": "v" * 254}}, headers=admin)
    _refused(long_value, "k")
    _refused(c.get("/api/v1/devices/" + "d" * 129, headers=admin), "device_id")
    _refused(c.get("/api/v1/devices/a%00b", headers=admin), "device_id")
    _refused(c.get("/api/v1/models?name=a%00b", headers=admin), "name")
    parent = {"name": "m", "artifact_sha256": "0" * 64, "parent_version": 2**31}
    _refused(c.post("/api/v1/models", json=parent, headers=admin), "parent_version")
    _refused(c.get("/api/v1/devices", params={"label": "site"}, headers=admin), 0)  # label[0]
    assert c.get("/api/v1/devices/dev-a", headers=admin).json()["labels"] == {}  # nothing half-written


def test_install_root_refuses_what_is_not_root_metadata(server: LiveServer) -> None:
    c, admin = server.client, server.auth()
    root_before = c.get("/ota/metadata/root.json").content
    bad = {
        b"\x89PNG\r\n\x1a\n": "not JSON",
        b"\xff\xfe{}": "not JSON",
        b"[1, 2, 3]": '"_type": "root"',
        b'{"signed": {"_type": "targets"}, "signatures": []}': '"_type": "root"',
        b'{"signed": {"_type": "root"}, "signatures": []}': "root refused",
    }
    for body, reason in bad.items():
        resp = c.post("/api/v1/ota/root", content=body, headers=admin)
        assert resp.status_code == 422 and reason in resp.json()["detail"], (body, resp.text)
        assert resp.json()["error"] == "InvalidRequestError"
    too_big = c.post("/api/v1/ota/root", content=b"{" + b" " * 600_000 + b"}", headers=admin)
    assert too_big.status_code == 413 and too_big.json()["error"] == "RequestEntityTooLargeError"
    assert c.post("/api/v1/ota/root", content=b"{}", headers=server.auth("viewer")).status_code == 403
    assert c.get("/ota/metadata/root.json").content == root_before


def test_every_error_has_the_documented_shape(server: LiveServer) -> None:
    """{detail: str, error: str} for 401/403/404/409/422, and the schema says exactly that."""
    c = server.client
    answers = {
        401: c.get("/api/v1/devices"),
        403: c.post("/api/v1/operator-tokens", json={"name": "x"}, headers=server.auth("viewer")),
        404: c.get("/api/v1/devices/nope", headers=server.auth()),
        422: c.get("/api/v1/devices?limit=-1", headers=server.auth()),
    }
    names = {401: "AuthError", 403: "ForbiddenError", 404: "NotFoundError", 422: "InvalidRequestError"}
    for code, resp in answers.items():
        assert resp.status_code == code and resp.json()["error"] == names[code], resp.text
        assert isinstance(resp.json()["detail"], str)
    assert answers[401].headers["WWW-Authenticate"] == "Bearer"
    schema = c.get("/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(schema["paths"])  # FastAPI's list-shaped 422
    for path, item in schema["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for method, op in item.items():
            for code in ("400", "401", "403", "422", "503"):
                ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorResponse"), (method, path, code)
    error = schema["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["detail", "error"] and error["properties"]["detail"]["type"] == "string"
    devices = schema["paths"]["/api/v1/devices"]["get"]["parameters"]
    offset = next(p for p in devices if p["name"] == "offset")["schema"]
    assert offset["minimum"] == 0 and offset["maximum"] == 10**9
    labels = schema["components"]["schemas"]["DeviceLabelsUpdate"]["properties"]["labels"]
    assert labels["additionalProperties"] is False and labels["patternProperties"]


def _aware(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0), value
    return parsed


def test_every_datetime_is_utc_with_an_offset(server: LiveServer, tmp_path: Path) -> None:
    """Releases had no created_at, deployment rows no updated_at and no offset: the console showed
    "Created: never" and a different age in Tokyo than in New York."""
    c, h = server.client, server.auth()
    before = datetime.now(UTC) - timedelta(seconds=5)
    enroll(server, "dev-a", server.bootstrap_token(), tmp_path)
    artifact = tmp_path / "model.tflite"
    artifact.write_bytes(bytes(range(256)) * 64)
    blob = c.put("/api/v1/ota/blobs", content=artifact.read_bytes(), headers=h).json()
    body = {
        "model_name": "m",
        "model_version": "1",
        "artifact_sha256": blob["sha256"],
        "filename": "m.tflite",
    }
    release = c.post("/api/v1/releases", json=body, headers=h)
    assert release.status_code == 201, release.text
    deployed = c.post(
        f"/api/v1/releases/{release.json()['seq']}/deployments", json={"device_ids": ["dev-a"]}, headers=h
    ).json()
    stamps = [
        c.get("/api/v1/releases", headers=h).json()[0]["created_at"],
        c.get(f"/api/v1/deployments/{deployed['deployment_id']}", headers=h).json()[0]["updated_at"],
        c.get(f"/api/v1/releases/{release.json()['seq']}/deployments", headers=h).json()[0]["updated_at"],
        c.get("/api/v1/devices/dev-a", headers=h).json()["enrolled_at"],
        c.get("/api/v1/bootstrap-tokens", headers=h).json()[0]["created_at"],
    ]
    for stamp in stamps:
        assert before <= _aware(stamp) <= datetime.now(UTC) + timedelta(seconds=5), stamp
    if shutil.which("node"):
        now_ms = int(_aware(stamps[1]).timestamp() * 1000) + 42_000  # one fixed "now" for every zone
        ages = {tz: _console_age(stamps[1], tz, now_ms) for tz in ("Asia/Tokyo", "America/New_York", "UTC")}
        assert set(ages.values()) == {"42 s ago"}, ages
        naive = {tz: _console_age(stamps[1][:26], tz, now_ms) for tz in ("Asia/Tokyo", "America/New_York")}
        assert set(naive.values()) == {"42 s ago"}, naive  # an older server's naive time is read as UTC


def _console_age(stamp: str, tz: str, now_ms: int) -> str:
    """The console's own `fmtAgo` under node in time zone `tz`, at `now_ms`."""
    script = (
        "const vm = require('vm'), fs = require('fs'); const ctx = {URLSearchParams}; vm.createContext(ctx);"
        f"vm.runInContext(fs.readFileSync({json.dumps(str(CONSOLE_JS))}, 'utf8'), ctx);"
        f"process.stdout.write(ctx.EdgeloopConsole.fmtAgo({json.dumps(stamp)}, {now_ms}));"
    )
    done = subprocess.run(
        ["node", "-e", script], capture_output=True, text=True, timeout=60, env={**os.environ, "TZ": tz}
    )
    assert done.returncode == 0, done.stderr
    return done.stdout

"""Operator REST API: authentication, roles, validation, against SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.inproc import LiveServer, enroll


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

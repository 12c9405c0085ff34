"""Operator and bootstrap token lifecycle against the real server app, on SQLite and PostgreSQL:
list (no secrets), create with a TTL, expiry, rotation with and without a grace period, revoke,
role refusals, the last admin token, bootstrap-token revocation refusing enrollment, the
per-token rate limit, the REST body limit and the `edgeloop` commands over all of it.

Time is never waited for: an expired token or an ended grace period is made by minting or
rotating with a `now` in the past through the same crud functions the routes call.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from fleet_server import operator_cli
from fleet_server.api.body_limit import BodyLimitMiddleware
from fleet_server.api.deps import OperatorRateLimiter
from fleet_server.crud import tokens as crud
from fleet_server.errors import ForbiddenError
from fleet_server.main import create_app
from fleet_server.models import OperatorToken
from fleet_server.security import Role
from tests.helpers.inproc import LiveServer, enroll, operator_api, prepare

API = "/api/v1"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _id(token: str) -> str:
    return token.split("_", 1)[1].split(".", 1)[0]


def _ok(resp: Any, status: int = 200) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json()


def _session(server: LiveServer) -> Session:
    return Session(server.client.app.state.engine, expire_on_commit=False)  # type: ignore[attr-defined]


def _mint(server: LiveServer, role: str = "viewer", ttl_s: int | None = None, name: str = "ci") -> str:
    body = {"name": name, "role": role, "ttl_s": ttl_s}
    return str(
        _ok(server.client.post(f"{API}/operator-tokens", json=body, headers=server.auth()), 201)["token"]
    )


def _devices(server: LiveServer, token: str) -> Any:
    return server.client.get(f"{API}/devices", headers=_bearer(token))


# ---------------------------------------------------------------- list, create, expiry


def test_list_shows_every_field_and_never_a_secret(server: LiveServer) -> None:
    created = _ok(
        server.client.post(
            f"{API}/operator-tokens",
            json={"name": "ci", "role": "operator", "ttl_s": 3600},
            headers=server.auth(),
        ),
        201,
    )
    assert created["created_by"] == "admin-user" and created["role"] == "operator"
    expires = datetime.fromisoformat(created["expires_at"])
    assert (
        timedelta(seconds=3500)
        < expires - datetime.fromisoformat(created["created_at"])
        <= timedelta(hours=1)
    )
    listing = server.client.get(f"{API}/operator-tokens", headers=server.auth())
    rows = {r["id"]: r for r in _ok(listing)}
    assert set(rows) == {_id(t) for t in server.tokens.values()} | {created["id"]}
    assert set(rows[created["id"]]) == {
        "id", "name", "role", "created_by", "created_at", "expires_at",
        "last_used_at", "revoked_at", "rotated_from",
    }  # fmt: skip
    secret = created["token"].split(".", 1)[1]
    with _session(server) as s:
        digest = s.get(OperatorToken, created["id"]).secret_hash  # type: ignore[union-attr]
    for text in (listing.text, server.client.get(f"{API}/audit", headers=server.auth()).text):
        assert secret not in text and digest not in text
    assert rows[_id(server.tokens["viewer"])]["expires_at"] is None  # no ttl: never expires


def test_an_expired_token_is_refused_with_token_expired(server: LiveServer) -> None:
    with _session(server) as s:
        _, token = crud.create_operator_token(
            session=s, name="old", role=Role.VIEWER, ttl_s=60, now=datetime.now(UTC) - timedelta(hours=1)
        )
    resp = _devices(server, token)
    assert resp.status_code == 401 and "token expired" in resp.json()["detail"]
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    fresh = _mint(server, ttl_s=3600)
    assert _devices(server, fresh).status_code == 200


def test_last_used_is_written_at_most_once_a_minute(server: LiveServer) -> None:
    token = _mint(server)

    def last_used() -> str | None:
        rows = _ok(server.client.get(f"{API}/operator-tokens", headers=server.auth()))
        value: str | None = next(r["last_used_at"] for r in rows if r["id"] == _id(token))
        return value

    assert last_used() is None
    _ok(_devices(server, token))
    first = last_used()
    assert first is not None
    _ok(_devices(server, token))
    assert last_used() == first  # a second request within the minute writes nothing
    with _session(server) as s:
        row = s.get(OperatorToken, _id(token))
        assert row is not None
        later = datetime.fromisoformat(first) + timedelta(seconds=61)
        assert not crud.mark_used(session=s, row=row, now=later - timedelta(seconds=2))
        assert crud.mark_used(session=s, row=row, now=later)
    assert datetime.fromisoformat(last_used() or "") == later


# ---------------------------------------------------------------- revoke, rotate


def test_revoke_is_immediate_and_audited_with_the_admins_identity(server: LiveServer) -> None:
    token = _mint(server, role="operator")
    assert _devices(server, token).status_code == 200
    revoked = _ok(server.client.post(f"{API}/operator-tokens/{_id(token)}/revoke", headers=server.auth()))
    assert revoked["revoked_at"] is not None and "token" not in revoked
    refused = _devices(server, token)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    again = server.client.post(f"{API}/operator-tokens/{_id(token)}/revoke", headers=server.auth())
    assert again.status_code == 409 and "already revoked" in again.json()["detail"]
    unknown = server.client.post(f"{API}/operator-tokens/nope/revoke", headers=server.auth())
    assert unknown.status_code == 404

    entries = _ok(server.client.get(f"{API}/audit", params={"limit": 500}, headers=server.auth()))["entries"]
    mine = [e for e in entries if e["action"].startswith("operator_token.")]
    assert [e["action"] for e in mine] == ["operator_token.created", "operator_token.revoked"]
    for e in mine:
        assert e["actor"]["id"] == _id(server.tokens["admin"]) and e["actor"]["name"] == "admin-user"
        assert e["target"] == {"kind": "operator_token", "id": _id(token)}
    assert token.split(".", 1)[1] not in json.dumps(entries)


def test_rotate_without_grace_cuts_the_old_token_at_once(server: LiveServer) -> None:
    old = _mint(server, role="operator", ttl_s=7200, name="deploy-bot")
    new = _ok(server.client.post(f"{API}/operator-tokens/{_id(old)}/rotate", headers=server.auth()), 201)
    assert (new["name"], new["role"], new["rotated_from"]) == ("deploy-bot", "operator", _id(old))
    assert new["id"] != _id(old) and new["token"] != old
    lifetime = datetime.fromisoformat(new["expires_at"]) - datetime.fromisoformat(new["created_at"])
    assert lifetime == timedelta(seconds=7200)  # the same lifetime as the token it replaces
    assert _devices(server, old).status_code == 401
    assert _devices(server, new["token"]).status_code == 200
    twice = server.client.post(f"{API}/operator-tokens/{_id(old)}/rotate", headers=server.auth())
    assert twice.status_code == 409


def test_rotate_with_grace_keeps_the_old_token_until_the_grace_ends(server: LiveServer) -> None:
    old = _mint(server, role="operator")
    body = {"grace_s": 3600}
    new = _ok(
        server.client.post(f"{API}/operator-tokens/{_id(old)}/rotate", json=body, headers=server.auth()), 201
    )
    assert _devices(server, old).status_code == 200  # still inside the grace period
    assert _devices(server, new["token"]).status_code == 200
    rows = {r["id"]: r for r in _ok(server.client.get(f"{API}/operator-tokens", headers=server.auth()))}
    scheduled = datetime.fromisoformat(rows[_id(old)]["revoked_at"])
    assert timedelta(seconds=3500) < scheduled - datetime.now(UTC) <= timedelta(seconds=3600)
    # Revoking during the grace period brings the end forward to now.
    _ok(server.client.post(f"{API}/operator-tokens/{_id(old)}/revoke", headers=server.auth()))
    assert _devices(server, old).status_code == 401

    # A grace period that has ended: rotated an hour ago with a minute of grace.
    other = _mint(server, role="operator")
    with _session(server) as s:
        admin = s.get(OperatorToken, _id(server.tokens["admin"]))
        assert admin is not None
        crud.rotate_operator_token(
            session=s,
            token_id=_id(other),
            actor=admin,
            grace_s=60,
            now=datetime.now(UTC) - timedelta(hours=1),
        )
    ended = _devices(server, other)
    assert ended.status_code == 401 and "revoked" in ended.json()["detail"]


def test_only_admins_manage_operator_tokens_and_never_above_their_role(server: LiveServer) -> None:
    c = server.client
    victim = _id(server.tokens["viewer"])
    for role in ("viewer", "operator"):
        h = server.auth(role)
        assert c.get(f"{API}/operator-tokens", headers=h).status_code == 403
        assert c.post(f"{API}/operator-tokens", json={"name": "x"}, headers=h).status_code == 403
        assert c.post(f"{API}/operator-tokens/{victim}/rotate", headers=h).status_code == 403
        assert c.post(f"{API}/operator-tokens/{victim}/revoke", headers=h).status_code == 403
    assert _devices(server, server.tokens["viewer"]).status_code == 200
    # The rule under the route: a token may not rotate or revoke a token of a higher role.
    with _session(server) as s:
        operator = s.get(OperatorToken, _id(server.tokens["operator"]))
        assert operator is not None
        with pytest.raises(ForbiddenError, match="may not revoke"):
            crud.revoke_operator_token(session=s, token_id=_id(server.tokens["admin"]), actor=operator)
        with pytest.raises(ForbiddenError, match="may not rotate"):
            crud.rotate_operator_token(session=s, token_id=_id(server.tokens["admin"]), actor=operator)
    assert _devices(server, server.tokens["admin"]).status_code == 200


def test_the_last_active_admin_token_cannot_be_revoked(server: LiveServer) -> None:
    c, first = server.client, server.tokens["admin"]
    refused = c.post(f"{API}/operator-tokens/{_id(first)}/revoke", headers=_bearer(first))
    assert refused.status_code == 409 and "last active admin token" in refused.json()["detail"]
    assert _devices(server, first).status_code == 200
    # An expired admin token does not count as another admin.
    with _session(server) as s:
        crud.create_operator_token(
            session=s, name="stale", role=Role.ADMIN, ttl_s=60, now=datetime.now(UTC) - timedelta(hours=1)
        )
    assert c.post(f"{API}/operator-tokens/{_id(first)}/revoke", headers=_bearer(first)).status_code == 409

    second = _mint(server, role="admin", name="second-admin")
    _ok(c.post(f"{API}/operator-tokens/{_id(first)}/revoke", headers=_bearer(second)))
    assert _devices(server, first).status_code == 401
    last = c.post(f"{API}/operator-tokens/{_id(second)}/revoke", headers=_bearer(second))
    assert last.status_code == 409
    # Rotating the last admin is fine: the new token is an active admin.
    rotated = _ok(c.post(f"{API}/operator-tokens/{_id(second)}/rotate", headers=_bearer(second)), 201)
    assert (
        _devices(server, rotated["token"]).status_code == 200 and _devices(server, second).status_code == 401
    )


# ---------------------------------------------------------------- bootstrap tokens


def test_a_revoked_bootstrap_token_cannot_enroll(server: LiveServer, tmp_path: Path) -> None:
    c, op = server.client, server.auth("operator")
    created = _ok(c.post(f"{API}/bootstrap-tokens", json={}, headers=op), 201)
    assert (
        c.post(f"{API}/bootstrap-tokens/{created['id']}/revoke", headers=server.auth("viewer")).status_code
        == 403
    )
    revoked = _ok(c.post(f"{API}/bootstrap-tokens/{created['id']}/revoke", headers=op))
    assert revoked["revoked_at"] is not None and "token" not in revoked
    with pytest.raises(grpc.RpcError) as refused:
        enroll(server, "dev-r", created["token"], tmp_path)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # the same error an expired token gets
    assert "revoked" in (refused.value.details() or "")
    assert c.get(f"{API}/devices/dev-r", headers=op).status_code == 404
    listed = {t["id"]: t for t in _ok(c.get(f"{API}/bootstrap-tokens", headers=op))}
    assert listed[created["id"]]["revoked_at"] == revoked["revoked_at"]
    assert c.post(f"{API}/bootstrap-tokens/{created['id']}/revoke", headers=op).status_code == 409

    used = _ok(c.post(f"{API}/bootstrap-tokens", json={}, headers=op), 201)
    enroll(server, "dev-u", used["token"], tmp_path)
    late = c.post(f"{API}/bootstrap-tokens/{used['id']}/revoke", headers=op)
    assert late.status_code == 409 and "revoke the device instead" in late.json()["detail"]
    assert c.post(f"{API}/bootstrap-tokens/nope/revoke", headers=op).status_code == 404


# ---------------------------------------------------------------- limits


def test_rate_limit_is_per_token(server: LiveServer) -> None:
    """A frozen clock: the bucket never refills, so the burst is exactly what gets through."""
    app: Any = server.client.app
    app.state.operator_limiter = OperatorRateLimiter(rate_per_s=0.5, burst=3, clock=lambda: 100.0)
    viewer, other = server.tokens["viewer"], server.tokens["operator"]
    assert [_devices(server, viewer).status_code for _ in range(3)] == [200, 200, 200]
    limited = _devices(server, viewer)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "2"  # one request's worth at 0.5/s
    assert _id(viewer) in limited.json()["detail"] and "retry after 2s" in limited.json()["detail"]
    assert [_devices(server, other).status_code for _ in range(3)] == [200, 200, 200]
    assert _devices(server, viewer).status_code == 429  # still limited; the other token was not


def test_rate_limiter_refills_and_bounds_its_memory() -> None:
    now = [0.0]
    limiter = OperatorRateLimiter(rate_per_s=2.0, burst=2, clock=lambda: now[0], max_tokens=2)
    assert [limiter.retry_after("a") for _ in range(3)] == [0, 0, 1]
    now[0] = 0.5  # one token back at 2/s
    assert limiter.retry_after("a") == 0 and limiter.retry_after("a") == 1
    limiter.retry_after("b")
    limiter.retry_after("c")  # evicts "a", the least recently used
    assert limiter.retry_after("a") == 0
    with pytest.raises(ValueError):
        OperatorRateLimiter(rate_per_s=0, burst=1)


@pytest.fixture
def limited_client(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings, tokens = prepare(tmp_path / "srv")
    with TestClient(BodyLimitMiddleware(create_app(settings), max_bytes=1024)) as client:
        yield client, tokens


def test_rest_bodies_over_the_limit_are_413(limited_client: tuple[TestClient, dict[str, str]]) -> None:
    client, tokens = limited_client
    h = _bearer(tokens["admin"])
    big = {"labels": {f"k{i}": "v" * 200 for i in range(10)}}
    declared = client.post(f"{API}/bootstrap-tokens", json=big, headers=h)
    assert declared.status_code == 413, declared.text
    assert declared.json() == {
        "detail": "request body larger than 1024 bytes",
        "error": "RequestEntityTooLargeError",
    }

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"labels": {'
        for i in range(10):
            yield f'"k{i}": "{"v" * 200}", '.encode()
        yield b'"z": "z"}}'

    streamed = client.post(
        f"{API}/bootstrap-tokens", content=chunks(), headers=h | {"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413, streamed.text
    assert streamed.json()["detail"] == "request body larger than 1024 bytes"
    small = client.post(f"{API}/bootstrap-tokens", json={"labels": {"site": "a"}}, headers=h)
    assert small.status_code == 201
    blob = client.put(f"{API}/ota/blobs", content=b"x" * 4096, headers=h)  # streams; has its own limit
    assert blob.status_code == 200, blob.text


# ---------------------------------------------------------------- CLI


def _cli(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    base: Any = operator_api(server)

    class CliApi(base):  # type: ignore[misc]
        def __init__(self, base_url: str, token: str, **_: object) -> None:
            super().__init__(base_url, token)

    monkeypatch.setattr(operator_cli, "Api", CliApi)
    monkeypatch.setenv("COLUMNS", "250")


def test_cli_operator_tokens(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _cli(server, monkeypatch)
    admin = ["--token", server.tokens["admin"]]
    assert (
        operator_cli.main(
            [*admin, "--json", "operator-tokens", "create", "ci", "--role", "operator", "--ttl", "3600"]
        )
        == 0
    )
    created = json.loads(capsys.readouterr().out)
    assert created["role"] == "operator" and created["token"].startswith("op_") and created["expires_at"]

    assert operator_cli.main([*admin, "operator-tokens", "create", "human"]) == 0
    out = capsys.readouterr().out
    assert "shown only this once" in out and "op_" in out and "viewer" in out

    assert (
        operator_cli.main([*admin, "--json", "operator-tokens", "rotate", created["id"], "--grace", "600"])
        == 0
    )
    rotated = json.loads(capsys.readouterr().out)
    assert rotated["rotated_from"] == created["id"] and rotated["token"] != created["token"]

    assert operator_cli.main([*admin, "operator-tokens", "list"]) == 0
    out = capsys.readouterr().out
    assert created["id"] in out and rotated["id"] in out and "(rotated)" in out
    assert created["token"].split(".", 1)[1] not in out and "op_" not in out
    assert operator_cli.main([*admin, "--json", "operator-tokens", "list"]) == 0
    assert all("token" not in r for r in json.loads(capsys.readouterr().out))

    assert operator_cli.main([*admin, "operator-tokens", "revoke", created["id"]]) == 0
    assert f"operator token {created['id']} (ci, operator) revoked" in capsys.readouterr().out
    assert _devices(server, created["token"]).status_code == 401

    admin_id = _id(server.tokens["admin"])
    assert operator_cli.main([*admin, "operator-tokens", "revoke", admin_id]) == operator_cli.CliExit.CONFLICT
    assert "HTTP 409" in (err := capsys.readouterr().err) and "last active admin token" in err
    viewer = ["--token", server.tokens["viewer"]]
    assert operator_cli.main([*viewer, "operator-tokens", "list"]) == operator_cli.CliExit.AUTH
    assert "HTTP 403" in capsys.readouterr().err


def test_cli_bootstrap_token_revoke(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _cli(server, monkeypatch)
    op = ["--token", server.tokens["operator"]]
    assert operator_cli.main([*op, "--json", "tokens", "create", "--label", "site=a"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert operator_cli.main([*op, "tokens", "revoke", created["id"]]) == 0
    assert "can no longer enroll" in capsys.readouterr().out
    assert operator_cli.main([*op, "tokens", "list"]) == 0
    assert created["id"] in capsys.readouterr().out
    assert operator_cli.main([*op, "tokens", "revoke", created["id"]]) == operator_cli.CliExit.CONFLICT
    assert "already revoked" in capsys.readouterr().err
    with pytest.raises(grpc.RpcError):
        enroll(server, "dev-x", created["token"], tmp_path)

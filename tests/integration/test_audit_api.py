"""The audit log through a real server: operator writes are recorded (who, token, what, status, from
where, never secrets), paged reads and verification for viewers, JSON Lines export for admins, the
head signed at shutdown, and the `edgeloop audit` CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from fleet_server import operator_cli
from fleet_server.audit import cli as audit_cli
from fleet_server.audit.chain import ChainVerifier, Entry
from fleet_server.audit.keys import AuditKey
from fleet_server.audit.store import SqlAuditLog
from fleet_server.audit.wiring import key_path
from fleet_server.db import make_engine
from tests.helpers.inproc import LiveServer, live, operator_api, prepare


def _entries(server: LiveServer, role: str = "viewer", **params: Any) -> list[dict[str, Any]]:
    resp = server.client.get("/api/v1/audit", params={"limit": 1000, **params}, headers=server.auth(role))
    assert resp.status_code == 200, resp.text
    return list(resp.json()["entries"])


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Any:
    settings, tokens = prepare(tmp_path / "srv", database_url)
    yield from live(settings, tokens)


def test_writes_are_recorded_with_who_what_status_and_where(server: LiveServer) -> None:
    c = server.client
    created = c.post(
        "/api/v1/bootstrap-tokens?token=leak-me",
        json={"labels": {"site": "p3"}},
        headers={**server.auth("operator"), "User-Agent": "edgeloop-cli/1"},
    )
    assert created.status_code == 201, created.text
    secret = created.json()["token"]
    assert (
        c.patch("/api/v1/devices/nope/labels", json={"labels": {}}, headers=server.auth()).status_code == 404
    )
    assert c.post("/api/v1/bootstrap-tokens", json={}).status_code == 401
    bad = c.post("/api/v1/bootstrap-tokens", json={}, headers={"Authorization": "Bearer op_abc123.wrong"})
    assert bad.status_code == 401
    assert c.post("/api/v1/bootstrap-tokens", json={}, headers=server.auth("viewer")).status_code == 403
    c.get("/api/v1/devices", headers=server.auth())  # reads are not recorded

    entries = _entries(server)
    assert entries[0]["action"] == "server.start"
    assert entries[0]["actor"]["kind"] == "system"
    assert (entries[1]["action"], entries[1]["actor"]["id"]) == ("ota.keys.generated", "ota")  # first start
    api = [e for e in entries if e["action"].startswith("api ")]
    assert [(e["actor"]["kind"], e["actor"]["role"], e["details"]["status"]) for e in api] == [
        ("operator", "operator", 201),
        ("operator", "admin", 404),
        ("anonymous", "", 401),
        ("anonymous", "", 401),
        ("operator", "viewer", 403),
    ]
    first = api[0]
    assert first["action"] == "api POST /api/v1/bootstrap-tokens"
    assert first["actor"]["name"] == "operator-user"
    assert first["actor"]["id"] and first["actor"]["id"] in server.tokens["operator"]
    assert first["source"] == {"ip": "testclient", "user_agent": "edgeloop-cli/1"}
    assert first["target"] == {"kind": "bootstrap-tokens", "id": ""}
    assert first["details"]["query"] == {"token": "<redacted>"}
    assert api[1]["action"] == "api PATCH /api/v1/devices/{device_id}/labels"
    assert api[1]["target"] == {"kind": "devices", "id": "nope"}
    assert api[3]["actor"]["id"] == "abc123"
    dump = json.dumps(entries)
    for needle in [
        secret,
        secret.split(".", 1)[1],
        "leak-me",
        "wrong",
        *(t.split(".", 1)[1] for t in server.tokens.values()),
    ]:
        assert needle not in dump


def test_reads_are_paged_and_bounded(server: LiveServer) -> None:
    c = server.client
    for _ in range(5):
        c.post("/api/v1/bootstrap-tokens", json={}, headers=server.auth())
    page = c.get("/api/v1/audit", params={"limit": 2}, headers=server.auth("viewer")).json()
    assert [e["seq"] for e in page["entries"]] == [1, 2]
    assert page["next_after_seq"] == 2
    page = c.get(
        "/api/v1/audit", params={"after_seq": 2, "limit": 1000}, headers=server.auth("viewer")
    ).json()
    assert [e["seq"] for e in page["entries"]] == [3, 4, 5, 6, 7]  # 1, 2: server.start, ota.keys.generated
    assert page["next_after_seq"] is None
    for params in [
        {"limit": 0},
        {"limit": 1001},
        {"limit": -1},
        {"after_seq": 2**63},
        {"after_seq": -1},
        {"after_seq": "x"},
    ]:
        resp = c.get("/api/v1/audit", params=params, headers=server.auth("viewer"))
        assert resp.status_code == 422, (params, resp.text)
    assert c.get("/api/v1/audit").status_code == 401
    assert c.get("/api/v1/audit/verify").status_code == 401


def test_verify_and_export(server: LiveServer) -> None:
    c = server.client
    for _ in range(3):
        c.post("/api/v1/bootstrap-tokens", json={}, headers=server.auth())
    report = c.get("/api/v1/audit/verify", headers=server.auth("viewer")).json()
    assert report["ok"] is True and report["entries"] == 5 and report["broken_seq"] is None
    assert c.get("/api/v1/audit/export", headers=server.auth("viewer")).status_code == 403
    assert c.get("/api/v1/audit/export", headers=server.auth("operator")).status_code == 403
    resp = c.get("/api/v1/audit/export", headers=server.auth("admin"))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in resp.text.splitlines()]
    assert [e["seq"] for e in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[-1]["action"] == "audit.export"
    assert lines[-1]["actor"]["role"] == "admin"
    v = ChainVerifier()
    assert all(v.feed(Entry.from_dict(e)) for e in lines)

    engine = make_engine(server.settings.resolved_database_url())
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_entry SET actor_name = 'someone-else' WHERE seq = 3"))
    engine.dispose()
    report = c.get("/api/v1/audit/verify", headers=server.auth("viewer")).json()
    assert (report["ok"], report["broken_seq"]) == (False, 3)


def test_the_head_is_signed_at_shutdown(tmp_path: Path, database_url: str) -> None:
    settings, tokens = prepare(tmp_path / "srv", database_url)
    for _ in live(settings, tokens):
        pass
    engine = make_engine(settings.resolved_database_url())
    log = SqlAuditLog(engine, AuditKey.load_or_create(key_path(settings.data_dir)))
    report = log.verify()
    assert report.ok, report.reason
    assert [e.action for e in log.iter_all()] == ["server.start", "ota.keys.generated", "server.stop"]
    assert (report.signatures, report.last_signed_seq) == (1, 3)
    engine.dispose()


def _cli_api(server: LiveServer) -> type:
    """operator_api(server), tolerating the keyword arguments the CLI passes to its Api."""
    base: Any = operator_api(server)

    class CliApi(base):  # type: ignore[misc,valid-type]
        def __init__(self, base_url: str, token: str, **_: object) -> None:
            super().__init__(base_url, token)

    return CliApi


class _Borrowed:
    def __init__(self, client: Any) -> None:
        self.client = client

    def __enter__(self) -> Any:
        return self.client

    def __exit__(self, *exc: object) -> None:
        return None


def test_cli_list_verify_export(
    server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(operator_cli, "Api", _cli_api(server))
    monkeypatch.setattr(audit_cli, "http_client", lambda ns: _Borrowed(server.client))
    server.client.post("/api/v1/bootstrap-tokens", json={}, headers=server.auth())
    tok = ["--token", server.tokens["admin"]]
    monkeypatch.setenv("COLUMNS", "220")

    assert operator_cli.main([*tok, "audit", "list"]) == 0
    out = capsys.readouterr().out
    assert "server.start" in out and "admin-user" in out
    assert operator_cli.main([*tok, "--json", "audit", "verify"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True

    dest = tmp_path / "audit.jsonl"
    assert operator_cli.main([*tok, "audit", "export", "--out", str(dest)]) == 0
    assert len(dest.read_text().splitlines()) == 4  # server.start, ota.keys.generated, the POST, export
    assert operator_cli.main([*tok, "--json", "audit", "verify", "--file", str(dest)]) == 0
    capsys.readouterr()

    lines = dest.read_text().splitlines()
    forged = json.loads(lines[2])
    forged["details"]["status"] = 200
    dest.write_text("\n".join([lines[0], lines[1], json.dumps(forged), lines[3]]) + "\n")
    code = operator_cli.main([*tok, "audit", "verify", "--file", str(dest)])
    assert code == operator_cli.CliExit.CHECK_FAILED
    assert "BROKEN at seq 3" in capsys.readouterr().out

    monkeypatch.setattr(operator_cli, "Api", _cli_api(server))
    assert (
        operator_cli.main(["--token", server.tokens["viewer"], "audit", "export"])
        == operator_cli.CliExit.AUTH
    )

"""The rollout REST API and CLI on a real server (SQLite and PostgreSQL): create with a plan, read
it back (batches, devices, gate results), operator actions with their 409s, 4xx with a reason for
bad input, a viewer refused, the engine advancing a batch from real OTA status rows, and the audit
log holding every transition."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from fleet_server import operator_cli
from fleet_server.db import make_engine
from fleet_server.models import Device
from fleet_server.ota.models import OtaDeviceStatus
from fleet_server.rollouts.models import RolloutDevice
from tests.helpers.inproc import LiveServer, operator_api
from tests.helpers.procs import wait_until

GATES = {"min_window_s": 0, "look_interval_s": 0, "silent_timeout_s": 600}


def _devices(
    server: LiveServer, n: int, profile: str = "generic-x86", prefix: str = "dev", **labels: str
) -> list[str]:
    engine = make_engine(server.settings.resolved_database_url())
    ids = [f"{prefix}-{i:03d}" for i in range(n)]
    with Session(engine) as s:
        for d in ids:
            s.add(Device(id=d, profile=profile, labels=dict(labels)))
        s.commit()
    engine.dispose()
    return ids


def _release(server: LiveServer, content: bytes, profiles: list[str]) -> int:
    c = server.client
    up = c.put("/api/v1/ota/blobs", content=content, headers=server.auth("operator"))
    assert up.status_code == 200, up.text
    body = {
        "model_name": "m",
        "model_version": content[:8].hex(),
        "artifact_sha256": up.json()["sha256"],
        "filename": "model.bin",
        "profiles": profiles,
    }
    r = c.post("/api/v1/releases", json=body, headers=server.auth("operator"))
    assert r.status_code == 201, r.text
    return int(r.json()["seq"])


def _create(server: LiveServer, role: str = "operator", **body: Any) -> Any:
    return server.client.post("/api/v1/rollouts", json=body, headers=server.auth(role))


def _report(server: LiveServer, rollout_id: str, devices: list[str], state: str) -> None:
    engine = make_engine(server.settings.resolved_database_url())
    with Session(engine) as s:
        for rd in s.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)).all():
            if rd.device_id in devices:
                row = s.get(OtaDeviceStatus, (rd.device_id, rd.deployment_id))
                assert row is not None
                row.state, row.transition = state, row.transition + 1
                s.add(row)
        s.commit()
    engine.dispose()


def test_create_read_act_and_advance(server: LiveServer) -> None:
    c = server.client
    ids = _devices(server, 20, site="p3")
    seq = _release(server, b"model-v2" * 100, ["generic-x86"])
    r = _create(
        server,
        releases=[seq],
        batches={"counts": [2, 8]},
        gates=GATES,
        name="v2 to p3",
        selector={"labels": {"site": "p3"}},
    )
    assert r.status_code == 201, r.text
    out = r.json()
    rid = out["id"]
    assert (out["state"], out["batch"], out["batches"]) == ("running", 0, 3)
    assert [b["size"] for b in out["plan"]] == [2, 8, 10]
    assert out["plan"][0]["devices"] == {"assigned": 2} and list(out["plan"][0]["deployments"]) == [str(seq)]
    assert out["devices"] == {"assigned": 2, "pending": 18}
    canary = [
        d["device_id"]
        for d in c.get(f"/api/v1/rollouts/{rid}/devices", headers=server.auth("viewer")).json()
        if d["batch"] == 0
    ]
    dep = out["plan"][0]["deployments"][str(seq)]
    statuses = c.get(f"/api/v1/deployments/{dep}", headers=server.auth("viewer")).json()
    assert sorted(s["device_id"] for s in statuses) == sorted(canary)  # exactly the batch's devices

    # Viewer reads but does not act; operator actions answer with the new state or a 409 why.
    assert c.post(f"/api/v1/rollouts/{rid}/pause", headers=server.auth("viewer")).status_code == 403
    assert c.get("/api/v1/rollouts", headers=server.auth("viewer")).json()[0]["id"] == rid
    r = c.post(f"/api/v1/rollouts/{rid}/pause", json={"reason": "lunch"}, headers=server.auth("operator"))
    assert r.status_code == 200 and r.json()["state"] == "paused" and "lunch" in r.json()["reason"]
    r = c.post(f"/api/v1/rollouts/{rid}/pause", headers=server.auth("operator"))
    assert r.status_code == 409 and "already paused" in r.json()["detail"]
    assert (
        c.post(f"/api/v1/rollouts/{rid}/resume", headers=server.auth("operator")).json()["state"] == "running"
    )

    # The canary installs: the engine settles the batch, the gates pass (no metrics yet: the
    # control cohort has none, so the gates wait; here on_no_data after max_wait is not reached,
    # but the install gate is) and the next batch is assigned.
    _report(server, rid, canary, "committed")
    rollouts = c.app.state.rollouts  # type: ignore[attr-defined]
    rollouts.poke()  # the server's engine loop advances it (at the latest on its next tick)
    detail = wait_until(
        lambda: (  # both: on SQLite the detail's reads are not one snapshot (batch row, then counts)
            (d := c.get(f"/api/v1/rollouts/{rid}", headers=server.auth("viewer")).json())["plan"][0][
                "settled_at"
            ]
            and d["plan"][0]["devices"] == {"committed": 2}
            and d
        ),
        30,
        what="batch 0 settled",
    )
    assert detail["plan"][0]["devices"] == {"committed": 2}
    assert detail["plan"][0]["settled_at"] is not None
    assert any(g["gate"] == "install_failures" and g["verdict"] == "pass" for g in detail["latest_gates"])
    gates = c.get(f"/api/v1/rollouts/{rid}/gates", params={"batch": 0}, headers=server.auth("viewer")).json()
    assert gates and all(g["batch"] == 0 for g in gates)

    # Every transition is in the audit log with its actor.
    entries = c.get("/api/v1/audit", params={"limit": 1000}, headers=server.auth("viewer")).json()["entries"]
    ours = [
        (e["action"], e["actor"]["name"]) for e in entries if e["target"] == {"kind": "rollout", "id": rid}
    ]
    assert ours[:4] == [
        ("rollout.create", "operator-user"),
        ("rollout.start", "operator-user"),
        ("rollout.pause", "operator-user"),
        ("rollout.resume", "operator-user"),
    ]
    assert ("rollout.batch_settled", "rollout-engine") in ours
    assert c.get("/api/v1/audit/verify", headers=server.auth("viewer")).json()["ok"] is True

    r = c.post(f"/api/v1/rollouts/{rid}/abort", headers=server.auth("operator"))
    assert r.json()["state"] == "aborted"
    assert sorted(ids)  # the devices are free again: a new rollout may take them
    assert _create(server, releases=[seq], batches={"percents": [100]}, gates=GATES).status_code == 201


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"releases": [999]}, 404, "release 999 not found"),
        (
            {"releases": ["REL"], "selector": {"profiles": ["jetson"]}},
            422,
            "no artifact for profile(s) jetson",
        ),
        ({"releases": ["REL"], "batches": {"percents": [10, 50]}}, 422, "do not add up"),
        ({"releases": ["REL"], "batches": {"percents": [50, 10, 100]}}, 422, "must increase"),
        ({"releases": ["REL"], "batches": {"counts": [50]}}, 422, "do not add up"),
        ({"releases": ["REL"], "batches": {"percents": [100], "counts": [1]}}, 422, "exactly one"),
        ({"releases": ["REL"], "selector": {"labels": {"site": "nowhere"}}}, 422, "no device matches"),
        ({"releases": []}, 422, "releases"),
        ({"releases": ["REL"], "gates": {"alpha": 2}}, 422, "alpha"),
        ({"releases": ["REL"], "on_breach": "explode"}, 422, "on_breach"),
        (
            {
                "releases": ["REL"],
                "windows": {"download": [{"days": [1], "start": "01:00", "end": "02:00", "tz": "Mars/Base"}]},
            },
            422,
            "unknown time zone",
        ),
        (
            {
                "releases": ["REL"],
                "windows": {"apply": [{"days": ["someday"], "start": "01:00", "end": "02:00"}]},
            },
            422,
            "days",
        ),
        (
            {"releases": ["REL"], "windows": {"apply": [{"days": [1], "start": "7:00", "end": "08:00"}]}},
            422,
            "start",
        ),
    ],
)
def test_bad_input_is_a_4xx_with_a_reason(
    server: LiveServer, body: dict[str, Any], status: int, needle: str
) -> None:
    _devices(server, 5)
    seq = _release(server, b"v2" * 50, ["generic-x86"])
    body = json.loads(json.dumps(body).replace('"REL"', str(seq)))
    r = _create(server, **body)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_overlapping_rollouts_and_roles(server: LiveServer) -> None:
    _devices(server, 6)
    _devices(server, 3, profile="jetson-nano", prefix="jet")
    x86 = _release(server, b"x86-model" * 30, ["generic-x86"])
    jet = _release(server, b"jet-model" * 30, ["jetson-nano"])
    assert _create(server, "viewer", releases=[x86]).status_code == 403
    r = _create(
        server, releases=[x86, jet], batches={"percents": [100]}, gates=GATES
    )  # one release per profile
    assert r.status_code == 201, r.text
    assert {int(k) for k in r.json()["plan"][0]["deployments"]} == {x86, jet}
    r2 = _create(server, releases=[x86], batches={"percents": [100]})
    assert r2.status_code == 409 and "overlapping rollouts" in r2.json()["detail"]
    both = _release(server, b"both" * 30, ["generic-x86"])
    r3 = _create(server, releases=[x86, both])
    assert r3.status_code == 422 and "one release per profile" in r3.json()["detail"]
    assert server.client.get("/api/v1/rollouts/ro_nope", headers=server.auth("viewer")).status_code == 404
    assert (
        server.client.post("/api/v1/rollouts/ro_nope/pause", headers=server.auth("operator")).status_code
        == 404
    )


def test_operator_cli(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _devices(server, 10)
    seq = _release(server, b"cli" * 40, ["generic-x86"])
    monkeypatch.setattr(operator_cli, "Api", operator_api(server))
    monkeypatch.setenv("COLUMNS", "250")
    token = ["--token", server.tokens["operator"]]
    assert (
        operator_cli.main(
            [
                *token,
                "--json",
                "rollout",
                "create",
                "--release",
                str(seq),
                "--percents",
                "20,100",
                "--on-breach",
                "rollback",
            ]
        )
        == 0
    )
    created = json.loads(capsys.readouterr().out)
    rid = created["id"]
    assert created["on_breach"] == "rollback" and [b["size"] for b in created["plan"]] == [2, 8]
    assert operator_cli.main([*token, "rollout", "list"]) == 0
    assert rid in capsys.readouterr().out
    assert operator_cli.main([*token, "rollout", "status", rid]) == 0
    out = capsys.readouterr().out
    assert "running" in out and "batch 1/2" in out
    assert operator_cli.main([*token, "rollout", "pause", rid, "--reason", "look"]) == 0
    assert "paused" in capsys.readouterr().out
    assert operator_cli.main([*token, "rollout", "pause", rid]) == operator_cli.CliExit.CONFLICT
    assert "already paused" in capsys.readouterr().err
    assert operator_cli.main([*token, "rollout", "resume", rid]) == 0
    assert operator_cli.main([*token, "rollout", "rollback", rid]) == 0
    assert "rolling_back" in capsys.readouterr().out
    viewer = ["--token", server.tokens["viewer"]]
    assert operator_cli.main([*viewer, "rollout", "abort", rid]) == operator_cli.CliExit.AUTH


def test_model_rollout_policy_is_stored_and_used_by_registry_releases(server: LiveServer) -> None:
    c = server.client
    r = c.get("/api/v1/rollouts/policies/digits", headers=server.auth("viewer"))
    assert r.status_code == 200 and r.json()["stored"] is False
    assert r.json()["batches"]["percents"] == [100]  # default: one batch, the install gate
    policy = {"batches": {"percents": [25, 100]}, "gates": {"min_devices": 2}, "on_breach": "rollback"}
    assert (
        c.put("/api/v1/rollouts/policies/digits", json=policy, headers=server.auth("viewer")).status_code
        == 403
    )
    bad = c.put(
        "/api/v1/rollouts/policies/digits",
        json={"batches": {"percents": [25, 50]}},
        headers=server.auth("operator"),
    )
    assert bad.status_code == 422 and "do not add up" in bad.json()["detail"]
    r = c.put("/api/v1/rollouts/policies/digits", json=policy, headers=server.auth("operator"))
    assert r.status_code == 200 and r.json()["stored"] is True
    # What the registry calls on approval: a rollout of the version's releases to named devices.
    ids = _devices(server, 8)
    _devices(server, 4, prefix="elsewhere")
    seq = _release(server, b"digits-v2" * 20, ["generic-x86"])
    rollouts = c.app.state.rollouts  # type: ignore[attr-defined]
    from fleet_server.audit.chain import Actor

    started = rollouts.start_for_model(
        model_name="digits",
        version="2",
        releases=[seq],
        devices=ids,
        actor=Actor.operator("t", "alice", "operator"),
    )
    detail = c.get(f"/api/v1/rollouts/{started['rollout_id']}", headers=server.auth("viewer")).json()
    assert detail["on_breach"] == "rollback" and [b["size"] for b in detail["plan"]] == [2, 6]
    assert detail["gates"]["min_devices"] == 2 and detail["name"] == "digits@2"
    assert sorted(started["releases"][seq]["devices"]) == sorted(ids)  # only the named devices
    assert started["releases"][seq]["deployment_id"]


def test_a_rollout_outside_its_download_window_waits_with_a_visible_reason(server: LiveServer) -> None:
    from datetime import UTC, datetime

    _devices(server, 5)
    seq = _release(server, b"v2-window" * 40, ["generic-x86"])
    closed_day = (datetime.now(UTC).weekday() + 3) % 7  # a window that is not open today or tomorrow
    windows = {"download": [{"days": [closed_day], "start": "00:00", "end": "00:01", "tz": "UTC"}]}
    r = _create(server, releases=[seq], batches={"percents": [100]}, gates=GATES, windows=windows)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    out = server.client.get(f"/api/v1/rollouts/{rid}", headers=server.auth("viewer")).json()
    assert out["state"] == "running" and out["devices"] == {"pending": 5}
    assert out["reason"].startswith("waiting for the download window, opens at ")
    assert out["batch_spec"]["windows"] == {**windows, "apply": []}
    assert out["plan"][0]["deployments"] == {}

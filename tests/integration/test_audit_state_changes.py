"""Every state change lands in the audit log, through a real server on SQLite and PostgreSQL: an
operator publishes and deploys a release, registers a model that the real compiler builds, approves
it (its release goes out through a rollout), starts a federated run and cancels it.
`GET /api/v1/audit` then lists each change once, in the order it happened, by who made it (the
operator's token for requests, `system:<component>` for the compile worker), each service entry
before the middleware's record of the request that caused it, and `GET /api/v1/audit/verify`
finds the chain intact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.heads import write_head_model
from tests.helpers.inproc import LiveServer, enroll, live, prepare
from tests.helpers.procs import wait_until

PROFILE = "generic-x86"
DAY = 86_400.0


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[LiveServer]:
    settings, tokens = prepare(tmp_path / "srv", database_url)
    yield from live(settings, tokens)


def _ok(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    return dict(resp.json())


def _upload(server: LiveServer, path: Path) -> str:
    r = server.client.put("/api/v1/ota/blobs", content=path.read_bytes(), headers=server.auth("operator"))
    return str(_ok(r, 200)["sha256"])


def _all_entries(server: LiveServer) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = _ok(
            server.client.get(
                "/api/v1/audit", params={"after_seq": after, "limit": 100}, headers=server.auth("viewer")
            ),
            200,
        )
        out += page["entries"]
        if page["next_after_seq"] is None:
            return out
        after = page["next_after_seq"]


def test_publish_deploy_register_approve_start_cancel_are_audited_in_order(
    server: LiveServer, tmp_path: Path
) -> None:
    c, op = server.client, server.auth("operator")
    device = enroll(server, "dev-audit-1", server.bootstrap_token(profile=PROFILE), tmp_path).device_id
    files = write_head_model(tmp_path / "model", n_train=40)
    model_sha = _upload(server, files["model"])

    release = _ok(
        c.post("/api/v1/releases", json={"model_name": "digits", "model_version": "1",
                                         "artifact_sha256": model_sha, "profiles": [PROFILE]},
               headers=op | {"Idempotency-Key": "audit-test-publish-1"}),
        201,
    )  # fmt: skip
    deployment = _ok(c.post(f"/api/v1/releases/{release['seq']}/deployments",
                            json={"device_ids": [device]}, headers=op), 201)  # fmt: skip

    calib, evaluation = _upload(server, files["calib"]), _upload(server, files["eval"])
    body = {"name": "digits-head", "artifact_sha256": model_sha, "profiles": [PROFILE],
            "calib_sha256": calib, "eval_sha256": evaluation}  # fmt: skip
    assert _ok(c.post("/api/v1/models", json=body, headers=op), 201)["status"] == "registered"
    settled = wait_until(
        lambda: (v := _ok(c.get("/api/v1/models/digits-head/versions/1", headers=op), 200))["status"]
        not in {"registered", "compiling", "compiled"} and v,
        240, interval=0.5, what="version 1 compiled by the real compiler",
    )  # fmt: skip
    assert settled["status"] == "awaiting_approval", settled["detail"]
    approved = _ok(c.post("/api/v1/models/digits-head/versions/1/approve",
                          json={"devices": [device]}, headers=op), 200)  # fmt: skip
    assert approved["status"] == "released"
    second = approved["releases"][PROFILE]["release_seq"]

    run_id = _ok(c.post("/api/v1/federated/runs", json={"min_nodes": 50, "round_timeout_s": DAY},
                        headers=op), 202)["run_id"]  # fmt: skip
    cancelled = _ok(c.post(f"/api/v1/federated/runs/{run_id}/cancel", json={"reason": "audit test"},
                           headers=op), 200)  # fmt: skip
    assert cancelled["status"] == "cancelled"

    entries = _all_entries(server)
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    changes = [
        (e["action"], e["target"]["kind"], e["target"]["id"], e["actor"]["kind"], e["actor"]["name"])
        for e in entries
        if not e["action"].startswith(("api ", "rollout."))  # rollout steps: checked below
    ]
    operator = ("operator", "operator-user")
    # The approval's release goes out through a rollout (batch 1 deployed by the rollout engine).
    deployer = next(a for a in changes if a[:3] == ("release.deployed", "release", str(second)))[3:]
    registry = ("system", "registry")
    assert changes == [
        ("server.start", "", "", "system", "fleet-server"),
        ("ota.keys.generated", "ota_keys", "all", "system", "ota"),
        ("release.published", "release", str(release["seq"]), *operator),
        ("release.deployed", "release", str(release["seq"]), *operator),
        ("model_version.registered", "model_version", "digits-head@1", *operator),
        ("model_version.compiling", "model_version", "digits-head@1", *registry),
        ("model_version.compiled", "model_version", "digits-head@1", *registry),
        ("model_version.awaiting_approval", "model_version", "digits-head@1", *registry),
        ("release.published", "release", str(second), *operator),
        ("release.deployed", "release", str(second), *deployer),
        ("model_version.released", "model_version", "digits-head@1", *operator),
        ("model_version.approved", "model_version", "digits-head@1", *operator),
        ("federated_run.started", "federated_run", run_id, *operator),
        ("federated_run.cancelled", "federated_run", run_id, *operator),
    ]
    by_action = {e["action"]: e for e in entries}  # the last entry of each action
    token_id = by_action["federated_run.cancelled"]["actor"]["id"]
    assert token_id and server.tokens["operator"].startswith(f"op_{token_id}")
    assert (
        by_action["release.deployed"]["details"]["deployment_id"]
        == approved["releases"][PROFILE]["deployment_id"]
    )
    first_deploy = next(e for e in entries if e["action"] == "release.deployed")
    assert first_deploy["details"]["deployment_id"] == deployment["deployment_id"]
    assert first_deploy["details"]["device_ids"] == [device]
    assert by_action["model_version.released"]["details"]["previous"] == "awaiting_approval"
    assert deployer in {operator, ("system", "ota"), ("system", "rollouts")}
    [created] = [e for e in entries if e["action"] == "rollout.create"]
    assert (created["actor"]["kind"], created["actor"]["name"]) == operator
    assert by_action["federated_run.cancelled"]["details"] == {
        "reason": "cancelled by operator-user: audit test",
        "cancelled_by": "operator-user",
    }

    # Each change is recorded before the middleware's entry for the request that made it.
    def index(action: str, nth: int = 0) -> int:
        return [i for i, e in enumerate(entries) if e["action"] == action][nth]

    assert index("release.published") < index("api POST /api/v1/releases")
    assert index("federated_run.started") < index("api POST /api/v1/federated/runs")
    assert index("federated_run.cancelled") < index("api POST /api/v1/federated/runs/{run_id}/cancel")
    approve_api = index("api POST /api/v1/models/{name}/versions/{version}/approve")
    assert index("release.published", 1) < index("model_version.approved") < approve_api
    assert index("release.published", 1) < index("rollout.create") < index("model_version.released")

    report = _ok(c.get("/api/v1/audit/verify", headers=server.auth("viewer")), 200)
    assert report["ok"] is True and report["broken_seq"] is None, report
    assert report["entries"] >= len(entries)

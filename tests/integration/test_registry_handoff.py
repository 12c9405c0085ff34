"""The hand-off, end to end: a registered model's head trains on real federated devices, comes back as
the next registry version with lineage, is compiled by the real compiler (a child process) with the
parent's budgets, and is released through signed OTA to the run's cohort, automatically when the
policy allows, otherwise on approval. Also: rejection by quality, compiler failures, bad requests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from fleet_server.federated.handoff import write_head_onnx
from fleet_server.registry.head import read_head
from tests.fixtures.heads import write_head_model
from tests.helpers.fl_fleet import Fleet
from tests.helpers.inproc import LiveServer, operator_api
from tests.helpers.procs import wait_until

PROFILE = "generic-x86"  # the Fleet helper enrolls devices with this profile


def _upload(server: LiveServer, path: Path) -> str:
    r = server.client.put("/api/v1/ota/blobs", content=path.read_bytes(), headers=server.auth())
    assert r.status_code == 200, r.text
    return str(r.json()["sha256"])


def _register(server: LiveServer, files: dict[str, Path], **extra: Any) -> dict[str, Any]:
    body = {
        "name": "digits-head",
        "artifact_sha256": _upload(server, files["model"]),
        "profiles": [PROFILE],
        "budgets": {"max_accuracy_drop": 0.02},
        "calib_sha256": _upload(server, files["calib"]),
        "eval_sha256": _upload(server, files["eval"]),
        "golden_sha256": _upload(server, files["golden"]),
        "golden_threshold": 0.5,
    } | extra
    r = server.client.post("/api/v1/models", json=body, headers=server.auth("operator"))
    assert r.status_code == 201, r.text
    return dict(r.json())


def _version(server: LiveServer, version: int, name: str = "digits-head") -> dict[str, Any]:
    r = server.client.get(f"/api/v1/models/{name}/versions/{version}", headers=server.auth("viewer"))
    assert r.status_code == 200, r.text
    return dict(r.json())


def _settled(server: LiveServer, version: int, timeout: float = 180) -> dict[str, Any]:
    busy = {"registered", "compiling", "compiled"}
    return dict(
        wait_until(
            lambda: (v := _version(server, version))["status"] not in busy and v,
            timeout,
            interval=0.5,
            what=f"version {version} compiled and judged",
        )
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return write_head_model(tmp_path / "model", n_train=40)


@pytest.fixture
def fleet(server: LiveServer, tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(server, tmp_path / "devs", 4, labels={"site": "lab"})
    fl = server.client.app.state.federated  # type: ignore[attr-defined]
    wait_until(lambda: len(list(fl.grid.get_node_ids())) == 4, 60, what="4 devices attached")
    yield fleet
    fleet.stop()


def test_federated_head_becomes_a_compiled_version_released_to_its_cohort(
    server: LiveServer, files: dict[str, Path], fleet: Fleet
) -> None:
    v1 = _register(server, files)
    assert (v1["version"], v1["source"], v1["status"]) == (1, "upload", "registered")
    v1 = _settled(server, 1)
    assert v1["status"] == "awaiting_approval", v1["detail"]
    v1_acc = v1["artifacts"][PROFILE]["accuracy"]
    assert 0.5 < v1_acc < 0.93  # 40 central samples: a weak start
    # An uploaded version has no cohort: approving it without naming devices releases nothing,
    # even with four devices online (never the whole fleet by default).
    r = server.client.post(
        "/api/v1/models/digits-head/versions/1/approve", json={}, headers=server.auth("operator")
    )
    assert r.status_code == 422 and "no devices" in r.json()["detail"]
    policy = server.client.put(
        "/api/v1/models/digits-head/policy", json={"auto_release": True}, headers=server.auth("operator")
    )
    assert policy.json() == {"name": "digits-head", "auto_release": True}

    run = server.client.post(
        "/api/v1/federated/runs",
        json={"model": "digits-head", "rounds": 3, "min_nodes": 4, "lr": 0.5, "local_epochs": 2,
              "labels": {"site": "lab"}},
        headers=server.auth("operator"),
    )  # fmt: skip
    assert run.status_code == 202, run.text
    run_id = run.json()["run_id"]

    v2 = wait_until(
        lambda: (
            (r := server.client.get("/api/v1/models", headers=server.auth("viewer")).json())
            and len(r) == 2
            and r[0]
        ),
        120,
        interval=0.5,
        what="the run's head registered as version 2",
    )
    assert (v2["version"], v2["parent_version"], v2["source"]) == (2, 1, "federated")
    lineage = v2["lineage"]
    assert lineage["run_id"] == run_id and lineage["parent_version"] == 1 and lineage["strategy"] == "fedavg"
    assert [r["round_id"] for r in lineage["rounds"]] == [f"{run_id}:{i}" for i in (1, 2, 3)]
    assert lineage["participants_max"] == 4 and lineage["epsilon"] == 0.0
    assert v2["compile_spec"] == v1["compile_spec"] and v2["datasets"] == v1["datasets"]  # same budgets

    v2 = _settled(server, 2)
    assert v2["status"] == "released", v2["detail"]
    assert v2["artifacts"][PROFILE]["accuracy"] > v1_acc + 0.03  # devices' data made it better
    rel = v2["releases"][PROFILE]
    assert rel["devices"] == sorted(fleet.ids)
    releases = server.client.get("/api/v1/releases", headers=server.auth("viewer")).json()
    signed = next(r for r in releases if r["seq"] == rel["release_seq"])
    assert (signed["model_name"], signed["model_version"]) == ("digits-head", "2")
    assert signed["sha256"] == v2["artifacts"][PROFILE]["artifact_sha256"]
    # The shadow gate asks for the agreement the two accuracies guarantee (a + b - 1), less slack.
    v2_acc = v2["artifacts"][PROFILE]["accuracy"]
    gates = signed["custom"]["edgeloop"]["gates"]
    assert float(gates["min_agreement"]) == round(max(0.5, v1_acc + v2_acc - 1 - 0.05), 4)
    assert signed["custom"]["edgeloop"]["drift_reference"]  # the compiler's reference travels along
    statuses = server.client.get(f"/api/v1/deployments/{rel['deployment_id']}", headers=server.auth("viewer"))
    assert sorted(s["device_id"] for s in statuses.json()) == sorted(fleet.ids)
    by_release = server.client.get(
        f"/api/v1/releases/{rel['release_seq']}/deployments", headers=server.auth("viewer")
    )
    assert {s["deployment_id"] for s in by_release.json()} == {rel["deployment_id"]}
    assert (
        server.client.get("/api/v1/releases/999/deployments", headers=server.auth("viewer")).status_code
        == 404
    )

    # The fp32 model of v2 is v1's graph with the aggregated head, carrying its lineage.
    ota = server.client.app.state.ota  # type: ignore[attr-defined]
    new_bytes = ota.blob(v2["artifact_sha256"]).read_bytes()
    model = onnx.load_from_string(new_bytes)
    assert {p.key for p in model.metadata_props} >= {"edgeloop.lineage"}
    old = onnx.load_from_string(ota.blob(v1["artifact_sha256"]).read_bytes())
    assert [n.op_type for n in model.graph.node] == [n.op_type for n in old.graph.node]
    fl = server.client.app.state.federated  # type: ignore[attr-defined]
    assert fl.runner.result is not None
    np.testing.assert_array_equal(read_head(new_bytes)["w"], fl.runner.result["w"].numpy())


def test_approval_rejection_and_compiler_failure(
    server: LiveServer, files: dict[str, Path], tmp_path: Path
) -> None:
    _register(server, files)
    assert _settled(server, 1)["status"] == "awaiting_approval"

    # A descendant much worse than its parent is compiled, then rejected, never released.
    rng = np.random.default_rng(0)
    bad = write_head_onnx(
        tmp_path / "bad.onnx", rng.normal(size=(64, 10)).astype(np.float32), np.zeros(10, np.float32), {}
    )
    v2 = _register(server, {**files, "model": bad}, parent_version=1)
    assert v2["parent_version"] == 1
    v2 = _settled(server, 2)
    assert v2["status"] == "rejected" and "below parent v1" in v2["detail"], v2
    r = server.client.post(
        "/api/v1/models/digits-head/versions/2/approve", json={}, headers=server.auth("operator")
    )
    assert r.status_code == 409 and "rejected" in r.json()["detail"]

    # Approval of v1 needs devices (an uploaded version has no cohort); unknown devices are a 404.
    r = server.client.post(
        "/api/v1/models/digits-head/versions/1/approve", json={}, headers=server.auth("operator")
    )
    assert r.status_code == 422 and "no devices" in r.json()["detail"]

    # The compiler's own refusal reaches the version: Coral needs a torch model, not ONNX.
    v3 = _register(server, files, profiles=["coral-dev-board"], parent_version=1)
    v3 = _settled(server, v3["version"])
    assert v3["status"] == "failed" and "PyTorch model" in v3["detail"], v3

    # Viewers read, they do not register or approve; the CLI renders the list.
    r = server.client.post(
        "/api/v1/models/digits-head/versions/1/approve", json={}, headers=server.auth("viewer")
    )
    assert r.status_code == 403


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"name": "m", "artifact_sha256": "0" * 64}, 404, "not uploaded"),
        ({"name": "bad name!", "artifact_sha256": "0" * 64}, 422, "name"),
        ({"name": "m", "artifact_sha256": "xyz"}, 422, "artifact_sha256"),
    ],
)
def test_bad_registrations_are_clear_errors(
    server: LiveServer, body: dict[str, Any], status: int, needle: str
) -> None:
    r = server.client.post("/api/v1/models", json=body, headers=server.auth("operator"))
    assert r.status_code == status and needle in r.text, r.text


def test_non_onnx_model_and_missing_datasets_and_unknown_models(
    server: LiveServer, tmp_path: Path, files: dict[str, Path]
) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    r = server.client.post(
        "/api/v1/models",
        json={"name": "m", "artifact_sha256": _upload(server, junk)},
        headers=server.auth("operator"),
    )
    assert r.status_code == 422 and "not a valid ONNX model" in r.json()["detail"]
    r = server.client.post(
        "/api/v1/models",
        json={"name": "m", "artifact_sha256": _upload(server, files["model"]), "profiles": [PROFILE]},
        headers=server.auth("operator"),
    )
    assert r.status_code == 422 and "calibration and evaluation" in r.json()["detail"]
    r = server.client.post("/api/v1/federated/runs", json={"model": "nope"}, headers=server.auth("operator"))
    assert r.status_code == 404 and "no model named 'nope'" in r.json()["detail"]
    r = server.client.post(
        "/api/v1/federated/runs", json={"min_nodes": 3, "max_nodes": 2}, headers=server.auth("operator")
    )
    assert r.status_code == 422 and "max_nodes 2 is below min_nodes 3" in r.json()["detail"]
    r = server.client.put(
        "/api/v1/models/nope/policy", json={"auto_release": True}, headers=server.auth("operator")
    )
    assert r.status_code == 404


def test_operator_cli_registers_and_lists(
    server: LiveServer,
    files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fleet_server import operator_cli

    monkeypatch.setattr(operator_cli, "Api", operator_api(server))
    monkeypatch.setenv("COLUMNS", "200")
    token = ["--token", server.tokens["operator"]]
    code = operator_cli.main(
        [*token, "--json", "models", "register", str(files["model"]), "--name", "cli-head",
         "--calib", str(files["calib"]), "--eval", str(files["eval"])]
    )  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1
    assert operator_cli.main([*token, "models", "list", "--name", "cli-head"]) == 0
    out = capsys.readouterr().out
    assert "cli-head@1" in out and "registered" in out
    assert operator_cli.main([*token, "models", "approve", "cli-head", "1"]) == operator_cli.CliExit.CONFLICT
    assert "is registered, not awaiting approval" in capsys.readouterr().err

"""The registry's compile request carries the batched-inputs override, the micro-batch size and
the drift reference's false-alarm budget (issue 17): all are optional, validated (a bad value is a
422 naming the field, never a 500), kept in the version's compile_spec (inherited like the budgets),
passed to the real compiler (a child process), and what they did shows in the artifacts: the ONNX
metadata the device reads, the batch the profile's quality was judged at with where that number came
from, and the budget the shipped drift reference is calibrated to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest

from agent.drift.reference import DEFAULT_BUDGET_PER_10K, ReferenceProfile
from agent.inference.signature import BATCHED_INPUTS_KEY
from tests.fixtures.heads import write_head_model
from tests.helpers.inproc import LiveServer
from tests.helpers.procs import wait_until

PROFILE = "generic-x86"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return write_head_model(tmp_path / "model", n_train=40)


def _upload(server: LiveServer, path: Path) -> str:
    r = server.client.put("/api/v1/ota/blobs", content=path.read_bytes(), headers=server.auth())
    assert r.status_code == 200, r.text
    return str(r.json()["sha256"])


def _body(server: LiveServer, files: dict[str, Path], **extra: Any) -> dict[str, Any]:
    return {
        "name": "head",
        "artifact_sha256": _upload(server, files["model"]),
        "profiles": [PROFILE],
        "calib_sha256": _upload(server, files["calib"]),
        "eval_sha256": _upload(server, files["eval"]),
    } | extra


def _post(server: LiveServer, body: dict[str, Any]) -> Any:
    return server.client.post("/api/v1/models", json=body, headers=server.auth("operator"))


def _settled(server: LiveServer, version: int) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        r = server.client.get(f"/api/v1/models/head/versions/{version}", headers=server.auth("viewer"))
        v: dict[str, Any] = r.json()
        return v if v["status"] not in {"registered", "compiling", "compiled"} else None

    return dict(wait_until(done, 180, interval=0.5, what=f"head@{version} compiled"))


def _stamped(server: LiveServer, version: dict[str, Any]) -> str | None:
    ota = server.client.app.state.ota  # type: ignore[attr-defined]
    model = onnx.load_from_string(ota.blob(version["artifacts"][PROFILE]["artifact_sha256"]).read_bytes())
    return next((p.value for p in model.metadata_props if p.key == BATCHED_INPUTS_KEY), None)


def _drift_budget(server: LiveServer, version: dict[str, Any]) -> float:
    ota = server.client.app.state.ota  # type: ignore[attr-defined]
    sha = version["artifacts"][PROFILE]["drift_reference_sha256"]
    return ReferenceProfile.from_bytes(ota.blob(sha).read_bytes()).budget_per_10k


def test_settings_reach_the_compiler_are_recorded_and_are_inherited(
    server: LiveServer, files: dict[str, Path]
) -> None:
    body = _body(server, files, batched_inputs=["features"], micro_batch=8, drift_budget_per_10k=2.0)
    r = _post(server, body)
    assert r.status_code == 201, r.text
    assert r.json()["compile_spec"] == {
        "profiles": [PROFILE],
        "batched_inputs": ["features"],
        "micro_batch": 8,
        "drift_budget_per_10k": 2.0,
    }
    v1 = _settled(server, 1)
    assert v1["status"] == "awaiting_approval", v1["detail"]
    art = v1["artifacts"][PROFILE]
    assert art["quality_batch"] == {"serve": 1, "micro_batch": 8, "source": "request"}
    assert _stamped(server, v1) == "features"  # what the device reads when it loads the artifact
    assert _drift_budget(server, v1) == 2.0  # the shipped reference's thresholds are calibrated to it

    # A child without profiles inherits the whole spec; its own settings go on top: an empty list
    # says no input is batched (a stateful model), micro-batch 1 is batch 1 only.
    child = {"name": "head", "artifact_sha256": v1["artifact_sha256"], "batched_inputs": [], "micro_batch": 1}
    r = _post(server, child)
    assert r.status_code == 201, r.text
    inherited = {"profiles": [PROFILE], "drift_budget_per_10k": 2.0}
    assert r.json()["compile_spec"] == inherited | {"batched_inputs": [], "micro_batch": 1}
    v2 = _settled(server, 2)
    assert _drift_budget(server, v2) == 2.0
    assert v2["status"] == "awaiting_approval", v2["detail"]
    assert v2["artifacts"][PROFILE]["quality_batch"] == {"serve": 1, "micro_batch": None, "source": "request"}
    assert _stamped(server, v2) == ""

    # Without settings nothing is stamped and the profile decides (generic-x86 serves batch 1).
    r = _post(server, _body(server, files))
    assert r.status_code == 201 and "batched_inputs" not in r.json()["compile_spec"], r.text
    v3 = _settled(server, 3)
    assert v3["artifacts"][PROFILE]["quality_batch"] == {"serve": 1, "micro_batch": None, "source": None}
    assert _stamped(server, v3) is None
    assert _drift_budget(server, v3) == DEFAULT_BUDGET_PER_10K


@pytest.mark.parametrize(
    ("extra", "loc"),
    [
        ({"micro_batch": 0}, ["body", "micro_batch"]),
        ({"micro_batch": 5000}, ["body", "micro_batch"]),
        ({"micro_batch": "8"}, ["body", "micro_batch"]),
        ({"micro_batch": True}, ["body", "micro_batch"]),
        ({"micro_batch": 2.5}, ["body", "micro_batch"]),
        ({"batched_inputs": "features"}, ["body", "batched_inputs"]),
        ({"batched_inputs": ["a,b"]}, ["body", "batched_inputs"]),
        ({"batched_inputs": [" features"]}, ["body", "batched_inputs"]),
        ({"batched_inputs": ["features", "features"]}, ["body", "batched_inputs"]),
        ({"batched_inputs": [""]}, ["body", "batched_inputs", 0]),
        ({"batched_inputs": [7]}, ["body", "batched_inputs", 0]),
        ({"budgets": {"micro_batch": 8}}, ["body", "budgets"]),
        ({"drift_budget_per_10k": 0}, ["body", "drift_budget_per_10k"]),
        ({"drift_budget_per_10k": 1000}, ["body", "drift_budget_per_10k"]),
        ({"drift_budget_per_10k": "NaN"}, ["body", "drift_budget_per_10k"]),
        ({"budgets": {"drift_budget_per_10k": 1.0}}, ["body", "budgets"]),
    ],
)
def test_malformed_settings_are_a_422_naming_the_field(
    server: LiveServer, files: dict[str, Path], extra: dict[str, Any], loc: list[Any]
) -> None:
    r = _post(server, _body(server, files, **extra))
    assert r.status_code == 422, r.text
    assert [e["loc"] for e in r.json()["errors"]] == [loc]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"batched_inputs": ["nope"]}, "batched_inputs: ['nope'] are not inputs of the model"),
        ({"profiles": [], "micro_batch": 8}, "micro_batch: compile settings need profiles"),
        ({"profiles": [], "batched_inputs": ["features"]}, "batched_inputs: compile settings need profiles"),
    ],
)
def test_settings_the_model_or_the_request_cannot_use_are_a_422_naming_the_field(
    server: LiveServer, files: dict[str, Path], extra: dict[str, Any], needle: str
) -> None:
    r = _post(server, _body(server, files, **extra))
    assert r.status_code == 422 and needle in r.json()["detail"], r.text
    listed = server.client.get("/api/v1/models", headers=server.auth("viewer"))
    assert listed.json() == []  # nothing registered, nothing queued


def test_operator_cli_sends_both_settings(
    server: LiveServer,
    files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fleet_server import operator_cli
    from tests.helpers.inproc import operator_api

    monkeypatch.setattr(operator_cli, "Api", operator_api(server))
    argv = ["--token", server.tokens["operator"], "--json", "models", "register", str(files["model"])]
    argv += ["--name", "cli-head", "--calib", str(files["calib"]), "--eval", str(files["eval"])]
    # no profile: the server refuses, naming both settings the CLI sent ('' = an empty list)
    code = operator_cli.main([*argv, "--batched-inputs", "", "--micro-batch", "8"])
    assert code == operator_cli.CliExit.USAGE  # the server's 422
    out = capsys.readouterr()
    assert "batched_inputs and micro_batch: compile settings need profiles" in out.out + out.err

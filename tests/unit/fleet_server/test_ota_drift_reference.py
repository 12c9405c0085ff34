"""The server's structural check of a drift reference: what the agent's decoder accepts passes,
everything else is refused with a message that names the problem (and never a crash)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.drift.reference import ReferenceProfile, build_reference
from fleet_server.errors import InvalidRequestError
from fleet_server.ota.drift_reference import MAX_DRIFT_REFERENCE_BYTES, check_drift_reference


@pytest.fixture(scope="module")
def profile() -> dict[str, Any]:
    x = np.random.default_rng(0).normal(size=(400, 6))
    logits = np.stack([x[:, 0], -x[:, 0], x[:, 1]], axis=1)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    raw: dict[str, Any] = json.loads(build_reference(x, outputs=probs, meta={"model": "m"}).to_bytes())
    return raw


def _file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "drift_reference.json"
    path.write_bytes(data)
    return path


def test_what_the_agent_decodes_passes(tmp_path: Path, profile: dict[str, Any]) -> None:
    data = json.dumps(profile).encode()
    ReferenceProfile.from_bytes(data)  # the agent's own decoder agrees it is a profile
    check_drift_reference(_file(tmp_path, data))
    embedding = {**profile, "outputs": None, "class_freq": None, "errors": None, "projection": None}
    check_drift_reference(_file(tmp_path, json.dumps(embedding).encode()))


def test_a_format_1_reference_still_passes_and_still_loads(tmp_path: Path, profile: dict[str, Any]) -> None:
    """References built before format 2 (no constant flags, no seasonal baseline) stay usable."""
    old = {k: v for k, v in profile.items() if k != "seasonal"}
    old["format_version"] = 1
    old["inputs"] = {k: v for k, v in profile["inputs"].items() if k != "constant"}
    data = json.dumps(old).encode()
    check_drift_reference(_file(tmp_path, data))
    loaded = ReferenceProfile.from_bytes(data)
    assert loaded.seasonal is None and np.isnan(loaded.inputs.constant).all()


def _without(doc: dict[str, Any], dotted: str) -> dict[str, Any]:
    out = json.loads(json.dumps(doc))
    *parents, leaf = dotted.split(".")
    node = out
    for key in parents:
        node = node[key]
    del node[leaf]
    return out


def _with(doc: dict[str, Any], dotted: str, value: object) -> dict[str, Any]:
    out = json.loads(json.dumps(doc))
    *parents, leaf = dotted.split(".")
    node = out
    for key in parents:
        node = node[key]
    node[leaf] = value
    return out


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: [p], "must be a JSON object, not an array"),
        (lambda p: "profile", "must be a JSON object, not a string"),
        (lambda p: _with(p, "format_version", 3), "format_version must be one of [1, 2], got 3"),
        (lambda p: _with(p, "format_version", True), "format_version must be one of [1, 2], got true"),
        (lambda p: _without(p, "format_version"), "format_version must be one of [1, 2], got null"),
        (lambda p: _with(p, "seasonal", {"period": 1.0}), "missing key 'seasonal.mean'"),
        (lambda p: _with(p, "inputs.constant", 3), "key 'inputs.constant' must be an array"),
        (lambda p: _without(p, "calibration"), "missing key 'calibration'"),
        (lambda p: _without(p, "outputs"), "missing key 'outputs'"),
        (lambda p: _without(p, "inputs.precision"), "missing key 'inputs.precision'"),
        (lambda p: _without(p, "inputs.channels.n_ref"), "missing key 'inputs.channels.n_ref'"),
        (lambda p: _without(p, "calibration.windows"), "missing key 'calibration.windows'"),
        (lambda p: _with(p, "n_rows", "400"), "key 'n_rows' must be an integer, not a string"),
        (lambda p: _with(p, "n_rows", 4.5), "key 'n_rows' must be an integer, not a number"),
        (lambda p: _with(p, "inputs", []), "key 'inputs' must be an object, not an array"),
        (lambda p: _with(p, "inputs.channels", [1]), "key 'inputs.channels' must be an object"),
        (
            lambda p: _with(p, "calibration.block", True),
            "'calibration.block' must be an integer, not a boolean",
        ),
        (
            lambda p: _with(p, "calibration.budget_per_10k", "1"),
            "'calibration.budget_per_10k' must be a number",
        ),
        (lambda p: _with(p, "outputs", 3), "key 'outputs' must be null or an object, not an integer"),
        (
            lambda p: _with(p, "outputs.n_classes", None),
            "key 'outputs.n_classes' must be an integer, not null",
        ),
        (lambda p: _with(p, "projection", {"center": []}), "missing key 'projection.axes'"),
        (lambda p: _with(p, "meta", []), "key 'meta' must be an object, not an array"),
    ],
)
def test_wrong_shapes_are_refused_by_name(
    tmp_path: Path, profile: dict[str, Any], mutate: Any, message: str
) -> None:
    with pytest.raises(InvalidRequestError, match="drift reference") as err:
        check_drift_reference(_file(tmp_path, json.dumps(mutate(profile)).encode()))
    assert message in str(err.value)


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"\xff\xfe\x00garbage", b'{"format_version": 1,', b"[" * 200_000],
    ids=["empty", "text", "binary", "truncated", "nested"],
)
def test_not_json_is_refused(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(InvalidRequestError, match="drift reference is not JSON"):
        check_drift_reference(_file(tmp_path, data))


def test_too_big_is_refused_before_parsing(tmp_path: Path, profile: dict[str, Any]) -> None:
    data = json.dumps(profile).encode()
    padded = data + b" " * (MAX_DRIFT_REFERENCE_BYTES + 1 - len(data))
    with pytest.raises(InvalidRequestError, match=f"the limit is {MAX_DRIFT_REFERENCE_BYTES} bytes"):
        check_drift_reference(_file(tmp_path, padded))

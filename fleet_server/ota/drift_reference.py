"""Structural check of a `drift_reference.json` before it is signed into a release.

The agent decodes the profile (`agent.drift.reference_codec`, format versions 1 and 2; 2 adds
`inputs.constant` and a nullable `seasonal`, both optional here); the server must
not import the agent, so it checks the same document shape here: a JSON object of the known format
version with every top-level key the decoder reads, each of the right JSON type. It does not check
the statistics (the device's decoder is the judge of those); it keeps a release from shipping
bytes that could never be a profile. Every refusal is an InvalidRequestError naming the problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fleet_server.errors import InvalidRequestError

MAX_DRIFT_REFERENCE_BYTES = 8 << 20  # the agent refuses larger ones too (WorkLimits)
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # what the agent decodes

_NUM = (int, float)
_ANY = object  # present, any JSON type (the decoder converts it)
_TOP: dict[str, Any] = {
    "input_names": list,
    "feature_names": list,
    "n_rows": int,
    "inputs": dict,
    "deciles": list,
    "raw_mean": list,
    "raw_std": list,
    "calibration": dict,
}
_NULLABLE: dict[str, type] = {
    "projection": dict,
    "outputs": dict,
    "class_freq": list,
    "errors": dict,
}
_INPUTS = ("maps", "score_mean", "score_std", "precision", "max_atom", "channels")
_CALIBRATION: dict[str, Any] = {
    "budget_per_10k": _NUM,
    "block": int,
    "windows": list,
    "input": dict,
    "output": dict,
    "error": dict,
    "stuck_runs": list,
}
_CHANNELS = ("names", "kinds", "mean", "std", "n_ref")


def check_drift_reference(path: Path) -> None:
    """Refuse a file that is not a drift reference profile the agent could decode.

    Raises:
        InvalidRequestError: too big, not UTF-8 JSON, not an object, unknown format version, or a
            missing or mistyped key (the message names it).
    """
    size = path.stat().st_size
    if size > MAX_DRIFT_REFERENCE_BYTES:
        raise InvalidRequestError(
            f"drift reference is {size} bytes; the limit is {MAX_DRIFT_REFERENCE_BYTES} bytes"
        )
    try:
        raw = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidRequestError(f"drift reference is not JSON: {err}") from err
    except RecursionError as err:
        raise InvalidRequestError("drift reference is not JSON: nested too deeply") from err
    check_profile(raw)


def check_profile(raw: object) -> None:
    """The shape check of a decoded document (see `check_drift_reference`)."""
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"drift reference must be a JSON object, not {_kind(raw)}")
    version = raw.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise InvalidRequestError(
            f"drift reference format_version must be one of {list(READABLE_VERSIONS)}, "
            f"got {json.dumps(version)}"
        )
    _keys(raw, _TOP, "")
    for key, kind in _NULLABLE.items():
        if key not in raw:
            raise InvalidRequestError(f"drift reference is missing key {key!r}")
        if raw[key] is not None and not isinstance(raw[key], kind):
            raise InvalidRequestError(
                f"drift reference key {key!r} must be null or {_kind(kind())}, not {_kind(raw[key])}"
            )
    if "meta" in raw and not isinstance(raw["meta"], dict):
        raise InvalidRequestError(f"drift reference key 'meta' must be an object, not {_kind(raw['meta'])}")
    inputs = raw["inputs"]
    _keys(inputs, dict.fromkeys(_INPUTS, _ANY), "inputs.")
    _keys(inputs["channels"], dict.fromkeys(_CHANNELS, _ANY), "inputs.channels.")
    _keys(raw["calibration"], _CALIBRATION, "calibration.")
    if raw["outputs"] is not None:
        _keys(raw["outputs"], {"n_classes": int, "confidence": list, "channels": dict}, "outputs.")
    if raw["projection"] is not None:
        _keys(raw["projection"], {"center": list, "axes": list}, "projection.")
    if version >= 2 and raw.get("seasonal") is not None:
        _keys(raw["seasonal"], {"period": _NUM, "mean": list, "std": list}, "seasonal.")
    if version >= 2 and "constant" in inputs and not isinstance(inputs["constant"], list):
        raise InvalidRequestError(
            f"drift reference key 'inputs.constant' must be an array, not {_kind(inputs['constant'])}"
        )


def _keys(doc: object, expected: dict[str, Any], prefix: str) -> None:
    if not isinstance(doc, dict):
        raise InvalidRequestError(f"drift reference key {prefix.rstrip('.')!r} must be an object")
    for key, kind in expected.items():
        if key not in doc:
            raise InvalidRequestError(f"drift reference is missing key {prefix + key!r}")
        value = doc[key]
        if kind is not _ANY and (isinstance(value, bool) or not isinstance(value, kind)):
            want = "a number" if kind == _NUM else _kind(kind())
            raise InvalidRequestError(
                f"drift reference key {prefix + key!r} must be {want}, not {_kind(value)}"
            )


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__
    )

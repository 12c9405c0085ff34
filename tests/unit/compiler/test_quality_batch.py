"""Which batch `build` judges each profile's quality at (issue 17): a profile whose devices
micro-batch says up to how many samples (`[serving] micro_batch`), the request's `--micro-batch`
overrides it (1: batch 1 only), and the report says where the number came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.profile import load_profile, profiles_dir
from compiler.build import BuildRequest, quality_batch
from compiler.pipeline import Candidate, Measurement, Outcome, Recipe
from compiler.report import build_report, model_card

PI = "raspberry-pi-4"


def _profile_dir(tmp_path: Path, serving: str, *, top: bool = False) -> Path:
    text = (profiles_dir() / f"{PI}.toml").read_text()
    (tmp_path / f"{PI}.toml").write_text(serving + text if top else text + "\n" + serving)
    return tmp_path


def _request(micro_batch: int | None = None) -> BuildRequest:
    return BuildRequest("m.onnx", (PI,), Path("c.npz"), Path("e.npz"), Path("out"), micro_batch=micro_batch)


def test_shipped_profiles_serve_batch_1_unless_they_say_otherwise() -> None:
    assert load_profile(PI).micro_batch is None


def test_a_profile_declares_its_micro_batch_and_the_request_overrides_it(tmp_path: Path) -> None:
    prof = load_profile(PI, _profile_dir(tmp_path, "[serving]\nmicro_batch = 64\n"))
    assert prof.micro_batch == 64
    assert quality_batch(_request(), prof) == {"serve": 1, "micro_batch": 64, "source": "profile"}
    assert quality_batch(_request(8), prof) == {"serve": 1, "micro_batch": 8, "source": "request"}
    assert quality_batch(_request(1), prof) == {"serve": 1, "micro_batch": None, "source": "request"}
    plain = load_profile(PI)
    assert quality_batch(_request(), plain) == {"serve": 1, "micro_batch": None, "source": None}
    assert quality_batch(_request(16), plain) == {"serve": 1, "micro_batch": 16, "source": "request"}


@pytest.mark.parametrize("value", ["1", "0", "-4", "true", '"8"', "2.5"])
def test_a_bad_micro_batch_in_a_profile_is_refused_by_name(tmp_path: Path, value: str) -> None:
    folder = _profile_dir(tmp_path, f"[serving]\nmicro_batch = {value}\n")
    with pytest.raises(ConfigError, match=r"serving\.micro_batch="):
        load_profile(PI, folder)


def test_serving_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="serving must be a table"):
        load_profile(PI, _profile_dir(tmp_path, 'serving = "fast"\n', top=True))


def _outcome(micro_batch: int | None) -> Outcome:
    m = Measurement(
        size_bytes=10,
        latency_p50_ms=1.0,
        latency_p95_ms=1.0,
        peak_memory_bytes=1,
        agreement=1.0,
        micro_batch=micro_batch,
    )
    c = Candidate(Recipe("onnxruntime", "fp32"), "a.onnx", m, ())
    return Outcome(PI, [c], c)


def _report(micro_batch: int | None, qb: dict[str, object]) -> dict[str, object]:
    lineage = {
        "model": "m.onnx",
        "source_kind": "onnx",
        "input_sha256": "0",
        "calibration": {"source": "c", "samples": 1, "sha256": "0"},
        "evaluation": {"source": "e", "samples": 1, "sha256": "0"},
        "export": {"opset": 17},
        "task": "classification",
        "quality_budget": {},
    }
    ref = _outcome(None).candidates[0].measurement
    assert ref is not None
    return build_report(
        lineage=lineage, reference=ref, outcomes=[_outcome(micro_batch)], artifacts={}, quality_batch={PI: qb}
    )


def test_the_report_and_the_model_card_say_where_the_micro_batch_came_from() -> None:
    qb = {"serve": 1, "micro_batch": 64, "source": "profile"}
    doc = _report(64, qb)
    assert doc["profiles"][PI]["quality_batch"] == qb  # type: ignore[index]
    assert "at micro-batch 64 (from the profile's `serving.micro_batch`)" in model_card(doc)
    doc = _report(None, {"serve": 1, "micro_batch": None, "source": "request"})
    assert "batch 1 only (micro-batch 1 from the build request (`--micro-batch`))" in model_card(doc)


def test_a_fixed_batch_artifact_is_not_claimed_to_hold_at_the_micro_batch() -> None:
    doc = _report(None, {"serve": 1, "micro_batch": 64, "source": "profile"})  # LiteRT: not run at 64
    notes = doc["profiles"][PI]["notes"]  # type: ignore[index]
    assert any("not measured at micro-batch 64" in n for n in notes), notes
    assert not any("not measured" in n for n in _report(64, {"micro_batch": 64})["profiles"][PI]["notes"])  # type: ignore[index]

"""`edgeloop-compile build` measures quality at the batch a device serves, and chooses the same
artifact on identical runs (issue 17).

The model (made here with onnx.helper) is a plain MLP; its inputs include a loud sample every 8th
row (a saturated sensor). Dynamic int8 takes one activation scale per input tensor: at batch 1 each
sample gets its own scale and agreement with fp32 is 0.94-0.99 (by the CPU's int8 kernel), but in
a micro-batch of 64 the loud sample sets the scale for all 64 and the quiet ones lose their signal
(~0.3, measured in the test from the report). A build for a device that micro-batches must see that
and not ship int8.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compiler.cli import main
from compiler.errors import ExitCode
from tests.unit.compiler import honest_models as hm

PROFILE = "raspberry-pi-4"
MICRO_PROFILE = "raspberry-pi-4-microbatch"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("batch-honest")
    model = hm.batch_sensitive_mlp(root / "mlp.onnx")
    x = hm.mixed_magnitude_batch(n=256)
    np.savez(root / "eval.npz", x=x)
    np.savez(root / "calib.npz", x=hm.mixed_magnitude_batch(n=64))
    profiles = root / "profiles"
    profiles.mkdir()
    src = Path(__file__).resolve().parents[2] / "firmware_images" / f"{PROFILE}.toml"
    text = src.read_text()
    old = 'supported = ["fp32", "int8-static", "int8-dynamic"]'
    assert old in text
    text = text.replace(old, 'supported = ["fp32", "int8-dynamic"]')
    (profiles / f"{PROFILE}.toml").write_text(text)
    # the same device class, but its devices micro-batch up to 64 samples (the profile says so)
    micro = (
        text.replace(f'name = "{PROFILE}"', f'name = "{MICRO_PROFILE}"') + "\n[serving]\nmicro_batch = 64\n"
    )
    (profiles / f"{MICRO_PROFILE}.toml").write_text(micro)
    return {"root": root, "model": model, "profiles": profiles}


def _build(
    ws: dict[str, Path],
    name: str,
    monkeypatch: pytest.MonkeyPatch,
    *extra: str,
    profiles: tuple[str, ...] = (PROFILE,),
) -> dict[str, Any]:
    monkeypatch.setenv("EDGELOOP_PROFILES_DIR", str(ws["profiles"]))
    out = ws["root"] / name
    argv = ["build", "--model", str(ws["model"]), "--calib", str(ws["root"] / "calib.npz")]
    for profile in profiles:
        argv += ["--profile", profile]
    argv += ["--eval", str(ws["root"] / "eval.npz"), "--out", str(out), "--json", "--min-agreement", "0.9"]
    assert main([*argv, *extra]) == ExitCode.OK
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


def _candidate(report: dict[str, Any], recipe: str, profile: str = PROFILE) -> dict[str, Any]:
    prof = report["profiles"][profile]
    found: dict[str, Any] = next(c for c in prof["candidates"] if c["recipe"] == recipe)
    return found


def test_micro_batched_device_gets_no_int8_that_only_holds_at_batch_1(
    ws: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _build(ws, "out-micro", monkeypatch, "--micro-batch", "64")
    assert report["lineage"]["quality_batch"] == {"serve": 1, "micro_batch": 64}
    dyn = _candidate(report, "onnx-int8-dynamic")
    m = dyn["metrics"]
    assert m["serve_batch"] == 1
    # a lone caller is served well: inside the build's --min-agreement 0.9. (~0.99 on a CPU with
    # AVX-512 VNNI; 0.94 on an AVX2-only CPU, where MLAS's u8s8 kernel saturates int16 sums.)
    assert m["agreement"] >= 0.9
    assert m["micro_batch"] == 64
    assert m["micro_batch_agreement"] < 0.6  # ... but not inside a batch with a loud sample
    assert m["batch_consistency_cosine_min"] < 0.9  # same file, other outputs
    assert any(f.startswith("agreement at micro-batch 64") for f in dyn["failures"])
    assert dyn["change"]["quantized_nodes"] == dyn["change"]["weighted_nodes"] == 2  # what int8 changed
    assert dyn["change"]["size_delta_bytes"] < 0
    assert report["profiles"][PROFILE]["chosen"] == "onnx-fp32"
    fp32 = _candidate(report, "onnx-fp32")["metrics"]
    assert fp32["micro_batch_agreement"] == 1.0
    notes = report["profiles"][PROFILE]["notes"]
    assert any("agreement 1.0000, 95% interval 0.98" in n and "n=256" in n for n in notes), notes
    assert "95% interval" in (ws["root"] / "out-micro" / "MODEL_CARD.md").read_text()


def test_a_profile_that_micro_batches_is_judged_at_its_own_size_unless_the_request_overrides_it(
    ws: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # One build, two profiles that differ only in [serving] micro_batch: the same files, measured
    # at batch 1 for one and also at 64 for the other (the measurement cache must tell them apart).
    report = _build(ws, "out-profile", monkeypatch, profiles=(PROFILE, MICRO_PROFILE))
    assert report["lineage"]["quality_batch"] == {"serve": 1, "micro_batch": None}
    micro = report["profiles"][MICRO_PROFILE]
    assert micro["quality_batch"] == {"serve": 1, "micro_batch": 64, "source": "profile"}
    dyn = _candidate(report, "onnx-int8-dynamic", MICRO_PROFILE)
    assert dyn["metrics"]["micro_batch"] == 64
    assert any(f.startswith("agreement at micro-batch 64") for f in dyn["failures"])
    assert micro["chosen"] == "onnx-fp32"
    plain = report["profiles"][PROFILE]
    assert plain["quality_batch"] == {"serve": 1, "micro_batch": None, "source": None}
    assert _candidate(report, "onnx-int8-dynamic")["metrics"]["micro_batch"] is None
    assert _candidate(report, "onnx-int8-dynamic")["passes_budget"]  # at batch 1 it holds
    card = (ws["root"] / "out-profile" / "MODEL_CARD.md").read_text()
    assert "micro-batch 64 (from the profile's `serving.micro_batch`)" in card

    # the request's --micro-batch wins over the profile's: 1 is batch 1 only
    report = _build(ws, "out-override", monkeypatch, "--micro-batch", "1", profiles=(MICRO_PROFILE,))
    micro = report["profiles"][MICRO_PROFILE]
    assert micro["quality_batch"] == {"serve": 1, "micro_batch": None, "source": "request"}
    dyn = _candidate(report, "onnx-int8-dynamic", MICRO_PROFILE)
    assert dyn["metrics"]["micro_batch"] is None and dyn["passes_budget"]


def test_a_micro_batch_below_1_is_refused(ws: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELOOP_PROFILES_DIR", str(ws["profiles"]))
    argv = [
        "build",
        "--model",
        str(ws["model"]),
        "--profile",
        PROFILE,
        "--calib",
        str(ws["root"] / "calib.npz"),
    ]
    argv += ["--eval", str(ws["root"] / "eval.npz"), "--out", str(ws["root"] / "out-zero"), "--json"]
    assert main([*argv, "--micro-batch", "0"]) == ExitCode.INPUT
    assert not (ws["root"] / "out-zero").exists()


@pytest.mark.slow
def test_without_micro_batching_int8_is_chosen_and_identical_runs_choose_the_same(
    ws: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The four dynamic-int8 recipes come out byte-for-byte the same size with the same agreement
    # (smoothing finds no channel outliers here) and differ only in host timing noise (12.5-18.6 us
    # per call in one contended run): the old rule took the fastest of them, so identical runs
    # shipped different recipes. fp32 vs int8 on a 13 us model is itself inside the noise (fp32 was
    # 9.5 us in one run, 16.3 us in the next), so the speed band is opened here as the digits build
    # test does; the test is about what decides inside the band.
    first = _build(ws, "out-a", monkeypatch, "--latency-tolerance", "1000")
    second = _build(ws, "out-b", monkeypatch, "--latency-tolerance", "1000")
    chosen = [r["profiles"][PROFILE]["chosen"] for r in (first, second)]
    assert chosen == ["onnx-int8-dynamic", "onnx-int8-dynamic"]  # smallest, most agreeing, first by name
    for report in (first, second):
        ok = [c for c in report["profiles"][PROFILE]["candidates"] if c["passes_budget"]]
        best = next(c for c in ok if c["recipe"] == chosen[0])
        same_size = [c for c in ok if c["metrics"]["size_bytes"] <= 1.01 * best["metrics"]["size_bytes"]]
        # among equally small passing candidates: the most agreeing, then the first by name
        expected = min(same_size, key=lambda c: (-c["metrics"]["agreement"], c["recipe"]))
        assert best["recipe"] == expected["recipe"]
        assert best["metrics"]["micro_batch"] is None
        assert best["metrics"]["quantized_nodes"] == 2

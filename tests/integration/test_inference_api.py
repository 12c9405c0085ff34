"""The local inference API end to end: real service on a Unix socket, real models, real client."""

from __future__ import annotations

import argparse
import io
import json
import re
import socket
import struct
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import grpc
import numpy as np
import pytest

from agent.client import EdgeloopClient
from agent.errors import (
    BackendCrashedError,
    InvalidInputError,
    NoModelError,
    RequestTooLargeError,
)
from agent.inference.cli import add_subcommands
from agent.inference.engine import ServingOptions
from agent.inference.registry import ProfileLoader
from agent.inference.runtime import InferenceRuntime, RuntimeLoader
from agent.inference.signature import Signature
from agent.profile import DeviceProfile, load_profile
from agent.serving.background import BackgroundService
from agent.serving.server import InferenceService
from protos.edgeloop.v1 import inference_pb2 as pb
from protos.edgeloop.v1 import inference_pb2_grpc as pb_grpc
from tests.fixtures.models import DigitsModels, digits_models

SIGNATURE = "(input: float32[?, 1, 8, 8]) -> (logits: float32[?, 10])"


@pytest.fixture(scope="module")
def models() -> DigitsModels:
    return digits_models()


@pytest.fixture(scope="module")
def profile() -> DeviceProfile:
    return load_profile("generic-x86")


def _serve(
    tmp_path: Path, profile: DeviceProfile, options: ServingOptions, loader: RuntimeLoader | None = None
) -> BackgroundService:
    service = InferenceService(
        tmp_path / "slots", profile, tmp_path / "api.sock", tcp_port=0, options=options, loader=loader
    )
    return BackgroundService(service)


@pytest.fixture
def api(tmp_path: Path, profile: DeviceProfile, models: DigitsModels) -> Iterator[BackgroundService]:
    options = ServingOptions(max_batch=64, max_request_bytes=64 * 1024, cache_entries=16)
    with _serve(tmp_path, profile, options) as bg:
        bg.call(lambda: bg.service.install(models.onnx_fp32, name="digits", version="1"))
        yield bg


def test_predict_matches_torch_and_reports_model_info(
    api: BackgroundService, tmp_path: Path, models: DigitsModels
) -> None:
    with EdgeloopClient(tmp_path / "api.sock") as client:
        logits = np.concatenate([client.predict(models.data.x_test[i : i + 50]) for i in range(0, 450, 50)])
        info = client.model_info()
        signature = client.signature()
        slots = client.list_models()
    reference = models.reference_logits[:450]
    assert np.abs(logits - reference).max() <= 1e-4
    assert (info.name, info.version, info.slot) == ("digits", "1", "current")
    assert info.backend.startswith("onnxruntime[CPUExecutionProvider] threads=")
    assert signature.describe() == SIGNATURE
    assert {e.slot: e.version for e in slots.slots}["current"] == "1"
    assert slots.stats["inference.digits@1.requests"] == 9


def test_loopback_tcp_and_stream(api: BackgroundService, models: DigitsModels) -> None:
    with EdgeloopClient(f"127.0.0.1:{api.service.bound_tcp_port}") as client:
        frames = [models.data.x_test[i : i + 1] for i in range(20)]
        outputs = list(client.predict_stream(frames))
    assert len(outputs) == 20
    stacked = np.concatenate(outputs)
    assert (stacked.argmax(1) == models.reference_logits[:20].argmax(1)).all()


@pytest.mark.parametrize(
    ("x", "problem"),
    [
        (np.zeros((1, 1, 9, 8), np.float32), "dim 2 must be 8"),
        (np.zeros((1, 1, 8, 8), np.float64), "dtype float64"),
        (np.zeros((1, 8, 8), np.float32), "expected rank 4"),
        (np.zeros((65, 1, 8, 8), np.float32), "batch size 65 exceeds the limit of 64"),
    ],
)
def test_bad_inputs_are_invalid_argument_naming_the_signature(
    api: BackgroundService, tmp_path: Path, x: np.ndarray, problem: str
) -> None:
    with grpc.insecure_channel(f"unix:{tmp_path / 'api.sock'}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        request = pb.PredictRequest(inputs=[pb.Tensor(dtype=_dtype(x), shape=x.shape, data=x.tobytes())])
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in info.value.details()
    assert f"expected signature {SIGNATURE}" in info.value.details()
    with EdgeloopClient(tmp_path / "api.sock") as client, pytest.raises(InvalidInputError, match=problem):
        client.predict(x)  # the app-side client maps it to InvalidInputError


def _dtype(x: np.ndarray) -> int:
    return {"float32": pb.ELEMENT_TYPE_FLOAT32, "float64": pb.ELEMENT_TYPE_FLOAT64}[x.dtype.name]


def test_malformed_tensor_and_oversized_requests_are_refused(api: BackgroundService, tmp_path: Path) -> None:
    with grpc.insecure_channel(f"unix:{tmp_path / 'api.sock'}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        short = pb.PredictRequest(
            inputs=[pb.Tensor(dtype=pb.ELEMENT_TYPE_FLOAT32, shape=[1, 1, 8, 8], data=b"x")]
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(short)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "needs 256 bytes, got 1" in info.value.details()
    with EdgeloopClient(tmp_path / "api.sock") as client:
        with pytest.raises(RequestTooLargeError, match=r"RESOURCE_EXHAUSTED.*the limit is 65536"):
            client.predict(np.zeros((60, 1, 16, 32), np.float32))  # 122,880 bytes
        with pytest.raises(RequestTooLargeError, match="RESOURCE_EXHAUSTED"):
            client.predict(np.zeros((2000, 1, 32, 32), np.float32))  # 8 MB: over the gRPC message limit
        assert client.predict(np.zeros((1, 1, 8, 8), np.float32)).shape == (1, 10)  # still serving


def test_prediction_cache_counts_hits_and_misses(
    api: BackgroundService, tmp_path: Path, models: DigitsModels
) -> None:
    x = models.data.x_test[:3]
    with EdgeloopClient(tmp_path / "api.sock") as client:
        first = client.predict(x, use_cache=True)
        second = client.predict(x, use_cache=True)
        client.predict(x)  # not opted in: neither hit nor miss
    np.testing.assert_array_equal(first, second)
    stats = api.service.stats_snapshot()
    assert stats["inference.digits@1.cache_hits"] == 1
    assert stats["inference.digits@1.cache_misses"] == 1


def test_no_model_is_unavailable(tmp_path: Path, profile: DeviceProfile) -> None:
    with (
        _serve(tmp_path, profile, ServingOptions()),
        EdgeloopClient(tmp_path / "api.sock") as client,
        pytest.raises(NoModelError, match="UNAVAILABLE: no model is loaded"),
    ):
        client.predict(np.zeros((1, 1, 8, 8), np.float32))


class CrashingRuntime:
    """Fault injection on top of a real runtime: its calls fail while `crashes_left` > 0."""

    def __init__(self, inner: InferenceRuntime, budget: list[int]) -> None:
        self._inner = inner
        self._budget = budget  # shared by every runtime the loader makes, so restarts see it

    @property
    def backend(self) -> str:
        return self._inner.backend

    @property
    def signature(self) -> Signature:
        return self._inner.signature

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._budget[0] > 0:
            self._budget[0] -= 1
            raise BackendCrashedError("injected backend failure")
        return self._inner.run(inputs)

    def close(self) -> None:
        self._inner.close()


class CrashingLoader:
    """`RuntimeLoader` wrapping the real registry with `CrashingRuntime`."""

    def __init__(self, profile: DeviceProfile) -> None:
        self._real = ProfileLoader(profile)
        self.crashes = [0]

    def __call__(self, artifact: Path) -> InferenceRuntime:
        return CrashingRuntime(self._real(artifact), self.crashes)


def test_crashed_backend_is_restarted_and_reported(
    tmp_path: Path, profile: DeviceProfile, models: DigitsModels
) -> None:
    loader = CrashingLoader(profile)
    with _serve(tmp_path, profile, ServingOptions(restart_min_interval_s=0.0), loader) as bg:
        bg.call(lambda: bg.service.install(models.onnx_fp32, name="digits", version="1"))
        with EdgeloopClient(tmp_path / "api.sock") as client:
            loader.crashes[0] = 1  # next call fails once: restart + retry hides it from the app
            y = client.predict(models.data.x_test[:4])
            assert (y.argmax(1) == models.reference_logits[:4].argmax(1)).all()
            loader.crashes[0] = 10**6  # fails for good: the app gets INTERNAL, the server stays up
            with pytest.raises(BackendCrashedError, match="INTERNAL: injected backend failure"):
                client.predict(models.data.x_test[:1])
            loader.crashes[0] = 0
            assert client.model_info().version == "1"
            assert client.predict(models.data.x_test[:1]).shape == (1, 10)
        stats = bg.service.stats_snapshot()
    assert stats["inference.digits@1.restarts"] == 2
    assert stats["inference.digits@1.errors.backend_crashed"] == 1


def test_micro_batching_under_concurrency(
    tmp_path: Path, profile: DeviceProfile, models: DigitsModels
) -> None:
    options = ServingOptions(micro_batch=True, micro_batch_max=32, micro_batch_wait_s=0.002)
    errors: list[BaseException] = []
    agreement: list[float] = []
    with _serve(tmp_path, profile, options) as bg:
        bg.call(lambda: bg.service.install(models.onnx_fp32, name="digits", version="1"))

        def worker(offset: int) -> None:
            try:
                with EdgeloopClient(tmp_path / "api.sock") as client:
                    for i in range(offset, offset + 40):
                        y = client.predict(models.data.x_test[i : i + 1])
                        agreement.append(float(y.argmax() == models.reference_logits[i].argmax()))
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=worker, args=(k * 20,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        engine = bg.service._engine
        assert engine is not None
        batcher = engine._batcher
        assert batcher is not None
    assert not errors
    assert len(agreement) == 320
    assert min(agreement) == 1.0
    assert batcher.batched_requests == 320
    assert batcher.batches < 320  # requests were actually merged


def test_tflite_int8_through_the_api(tmp_path: Path, profile: DeviceProfile, models: DigitsModels) -> None:
    with _serve(tmp_path, profile, ServingOptions()) as bg:
        bg.call(lambda: bg.service.install(models.tflite_int8, name="digits", version="1-int8"))
        with EdgeloopClient(tmp_path / "api.sock") as client:
            x = models.data.x_test
            logits = np.concatenate([client.predict(x[i : i + 200]) for i in range(0, len(x), 200)])
            assert client.model_info().backend == "litert[xnnpack]"
    agree = (logits.argmax(1) == models.reference_logits.argmax(1)).mean()
    assert agree >= 0.99


def test_cli_predict_and_models_against_the_running_agent(
    api: BackgroundService, tmp_path: Path, models: DigitsModels
) -> None:
    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="command"))
    sample = tmp_path / "x.npy"
    np.save(sample, models.data.x_test[:3])
    socket = str(tmp_path / "api.sock")
    out = io.StringIO()
    args = parser.parse_args(["predict", "--input", str(sample), "--socket", socket, "--json"])
    assert args.handler(args, out) == 0
    payload = json.loads(out.getvalue())
    assert (payload["model"], payload["version"]) == ("digits", "1")
    logits = np.array(payload["outputs"]["logits"])
    assert (logits.argmax(1) == models.reference_logits[:3].argmax(1)).all()
    out = io.StringIO()
    args = parser.parse_args(["models", "--socket", socket, "--json"])
    assert args.handler(args, out) == 0
    listing = json.loads(out.getvalue())
    assert listing["serving"] == "1"
    assert listing["slots"]["current"]["version"] == "1"
    out = io.StringIO()
    np.save(sample, np.zeros((1, 1, 7, 8), np.float32))
    args = parser.parse_args(["predict", "--input", str(sample), "--socket", socket])
    assert args.handler(args, out) == 2  # wrong shape: a usage error, the message names the signature


def test_sample_capture_is_opt_in_and_rate_limited(
    tmp_path: Path, profile: DeviceProfile, models: DigitsModels
) -> None:
    options = ServingOptions(capture_per_second=0.001, capture_capacity=8)  # burst of 4, then ~nothing
    with _serve(tmp_path, profile, options) as bg:
        bg.call(lambda: bg.service.install(models.onnx_fp32, name="digits", version="1"))
        assert bg.service.drain_samples("drift") == []  # a second consumer (the drift monitor)
        with EdgeloopClient(tmp_path / "api.sock") as client:
            for i in range(20):
                client.predict(models.data.x_test[i : i + 1])
        samples = bg.service.drain_samples()
        assert bg.service.drain_samples() == []
        teed = bg.service.drain_samples("drift")  # every consumer sees every sample
    assert len(samples) == 4
    assert [s.at for s in teed] == [s.at for s in samples]
    assert samples[0].model == "digits@1"
    np.testing.assert_array_equal(samples[0].inputs["input"], models.data.x_test[:1])
    assert samples[0].outputs["logits"].shape == (1, 10)
    with _serve(tmp_path / "off", profile, ServingOptions()) as bg:
        assert bg.service.drain_samples() == []


def test_stream_stops_with_invalid_argument_on_a_bad_frame(
    api: BackgroundService, tmp_path: Path, models: DigitsModels
) -> None:
    frames = [models.data.x_test[:1], models.data.x_test[1:2], np.zeros((1, 1, 4, 4), np.float32)]
    got = []
    with EdgeloopClient(tmp_path / "api.sock") as client:
        with pytest.raises(InvalidInputError, match="expected signature"):
            got.extend(client.predict_stream(frames))
        assert client.predict(models.data.x_test[:1]).shape == (1, 10)
    assert len(got) == 2
    assert api.service.stats_snapshot()["inference.digits@1.errors.invalid_input"] == 1


def test_crash_loop_fails_fast_without_reloading_each_time(
    tmp_path: Path, profile: DeviceProfile, models: DigitsModels
) -> None:
    loader = CrashingLoader(profile)
    with _serve(tmp_path, profile, ServingOptions(restart_min_interval_s=60.0), loader) as bg:
        bg.call(lambda: bg.service.install(models.onnx_fp32, name="digits", version="1"))
        loader.crashes[0] = 10**6
        with EdgeloopClient(tmp_path / "api.sock") as client:
            for _ in range(5):
                with pytest.raises(BackendCrashedError):
                    client.predict(models.data.x_test[:1])
            loader.crashes[0] = 0
            assert client.predict(models.data.x_test[:1]).shape == (1, 10)
        stats = bg.service.stats_snapshot()
    assert stats["inference.digits@1.restarts"] == 1  # one reload, then fail fast inside the interval
    assert stats["inference.digits@1.errors.backend_crashed"] == 5


def test_framed_fast_path_serves_the_same_contract(
    tmp_path: Path, profile: DeviceProfile, models: DigitsModels
) -> None:
    fast = tmp_path / "fast.sock"
    options = ServingOptions(max_batch=64, max_request_bytes=64 * 1024)
    service = InferenceService(
        tmp_path / "slots", profile, tmp_path / "api.sock", options=options, fast_socket_path=fast
    )
    with BackgroundService(service) as bg:
        bg.call(lambda: service.install(models.onnx_fp32, name="digits", version="1"))
        with EdgeloopClient(tmp_path / "api.sock", fast_socket=fast) as client:
            answer = client.predict_full(models.data.x_test[:40])
            assert answer.model_version == "1"
            assert np.abs(answer.outputs["logits"] - models.reference_logits[:40]).max() <= 1e-4
            with pytest.raises(InvalidInputError, match=f"expected signature {re.escape(SIGNATURE)}"):
                client.predict(np.zeros((1, 1, 9, 8), np.float32))
            with pytest.raises(RequestTooLargeError, match=r"RESOURCE_EXHAUSTED.*the limit is 65536"):
                client.predict(np.zeros((60, 1, 16, 32), np.float32))
            assert client.predict(models.data.x_test[:1]).shape == (1, 10)  # same connection still fine
        with socket.socket(socket.AF_UNIX) as raw:  # a v1 (protobuf) peer: told to upgrade, closed
            raw.connect(str(fast))
            raw.sendall(struct.pack("<I", 4) + b"\xff\xff\xff\xff")
            size, status = struct.unpack("<IB", raw.recv(5, socket.MSG_WAITALL))
            message = raw.recv(size, socket.MSG_WAITALL).decode()
            assert raw.recv(1) == b""
        assert status == grpc.StatusCode.UNIMPLEMENTED.value[0]
        assert "framed protocol v2" in message  # v2 frames: tests/integration/test_framed_v2.py
    assert not fast.exists()

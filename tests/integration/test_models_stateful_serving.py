"""Issue 17: a stateful model (recurrent state not batched on axis 0, a 0-d sample rate, an `If`
subgraph) served end to end through the local API, streamed call after call with the state fed back;
micro-batching on with concurrent callers never mixes their states; warm-up on the shipped sample; a
refused first install shows the real reason. Real service on a Unix socket, real client, real ORT."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.client import EdgeloopClient
from agent.errors import ModelLoadError
from agent.inference.engine import ServingOptions
from agent.profile import DeviceProfile, load_profile
from agent.serving.background import BackgroundService
from agent.serving.server import InferenceService
from agent.slots import BROKEN, CURRENT
from tests.fixtures.stateful import (
    FRAME,
    build_stateful_onnx,
    initial_state,
    reference_step,
    weights,
)


@pytest.fixture(scope="module")
def profile() -> DeviceProfile:
    return load_profile("generic-x86")


@pytest.fixture
def stateful(tmp_path: Path) -> Path:
    return build_stateful_onnx(tmp_path / "vad.onnx", strict_rates=True)


def _serve(tmp_path: Path, profile: DeviceProfile, options: ServingOptions) -> BackgroundService:
    service = InferenceService(tmp_path / "slots", profile, tmp_path / "api.sock", options=options)
    return BackgroundService(service)


def _warmup_sample() -> dict[str, np.ndarray]:
    return {"x": np.zeros((1, FRAME), np.float32), "state": initial_state(1), "sr": np.array(16000, np.int64)}


def _stream(socket: Path, frames: np.ndarray, sr: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Send frames one call at a time, feeding each call's state_out back; yield (prob, state in)."""
    state = initial_state(1)
    with EdgeloopClient(socket) as client:
        for frame in frames:
            out = client.predict_all({"x": frame[None, :], "state": state, "sr": np.array(sr, np.int64)})
            yield out["prob"], state
            state = out["state_out"]


def test_stateful_model_streams_through_the_local_api(
    tmp_path: Path, profile: DeviceProfile, stateful: Path
) -> None:
    wts = weights()
    frames = np.random.default_rng(3).standard_normal((25, FRAME)).astype(np.float32)
    with _serve(tmp_path, profile, ServingOptions()) as bg:
        bg.call(lambda: bg.service.install(stateful, name="vad", version="1", warmup=_warmup_sample()))
        streamed = list(_stream(tmp_path / "api.sock", frames, 16000))
        stats = bg.service.stats_snapshot()
    state = initial_state(1)
    for frame, (prob, sent_state) in zip(frames, streamed, strict=True):
        np.testing.assert_allclose(sent_state, state, atol=1e-5)  # the state we fed back is the model's
        want, state = reference_step(wts, frame[None, :], state, 16000)
        np.testing.assert_allclose(prob, want, atol=1e-5)
    assert np.abs(state).max() > 0.1  # the recurrence did move: a state left at zeros would not pass
    assert stats["inference.vad@1.requests"] == 25
    assert stats.get("inference.vad@1.errors", 0) == 0
    assert (tmp_path / "slots" / CURRENT / "warmup.npz").is_file()  # the sample travels with the model


def test_micro_batching_with_concurrent_streams_never_mixes_state(
    tmp_path: Path, profile: DeviceProfile, stateful: Path
) -> None:
    wts = weights()
    options = ServingOptions(micro_batch=True, micro_batch_max=32, micro_batch_wait_s=0.005, workers=2)
    streams = {
        k: np.random.default_rng(10 + k).standard_normal((20, FRAME)).astype(np.float32) for k in range(4)
    }
    rates = {0: 16000, 1: 8000, 2: 16000, 3: 8000}  # the 0-d input differs per caller too
    got: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []
    with _serve(tmp_path, profile, options) as bg:
        bg.call(lambda: bg.service.install(stateful, name="vad", version="1", warmup=_warmup_sample()))

        def caller(k: int) -> None:
            try:
                got[k] = [prob for prob, _ in _stream(tmp_path / "api.sock", streams[k], rates[k])]
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=caller, args=(k,)) for k in streams]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        engine = bg.service._engine
        assert engine is not None and engine._batcher is not None
        batched = engine._batcher.batched_requests
    assert not errors, errors
    for k, frames in streams.items():
        state = initial_state(1)
        for frame, prob in zip(frames, got[k], strict=True):
            want, state = reference_step(wts, frame[None, :], state, rates[k])
            np.testing.assert_allclose(prob, want, atol=1e-5, err_msg=f"caller {k}")
    assert batched == 0  # a model with a non-batched input is never queued for joining


def test_batch_of_frames_with_one_state_is_valid(
    tmp_path: Path, profile: DeviceProfile, stateful: Path
) -> None:
    """Only batched inputs must agree on the batch: x of 3 rows with a [2, 3, 8] state is one call."""
    wts = weights()
    x = np.random.default_rng(5).standard_normal((3, FRAME)).astype(np.float32)
    state = np.random.default_rng(6).standard_normal((2, 3, 8)).astype(np.float32) * 0.3
    with _serve(tmp_path, profile, ServingOptions()) as bg:
        bg.call(lambda: bg.service.install(stateful, name="vad", version="1", warmup=_warmup_sample()))
        with EdgeloopClient(tmp_path / "api.sock") as client:
            out = client.predict_all({"x": x, "state": state, "sr": np.array(8000, np.int64)})
    want_prob, want_state = reference_step(wts, x, state, 8000)
    np.testing.assert_allclose(out["prob"], want_prob, atol=1e-5)
    np.testing.assert_allclose(out["state_out"], want_state, atol=1e-5)


def test_first_install_refused_by_a_zeros_warm_up_says_why(
    tmp_path: Path, profile: DeviceProfile, stateful: Path
) -> None:
    with _serve(tmp_path, profile, ServingOptions()) as bg:
        with pytest.raises(ModelLoadError) as info:
            bg.call(lambda: bg.service.install(stateful, name="vad", version="1"))
        message = str(info.value)
        assert "refuse left no current model" not in message
        assert "warm-up with zeros (the release ships no warm-up sample)" in message
        assert "output 'prob' is not finite" in message
        assert "--warmup FILE.npz" in message  # and how to ship one
        assert bg.service.serving() is None
        broken = bg.service._manager().slots.read(BROKEN)
        assert broken is not None and broken.version == "1"
        # the same file with the release's sample is accepted
        bg.call(lambda: bg.service.install(stateful, name="vad", version="2", warmup=_warmup_sample()))
        serving = bg.service.serving()
        assert serving is not None and serving.version == "2"


def test_a_warm_up_sample_that_does_not_fit_is_named(
    tmp_path: Path, profile: DeviceProfile, stateful: Path
) -> None:
    bad = {**_warmup_sample(), "state": np.zeros((3, 1, 8), np.float32)}
    with _serve(tmp_path, profile, ServingOptions()) as bg, pytest.raises(ModelLoadError) as info:
        bg.call(lambda: bg.service.install(stateful, name="vad", version="1", warmup=bad))
    assert "the release's warm-up sample does not fit the model" in str(info.value)
    assert "input 'state' has shape [3, 1, 8], dim 0 must be 2" in str(info.value)


def test_predict_cli_takes_an_npz_for_a_multi_input_model(
    tmp_path: Path, profile: DeviceProfile, stateful: Path
) -> None:
    import argparse
    import io
    import json

    from agent.inference.cli import run_predict

    x = np.ones((1, FRAME), np.float32)
    np.savez(tmp_path / "in.npz", x=x, state=initial_state(1), sr=np.array(16000, np.int64))
    out = io.StringIO()
    with _serve(tmp_path, profile, ServingOptions()) as bg:
        bg.call(lambda: bg.service.install(stateful, name="vad", version="1", warmup=_warmup_sample()))
        args = argparse.Namespace(input=tmp_path / "in.npz", socket=str(tmp_path / "api.sock"), json=True)
        assert run_predict(args, out) == 0
    result = json.loads(out.getvalue())
    want, state = reference_step(weights(), x, initial_state(1), 16000)
    np.testing.assert_allclose(np.array(result["outputs"]["prob"]), want, atol=1e-5)
    np.testing.assert_allclose(np.array(result["outputs"]["state_out"]), state, atol=1e-5)

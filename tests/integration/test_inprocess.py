"""`LocalModel` on real slots and real exported models: following promote and rollback, refusing
tampered bytes, and feeding the agent's capture ring through the lossy sample side channel."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest

from agent.errors import IntegrityError, InvalidInputError, NoModelError, RequestTooLargeError
from agent.inference.engine import ServingOptions
from agent.local import LocalModel
from agent.profile import load_profile
from agent.serving.background import BackgroundService
from agent.serving.server import InferenceService
from agent.slots import CANDIDATE, CURRENT, LocalSlotFS, Slots
from tests.fixtures.models import DigitsModels, digits_models


@pytest.fixture(scope="module")
def models() -> DigitsModels:
    return digits_models()


def _stage(slots: Slots, artifact: Path, version: str) -> None:
    slots.stage_candidate(artifact, name="digits", version=version)


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the weights: still a loadable model
    path.write_bytes(bytes(data))


def test_follows_promote_and_rollback_and_answers_with_the_version(
    tmp_path: Path, models: DigitsModels
) -> None:
    slots = Slots(LocalSlotFS(tmp_path / "slots"))
    x = models.data.x_test[:8]
    with LocalModel(tmp_path / "slots", poll_interval_s=0.05, max_request_bytes=32 * 1024) as app:
        with pytest.raises(NoModelError):
            app.predict(x)  # nothing installed yet: a clear "retry later"
        _stage(slots, models.onnx_fp32, "1")
        slots.promote()
        app.refresh()  # no need to wait for the poller (which may have been first)
        first = app.predict_full(x)
        assert first.model_version == "1"
        assert np.abs(first.outputs["logits"] - models.reference_logits[:8]).max() <= 1e-4
        _stage(slots, models.onnx_int8, "2")
        slots.promote()
        deadline = time.monotonic() + 5
        while app.predict_full(x).model_version != "2":  # the poller picks it up by itself
            assert time.monotonic() < deadline, "the app did not follow the promote"
        slots.rollback()
        deadline = time.monotonic() + 5
        while app.predict_full(x).model_version != "1":
            assert time.monotonic() < deadline, "the app did not follow the rollback"
        with pytest.raises(InvalidInputError, match="expected signature"):
            app.predict(np.zeros((1, 1, 9, 8), np.float32))
        with pytest.raises(RequestTooLargeError, match="51200 bytes of tensors, the limit is 32768"):
            app.predict(np.zeros((200, 1, 8, 8), np.float32))
        assert app.stats()["swaps"] == 3 and app.stats()["errors"] == 2


def test_tampered_model_is_refused_and_the_verified_one_keeps_serving(
    tmp_path: Path, models: DigitsModels
) -> None:
    root = tmp_path / "slots"
    slots = Slots(LocalSlotFS(root))
    _stage(slots, models.onnx_fp32, "1")
    slots.promote()
    x = models.data.x_test[:4]
    with LocalModel(root, poll_interval_s=3600) as app:
        _stage(slots, models.onnx_int8, "2")
        _tamper(root / CANDIDATE / models.onnx_int8.name)
        slots.promote()  # the slot record still holds the signed digest of the real v2
        with pytest.raises(IntegrityError, match="the slot record says"):
            app.refresh()
        assert app.predict_full(x).model_version == "1"  # not a failed call: the old model serves
        assert app.refresh() is None  # the same refused bytes are not hashed again
        assert [(r.version, "sha256" in r.reason) for r in app.refusals] == [("2", True)]
        _stage(slots, models.onnx_int8, "3")
        slots.promote()
        assert app.refresh() is not None
        assert app.predict_full(x).model_version == "3"
    _tamper(root / CURRENT / models.onnx_int8.name)
    with pytest.raises(IntegrityError, match="the slot record says"):
        LocalModel(root)  # an app starting on tampered bytes refuses to serve them at all


def test_samples_reach_the_agents_capture_ring_and_never_block_the_app(
    tmp_path: Path, models: DigitsModels
) -> None:
    profile = load_profile("generic-x86")
    samples = tmp_path / "samples.sock"
    options = ServingOptions(capture_per_second=1000.0, capture_capacity=64)
    service = InferenceService(
        tmp_path / "slots", profile, tmp_path / "api.sock", options=options, sample_socket_path=samples
    )
    x = models.data.x_test[:1]
    with BackgroundService(service) as bg:
        bg.call(lambda: service.install(models.onnx_fp32, name="digits", version="1"))
        with LocalModel(tmp_path / "slots", sample_socket=samples, samples_per_second=1000.0) as app:
            for _ in range(50):
                app.predict(x)
                time.sleep(0.002)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as raw:
                raw.sendto(b"ELT\x02 not a sample", str(samples))  # malformed: counted, dropped
            deadline = time.monotonic() + 5
            got: list[object] = []
            while len(got) < 10 and time.monotonic() < deadline:
                got += bg.call(lambda: _drain(service))
                time.sleep(0.05)
            assert app.stats()["samples_sent"] >= 10
    assert len(got) >= 10
    sample = got[0]
    assert sample.model == "digits@1"  # type: ignore[attr-defined]
    assert np.array_equal(sample.inputs["input"], x)  # type: ignore[attr-defined]
    assert sample.outputs["logits"].shape == (1, 10)  # type: ignore[attr-defined]
    assert service._intake is not None and service._intake.rejected == 1
    # the agent is gone now: the app keeps serving; samples are dropped and counted, not waited on
    slots_app = LocalModel(tmp_path / "slots", sample_socket=samples, samples_per_second=1000.0)
    try:
        for _ in range(20):
            slots_app.predict(x)
            time.sleep(0.002)
        assert slots_app.stats()["samples_dropped"] >= 1 and slots_app.stats()["samples_sent"] == 0
    finally:
        slots_app.close()


async def _drain(service: InferenceService) -> list[object]:
    return list(service.drain_samples("drift"))

"""Hot swap under load: 16 concurrent clients, thousands of requests, swaps, rollback, zero failures."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from agent.client import EdgeloopClient
from agent.errors import ModelLoadError
from agent.inference.engine import ServingOptions
from agent.profile import load_profile
from agent.serving.background import BackgroundService
from agent.serving.server import InferenceService
from agent.slots import BROKEN, CURRENT, PREVIOUS, LocalSlotFS, Slots
from tests.fixtures.models import DigitsModels, digits_models

CONCURRENCY = 16
STEP = 700  # requests served between two control operations


class Load:
    """16 client threads hammering Predict; records failures, served versions and correctness."""

    def __init__(self, socket: Path, models: DigitsModels, fast_socket: Path | None = None) -> None:
        self.socket = socket
        self.fast_socket = fast_socket
        self.models = models
        self.done = 0
        self.failures: list[BaseException] = []
        self.versions: Counter[str] = Counter()
        self.wrong = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(k,)) for k in range(CONCURRENCY)]

    def _client(self, k: int) -> None:
        x, ref = self.models.data.x_test, self.models.reference_logits.argmax(1)
        with EdgeloopClient(self.socket, fast_socket=self.fast_socket) as client:
            n = 0
            while not self._stop.is_set():
                i, n = (k * 97 + n) % len(x), n + 1
                try:
                    answer = client.predict_full(x[i : i + 1])
                except Exception as err:
                    with self._lock:
                        self.failures.append(err)
                    continue
                with self._lock:
                    self.done += 1
                    self.wrong += int(next(iter(answer.outputs.values())).argmax() != ref[i])
                    self.versions[answer.model_version] += 1

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def serve_more(self, count: int = STEP) -> None:
        target = self.done + count
        deadline = time.monotonic() + 60
        while self.done < target and time.monotonic() < deadline and not self.failures:
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


@pytest.mark.parametrize(
    ("micro_batch", "framed"),
    [(False, False), (True, False), (False, True)],
    ids=["grpc", "micro-batched", "framed"],
)
def test_hot_swap_under_load_has_zero_failed_requests(
    tmp_path: Path, micro_batch: bool, framed: bool
) -> None:
    models = digits_models()
    corrupt = tmp_path / "digits_v9.onnx"
    corrupt.write_bytes(models.onnx_fp32.read_bytes()[:2000])  # a truncated download
    options = ServingOptions(micro_batch=micro_batch, micro_batch_max=16)
    fast = tmp_path / "fast.sock" if framed else None
    service = InferenceService(
        tmp_path / "slots",
        load_profile("generic-x86"),
        tmp_path / "api.sock",
        options=options,
        fast_socket_path=fast,
    )
    with BackgroundService(service) as bg:
        bg.call(lambda: service.install(models.onnx_fp32, name="digits", version="1"))
        load = Load(tmp_path / "api.sock", models, fast)
        load.start()
        load.serve_more()
        with pytest.raises(ModelLoadError, match="candidate digits@9 refused"):
            bg.call(lambda: service.load_candidate(corrupt, name="digits", version="9"))
        assert service.serving() is not None
        load.serve_more()
        bg.call(lambda: service.install(models.onnx_int8, name="digits", version="2"))
        load.serve_more()
        bg.call(lambda: service.install(models.tflite_fp32, name="digits", version="3"))
        load.serve_more()
        rolled_back = bg.call(service.rollback)
        load.serve_more()
        load.stop()
        listing = service._manager().listing()
        stats = service.stats_snapshot()

    total = load.done
    assert load.failures == []
    assert total >= 5 * STEP
    assert load.wrong / total <= 0.01
    assert rolled_back.version == "2"
    assert set(load.versions) == {"1", "2", "3"}
    assert sum(load.versions.values()) == total
    assert {s: (i.version if i else None) for s, i in listing.items() if s != "candidate"} == {
        CURRENT: "2",
        PREVIOUS: None,
        BROKEN: "3",
    }
    served = sum(v for k, v in stats.items() if k.endswith(".requests"))
    assert served == total
    assert sum(v for k, v in stats.items() if k.endswith(".errors")) == 0


def test_corrupt_candidate_is_parked_in_broken_and_current_survives_restart(tmp_path: Path) -> None:
    models = digits_models()
    profile = load_profile("generic-x86")
    bad = tmp_path / "digits_v2.tflite"
    bad.write_bytes(b"TFL3" + bytes(5000))
    service = InferenceService(tmp_path / "slots", profile, tmp_path / "api.sock")
    with BackgroundService(service) as bg:
        bg.call(lambda: service.install(models.onnx_fp32, name="digits", version="1"))
        with pytest.raises(ModelLoadError):
            bg.call(lambda: service.install(bad, name="digits", version="2"))
    broken = service._manager().slots.read(BROKEN)
    assert broken is not None
    assert broken.version == "2"
    assert "cannot load" in broken.reason
    again = InferenceService(tmp_path / "slots", profile, tmp_path / "api.sock")
    with BackgroundService(again), EdgeloopClient(tmp_path / "api.sock") as client:
        assert client.model_info().version == "1"
        y = client.predict(models.data.x_test[:8])
    assert (y.argmax(1) == models.reference_logits[:8].argmax(1)).all()
    assert np.isfinite(y).all()


def test_startup_with_a_broken_current_falls_back_to_previous(tmp_path: Path) -> None:
    """E.g. the disk copy of `current` got corrupted while the device was off."""
    models = digits_models()
    slots = Slots(LocalSlotFS(tmp_path / "slots"))
    slots.stage_candidate(models.onnx_fp32, name="digits", version="1")
    slots.promote()
    slots.stage_candidate(models.onnx_int8, name="digits", version="2")
    slots.promote()
    damaged = bytearray(slots.artifact_path(CURRENT).read_bytes())
    damaged[len(damaged) // 2] ^= 0x01  # one flipped bit in the weights: still loads, wrong model
    slots.artifact_path(CURRENT).write_bytes(bytes(damaged))
    service = InferenceService(tmp_path / "slots", load_profile("generic-x86"), tmp_path / "api.sock")
    with BackgroundService(service), EdgeloopClient(tmp_path / "api.sock") as client:
        assert client.model_info().version == "1"
        assert client.predict(models.data.x_test[:2]).shape == (2, 10)
    listing = slots.listing()
    assert listing[BROKEN] is not None
    assert listing[BROKEN].version == "2"

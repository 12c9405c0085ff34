"""`LocalModel(max_concurrent=n)` never runs more than n backend calls at once; without it, all do."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from agent.inference.signature import Signature, TensorSpec
from agent.local import LocalModel
from agent.slots import LocalSlotFS, Slots


class _Slow:
    """A runtime that takes 20 ms per call and records how many calls overlap."""

    backend = "fake"
    signature = Signature(
        inputs=(TensorSpec("x", "float32", (None, 2)),), outputs=(TensorSpec("y", "float32", (None, 2)),)
    )

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.02)
        with self._lock:
            self.active -= 1
        return {"y": inputs["x"] * 2}

    def close(self) -> None:
        return None


@pytest.mark.parametrize("gate", [2, None])
def test_concurrent_calls_are_bounded_by_the_gate(tmp_path: Path, gate: int | None) -> None:
    artifact = tmp_path / "m.onnx"
    artifact.write_bytes(b"not parsed by the fake loader")
    slots = Slots(LocalSlotFS(tmp_path / "slots"))
    slots.stage_candidate(artifact, name="m", version="1")
    slots.promote()
    runtime = _Slow()
    with LocalModel(tmp_path / "slots", loader=lambda _: runtime, max_concurrent=gate) as model:
        runtime.peak = 0  # forget the warm-up call
        x = np.ones((1, 2), np.float32)
        threads = [threading.Thread(target=lambda: [model.predict(x) for _ in range(3)]) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert model.stats()["calls"] == 24 and model.stats()["errors"] == 0
    assert runtime.peak == 2 if gate else runtime.peak > 2  # 8 threads of 20 ms calls overlap

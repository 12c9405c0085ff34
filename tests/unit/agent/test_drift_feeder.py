"""DriftFeeder: binds the serving model's shipped reference, feeds captured samples, reports drift."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.drift.feeder import REFERENCE_FILE, DriftFeeder
from agent.drift.reference import build_reference
from agent.drift.reporter import DriftReporter
from agent.outbox import TelemetryOutbox


@dataclass(frozen=True)
class Meta:
    name: str
    version: str
    artifact: Path


@dataclass(frozen=True)
class Sample:
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


class Clock:
    t = 0

    def time_ms(self) -> int:
        self.t += 1
        return self.t


def _samples(rng: np.random.Generator, n: int, shift: float) -> list[Sample]:
    x = rng.normal(size=(n, 5)) + shift
    logits = np.stack([x[:, 0], -x[:, 0], x[:, 1]], axis=1)
    return [Sample({"x": x[i : i + 10]}, {"y": logits[i : i + 10]}) for i in range(0, n, 10)]


def test_feeder_monitors_only_models_that_ship_a_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ref_x = rng.normal(size=(2000, 5))
    logits = np.stack([ref_x[:, 0], -ref_x[:, 0], ref_x[:, 1]], axis=1)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / REFERENCE_FILE).write_bytes(build_reference(ref_x, outputs=probs).to_bytes())
    (tmp_path / "v2").mkdir()  # v2 ships no reference
    outbox = TelemetryOutbox(tmp_path / "o.db", max_records=1000)
    feeder = DriftFeeder(lambda n, v: DriftReporter(outbox, clock=Clock(), model_name=n, model_version=v))

    v1 = Meta("m", "1", tmp_path / "v1" / "model.onnx")
    assert feeder.feed(v1, _samples(rng, 1500, 0.0)) == 0  # in distribution: quiet
    assert feeder.status == "monitoring m@1"
    written = sum(feeder.feed(v1, _samples(rng, 100, 1.5)) for _ in range(20))
    assert written >= 1  # a 1.5 sigma shift opens an episode
    kinds = {r.kind for r in outbox.peek(after_seq=0, limit=100)}
    assert "drift" in kinds

    assert feeder.feed(Meta("m", "2", tmp_path / "v2" / "model.onnx"), _samples(rng, 100, 3.0)) == 0
    assert "ships no drift_reference.json" in feeder.status
    assert feeder.feed(None, []) == 0 and feeder.status == "no model serving"

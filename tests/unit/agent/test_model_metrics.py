"""Live model metric windows on the agent: the accumulator fed per request, the codec's 2 KB bound,
the reporter that puts one record per serving model into the outbox, and `[metrics] window_s`.

The encoded payloads are checked with the fleet server's own decoder (`parse_window`): what the
agent sends is what the server stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import load
from agent.errors import ConfigError
from agent.inference.handle import ModelMeta
from agent.inference.metrics_report import ModelMetricsReporter
from agent.inference.model_metrics import ModelId, ModelMetrics, ModelWindow, top1
from agent.inference.model_metrics_codec import MAX_PAYLOAD_BYTES, Provenance, encode_window
from fleet_server.rollouts.metrics import parse_window
from protos.edgeloop.v1 import device_pb2 as pb

SHA = "ab" * 32
META = ModelMeta("clf", "3", "current", Path("/m/model.onnx"), SHA)
OTHER = ModelMeta("clf", "4", "current", Path("/m/model.onnx"), "cd" * 32)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def only(windows: list[ModelWindow]) -> ModelWindow:
    assert len(windows) == 1
    return windows[0]


# ---------------------------------------------------------------- accumulator


def test_logits_and_probabilities_give_the_same_window() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3, size=(40, 5)).astype(np.float32)
    a, b = ModelMetrics(), ModelMetrics()
    for i in range(0, 40, 4):  # small requests (row by row path) ...
        a.observe(META, {"logits": logits[i : i + 4]}, 0.002)
    b.observe(META, {"probs": softmax(logits.astype(np.float64)).astype(np.float32)}, 0.002)  # ... one batch
    wa, wb = only(a.rotate()), only(b.rotate())
    p = softmax(logits.astype(np.float64))
    expected_hist = np.bincount(np.minimum((p.max(axis=1) * 10).astype(int), 9), minlength=10)
    expected_classes = np.bincount(p.argmax(axis=1), minlength=5)
    for w in (wa, wb):
        assert w.model == ModelId("clf", "3", SHA)
        assert w.predictions == 40 and w.errors == 0
        assert w.confidence_hist == tuple(expected_hist.tolist())
        assert w.class_counts == tuple(np.trim_zeros(expected_classes, "b").tolist())
        assert w.confidence_sum == pytest.approx(p.max(axis=1).sum(), rel=1e-5)
        assert w.confidence_sum_sq == pytest.approx((p.max(axis=1) ** 2).sum(), rel=1e-5)
    assert (wa.latency_count, wb.latency_count) == (10, 1)
    assert wa.latency_sum_ms == pytest.approx(20.0) and wa.latency_sum_sq_ms == pytest.approx(40.0)
    assert wa.latency_p50_ms == pytest.approx(2.0, rel=0.06) and wa.latency_p95_ms == pytest.approx(
        2.0, rel=0.06
    )


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(2, 30),
    st.booleans(),
    st.integers(0, 2**31),
)
def test_row_path_and_batch_path_agree(rows: int, k: int, probs: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=4, size=(rows, k))
    if probs:
        x = softmax(x)
    x[rng.random(rows) < 0.1, 0] = np.nan  # some unreadable rows
    one_by_one, batched = ModelMetrics(), ModelMetrics()
    for r in range(rows):
        one_by_one.observe(META, {"y": x[r : r + 1]}, 0.001)
    batched.observe(META, {"y": x}, 0.001)
    a, b = only(one_by_one.rotate()), only(batched.rotate())
    assert (a.predictions, a.confidence_hist, a.class_counts) == (
        b.predictions,
        b.confidence_hist,
        b.class_counts,
    )
    assert a.confidence_sum == pytest.approx(b.confidence_sum, rel=1e-9, abs=1e-9)
    readable = int(np.isfinite(x).all(axis=1).sum())
    assert sum(a.confidence_hist) == readable and sum(a.class_counts) == readable
    assert a.predictions == rows


def test_top1_of_logits_is_the_softmax_maximum() -> None:
    x = np.array([[0.0, 0.0], [10.0, -10.0], [1.0, 2.0]], dtype=np.float32)
    p, c = top1(x)
    assert p == pytest.approx([0.5, 1.0, 1 / (1 + np.exp(-1))], rel=1e-6)
    assert c.tolist() == [0, 0, 1]
    p, c = top1(np.array([[0.2, 0.8], [0.5, 0.5]], dtype=np.float32))  # already probabilities
    assert p == pytest.approx([0.8, 0.5]) and c.tolist() == [1, 0]


def test_errors_non_classifier_outputs_and_rotation() -> None:
    m = ModelMetrics()
    m.error(META)
    m.error(META)
    m.observe(OTHER, {"embedding": np.zeros((3, 1), np.float32)}, 0.001)  # (batch, 1): not a classifier
    m.observe(OTHER, {"ids": np.zeros((2, 4), np.int64)}, 0.001)  # integer output: not a classifier
    windows = {w.model.version: w for w in m.rotate()}
    assert windows["3"].errors == 2 and windows["3"].predictions == 0 and windows["3"].latency_count == 0
    assert (
        windows["4"].predictions == 5
        and windows["4"].confidence_hist == ()
        and windows["4"].class_counts == ()
    )
    assert m.rotate() == []  # a window without traffic sends nothing
    m.observe(META, {"y": np.array([[0.1, 0.9]], np.float32)}, 0.001)
    assert only(m.rotate()).predictions == 1  # the new window starts from zero


def test_models_per_window_are_bounded() -> None:
    m = ModelMetrics(max_models=2)
    for v in range(5):
        m.observe(
            ModelMeta("clf", str(v), "current", Path("/m"), SHA),
            {"y": np.ones((1, 2), np.float32) / 2},
            0.001,
        )
    assert len(m.rotate()) == 2 and m.dropped_models == 3


def test_class_indices_beyond_the_cap_share_the_last_bin() -> None:
    m = ModelMetrics()
    x = np.zeros((3, 1500), np.float32)
    x[0, 5] = x[1, 1200] = x[2, 1499] = 9.0
    m.observe(META, {"y": x}, 0.001)
    w = only(m.rotate())
    assert len(w.class_counts) == 1000 and w.class_counts[5] == 1 and w.class_counts[999] == 2


# ---------------------------------------------------------------- codec


def window(**over: Any) -> ModelWindow:
    fields: dict[str, Any] = {
        "model": ModelId("clf", "3", SHA),
        "predictions": 100,
        "errors": 2,
        "confidence_hist": (0, 0, 0, 0, 0, 10, 10, 20, 20, 40),
        "class_counts": (50, 30, 20),
        "confidence_sum": 80.0,
        "confidence_sum_sq": 66.0,
        "latency_p50_ms": 1.5,
        "latency_p95_ms": 4.0,
        "latency_sum_ms": 200.0,
        "latency_sum_sq_ms": 600.0,
        "latency_count": 100,
    }
    fields.update(over)
    return ModelWindow(**fields)


def test_encoded_window_is_what_the_server_stores() -> None:
    prov = Provenance(deployment_id="dep-7", drift_score=1.8, shadow_agreement=0.97, shadow_samples=64)
    enc = encode_window(window(), window_start_ms=1_700_000_000_000, window_s=30.2, provenance=prov)
    msg = pb.ModelMetricsWindow.FromString(enc.payload)
    assert (msg.model_name, msg.model_version, msg.model_sha256, msg.deployment_id) == (
        "clf",
        "3",
        SHA,
        "dep-7",
    )
    assert (msg.window_start_ms, msg.window_s, msg.predictions, msg.errors) == (1_700_000_000_000, 30, 100, 2)
    assert list(msg.class_counts) == [50, 30, 20] and enc.class_counts_scaled == 0
    stored = parse_window(enc.payload)
    assert stored["shadow_agreement"] == pytest.approx(0.97) and stored["drift_score"] == pytest.approx(1.8)
    assert stored["confidence_hist"] == [0, 0, 0, 0, 0, 10, 10, 20, 20, 40]


def test_payload_stays_under_2kb_with_1000_busy_classes() -> None:
    counts = tuple(range(100_000, 101_000))  # 1000 classes, 3-byte varints each: ~3 KB unscaled
    long_name = "é" * 200  # cut to 128 characters (256 bytes)
    w = window(
        model=ModelId(long_name, "v" * 100, SHA),
        predictions=2**40,
        class_counts=counts,
        confidence_hist=(2**32 + 5,) * 10,  # clamped to uint32
        confidence_sum=float(sum(counts)) * 0.9,
        confidence_sum_sq=float(sum(counts)) * 0.8,
    )
    enc = encode_window(w, window_start_ms=1, window_s=30, provenance=Provenance(deployment_id="d" * 100))
    assert len(enc.payload) <= MAX_PAYLOAD_BYTES
    msg = pb.ModelMetricsWindow.FromString(enc.payload)
    assert len(msg.class_counts) == 1000 and min(msg.class_counts) > 0
    assert enc.class_counts_scaled >= 1
    assert msg.class_counts[999] / msg.class_counts[0] == pytest.approx(counts[999] / counts[0], rel=1e-3)
    assert len(msg.model_name) == 128 and len(msg.model_version) == 64 and len(msg.deployment_id) == 64
    parse_window(enc.payload)  # the server accepts it


def test_nonsense_values_are_kept_inside_what_the_server_accepts() -> None:
    w = window(
        model=ModelId("a\x00b", "1", "not-a-sha"),
        confidence_sum=float("nan"),
        latency_p95_ms=float("inf"),
        latency_sum_ms=-3.0,
    )
    prov = Provenance(drift_score=float("nan"), shadow_agreement=1.5, shadow_samples=-4)
    values = parse_window(encode_window(w, window_start_ms=-10, window_s=0.2, provenance=prov).payload)
    assert values["model_name"] == "ab" and values["model_sha256"] == ""
    assert (
        values["confidence_sum"] == 0.0
        and values["latency_p95_ms"] == 0.0
        and values["latency_sum_ms"] == 0.0
    )
    assert (
        values["drift_score"] == -1.0 and values["shadow_agreement"] == 1.0 and values["shadow_samples"] == 0
    )
    assert values["window_s"] == 1 and values["window_start_ms"] == 0


# ---------------------------------------------------------------- reporter


class FakeOutbox:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def append(self, *, timestamp_ms: int, kind: str, metrics: dict[str, float], payload: bytes = b"") -> int:
        self.records.append({"ts": timestamp_ms, "kind": kind, "metrics": metrics, "payload": payload})
        return len(self.records)


class FakeClock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def time_ms(self) -> int:
        return self.ms


def test_reporter_emits_one_record_per_model_that_served() -> None:
    metrics, outbox, clock = ModelMetrics(), FakeOutbox(), FakeClock(1_000_000)

    def provenance(model: ModelId) -> Provenance:
        if model.sha256 == OTHER.sha256:  # the freshly switched model
            return Provenance(
                deployment_id="dep-2", drift_score=0.0, shadow_agreement=0.95, shadow_samples=32
            )
        return Provenance(drift_score=2.5)

    reporter = ModelMetricsReporter(metrics, outbox, clock=clock, provenance=provenance)
    metrics.observe(META, {"y": np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)}, 0.003)
    metrics.observe(OTHER, {"y": np.array([[0.3, 0.7]], np.float32)}, 0.001)
    metrics.error(OTHER)
    clock.ms += 30_000
    assert reporter.emit() == 2
    got = {pb.ModelMetricsWindow.FromString(r["payload"]).model_version: r for r in outbox.records}
    assert {r["kind"] for r in outbox.records} == {"model_metrics"}
    old, new = (pb.ModelMetricsWindow.FromString(got[v]["payload"]) for v in ("3", "4"))
    assert (old.predictions, old.errors, list(old.class_counts), old.drift_score) == (2, 0, [1, 1], 2.5)
    assert (old.deployment_id, old.shadow_agreement, old.window_start_ms, old.window_s) == (
        "",
        -1.0,
        1_000_000,
        30,
    )
    assert (new.predictions, new.errors, new.deployment_id, new.shadow_samples) == (1, 1, "dep-2", 32)
    assert new.shadow_agreement == pytest.approx(0.95)
    clock.ms += 30_000
    assert reporter.emit() == 0  # nothing served: nothing sent
    metrics.observe(META, {"y": np.array([[0.1, 0.9]], np.float32)}, 0.003)
    clock.ms += 5_000
    assert reporter.emit() == 1
    last = pb.ModelMetricsWindow.FromString(outbox.records[-1]["payload"])
    assert (last.window_start_ms, last.window_s) == (1_060_000, 5)


def test_a_failing_provenance_lookup_does_not_lose_the_window() -> None:
    metrics, outbox = ModelMetrics(), FakeOutbox()

    def broken(model: ModelId) -> Provenance:
        raise RuntimeError("bug")

    reporter = ModelMetricsReporter(metrics, outbox, clock=FakeClock(0), provenance=broken)
    metrics.observe(META, {"y": np.array([[0.1, 0.9]], np.float32)}, 0.003)
    assert reporter.emit() == 1
    assert pb.ModelMetricsWindow.FromString(outbox.records[0]["payload"]).deployment_id == ""


# ---------------------------------------------------------------- config


def test_metrics_window_from_toml_and_env(tmp_path: Path) -> None:
    assert load(None, env={}).metrics.window_s == 30.0
    path = tmp_path / "agent.toml"
    path.write_text("[metrics]\nwindow_s = 10\n")
    assert load(path, env={}).metrics.window_s == 10.0
    assert load(path, env={"EDGELOOP_AGENT_METRICS_WINDOW_S": "2.5"}).metrics.window_s == 2.5
    with pytest.raises(ConfigError, match=r"metrics\.window_s"):
        load(None, env={"EDGELOOP_AGENT_METRICS_WINDOW_S": "0"})

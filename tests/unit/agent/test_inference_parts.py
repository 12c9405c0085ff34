"""Unit tests of the serving parts: histogram, stats, capture, cache, RCU handles, codec, CLI."""

from __future__ import annotations

import argparse
import io
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from agent.errors import InvalidInputError, NoModelError
from agent.inference.cache import PredictionCache, input_key
from agent.inference.capture import SampleCapture
from agent.inference.cli import add_subcommands
from agent.inference.handle import ModelHandle, ModelHolder, ModelMeta
from agent.inference.signature import Signature, TensorSpec
from agent.inference.stats import LatencyHistogram, ServingStats
from agent.serving import codec
from agent.slots import SlotInfo
from protos.edgeloop.v1 import inference_pb2 as pb


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CountingRuntime:
    """Working `InferenceRuntime` fake: doubles its input, remembers whether it was closed."""

    backend = "fake"
    signature = Signature(
        inputs=(TensorSpec("x", "float32", (None, 2)),), outputs=(TensorSpec("y", "float32", (None, 2)),)
    )

    def __init__(self) -> None:
        self.closed = False

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert not self.closed, "run on a closed runtime"
        return {"y": inputs["x"] * 2}

    def close(self) -> None:
        self.closed = True


def test_histogram_quantiles_within_bucket_resolution() -> None:
    hist = LatencyHistogram()
    for us in range(1, 1001):  # 1 µs .. 1 ms uniform
        hist.record(us * 1e-6)
    assert hist.quantile(0.5) == pytest.approx(500e-6, rel=0.06)
    assert hist.quantile(0.95) == pytest.approx(950e-6, rel=0.06)
    assert hist.quantile(0.99) == pytest.approx(990e-6, rel=0.06)
    assert LatencyHistogram().quantile(0.5) == 0.0


def test_stats_snapshot_throughput_errors_and_window_reset() -> None:
    clock = FakeClock()
    stats = ServingStats(clock)
    for _ in range(50):
        stats.record_success("m@1", 0.002, samples=4)
    stats.record_error("m@1", "invalid_input")
    stats.record_cache("m@1", hit=True)
    stats.record_success("m@2", 0.010, samples=1)
    clock.now += 10.0
    snap = stats.snapshot(reset=True)
    assert snap["inference.m@1.throughput_rps"] == pytest.approx(5.0)
    assert snap["inference.m@1.samples_per_s"] == pytest.approx(20.0)
    assert snap["inference.m@1.latency_p50_ms"] == pytest.approx(2.0, rel=0.06)
    assert snap["inference.m@1.errors.invalid_input"] == 1
    assert snap["inference.m@1.cache_hits"] == 1
    assert snap["inference.m@2.latency_p99_ms"] == pytest.approx(10.0, rel=0.06)
    clock.now += 5.0
    after = stats.snapshot()
    assert after["inference.m@1.requests"] == 0
    assert after["inference.m@1.requests_total"] == 50
    assert after["inference.window_s"] == pytest.approx(5.0)


def test_capture_is_rate_limited_and_bounded() -> None:
    clock = FakeClock()
    capture = SampleCapture(capacity=3, per_second=2.0, burst=2, clock=clock)
    x = {"x": np.ones((1, 2), np.float32)}
    kept = [capture.offer("m@1", x, x) for _ in range(10)]
    assert kept.count(True) == 2  # the burst
    clock.now += 1.0
    assert [capture.offer("m@1", x, x) for _ in range(5)].count(True) == 2  # 2 per second
    clock.now += 100.0
    for _ in range(10):
        capture.offer("m@1", x, x)
    samples = capture.drain()
    assert len(samples) == 3  # ring capacity
    assert capture.drain() == []
    x["x"][0, 0] = 42.0
    assert samples[0].inputs["x"][0, 0] == 1.0  # copies, not views


def test_cache_is_lru_and_keyed_on_content_and_model() -> None:
    cache = PredictionCache(2)
    a, b, c = (np.full((1, 2), v, np.float32) for v in (1, 2, 3))
    ka, kb, kc = (input_key("m@1", {"x": v}) for v in (a, b, c))
    assert input_key("m@2", {"x": a}) != ka
    assert input_key("m@1", {"x": a.astype(np.float64)}) != ka
    cache.put(ka, {"y": a})
    cache.put(kb, {"y": b})
    assert cache.get(ka) is not None  # a is now most recent
    cache.put(kc, {"y": c})
    assert cache.get(kb) is None
    assert len(cache) == 2


def _handle(version: str) -> tuple[ModelHandle, CountingRuntime]:
    runtime = CountingRuntime()
    return ModelHandle(runtime, ModelMeta("m", version, "current", artifact=Path("m.onnx"))), runtime


def test_swap_keeps_leased_handle_alive_until_released() -> None:
    holder = ModelHolder()
    with pytest.raises(NoModelError), holder.lease():
        pass
    old, old_runtime = _handle("1")
    new, new_runtime = _handle("2")
    holder.swap(old)
    with holder.lease() as leased:
        holder.swap(new)
        assert not old_runtime.closed  # in flight: still usable
        assert leased.runtime.run({"x": np.ones((1, 2), np.float32)})["y"][0, 0] == 2.0
    assert old_runtime.closed
    with holder.lease() as current:
        assert current.meta.version == "2"
    stale, _ = _handle("3")
    assert not holder.swap(stale, expected=old)  # compare-and-swap refuses a stale expectation
    holder.clear()
    assert new_runtime.closed


def test_concurrent_leases_and_swaps_never_touch_a_closed_runtime() -> None:
    holder = ModelHolder()
    holder.swap(_handle("0")[0])
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(3000):
                with holder.lease() as h:
                    h.runtime.run({"x": np.ones((1, 2), np.float32)})
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for v in range(1, 200):
        holder.swap(_handle(str(v))[0])
    for t in threads:
        t.join()
    assert errors == []


def test_codec_round_trip_and_malformed_tensors() -> None:
    x = np.arange(12, dtype=np.int64).reshape(3, 4)
    back = codec.tensor_from_proto(codec.tensor_to_proto("x", x))
    np.testing.assert_array_equal(back, x)
    big_endian = np.arange(4, dtype=">f4")
    np.testing.assert_array_equal(codec.tensor_from_proto(codec.tensor_to_proto("b", big_endian)), big_endian)
    with pytest.raises(InvalidInputError, match="unknown dtype"):
        codec.tensor_from_proto(pb.Tensor(name="x", shape=[1], data=b"\0" * 4))
    with pytest.raises(InvalidInputError, match="negative dimension"):
        codec.tensor_from_proto(pb.Tensor(name="x", dtype=pb.ELEMENT_TYPE_INT8, shape=[-1]))
    with pytest.raises(InvalidInputError, match="given twice"):
        tensor = codec.tensor_to_proto("x", x)
        codec.inputs_from_proto([tensor, tensor], ["x"])
    spec = TensorSpec("x", "float32", (None, 3))
    assert codec.spec_from_proto(codec.spec_to_proto(spec)) == spec
    entries = list(
        codec.slots_to_proto({"current": SlotInfo("current", "m", "1", "m.onnx", "ab"), "broken": None})
    )
    assert [(e.slot, e.version) for e in entries] == [("current", "1"), ("broken", "")]


def test_cli_registers_predict_and_models() -> None:
    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["predict", "--input", "x.npy", "--socket", "/tmp/s.sock", "--json"])
    assert (args.command, str(args.input), args.socket, args.json) == (
        "predict",
        "x.npy",
        "/tmp/s.sock",
        True,
    )
    assert callable(args.handler)
    assert parser.parse_args(["models"]).func.__name__ == "run_models"  # agent/cli.py calls ns.func(ns)


def test_cli_predict_unreadable_input_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["predict", "--input", "/nonexistent.npy"])
    out = io.StringIO()
    assert args.handler(args, out) == 2
    assert out.getvalue() == ""
    assert "cannot read /nonexistent.npy" in capsys.readouterr().err

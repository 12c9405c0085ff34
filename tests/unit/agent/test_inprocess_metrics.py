"""Live model metrics of in-process apps: an app's window, sent as a `METRICS` datagram and merged
into the agent's `ModelMetrics`, counts exactly as if the agent had served those calls; malformed,
oversize or foreign windows are refused whole and counted (a real datagram socket and event loop
for the agent's intake; the app's flusher never waits on a full or missing socket)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct
from pathlib import Path

import numpy as np
import pytest

from agent.errors import InvalidInputError
from agent.inference.handle import ModelMeta
from agent.inference.model_metrics import MAX_MERGED_COUNT, ModelId, ModelMetrics, WindowCounts
from agent.local.metrics import MetricsFlusher
from agent.serving.rawframe import HEADER, MAX_METRICS_FRAME, METRICS, header, pack_metrics, unpack_metrics
from agent.serving.sample_intake import SampleIntake

SHA = "ab" * 32
META = ModelMeta("clf", "3", "current", Path("/m/model.onnx"), SHA)
OTHER = ModelMeta("clf", "4", "current", Path("/m/model.onnx"), "cd" * 32)
MODEL = ModelId("clf", "3", SHA)


def _feed(m: ModelMetrics, seed: int, calls: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(calls):
        rows = 1 + i % 3
        m.observe(META, {"logits": rng.normal(scale=3, size=(rows, 12)).astype(np.float32)}, 1e-4 * (1 + i))
        if i % 5 == 0:
            m.error(META)


def _app_window(seed: int = 2, calls: int = 40) -> WindowCounts:
    app = ModelMetrics()
    _feed(app, seed, calls)
    [(model, counts)] = app.rotate_counts()
    assert model == MODEL
    return counts


def test_the_apps_queued_calls_count_as_one_observe_each(tmp_path: Path) -> None:
    """The flusher queues small outputs and adds them in numpy passes: the same window as calling
    `observe` per call (more calls than the queue holds, two models interleaved, a large output, a
    non-classifier output, an output the app changes afterwards)."""
    rng = np.random.default_rng(3)
    direct = ModelMetrics()
    app = MetricsFlusher(tmp_path / "nobody.sock", interval_s=3600)
    for i in range(700):
        meta = META if (i // 50) % 3 else OTHER
        if i % 97 == 0:
            outputs = {"y": rng.normal(size=(2, 2000)).astype(np.float32)}  # observed at once
        elif i % 89 == 0:
            outputs = {"emb": rng.normal(size=(3, 1)).astype(np.float32)}  # not a classifier
        else:
            outputs = {"logits": rng.normal(scale=3, size=(1 + i % 2, 10)).astype(np.float32)}
        latency = float(rng.uniform(1e-5, 1e-2))
        direct.observe(meta, outputs, latency)
        app.observe(meta, outputs, latency)
        next(iter(outputs.values()))[...] = 0  # the app reuses its answer's buffer
    app._drain()
    mine = {w.model.version: w for w in app.metrics.rotate()}
    want = {w.model.version: w for w in direct.rotate()}
    assert mine.keys() == want.keys() == {"3", "4"}
    for version, w in want.items():
        got = mine[version]
        for field in dataclasses.fields(w):
            theirs, ours = getattr(w, field.name), getattr(got, field.name)
            if isinstance(theirs, float):
                assert ours == pytest.approx(theirs, rel=1e-6), field.name
            else:
                assert ours == theirs, field.name
    app.close()


def test_a_merged_app_window_counts_as_if_the_agent_had_served_the_calls() -> None:
    together, agent = ModelMetrics(), ModelMetrics()
    _feed(together, 1, 30)  # the agent's own calls ...
    _feed(together, 2, 40)  # ... and the app's, in one accumulator
    _feed(agent, 1, 30)
    model, counts = unpack_metrics(pack_metrics(MODEL, _app_window()))  # through the wire format
    assert agent.merge(model, counts)
    [want], [got] = together.rotate(), agent.rotate()
    assert got.inprocess_predictions == 79 and got.inprocess_errors == 8
    assert got.predictions == 139 and got.errors == 14 and got.latency_count == 70
    for field in dataclasses.fields(want):
        mine, theirs = getattr(got, field.name), getattr(want, field.name)
        if isinstance(theirs, float):  # the same sums, added in another order
            assert mine == pytest.approx(theirs, rel=1e-12), field.name
        elif field.name not in ("inprocess_predictions", "inprocess_errors"):
            assert mine == theirs, field.name


def test_an_app_window_alone_makes_a_window_for_its_model() -> None:
    agent = ModelMetrics()
    agent.observe(OTHER, {"y": np.array([[0.2, 0.8]], np.float32)}, 0.001)  # another version served too
    assert agent.merge(MODEL, _app_window())
    windows = {w.model.version: w for w in agent.rotate()}
    assert windows["3"].predictions == windows["3"].inprocess_predictions == 79
    assert sum(windows["3"].confidence_hist) == sum(windows["3"].class_counts) == 79
    assert windows["4"].inprocess_predictions == 0 and windows["4"].predictions == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"predictions": MAX_MERGED_COUNT + 1}, "over"),
        ({"confidence_hist": (1,) * 9}, "9 bins"),
        ({"class_counts": (1,) * 1001}, "1001 class counts"),
        ({"latency_buckets": ((10_000, 1),)}, "bucket index"),
        ({"latency_sum_ms": float("nan")}, "not finite"),
        ({"confidence_sum": -1.0}, "negative"),
        ({"predictions": 3}, "more histogram or class counts than predictions"),
        ({"confidence_sum": 1e6}, "above one per prediction"),
    ],
)
def test_an_impossible_window_is_refused_whole(change: dict[str, object], message: str) -> None:
    agent = ModelMetrics()
    bad = dataclasses.replace(_app_window(), **change)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        agent.merge(MODEL, bad)
    assert agent.rotate() == []


def test_malformed_metrics_frames_are_refused() -> None:
    good = pack_metrics(MODEL, _app_window())
    assert unpack_metrics(good)[0] == MODEL
    for frame, message in [
        (good[:-1], "bad magic, kind or length"),  # truncated
        (good + b"\0", "bad magic, kind or length"),  # trailing byte
        (good[:20] + b"\x07" + good[21:], "metrics format 7"),  # a future format: refused, not guessed
        (header(METRICS, meta_len=5) + b"\x01abcd", "truncated"),
        (header(METRICS, meta_len=MAX_METRICS_FRAME) + bytes(MAX_METRICS_FRAME), "limit"),  # oversize
        (_with_counts_len(good, 9999), "the counts need"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            unpack_metrics(frame)


def _with_counts_len(frame: bytes, n_classes: int) -> bytes:
    out = bytearray(frame)
    struct.pack_into("<H", out, HEADER.size + 4, n_classes)  # format, flags, hist_len, *classes_len*
    return bytes(out)


def test_the_agents_intake_merges_good_windows_and_counts_what_it_drops(tmp_path: Path) -> None:
    async def scenario() -> tuple[SampleIntake, ModelMetrics]:
        metrics = ModelMetrics()
        path = tmp_path / "samples.sock"
        intake = SampleIntake(None, path, metrics=metrics, serving=lambda: META)
        intake.start()
        counts = _app_window()
        frames = [
            pack_metrics(MODEL, counts),
            pack_metrics(ModelId("clf", "9", "ef" * 32), counts),  # a model the agent never served
            pack_metrics(MODEL, dataclasses.replace(counts, errors=MAX_MERGED_COUNT + 1)),  # oversize
            pack_metrics(MODEL, counts)[:-3],  # truncated
            header(METRICS, meta_len=MAX_METRICS_FRAME) + bytes(MAX_METRICS_FRAME),  # over the limit
            b"\x00" * 64,  # no frame at all
            pack_metrics(MODEL, counts),
        ]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as app:
            for frame in frames:
                app.sendto(frame, str(path))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if (
                intake.windows_merged + intake.windows_rejected + intake.windows_unknown + intake.rejected
                >= 7
            ):
                break
        intake.stop()
        return intake, metrics

    intake, metrics = asyncio.run(scenario())
    assert (intake.windows_merged, intake.windows_unknown, intake.windows_rejected, intake.rejected) == (
        2,
        1,
        3,
        1,
    )
    [window] = metrics.rotate()
    assert window.model == MODEL and window.predictions == window.inprocess_predictions == 158


def test_a_window_of_the_model_served_before_a_switch_is_still_merged(tmp_path: Path) -> None:
    """The app follows a switch up to a poll later and sends its window up to a flush later."""

    async def scenario() -> tuple[SampleIntake, ModelMetrics]:
        metrics, serving = ModelMetrics(), [META]
        path = tmp_path / "samples.sock"
        intake = SampleIntake(None, path, metrics=metrics, serving=lambda: serving[0])
        intake.start()
        await asyncio.sleep(0.05)
        serving[0] = OTHER  # the agent switched (or rolled back) before the app's window came
        await asyncio.sleep(0.4)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as app:
            app.sendto(pack_metrics(MODEL, _app_window()), str(path))
            app.sendto(pack_metrics(ModelId("clf", "9", "ef" * 32), _app_window()), str(path))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if intake.windows_merged + intake.windows_unknown >= 2:
                break
        intake.stop()
        return intake, metrics

    intake, metrics = asyncio.run(scenario())
    assert (intake.windows_merged, intake.windows_unknown) == (1, 1)
    assert [w.model.version for w in metrics.rotate()] == ["3"]


def test_the_flusher_never_waits_on_a_missing_or_full_socket(tmp_path: Path) -> None:
    missing = MetricsFlusher(tmp_path / "nobody.sock", interval_s=3600)
    missing.metrics.error(META)
    assert missing.flush() == 0 and (missing.sent, missing.dropped) == (0, 1)
    missing.close()
    path = tmp_path / "agent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as agent:  # an agent that never reads
        agent.bind(str(path))
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler:
            filler.setblocking(False)
            try:
                while True:
                    filler.sendto(bytes(4096), str(path))
            except BlockingIOError:
                pass  # its queue is full
        full = MetricsFlusher(path, interval_s=3600)
        full.metrics.error(META)
        full.metrics.error(OTHER)
        assert full.flush() == 0 and full.dropped == 2  # a blocking sendto would hang here
        full.close()

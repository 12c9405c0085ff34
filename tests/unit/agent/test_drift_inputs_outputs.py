"""Drift monitor: output and label streams, bad input accounting, and the outbox reporter."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from agent.drift import DriftInputError, DriftMonitor, DriftReporter, Episode, build_reference
from protos.edgeloop.v1 import drift_pb2


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _classifier_outputs(rng: np.random.Generator, n: int, mix: tuple[float, float, float]) -> np.ndarray:
    """Probabilities of a 3-class model on inputs drawn with class shares `mix`."""
    cls = rng.choice(3, size=n, p=mix)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), cls] += 2.5
    return _softmax(logits)


def test_class_mix_shift_is_an_output_episode() -> None:
    rng = np.random.default_rng(1)
    x_ref = rng.normal(size=(1000, 4))
    profile = build_reference(x_ref, outputs=_classifier_outputs(rng, 1000, (0.6, 0.3, 0.1)), seed=1)
    monitor = DriftMonitor(profile)
    events: list[Episode] = []
    for i in range(0, 4000, 50):
        mix = (0.6, 0.3, 0.1) if i < 2000 else (0.4, 0.3, 0.3)
        events += monitor.observe(rng.normal(size=(50, 4)), _classifier_outputs(rng, 50, mix))
    opened = [e for e in events if e.state == "open"]
    assert {e.episode_id for e in events} == {1} and opened[0].stream == "outputs", events
    assert 2000 < opened[0].detected_sample <= 2600
    assert {e.kind for e in opened[0].evidence} & {"class", "confidence"}


def test_late_labels_error_rate_doubling_is_a_concept_episode() -> None:
    rng = np.random.default_rng(4)
    errors_ref = (rng.random(2000) < 0.1).astype(float)
    monitor = DriftMonitor(build_reference(rng.normal(size=(500, 3)), errors=errors_ref, seed=2))
    quiet = monitor.observe_labels((rng.random(3000) < 0.1).astype(int))
    changed = monitor.observe_labels((rng.random(1500) < 0.2).astype(int))
    assert quiet == [] and monitor.observe_labels([2, -1, np.nan]) == [] and monitor.observe_labels("x") == []
    assert monitor.bad.bad_labels == 4
    assert [e.stream for e in changed if e.state == "open"] == ["labels"]
    assert changed[0].evidence[0].channel == "error"
    assert changed[0].detected_sample - 3000 <= 1000


def test_label_stream_false_alarms_stay_within_budget() -> None:
    opened = 0
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        errors = (rng.random(2000) < 0.1).astype(float)
        monitor = DriftMonitor(build_reference(rng.normal(size=(200, 2)), errors=errors, seed=seed))
        opened += sum(
            e.state == "open" for e in monitor.observe_labels((rng.random(20_000) < 0.1).astype(int))
        )
    assert opened <= 10  # budget: 0.5 per 10k labels over 200k labels


def _misfed(monitor: DriftMonitor, rows: object, **kw: object) -> DriftInputError:
    with pytest.raises(DriftInputError) as info:
        monitor.observe(rows, **kw)  # type: ignore[arg-type]
    return info.value


def test_stray_nan_values_are_counted_and_dropped_never_an_alarm() -> None:
    """A monitor fed scattered NaN/inf behaves exactly like its twin fed only the good rows."""
    rng = np.random.default_rng(3)
    names = ("a", "b", "c")
    profile = build_reference(rng.normal(size=(1000, 3)), feature_names=names, seed=3)
    monitor, twin = DriftMonitor(profile), DriftMonitor(profile)
    events: list[Episode] = []
    twin_events: list[Episode] = []
    for _ in range(400):
        x = rng.normal(size=(25, 3))
        x[::5, 1] = np.nan
        x[::7, 2] = np.inf
        x[::11, 0] = -np.inf
        events += monitor.observe(x)
        twin_events += twin.observe(x[np.isfinite(x).all(axis=1)])
    assert events == twin_events == []
    bad = monitor.bad
    assert bad.nonfinite["b"] == 400 * 5 and bad.nonfinite["c"] == 400 * 4 and bad.nonfinite["a"] == 400 * 3
    assert monitor.samples == twin.samples == 400 * (25 - 10)


def test_misfed_rows_raise_and_open_one_data_quality_episode_that_closes_when_fixed() -> None:
    rng = np.random.default_rng(3)
    names = ("a", "b", "c")
    monitor = DriftMonitor(build_reference(rng.normal(size=(1000, 3)), feature_names=names, seed=3))
    monitor.observe(rng.normal(size=(500, 3)))
    first = _misfed(monitor, rng.normal(size=(25, 4)))  # a feeder wired to the wrong model
    assert "rows of 4 values" in first.reason and "3 features" in first.reason
    (opened,) = first.events
    assert opened.state == "open" and opened.stream == "inputs" and opened.detected_sample == 500
    assert [e.kind for e in opened.evidence] == ["bad_input"] and opened.evidence[0].feature == ""
    # Every misfed call raises; the open episode is updated once per new kind of problem only.
    missing = _misfed(monitor, {"a": 0.1, "c": 0.3})
    assert "no feature 'b'" in missing.reason
    (update,) = missing.events
    assert update.episode_id == opened.episode_id and "b" in {ev.feature for ev in update.evidence}
    assert _misfed(monitor, rng.normal(size=(25, 4))).events == []  # same problem: no new record
    assert "not numbers" in _misfed(monitor, "not numbers").reason
    assert "shape (2, 2, 3)" in _misfed(monitor, np.zeros((2, 2, 3))).reason
    _misfed(monitor, [[1.0, 2.0], [3.0]])
    assert monitor.bad.bad_shape == 25 * 2 + 1 + 1 + 1 and monitor.bad.missing == {"b": 1}
    assert [e.episode_id for e in monitor.open_episodes()] == [opened.episode_id]
    # Wiring fixed: good rows close the episode after the quiet period (32 blocks of 25).
    closed = [e for e in monitor.observe(rng.normal(size=(1000, 3))) if e.state == "closed"]
    assert [e.episode_id for e in closed] == [opened.episode_id] and monitor.open_episodes() == []


def test_a_dead_feature_opens_an_episode_and_nonfinite_raise_policy_raises() -> None:
    rng = np.random.default_rng(8)
    profile = build_reference(rng.normal(size=(1000, 3)), seed=8)
    monitor = DriftMonitor(profile)
    junk = rng.normal(size=(200, 3))
    junk[:, 1] = np.nan  # sensor x[1] delivers nothing for 200 rows
    opened = [e for e in monitor.observe(junk) if e.state == "open"]
    assert len(opened) == 1 and opened[0].evidence[0].channel == "nonfinite:x[1]"
    assert opened[0].evidence[0].feature == "x[1]" and monitor.samples == 0
    strict = DriftMonitor(profile, nonfinite="raise")
    row = np.array([[0.1, np.nan, 0.2]])
    err = _misfed(strict, row)
    assert "NaN/inf in feature 'x[1]'" in err.reason and err.events[0].evidence[0].feature == "x[1]"
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        DriftMonitor(profile, nonfinite="ignore")
    assert monitor.observe_labels(["wrong", "labels"]) == []  # type: ignore[list-item]  # no label stream


def test_constant_feature_and_tiny_reference_do_not_break_the_monitor() -> None:
    rng = np.random.default_rng(4)
    ref = np.column_stack([rng.normal(size=200), np.full(200, 3.0), rng.integers(0, 3, 200)])
    monitor = DriftMonitor(build_reference(ref, seed=4))
    live = np.column_stack([rng.normal(size=3000), np.full(3000, 3.0), rng.integers(0, 3, 3000)])
    assert [e for e in monitor.observe(live) if e.state == "open"] == []
    with pytest.raises(ValueError, match="at least 50"):
        build_reference(np.full((40, 2), np.nan))


@dataclass
class FakeOutbox:
    records: list[tuple[int, str, dict[str, float], bytes]] = field(default_factory=list)

    def append(self, *, timestamp_ms: int, kind: str, metrics: dict[str, float], payload: bytes = b"") -> int:
        self.records.append((timestamp_ms, kind, metrics, payload))
        return len(self.records)


@dataclass
class FakeClock:
    now_ms: int = 1_000

    def time_ms(self) -> int:
        self.now_ms += 10
        return self.now_ms


def test_reporter_writes_one_record_per_episode_event_and_periodic_sketches() -> None:
    rng = np.random.default_rng(5)
    monitor = DriftMonitor(build_reference(rng.normal(size=(1000, 2)), feature_names=("t", "p"), seed=5))
    outbox = FakeOutbox()
    reporter = DriftReporter(
        outbox,
        clock=FakeClock(),
        model_name="m",
        model_version="7",
        sketch_every=2000,
        token=lambda _: "abcd",
    )
    x = rng.normal(size=(6000, 2))
    x[2000:3000, 1] += 2.0
    for i in range(0, 6000, 100):
        reporter.publish(monitor, monitor.observe(x[i : i + 100]))
    kinds = [r[1] for r in outbox.records]
    assert kinds.count("drift") == 2 and kinds.count("drift_sketch") == 3
    opened, closed = (drift_pb2.DriftEpisode.FromString(r[3]) for r in outbox.records if r[1] == "drift")
    assert (opened.state, closed.state) == (drift_pb2.DRIFT_EPISODE_OPEN, drift_pb2.DRIFT_EPISODE_CLOSED)
    assert opened.episode_id == closed.episode_id and opened.monitor_id == "abcd"
    assert closed.opened_ms == opened.opened_ms < closed.closed_ms
    assert closed.evidence[0].feature == "p" and closed.model_version == "7"
    sketches = [drift_pb2.DriftSketch.FromString(r[3]) for r in outbox.records if r[1] == "drift_sketch"]
    assert sum(s.samples for s in sketches) == 6000
    assert all(sum(b.counts) == s.samples for s in sketches for b in s.bins)


def test_agent_drift_imports_numpy_and_protobuf_only() -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, agent.drift, agent.drift.reporter;"
        "import json; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    loaded = set(json.loads(out.stdout))
    heavy = {"scipy", "river", "torch", "sklearn", "pandas", "fleet_server", "sqlalchemy", "fastapi", "grpc"}
    assert "numpy" in loaded and "agent" in loaded
    assert not loaded & heavy, loaded & heavy

"""Model metric windows on real SQLite and PostgreSQL: the ingest observer stores what devices
report, refuses a bad record alone and never raises; `device_window_sums` sums one device's
windows over a range in one query; the decoder survives any bytes (Hypothesis)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, event, func, select
from sqlmodel import Session

from fleet_server.db import make_engine
from fleet_server.ingest import TelemetryRow
from fleet_server.migrate import upgrade
from fleet_server.rollouts import metrics
from fleet_server.rollouts.metrics import (
    ModelMetricWindow,
    WindowRefused,
    device_window_sums,
    model_metrics_observer,
    parse_window,
)
from fleet_server.settings import Settings
from protos.edgeloop.v1 import device_pb2 as pb

SHA_A = "a" * 64
SHA_B = "b" * 64


def window(**over: Any) -> pb.ModelMetricsWindow:
    fields: dict[str, Any] = {
        "model_name": "clf",
        "model_version": "1",
        "model_sha256": SHA_A,
        "deployment_id": "dep-1",
        "window_start_ms": 1_000_000,
        "window_s": 30,
        "predictions": 10,
        "errors": 1,
        "confidence_hist": [0, 0, 0, 0, 0, 1, 1, 2, 2, 4],
        "class_counts": [6, 3, 1],
        "confidence_sum": 8.0,
        "confidence_sum_sq": 6.6,
        "latency_p50_ms": 2.0,
        "latency_p95_ms": 5.0,
        "latency_sum_ms": 25.0,
        "latency_sum_sq_ms": 80.0,
        "latency_count": 10,
        "drift_score": -1.0,
        "shadow_agreement": -1.0,
        "shadow_samples": 0,
    }
    fields.update(over)
    return pb.ModelMetricsWindow(**fields)


def row(seq: int, msg: pb.ModelMetricsWindow | bytes, kind: str = "model_metrics") -> TelemetryRow:
    payload = msg if isinstance(msg, bytes) else msg.SerializeToString()
    return TelemetryRow(seq=seq, timestamp_ms=seq, kind=kind, metrics={}, payload=payload)


@pytest.fixture
def engine(tmp_path: Path, database_url: str) -> Iterator[Engine]:
    eng = make_engine(Settings(data_dir=tmp_path, database_url=database_url).resolved_database_url())
    upgrade(eng)
    yield eng
    eng.dispose()


def stored(engine: Engine) -> list[ModelMetricWindow]:
    with Session(engine) as s:
        return list(s.exec(select(ModelMetricWindow).order_by(ModelMetricWindow.seq)).scalars())  # type: ignore[call-overload, arg-type]


# ---------------------------------------------------------------- observer


def test_observer_stores_windows_and_is_idempotent(engine: Engine) -> None:
    rows = [("d1", row(1, window())), ("d1", row(2, window(model_sha256=SHA_B))), ("d2", row(1, window()))]
    rows.append(("d1", row(3, b"\x01", kind="drift")))  # other kinds are not ours
    with engine.begin() as conn:
        model_metrics_observer(conn, rows)
    with engine.begin() as conn:  # the same records again after a lost ack: nothing changes
        model_metrics_observer(conn, rows)
    got = stored(engine)
    assert [
        (r.device_id, r.seq, r.model_sha256) for r in sorted(got, key=lambda r: (r.device_id, r.seq))
    ] == [
        ("d1", 1, SHA_A),
        ("d1", 2, SHA_B),
        ("d2", 1, SHA_A),
    ]
    r = got[0]
    assert r.confidence_hist == [0, 0, 0, 0, 0, 1, 1, 2, 2, 4]
    assert r.class_counts == [6, 3, 1]
    assert (r.predictions, r.errors, r.latency_count, r.window_s) == (10, 1, 10, 30)
    assert r.received_at is not None and r.received_at.tzinfo is not None


BAD = {
    "nan confidence": window(confidence_sum=math.nan),
    "inf latency": window(latency_sum_ms=math.inf),
    "negative latency": window(latency_p95_ms=-1.0),
    "9 bins": window(confidence_hist=[1] * 9),
    "11 bins": window(confidence_hist=[0] * 11),
    "1001 classes": window(class_counts=[0] * 1001, predictions=10),
    "predictions over bigint": window(predictions=2**63),
    "errors over bigint": window(errors=2**64 - 1),
    "latency_count over bigint": window(latency_count=2**63),
    "negative start": window(window_start_ms=-5),
    "window_s zero": window(window_s=0),
    "window_s huge": window(window_s=2**32 - 1),
    "shadow_samples over int": window(shadow_samples=2**31),
    "shadow agreement over 1": window(shadow_agreement=1.5),
    "drift below -1": window(drift_score=-3.0),
    "NUL in name": window(model_name="a\x00b"),
    "empty name": window(model_name=""),
    "long version": window(model_version="v" * 65),
    "bad sha": window(model_sha256="XYZ"),
    "hist more than predictions": window(predictions=3),
    "confidence over predictions": window(confidence_sum=11.0),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_parse_refuses_each_bad_field(name: str) -> None:
    with pytest.raises(WindowRefused):
        parse_window(BAD[name].SerializeToString())


def test_parse_accepts_a_window_without_classifier_output() -> None:
    values = parse_window(
        window(confidence_hist=[], class_counts=[], confidence_sum=0, confidence_sum_sq=0).SerializeToString()
    )
    assert values["confidence_hist"] == [] and values["class_counts"] == []


def test_bad_records_are_refused_alone(engine: Engine) -> None:
    before = sum(metrics.REFUSALS.values())
    rows = [("d1", row(1, window()))]
    rows += [("d1", row(10 + i, BAD[name])) for i, name in enumerate(sorted(BAD))]
    rows += [("d1", row(100, b"\xff" * 10)), ("d1", row(101, b"\x00" * 3000)), ("d2", row(1, window()))]
    with engine.begin() as conn:
        model_metrics_observer(conn, rows)
    assert [(r.device_id, r.seq) for r in stored(engine)] == [("d1", 1), ("d2", 1)]
    assert sum(metrics.REFUSALS.values()) - before == len(BAD) + 2


# ---------------------------------------------------------------- read API


def test_device_window_sums(engine: Engine) -> None:
    empty = {"confidence_hist": [], "class_counts": [], "confidence_sum": 0, "confidence_sum_sq": 0}
    rows = [
        (
            "d1",
            row(1, window(window_start_ms=1000, drift_score=0.2, shadow_agreement=0.97, shadow_samples=6)),
        ),
        ("d1", row(2, window(window_start_ms=31_000, drift_score=0.4, class_counts=[6, 3, 0, 1]))),
        ("d1", row(3, window(window_start_ms=61_000, latency_p95_ms=9.0, shadow_agreement=0.9))),
        ("d1", row(4, window(window_start_ms=91_000, model_sha256=SHA_B, predictions=5, **empty))),
        ("d2", row(1, window(window_start_ms=1000))),
        ("d3", row(1, window(window_start_ms=500_000))),  # outside the range
    ]
    with engine.begin() as conn:
        model_metrics_observer(conn, rows)
    with engine.connect() as conn:
        sums = device_window_sums(conn, ["d1", "d2", "d3", "nobody"], 1000, 91_001, model_sha256=SHA_A)
    assert sorted(sums) == ["d1", "d2"]
    d1 = sums["d1"]
    assert (d1.device_id, d1.model_sha256, d1.windows, d1.predictions, d1.errors) == ("d1", SHA_A, 3, 30, 3)
    assert d1.confidence_hist == (0, 0, 0, 0, 0, 3, 3, 6, 6, 12)
    assert d1.class_counts == (18, 9, 2, 1)
    assert d1.confidence_sum == pytest.approx(24.0) and d1.confidence_sum_sq == pytest.approx(19.8)
    assert (d1.latency_sum_ms, d1.latency_sum_sq_ms, d1.latency_count) == (75.0, 240.0, 30)
    assert d1.latency_p95_ms_max == 9.0
    assert d1.drift_score_mean == pytest.approx(0.3)
    assert d1.shadow_agreement_min == pytest.approx(0.9)
    assert sums["d2"].drift_score_mean == -1.0 and sums["d2"].shadow_agreement_min == -1.0

    with Session(engine) as s:  # a session works too; without a model filter every model is summed
        all_models = device_window_sums(s, ["d1"], 0, 10**9)
    assert all_models["d1"].windows == 4 and all_models["d1"].predictions == 35
    assert all_models["d1"].model_sha256 == SHA_B  # the model of the latest window
    with engine.connect() as conn:  # [since, until): the upper bound is exclusive
        assert device_window_sums(conn, ["d1"], 1000, 1000) == {}
        assert device_window_sums(conn, ["d1"], 0, 1000) == {}
        assert device_window_sums(conn, [], 0, 10**9) == {}
        assert device_window_sums(conn, ["d1"], 1001, 31_001)["d1"].windows == 1


def test_device_window_sums_is_one_query_for_hundreds_of_devices(engine: Engine) -> None:
    devices = [f"dev-{i:04d}" for i in range(300)]
    rows = [(d, row(s, window(window_start_ms=1000 + 30_000 * s))) for d in devices for s in range(1, 5)]
    with engine.begin() as conn:
        model_metrics_observer(conn, rows)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with engine.connect() as conn:
            sums = device_window_sums(conn, devices, 0, 10**9, model_sha256=SHA_A)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 1
    assert len(sums) == 300 and all(s.windows == 4 and s.predictions == 40 for s in sums.values())
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ModelMetricWindow)).scalar_one() == 1200


# ---------------------------------------------------------------- properties


VALID = window().SerializeToString()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid payload truncated, with bytes flipped, inserted or appended."""
    data = bytearray(VALID)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "insert", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=12))
        else:
            del data[pos:]
    return bytes(data)


u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
floats = st.floats(allow_nan=True, allow_infinity=True)
texts = st.text(max_size=80)


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    """A well-formed message with any value each field's wire type allows."""
    return pb.ModelMetricsWindow(
        model_name=draw(texts),
        model_version=draw(texts),
        model_sha256=draw(st.one_of(texts, st.just(SHA_A))),
        deployment_id=draw(texts),
        window_start_ms=draw(st.integers(-(2**63), 2**63 - 1)),
        window_s=draw(u32),
        predictions=draw(u64),
        errors=draw(u64),
        confidence_hist=draw(st.lists(u32, max_size=12)),
        class_counts=draw(st.lists(u32, max_size=20)),
        confidence_sum=draw(floats),
        confidence_sum_sq=draw(floats),
        latency_p50_ms=draw(floats),
        latency_p95_ms=draw(floats),
        latency_sum_ms=draw(floats),
        latency_sum_sq_ms=draw(floats),
        latency_count=draw(u64),
        drift_score=draw(floats),
        shadow_agreement=draw(floats),
        shadow_samples=draw(u32),
    ).SerializeToString()


def _checked(values: dict[str, Any]) -> None:
    for key in ("predictions", "errors", "latency_count", "window_start_ms"):
        assert 0 <= values[key] <= 2**63 - 1
    assert 0 < values["window_s"] <= 86_400 and 0 <= values["shadow_samples"] <= 2**31 - 1
    assert len(values["confidence_hist"]) in (0, 10) and len(values["class_counts"]) <= 1000
    for key, value in values.items():
        if isinstance(value, float):
            assert math.isfinite(value), key
        if isinstance(value, str):
            assert "\x00" not in value and len(value) <= 128, key


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=3000), mutated(), structured()))
def test_parse_never_raises_anything_but_refused(payload: bytes) -> None:
    try:
        values = parse_window(payload)
    except WindowRefused:
        return
    _checked(values)


@pytest.fixture(scope="module")
def sqlite_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path_factory.mktemp('metrics') / 'm.db'}")
    upgrade(eng)
    yield eng
    eng.dispose()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.binary(max_size=300), mutated(), structured()), min_size=1, max_size=8))
def test_observer_never_raises_on_garbage(sqlite_engine: Engine, payloads: list[bytes]) -> None:
    rows = [("dx", row(i + 1, p)) for i, p in enumerate(payloads)]
    with sqlite_engine.connect() as conn:
        tx = conn.begin()
        model_metrics_observer(conn, rows)  # must not raise
        n = conn.execute(select(func.count()).select_from(ModelMetricWindow)).scalar_one()
        tx.rollback()
    valid = 0
    for p in payloads:
        try:
            parse_window(p)
            valid += 1
        except WindowRefused:
            pass
    assert n == valid

"""Fleet drift judgement (pure): the false-alarm-budget null, shift vs anomaly, signatures, policy."""

from __future__ import annotations

import math
from typing import Any

from fleet_server.drift.analysis import CohortKey, Exposure, classify_cohort, poisson_tail
from fleet_server.drift.models import DriftEpisodeRow
from fleet_server.drift.observer import signature_of
from fleet_server.drift.policy import EXCLUDE_DEVICES, OPEN_RETRAINING_ROUND, actions_for

KEY = CohortKey("raspberry-pi-4", "kws", "3")
_next_id = iter(range(1, 10_000))


def _ev(channel: str, kind: str, feature: str = "") -> dict[str, Any]:
    return {"channel": channel, "kind": kind, "feature": feature, "statistic": 5.0, "threshold": 4.0}


def _episode(
    device: str, evidence: list[dict[str, Any]], severity: float = 1.2, stream: str = "inputs"
) -> DriftEpisodeRow:
    signature, features = signature_of(stream, evidence)
    return DriftEpisodeRow(
        id=next(_next_id),
        device_id=device,
        monitor_id="m",
        episode_id=1,
        stream=stream,
        state="open",
        model_name="kws",
        model_version="3",
        start_sample=0,
        detected_sample=0,
        end_sample=0,
        samples_seen=5000,
        opened_ms=0,
        closed_ms=0,
        severity=severity,
        budget_per_10k=0.5,
        signature=signature,
        features=features,
        evidence=evidence,
        last_seq=1,
    )


def _fleet(n: int, samples: int = 5000) -> dict[str, Exposure]:
    return {f"d{i}": Exposure(samples, 0.5, 5) for i in range(n)}


def test_poisson_tail() -> None:
    assert poisson_tail(0, 3.0) == 1.0
    assert math.isclose(poisson_tail(1, 0.7), 1 - math.exp(-0.7))
    assert math.isclose(poisson_tail(3, 2.0), 1 - math.exp(-2.0) * (1 + 2 + 2))
    assert poisson_tail(10, 0.5) < 1e-9


def test_shared_shift_stuck_sensor_strong_single_feature_and_lone_false_alarm() -> None:
    episodes = [
        _episode(f"d{i}", [_ev("location:f0", "location", "f0"), _ev("joint", "joint")]) for i in range(10)
    ]
    stuck = _episode("d10", [_ev("stuck:f3", "stuck", "f3"), _ev("joint", "joint")])
    strong = _episode("d11", [_ev("scale:f4", "scale", "f4")], severity=3.0)
    lone = _episode("d12", [_ev("location:f2", "location", "f2")], severity=1.1)
    report = classify_cohort(KEY, [*episodes, stuck, strong, lone], _fleet(50, samples=3000))
    assert report.population_shift is not None
    assert report.population_shift.keys == ("f0", "joint")
    assert report.population_shift.devices == tuple(sorted(f"d{i}" for i in range(10)))
    assert [(a.device_id, a.signature, a.features) for a in report.anomalies] == [
        ("d10", "stuck", ("f3",)),
        ("d11", "single_feature", ("f4",)),
    ]
    assert report.classification[lone.id or 0] == "within_budget"
    assert {report.classification[e.id or 0] for e in episodes} == {"population_shift"}
    [action] = actions_for(report)
    assert action.action == OPEN_RETRAINING_ROUND and action.exclude_devices == ("d10", "d11")


def test_alarm_counts_the_budget_predicts_are_not_a_shift() -> None:
    # One million samples per device at 0.5 false episodes per 10k: dozens of false episodes are expected.
    episodes = [_episode(f"d{i}", [_ev("location:f0", "location", "f0")]) for i in range(6)]
    report = classify_cohort(KEY, episodes, _fleet(40, samples=1_000_000))
    assert report.population_shift is None and report.anomalies == []
    assert actions_for(report) == []
    # Two devices are never a population, whatever the budget says.
    assert classify_cohort(KEY, episodes[:2], _fleet(40)).population_shift is None


def test_anomalies_alone_ask_only_for_exclusion() -> None:
    report = classify_cohort(KEY, [_episode("d3", [_ev("stuck:f1", "stuck", "f1")])], _fleet(10))
    [action] = actions_for(report)
    assert (
        action.action == EXCLUDE_DEVICES
        and action.exclude_devices == ("d3",)
        and action.include_devices == ()
    )


def test_signatures() -> None:
    assert signature_of("inputs", [_ev("stuck:f1", "stuck", "f1"), _ev("scale:f1", "scale", "f1")]) == (
        "stuck",
        ["f1"],
    )
    assert signature_of("inputs", [_ev("joint", "joint")]) == ("joint", [])
    assert signature_of("inputs", [_ev("location:a", "location", "a"), _ev("scale:b", "scale", "b")]) == (
        "multi_feature",
        ["a", "b"],
    )
    assert signature_of("outputs", [_ev("class:1", "class", "1")])[0] == "output"
    assert signature_of("labels", [_ev("error", "error")])[0] == "concept"


def test_misfed_devices_are_anomalies_never_a_population_shift() -> None:
    """Ten devices whose feeders send rows of the wrong width (after a bad app release, say) raise
    bad-input episodes: each is a device to fix, and no retraining round opens for them."""
    misfed = [
        _episode(f"d{i}", [_ev("bad_input/width", "bad_input"), _ev("joint", "joint")]) for i in range(10)
    ]
    named = _episode("d10", [_ev("nonfinite:f2", "bad_input", "f2")])
    assert signature_of("inputs", misfed[0].evidence) == ("bad_input", [])
    report = classify_cohort(KEY, [*misfed, named], _fleet(50, samples=3000))
    assert report.population_shift is None
    assert {a.device_id for a in report.anomalies} == {f"d{i}" for i in range(11)}
    assert all(a.signature == "bad_input" for a in report.anomalies)
    [action] = actions_for(report)
    assert action.action == EXCLUDE_DEVICES and action.include_devices == ()
    # the same ten devices on a real shared feature key would be a shift (the control)
    shifted = [
        _episode(f"d{i}", [_ev("location:f0", "location", "f0"), _ev("joint", "joint")]) for i in range(10)
    ]
    assert classify_cohort(KEY, shifted, _fleet(50, samples=3000)).population_shift is not None


def test_stuck_inputs_next_to_a_shift_are_a_shift_not_a_broken_sensor() -> None:
    """Turned camera images (the demo's site north): border pixels freeze at 0 (stuck runs) while
    others move and reference-constant ones change. Three devices like that are a population shift;
    a device with only stuck runs (and the scale collapse they cause) stays a broken sensor."""
    turned = [
        _ev("stuck:x[4]", "stuck", "x[4]"),
        _ev("stuck:x[59]", "stuck", "x[59]"),
        _ev("constant:x[32]", "constant", "x[32]"),
        _ev("location:x[40]", "location", "x[40]"),
        _ev("scale:x[40]", "scale", "x[40]"),
    ]
    assert signature_of("inputs", turned)[0] == "multi_feature"
    frozen = [_ev("stuck:x[7]", "stuck", "x[7]"), _ev("scale:x[7]", "scale", "x[7]"), _ev("joint", "joint")]
    assert signature_of("inputs", frozen)[0] == "stuck"
    episodes = [_episode(f"d{i}", turned) for i in range(10)] + [_episode("d10", frozen)]
    report = classify_cohort(KEY, episodes, _fleet(50, samples=3000))
    assert report.population_shift is not None
    assert report.population_shift.devices == tuple(sorted(f"d{i}" for i in range(10)))
    assert [(a.device_id, a.signature) for a in report.anomalies] == [("d10", "stuck")]
    [action] = actions_for(report)
    assert action.action == OPEN_RETRAINING_ROUND and action.exclude_devices == ("d10",)

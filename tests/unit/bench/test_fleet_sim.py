"""Pure pieces of the fleet simulator: full-jitter backoff, latency histograms, outage timing,
configuration parsing, update behaviours."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from bench.fleet_sim.backoff import FullJitterBackoff
from bench.fleet_sim.config import SimConfig, default_workers, parse_mix, parse_times, parse_versions
from bench.fleet_sim.link import make_link
from bench.fleet_sim.stats import LatencyHist, RecoveryTracker, SimStats
from bench.fleet_sim.updates import behaviour_for, pick_kind, pool


def test_full_jitter_backoff_grows_to_its_cap_and_spreads_over_the_whole_window() -> None:
    b = FullJitterBackoff(1.0, 30.0, rng=random.Random(1))
    ceilings = []
    for _ in range(8):
        ceilings.append(b.ceiling())
        b.next_delay()
    assert ceilings == [1, 2, 4, 8, 16, 30, 30, 30]
    b.reset()
    assert b.ceiling() == 1.0
    # full jitter: a thousand devices retrying at attempt 5 spread over [0, 30), not around 30
    delays = []
    for seed in range(1000):
        d = FullJitterBackoff(1.0, 30.0, rng=random.Random(seed), attempt=5)
        delays.append(d.next_delay())
    assert 0 <= min(delays) < 1.5 and 28.5 < max(delays) <= 30
    assert 12 < float(np.mean(delays)) < 18


def test_latency_hist_percentiles_within_a_bucket_and_merge() -> None:
    rng = np.random.default_rng(0)
    values = rng.lognormal(3, 1, 20000)
    a, b = LatencyHist(), LatencyHist()
    for i, v in enumerate(values):
        (a if i % 2 else b).add(float(v))
    a.merge(LatencyHist.to_wire(b) | {})  # as received from another worker
    assert a.n == len(values)
    for q in (50, 95, 99):
        exact = float(np.percentile(values, q))
        got = a.percentile(q)
        assert got is not None and abs(got - exact) / exact < 0.04, (q, got, exact)
    assert a.summary()["max"] == round(float(values.max()), 2)
    assert LatencyHist().percentile(99) is None


def test_recovery_tracker_times_an_outage_from_the_drop_to_everyone_back() -> None:
    t = RecoveryTracker(100)
    t.sample(0, 40)  # ramp: not an outage
    t.sample(1, 100)
    t.sample(2, 95)  # a few drops: not an outage
    t.sample(3, 100)
    t.sample(4, 10)  # server killed
    t.sample(5, 0)
    t.sample(9, 70)
    t.sample(12, 100)
    assert [(r.cause, r.at_s, r.dropped_to, r.all_back_s) for r in t.recoveries] == [("outage", 4, 0, 8)]
    t.storm(20)
    t.sample(20.5, 100)  # the storm's sessions are not closed yet
    t.sample(21, 50)
    t.sample(26, 100)
    assert (t.recoveries[-1].cause, t.recoveries[-1].all_back_s) == ("storm", 6)


def test_sim_stats_exposes_counters_as_attributes() -> None:
    s = SimStats(devices=3)
    s.counters["records_acked"] = 7
    assert s.records_acked == 7
    assert s.to_dict()["counters"]["records_acked"] == 7
    with pytest.raises(AttributeError):
        _ = s.no_such_counter


def test_config_from_args_and_validation() -> None:
    cfg = SimConfig.from_args(
        ["--server", "http://10.0.0.5:8080", "--token", "t", "--devices", "6000", "--transport", "mixed",
         "--mqtt-url", "mqtts://broker:8883", "--storm-at-s", "120,60",
         "--update", "good=8,failing=1,silently_bad=1",
         "--update-by-version", "3=silently_bad", "--json", "out.json"]
    )  # fmt: skip
    assert cfg.workers == 3 == default_workers(6000)
    assert cfg.storm_at_s == (60.0, 120.0)
    assert cfg.update == pytest.approx({"good": 0.8, "failing": 0.1, "silently_bad": 0.1})
    assert cfg.update_by_version == {"3": "silently_bad"}
    assert cfg.json_out == Path("out.json")
    assert cfg.progress is True
    assert cfg.resolved_enroll_target() == "10.0.0.5:7443"
    assert cfg.window_s() == cfg.heartbeat_s == 60
    transports = [cfg.transport_of(i) for i in range(100)]
    assert transports.count("mqtt") == 50
    assert SimConfig(server="x", token="t", devices=10, workers=50).workers == 10
    with pytest.raises(ValueError, match="mqtt_url"):
        SimConfig(server="x", token="t", transport="mqtt")
    with pytest.raises(ValueError, match="heartbeat_s"):
        SimConfig(server="x", token="t", heartbeat_s=0)
    with pytest.raises(ValueError, match="unknown update"):
        parse_mix("great=1")
    with pytest.raises(ValueError):
        parse_versions("3=wonderful")
    assert parse_times("") == ()
    weights = SimConfig(server="x", token="t", update={"good": 2, "failing": 1, "silently_bad": 1}).update
    assert weights == {"good": 0.5, "failing": 0.25, "silently_bad": 0.25}


def test_mixed_transport_share_is_spread_evenly() -> None:
    cfg = SimConfig(
        server="x", token="t", devices=250, transport="mixed", mqtt_url="mqtt://h:1", mqtt_share=0.2
    )
    kinds = [cfg.transport_of(i) for i in range(250)]
    assert kinds.count("mqtt") == 50
    assert "mqtt" in kinds[:5]


def test_update_behaviours() -> None:
    y = pool().y
    good = behaviour_for("good", "digits", "2")
    bad = behaviour_for("silently_bad", "digits", "3")
    failing = behaviour_for("failing", "digits", "4")
    assert (good.name, good.version, good.loads) == ("digits", "2", True)
    assert float((good.cls[0] == y).mean()) > 0.9
    assert bad.loads and float((bad.cls[0] == y).mean()) < 0.6
    assert bad.agreement(good) < 0.7
    assert not failing.loads
    assert good.sha256 != behaviour_for("good", "digits", "5").sha256
    mix = {"good": 0.5, "failing": 0.25, "silently_bad": 0.25}
    assert [pick_kind(mix, u) for u in (0.1, 0.3, 0.6, 0.99)] == ["failing", "good", "good", "silently_bad"]


def test_make_link_refuses_unknown_transports_and_bad_mqtt_targets() -> None:
    from bench.fleet_sim.link import SimIdentity

    ident = SimIdentity("sim-00001", b"", b"", b"")
    with pytest.raises(ValueError, match="unknown transport"):
        make_link("carrier-pigeon", ident, "x")
    with pytest.raises(ValueError, match="mqtt"):
        make_link("mqtt", ident, "tcp://host:1883")
    assert type(make_link("grpc", ident, "127.0.0.1:1")).__name__ == "GrpcLink"

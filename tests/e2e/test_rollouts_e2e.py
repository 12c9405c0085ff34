"""Rollouts end to end (issue 12, "Must show"): real `edgeloop-server`, real agents, real models.

Fast tier: the rollout models have the properties the scenarios rely on (a silently bad model
passes the device's golden-set gate but does something else on live inputs; a broken one does
not load), and the simulated fleet speaks the real protocol to a real server process.
"""

from __future__ import annotations

import numpy as np
import pytest

from agent.ota.gates import DEFAULTS, agreement_and_distance
from tests.fixtures.rollout_models import GOLDEN_THRESHOLD, golden_accuracy, profile, rollout_models, run


def test_rollout_models_are_what_the_scenarios_need() -> None:
    m = rollout_models()
    v1_conf, v1_cls = profile(m.v1, m.x_live)
    v1_golden = golden_accuracy(m.v1, m.golden)
    assert v1_golden >= GOLDEN_THRESHOLD + 0.15

    # good: a retrained model with slightly different predictions, as accurate as v1
    good_conf, good_cls = profile(m.good, m.x_live)
    assert m.sha256("good") != m.sha256("v1")
    assert 0.9 <= float((good_cls == v1_cls).mean()) < 1.0
    assert float((good_cls == m.y_live).mean()) >= float((v1_cls == m.y_live).mean()) - 0.02
    assert abs(float(good_conf.mean()) - float(v1_conf.mean())) < 0.05

    # cold: same argmax everywhere (same golden accuracy), passes the agent's default shadow gates,
    # and the mean confidence on live inputs drops by more than 0.1
    cold_conf, cold_cls = profile(m.cold, m.x_live)
    assert (cold_cls == v1_cls).all()
    assert golden_accuracy(m.cold, m.golden) == v1_golden
    agree, distance = agreement_and_distance(run(m.v1, m.x_live), run(m.cold, m.x_live))
    assert agree == 1.0 and distance < DEFAULTS["max_distance"]
    assert float(cold_conf.mean()) < float(v1_conf.mean()) - 0.1

    # swapped: passes the golden threshold, two classes' worth of live predictions move
    sw_conf, sw_cls = profile(m.swapped, m.x_live)
    assert GOLDEN_THRESHOLD <= golden_accuracy(m.swapped, m.golden) < v1_golden - 0.05
    changed = set(np.unique(v1_cls[sw_cls != v1_cls]).tolist())
    assert changed == {3, 8}
    assert np.allclose(np.sort(sw_conf), np.sort(v1_conf))

    # broken: a release whose artifact does not load
    with pytest.raises(Exception, match=r"(?i)protobuf|load|parse"):
        run(m.broken, m.x_live)
    assert m.broken.stat().st_size < m.v1.stat().st_size

"""Rollout targeting and batch plans: deterministic order, percents and counts with a minimum,
disruption budgets per label value, and precise refusals for plans that do not add up."""

from __future__ import annotations

from collections import Counter

import pytest

from fleet_server.errors import InvalidRequestError
from fleet_server.rollouts.planning import BatchSpec, Candidate, Selector, order, plan_batches, select_targets


def _fleet(n: int, sites: int = 4) -> list[Candidate]:
    return [Candidate(f"dev-{i:04d}", "pi4", {"site": f"plant-{i % sites}"}) for i in range(n)]


def test_percent_batches_cover_every_device_once_with_a_minimum() -> None:
    fleet = _fleet(1000)
    batches = plan_batches(fleet, BatchSpec(percents=(1, 10, 50, 100), min_per_batch=20, seed="s"))
    assert [len(b) for b in batches] == [20, 80, 400, 500]
    flat = [d for b in batches for d in b]
    assert sorted(flat) == sorted(c.device_id for c in fleet)
    small = plan_batches(_fleet(30), BatchSpec(percents=(1, 10, 50, 100), min_per_batch=5))
    assert [len(b) for b in small] == [5, 5, 5, 15]  # cumulative 5, 10, 15 (=50%), 30
    tiny = plan_batches(_fleet(3), BatchSpec(percents=(1, 10, 50, 100), min_per_batch=5))
    assert [len(b) for b in tiny] == [3]  # empty batches are dropped


def test_counts_and_the_rest() -> None:
    batches = plan_batches(_fleet(100), BatchSpec(counts=(2, 10), seed="s"))
    assert [len(b) for b in batches] == [2, 10, 88]
    with pytest.raises(InvalidRequestError, match="do not add up: counts ask for 120 devices, 100 match"):
        plan_batches(_fleet(100), BatchSpec(counts=(20, 100)))


def test_order_is_deterministic_per_seed_and_not_enrollment_order() -> None:
    ids = [f"dev-{i:04d}" for i in range(200)]
    assert order(ids, "a") == order(list(reversed(ids)), "a")
    assert order(ids, "a") != order(ids, "b")
    assert order(ids, "a")[:10] != ids[:10]
    spec = BatchSpec(percents=(5, 100), seed="r-42")
    assert plan_batches(_fleet(200), spec) == plan_batches(list(reversed(_fleet(200))), spec)


def test_disruption_budget_per_label_value() -> None:
    fleet = _fleet(100, sites=4)  # 25 devices per site
    batches = plan_batches(fleet, BatchSpec(percents=(50, 100), seed="s", budget={"site": 20}))
    sites = {c.device_id: c.labels["site"] for c in fleet}
    for batch in batches:
        per_site = Counter(sites[d] for d in batch)
        assert max(per_site.values()) <= 5  # 20% of 25
    assert sorted(d for b in batches for d in b) == sorted(sites)
    assert len(batches) == 5  # the plan needed extra batches to stay inside the budget
    # A tiny site still gets one device per batch.
    few = [
        *_fleet(20, sites=1),
        Candidate("lonely-1", "pi4", {"site": "tiny"}),
        Candidate("lonely-2", "pi4", {"site": "tiny"}),
    ]
    batches = plan_batches(few, BatchSpec(percents=(100,), budget={"site": 10}))
    assert all(sum(d.startswith("lonely") for d in b) <= 1 for b in batches)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (BatchSpec(), "exactly one of them"),
        (BatchSpec(percents=(10,), counts=(1,)), "exactly one of them"),
        (BatchSpec(percents=(10, 50)), "do not add up: the last must be 100"),
        (BatchSpec(percents=(50, 10, 100)), "must increase"),
        (BatchSpec(percents=(0, 100)), r"in \(0, 100\]"),
        (BatchSpec(percents=(float("nan"), 100)), r"in \(0, 100\]"),
        (BatchSpec(percents=(10, 150)), r"in \(0, 100\]"),
        (BatchSpec(counts=(0, 5)), "must be positive"),
        (BatchSpec(percents=(100,), min_per_batch=0), "at least 1"),
        (BatchSpec(percents=tuple(range(1, 102))), "between 1 and 100 batches"),
        (BatchSpec(percents=(100,), budget={"site": 0}), "disruption budget"),
    ],
)
def test_bad_plans_are_refused_with_the_reason(spec: BatchSpec, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        plan_batches(_fleet(10), spec)


def test_no_targets_or_duplicates_are_refused() -> None:
    with pytest.raises(InvalidRequestError, match="no device matches"):
        plan_batches([], BatchSpec(percents=(100,)))
    with pytest.raises(InvalidRequestError, match="listed twice"):
        plan_batches([*_fleet(2), _fleet(1)[0]], BatchSpec(percents=(100,)))


def test_targets_need_an_artifact_for_their_profile_and_no_other_active_rollout() -> None:
    fleet = [
        Candidate("a", "pi4", {"site": "x"}),
        Candidate("b", "jetson", {"site": "x"}),
        Candidate("c", "pi4", {"site": "x"}),
        Candidate("d", "pi4", {"site": "y"}),
        Candidate("e", "", {"site": "x"}),
    ]
    t = select_targets(fleet, Selector(labels={"site": "x"}), ["pi4"], busy=["c"])
    assert [c.device_id for c in t.devices] == ["a"]
    assert t.excluded == {
        "no artifact for profile jetson": 1,
        "in another active rollout": 1,
        "no artifact for profile (none)": 1,
    }
    t = select_targets(fleet, Selector(profiles=frozenset({"pi4"})), ["pi4", "jetson"])
    assert [c.device_id for c in t.devices] == ["a", "c", "d"]
    with pytest.raises(InvalidRequestError, match="no artifact for profile"):
        select_targets(fleet, Selector(profiles=frozenset({"coral"})), ["pi4"])

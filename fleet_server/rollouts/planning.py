"""Targeting and batch plans, pure: which devices a rollout may touch and in which batches.

`select_targets` keeps devices that match the selector, whose profile has an artifact in the
release and that no other active rollout holds (each exclusion is counted with its reason).
`plan_batches` orders the targets deterministically from a seed (sha256(seed, device id), so a
plan can be recomputed and audited, and the canary is not always the oldest devices), cuts them
into batches by cumulative percent or by counts with a minimum per batch, and enforces a
disruption budget per label value: at most `percent`% of the devices with, say, site=plant-3
(at least one) install in the same batch; devices over the budget move to a later batch, and
extra batches are appended when needed. Errors are InvalidRequestError with the reason.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import accumulate, pairwise

from fleet_server.errors import InvalidRequestError

MAX_BATCHES = 100


@dataclass(frozen=True)
class Candidate:
    device_id: str
    profile: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Selector:
    """Devices whose labels include every `labels` pair and (if given) whose profile is listed."""

    labels: Mapping[str, str] = field(default_factory=dict)
    profiles: frozenset[str] = frozenset()

    def matches(self, c: Candidate) -> bool:
        if self.profiles and c.profile not in self.profiles:
            return False
        return all(c.labels.get(k) == v for k, v in self.labels.items())


@dataclass(frozen=True)
class Targets:
    devices: list[Candidate]
    excluded: dict[str, int]  # reason -> count


def select_targets(candidates: Iterable[Candidate], selector: Selector, release_profiles: Iterable[str],
                   busy: Iterable[str] = ()) -> Targets:  # fmt: skip
    """`release_profiles`: profiles with an artifact in the release; `busy`: devices held by
    another active rollout. Raises InvalidRequestError when the selector asks for a profile the
    release has no artifact for."""
    have = frozenset(release_profiles)
    missing = sorted(selector.profiles - have)
    if missing:
        raise InvalidRequestError(f"the release has no artifact for profile(s) {', '.join(missing)}")
    held = frozenset(busy)
    out: list[Candidate] = []
    excluded: Counter[str] = Counter()
    for c in candidates:
        if not selector.matches(c):
            continue
        if c.profile not in have:
            excluded[f"no artifact for profile {c.profile or '(none)'}"] += 1
        elif c.device_id in held:
            excluded["in another active rollout"] += 1
        else:
            out.append(c)
    return Targets(out, dict(excluded))


@dataclass(frozen=True)
class BatchSpec:
    """Either `percents` (cumulative, strictly increasing, ending at 100) or `counts` (batch sizes;
    devices beyond their sum form one last batch). Each batch gets at least `min_per_batch`."""

    percents: tuple[float, ...] = ()
    counts: tuple[int, ...] = ()
    min_per_batch: int = 1
    seed: str = ""
    # label key -> max percent of the devices with one value of that label in one batch
    budget: Mapping[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        if bool(self.percents) == bool(self.counts):
            raise InvalidRequestError("give batches as percents or as counts (exactly one of them)")
        if not 1 <= len(self.percents or self.counts) <= MAX_BATCHES:
            raise InvalidRequestError(f"between 1 and {MAX_BATCHES} batches")
        if self.min_per_batch < 1:
            raise InvalidRequestError("min_per_batch must be at least 1")
        if self.percents:
            p = self.percents
            if any(not (0 < x <= 100) or not math.isfinite(x) for x in p):
                raise InvalidRequestError(f"batch percents must be in (0, 100], got {list(p)}")
            if any(b <= a for a, b in pairwise(p)):
                raise InvalidRequestError(f"batch percents are cumulative and must increase, got {list(p)}")
            if p[-1] != 100:
                raise InvalidRequestError(f"batch percents do not add up: the last must be 100, got {p[-1]}")
        if any(c < 1 for c in self.counts):
            raise InvalidRequestError(f"batch counts must be positive, got {list(self.counts)}")
        for key, pct in self.budget.items():
            if not key or not (0 < pct <= 100):
                raise InvalidRequestError(f"disruption budget for {key!r} must be in (0, 100], got {pct}")


def order(device_ids: Iterable[str], seed: str) -> list[str]:
    """Deterministic pseudo-random order: by sha256(seed NUL device id)."""
    return sorted(device_ids, key=lambda d: hashlib.sha256(f"{seed}\0{d}".encode()).digest())


def _sizes(spec: BatchSpec, n: int) -> list[int]:
    if spec.counts:
        if sum(spec.counts) > n:
            raise InvalidRequestError(
                f"batches do not add up: counts ask for {sum(spec.counts)} devices, {n} match"
            )
        cum = list(accumulate(spec.counts)) + ([n] if sum(spec.counts) < n else [])
    else:
        cum = [min(n, math.ceil(p * n / 100 - 1e-9)) for p in spec.percents]
    out, done = [], 0
    for target in cum:  # cumulative targets; each batch at least min_per_batch
        take = min(n - done, max(target - done, spec.min_per_batch))
        if take > 0:
            out.append(take)
            done += take
    return out


def plan_batches(targets: list[Candidate], spec: BatchSpec) -> list[list[str]]:
    """Batches of device ids; every target is in exactly one. Raises InvalidRequestError."""
    spec.validate()
    if not targets:
        raise InvalidRequestError("no device matches the rollout's selector and release")
    by_id = {c.device_id: c for c in targets}
    if len(by_id) != len(targets):
        raise InvalidRequestError("a device is listed twice")
    queue = order(by_id, spec.seed)
    totals: dict[tuple[str, str], int] = Counter(
        (k, c.labels[k]) for c in targets for k in spec.budget if k in c.labels
    )
    quota = {kv: max(1, math.floor(spec.budget[kv[0]] * total / 100)) for kv, total in totals.items()}
    sizes = _sizes(spec, len(queue))
    batches: list[list[str]] = []
    while queue:
        want = sizes[len(batches)] if len(batches) < len(sizes) else len(queue)
        used: Counter[tuple[str, str]] = Counter()
        batch: list[str] = []
        rest: list[str] = []
        for device_id in queue:
            keys = [(k, by_id[device_id].labels[k]) for k in spec.budget if k in by_id[device_id].labels]
            if len(batch) < want and all(used[kv] < quota[kv] for kv in keys):
                batch.append(device_id)
                used.update(keys)
            else:
                rest.append(device_id)
        batches.append(batch)
        queue = rest
    return batches

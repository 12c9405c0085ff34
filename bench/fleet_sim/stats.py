"""Statistics: latency histograms that merge across processes, counters, and the final `SimStats`.

`LatencyHist` is a log-bucketed histogram (5 % wide buckets from 0.1 ms to ~1 hour): adding is
O(1), merging two is adding counts, so each worker ships its per-second buckets to the parent and
the parent's p50/p95/p99 cover the whole fleet. A percentile is the geometric middle of its bucket,
within 2.5 % of the exact value. Pure (no IO).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

_LO_MS = 0.1
_RATIO = 1.05
_LOG_RATIO = math.log(_RATIO)
_BUCKETS = int(math.log(3_600_000 / _LO_MS) / _LOG_RATIO) + 2


def bucket_of(ms: float) -> int:
    if ms <= _LO_MS:
        return 0
    return min(_BUCKETS - 1, 1 + int(math.log(ms / _LO_MS) / _LOG_RATIO))


def bucket_mid(b: int) -> float:
    if b == 0:
        return _LO_MS
    lo = _LO_MS * _RATIO ** (b - 1)
    return lo * math.sqrt(_RATIO)


class LatencyHist:
    __slots__ = ("counts", "max_ms", "n")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0
        self.max_ms = 0.0

    def add(self, ms: float) -> None:
        b = bucket_of(ms)
        self.counts[b] = self.counts.get(b, 0) + 1
        self.n += 1
        self.max_ms = max(self.max_ms, ms)

    def merge(self, other: LatencyHist | Mapping[str, Any]) -> None:
        if isinstance(other, LatencyHist):
            counts, n, mx = other.counts, other.n, other.max_ms
        else:
            counts = {int(k): int(v) for k, v in other["counts"].items()}
            n, mx = int(other["n"]), float(other["max_ms"])
        for b, c in counts.items():
            self.counts[b] = self.counts.get(b, 0) + c
        self.n += n
        self.max_ms = max(self.max_ms, mx)

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0..100) in ms; None when empty."""
        if not self.n:
            return None
        rank = max(1, math.ceil(q / 100 * self.n))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return min(bucket_mid(b), self.max_ms)
        return self.max_ms

    def summary(self) -> dict[str, float | int | None]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 2)

        return {"p50": r(self.percentile(50)), "p95": r(self.percentile(95)),
                "p99": r(self.percentile(99)), "max": r(self.max_ms if self.n else None),
                "count": self.n}  # fmt: skip

    def to_wire(self) -> dict[str, Any]:
        return {"counts": {str(k): v for k, v in self.counts.items()}, "n": self.n, "max_ms": self.max_ms}


COUNTERS = (
    "reports_sent", "reports_acked", "reports_refused", "records_sent", "records_acked",
    "records_resent", "duplicates_acked", "records_rejected", "connects", "reconnects",
    "connect_failures", "rejected_sessions", "drops", "churns", "storms", "installs_committed",
    "installs_failed", "windows_sent",
)  # fmt: skip


@dataclass
class Recovery:
    """An outage (storm or server restart) and how long until every device was back."""

    cause: str  # "storm" | "outage"
    at_s: float
    dropped_to: int
    all_back_s: float | None = None  # seconds from at_s until connected == devices


class RecoveryTracker:
    """Notices outages in the per-second connected count and times the recovery.

    An outage starts when connected falls by more than `threshold` of the fleet below the fleet
    size after everyone had been connected (or a storm is announced); it ends when connected is the
    fleet size again.
    """

    def __init__(self, devices: int, threshold: float = 0.1) -> None:
        self.devices = devices
        self.threshold = threshold
        self.recoveries: list[Recovery] = []
        self._open: Recovery | None = None
        self._was_full = False

    @property
    def in_outage(self) -> bool:
        return self._open is not None

    def storm(self, t_s: float) -> None:
        if self._open is None:
            self._open = Recovery("storm", t_s, self.devices)
            self.recoveries.append(self._open)

    def sample(self, t_s: float, connected: int) -> None:
        if self._open is not None:
            self._open.dropped_to = min(self._open.dropped_to, connected)
            # closed once every device is back after the drop was seen (a storm's first sample may
            # still count the sessions it is about to close)
            if connected >= self.devices and self._open.dropped_to < self.devices:
                self._open.all_back_s = round(t_s - self._open.at_s, 2)
                self._open = None
                self._was_full = True
            return
        if connected >= self.devices:
            self._was_full = True
        elif self._was_full and self.devices - connected > max(1, self.threshold * self.devices):
            self._open = Recovery("outage", t_s, connected)
            self.recoveries.append(self._open)
            self._was_full = False


@dataclass
class SimStats:
    devices: int = 0
    connected: int = 0
    reconnecting: int = 0
    peak_connected: int = 0
    time_to_all_connected_s: float | None = None
    elapsed_s: float = 0.0
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    report_ack_ms: dict[str, Any] = field(default_factory=dict)
    telemetry_ack_ms: dict[str, Any] = field(default_factory=dict)
    # the same, counting only acks while the whole fleet was held (every device connected for
    # 10 s or more, outside outages and storms): the steady-state latency the scale bench reports
    held_report_ack_ms: dict[str, Any] = field(default_factory=dict)
    held_telemetry_ack_ms: dict[str, Any] = field(default_factory=dict)
    session_ends: dict[str, int] = field(default_factory=dict)  # why sessions ended, by cause
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    per_device: dict[str, dict[str, Any]] = field(default_factory=dict)
    workers: int = 0
    worker_rss_mb: list[float] = field(default_factory=list)

    def __getattr__(self, name: str) -> int:  # stats.records_acked etc.
        counters = self.__dict__.get("counters", {})
        if name in counters:
            return int(counters[name])
        raise AttributeError(name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def add_counts(into: dict[str, int], more: Mapping[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + int(v)


def merged(hists: Iterable[LatencyHist | Mapping[str, Any]]) -> LatencyHist:
    out = LatencyHist()
    for h in hists:
        out.merge(h)
    return out

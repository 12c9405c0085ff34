"""A device's telemetry bucketed into chart series: latency p50/p95, throughput, errors, outbox.

What each series is computed from (the agent's records as stored by ingest.py):

- latency_p50_ms / latency_p95_ms: `kind="inference"` records (agent/telemetry.py `_report_inference`,
  one per stats window, keys `inference.<name@version>.latency_p50_ms|latency_p95_ms|requests`).
  Per bucket: the mean of the windows' quantiles weighted by each window's `requests`, over every
  model the device served (the agent sends quantiles, not histograms, so this is an estimate of
  the bucket's quantile, exact when one window falls in the bucket). null: no request in it.
- throughput_per_s: the sum of `inference.<model>.requests` of the windows stamped in the bucket,
  divided by the bucket's length. null: no inference record in it (the agent sends none for an
  idle window, so a gap is "no traffic or not connected").
- errors: the sum of `inference.<model>.errors` in the bucket (a count). null as throughput.
- outbox: records waiting in the device's outbox at the end of the bucket, reconstructed from
  every record of any kind: created (`timestamp_ms`, device clock) at or before the bucket's end
  but received by the server (`received_at`) after it. Records still queued or dropped are not
  stored yet, so the bucket holding the device's last report takes the queue length that report
  gave (`observed.telemetry_queued`) when larger. null: nothing created, received or pending.
Buckets are by the record's `timestamp_ms` (device clock); `t` is each bucket's start, unix seconds.
Does not own HTTP (routes.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col

from fleet_server.errors import NotFoundError
from fleet_server.models import Device, TelemetryRecord, as_utc

INFERENCE_KIND = "inference"
MAX_ROWS = 100_000  # newest rows read per series request (memory bound)
_PREFIX = "inference."


@dataclass(frozen=True)
class Buckets:
    start_s: float
    step_s: float
    points: int

    def index(self, t_s: float) -> int | None:
        i = math.floor((t_s - self.start_s) / self.step_s)
        if i == self.points and t_s <= self.start_s + self.points * self.step_s:
            return self.points - 1  # the window's end belongs to the last bucket
        return i if 0 <= i < self.points else None

    def first_end_at_or_after(self, t_s: float) -> int:
        """Smallest i with bucket i's end >= t_s, clamped to 0..points."""
        i = math.ceil((t_s - self.start_s) / self.step_s - 1)
        return min(max(i, 0), self.points)


def _inference_windows(metrics: dict[str, float]) -> list[tuple[float, float, float, float]]:
    """(requests, p50, p95, errors) per model in one inference record."""
    out = []
    for key, requests in metrics.items():
        if not (key.startswith(_PREFIX) and key.endswith(".requests")):
            continue
        model = key[len(_PREFIX) : -len(".requests")]
        base = f"{_PREFIX}{model}."
        out.append(
            (
                float(requests),
                float(metrics.get(base + "latency_p50_ms", 0.0)),
                float(metrics.get(base + "latency_p95_ms", 0.0)),
                float(metrics.get(base + "errors", 0.0)),
            )
        )
    return out


def _latency_and_traffic(rows: list[tuple[int, dict[str, float]]], b: Buckets) -> dict[str, list[Any]]:
    n = b.points
    req, w50, w95, err = [0.0] * n, [0.0] * n, [0.0] * n, [0.0] * n
    seen = [False] * n
    for ts_ms, metrics in rows:
        i = b.index(ts_ms / 1000)
        if i is None or not isinstance(metrics, dict):
            continue
        seen[i] = True
        for requests, p50, p95, errors in _inference_windows(metrics):
            req[i] += requests
            w50[i] += p50 * requests
            w95[i] += p95 * requests
            err[i] += errors
    return {
        "latency_p50_ms": [w50[i] / req[i] if req[i] > 0 else None for i in range(n)],
        "latency_p95_ms": [w95[i] / req[i] if req[i] > 0 else None for i in range(n)],
        "throughput_per_s": [req[i] / b.step_s if seen[i] else None for i in range(n)],
        "errors": [err[i] if seen[i] else None for i in range(n)],
    }


def _outbox(rows: list[tuple[int, datetime | None]], b: Buckets, device: Device) -> list[int | None]:
    n = b.points
    delta = [0] * (n + 1)
    active = [False] * n
    for ts_ms, received in rows:
        created_s = ts_ms / 1000
        received_at = as_utc(received)
        received_s = received_at.timestamp() if received_at is not None else None
        for t in (created_s, received_s):
            i = b.index(t) if t is not None else None
            if i is not None:
                active[i] = True
        if received_s is None or received_s <= created_s:
            continue  # no wait, or the device clock runs ahead
        lo, hi = b.first_end_at_or_after(created_s), b.first_end_at_or_after(received_s)
        delta[lo] += 1
        delta[hi] -= 1
    out: list[int | None] = []
    running = 0
    for i in range(n):
        running += delta[i]
        out.append(running if running or active[i] else None)
    last_seen = as_utc(device.last_seen_at)
    queued = (device.observed or {}).get("telemetry_queued")
    i_seen = b.index(last_seen.timestamp()) if last_seen is not None else None
    if i_seen is not None and isinstance(queued, int) and queued > 0:
        out[i_seen] = max(out[i_seen] or 0, queued)
    return out


def device_series(
    session: Session, device_id: str, *, now_s: float, window_s: int, points: int
) -> dict[str, list[Any]]:
    """Three statements: the device, its inference records in the window, and the creation and
    arrival times of every record that arrived in the window or was created in it.

    Raises:
        NotFoundError: no such device.
    """
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"device {device_id!r} not found")
    b = Buckets(start_s=now_s - window_s, step_s=window_s / points, points=points)
    start_ms, end_ms = int(b.start_s * 1000), int(now_s * 1000)
    t = TelemetryRecord
    conn = session.connection()
    inference = conn.execute(
        select(col(t.timestamp_ms), col(t.metrics))
        .where(col(t.device_id) == device_id, col(t.kind) == INFERENCE_KIND)
        .where(col(t.timestamp_ms) >= start_ms, col(t.timestamp_ms) <= end_ms)
        .order_by(col(t.timestamp_ms).desc())
        .limit(MAX_ROWS)
    ).all()
    start_dt = datetime.fromtimestamp(b.start_s, UTC)
    arrivals = conn.execute(
        select(col(t.timestamp_ms), col(t.received_at))
        .where(col(t.device_id) == device_id, col(t.timestamp_ms) <= end_ms)
        .where((col(t.received_at) >= start_dt) | (col(t.timestamp_ms) >= start_ms))
        .order_by(col(t.timestamp_ms).desc())
        .limit(MAX_ROWS)
    ).all()
    return {
        "t": [round(b.start_s + i * b.step_s, 3) for i in range(points)],
        **_latency_and_traffic([(r[0], r[1]) for r in inference], b),
        "outbox": _outbox([(r[0], r[1]) for r in arrivals], b, device),
    }

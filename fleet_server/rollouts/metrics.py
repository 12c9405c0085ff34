"""Live model metric windows reported by devices: table, ingest observer, read API (issue 12 item 3).

Owns the `model_metric_window` table (changed together with
migrations/versions/0011_model_metrics.py), the decoding and checking of `kind="model_metrics"`
telemetry (a serialized `edgeloop.v1.ModelMetricsWindow`, see /work/notes/metrics_contract.md)
and `device_window_sums`, the one query the rollout engine runs to compare canary and control
devices over a time range.

The observer runs inside the ingest flush transaction and never raises for what a device sent:
every field is checked (integers that fit BIGINT/INTEGER columns, finite non-negative floats,
exactly 10 confidence bins or none, at most `MAX_CLASSES` class counts, bounded strings without
NUL, payload at most `MAX_PAYLOAD_BYTES`); a bad record is refused alone (logged with the device
id, counted in `REFUSALS`) and the other rows of the flush are stored. Idempotent per
(device_id, seq): a record seen again after a lost ack is ignored by the unique key.

Does not judge anything (gates.py does) nor decide which devices to compare (the engine does).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.protobuf.message import DecodeError
from sqlalchemy import JSON, BigInteger, Column, Connection, Float, Index, Integer, UniqueConstraint, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel

from fleet_server.ingest import TelemetryRow
from fleet_server.logsafe import text as safe_text
from fleet_server.models import UtcDateTime, utcnow
from protos.edgeloop.v1 import device_pb2

logger = logging.getLogger(__name__)

KIND = "model_metrics"
MAX_PAYLOAD_BYTES = 2048
CONFIDENCE_BINS = 10
MAX_CLASSES = 1000
MAX_WINDOW_S = 86_400
BIGINT_MAX = (1 << 63) - 1
INT32_MAX = (1 << 31) - 1
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_TEXT_LIMITS = {"model_name": 128, "model_version": 64, "deployment_id": 64}

REFUSALS: Counter[str] = Counter()
"""Refused model_metrics records since start, by reason key (process-wide)."""


class ModelMetricWindow(SQLModel, table=True):
    """One device's metrics for one serving model over one window, as the device reported them."""

    __tablename__ = "model_metric_window"
    __table_args__ = (
        UniqueConstraint("device_id", "seq", name="uq_model_metric_window_device_seq"),
        Index("ix_model_metric_window_device_start", "device_id", "window_start_ms"),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    device_id: str = Field(index=True, max_length=128)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    model_name: str = Field(default="", max_length=128)
    model_version: str = Field(default="", max_length=64)
    model_sha256: str = Field(default="", max_length=64, index=True)
    deployment_id: str = Field(default="", max_length=64)
    window_start_ms: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    window_s: int = 0
    predictions: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    errors: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    confidence_hist: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    class_counts: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    confidence_sum: float = Field(default=0.0, sa_column=Column(Float, nullable=False))
    confidence_sum_sq: float = Field(default=0.0, sa_column=Column(Float, nullable=False))
    latency_p50_ms: float = Field(default=0.0, sa_column=Column(Float, nullable=False))
    latency_p95_ms: float = Field(default=0.0, sa_column=Column(Float, nullable=False))
    latency_sum_ms: float = Field(default=0.0, sa_column=Column(Float, nullable=False))
    latency_sum_sq_ms: float = Field(default=0.0, sa_column=Column(Float, nullable=False))
    latency_count: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    drift_score: float = Field(default=-1.0, sa_column=Column(Float, nullable=False))
    shadow_agreement: float = Field(default=-1.0, sa_column=Column(Float, nullable=False))
    shadow_samples: int = 0
    received_at: datetime | None = Field(default=None, sa_column=Column(UtcDateTime(), nullable=True))


_table = ModelMetricWindow.__table__  # type: ignore[attr-defined]


class WindowRefused(ValueError):
    """The record is malformed; `reason` is a short key, the message says which field."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# ---------------------------------------------------------------- decoding


def _uint(msg: Any, name: str, limit: int = BIGINT_MAX) -> int:
    value = int(getattr(msg, name))
    if not 0 <= value <= limit:
        raise WindowRefused("out_of_range", f"{name}={value} out of range [0, {limit}]")
    return value


def _float(msg: Any, name: str, *, low: float = 0.0, high: float = math.inf) -> float:
    value = float(getattr(msg, name))
    if not math.isfinite(value) or not low <= value <= high:
        raise WindowRefused("out_of_range", f"{name} is not a finite number in [{low}, {high}]")
    return value


def _optional(msg: Any, name: str, *, high: float = math.inf) -> float:
    """A score where -1 means "none": -1 or a finite value in [0, high]."""
    value = float(getattr(msg, name))
    if value == -1.0:
        return value
    return _float(msg, name, high=high)


def _text(msg: Any, name: str) -> str:
    value = str(getattr(msg, name))
    if "\x00" in value:
        raise WindowRefused("text_has_nul", f"{name} contains a NUL character")
    if len(value) > _TEXT_LIMITS[name]:
        raise WindowRefused("text_too_long", f"{name} longer than {_TEXT_LIMITS[name]} characters")
    return value


def parse_window(payload: bytes) -> dict[str, Any]:
    """The checked column values of one serialized ModelMetricsWindow (without device, seq, time).

    Raises: WindowRefused (never anything else) when the payload is oversized, does not decode or
    holds a value its column cannot store or the contract does not allow.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WindowRefused("payload_too_large", f"{len(payload)} > {MAX_PAYLOAD_BYTES} bytes")
    try:
        msg = device_pb2.ModelMetricsWindow.FromString(payload)
    except (DecodeError, ValueError, TypeError, RuntimeError) as err:  # upb raises DecodeError
        raise WindowRefused("undecodable", f"payload does not decode: {safe_text(err, 120)}") from None
    name = _text(msg, "model_name")
    if not name:
        raise WindowRefused("missing_field", "model_name is empty")
    sha = msg.model_sha256
    if sha and not _SHA256_RE.fullmatch(sha):
        raise WindowRefused("bad_sha256", "model_sha256 is not 64 lowercase hex digits")
    predictions = _uint(msg, "predictions")
    hist = list(msg.confidence_hist)
    if len(hist) not in (0, CONFIDENCE_BINS):
        raise WindowRefused("bad_histogram", f"confidence_hist has {len(hist)} bins, not {CONFIDENCE_BINS}")
    counts = list(msg.class_counts)
    if len(counts) > MAX_CLASSES:
        raise WindowRefused("too_many_classes", f"{len(counts)} class counts > {MAX_CLASSES}")
    if sum(hist) > predictions or sum(counts) > predictions:
        raise WindowRefused("inconsistent", "more histogram or class counts than predictions")
    values: dict[str, Any] = {
        "model_name": name,
        "model_version": _text(msg, "model_version"),
        "model_sha256": sha,
        "deployment_id": _text(msg, "deployment_id"),
        "window_start_ms": _uint(msg, "window_start_ms"),
        "window_s": _uint(msg, "window_s", MAX_WINDOW_S),
        "predictions": predictions,
        "errors": _uint(msg, "errors"),
        "confidence_hist": hist,
        "class_counts": counts,
        "confidence_sum": _float(msg, "confidence_sum", high=float(predictions) * (1 + 1e-6) + 1e-6),
        "confidence_sum_sq": _float(msg, "confidence_sum_sq", high=float(predictions) * (1 + 1e-6) + 1e-6),
        "latency_p50_ms": _float(msg, "latency_p50_ms"),
        "latency_p95_ms": _float(msg, "latency_p95_ms"),
        "latency_sum_ms": _float(msg, "latency_sum_ms"),
        "latency_sum_sq_ms": _float(msg, "latency_sum_sq_ms"),
        "latency_count": _uint(msg, "latency_count"),
        "drift_score": _optional(msg, "drift_score"),
        "shadow_agreement": _optional(msg, "shadow_agreement", high=1.0),
        "shadow_samples": _uint(msg, "shadow_samples", INT32_MAX),
    }
    if values["window_s"] == 0:
        raise WindowRefused("out_of_range", "window_s is 0")
    return values


# ---------------------------------------------------------------- ingest


def model_metrics_observer(conn: Connection, rows: list[tuple[str, TelemetryRow]]) -> None:
    """TelemetryObserver for IngestWriter(observers=[...]): stores every valid model_metrics record."""
    values: dict[tuple[str, int], dict[str, Any]] = {}
    now = utcnow()
    for device_id, row in rows:
        if row.kind != KIND or (device_id, row.seq) in values:
            continue
        try:
            parsed = parse_window(row.payload)
        except WindowRefused as err:
            REFUSALS[err.reason] += 1
            logger.warning(
                "model_metrics record refused device=%s seq=%d: %s",
                safe_text(device_id, 128),
                row.seq,
                safe_text(err, 200),
            )
            continue
        values[(device_id, row.seq)] = {"device_id": device_id, "seq": row.seq, "received_at": now, **parsed}
    if not values:
        return
    dialect = conn.dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(_table).on_conflict_do_nothing(index_elements=["device_id", "seq"])
    conn.execute(stmt, [values[k] for k in sorted(values)])


# ---------------------------------------------------------------- read API


@dataclass(frozen=True)
class DeviceWindowSums:
    """One device's windows summed over [since_ms, until_ms).

    `model_sha256` is the filter when one was given, else the model of the device's latest window
    in the range (the sums then cover every model the device served). `latency_p95_ms_max` is the
    largest per-window p95 (0 if no window had a latency); `drift_score_mean` the mean over windows
    that had a score and `shadow_agreement_min` the smallest measured agreement (-1 if none).
    `class_counts` has the length of the device's longest reported vector.
    """

    device_id: str
    model_sha256: str
    windows: int
    predictions: int
    errors: int
    confidence_hist: tuple[int, ...]
    class_counts: tuple[int, ...]
    confidence_sum: float
    confidence_sum_sq: float
    latency_sum_ms: float
    latency_sum_sq_ms: float
    latency_count: int
    latency_p95_ms_max: float
    drift_score_mean: float  # -1 if none
    shadow_agreement_min: float  # -1 if none


class _Acc:
    __slots__ = (
        "classes", "conf", "conf_sq", "drift_n", "drift_sum", "errors", "hist", "lat", "lat_n",
        "lat_sq", "p95", "predictions", "sha", "shadow", "start", "windows",
    )  # fmt: skip

    def __init__(self) -> None:
        self.sha, self.start = "", -1
        self.windows = self.predictions = self.errors = self.lat_n = self.drift_n = 0
        self.hist = [0] * CONFIDENCE_BINS
        self.classes: list[int] = []
        self.conf = self.conf_sq = self.lat = self.lat_sq = self.p95 = self.drift_sum = 0.0
        self.shadow = -1.0

    def add(self, r: Any) -> None:
        if r.window_start_ms >= self.start:
            self.sha, self.start = r.model_sha256, r.window_start_ms
        self.windows += 1
        self.predictions += r.predictions
        self.errors += r.errors
        for i, c in enumerate(r.confidence_hist[:CONFIDENCE_BINS]):
            self.hist[i] += int(c)
        counts = r.class_counts
        if len(counts) > len(self.classes):
            self.classes.extend([0] * (len(counts) - len(self.classes)))
        for i, c in enumerate(counts):
            self.classes[i] += int(c)
        self.conf += r.confidence_sum
        self.conf_sq += r.confidence_sum_sq
        self.lat += r.latency_sum_ms
        self.lat_sq += r.latency_sum_sq_ms
        self.lat_n += r.latency_count
        self.p95 = max(self.p95, r.latency_p95_ms)
        if r.drift_score >= 0:
            self.drift_sum += r.drift_score
            self.drift_n += 1
        if r.shadow_agreement >= 0 and (self.shadow < 0 or r.shadow_agreement < self.shadow):
            self.shadow = r.shadow_agreement

    def result(self, device_id: str) -> DeviceWindowSums:
        return DeviceWindowSums(
            device_id=device_id,
            model_sha256=self.sha,
            windows=self.windows,
            predictions=self.predictions,
            errors=self.errors,
            confidence_hist=tuple(self.hist),
            class_counts=tuple(self.classes),
            confidence_sum=self.conf,
            confidence_sum_sq=self.conf_sq,
            latency_sum_ms=self.lat,
            latency_sum_sq_ms=self.lat_sq,
            latency_count=self.lat_n,
            latency_p95_ms_max=self.p95,
            drift_score_mean=self.drift_sum / self.drift_n if self.drift_n else -1.0,
            shadow_agreement_min=self.shadow,
        )


_READ_COLUMNS = (
    "device_id", "model_sha256", "window_start_ms", "predictions", "errors", "confidence_hist",
    "class_counts", "confidence_sum", "confidence_sum_sq", "latency_sum_ms", "latency_sum_sq_ms",
    "latency_count", "latency_p95_ms", "drift_score", "shadow_agreement",
)  # fmt: skip


def device_window_sums(
    conn_or_session: Connection | Session,
    device_ids: Sequence[str],
    since_ms: int,
    until_ms: int,
    model_sha256: str | None = None,
) -> dict[str, DeviceWindowSums]:
    """Each listed device's windows with since_ms <= window_start_ms < until_ms, summed.

    One query (the device ids bound as one expanding IN list); devices without a window in the
    range are absent from the answer. Works on a Core connection or an ORM/SQLModel session (the
    session's connection, inside its transaction).
    """
    ids = sorted(set(device_ids))
    if not ids or until_ms <= since_ms:
        return {}
    conn = conn_or_session.connection() if isinstance(conn_or_session, Session) else conn_or_session
    c = _table.c
    query = select(*(c[name] for name in _READ_COLUMNS)).where(
        c.device_id.in_(ids), c.window_start_ms >= since_ms, c.window_start_ms < until_ms
    )
    if model_sha256 is not None:
        query = query.where(c.model_sha256 == model_sha256)
    acc: dict[str, _Acc] = {}
    for r in conn.execute(query):
        acc.setdefault(r.device_id, _Acc()).add(r)
    return {device_id: a.result(device_id) for device_id, a in sorted(acc.items())}

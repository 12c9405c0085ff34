"""Telemetry observer: drift records -> drift_episode / drift_sketch rows, inside the ingest flush.

Owns decoding of `kind="drift"` (edgeloop.v1.DriftEpisode) and `kind="drift_sketch"`
(edgeloop.v1.DriftSketch) payloads and the idempotent upserts: an episode row is keyed by
(device, monitor_id, episode_id) and only a record with a higher telemetry seq than the one last
applied changes it; a sketch row is keyed by (device, seq). A payload that does not decode, or
holds a value its column cannot store (an integer over 2^63-1, a NaN severity, a NUL in a name),
is logged, counted in `SKIPPED` and skipped (raising would roll back the device's flush).
Does not classify anything (analysis.py).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any

from google.protobuf.message import DecodeError
from sqlalchemy import Connection, and_, insert, select, update

from fleet_server.drift.models import DriftEpisodeRow, DriftSketchRow
from fleet_server.ingest import TelemetryRow
from fleet_server.logsafe import text as safe_text
from fleet_server.models import utcnow
from protos.edgeloop.v1 import drift_pb2

logger = logging.getLogger(__name__)

EPISODE_KIND = "drift"
SKETCH_KIND = "drift_sketch"
_STATE = {drift_pb2.DRIFT_EPISODE_OPEN: "open", drift_pb2.DRIFT_EPISODE_CLOSED: "closed"}
_episodes = DriftEpisodeRow.__table__  # type: ignore[attr-defined]
_sketches = DriftSketchRow.__table__  # type: ignore[attr-defined]
_INT64 = (-(2**63), 2**63 - 1)

SKIPPED: Counter[str] = Counter()
"""Payloads skipped since start, by kind (process-wide; drift payloads never fail a flush)."""


def drift_observer(conn: Connection, rows: list[tuple[str, TelemetryRow]]) -> None:
    """TelemetryObserver for IngestWriter(observers=[...])."""
    for device_id, row in sorted(rows, key=lambda r: (r[0], r[1].seq)):
        if row.kind not in (EPISODE_KIND, SKETCH_KIND):
            continue
        try:
            if row.kind == EPISODE_KIND:
                _apply_episode(conn, device_id, row)
            else:
                _apply_sketch(conn, device_id, row)
        except (DecodeError, ValueError) as err:
            SKIPPED[row.kind] += 1
            logger.warning(
                "drift payload skipped device=%s seq=%d kind=%s: %s",
                device_id,
                row.seq,
                row.kind,
                safe_text(err, 200),
            )


def _ints(msg: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(msg, name)
        if not _INT64[0] <= value <= _INT64[1]:
            raise ValueError(f"{name}={value} does not fit a signed 64-bit integer")


def _finite(msg: Any, names: tuple[str, ...]) -> None:
    for name in names:
        if not math.isfinite(getattr(msg, name)):
            raise ValueError(f"{name} is not a finite number")


def _texts(msg: Any, names: tuple[str, ...]) -> None:
    for name in names:
        if "\x00" in getattr(msg, name):
            raise ValueError(f"{name} contains a NUL character")


def signature_of(stream: str, evidence: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """Episode signature and the features it involves.

    stuck: stuck-sensor runs and only what they cause (see `_only_stuck`); bad_input: rows the
    monitor could not use (wrong width or type, missing features, non-finite values: a mis-wired
    feeder, not the world changing); concept / output: label or output stream; joint: only the
    multivariate channel; single_feature / multi_feature: per-feature location/scale channels.
    """
    features = sorted({str(e["feature"]) for e in evidence if e.get("feature")})
    kinds = {str(e["kind"]) for e in evidence}
    if "stuck" in kinds and _only_stuck(evidence):
        return "stuck", features
    if "bad_input" in kinds:
        return "bad_input", features
    if stream == "labels":
        return "concept", features
    if stream == "outputs":
        return "output", features
    if not features:
        return "joint", features
    return ("single_feature" if len(features) == 1 else "multi_feature"), features


def _only_stuck(evidence: list[dict[str, Any]]) -> bool:
    """A stuck sensor explains the episode: besides the stuck runs there is at most the joint
    channel and the location/scale shift a frozen value causes on those same features. Any other
    evidence (another feature moved, a reference-constant feature changed) is the world changing,
    which can also freeze some inputs: per-pixel monitoring of turned camera images shows border
    pixels stuck at 0 next to shifted ones, and that is a population shift, not a broken sensor."""
    stuck = {e.get("feature") for e in evidence if e["kind"] == "stuck"}
    for e in evidence:
        kind = str(e["kind"])
        if kind in ("stuck", "joint") or not e.get("feature"):
            continue
        if kind not in ("location", "scale") or e.get("feature") not in stuck:
            return False
    return True


def _evidence(msg: drift_pb2.DriftEpisode) -> list[dict[str, Any]]:
    return [
        {
            "channel": e.channel,
            "kind": e.kind,
            "feature": e.feature,
            "statistic": e.statistic if math.isfinite(e.statistic) else None,
            "threshold": e.threshold if math.isfinite(e.threshold) else None,
            "window_rows": e.window_rows,
        }
        for e in msg.evidence
    ]


def _apply_episode(conn: Connection, device_id: str, row: TelemetryRow) -> None:
    msg = drift_pb2.DriftEpisode.FromString(row.payload)
    if msg.state not in _STATE or not msg.monitor_id:
        raise ValueError(f"episode without state or monitor id (state={msg.state})")
    _ints(msg, ("episode_id", "start_sample", "detected_sample", "end_sample", "samples_seen"))
    _finite(msg, ("severity", "budget_per_10k"))
    _texts(msg, ("monitor_id", "stream", "model_name", "model_version"))
    for e in msg.evidence:
        _texts(e, ("channel", "kind", "feature"))
    evidence = _evidence(msg)
    signature, features = signature_of(msg.stream, evidence)
    values = {
        "stream": msg.stream[:16],
        "state": _STATE[msg.state],
        "model_name": msg.model_name[:128],
        "model_version": msg.model_version[:64],
        "start_sample": msg.start_sample,
        "detected_sample": msg.detected_sample,
        "end_sample": msg.end_sample,
        "samples_seen": msg.samples_seen,
        "opened_ms": msg.opened_ms,
        "closed_ms": msg.closed_ms,
        "severity": msg.severity,
        "budget_per_10k": msg.budget_per_10k,
        "signature": signature,
        "features": features,
        "evidence": evidence,
        "last_seq": row.seq,
        "updated_at": utcnow(),
    }
    key = and_(
        _episodes.c.device_id == device_id,
        _episodes.c.monitor_id == msg.monitor_id[:32],
        _episodes.c.episode_id == msg.episode_id,
    )
    last = conn.execute(select(_episodes.c.last_seq).where(key)).scalar_one_or_none()
    if last is None:
        ident = {"device_id": device_id, "monitor_id": msg.monitor_id[:32], "episode_id": msg.episode_id}
        conn.execute(insert(_episodes).values(**ident, **values))
    elif row.seq > last:
        conn.execute(update(_episodes).where(key).values(**values))


def _apply_sketch(conn: Connection, device_id: str, row: TelemetryRow) -> None:
    msg = drift_pb2.DriftSketch.FromString(row.payload)
    _ints(msg, ("samples", "samples_total"))
    _finite(msg, ("budget_per_10k",))
    _texts(msg, ("monitor_id", "model_name", "model_version"))
    if any("\x00" in b.feature for b in msg.bins) or any("\x00" in k for k in (*msg.missing, *msg.nonfinite)):
        raise ValueError("feature name contains a NUL character")
    exists = conn.execute(
        select(_sketches.c.id).where(_sketches.c.device_id == device_id, _sketches.c.seq == row.seq)
    ).first()
    if exists is not None:
        return
    bad = {
        "bad_shape": msg.bad_shape,
        "missing": dict(msg.missing),
        "nonfinite": dict(msg.nonfinite),
        "bad_outputs": msg.bad_outputs,
        "bad_labels": msg.bad_labels,
        "episodes_opened_total": msg.episodes_opened_total,
        "open_episodes": msg.open_episodes,
    }
    conn.execute(
        insert(_sketches).values(
            device_id=device_id,
            seq=row.seq,
            monitor_id=msg.monitor_id[:32],
            model_name=msg.model_name[:128],
            model_version=msg.model_version[:64],
            from_ms=msg.from_ms,
            to_ms=msg.to_ms,
            samples=msg.samples,
            samples_total=msg.samples_total,
            budget_per_10k=msg.budget_per_10k,
            bins={b.feature: list(b.counts) for b in msg.bins},
            bad_inputs=bad,
        )
    )

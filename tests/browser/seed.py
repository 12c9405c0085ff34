"""Seed a server's database directly for the scale tests and the console benchmark: N devices in
one bulk insert, telemetry for a few of them, and rows whose text fields carry XSS attempts.

Owns: the rows; the schema is the server's (the server has run its migrations before seeding).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Engine

from fleet_server.db import make_engine
from tests.helpers.procs import ServerProc

PROFILES = ("pi", "jetson", "coral", "generic-x86")
SITES = ("north", "south", "east", "west", "lab")
XSS = "<img src=x onerror=window.__xss=1>"
XSS_SCRIPT = "<script>window.__xss=2</script>"


def device_id(i: int) -> str:
    return f"dev-{i:05d}"


def engine_of(server: ServerProc) -> Engine:
    return make_engine(server.database_url or f"sqlite:///{server.data_dir / 'fleet.db'}")


@dataclass(frozen=True)
class Seeded:
    devices: int
    with_telemetry: list[str]
    xss_device: str


def seed_devices(engine: Engine, n: int, telemetry_for: int = 5, points: int = 120) -> Seeded:
    """`n` devices (ids dev-00000...), mixed profiles and labels, seen over the last hour; the
    first `telemetry_for` get `points` telemetry records each over the last hour; the last one
    carries an XSS attempt in a label value."""
    from fleet_server.models import Device, TelemetryRecord

    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        labels = {"site": SITES[i % len(SITES)], "rack": str(i % 40)}
        if i == n - 1:
            labels["note"] = XSS
        seen = now - timedelta(seconds=(i * 7) % 3600)
        rows.append(
            {
                "id": device_id(i),
                "profile": PROFILES[i % len(PROFILES)],
                "labels": labels,
                "status": "revoked" if i % 500 == 499 else "active",
                "agent_version": "0.1.0",
                "enrolled_at": now - timedelta(days=1),
                "first_seen_at": now - timedelta(days=1),
                "last_seen_at": seen,
                "observed": {"resources": {"mem_total_bytes": 1 << 30}},
                "desired_generation": 1,
                "telemetry_dropped_total": 0,
                "transport": "mqtt" if i % 3 == 0 else "grpc",
            }
        )
    tele: list[dict[str, Any]] = []
    now_ms = int(time.time() * 1000)
    for i in range(min(telemetry_for, n)):
        for k in range(points):
            t = now_ms - (points - k) * 30_000
            tele.append(
                {
                    "device_id": device_id(i),
                    "seq": k + 1,
                    "timestamp_ms": t,
                    "kind": "inference",
                    "metrics": {
                        "latency_p50_ms": 2.0 + (k % 7) * 0.1,
                        "latency_p95_ms": 4.0 + (k % 11) * 0.2,
                        "throughput_per_s": 50.0 + (k % 13),
                        "errors": float(k % 17 == 0),
                        "outbox": float(k % 5),
                    },
                    "payload": b"",
                    "received_at": datetime.fromtimestamp(t / 1000, UTC),
                }
            )
    with engine.begin() as conn:
        for start in range(0, len(rows), 2000):
            conn.execute(insert(Device.__table__), rows[start : start + 2000])  # type: ignore[arg-type]
        if tele:
            conn.execute(insert(TelemetryRecord.__table__), tele)  # type: ignore[arg-type]
    return Seeded(n, [device_id(i) for i in range(min(telemetry_for, n))], device_id(n - 1))


def seed_xss(engine: Engine, on_device: str) -> None:
    """XSS attempts where the console shows server text: a release's model name, version and
    notes, a registry model name and version detail, and a drift episode's evidence."""
    from fleet_server.drift.models import DriftEpisodeRow
    from fleet_server.ota.models import OtaRelease
    from fleet_server.registry.models import ModelVersion, RegisteredModel

    now = datetime.now(UTC)
    now_ms = int(time.time() * 1000)
    with engine.begin() as conn:
        conn.execute(
            insert(OtaRelease.__table__),  # type: ignore[arg-type]
            [
                {
                    "model_name": XSS,
                    "model_version": XSS_SCRIPT,
                    "target_path": "xss/model.onnx",
                    "sha256": "0" * 64,
                    "length": 1,
                    "custom": {"notes": XSS, "release_notes": XSS},
                    "drift_reference_sha256": "",
                    "created_by": XSS,
                    "created_at": now,
                    "request_sha256": "",
                }
            ],
        )
        conn.execute(
            insert(RegisteredModel.__table__),  # type: ignore[arg-type]
            [{"name": XSS, "auto_release": False, "created_by": XSS, "created_at": now}],
        )
        conn.execute(
            insert(ModelVersion.__table__),  # type: ignore[arg-type]
            [
                {
                    "name": XSS,
                    "version": 1,
                    "source": "upload",
                    "status": "registered",
                    "detail": XSS,
                    "artifact_sha256": "1" * 64,
                    "compile_spec": {},
                    "datasets": {},
                    "lineage": {"notes": XSS},
                    "artifacts": {},
                    "releases": {},
                    "created_by": XSS,
                    "created_at": now,
                    "updated_at": now,
                }
            ],
        )
        conn.execute(
            insert(DriftEpisodeRow.__table__),  # type: ignore[arg-type]
            [
                {
                    "device_id": on_device,
                    "monitor_id": "m1",
                    "episode_id": 1,
                    "stream": "input",
                    "state": "open",
                    "model_name": XSS,
                    "model_version": "1",
                    "start_sample": 10,
                    "detected_sample": 20,
                    "end_sample": 0,
                    "samples_seen": 100,
                    "opened_ms": now_ms - 60_000,
                    "closed_ms": 0,
                    "severity": 3.5,
                    "budget_per_10k": 1.0,
                    "signature": "sig",
                    "features": [XSS],
                    "evidence": [
                        {"feature": XSS, "statistic": 0.4, "reference": [0.1, 0.2], "observed": [0.3]}
                    ],
                    "last_seq": 1,
                    "updated_at": now,
                }
            ],
        )

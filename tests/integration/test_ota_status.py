"""The OTA status observer on SQLite and PostgreSQL: a device writes only into deployments that
target it; every field of a report is checked, and a bad report is refused alone (counted and
logged with the device id), never stored and never failing the flush for the other reports."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from fleet_server.db import make_engine
from fleet_server.ingest import TelemetryRow
from fleet_server.migrate import upgrade
from fleet_server.ota import status
from fleet_server.ota.models import OtaDeviceStatus

_table = OtaDeviceStatus.__table__  # type: ignore[attr-defined]


def _row(seq: int, payload: Any, *, raw: bytes | None = None) -> TelemetryRow:
    data = raw if raw is not None else json.dumps(payload).encode()
    return TelemetryRow(seq=seq, timestamp_ms=seq, kind="ota", metrics={}, payload=data)


def _report(deployment: str, transition: int, to: str, **extra: Any) -> dict[str, Any]:
    return {"deployment_id": deployment, "release_seq": 1, "transition": transition, "to": to,
            "event": "downloaded", "detail": "ok", **extra}  # fmt: skip


@pytest.fixture
def engine(tmp_path: Path, database_url: str) -> Any:
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 's.db'}")
    upgrade(engine)
    with engine.begin() as conn:  # dep_a targets dev-a only, dep_b targets dev-b only
        for device, dep in (("dev-a", "dep_a"), ("dev-b", "dep_b")):
            conn.execute(_table.insert().values(device_id=device, deployment_id=dep, release_seq=1))
    yield engine
    engine.dispose()


def _rows(engine: Any) -> list[tuple[str, str, str, int]]:
    with engine.connect() as conn:
        found = conn.execute(select(_table)).mappings().all()
    return sorted((r["device_id"], r["deployment_id"], r["state"], r["transition"]) for r in found)


def test_a_device_cannot_write_into_a_deployment_aimed_at_another(
    engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    before = status.REFUSALS["unknown deployment"]
    with caplog.at_level(logging.WARNING, logger="fleet_server.ota.status"), engine.begin() as conn:
        status.ota_status_observer(
            conn,
            [
                ("dev-a", _row(1, _report("dep_b", 99, "committed"))),  # foreign deployment
                ("dev-a", _row(2, _report("dep_nope", 5, "committed"))),  # unknown deployment
                ("dev-a", _row(3, _report("dep_a", 2, "verifying"))),  # its own: stored
            ],
        )
    assert _rows(engine) == [("dev-a", "dep_a", "verifying", 2), ("dev-b", "dep_b", "assigned", 0)]
    assert status.REFUSALS["unknown deployment"] == before + 2
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any("device_id='dev-a'" in m and "dep_b" in m for m in refused), refused


@pytest.mark.parametrize(
    "payload",
    [
        _report("dep_a", 1 << 63, "committed"),  # transition beyond BIGINT
        _report("dep_a", 3, "committed", release_seq=1 << 64),
        _report("dep_a", -1, "committed"),
        _report("dep_a", 3.5, "committed"),
        _report("dep_a", True, "committed"),
        _report("dep_a", "3", "committed"),
        _report("dep_a", 3, "committed", detail={"x": 1}),
        _report("dep_a", 3, "committed", event="x" * 100),
        _report("dep_a", 3, "no such state"),
        _report("dep_a" + "x" * 70, 3, "committed"),
        _report("dep_a\nforged", 3, "committed"),
        {"deployment_id": "dep_a", "to": "committed"},  # no transition
        [1, 2, 3],
        None,
    ],
)
def test_every_field_is_checked_and_a_bad_report_is_refused_alone(engine: Any, payload: Any) -> None:
    before = status.REFUSALS["malformed"]
    with engine.begin() as conn:
        status.ota_status_observer(
            conn, [("dev-a", _row(1, payload)), ("dev-b", _row(2, _report("dep_b", 4, "committed")))]
        )
    assert status.REFUSALS["malformed"] == before + 1
    assert _rows(engine) == [("dev-a", "dep_a", "assigned", 0), ("dev-b", "dep_b", "committed", 4)]


@pytest.mark.parametrize("raw", [b"not json", b"\xff\xfe", b"[" * 100000, b'{"a": 1e999}', b" " * 10000])
def test_undecodable_payloads_are_refused(engine: Any, raw: bytes) -> None:
    with engine.begin() as conn:
        status.ota_status_observer(conn, [("dev-a", _row(1, None, raw=raw))])
    assert _rows(engine)[0] == ("dev-a", "dep_a", "assigned", 0)


def test_refusal_and_long_detail_are_stored_bounded(engine: Any) -> None:
    with engine.begin() as conn:
        status.ota_status_observer(
            conn,
            [
                (
                    "dev-a",
                    _row(1, _report("dep_a", 7, "refused", event="metadata_refused", detail="r\x1b" * 600)),
                )
            ],
        )
    with engine.connect() as conn:
        row = conn.execute(select(_table).where(_table.c.device_id == "dev-a")).mappings().one()
    assert (row["state"], row["event"], len(row["detail"])) == ("refused", "metadata_refused", 1024)
    assert "\x1b" not in row["detail"]

"""One device never breaks the others (issue 11, items 1 and 9), against a real server.

A device flooding valid-but-unstorable values (uint64 >= 2^63 in seq and telemetry_dropped_total,
an OTA transition >= 2^63) while a well-behaved device syncs: the good device is never aborted,
every one of its records is stored exactly once and acked, the bad records are refused one by
one and counted. And 200 hostile enrollment calls leave a bounded log with no forged line.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import func, select
from sqlmodel import SQLModel

from fleet_server.db import make_engine
from fleet_server.models import TelemetryRecord
from protos.edgeloop.v1 import device_pb2 as pb
from protos.edgeloop.v1 import device_pb2_grpc
from tests.helpers.inproc import LiveServer, RawStream, device_channel, enroll, live, prepare, report

BIG = 2**63
_telemetry = SQLModel.metadata.tables[TelemetryRecord.__tablename__]


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[LiveServer]:
    # A rate limit high enough that the flood reaches the writer instead of being throttled.
    settings, tokens = prepare(
        tmp_path / "srv", database_url, device_max_messages_per_s=500, device_burst=1000
    )
    yield from live(settings, tokens)


def _record(seq: int, kind: str = "test", payload: bytes = b"") -> pb.TelemetryRecord:
    return pb.TelemetryRecord(
        seq=seq, timestamp_ms=1_700_000_000_000, kind=kind, metrics={"v": 1.0}, payload=payload
    )


def _flood(server: LiveServer, creds: object, stop: threading.Event, seen: dict[str, int]) -> None:
    """Extreme values in a loop; a few valid records ride along in the same batches."""
    ota = json.dumps(
        {"deployment_id": "dep-x", "state": "downloading", "event": "x", "transition": BIG}
    ).encode()
    valid_seq = 10_000
    while not stop.is_set():
        with device_channel(server, creds) as ch:  # type: ignore[arg-type]
            stream = RawStream(ch)
            try:
                stream.next_of("desired")
                for i in range(40):
                    if stop.is_set():
                        break
                    valid_seq += 1
                    batch = pb.TelemetryBatch(
                        batch_id=i,
                        records=[
                            _record(BIG + i),
                            _record(2**64 - 1 - i),
                            _record(valid_seq),
                            _record(valid_seq + 100_000, kind="ota", payload=ota),
                        ],
                    )
                    stream.send(pb.SyncRequest(telemetry=batch))
                    ack = stream.next_of("telemetry_ack").telemetry_ack
                    seen["rejected"] += len(ack.rejected)
                    seen["stored"] += len(ack.seqs)
                    bad_report = report("dev-bad", i + 1)
                    bad_report.report.telemetry_dropped_total = BIG + i
                    stream.send(bad_report)
                    reason = stream.next_of("report_ack").report_ack.rejected_reason
                    seen["reports_rejected"] += reason == "telemetry_dropped_total_out_of_range"
                stream.close()
            except grpc.RpcError:
                seen["aborted"] += 1


def test_flood_of_extreme_values_never_hurts_a_well_behaved_device(
    server: LiveServer, tmp_path: Path
) -> None:
    bad = enroll(server, "dev-bad", server.bootstrap_token(), tmp_path)
    good = enroll(server, "dev-good", server.bootstrap_token(), tmp_path)
    stop = threading.Event()
    seen = {"rejected": 0, "stored": 0, "reports_rejected": 0, "aborted": 0}
    flooder = threading.Thread(target=_flood, args=(server, bad, stop, seen), daemon=True)
    flooder.start()

    acked: list[int] = []
    try:
        with device_channel(server, good) as ch:
            stream = RawStream(ch)
            stream.next_of("desired")
            for batch_id in range(1, 61):  # 300 records; every batch waits for its ack
                seqs = list(range(batch_id * 5 - 4, batch_id * 5 + 1))
                stream.send(
                    pb.SyncRequest(
                        telemetry=pb.TelemetryBatch(batch_id=batch_id, records=[_record(s) for s in seqs])
                    )
                )
                ack = stream.next_of("telemetry_ack").telemetry_ack
                assert ack.batch_id == batch_id and list(ack.seqs) == seqs and not ack.rejected
                acked.extend(ack.seqs)
                if batch_id % 10 == 0:
                    stream.send(report("dev-good", batch_id))
                    assert stream.next_of("report_ack").report_ack.rejected_reason == ""
            stream.close()
    finally:
        stop.set()
        flooder.join(timeout=60)
    assert acked == list(range(1, 301))

    engine = make_engine(server.settings.resolved_database_url())
    with engine.connect() as conn:
        per_seq = conn.execute(
            select(_telemetry.c.seq, func.count())
            .where(_telemetry.c.device_id == "dev-good")
            .group_by(_telemetry.c.seq)
        ).all()
        bad_big = conn.execute(
            select(func.count()).where(_telemetry.c.device_id == "dev-bad", _telemetry.c.seq >= 10_000)
        ).scalar_one()
    engine.dispose()
    assert sorted(seq for seq, _ in per_seq) == list(range(1, 301)) and {n for _, n in per_seq} == {1}

    # The flood really ran, was refused record by record, and its valid records were stored.
    assert seen["rejected"] >= 2 * 5 and seen["reports_rejected"] >= 5 and seen["stored"] >= 5
    assert bad_big >= 5
    ingest = server.client.get("/healthz").json()["ingest"]
    assert ingest["rejected_by_device"].get("dev-bad", 0) >= seen["rejected"] + seen["reports_rejected"]
    assert "dev-good" not in ingest["rejected_by_device"]
    assert ingest["rejected_reasons"]["seq_out_of_range"] >= seen["rejected"] // 2
    assert ingest["rejected_reasons"]["telemetry_dropped_total_out_of_range"] >= seen["reports_rejected"]

    # The count is visible on the device itself once it sends a report that is stored.
    with device_channel(server, bad) as ch:
        stream = RawStream(ch)
        stream.send(report("dev-bad", 999))
        assert stream.next_of("report_ack").report_ack.rejected_reason == ""
        stream.close()
    device = server.client.get("/api/v1/devices/dev-bad", headers=server.auth("viewer")).json()
    assert device["observed"]["ingest_rejected_total"] >= seen["rejected"]


def test_hostile_enrollment_calls_leave_a_bounded_log_without_forged_lines(
    server: LiveServer, tmp_path: Path
) -> None:
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    codes: set[grpc.StatusCode] = set()
    detail_sizes: list[int] = []
    forged = "x\nERROR fleet_server.security admin token accepted for attacker\r\n" + "A" * 50_000
    try:
        before = len(sink.getvalue())
        with grpc.secure_channel(server.enroll_target, grpc.ssl_channel_credentials(server.ca_pem)) as ch:
            stub = device_pb2_grpc.DeviceServiceStub(ch)  # type: ignore[no-untyped-call]
            for i in range(200):
                try:
                    stub.Enroll(
                        pb.EnrollRequest(
                            bootstrap_token=f"bogus{i}", csr_pem=b"x", device_id=f"d{i}{forged}"
                        ),
                        timeout=10,
                    )
                except grpc.RpcError as err:
                    codes.add(err.code())
                    detail_sizes.append(len(err.details() or ""))
        logged = sink.getvalue()[before:]
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert codes == {grpc.StatusCode.INVALID_ARGUMENT} and len(detail_sizes) == 200
    assert max(detail_sizes) <= 400  # the refusal does not echo the 50 KB id back either
    lines = logged.splitlines()
    refused = [line for line in lines if "enrollment refused" in line]
    # Bounded: a burst per peer and a trickle after, not 200 lines (nor 200 x 50 KB).
    assert 1 <= len(refused) <= 20, len(refused)
    assert len(logged.encode()) < 20_000, len(logged.encode())
    assert not any(line.startswith("ERROR fleet_server.security") for line in lines)
    assert all("admin token accepted" not in line or "\\n" in line for line in refused)

    # A device id with a newline is refused on its own (before the token is even looked at),
    # so the token stays usable.
    token = server.bootstrap_token()
    with pytest.raises(grpc.RpcError) as newline:
        enroll(server, "dev-ok\n", token, tmp_path)
    assert newline.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "control characters" in (newline.value.details() or "")
    assert enroll(server, "dev-ok", token, tmp_path).device_id == "dev-ok"

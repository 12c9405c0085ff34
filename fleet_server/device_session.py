"""What a device's Sync message means, whichever transport carried it (gRPC stream or MQTT).

One `DeviceSession` per connected device: its token bucket, the validation of each SyncRequest
(report, telemetry, command result, certificate renewal), submission to the group-commit ingest,
and the SyncResponse acks sent only after the rows are committed. A record that cannot be stored
is refused alone, counted, and acked back as rejected (`TelemetryAck.rejected`,
`ReportAck.rejected_reason`), so the device drops it instead of resending; the session goes on.

Transports plug in two callbacks: `close(code, detail)` ends the session with a gRPC status name
("RESOURCE_EXHAUSTED", "UNAVAILABLE", ...), and the per-message `reply(response | None)` is
called exactly once for every message `handle` accepted, when it is settled (committed and
acked, refused, or failed): the MQTT bridge acks the broker's QoS 1 delivery there.

Does not authenticate (the transport knows who is talking), does not write to the database
itself (ingest.py), and does not know gRPC or paho.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

from google.protobuf.message import DecodeError
from sqlalchemy import Engine

from fleet_server.certs import renewal
from fleet_server.grpc_api.codec import RecordRejectedError, report_from_proto, telemetry_from_proto
from fleet_server.ingest import IngestWriter, RowsRefusedError, StorageUnavailableError
from fleet_server.logsafe import RateLimitedLog
from fleet_server.logsafe import text as safe_text
from fleet_server.observability.logs import log_context
from fleet_server.pki import FleetCA
from fleet_server.ratelimit import TokenBucket
from fleet_server.settings import Settings
from protos.edgeloop.v1 import device_pb2 as pb

logger = logging.getLogger(__name__)

Reply = Callable[[pb.SyncResponse | None], None]
Close = Callable[[str, str], None]


class Renewer(Protocol):
    """(device_id, csr_pem[, current_cert_pem]) -> RenewResponse; synchronous (a worker thread runs it).

    `current_cert_pem` is the certificate the session authenticated with, where the transport
    sees it (gRPC; on MQTT the broker terminates TLS): a CSR for that certificate's key is refused."""

    def __call__(
        self, device_id: str, csr_pem: bytes, current_cert_pem: bytes | None = None
    ) -> pb.RenewResponse: ...


class Refusal(NamedTuple):
    """A message the session will not take: `code` is a gRPC status name, `detail` says why."""

    code: str
    detail: str


def certificate_renewer(engine: Engine, ca: FleetCA, *, days: int) -> Renewer:
    """`certs.renewal.renew_certificate` bound to this server's engine, CA and certificate lifetime."""

    def renew(device_id: str, csr_pem: bytes, current_cert_pem: bytes | None = None) -> pb.RenewResponse:
        return renewal.renew_certificate(
            engine, ca, device_id, csr_pem, days=days, current_cert_pem=current_cert_pem
        )

    return renew


def refusal_log() -> RateLimitedLog:
    """Refused records are all counted; their log lines are bounded per device and overall."""
    return RateLimitedLog(logger, rate_per_s=1.0, burst=10, global_rate_per_s=20.0, global_burst=100)


class DeviceSession:
    """The transport-neutral half of one device's session."""

    def __init__(
        self,
        device_id: str,
        *,
        transport: str,
        settings: Settings,
        writer: IngestWriter,
        close: Close,
        renew: Renewer | None = None,
        log: RateLimitedLog | None = None,
        peer_cert_pem: bytes | None = None,
    ) -> None:
        self.device_id = device_id
        self.transport = transport
        self._settings = settings
        self._writer = writer
        self._close = close
        self._renew = renew
        self._peer_cert_pem = peer_cert_pem
        self._log = log or refusal_log()
        self._bucket = TokenBucket(
            rate_per_s=float(settings.device_max_messages_per_s), burst=float(settings.device_burst)
        )
        self._tasks: set[asyncio.Task[None]] = set()

    def close(self, code: str, detail: str) -> None:
        self._close(code, detail)

    def admit(self, size: int) -> Refusal | None:
        """Per-device size and rate limits, checked before a message is parsed."""
        s = self._settings
        if size > s.max_message_bytes:
            return Refusal("RESOURCE_EXHAUSTED", f"message of {size} bytes exceeds {s.max_message_bytes}")
        if not self._bucket.allow(time.monotonic()):
            return Refusal(
                "RESOURCE_EXHAUSTED",
                f"device {self.device_id} exceeded {s.device_max_messages_per_s} messages/s "
                f"(burst {s.device_burst}); back off and retry",
            )
        return None

    def handle(self, raw: bytes, reply: Reply) -> Refusal | None:
        """Take one serialized SyncRequest. Never raises for bad input: a Refusal says what the
        transport should answer (and `reply` is then not called)."""
        with log_context(device_id=self.device_id):  # also the renewal task started here
            return self._handle(raw, reply)

    def _handle(self, raw: bytes, reply: Reply) -> Refusal | None:
        try:
            req = pb.SyncRequest.FromString(raw)
        except DecodeError as err:
            return Refusal("INVALID_ARGUMENT", f"malformed SyncRequest: {err}")
        kind = req.WhichOneof("msg")
        if kind == "report":
            if req.report.device_id != self.device_id:
                return Refusal(
                    "PERMISSION_DENIED",
                    f"certificate is for {self.device_id!r}; cannot report as {req.report.device_id!r}",
                )
            self._handle_report(req.report, reply)
            return None
        if kind == "telemetry":
            limit = max(self._settings.telemetry_batch_max * 10, 1)
            if len(req.telemetry.records) > limit:
                return Refusal(
                    "INVALID_ARGUMENT",
                    f"telemetry batch of {len(req.telemetry.records)} records exceeds the limit of {limit}",
                )
            self._handle_telemetry(req.telemetry, reply)
            return None
        if kind == "command_result":
            logger.info(
                "command result device_id=%s command_id=%s ok=%s",
                self.device_id,
                safe_text(req.command_result.command_id, 64),
                req.command_result.ok,
            )
            reply(None)
            return None
        if kind == "renew":
            if self._renew is None:
                return Refusal("UNIMPLEMENTED", "certificate renewal is not served here")
            task = asyncio.get_running_loop().create_task(self._handle_renew(req.renew.csr_pem, reply))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return None
        return Refusal(
            "INVALID_ARGUMENT", "empty SyncRequest (no report, telemetry, command_result or renew)"
        )

    async def _handle_renew(self, csr_pem: bytes, reply: Reply) -> None:
        assert self._renew is not None
        try:
            if self._peer_cert_pem is None:
                response = await asyncio.to_thread(self._renew, self.device_id, csr_pem)
            else:
                response = await asyncio.to_thread(self._renew, self.device_id, csr_pem, self._peer_cert_pem)
        except Exception:
            logger.exception("certificate renewal failed device_id=%s", self.device_id)
            response = pb.RenewResponse(error="internal error; retry later")
        logger.info(
            "certificate renewal device_id=%s transport=%s ok=%s",
            self.device_id,
            self.transport,
            not response.error,
        )
        reply(pb.SyncResponse(renewed=response))

    def _handle_report(self, report: pb.DeviceReport, reply: Reply) -> None:
        try:
            row = report_from_proto(report, transport=self.transport)
        except RecordRejectedError as err:
            self._writer.count_rejected(self.device_id, err.reason)
            self._log.warning(
                f"{self.device_id}|report",
                "report refused device_id=%s: %s",
                self.device_id,
                safe_text(err, 200),
            )
            reply(
                pb.SyncResponse(report_ack=pb.ReportAck(sequence=report.sequence, rejected_reason=err.reason))
            )
            return
        ack = pb.SyncResponse(report_ack=pb.ReportAck(sequence=report.sequence))
        self._writer.submit_report(row, lambda err: self.after_commit(err, ack, reply))

    def _handle_telemetry(self, batch: pb.TelemetryBatch, reply: Reply) -> None:
        decoded = telemetry_from_proto(batch, max_payload_bytes=self._settings.max_payload_bytes)
        self._writer.stats.nonfinite_metrics_dropped += decoded.nonfinite_metrics
        for r in decoded.rejected:
            self._writer.count_rejected(self.device_id, r.reason)
        if decoded.rejected:
            self._log.warning(
                f"{self.device_id}|telemetry",
                "telemetry records refused device_id=%s batch_id=%d count=%d first_seq=%d reason=%s",
                self.device_id,
                batch.batch_id,
                len(decoded.rejected),
                decoded.rejected[0].seq,
                decoded.rejected[0].reason,
            )
        ack = pb.SyncResponse(
            telemetry_ack=pb.TelemetryAck(
                batch_id=batch.batch_id,
                seqs=[r.seq for r in decoded.rows],
                rejected=[pb.RejectedRecord(seq=r.seq, reason=r.reason) for r in decoded.rejected],
            )
        )
        if not decoded.rows:
            reply(ack)
            return
        self._writer.submit_telemetry(
            self.device_id, decoded.rows, lambda err: self.after_commit(err, ack, reply)
        )

    def after_commit(self, err: BaseException | None, ack: pb.SyncResponse, reply: Reply) -> None:
        """The ingest's verdict on one message: ack it, ack it partly, or close the session."""
        with log_context(device_id=self.device_id):  # runs in the writer's flush, not handle()
            self._after_commit(err, ack, reply)

    def _after_commit(self, err: BaseException | None, ack: pb.SyncResponse, reply: Reply) -> None:
        if err is None:
            reply(ack)
        elif isinstance(err, RowsRefusedError):
            reply(self.partial_ack(err, ack))
        elif isinstance(err, StorageUnavailableError):
            self._close("UNAVAILABLE", "storage unavailable; retry later")
            reply(None)
        else:
            self._close("INTERNAL", f"{err}; retry later in smaller batches")
            reply(None)

    def partial_ack(self, err: RowsRefusedError, ack: pb.SyncResponse) -> pb.SyncResponse:
        """The ack for a message some of whose rows the database refused: those are listed as
        rejected (reason "storage_refused"), so the device drops them instead of resending."""
        reason = "storage_refused"
        if ack.WhichOneof("msg") == "report_ack":
            if not err.report:
                return ack
            self._writer.count_rejected(self.device_id, reason)
            return pb.SyncResponse(
                report_ack=pb.ReportAck(sequence=ack.report_ack.sequence, rejected_reason=reason)
            )
        t = ack.telemetry_ack
        refused = [s for s in t.seqs if s in err.seqs]
        if refused:
            self._writer.count_rejected(self.device_id, reason, len(refused))
        self._log.warning(
            f"{self.device_id}|storage",
            "telemetry records refused by storage device_id=%s batch_id=%d count=%d: %s",
            self.device_id,
            t.batch_id,
            len(refused),
            safe_text(err, 200),
        )
        return pb.SyncResponse(
            telemetry_ack=pb.TelemetryAck(
                batch_id=t.batch_id,
                seqs=[s for s in t.seqs if s not in err.seqs],
                rejected=[*t.rejected, *(pb.RejectedRecord(seq=s, reason=reason) for s in refused)],
            )
        )

"""DeviceService handlers: Enroll and the Sync session.

Requests arrive as raw bytes and are parsed here, so a malformed message gets INVALID_ARGUMENT
with a reason (the stock deserializer path would answer INTERNAL). Every Sync message is bound to
the device named by the client certificate; a report naming another device is PERMISSION_DENIED.
Per-device token buckets turn a flooding device into RESOURCE_EXHAUSTED for that device only.
A record that cannot be stored (an integer over 2^63-1, seq 0, an oversized payload) is refused
alone: it is counted, listed in TelemetryAck.rejected (or ReportAck.rejected_reason), and the
session goes on; so is a record the database itself refuses later (ingest.py isolates it).
Text from devices and unauthenticated callers reaches the log only escaped and bounded
(logsafe.py); refused enrollments are logged once per call and rate-limited per peer.

Owns the session lifecycle (one live session per device; a new one supersedes the old) and the
push of DesiredState. Does not write to the database itself (ingest.py, enrollment.py do).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from sqlalchemy import Engine
from sqlmodel import Session

from fleet_server.crud.devices import get_device
from fleet_server.desired import desired_for
from fleet_server.enrollment import enroll_device
from fleet_server.errors import (
    AuthError,
    ConflictError,
    FleetError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
)
from fleet_server.grpc_api.codec import (
    RecordRejectedError,
    desired_to_proto,
    report_from_proto,
    telemetry_from_proto,
)
from fleet_server.ingest import IngestWriter, RowsRefusedError, StorageUnavailableError
from fleet_server.logsafe import RateLimitedLog, peer_host
from fleet_server.logsafe import text as safe_text
from fleet_server.pki import FleetCA
from fleet_server.ratelimit import TokenBucket
from fleet_server.settings import Settings
from protos.edgeloop.v1 import device_pb2 as pb

logger = logging.getLogger(__name__)

SERVICE = "edgeloop.v1.DeviceService"

_STATUS: dict[type[FleetError], grpc.StatusCode] = {
    AuthError: grpc.StatusCode.UNAUTHENTICATED,
    ForbiddenError: grpc.StatusCode.PERMISSION_DENIED,
    InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    ConflictError: grpc.StatusCode.ALREADY_EXISTS,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
}


def status_for(err: FleetError) -> grpc.StatusCode:
    for cls, code in _STATUS.items():
        if isinstance(err, cls):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


class _Session:
    def __init__(self, device_id: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.device_id = device_id
        self.context = context
        self.outbox: asyncio.Queue[pb.SyncResponse | None] = asyncio.Queue()
        self.closed_reason = ""


class SessionRegistry:
    """Live Sync sessions by device id. `notify_desired_changed` is safe from any thread."""

    def __init__(self) -> None:
        self._sessions: dict[str, _Session] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.push_desired: Any = None  # set by DeviceServicer

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def online(self) -> set[str]:
        return set(self._sessions)

    def add(self, session: _Session) -> None:
        old = self._sessions.get(session.device_id)
        if old is not None:
            old.closed_reason = "superseded by a newer session"
            old.outbox.put_nowait(None)
        self._sessions[session.device_id] = session

    def remove(self, session: _Session) -> None:
        if self._sessions.get(session.device_id) is session:
            del self._sessions[session.device_id]

    def get(self, device_id: str) -> _Session | None:
        return self._sessions.get(device_id)

    def notify_desired_changed(self, device_id: str) -> None:
        if self._loop is not None and self.push_desired is not None:
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self.push_desired(device_id)))


class DeviceServicer:
    def __init__(
        self,
        *,
        engine: Engine,
        ca: FleetCA,
        settings: Settings,
        writer: IngestWriter,
        registry: SessionRegistry,
    ) -> None:
        self._engine = engine
        self._ca = ca
        self._settings = settings
        self._writer = writer
        self._registry = registry
        self._enroll_log = RateLimitedLog(logger)
        # Refused records are all counted; their log lines are bounded per device and overall.
        self._refusal_log = RateLimitedLog(
            logger, rate_per_s=1.0, burst=10, global_rate_per_s=20.0, global_burst=100
        )
        registry.push_desired = self.push_desired

    # ------------------------------------------------------------ Enroll

    async def enroll(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            req = pb.EnrollRequest.FromString(raw)
        except DecodeError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed EnrollRequest: {err}")
        try:
            result = await asyncio.to_thread(
                enroll_device,
                engine=self._engine,
                ca=self._ca,
                settings=self._settings,
                bootstrap_token=req.bootstrap_token,
                csr_pem=req.csr_pem,
                device_id=req.device_id,
                profile=req.profile,
                agent_version=req.agent_version,
            )
        except FleetError as err:
            code = status_for(err)
            host = peer_host(context.peer() or "")
            self._enroll_log.warning(
                f"{host}|{code.name}",
                "enrollment refused peer=%s device_id=%s code=%s reason=%s",
                safe_text(host),
                safe_text(req.device_id, 64),
                code.name,
                safe_text(err, 200),
            )
            await context.abort(code, safe_text(err, 300))
        host = self._settings.public_hostnames[0] if self._settings.public_hostnames else "localhost"
        return pb.EnrollResponse(
            device_id=result.device_id,
            certificate_chain_pem=result.certificate_chain_pem,
            ca_certificate_pem=result.ca_certificate_pem,
            desired=desired_to_proto(result.desired),
            sync_endpoint=f"{host}:{self._settings.device_port}",
        ).SerializeToString()

    # ------------------------------------------------------------ Sync

    async def sync(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        device_id = await self._authenticate(context)
        session = _Session(device_id, context)
        self._registry.add(session)
        reader = asyncio.create_task(self._read(session, requests))
        logger.info("sync session opened device_id=%s peer=%s", device_id, context.peer())
        try:
            await self.push_desired(device_id)
            while True:
                msg = await session.outbox.get()
                if msg is None:
                    break
                await context.write(msg)
        finally:
            reader.cancel()
            self._registry.remove(session)
            logger.info(
                "sync session closed device_id=%s reason=%s", device_id, session.closed_reason or "eof"
            )
        if session.closed_reason.startswith("abort:"):
            _, code, detail = session.closed_reason.split(":", 2)
            await context.abort(grpc.StatusCode[code], detail)
        if session.closed_reason.startswith("superseded"):
            await context.abort(grpc.StatusCode.ABORTED, session.closed_reason)

    async def push_desired(self, device_id: str) -> None:
        session = self._registry.get(device_id)
        if session is None:
            return
        try:
            device = await asyncio.to_thread(self._load_device, device_id)
        except FleetError:
            return
        desired = desired_to_proto(desired_for(device, self._settings))
        session.outbox.put_nowait(pb.SyncResponse(desired=desired))

    def _load_device(self, device_id: str) -> Any:
        with Session(self._engine, expire_on_commit=False) as s:
            return get_device(session=s, device_id=device_id)

    async def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        auth = context.auth_context()
        names = list(auth.get("x509_common_name") or [])
        pems = list(auth.get("x509_pem_cert") or [])
        if not names or not pems:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a fleet device certificate is required")
        device_id = names[0].decode()
        try:
            device = await asyncio.to_thread(self._load_device, device_id)
        except NotFoundError:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"device {device_id!r} is not enrolled")
        fingerprint = _pem_fingerprint(pems[0])
        if device.status != "active" or (device.cert_fingerprint and fingerprint != device.cert_fingerprint):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"certificate for {device_id!r} is revoked or superseded"
            )
        return device_id

    async def _read(self, session: _Session, requests: AsyncIterator[bytes]) -> None:
        bucket = TokenBucket(
            rate_per_s=float(self._settings.device_max_messages_per_s),
            burst=float(self._settings.device_burst),
        )
        try:
            async for raw in requests:
                if not bucket.allow(time.monotonic()):
                    self._close(
                        session,
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"device {session.device_id} exceeded {self._settings.device_max_messages_per_s} "
                        f"messages/s (burst {self._settings.device_burst}); back off and retry",
                    )
                    return
                error = self._handle(session, raw)
                if error is not None:
                    self._close(session, *error)
                    return
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            return
        except Exception:
            logger.exception("sync reader failed device_id=%s", session.device_id)
            self._close(session, grpc.StatusCode.INTERNAL, "internal error")
            return
        session.outbox.put_nowait(None)  # client half-closed: finish the call

    def _handle(self, session: _Session, raw: bytes) -> tuple[grpc.StatusCode, str] | None:
        try:
            req = pb.SyncRequest.FromString(raw)
        except DecodeError as err:
            return grpc.StatusCode.INVALID_ARGUMENT, f"malformed SyncRequest: {err}"
        kind = req.WhichOneof("msg")
        if kind == "report":
            if req.report.device_id != session.device_id:
                return (
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"certificate is for {session.device_id!r}; cannot report as {req.report.device_id!r}",
                )
            self._handle_report(session, req.report)
            return None
        if kind == "telemetry":
            problem = self._check_telemetry(req.telemetry)
            if problem:
                return grpc.StatusCode.INVALID_ARGUMENT, problem
            self._handle_telemetry(session, req.telemetry)
            return None
        if kind == "command_result":
            logger.info(
                "command result device_id=%s command_id=%s ok=%s",
                session.device_id,
                safe_text(req.command_result.command_id, 64),
                req.command_result.ok,
            )
            return None
        return grpc.StatusCode.INVALID_ARGUMENT, "empty SyncRequest (no report, telemetry or command_result)"

    def _handle_report(self, session: _Session, report: pb.DeviceReport) -> None:
        try:
            row = report_from_proto(report)
        except RecordRejectedError as err:
            self._writer.count_rejected(session.device_id, err.reason)
            self._refusal_log.warning(
                f"{session.device_id}|report",
                "report refused device_id=%s: %s",
                session.device_id,
                safe_text(err, 200),
            )
            session.outbox.put_nowait(
                pb.SyncResponse(report_ack=pb.ReportAck(sequence=report.sequence, rejected_reason=err.reason))
            )
            return
        ack = pb.SyncResponse(report_ack=pb.ReportAck(sequence=report.sequence))
        self._writer.submit_report(row, lambda err: self._after_commit(session, err, ack))

    def _handle_telemetry(self, session: _Session, batch: pb.TelemetryBatch) -> None:
        decoded = telemetry_from_proto(batch, max_payload_bytes=self._settings.max_payload_bytes)
        self._writer.stats.nonfinite_metrics_dropped += decoded.nonfinite_metrics
        for r in decoded.rejected:
            self._writer.count_rejected(session.device_id, r.reason)
        if decoded.rejected:
            self._refusal_log.warning(
                f"{session.device_id}|telemetry",
                "telemetry records refused device_id=%s batch_id=%d count=%d first_seq=%d reason=%s",
                session.device_id,
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
            session.outbox.put_nowait(ack)
            return
        self._writer.submit_telemetry(
            session.device_id, decoded.rows, lambda err: self._after_commit(session, err, ack)
        )

    def _check_telemetry(self, batch: pb.TelemetryBatch) -> str:
        limit = max(self._settings.telemetry_batch_max * 10, 1)
        if len(batch.records) > limit:
            return f"telemetry batch of {len(batch.records)} records exceeds the limit of {limit}"
        return ""

    def _after_commit(self, session: _Session, err: BaseException | None, ack: pb.SyncResponse) -> None:
        if err is None:
            session.outbox.put_nowait(ack)
        elif isinstance(err, RowsRefusedError):
            session.outbox.put_nowait(self._partial_ack(session, err, ack))
        elif isinstance(err, StorageUnavailableError):
            self._close(session, grpc.StatusCode.UNAVAILABLE, "storage unavailable; retry later")
        else:
            self._close(session, grpc.StatusCode.INTERNAL, f"{err}; retry later in smaller batches")

    def _partial_ack(self, session: _Session, err: RowsRefusedError, ack: pb.SyncResponse) -> pb.SyncResponse:
        """The ack for a message some of whose rows the database refused: those are listed as
        rejected (reason "storage_refused"), so the device drops them instead of resending."""
        reason = "storage_refused"
        if ack.WhichOneof("msg") == "report_ack":
            if not err.report:
                return ack
            self._writer.count_rejected(session.device_id, reason)
            return pb.SyncResponse(
                report_ack=pb.ReportAck(sequence=ack.report_ack.sequence, rejected_reason=reason)
            )
        t = ack.telemetry_ack
        refused = [s for s in t.seqs if s in err.seqs]
        if refused:
            self._writer.count_rejected(session.device_id, reason, len(refused))
        self._refusal_log.warning(
            f"{session.device_id}|storage",
            "telemetry records refused by storage device_id=%s batch_id=%d count=%d: %s",
            session.device_id,
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

    def _close(self, session: _Session, code: grpc.StatusCode, detail: str) -> None:
        if not session.closed_reason:
            detail = safe_text(detail, 300)
            logger.warning(
                "sync session aborted device_id=%s code=%s detail=%s", session.device_id, code.name, detail
            )
            session.closed_reason = f"abort:{code.name}:{detail}"
        session.outbox.put_nowait(None)


def _pem_fingerprint(pem: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(pem)
    return str(cert.fingerprint(hashes.SHA256()).hex())

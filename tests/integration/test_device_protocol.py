"""Enrollment and Sync at the protocol level: identity binding, bad input, throttling, dedupe."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from sqlalchemy import update

from fleet_server.db import make_engine
from fleet_server.models import BootstrapToken
from fleet_server.pki import FleetCA
from protos.edgeloop.v1 import device_pb2 as pb
from tests.helpers.inproc import LiveServer, RawStream, device_channel, enroll, report, telemetry


def _code(excinfo: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return excinfo.value.code()  # type: ignore[attr-defined,no-any-return]


def test_enroll_then_sync_gets_desired_state_and_acks(server: LiveServer, tmp_path: Path) -> None:
    creds = enroll(server, "dev-a", server.bootstrap_token(labels={"site": "x"}), tmp_path)
    assert b"BEGIN CERTIFICATE" in creds.chain_pem
    with device_channel(server, creds) as ch:
        stream = RawStream(ch)
        desired = stream.next_of("desired").desired
        assert desired.generation == 1 and desired.labels["site"] == "x"
        stream.send(report("dev-a", 7))
        assert stream.next_of("report_ack").report_ack.sequence == 7
        stream.send(telemetry(1, [1, 2, 3]))
        assert list(stream.next_of("telemetry_ack").telemetry_ack.seqs) == [1, 2, 3]
        # A resend after a lost ack is acked again but stored once.
        stream.send(telemetry(2, [2, 3, 4]))
        assert list(stream.next_of("telemetry_ack").telemetry_ack.seqs) == [2, 3, 4]
        stream.close()
    rows = server.client.get("/api/v1/devices/dev-a/telemetry", headers=server.auth("viewer")).json()
    assert [r["seq"] for r in rows] == [1, 2, 3, 4]
    device = server.client.get("/api/v1/devices/dev-a", headers=server.auth("viewer")).json()
    assert device["last_seen_at"] and device["observed"]["sequence"] == 7


def test_bootstrap_token_reuse_expiry_scope_and_garbage(server: LiveServer, tmp_path: Path) -> None:
    token = server.bootstrap_token()
    enroll(server, "dev-a", token, tmp_path)
    with pytest.raises(grpc.RpcError) as reused:
        enroll(server, "dev-b", token, tmp_path)
    assert _code(reused) == grpc.StatusCode.UNAUTHENTICATED and "already used" in reused.value.details()

    expired = server.bootstrap_token()
    engine = make_engine(server.settings.resolved_database_url())
    with engine.begin() as conn:
        conn.execute(
            update(BootstrapToken)
            .where(BootstrapToken.id == expired.split("_", 1)[1].split(".")[0])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    engine.dispose()
    with pytest.raises(grpc.RpcError) as exp:
        enroll(server, "dev-c", expired, tmp_path)
    assert _code(exp) == grpc.StatusCode.UNAUTHENTICATED and "expired" in exp.value.details()

    scoped = server.bootstrap_token(profile="coral-dev-board")
    with pytest.raises(grpc.RpcError) as wrong_profile:
        enroll(server, "dev-d", scoped, tmp_path, profile="raspberry-pi-4")
    assert _code(wrong_profile) == grpc.StatusCode.UNAUTHENTICATED
    # The failed attempt did not burn the token.
    enroll(server, "dev-d", scoped, tmp_path, profile="coral-dev-board")

    with pytest.raises(grpc.RpcError) as junk:
        enroll(server, "dev-e", "not-a-token", tmp_path)
    assert _code(junk) == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as bad_id:
        enroll(server, "Bad ID!", server.bootstrap_token(), tmp_path)
    assert _code(bad_id) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as taken:
        enroll(server, "dev-a", server.bootstrap_token(), tmp_path / "other")
    assert _code(taken) == grpc.StatusCode.ALREADY_EXISTS


def test_device_a_cannot_report_as_device_b(server: LiveServer, tmp_path: Path) -> None:
    a = enroll(server, "dev-a", server.bootstrap_token(), tmp_path)
    enroll(server, "dev-b", server.bootstrap_token(), tmp_path)
    with device_channel(server, a) as ch:
        stream = RawStream(ch)
        stream.next_of("desired")
        stream.send(report("dev-b"))
        with pytest.raises(grpc.RpcError) as err:
            stream.next_of("report_ack")
    assert _code(err) == grpc.StatusCode.PERMISSION_DENIED and "dev-b" in err.value.details()
    b = server.client.get("/api/v1/devices/dev-b", headers=server.auth("viewer")).json()
    assert b["last_seen_at"] is None


def test_sync_needs_a_fleet_ca_client_certificate(server: LiveServer, tmp_path: Path) -> None:
    with device_channel(server, None) as ch, pytest.raises(grpc.RpcError) as no_cert:
        RawStream(ch).next()
    assert _code(no_cert) == grpc.StatusCode.UNAVAILABLE

    # A certificate from some other CA, for a real device id, is refused at the handshake.
    a = enroll(server, "dev-a", server.bootstrap_token(), tmp_path)
    rogue_ca = FleetCA.create(tmp_path / "rogue")
    from agent.identity import IdentityStore

    store = IdentityStore(tmp_path / "rogue-dev")
    key = store.load_or_create_key()
    forged = rogue_ca.sign_device_csr(store.make_csr(key, "dev-a"), "dev-a", days=1)
    creds = type(a)("dev-a", store.key_path.read_bytes(), forged.pem, a.ca_pem)
    with device_channel(server, creds) as ch, pytest.raises(grpc.RpcError) as rogue:
        RawStream(ch).next()
    assert _code(rogue) == grpc.StatusCode.UNAVAILABLE


def test_malformed_oversized_and_unknown_fields(server: LiveServer, tmp_path: Path) -> None:
    a = enroll(server, "dev-a", server.bootstrap_token(), tmp_path)
    with device_channel(server, a) as ch:
        stream = RawStream(ch)
        stream.next_of("desired")
        # Unknown fields (a newer agent) are accepted: field 99 varint appended to a valid report.
        stream.send(report("dev-a", 3).SerializeToString() + b"\xf8\x06\x01")
        assert stream.next_of("report_ack").report_ack.sequence == 3
        stream.send(b"\xff\xff\xff\xff garbage")
        with pytest.raises(grpc.RpcError) as malformed:
            stream.next()
    assert _code(malformed) == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in malformed.value.details()

    with device_channel(server, a) as ch:
        stream = RawStream(ch)
        stream.send(telemetry(1, [1], payload=b"x" * (server.settings.max_message_bytes + 1)))
        with pytest.raises(grpc.RpcError) as big:
            stream.next_of("telemetry_ack")
    assert _code(big) == grpc.StatusCode.RESOURCE_EXHAUSTED

    with device_channel(server, a) as ch:  # an oversized payload is refused for that record alone
        stream = RawStream(ch)
        stream.send(telemetry(1, [1], payload=b"x" * (server.settings.max_payload_bytes + 1)))
        ack = stream.next_of("telemetry_ack").telemetry_ack
        assert list(ack.seqs) == [] and [(r.seq, r.reason) for r in ack.rejected] == [
            (1, "payload_too_large")
        ]
        stream.send(telemetry(2, [2]))
        assert list(stream.next_of("telemetry_ack").telemetry_ack.seqs) == [2]
        stream.close()

    with device_channel(server, a) as ch:
        stream = RawStream(ch)
        stream.send(pb.SyncRequest())
        with pytest.raises(grpc.RpcError) as empty:
            stream.next_of("report_ack")
    assert _code(empty) == grpc.StatusCode.INVALID_ARGUMENT


def test_garbage_bytes_on_grpc_ports_leave_server_up(server: LiveServer, tmp_path: Path) -> None:
    for target in (server.device_target, server.enroll_target):
        port = int(target.rsplit(":", 1)[1])
        for junk in (
            b"\x00" * 64,
            b"GET / HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 100,
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(junk)
                s.settimeout(5)
                try:
                    s.recv(1024)
                except (TimeoutError, ConnectionResetError):
                    pass
        # TLS that completes but then speaks nonsense instead of HTTP/2.
        ctx = ssl.create_default_context(cadata=server.ca_pem.decode())
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            try:
                with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"\x00\x01\x02 not http2")
            except (ssl.SSLError, OSError):
                pass  # the device port wants a client certificate: handshake refused
    a = enroll(server, "dev-a", server.bootstrap_token(), tmp_path)
    with device_channel(server, a) as ch:
        stream = RawStream(ch)
        stream.send(report("dev-a", 1))
        assert stream.next_of("report_ack").report_ack.sequence == 1
        stream.close()


def test_flooding_device_is_throttled_others_unaffected(server: LiveServer, tmp_path: Path) -> None:
    noisy = enroll(server, "dev-noisy", server.bootstrap_token(), tmp_path)
    calm = enroll(server, "dev-calm", server.bootstrap_token(), tmp_path)
    rate = server.settings.device_max_messages_per_s
    calm_acks: list[int] = []

    def run_calm() -> None:
        with device_channel(server, calm) as ch:
            stream = RawStream(ch)
            for i in range(1, 9):
                stream.send(report("dev-calm", i))
                calm_acks.append(stream.next_of("report_ack").report_ack.sequence)
                time.sleep(1.0 / rate * 2)
            stream.close()

    t = threading.Thread(target=run_calm)
    t.start()
    with device_channel(server, noisy) as ch:
        stream = RawStream(ch)
        for i in range(rate * 10):  # 10x its rate, all at once
            stream.send(report("dev-noisy", i + 1))
        with pytest.raises(grpc.RpcError) as err:
            for _ in range(rate * 10 + 5):
                stream.next()
    t.join(30)
    assert _code(err) == grpc.StatusCode.RESOURCE_EXHAUSTED and "messages/s" in err.value.details()
    assert calm_acks == list(range(1, 9))
    assert server.client.get("/healthz").status_code == 200


def test_new_session_supersedes_old(server: LiveServer, tmp_path: Path) -> None:
    a = enroll(server, "dev-a", server.bootstrap_token(), tmp_path)
    with device_channel(server, a) as ch1, device_channel(server, a) as ch2:
        first = RawStream(ch1)
        first.next_of("desired")
        second = RawStream(ch2)
        second.next_of("desired")
        with pytest.raises(grpc.RpcError) as err:
            first.next()
        assert _code(err) == grpc.StatusCode.ABORTED
        second.send(report("dev-a", 1))
        assert second.next_of("report_ack").report_ack.sequence == 1
        second.close()


def test_certificate_renewal_over_sync_then_promotion_and_kick(server: LiveServer, tmp_path: Path) -> None:
    """Renew on the Sync stream; the renewed certificate works at once (pending), is promoted when
    a report says it is in use, and then the old one is refused. A kick closes the session."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from agent.identity import IdentityStore
    from tests.helpers.inproc import DeviceCreds

    old = enroll(server, "dev-r", server.bootstrap_token(), tmp_path)
    old_key = serialization.load_pem_private_key(old.key_pem, None)
    assert isinstance(old_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    with device_channel(server, old) as ch:
        stream = RawStream(ch)
        # gRPC sees the certificate in use: a renewal that keeps its key is refused.
        stream.send(pb.SyncRequest(renew=pb.RenewRequest(csr_pem=IdentityStore.make_csr(old_key, "dev-r"))))
        assert "key" in stream.next_of("renewed").renewed.error
        stream.send(pb.SyncRequest(renew=pb.RenewRequest(csr_pem=IdentityStore.make_csr(key, "dev-r"))))
        renewed = stream.next_of("renewed").renewed
        stream.close()
    assert not renewed.error and renewed.not_after_ms > 0
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    new = DeviceCreds("dev-r", key_pem, renewed.certificate_chain_pem, old.ca_pem)
    fingerprint = x509.load_pem_x509_certificate(new.chain_pem).fingerprint(hashes.SHA256()).hex()
    for creds in (old, new):  # both work until the device reports the new one in use
        with device_channel(server, creds) as ch:
            stream = RawStream(ch)
            stream.next_of("desired")
            stream.close()
    with device_channel(server, new) as ch:
        stream = RawStream(ch)
        msg = report("dev-r", 2)
        msg.report.cert_fingerprint = fingerprint
        stream.send(msg)
        stream.next_of("report_ack")
        server.client.app.state.registry.kick("dev-r", "PERMISSION_DENIED", "revoked")  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as err:
            stream.next_of("report_ack")
        assert _code(err) == grpc.StatusCode.PERMISSION_DENIED and "revoked" in str(err.value)
    body = server.client.get("/api/v1/devices/dev-r", headers=server.auth("viewer")).json()
    assert body["transport"] == "grpc"
    with device_channel(server, old) as ch, pytest.raises(grpc.RpcError) as err:
        RawStream(ch).next()
    assert _code(err) == grpc.StatusCode.PERMISSION_DENIED

"""Token bucket, token format, PKI, codec."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from agent.identity import IdentityStore
from fleet_server.errors import ConfigError, InvalidRequestError
from fleet_server.grpc_api.codec import report_from_proto, telemetry_from_proto
from fleet_server.pki import FleetCA
from fleet_server.ratelimit import TokenBucket
from fleet_server.security import Role, new_token, role_allows, split_token
from protos.edgeloop.v1 import device_pb2 as pb


def test_token_bucket() -> None:
    b = TokenBucket(rate_per_s=10, burst=5)
    assert all(b.allow(0.0) for _ in range(5))
    assert not b.allow(0.0)
    assert b.allow(0.1)  # one token refilled
    assert not b.allow(0.1)


def test_tokens_and_roles() -> None:
    token_id, token, digest = new_token("op")
    assert token.startswith(f"op_{token_id}.") and len(digest) == 64
    assert split_token(token, "bt") is None and split_token("op_x", "op") is None
    assert role_allows("admin", Role.OPERATOR) and not role_allows("viewer", Role.OPERATOR)
    assert not role_allows("root", Role.VIEWER)


def test_ca_signs_csr_with_server_chosen_identity(tmp_path: Path) -> None:
    ca = FleetCA.create(tmp_path / "pki")
    with pytest.raises(ConfigError):
        FleetCA.create(tmp_path / "pki")
    store = IdentityStore(tmp_path / "dev")
    csr = store.make_csr(store.load_or_create_key(), "spoofed-name")
    issued = ca.sign_device_csr(csr, "dev-1", days=30)
    cert = x509.load_pem_x509_certificate(issued.pem)
    assert cert.subject.rfc4514_string() == "CN=dev-1"
    assert store.key_mode() == 0o600
    with pytest.raises(InvalidRequestError):
        ca.sign_device_csr(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "x", days=1
        )
    key, chain = FleetCA.load(tmp_path / "pki").ensure_server_certificate(["localhost", "127.0.0.1"])
    assert chain.count(b"BEGIN CERTIFICATE") == 2 and b"PRIVATE KEY" in key


def test_codec_survives_nan_unknown_enum_and_inf_metrics() -> None:
    row = report_from_proto(
        pb.DeviceReport(device_id="d", health=42, resources=pb.Resources(temperature_c=float("nan")))
    )
    assert row.observed["health"] == "unknown" and row.observed["resources"]["temperature_c"] is None
    decoded = telemetry_from_proto(
        pb.TelemetryBatch(records=[pb.TelemetryRecord(seq=1, metrics={"ok": 1.0, "bad": float("inf")})]),
        max_payload_bytes=1024,
    )
    assert decoded.rows[0].metrics == {"ok": 1.0} and decoded.nonfinite_metrics == 1

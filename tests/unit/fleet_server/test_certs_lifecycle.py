"""certs/: revocation (database + effects), renewal and promotion, the CRL, serial-carried expiry."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlmodel import Session, select

from fleet_server.audit.chain import Actor
from fleet_server.audit.port import MemoryAuditLog
from fleet_server.certs.crl import CommandReload, PidfileReload, build_and_write, reload_hook
from fleet_server.certs.renewal import cert_promotion_observer, renew_certificate
from fleet_server.certs.revocation import Revoker, revoke_device
from fleet_server.crud.tokens import create_bootstrap_token
from fleet_server.db import make_engine
from fleet_server.enrollment import enroll_device
from fleet_server.errors import AuthError, NotFoundError
from fleet_server.migrate import upgrade
from fleet_server.models import BootstrapTokenCreate, Device, RevokedCertificate, as_utc, utcnow
from fleet_server.pki import FleetCA, expiry_from_serial
from fleet_server.settings import Settings

ACTOR = Actor.operator("op_1", "alice", "operator")


@pytest.fixture
def ca(tmp_path: Path) -> FleetCA:
    return FleetCA.create(tmp_path / "pki")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    upgrade(eng)
    yield eng
    eng.dispose()


def _key_and_csr(cn: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM)


def _device(
    engine: Engine, ca: FleetCA, device_id: str = "dev-1"
) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key, csr = _key_and_csr(device_id)
    issued = ca.sign_device_csr(csr, device_id, days=30)
    with Session(engine) as s:
        s.add(Device(id=device_id, cert_serial=issued.serial, cert_fingerprint=issued.fingerprint))
        s.commit()
    return key, issued.pem


def _get(engine: Engine, device_id: str) -> Device:
    with Session(engine) as s:
        device = s.get(Device, device_id)
        assert device is not None
        return device


def _revoked(engine: Engine) -> dict[str, str]:
    with Session(engine) as s:
        return {r.serial: r.reason for r in s.exec(select(RevokedCertificate))}


# ------------------------------------------------------------------ revocation


def test_revoke_marks_device_lists_serials_audits_once(engine: Engine, ca: FleetCA) -> None:
    _device(engine, ca)
    _, csr = _key_and_csr("dev-1")
    assert not renew_certificate(engine, ca, "dev-1", csr).error  # a pending certificate too
    before = _get(engine, "dev-1")
    audit = MemoryAuditLog()
    first = revoke_device(engine, "dev-1", actor=ACTOR, reason="lost", audit=audit)
    again = revoke_device(engine, "dev-1", actor=ACTOR, reason="lost", audit=audit)
    assert first.changed and not again.changed
    assert set(_revoked(engine)) == {before.cert_serial, before.pending_cert_serial}
    after = _get(engine, "dev-1")
    assert after.status == "revoked" and after.revoked_at is not None and not after.pending_cert_serial
    assert audit.actions() == ["device.revoked"]
    entry = audit.entries[0]
    assert entry.actor.name == "alice" and entry.details["reason"] == "lost"
    assert audit.verify().ok


def test_revoke_unknown_device(engine: Engine) -> None:
    with pytest.raises(NotFoundError):
        revoke_device(engine, "nobody", actor=ACTOR, reason="")


def test_revoker_runs_every_effect_even_after_one_fails(engine: Engine, ca: FleetCA) -> None:
    _device(engine, ca)
    ran: list[str] = []

    async def broken(device_id: str) -> None:
        ran.append("broken")
        raise OSError("broker unreachable")

    async def kick(device_id: str) -> None:
        ran.append(f"kick {device_id}")

    revoker = Revoker(engine=engine, on_revoked=[broken, kick])
    result = asyncio.run(revoker.revoke("dev-1", actor=ACTOR, reason="x"))
    assert result.changed and ran == ["broken", "kick dev-1"]


# ------------------------------------------------------------------ renewal


def test_renewal_issues_a_pending_certificate(engine: Engine, ca: FleetCA) -> None:
    _device(engine, ca)
    old = _get(engine, "dev-1")
    _, csr = _key_and_csr("dev-1")
    resp = renew_certificate(engine, ca, "dev-1", csr, days=10)
    assert not resp.error and resp.ca_certificate_pem == ca.cert_pem
    cert = x509.load_pem_x509_certificate(resp.certificate_chain_pem)
    assert resp.not_after_ms == int(cert.not_valid_after_utc.timestamp() * 1000)
    device = _get(engine, "dev-1")
    assert device.cert_fingerprint == old.cert_fingerprint  # the old one stays current
    assert device.pending_cert_fingerprint == cert.fingerprint(hashes.SHA256()).hex()


def test_renewal_refusals_issue_nothing(engine: Engine, ca: FleetCA) -> None:
    key, cert_pem = _device(engine, ca)
    _device(engine, ca, "dev-2")
    revoke_device(engine, "dev-2", actor=ACTOR, reason="")
    same_key = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    cases = {
        "unknown": ("dev-9", _key_and_csr("dev-9")[1], None),
        "revoked": ("dev-2", _key_and_csr("dev-2")[1], None),
        "wrong cn": ("dev-1", _key_and_csr("dev-2")[1], None),
        "garbage": ("dev-1", b"-----BEGIN CERTIFICATE REQUEST-----\nxx\n", None),
        "same key": ("dev-1", same_key, cert_pem),
        "too big": ("dev-1", b"x" * 20_000, None),
    }
    for name, (device_id, csr, current) in cases.items():
        resp = renew_certificate(engine, ca, device_id, csr, current_cert_pem=current)
        assert resp.error and not resp.certificate_chain_pem, name
    assert not _get(engine, "dev-1").pending_cert_serial


@given(st.binary(max_size=2048))
def test_renewal_never_raises_on_arbitrary_csr_bytes(data: bytes) -> None:
    resp = renew_certificate(None, None, "dev-1", data)  # type: ignore[arg-type]
    assert resp.error  # refused before touching the database or the CA


def test_a_second_renewal_supersedes_the_unused_pending_one(engine: Engine, ca: FleetCA) -> None:
    _device(engine, ca)
    renew_certificate(engine, ca, "dev-1", _key_and_csr("dev-1")[1])
    first = _get(engine, "dev-1").pending_cert_serial
    renew_certificate(engine, ca, "dev-1", _key_and_csr("dev-1")[1])
    assert _get(engine, "dev-1").pending_cert_serial != first
    assert _revoked(engine) == {first: "superseded"}


def test_promotion_when_the_device_reports_the_new_certificate(engine: Engine, ca: FleetCA) -> None:
    _device(engine, ca)
    _device(engine, ca, "dev-2")
    old = _get(engine, "dev-1")
    resp = renew_certificate(engine, ca, "dev-1", _key_and_csr("dev-1")[1])
    renew_certificate(engine, ca, "dev-2", _key_and_csr("dev-2")[1])
    new = x509.load_pem_x509_certificate(resp.certificate_chain_pem)
    reports = [
        SimpleNamespace(device_id="dev-1", cert_fingerprint=new.fingerprint(hashes.SHA256()).hex()),
        SimpleNamespace(
            device_id="dev-2", cert_fingerprint=_get(engine, "dev-2").cert_fingerprint
        ),  # still old
        SimpleNamespace(device_id="dev-3", cert_fingerprint="ab" * 32),  # unknown: ignored
    ]
    with engine.begin() as conn:
        cert_promotion_observer(conn, reports)
    device = _get(engine, "dev-1")
    assert device.cert_fingerprint == new.fingerprint(hashes.SHA256()).hex()
    assert device.cert_serial == format(new.serial_number, "x") and not device.pending_cert_serial
    assert as_utc(device.cert_not_after) == new.not_valid_after_utc
    assert _revoked(engine) == {old.cert_serial: "superseded"}
    assert _get(engine, "dev-2").pending_cert_serial  # not promoted


# ------------------------------------------------------------------ CRL and serials


def test_crl_lists_every_revoked_serial_signed_by_the_ca(engine: Engine, ca: FleetCA, tmp_path: Path) -> None:
    _device(engine, ca)
    _device(engine, ca, "dev-2")
    revoke_device(engine, "dev-1", actor=ACTOR, reason="")
    path = tmp_path / "crl.pem"
    assert build_and_write(engine, ca, path) == 1
    crl = x509.load_pem_x509_crl(path.read_bytes())
    assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    assert {format(r.serial_number, "x") for r in crl} == {_get(engine, "dev-1").cert_serial}
    assert crl.next_update_utc is not None and crl.next_update_utc > datetime.now(UTC) + timedelta(days=6)


def test_device_serial_carries_its_expiry(ca: FleetCA) -> None:
    issued = ca.sign_device_csr(_key_and_csr("dev-1")[1], "dev-1", days=90)
    assert expiry_from_serial(issued.serial) == issued.not_after


@given(st.text(max_size=80))
def test_expiry_from_serial_never_raises(text: str) -> None:
    got = expiry_from_serial(text)
    assert got is None or datetime(2020, 1, 1, tzinfo=UTC) <= got <= datetime(2200, 1, 1, tzinfo=UTC)


def test_random_serials_carry_no_expiry() -> None:
    assert all(expiry_from_serial(format(x509.random_serial_number(), "x")) is None for _ in range(200))


def test_reload_hook_spec(tmp_path: Path) -> None:
    assert reload_hook("") is None
    hook = reload_hook("pidfile:/run/mosquitto.pid")
    assert isinstance(hook, PidfileReload) and hook.pidfile == Path("/run/mosquitto.pid")
    cmd = reload_hook("systemctl reload 'mosquitto'")
    assert isinstance(cmd, CommandReload) and cmd.argv == ["systemctl", "reload", "mosquitto"]
    CommandReload(["true"])()


# ------------------------------------------------------------------ enrollment


def test_revoked_bootstrap_token_cannot_enroll(engine: Engine, ca: FleetCA, tmp_path: Path) -> None:
    with Session(engine) as s:
        row, token = create_bootstrap_token(session=s, spec=BootstrapTokenCreate(), created_by="t")
        row.revoked_at = utcnow()
        s.add(row)
        s.commit()
    with pytest.raises(AuthError, match="revoked"):
        enroll_device(
            engine=engine, ca=ca, settings=Settings(data_dir=tmp_path), bootstrap_token=token,
            csr_pem=_key_and_csr("dev-t")[1], device_id="dev-t", profile="", agent_version="1",
        )  # fmt: skip


def test_enrollment_records_certificate_expiry(engine: Engine, ca: FleetCA, tmp_path: Path) -> None:
    with Session(engine) as s:
        _, token = create_bootstrap_token(session=s, spec=BootstrapTokenCreate(), created_by="t")
    result = enroll_device(
        engine=engine, ca=ca, settings=Settings(data_dir=tmp_path), bootstrap_token=token,
        csr_pem=_key_and_csr("dev-e")[1], device_id="dev-e", profile="", agent_version="1",
    )  # fmt: skip
    cert = x509.load_pem_x509_certificate(result.certificate_chain_pem)
    assert as_utc(_get(engine, "dev-e").cert_not_after) == cert.not_valid_after_utc


def test_promotion_republishes_the_crl_with_the_superseded_serial(
    engine: Engine, ca: FleetCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet_server.certs import crl as crl_module
    from fleet_server.certs.renewal import promotion_observer

    monkeypatch.setattr(crl_module, "SOON_S", 0.05)
    _device(engine, ca)
    old_serial = _get(engine, "dev-1").cert_serial
    resp = renew_certificate(engine, ca, "dev-1", _key_and_csr("dev-1")[1])
    new_fp = x509.load_pem_x509_certificate(resp.certificate_chain_pem).fingerprint(hashes.SHA256()).hex()
    reloads: list[int] = []
    publisher = crl_module.CrlPublisher(engine, ca, tmp_path / "crl.pem", reload=lambda: reloads.append(1))
    observe = promotion_observer(publisher.publish_soon)

    async def scenario() -> None:
        publisher.bind_loop(asyncio.get_running_loop())
        with engine.begin() as conn:  # as the ingest flush thread would, in its transaction
            await asyncio.to_thread(
                observe, conn, [SimpleNamespace(device_id="dev-1", cert_fingerprint=new_fp)]
            )
        for _ in range(100):
            if reloads:
                return
            await asyncio.sleep(0.02)

    asyncio.run(scenario())
    crl = x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes())
    assert {format(r.serial_number, "x") for r in crl} == {old_serial} and reloads == [1]

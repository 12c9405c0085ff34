"""Certificate renewal: the decision, the crash-safe swap, and the session flow through SyncLoop."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from agent.config import AgentConfig, SyncConfig
from agent.identity import IdentityStore
from agent.outbox import TelemetryOutbox
from agent.renewal import (
    STAGED_CERT,
    STAGED_KEY,
    Renewer,
    Validity,
    cert_fingerprint,
    install_renewed,
    recover,
    renewal_due,
)
from agent.state import AgentSettings, CertificateRenewed, DesiredState, Inbound, Resources
from agent.statefile import StateFile
from agent.sync import Reconciler, SyncLoop
from tests.fakes.fleet import FakeClock, FakeFleet, FakeSession

DAY_MS = 86_400_000
RES = Resources(0.1, 1, 1, 1, 20.0, 1)
CA_KEY = ec.generate_private_key(ec.SECP256R1())


def _cert(
    key: ec.EllipticCurvePrivateKey, device_id: str, *, days_left: float, lifetime_days: float = 90
) -> bytes:
    now = datetime.now(UTC)
    not_after = now + timedelta(days=days_left)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, device_id)]))
        .issuer_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "fleet-ca")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - timedelta(days=lifetime_days))
        .not_valid_after(not_after)
        .sign(CA_KEY, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _enrolled(tmp_path: Path, *, days_left: float) -> IdentityStore:
    store = IdentityStore(tmp_path)
    key = store.load_or_create_key()
    store.save(
        device_id="dev-1",
        cert_chain_pem=_cert(key, "dev-1", days_left=days_left),
        ca_pem=b"ca",
        sync_endpoint="",
    )
    return store


# ---------------------------------------------------------------- the decision


def test_due_only_in_the_last_fraction_of_the_lifetime() -> None:
    v = Validity(not_before_ms=0, not_after_ms=90 * DAY_MS)
    assert not renewal_due(v, 59 * DAY_MS)  # 31 days of 90 left: more than a third
    assert renewal_due(v, 61 * DAY_MS)  # 29 days left
    assert renewal_due(v, 100 * DAY_MS)  # expired: still try (the server decides)
    assert not renewal_due(v, 61 * DAY_MS, fraction=0.1)
    assert renewal_due(Validity(5, 5), 0)  # a zero lifetime is always due


def test_a_recent_attempt_waits_before_retrying() -> None:
    v = Validity(0, 90 * DAY_MS)
    now = 80 * DAY_MS
    assert not renewal_due(v, now, last_attempt_ms=now - 1000, retry_after_s=600)
    assert renewal_due(v, now, last_attempt_ms=now - 601_000, retry_after_s=600)


@given(
    lifetime=st.integers(1, 10**12),
    elapsed=st.integers(-(10**12), 2 * 10**12),
    fraction=st.floats(0.01, 0.99),
)
def test_due_is_monotonic_in_time(lifetime: int, elapsed: int, fraction: float) -> None:
    v = Validity(0, lifetime)
    if renewal_due(v, elapsed, fraction=fraction):
        assert renewal_due(v, elapsed + 1, fraction=fraction)  # once due, stays due


# ---------------------------------------------------------------- the swap


def test_install_keeps_the_old_pair_as_prev_and_uses_the_new_one(tmp_path: Path) -> None:
    store = _enrolled(tmp_path, days_left=10)
    old_key, old_cert = store.key_path.read_bytes(), store.cert_path.read_bytes()
    renewer = Renewer(store)
    csr = x509.load_pem_x509_csr(renewer.start("dev-1", 0))
    new_chain = _cert_for_csr(csr, days_left=90)
    assert renewer.finish(CertificateRenewed(new_chain, b"", 0))
    ident = store.load()
    assert ident.cert_chain_pem == new_chain and ident.key_pem != old_key
    assert _matches(ident.key_pem, ident.cert_chain_pem)
    assert (store.dir / "device.key.prev").read_bytes() == old_key
    assert (store.dir / "device.pem.prev").read_bytes() == old_cert
    assert store.key_mode() == 0o600
    renewer.session_succeeded()
    assert not (store.dir / "device.key.prev").exists() and not (store.dir / "device.pem.prev").exists()


def test_a_refused_or_mismatched_answer_changes_nothing(tmp_path: Path) -> None:
    store = _enrolled(tmp_path, days_left=10)
    before = (store.key_path.read_bytes(), store.cert_path.read_bytes())
    renewer = Renewer(store)
    renewer.start("dev-1", 0)
    assert not renewer.finish(CertificateRenewed(b"", b"", 0, error="bad CSR"))
    renewer.start("dev-1", 0)
    other = ec.generate_private_key(ec.SECP256R1())
    assert not renewer.finish(CertificateRenewed(_cert(other, "dev-1", days_left=90), b"", 0))
    assert not renewer.finish(CertificateRenewed(_cert(other, "dev-1", days_left=90), b"", 0))  # none pending
    assert (store.key_path.read_bytes(), store.cert_path.read_bytes()) == before


@pytest.mark.parametrize("crash_after", ["staged_key", "staged_both", "key_replaced"])
def test_recover_after_a_crash_leaves_a_matching_pair(tmp_path: Path, crash_after: str) -> None:
    store = _enrolled(tmp_path, days_left=10)
    old = (store.key_path.read_bytes(), store.cert_path.read_bytes())
    new_key = ec.generate_private_key(ec.SECP256R1())
    new_key_pem = new_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    new_cert = _cert(new_key, "dev-1", days_left=90)
    (store.dir / STAGED_KEY).write_bytes(new_key_pem)
    if crash_after in ("staged_both", "key_replaced"):
        (store.dir / STAGED_CERT).write_bytes(new_cert)
    if crash_after == "key_replaced":
        (store.dir / STAGED_KEY).replace(store.key_path)
    recover(store)
    recover(store)  # idempotent
    pair = (store.key_path.read_bytes(), store.cert_path.read_bytes())
    assert _matches(*pair)
    assert pair == (old if crash_after == "staged_key" else (new_key_pem, new_cert))
    assert not (store.dir / STAGED_KEY).exists() and not (store.dir / STAGED_CERT).exists()


def test_install_refuses_a_chain_for_another_key(tmp_path: Path) -> None:
    store = _enrolled(tmp_path, days_left=10)
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValueError):
        install_renewed(store, key, CertificateRenewed(_cert(other, "dev-1", days_left=9), b"", 0))


def test_fingerprint_is_sha256_of_the_leaf_der(tmp_path: Path) -> None:
    store = _enrolled(tmp_path, days_left=10)
    chain = store.cert_path.read_bytes()
    import hashlib

    der = x509.load_pem_x509_certificate(chain).public_bytes(serialization.Encoding.DER)
    assert cert_fingerprint(chain) == hashlib.sha256(der).hexdigest()
    assert cert_fingerprint(b"not a cert") == ""


# ---------------------------------------------------------------- through the Sync loop


class WallClock(FakeClock):
    """The loop's monotonic time, the real wall clock (certificate validity is wall-clock time)."""

    def time_ms(self) -> int:
        return int(datetime.now(UTC).timestamp() * 1000)


class RenewingSession(FakeSession):
    """FakeSession that also answers renew requests, like the server does (CA signs the CSR)."""

    def __init__(self, fleet: RenewingFleet) -> None:
        super().__init__(fleet)
        self.renewing = fleet

    async def send_renew(self, csr_pem: bytes) -> None:
        self.renewing.csrs.append(csr_pem)
        csr = x509.load_pem_x509_csr(csr_pem)
        self.inbox.put_nowait(CertificateRenewed(_cert_for_csr(csr, days_left=90), b"", 0))  # type: ignore[arg-type]


class RenewingFleet(FakeFleet):
    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.csrs: list[bytes] = []

    async def open(self) -> RenewingSession:  # type: ignore[override]
        await super().open()
        return RenewingSession(self)


def test_sync_loop_renews_once_reconnects_with_the_new_certificate_and_drops_prev(tmp_path: Path) -> None:
    store = _enrolled(tmp_path / "data", days_left=5)
    old_cert = store.cert_path.read_bytes()
    fleet = RenewingFleet(desired=DesiredState(generation=1, settings=AgentSettings(report_interval_s=1)))
    cfg = AgentConfig(sync=SyncConfig(backoff_initial_s=0.01, backoff_max_s=0.05, shutdown_flush_s=0.5))
    loop = SyncLoop(
        config=cfg,
        device_id="dev-1",
        outbox=TelemetryOutbox(tmp_path / "outbox.db", max_records=100),
        connector=fleet,
        reconciler=Reconciler(StateFile(tmp_path / "state.json")),
        clock=WallClock(),
        resources=lambda: RES,
        status_path=tmp_path / "status.json",
        rng=random.Random(1),
        renewer=Renewer(store),
    )

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(loop.run(stop))
        for _ in range(200):
            if fleet.sessions >= 2 and loop.status.reports_acked >= 2:
                break
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    assert len(fleet.csrs) == 1  # renewed once; the new certificate is not near its end
    assert fleet.sessions >= 2  # reconnected at once with the new identity
    assert store.cert_path.read_bytes() != old_cert
    assert _matches(store.key_path.read_bytes(), store.cert_path.read_bytes())
    assert not (store.dir / "device.pem.prev").exists()  # a later session succeeded: prev dropped


def test_sessions_without_renewal_support_are_left_alone(tmp_path: Path) -> None:
    store = _enrolled(tmp_path / "data", days_left=1)
    fleet = FakeFleet()
    renewer = Renewer(store)
    session = asyncio.run(fleet.open())
    from agent.ports import RenewCapable

    assert not isinstance(session, RenewCapable)
    assert renewer.due(int(datetime.now(UTC).timestamp() * 1000))
    _ = Inbound  # the fake's receive type is the plain port's


def _cert_for_csr(csr: x509.CertificateSigningRequest, *, days_left: float) -> bytes:
    key = csr.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "fleet-ca")]))
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=days_left))
        .sign(CA_KEY, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _matches(key_pem: bytes, chain_pem: bytes) -> bool:
    key = serialization.load_pem_private_key(key_pem, password=None)
    cert = x509.load_pem_x509_certificates(chain_pem)[0]
    return bool(cert.public_key() == key.public_key())

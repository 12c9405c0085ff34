"""The agent's `mqtts://` path against a test-owned Mosquitto with TLS and client certificates:
mutual TLS with the identity store's files and the broker name checked against `server_name`;
the report names the certificate in use; a wrong server name or a certificate from another CA
is a retryable TransportError (the same class as a refused gRPC handshake)."""

from __future__ import annotations

import asyncio
import getpass
import ipaddress
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from agent.errors import TransportError
from agent.identity import IdentityStore
from agent.renewal import cert_fingerprint
from agent.state import DeviceReport, ObservedState, Resources
from agent.transport.grpc_fleet import SessionRejectedError
from agent.transport.mqtt_fleet import MqttFleetConnector
from protos.edgeloop import mqtt
from protos.edgeloop.v1 import device_pb2 as pb
from tests.helpers.net import free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto binary not installed")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cn: str,
    *,
    ca: bool = False,
    san: str = "",
) -> bytes:
    now = datetime.now(UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_cn)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(san), x509.IPAddress(ipaddress.ip_address("127.0.0.2"))]
            ),
            critical=False,
        )
    return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@dataclass
class Broker:
    port: int
    dir: Path
    ca_key: ec.EllipticCurvePrivateKey
    ca_pem: bytes


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    d = tmp_path / "broker"
    d.mkdir()
    ca_key = _key()
    ca_pem = _issue("fleet-ca", ca_key, ca_key, "fleet-ca", ca=True)
    srv_key = _key()
    (d / "ca.pem").write_bytes(ca_pem)
    (d / "server.pem").write_bytes(_issue("broker.test", srv_key, ca_key, "fleet-ca", san="broker.test"))
    (d / "server.key").write_bytes(_pem_key(srv_key))
    port = free_port()
    (d / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\n"
        f"cafile {d / 'ca.pem'}\ncertfile {d / 'server.pem'}\nkeyfile {d / 'server.key'}\n"
        "require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.2\n"
        "allow_anonymous false\npersistence false\n"
        f"user {getpass.getuser()}\n"  # tmp dirs are private to this user: do not drop to `mosquitto`
    )
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(d / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline, up = time.monotonic() + 10, False
    while not up and time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            up = True
        except OSError:
            time.sleep(0.05)
    if not up:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"test broker did not start: {err.decode()[-2000:]}")
    try:
        yield Broker(port, d, ca_key, ca_pem)
    finally:
        proc.terminate()
        proc.wait(10)


def _device(tmp_path: Path, broker: Broker, device_id: str, *, other_ca: bool = False) -> IdentityStore:
    store = IdentityStore(tmp_path / device_id)
    key = store.load_or_create_key()
    signer = _key() if other_ca else broker.ca_key
    chain = _issue(device_id, key, signer, "fleet-ca")
    store.save(device_id=device_id, cert_chain_pem=chain, ca_pem=broker.ca_pem, sync_endpoint="")
    return store


REPORT = DeviceReport("x", 1, 0, "v", "p", ObservedState(), Resources(0, 0, 0, 0, 0, 0), 0, 0)


def test_mutual_tls_session_reports_the_certificate_fingerprint(tmp_path: Path, broker: Broker) -> None:
    device_id = f"t-{uuid.uuid4().hex[:12]}"
    store = _device(tmp_path, broker, device_id)
    # a subscriber with its own certificate plays the server
    sub_store = _device(tmp_path, broker, "server-1")
    got: list[bytes] = []
    ready = threading.Event()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="server-1")
    c.tls_set(str(sub_store.ca_path), str(sub_store.cert_path), str(sub_store.key_path))
    c.tls_insecure_set(True)  # we dial 127.0.0.1; the name is checked by the agent side under test
    c.on_connect = lambda cl, *_: cl.subscribe(mqtt.topic(device_id, mqtt.UP), 1)
    c.on_subscribe = lambda *_: ready.set()
    c.on_message = lambda _c, _u, m: got.append(bytes(m.payload))
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        assert ready.wait(10)
        connector = MqttFleetConnector(
            endpoint=f"mqtts://127.0.0.1:{broker.port}",
            device_id=device_id,
            store=store,
            server_name="broker.test",
        )

        async def scenario() -> None:
            session = await connector.open()
            await session.send_report(REPORT)
            await session.close()

        asyncio.run(scenario())
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        c.disconnect()
        c.loop_stop()
    assert got, "the report never reached the subscriber"
    report = pb.SyncRequest.FromString(got[0]).report
    assert report.cert_fingerprint == cert_fingerprint(store.cert_path.read_bytes()) != ""


@pytest.mark.parametrize("case", ["wrong_server_name", "certificate_from_another_ca"])
def test_tls_failures_are_retryable_transport_errors(tmp_path: Path, broker: Broker, case: str) -> None:
    device_id = f"t-{uuid.uuid4().hex[:12]}"
    store = _device(tmp_path, broker, device_id, other_ca=case == "certificate_from_another_ca")
    connector = MqttFleetConnector(
        endpoint=f"mqtts://127.0.0.1:{broker.port}",
        device_id=device_id,
        store=store,
        server_name="other.test" if case == "wrong_server_name" else "broker.test",
        connect_timeout_s=5,
    )
    with pytest.raises(TransportError) as info:
        asyncio.run(connector.open())
    assert not isinstance(info.value, SessionRejectedError)
    expected = {
        "wrong_server_name": "Hostname mismatch",
        "certificate_from_another_ca": "closed the connection",
    }
    assert expected[case] in str(info.value)  # failed for this reason, not a refused TCP connect

"""A real Mosquitto configured by `write_broker_config` on a free loopback port, and paho clients for it.

`Broker.start()` runs `/usr/sbin/mosquitto -c <generated conf>` and returns once a TLS handshake
with the server identity succeeds; `client()` connects a paho client with any certificate and
records what happens to it (connect, suback, puback reason codes, messages, disconnects).
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from fleet_server.mqtt.brokerconf import BrokerFiles, BrokerOptions, write_broker_config
from fleet_server.pki import FleetCA
from tests.helpers.net import free_port

MOSQUITTO = Path("/usr/sbin/mosquitto")


@dataclass
class Cert:
    cert: Path
    key: Path
    serial: str = ""
    fingerprint: str = ""


def device_cert(ca: FleetCA, device_id: str, out: Path, *, days: int = 30) -> Cert:
    """A device key and a certificate the fleet CA issued for `device_id` (as enrollment does)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    issued = ca.sign_device_csr(csr.public_bytes(serialization.Encoding.PEM), device_id, days=days)
    out.mkdir(parents=True, exist_ok=True)
    cert, key_path = out / f"{device_id}.pem", out / f"{device_id}.key"
    cert.write_bytes(issued.pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Cert(cert, key_path, issued.serial, issued.fingerprint)


class Recorder:
    """Everything a paho client saw, thread-safe; `wait_for` polls it."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()

    def add(self, *event: Any) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        with self._lock:
            return [e for e in self.events if e[0] == kind]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 10.0) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.of(kind)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {count} {kind!r} events; saw {self.events!r}")


@dataclass
class Broker:
    files: BrokerFiles
    port: int
    proc: subprocess.Popen[bytes] | None = None
    clients: list[paho.Client] = field(default_factory=list)

    @property
    def server(self) -> Cert:
        return Cert(self.files.server_cert, self.files.server_key)

    def start(self, timeout: float = 10.0) -> None:
        log = open(self.files.dir / "mosquitto.log", "ab")  # lives as long as the process
        self.proc = subprocess.Popen(
            [str(MOSQUITTO), "-c", str(self.files.config), "-v"], stdout=log, stderr=log
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited {self.proc.returncode}: {self.log()[-2000:]}")
            if self._tls_ok():
                return
            time.sleep(0.05)
        raise AssertionError(f"mosquitto did not accept TLS within {timeout}s: {self.log()[-2000:]}")

    def _tls_ok(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.files.ca))
        ctx.load_cert_chain(str(self.files.server_cert), str(self.files.server_key))
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw,
                ctx.wrap_socket(raw, server_hostname="localhost"),
            ):
                return True
        except OSError:
            return False

    def log(self) -> str:
        path = self.files.dir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def hup(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGHUP)

    def client(
        self,
        client_id: str,
        cert: Cert | None,
        *,
        ca_file: Path | None = None,
        protocol: MQTTProtocolVersion = paho.MQTTv311,
        clean_session: bool = True,
        reconnect: bool = False,
    ) -> tuple[paho.Client, Recorder]:
        """Connect (non-blocking: watch `rec.wait_for("connect")`); the loop runs in paho's thread."""
        kwargs: dict[str, Any] = {} if protocol == paho.MQTTv5 else {"clean_session": clean_session}
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kwargs)
        c.tls_set(
            ca_certs=str(ca_file or self.files.ca),
            certfile=str(cert.cert) if cert else None,
            keyfile=str(cert.key) if cert else None,
        )
        rec = Recorder()
        c.on_connect = lambda _c, _u, _f, rc, _p: rec.add("connect", str(rc))
        c.on_connect_fail = lambda _c, _u: rec.add("connect_fail")
        c.on_disconnect = lambda _c, _u, _f, rc, _p: rec.add("disconnect", str(rc))
        c.on_subscribe = lambda _c, _u, _m, rcs, _p: rec.add("suback", [str(r) for r in rcs])
        c.on_message = lambda _c, _u, m: rec.add("msg", m.topic, bytes(m.payload))
        c.on_publish = lambda _c, _u, mid, rc, _p: rec.add("puback", mid, str(rc))
        if not reconnect:
            c.reconnect_delay_set(60, 60)
        try:
            c.connect("127.0.0.1", self.port, keepalive=30)
        except (OSError, ssl.SSLError) as err:
            rec.add("connect_error", type(err).__name__)
            return c, rec
        c.loop_start()
        self.clients.append(c)
        return c, rec

    def server_env(self, client_id: str) -> dict[str, str]:
        """The fleet server's MQTT settings for this broker (one stable client id: a restarted
        server resumes its persistent session and its queue)."""
        return {
            "EDGELOOP_MQTT_URL": f"mqtts://localhost:{self.port}",
            "EDGELOOP_MQTT_CA_FILE": str(self.files.ca),
            "EDGELOOP_MQTT_CLIENT_CERT": str(self.files.server_cert),
            "EDGELOOP_MQTT_CLIENT_KEY": str(self.files.server_key),
            "EDGELOOP_MQTT_CLIENT_ID": client_id,
        }

    def stop(self) -> None:
        for c in self.clients:
            c.disconnect()
            c.loop_stop()
        self.clients.clear()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def running_broker(
    ca: FleetCA, out: Path, *, crl_pem: bytes | None = None, **options: Any
) -> Iterator[Broker]:
    """Generate the config for `ca` into `out` and run Mosquitto on a free port until exit."""
    port = free_port()
    # pytest's tmp dirs are private to this user: the broker keeps running as it (`user root` = no drop)
    options.setdefault("run_as", pwd.getpwuid(os.geteuid()).pw_name)
    files = write_broker_config(
        ca, out, BrokerOptions(port=port, bind="127.0.0.1", **options), crl_pem=crl_pem or ca.build_crl([])
    )
    broker = Broker(files, port)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def operator_broker(server_env: dict[str, str], out: Path) -> Broker:
    """A Mosquitto configured the operator's way, started on a free loopback port: the server's own
    `edgeloop-server mqtt-config` writes its config, ACL, CRL and the server's MQTT identity into
    `out` (from the fleet CA in `server_env`'s data dir). The caller stops it."""
    import json

    from tests.helpers.procs import BIN

    port = free_port()
    done = subprocess.run(
        [BIN / "edgeloop-server", "mqtt-config", "--out", str(out), "--port", str(port),
         "--bind", "127.0.0.1", "--host", "localhost", "--run-as", pwd.getpwuid(os.geteuid()).pw_name,
         "--json"],
        env=server_env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    broker = Broker(BrokerFiles(**{k: Path(v) for k, v in json.loads(done.stdout).items()}), port)
    broker.start()
    return broker

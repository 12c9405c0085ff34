"""A light asyncio MQTT 3.1.1 client for one simulated device: contract B's `Link` over MQTT.

Why not paho: a paho client owns a network thread, and 10,000 simulated devices would be 10,000
threads. This one is a reader task and a keepalive timer on the caller's event loop, written on
asyncio streams, speaking only what a device needs:

- CONNECT with client id `mqtt.client_id(device_id)`, clean_session False (the broker keeps the
  device's QoS 1 `down` messages while it is away), keepalive, last will `offline` retained on
  `status` at QoS 1; CONNACK 4/5 (bad credentials, not authorized) -> `LinkRejected`, any other
  refusal -> `LinkError`;
- SUBSCRIBE `down` + `desired` at QoS 1; a SUBACK failure (0x80, the ACL refused) -> `LinkRejected`;
  then `online` retained on `status`;
- `send`: PUBLISH QoS 1 of a bare SyncRequest on `up` with a packet id; returns once the broker's
  PUBACK arrives (timeout or drop -> `LinkError`);
- inbound PUBLISH QoS 0/1 (PUBACK sent back): `down` -> SyncResponse, `desired` -> DesiredState,
  an empty retained message is skipped; a payload that does not parse is counted (`malformed`) and
  dropped, never raised;
- PINGREQ when nothing was sent for 3/4 of the keepalive; no PINGRESP within the keepalive drops;
- `close`: `offline` retained, then DISCONNECT (so the broker does not fire the will); `abort`
  cuts the connection without either (the will fires: fault injection).

TLS: mutual TLS with the fleet CA and the device's key and certificate (`SimIdentity` PEM bytes).
`ssl.SSLContext.load_cert_chain` only reads files, so the key and certificate are written to a
private temporary directory (one per process, removed at exit) for that one call and
removed at once. Plain `mqtt://` for a local
broker. No QoS 2, no MQTT 5, no resend of unacked publishes after a reconnect (the simulator sends
again with the same seq on a new link; the server's seq acks make that harmless).

The packet codec (remaining length, packet builders, `parse_packet`) is pure and tested alone
(tests/unit/bench/test_mqtt_link.py); `MqttLink` only does I/O around it. The module is past 500
lines because the codec lives beside its only user; move it to `_mqtt_codec.py` if a second client
needs it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import os
import shutil
import ssl
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from bench.fleet_sim.link import LinkError, LinkRejected, SimIdentity
from protos.edgeloop import mqtt
from protos.edgeloop.v1 import device_pb2 as pb

# Control packet types (MQTT 3.1.1 section 2.2.1), shifted into the first byte's high nibble.
CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x82, 0x90, 0xC0, 0xD0, 0xE0
MAX_REMAINING = 268_435_455
MAX_INBOUND_BYTES = 1 << 20  # a device's inbound limit: anything larger ends the link
CONNACK_REJECTED = frozenset({4, 5})  # bad user name or password, not authorized
SUBACK_FAILURE = 0x80


class ProtocolError(Exception):
    """The peer sent bytes that are not an MQTT 3.1.1 packet this client understands."""


# ------------------------------------------------------------------ codec (pure)


def encode_remaining_length(n: int) -> bytes:
    if not 0 <= n <= MAX_REMAINING:
        raise ValueError(f"remaining length out of range: {n}")
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def decode_remaining_length(buf: bytes | bytearray, start: int = 0) -> tuple[int, int] | None:
    """(value, bytes used) of the remaining length at `buf[start:]`, None if it is incomplete.
    Raises ProtocolError past 4 bytes."""
    value = 0
    for i in range(4):
        if start + i >= len(buf):
            return None
        byte = buf[start + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, i + 1
    raise ProtocolError("remaining length longer than 4 bytes")


def _str(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    if len(raw) > 0xFFFF:
        raise ValueError("MQTT string longer than 65535 bytes")
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_remaining_length(len(body)) + body


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def connect_packet(
    client_id: str, *, keepalive_s: int, clean_session: bool, will: Will | None = None
) -> bytes:
    flags = 0x02 if clean_session else 0
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    body = _str("MQTT") + bytes((4, flags)) + struct.pack("!H", keepalive_s) + _str(client_id)
    if will is not None:
        body += _str(will.topic) + _str(will.payload)
    return _packet(CONNECT, body)


def subscribe_packet(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    body = struct.pack("!H", packet_id) + b"".join(_str(f) + bytes((q,)) for f, q in filters)
    return _packet(SUBSCRIBE, body)


def publish_packet(
    topic: str, payload: bytes, *, qos: int, packet_id: int = 0, retain: bool = False, dup: bool = False
) -> bytes:
    first = PUBLISH | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = _str(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return _packet(first, body)


def puback_packet(packet_id: int) -> bytes:
    return bytes((PUBACK, 2)) + struct.pack("!H", packet_id)


PINGREQ_PACKET = bytes((PINGREQ, 0))
DISCONNECT_PACKET = bytes((DISCONNECT, 0))


@dataclass(frozen=True)
class ConnAck:
    session_present: bool
    code: int


@dataclass(frozen=True)
class SubAck:
    packet_id: int
    codes: tuple[int, ...]


@dataclass(frozen=True)
class PubAck:
    packet_id: int


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int


@dataclass(frozen=True)
class PingResp:
    pass


Packet = ConnAck | SubAck | PubAck | Publish | PingResp


def parse_packet(first: int, body: bytes) -> Packet:
    """One packet a broker sends a client, from its first byte and body. Raises ProtocolError."""
    kind = first & 0xF0
    if kind == PUBLISH:
        qos = (first >> 1) & 0x03
        if qos == 3 or len(body) < 2:
            raise ProtocolError("malformed PUBLISH")
        n = struct.unpack_from("!H", body)[0]
        end = 2 + n + (2 if qos else 0)
        if len(body) < end:
            raise ProtocolError("PUBLISH shorter than its topic")
        try:
            topic = body[2 : 2 + n].decode()
        except UnicodeDecodeError as err:
            raise ProtocolError("PUBLISH topic is not UTF-8") from err
        pid = struct.unpack_from("!H", body, 2 + n)[0] if qos else 0
        return Publish(topic, body[end:], qos, bool(first & 0x01), bool(first & 0x08), pid)
    if kind == PUBACK and len(body) == 2:
        return PubAck(struct.unpack("!H", body)[0])
    if kind == CONNACK and len(body) == 2:
        return ConnAck(bool(body[0] & 0x01), body[1])
    if kind == SUBACK and len(body) >= 3:
        return SubAck(struct.unpack_from("!H", body)[0], tuple(body[2:]))
    if kind == PINGRESP and not body:
        return PingResp()
    raise ProtocolError(f"unexpected packet type 0x{first:02x} ({len(body)} bytes)")


def decode_downlink(kind: str, payload: bytes) -> pb.SyncResponse | pb.DesiredState | None:
    """The message on `down`/`desired`; None for an empty retained message. Raises DecodeError."""
    if not payload:
        return None
    msg: pb.SyncResponse | pb.DesiredState = pb.SyncResponse() if kind == mqtt.DOWN else pb.DesiredState()
    msg.ParseFromString(payload)
    return msg


# ------------------------------------------------------------------ TLS


def client_ssl_context(identity: SimIdentity) -> ssl.SSLContext:
    """Mutual TLS 1.2+: the broker is checked against the fleet CA, the device shows its certificate.
    Cached per identity (LRU, CONTEXT_CACHE): a context costs a key load (~3-10 ms of CPU), and
    building one per reconnect attempt turned a 10,000-device reconnect storm into a collapse
    (attempts timing out while the next ones queued up behind their key loads)."""
    key = (identity.device_id, identity.key_pem, identity.cert_pem, identity.ca_pem)
    ctx = _contexts.pop(key, None) or _new_context(identity)
    _contexts[key] = ctx  # most recently used last
    if len(_contexts) > CONTEXT_CACHE:
        _contexts.pop(next(iter(_contexts)))
    return ctx


CONTEXT_CACHE = 20_000
_contexts: dict[tuple[str, bytes, bytes, bytes], ssl.SSLContext] = {}


def _new_context(identity: SimIdentity) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=identity.ca_pem.decode())
    base = _tls_dir() / f"{os.getpid()}-{next(_serial)}"
    cert, key = base.with_suffix(".pem"), base.with_suffix(".key")
    try:
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(identity.key_pem)
        cert.write_bytes(identity.cert_pem)
        ctx.load_cert_chain(cert, key)
    finally:
        key.unlink(missing_ok=True)
        cert.unlink(missing_ok=True)
    return ctx


_serial = itertools.count()
_dir: Path | None = None


def _tls_dir() -> Path:
    """One private (0700) directory per process for the moment a key is loaded, removed at exit
    (a directory per context cost as much as the key load itself)."""
    global _dir
    if _dir is None or not _dir.is_dir():
        _dir = Path(tempfile.mkdtemp(prefix="edgeloop-sim-tls-"))
        atexit.register(shutil.rmtree, _dir, ignore_errors=True)
    return _dir


# ------------------------------------------------------------------ the link


_CLOSED = object()


class MqttLink:
    """One simulated device's MQTT session (contract B `Link`). All methods on one event loop.

    Args:
        identity: the device's id, key, certificate and the fleet CA.
        host, port: the broker.
        tls: mutual TLS (`mqtts://`) or plain (`mqtt://`, a local broker without identity).
        keepalive_s: MQTT keepalive (PINGREQ after 3/4 of it without traffic).
        ack_timeout_s: how long `send` waits for the broker's PUBACK.
        server_hostname: name checked against the broker's certificate (default: `host`;
            `server_name` is the same, as make_link's gRPC side calls it).
        ssl_context: a ready context (default: built from `identity` on first open, then kept).
    """

    def __init__(
        self,
        identity: SimIdentity,
        host: str,
        port: int,
        tls: bool,
        keepalive_s: float = 60.0,
        *,
        ack_timeout_s: float = 30.0,
        server_hostname: str | None = None,
        server_name: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.identity = identity
        self.device_id = identity.device_id
        self._host, self._port, self._tls = host, port, tls
        self._keepalive = max(1, int(keepalive_s))
        self._ack_timeout = ack_timeout_s
        self._server_hostname = server_hostname or server_name or host
        self._ssl = ssl_context
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._ping: asyncio.TimerHandle | None = None
        self._pending: dict[int, asyncio.Future[Packet]] = {}
        self._inbox: asyncio.Queue[pb.SyncResponse | pb.DesiredState | object] = asyncio.Queue()
        self._next_id = 0
        self._last_sent = 0.0
        self._last_heard = 0.0
        self._error: LinkError | None = None
        self._closing = False
        self.malformed = 0  # inbound payloads that did not parse (dropped)
        self.session_present = False

    # -------------------------------------------------------------- Link

    async def open(self, timeout_s: float) -> None:
        """Connect, CONNECT/CONNACK, SUBSCRIBE/SUBACK, `online`. Raises LinkRejected or LinkError.
        A link that failed or was closed may be opened again (same broker session: clean_session
        False), but messages `recv` had not returned are gone with the old connection."""
        if self._writer is not None:
            self.abort()
        self._reset()
        try:
            await asyncio.wait_for(self._open(), timeout_s)
        except LinkError:
            self._teardown()
            raise
        except (TimeoutError, OSError, ssl.SSLError, ProtocolError, asyncio.IncompleteReadError) as err:
            self._teardown()
            raise LinkError(f"{self.device_id}: MQTT connect failed: {type(err).__name__}: {err}") from err

    async def send(self, req: pb.SyncRequest) -> None:
        """Publish `req` on `up` at QoS 1; returns when the broker acked it. Raises LinkError."""
        await self.publish(mqtt.topic(self.device_id, mqtt.UP), req.SerializeToString())

    async def recv(self) -> pb.SyncResponse | pb.DesiredState:
        """The next downlink message; raises LinkError once the connection is gone."""
        item = await self._inbox.get()
        if item is _CLOSED:
            self._inbox.put_nowait(_CLOSED)  # every later recv raises too
            raise self._error or LinkError(f"{self.device_id}: link closed")
        assert isinstance(item, pb.SyncResponse | pb.DesiredState)
        return item

    async def close(self) -> None:
        """`offline` retained, DISCONNECT, close. Never raises."""
        if self._writer is not None and self._error is None and not self._closing:
            with contextlib.suppress(LinkError):
                await self.publish(mqtt.topic(self.device_id, mqtt.STATUS), mqtt.OFFLINE, retain=True)
            self._closing = True
            with contextlib.suppress(Exception):
                self._writer.write(DISCONNECT_PACKET)
                await asyncio.wait_for(self._writer.drain(), 2.0)
        self._closing = True
        self._fail(LinkError(f"{self.device_id}: link closed"))
        self._teardown()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 2.0)

    def abort(self) -> None:
        """Cut the connection without DISCONNECT (the broker publishes the will)."""
        self._fail(LinkError(f"{self.device_id}: link aborted"))
        if self._writer is not None:
            self._writer.transport.abort()
        self._teardown()

    @property
    def connected(self) -> bool:
        return self._writer is not None and self._error is None

    # -------------------------------------------------------------- publishing

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """QoS 1 publish, awaiting PUBACK (LinkError on timeout or drop)."""
        pid = self._packet_id()
        fut = self._expect(pid)
        self._write(publish_packet(topic, payload, qos=1, packet_id=pid, retain=retain))
        await self._await(fut, pid)

    def _packet_id(self) -> int:
        for _ in range(0xFFFF):
            self._next_id = self._next_id % 0xFFFF + 1
            if self._next_id not in self._pending:
                return self._next_id
        raise LinkError(f"{self.device_id}: 65535 packets in flight")

    def _expect(self, pid: int) -> asyncio.Future[Packet]:
        if self._error is not None:
            raise self._error
        fut: asyncio.Future[Packet] = asyncio.get_running_loop().create_future()
        self._pending[pid] = fut
        return fut

    async def _await(self, fut: asyncio.Future[Packet], pid: int) -> Packet:
        try:
            return await asyncio.wait_for(fut, self._ack_timeout)
        except TimeoutError as err:
            raise LinkError(f"{self.device_id}: no ack for packet {pid} in {self._ack_timeout}s") from err
        finally:
            self._pending.pop(pid, None)

    def _write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        assert self._writer is not None
        self._writer.write(data)
        self._last_sent = time.monotonic()

    # -------------------------------------------------------------- opening

    async def _open(self) -> None:
        ctx = None
        if self._tls:
            ctx = self._ssl = self._ssl or client_ssl_context(self.identity)
        self._reader, self._writer = await asyncio.open_connection(
            self._host,
            self._port,
            ssl=ctx,
            server_hostname=self._server_hostname if ctx else None,
            limit=MAX_INBOUND_BYTES,
        )
        will = Will(mqtt.topic(self.device_id, mqtt.STATUS), mqtt.OFFLINE)
        client_id = mqtt.client_id(self.device_id)
        self._write(connect_packet(client_id, keepalive_s=self._keepalive, clean_session=False, will=will))
        ack = await self._read_packet()
        if not isinstance(ack, ConnAck):
            raise ProtocolError(f"expected CONNACK, got {type(ack).__name__}")
        if ack.code in CONNACK_REJECTED:
            raise LinkRejected(f"{self.device_id}: broker refused the connection (CONNACK {ack.code})")
        if ack.code:
            raise LinkError(f"{self.device_id}: broker refused the connection (CONNACK {ack.code})")
        self.session_present = ack.session_present
        self._last_heard = time.monotonic()
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop())
        self._schedule_ping()
        pid = self._packet_id()
        fut = self._expect(pid)
        filters = [(mqtt.topic(self.device_id, k), mqtt.QOS) for k in (mqtt.DOWN, mqtt.DESIRED)]
        self._write(subscribe_packet(pid, filters))
        suback = await self._await(fut, pid)
        if not isinstance(suback, SubAck) or any(c == SUBACK_FAILURE for c in suback.codes):
            raise LinkRejected(f"{self.device_id}: subscription refused ({suback})")
        await self.publish(mqtt.topic(self.device_id, mqtt.STATUS), mqtt.ONLINE, retain=True)

    async def _read_packet(self) -> Packet:
        assert self._reader is not None
        first = (await self._reader.readexactly(1))[0]
        header = bytearray()
        while True:
            header += await self._reader.readexactly(1)
            decoded = decode_remaining_length(header)
            if decoded is not None:
                break
        length = decoded[0]
        if length > MAX_INBOUND_BYTES:
            raise ProtocolError(f"inbound packet of {length} bytes")
        body = await self._reader.readexactly(length) if length else b""
        return parse_packet(first, body)

    # -------------------------------------------------------------- reading

    async def _read_loop(self) -> None:
        try:
            while True:
                packet = await self._read_packet()
                self._last_heard = time.monotonic()
                if isinstance(packet, Publish):
                    self._on_publish(packet)
                elif isinstance(packet, PubAck | SubAck):
                    fut = self._pending.get(packet.packet_id)
                    if fut is not None and not fut.done():
                        fut.set_result(packet)
                elif isinstance(packet, ConnAck):
                    raise ProtocolError("second CONNACK")
        except asyncio.CancelledError:
            raise
        except (OSError, asyncio.IncompleteReadError, ProtocolError, LinkError) as err:
            self._fail(LinkError(f"{self.device_id}: connection lost: {type(err).__name__}: {err}"))
            self._teardown()

    def _on_publish(self, msg: Publish) -> None:
        if msg.qos == 2:
            raise ProtocolError("QoS 2 PUBLISH on a QoS 1 subscription")
        if msg.qos == 1:
            self._write(puback_packet(msg.packet_id))
        parsed = mqtt.parse(msg.topic)
        if parsed is None or parsed[0] != self.device_id or parsed[1] not in (mqtt.DOWN, mqtt.DESIRED):
            self.malformed += 1
            return
        try:
            decoded = decode_downlink(parsed[1], msg.payload)
        except DecodeError:
            self.malformed += 1
            return
        if decoded is not None:
            self._inbox.put_nowait(decoded)

    # -------------------------------------------------------------- keepalive, failure

    def _schedule_ping(self) -> None:
        self._ping = asyncio.get_running_loop().call_later(self._keepalive * 0.75, self._on_ping_timer)

    def _on_ping_timer(self) -> None:
        if self._error is not None:
            return
        now = time.monotonic()
        if now - self._last_heard > self._keepalive * 1.5:
            self.abort()  # the broker went silent: a half-open connection
            return
        if now - self._last_sent >= self._keepalive * 0.5:
            with contextlib.suppress(LinkError):
                self._write(PINGREQ_PACKET)
        self._schedule_ping()

    def _reset(self) -> None:
        self._reader = self._writer = None
        self._read_task = self._ping = None
        self._pending = {}
        self._inbox = asyncio.Queue()
        self._error = None
        self._closing = False

    def _fail(self, err: LinkError) -> None:
        if self._error is not None:
            return
        self._error = err
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._inbox.put_nowait(_CLOSED)

    def _teardown(self) -> None:
        if self._error is None:
            self._error = LinkError(f"{self.device_id}: link closed")
            self._inbox.put_nowait(_CLOSED)
        if self._ping is not None:
            self._ping.cancel()
        task = self._read_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
        if self._writer is not None:
            self._writer.close()

"""The simulator's MQTT 3.1.1 codec (pure functions) and MqttLink's reactions to broker answers the
machine's Mosquitto never gives (CONNACK refusals, a failed SUBACK, garbage, silence), played by a
scripted asyncio server. The link against a real Mosquitto: tests/integration/test_sim_mqtt_link.py.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable

import pytest

from bench.fleet_sim.link import LinkError, LinkRejected, SimIdentity
from bench.fleet_sim.mqtt_link import (
    CONNACK,
    PINGRESP,
    PUBACK,
    SUBACK,
    ConnAck,
    MqttLink,
    PingResp,
    ProtocolError,
    PubAck,
    Publish,
    SubAck,
    Will,
    connect_packet,
    decode_downlink,
    decode_remaining_length,
    encode_remaining_length,
    parse_packet,
    puback_packet,
    publish_packet,
    subscribe_packet,
)
from protos.edgeloop import mqtt
from protos.edgeloop.v1 import device_pb2 as pb

VECTORS = [  # MQTT 3.1.1 table 2.4 boundaries
    (0, b"\x00"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (16_383, b"\xff\x7f"),
    (16_384, b"\x80\x80\x01"),
    (2_097_151, b"\xff\xff\x7f"),
    (2_097_152, b"\x80\x80\x80\x01"),
    (268_435_455, b"\xff\xff\xff\x7f"),
]


@pytest.mark.parametrize(("value", "encoded"), VECTORS)
def test_remaining_length_matches_the_spec_table(value: int, encoded: bytes) -> None:
    assert encode_remaining_length(value) == encoded
    assert decode_remaining_length(encoded) == (value, len(encoded))
    assert decode_remaining_length(b"\x30" + encoded + b"rest", 1) == (value, len(encoded))


def test_remaining_length_incomplete_too_long_and_out_of_range() -> None:
    assert decode_remaining_length(b"\x80\x80") is None
    assert decode_remaining_length(b"") is None
    with pytest.raises(ProtocolError):
        decode_remaining_length(b"\xff\xff\xff\xff\x01")
    for bad in (-1, 268_435_456):
        with pytest.raises(ValueError):
            encode_remaining_length(bad)


def test_connect_packet_bytes() -> None:
    will = Will("edgeloop/v1/devices/d1/status", b"offline")
    got = connect_packet("d1", keepalive_s=60, clean_session=False, will=will)
    body = (
        b"\x00\x04MQTT\x04"
        + bytes((0x04 | 0x08 | 0x20,))  # will, will QoS 1, will retain; clean_session off
        + b"\x00\x3c\x00\x02d1"
        + b"\x00\x1dedgeloop/v1/devices/d1/status\x00\x07offline"
    )
    assert got == b"\x10" + bytes((len(body),)) + body
    assert connect_packet("d1", keepalive_s=5, clean_session=True)[9] == 0x02


def test_subscribe_and_puback_bytes() -> None:
    assert subscribe_packet(7, [("a/b", 1)]) == b"\x82\x08\x00\x07\x00\x03a/b\x01"
    assert puback_packet(0x1234) == b"\x40\x02\x12\x34"


@pytest.mark.parametrize("qos", [0, 1])
def test_publish_round_trips_through_parse(qos: int) -> None:
    payload = bytes(range(256)) * 3  # a remaining length of two bytes
    raw = publish_packet("t/x", payload, qos=qos, packet_id=9 if qos else 0, retain=True, dup=True)
    length, used = decode_remaining_length(raw, 1) or (0, 0)
    assert length == len(raw) - 1 - used
    got = parse_packet(raw[0], raw[1 + used :])
    assert got == Publish("t/x", payload, qos, True, True, 9 if qos else 0)


def test_parse_acks() -> None:
    assert parse_packet(CONNACK, b"\x01\x00") == ConnAck(True, 0)
    assert parse_packet(CONNACK, b"\x00\x05") == ConnAck(False, 5)
    assert parse_packet(SUBACK, b"\x00\x02\x01\x80") == SubAck(2, (1, 0x80))
    assert parse_packet(PUBACK, b"\xff\xfe") == PubAck(0xFFFE)
    assert parse_packet(PINGRESP, b"") == PingResp()


@pytest.mark.parametrize(
    ("first", "body"),
    [
        (0x36, b"\x00\x01t\x00\x01"),  # QoS 3
        (0x32, b"\x00\x09t"),  # topic longer than the body
        (0x30, b"\x00\x02\xff\xfe"),  # topic not UTF-8
        (PUBACK, b"\x00"),
        (CONNACK, b""),
        (0xB0, b"\x00\x01"),  # UNSUBACK: never asked for
    ],
)
def test_parse_refuses_malformed_packets(first: int, body: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_packet(first, body)


def test_decode_downlink_by_topic_kind() -> None:
    ack = pb.SyncResponse(report_ack=pb.ReportAck(sequence=3))
    desired = pb.DesiredState(generation=4)
    assert decode_downlink(mqtt.DOWN, ack.SerializeToString()) == ack
    assert decode_downlink(mqtt.DESIRED, desired.SerializeToString()) == desired
    assert decode_downlink(mqtt.DESIRED, b"") is None


# ------------------------------------------------------------------ MqttLink vs a scripted broker

ID = SimIdentity("dev-1", b"", b"", b"")
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    header = bytearray()
    while (decoded := decode_remaining_length(header)) is None:
        header += await reader.readexactly(1)
    return first, await reader.readexactly(decoded[0])


async def _with_broker(script: Script, body: Callable[[MqttLink], Awaitable[None]]) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = MqttLink(ID, "127.0.0.1", port, tls=False, keepalive_s=2, ack_timeout_s=1.0)
    try:
        await body(link)
    finally:
        await link.close()
        server.close()


def _connack(code: int) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read(reader)
        writer.write(bytes((CONNACK, 2, 0, code)))
        await reader.read()

    return script


async def _accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, suback: int = 1) -> None:
    """CONNACK 0, SUBACK with `suback` for both filters, PUBACK for `online`."""
    first, body = await _read(reader)
    assert first == 0x10 and b"dev-1" in body
    writer.write(bytes((CONNACK, 2, 0, 0)))
    first, body = await _read(reader)
    assert first == 0x82
    writer.write(bytes((SUBACK, 4)) + body[:2] + bytes((suback, suback)))
    first, body = await _read(reader)
    if first & 0xF0 == 0x30:
        writer.write(puback_packet(struct.unpack_from("!H", body, 2 + body[1])[0]))


@pytest.mark.parametrize(("code", "error"), [(4, LinkRejected), (5, LinkRejected), (3, LinkError)])
def test_connack_refusal(code: int, error: type[LinkError]) -> None:
    async def body(link: MqttLink) -> None:
        with pytest.raises(error) as caught:
            await link.open(5.0)
        assert isinstance(caught.value, LinkRejected) == (error is LinkRejected)

    asyncio.run(_with_broker(_connack(code), body))


def test_refused_subscription_is_rejected() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _accept(reader, writer, suback=0x80)
        await reader.read()

    async def body(link: MqttLink) -> None:
        with pytest.raises(LinkRejected):
            await link.open(5.0)

    asyncio.run(_with_broker(script, body))


def test_no_connack_times_out_as_link_error() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def body(link: MqttLink) -> None:
        with pytest.raises(LinkError):
            await link.open(0.5)

    asyncio.run(_with_broker(script, body))


def test_inbound_garbage_is_counted_acks_flow_and_send_times_out_without_puback() -> None:
    good = pb.SyncResponse(report_ack=pb.ReportAck(sequence=1))
    acked: list[int] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _accept(reader, writer)
        down, desired = mqtt.topic("dev-1", mqtt.DOWN), mqtt.topic("dev-1", mqtt.DESIRED)
        writer.write(publish_packet(down, b"\xff\xff\xff", qos=1, packet_id=11))  # not a protobuf
        writer.write(publish_packet(desired, b"", qos=1, packet_id=12, retain=True))  # cleared: skipped
        writer.write(publish_packet(mqtt.topic("dev-2", mqtt.DOWN), b"", qos=0))  # not ours
        writer.write(publish_packet(down, good.SerializeToString(), qos=1, packet_id=13))
        for _ in range(3):
            first, body = await _read(reader)
            assert first == PUBACK
            acked.append(struct.unpack("!H", body)[0])
        await _read(reader)  # the `up` publish: never acked
        await reader.read()

    async def body(link: MqttLink) -> None:
        await link.open(5.0)
        assert await asyncio.wait_for(link.recv(), 5) == good
        assert link.malformed == 2
        with pytest.raises(LinkError):
            await link.send(pb.SyncRequest(report=pb.DeviceReport(device_id="dev-1")))
        assert acked == [11, 12, 13]

    asyncio.run(_with_broker(script, body))


def test_dropped_connection_fails_recv_and_pending_send() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _accept(reader, writer)
        await _read(reader)  # the `up` publish, then the connection drops

    async def body(link: MqttLink) -> None:
        await link.open(5.0)
        with pytest.raises(LinkError):
            await link.send(pb.SyncRequest(report=pb.DeviceReport(device_id="dev-1")))
        with pytest.raises(LinkError):
            await asyncio.wait_for(link.recv(), 5)
        assert not link.connected

    asyncio.run(_with_broker(script, body))


def test_keepalive_pings_and_a_silent_broker_ends_the_link() -> None:
    pings = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal pings
        await _accept(reader, writer)
        while True:
            first, _ = await _read(reader)
            if first == 0xC0:
                pings += 1
                if pings == 1:
                    writer.write(bytes((PINGRESP, 0)))  # the first one answered, then silence

    async def body(link: MqttLink) -> None:
        await link.open(5.0)
        with pytest.raises(LinkError):
            await asyncio.wait_for(link.recv(), 10)
        assert pings >= 2

    asyncio.run(_with_broker(script, body))

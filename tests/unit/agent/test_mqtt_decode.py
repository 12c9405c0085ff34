"""Decoding of what the agent receives over MQTT, under fuzz: any payload on `down` or `desired`
either decodes to a session event (or to nothing) or raises MalformedPayloadError; nothing else."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.errors import ConfigError, RateLimitedError, TransportError
from agent.reconcile import reconcile
from agent.state import CertificateRenewed, DesiredState, ObservedState, TelemetryAcked
from agent.transport.codec import MAX_REASON, ServerClosed, report_to_proto
from agent.transport.grpc_fleet import SessionRejectedError, error_for_status
from agent.transport.mqtt_fleet import MalformedPayloadError, decode_inbound, parse_endpoint
from protos.edgeloop import mqtt
from protos.edgeloop.v1 import device_pb2 as pb
from tests.helpers.proto_strategies import wire_bytes

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = st.sampled_from([mqtt.DOWN, mqtt.DESIRED])


def _check(event: object) -> None:
    if isinstance(event, DesiredState):
        list(reconcile(event, ObservedState()))
        assert event.settings.report_interval_s > 0 and event.settings.telemetry_batch_max > 0
    if isinstance(event, TelemetryAcked):
        assert all(len(reason) <= MAX_REASON for _, reason in event.rejected)
    if isinstance(event, ServerClosed):
        assert len(event.code) <= MAX_REASON and len(event.detail) <= MAX_REASON
        assert isinstance(error_for_status(event.code, event.detail), TransportError)


@PROPS
@given(kind=KINDS, raw=st.binary(max_size=512))
@example(kind=mqtt.DOWN, raw=b"\xff\xff\xff\xff")
@example(kind=mqtt.DOWN, raw=b"\x0a\x05")  # truncated length-delimited field
@example(kind=mqtt.DESIRED, raw=b"")
def test_random_bytes_decode_or_are_refused(kind: str, raw: bytes) -> None:
    try:
        event = decode_inbound(kind, raw)
    except MalformedPayloadError:
        return
    _check(event)


@PROPS
@given(
    kind=KINDS,
    raw=st.one_of(wire_bytes(pb.SyncResponse), wire_bytes(pb.DesiredState), wire_bytes(pb.SyncRequest)),
)
def test_wrong_type_and_out_of_range_messages_decode_or_are_refused(kind: str, raw: bytes) -> None:
    try:
        event = decode_inbound(kind, raw)
    except MalformedPayloadError:
        return
    _check(event)


def test_oversized_payload_is_refused() -> None:
    big = pb.SyncResponse(report_ack=pb.ReportAck(sequence=1, rejected_reason="x" * 2000)).SerializeToString()
    with pytest.raises(MalformedPayloadError):
        decode_inbound(mqtt.DOWN, big, max_bytes=1000)


def test_an_empty_retained_desired_is_nothing_to_act_on() -> None:
    assert decode_inbound(mqtt.DESIRED, b"") is None


def test_closed_and_renewed_decode_to_their_events() -> None:
    closed = pb.SyncResponse(closed=pb.SessionClosed(code="RESOURCE_EXHAUSTED", detail="slow down"))
    assert decode_inbound(mqtt.DOWN, closed.SerializeToString()) == ServerClosed(
        "RESOURCE_EXHAUSTED", "slow down"
    )
    renewed = pb.SyncResponse(renewed=pb.RenewResponse(certificate_chain_pem=b"c", not_after_ms=5, error=""))
    assert decode_inbound(mqtt.DOWN, renewed.SerializeToString()) == CertificateRenewed(b"c", b"", 5, "")


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("RESOURCE_EXHAUSTED", RateLimitedError),
        ("PERMISSION_DENIED", SessionRejectedError),
        ("UNAUTHENTICATED", SessionRejectedError),
        ("INVALID_ARGUMENT", SessionRejectedError),
        ("UNAVAILABLE", TransportError),
        ("", TransportError),
    ],
)
def test_closed_codes_map_like_grpc_status(code: str, error: type[TransportError]) -> None:
    assert type(error_for_status(code, "d")) is error


def test_reports_name_the_certificate_in_use() -> None:
    from agent.state import DeviceReport, Resources

    report = DeviceReport("d", 1, 0, "v", "p", ObservedState(), Resources(0, 0, 0, 0, 0, 0), 0, 0)
    assert report_to_proto(report, "ab" * 32).report.cert_fingerprint == "ab" * 32


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtts://broker.example:8883", "broker.example", 8883, True),
        ("mqtt://127.0.0.1", "127.0.0.1", 1883, False),
    ],
)
def test_endpoint_urls(url: str, host: str, port: int, tls: bool) -> None:
    ep = parse_endpoint(url)
    assert (ep.host, ep.port, ep.tls) == (host, port, tls)


@pytest.mark.parametrize("url", ["broker:8883", "http://x:1", "mqtts://", "mqtt://h:notaport"])
def test_bad_endpoint_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_endpoint(url)

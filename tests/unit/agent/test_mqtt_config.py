"""`[server] transport`, `mqtt_endpoint` and `renew_before_fraction`: defaults and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load
from agent.errors import ConfigError


def test_defaults_are_grpc_and_a_third() -> None:
    cfg = load(None, {})
    assert cfg.server.transport == "grpc" and cfg.server.mqtt_endpoint == ""
    assert cfg.server.renew_before_fraction == pytest.approx(1 / 3)


def test_mqtt_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[server]\ntransport = "mqtt"\nmqtt_endpoint = "mqtts://broker:8883"\nrenew_before_fraction = 0.25\n'
    )
    cfg = load(path, {})
    assert (cfg.server.transport, cfg.server.mqtt_endpoint) == ("mqtt", "mqtts://broker:8883")
    assert cfg.server.renew_before_fraction == 0.25


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EDGELOOP_AGENT_SERVER_TRANSPORT": "amqp"}, "server.transport must be one of"),
        ({"EDGELOOP_AGENT_SERVER_TRANSPORT": "mqtt"}, "needs server.mqtt_endpoint"),
        (
            {"EDGELOOP_AGENT_SERVER_TRANSPORT": "mqtt", "EDGELOOP_AGENT_SERVER_MQTT_ENDPOINT": "broker:8883"},
            "needs server.mqtt_endpoint",
        ),
        ({"EDGELOOP_AGENT_SERVER_RENEW_BEFORE_FRACTION": "1.5"}, "renew_before_fraction"),
        ({"EDGELOOP_AGENT_SERVER_RENEW_BEFORE_FRACTION": "0"}, "renew_before_fraction"),
    ],
)
def test_bad_transport_settings_are_clear_config_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(None, env)

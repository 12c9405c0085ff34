"""OTA settings from the environment: retry bounds and backoff are validated, never taken blindly."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.ota.factory import OtaConfig


def _env(root: Path, **extra: str) -> dict[str, str]:
    return {
        "EDGELOOP_AGENT_OTA_BASE_URL": "http://x/ota",
        "EDGELOOP_AGENT_OTA_TRUSTED_ROOT": str(root),
        **extra,
    }


def test_update_retry_settings(tmp_path: Path) -> None:
    root = tmp_path / "root.json"
    root.write_text("{}")
    config = OtaConfig.from_env(_env(root))
    assert config is not None and (config.update_attempts, config.update_backoff_s) == (5, 2.0)
    config = OtaConfig.from_env(_env(root, EDGELOOP_AGENT_OTA_UPDATE_ATTEMPTS="3"))
    assert config is not None and config.update_attempts == 3
    for key, value in [
        ("EDGELOOP_AGENT_OTA_UPDATE_ATTEMPTS", "0"),
        ("EDGELOOP_AGENT_OTA_UPDATE_ATTEMPTS", "1e9"),
        ("EDGELOOP_AGENT_OTA_DOWNLOAD_ATTEMPTS", "1000"),
        ("EDGELOOP_AGENT_OTA_UPDATE_BACKOFF_S", "nan"),
        ("EDGELOOP_AGENT_OTA_UPDATE_BACKOFF_S", "-1"),
        ("EDGELOOP_AGENT_OTA_UPDATE_BACKOFF_MAX_S", "1e300"),
    ]:
        with pytest.raises(ConfigError):
            OtaConfig.from_env(_env(root, **{key: value}))

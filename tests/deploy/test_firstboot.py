"""firstboot-enroll.sh against a real `edgeloop-server`: the device enrolls once with the token from
the "boot partition", every token file is deleted, the derived device id is kept for the agent; a
second run is a no-op that only removes a stray token; a bad token stays for the retry; no token
means a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.procs import ServerProc

# A server and five agent CLI runs: ~25 s on a quiet machine, a minute on a busy one.
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "firstboot-enroll.sh"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    srv = ServerProc(data_dir=tmp_path_factory.mktemp("firstboot") / "server")
    srv.data_dir.mkdir()
    srv.init()
    srv.start()
    yield srv
    srv.stop()


class Device:
    """One device's filesystem as first boot sees it, under a temp directory."""

    def __init__(self, root: Path, server: ServerProc, *, device_id: str = "") -> None:
        self.root = root
        self.boot_token = root / "boot" / "edgeloop-bootstrap.token"
        self.baked_token = root / "etc" / "bootstrap.token"
        self.env_file = root / "etc" / "agent.env"
        self.data = root / "var" / "lib" / "edgeloop"
        for d in (self.boot_token.parent, self.baked_token.parent, self.data):
            d.mkdir(parents=True, exist_ok=True)
        (root / "etc" / "firstboot.env").write_text(
            f'TOKEN_PATHS="{self.boot_token} {self.baked_token}"\nID_PREFIX="lab"\n'
        )
        (root / "etc" / "agent.toml").write_text(
            "[server]\n"
            f'enroll_endpoint = "localhost:{server.enroll_port}"\n'
            f'ca_file = "{server.ca_file}"\n'
            "[device]\n"
            f'id = "{device_id}"\n'
            'profile = "raspberry-pi-4"\n'
            f'data_dir = "{self.data}"\n'
        )

    def run(self) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGELOOP_", "NOTIFY_"))}
        env.update(
            EDGELOOP_FIRSTBOOT_CLASS_ENV=str(self.root / "etc" / "firstboot.env"),
            EDGELOOP_FIRSTBOOT_ENV_FILE=str(self.env_file),
            EDGELOOP_FIRSTBOOT_RUN_AS="",  # the test user; on a device: edgeloop via setpriv
            EDGELOOP_AGENT_CONFIG=str(self.root / "etc" / "agent.toml"),
            EDGELOOP_AGENT_BIN=str(BIN / "edgeloop-agent"),
        )
        return subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)

    @property
    def identity(self) -> Path:
        return self.data / "identity" / "device.json"


def machine_serial() -> str:
    serial = Path("/sys/firmware/devicetree/base/serial-number")
    if serial.exists():
        return serial.read_text().strip("\0\n").lower()
    return Path("/etc/machine-id").read_text()[:16]


def devices_on(server: ServerProc) -> set[str]:
    with server.api() as api:
        return {d["id"] for d in api.get("/devices").json()}


def test_enrolls_once_deletes_the_tokens_and_then_does_nothing(server: ServerProc, tmp_path: Path) -> None:
    device = Device(tmp_path / "pi", server)
    device.boot_token.write_text(server.bootstrap_token(labels={"site": "lab"}) + "\n")
    device.baked_token.write_text("baked-token-never-used\n")

    first = device.run()
    assert first.returncode == 0, first.stderr
    expected_id = f"lab-{machine_serial()}"
    assert device.env_file.read_text() == f"EDGELOOP_AGENT_DEVICE_ID={expected_id}\n"
    assert device.identity.exists()
    assert not device.boot_token.exists() and not device.baked_token.exists()
    assert expected_id in devices_on(server)

    enrolled_at = device.identity.stat().st_mtime_ns
    device.baked_token.write_text("stray-token\n")  # e.g. a re-flashed boot partition
    second = device.run()
    assert second.returncode == 0, second.stderr
    assert "already enrolled" in second.stderr
    assert not device.baked_token.exists()
    assert device.identity.stat().st_mtime_ns == enrolled_at
    assert device.env_file.read_text().count("EDGELOOP_AGENT_DEVICE_ID") == 1


def test_a_configured_id_is_used_and_not_overridden(server: ServerProc, tmp_path: Path) -> None:
    device = Device(tmp_path / "jetson", server, device_id="jetson-07")
    device.baked_token.write_text(server.bootstrap_token())
    result = device.run()
    assert result.returncode == 0, result.stderr
    assert not device.env_file.exists()
    assert "jetson-07" in devices_on(server)


def test_a_rejected_token_is_kept_for_the_retry(server: ServerProc, tmp_path: Path) -> None:
    device = Device(tmp_path / "bad", server, device_id="bad-token-dev")
    device.boot_token.write_text("not-a-valid-token\n")
    result = device.run()
    assert result.returncode != 0
    assert device.boot_token.exists() and not device.identity.exists()
    assert "bad-token-dev" not in devices_on(server)


def test_no_token_and_not_enrolled_fails_loudly(server: ServerProc, tmp_path: Path) -> None:
    result = Device(tmp_path / "empty", server, device_id="no-token-dev").run()
    assert result.returncode == 3
    assert "no bootstrap token" in result.stderr

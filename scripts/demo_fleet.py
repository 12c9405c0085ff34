"""The demo's processes: one `edgeloop-server`, a Mosquitto when installed, N `edgeloop-agent`s.

`Fleet` starts them on loopback with embedded defaults (SQLite, the server's local artifact
folder), enrolls every device with a one-time bootstrap token from the operator CLI, and stops
them cleanly (SIGTERM; the agents flush their outboxes). Small helpers every stage uses: `run`
(a CLI command, printed), `cli_json`, `wait_for`, `agent_status`.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

BIN = Path(sys.executable).parent
console = Console()
MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else ""
)
PI, JETSON, CORAL = "raspberry-pi-4", "jetson-orin-nano", "coral-dev-board"


@dataclass(frozen=True)
class DeviceSpec:
    id: str
    profile: str
    site: str
    cohort: str  # drifted | stuck | control


def plan_devices(n: int) -> list[DeviceSpec]:
    """Three Pis at site north (their cameras will be turned: the drifted cohort), one Pi at site
    south whose sensor will freeze (same cohort key: profile and model), a Jetson, a Coral, then
    more Jetsons and Pis as controls. The drift analysis needs 3 devices of one profile to call a
    population shift, hence at least 5 devices."""
    if n < 5:
        raise SystemExit("demo: --devices must be at least 5 (3 drifted Pis, a stuck Pi, a Jetson)")
    base = [
        DeviceSpec("pi-north-1", PI, "north", "drifted"),
        DeviceSpec("pi-north-2", PI, "north", "drifted"),
        DeviceSpec("pi-north-3", PI, "north", "drifted"),
        DeviceSpec("pi-south", PI, "south", "stuck"),
        DeviceSpec("jetson-dock", JETSON, "south", "control"),
        DeviceSpec("coral-gate", CORAL, "south", "control"),
    ]
    extra = [
        DeviceSpec(f"jetson-{i}", JETSON, "east", "control") if i % 2 else DeviceSpec(f"pi-east-{i}", PI, "east", "control")
        for i in range(1, n - len(base) + 1)
    ]  # fmt: skip
    return (base + extra)[:n]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(
    cmd: list[Any], env: dict[str, str], quiet: bool = False, **kw: Any
) -> subprocess.CompletedProcess[str]:
    if not quiet:
        console.print(f"[dim]$ {' '.join(str(c) for c in cmd)}[/]")
    out = subprocess.run([str(c) for c in cmd], env=env, text=True, capture_output=True, **kw)
    if out.returncode != 0:
        raise SystemExit(
            f"demo: {' '.join(str(c) for c in cmd[:4])} exited {out.returncode}: {out.stderr.strip()[-800:]}"
        )
    return out


def cli_json(env: dict[str, str], *args: str) -> Any:
    out = subprocess.run([BIN / "edgeloop", "--json", *args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"demo: edgeloop {' '.join(args)} failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def wait_for(what: str, predicate: Any, timeout: float = 120.0, interval: float = 0.3) -> Any:
    with console.status(f"waiting for {what}…"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
    raise SystemExit(f"demo: timed out after {timeout:.0f} s waiting for {what}")


def agent_status(env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [BIN / "edgeloop-agent", "status", "--json"], env=env, capture_output=True, text=True
    )
    return dict(json.loads(out.stdout)) if out.returncode == 0 else {}


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Fleet:
    work: Path
    devices: list[DeviceSpec]
    full_files: bool = False
    mqtt_device: str = "pi-south"
    base_env: dict[str, str] = field(default_factory=dict)
    server_env: dict[str, str] = field(default_factory=dict)
    cli_env: dict[str, str] = field(default_factory=dict)
    agent_envs: dict[str, dict[str, str]] = field(default_factory=dict)
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    server: subprocess.Popen[bytes] | None = None
    broker: subprocess.Popen[bytes] | None = None
    url: str = ""
    token: str = ""

    def sock(self, device_id: str) -> Path:
        return self.work / "devices" / device_id / "inference.sock"

    def start_server(self) -> None:
        http, enroll_port, device_port = free_port(), free_port(), free_port()
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}
        self.base_env.setdefault("COLUMNS", "150")
        self.server_env = dict(
            self.base_env,
            EDGELOOP_DATA_DIR=str(self.work / "server"),
            EDGELOOP_HTTP_PORT=str(http),
            EDGELOOP_ENROLL_PORT=str(enroll_port),
            EDGELOOP_DEVICE_PORT=str(device_port),
            EDGELOOP_REPORT_INTERVAL_S="2",
            EDGELOOP_ROLLOUT_TICK_S="0.5",
        )
        init = json.loads(run([BIN / "edgeloop-server", "init", "--json"], self.server_env).stdout)
        self.token = init["admin_token"]
        console.print(f"fleet CA at {init['ca']}; admin token minted (shown once)")
        if MOSQUITTO:
            self._start_broker()
        log = open(self.work / "server.log", "wb")  # noqa: SIM115
        self.server = subprocess.Popen(
            [BIN / "edgeloop-server", "run"], env=self.server_env, stdout=log, stderr=log
        )
        self.url = f"http://127.0.0.1:{http}"
        wait_for("server /healthz", lambda: _ok(self.url + "/healthz"))
        console.print(
            f"REST {self.url}/api/v1 · enrollment :{enroll_port} (TLS) · Sync :{device_port} (mutual TLS)"
        )
        self.cli_env = dict(self.base_env, EDGELOOP_SERVER=self.url, EDGELOOP_TOKEN=self.token)
        self.enroll_port = enroll_port

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url + "/api/v1", headers={"Authorization": f"Bearer {self.token}"}, timeout=60
        )

    def _start_broker(self) -> None:
        """A Mosquitto configured the operator's way (`edgeloop-server mqtt-config`) on a free port."""
        port = free_port()
        files = json.loads(
            run(
                [BIN / "edgeloop-server", "mqtt-config", "--out", self.work / "broker", "--port", port,
                 "--bind", "127.0.0.1", "--host", "localhost", "--run-as", getpass.getuser(), "--json"],
                self.server_env,
            ).stdout
        )  # fmt: skip
        log = open(self.work / "mosquitto.log", "wb")  # noqa: SIM115
        self.broker = subprocess.Popen([MOSQUITTO, "-c", files["config"]], stdout=log, stderr=log)
        wait_for("Mosquitto to listen", lambda: _listening(port) or self.broker.poll() is not None)  # type: ignore[union-attr]
        if self.broker.poll() is not None:
            raise SystemExit(
                f"demo: mosquitto exited {self.broker.returncode}; see {self.work / 'mosquitto.log'}"
            )
        console.print(f"Mosquitto on :{port}: mutual TLS with the fleet CA, ACL per device id, CRL")
        self.server_env.update(
            EDGELOOP_MQTT_URL=f"mqtts://localhost:{port}",
            EDGELOOP_MQTT_CA_FILE=files["ca"],
            EDGELOOP_MQTT_CLIENT_CERT=files["server_cert"],
            EDGELOOP_MQTT_CLIENT_KEY=files["server_key"],
            EDGELOOP_MQTT_CRL_FILE=files["crl"],
        )

    def agent_env(self, d: DeviceSpec) -> dict[str, str]:
        env = dict(
            self.base_env,
            EDGELOOP_AGENT_DEVICE_ID=d.id,
            EDGELOOP_AGENT_DEVICE_PROFILE=d.profile,
            EDGELOOP_AGENT_DEVICE_DATA_DIR=str(self.work / "devices" / d.id),
            EDGELOOP_AGENT_SERVER_ENROLL_ENDPOINT=f"localhost:{self.enroll_port}",
            EDGELOOP_AGENT_SERVER_CA_FILE=str(self.work / "server" / "pki" / "ca.pem"),
            EDGELOOP_AGENT_TELEMETRY_INTERVAL_S="0.5",
            EDGELOOP_AGENT_METRICS_WINDOW_S="1",
            EDGELOOP_AGENT_OTA_BASE_URL=f"{self.url}/ota",
            EDGELOOP_AGENT_OTA_TRUSTED_ROOT=str(
                self.work / "server" / "ota" / "repo" / "metadata" / "1.root.json"
            ),
            EDGELOOP_AGENT_OTA_POLL_INTERVAL_S="1",
            EDGELOOP_AGENT_OTA_UPDATE_BACKOFF_S="0.5",
            EDGELOOP_AGENT_OTA_UPDATE_BACKOFF_MAX_S="2",
            EDGELOOP_AGENT_OTA_USE_DELTA="0" if self.full_files else "1",
            # The demo box is busy: do not wait for an idle CPU or a charger to train.
            EDGELOOP_AGENT_FEDERATED_REQUIRE_IDLE="false",
            EDGELOOP_AGENT_FEDERATED_REQUIRE_CHARGING="false",
            EDGELOOP_AGENT_FEDERATED_REQUIRE_UNMETERED="false",
        )
        if self.broker is not None and d.id == self.mqtt_device:
            env.update(
                EDGELOOP_AGENT_SERVER_TRANSPORT="mqtt",
                EDGELOOP_AGENT_SERVER_MQTT_ENDPOINT=self.server_env["EDGELOOP_MQTT_URL"],
            )
        return env

    def enroll_and_start(self) -> None:
        """A one-time token per device from the operator CLI, then `edgeloop-agent enroll` (the key
        is generated on the device); devices enroll in parallel, as a fleet does."""

        def enroll(d: DeviceSpec) -> str:
            labels = ["--label", f"site={d.site}", "--label", "fleet=demo"]
            bt = cli_json(self.cli_env, "tokens", "create", *labels)
            env = self.agent_env(d)
            out = run([BIN / "edgeloop-agent", "enroll", "--token", bt["token"]], env, quiet=True)
            self.agent_envs[d.id] = env
            how = "MQTT via Mosquitto" if "EDGELOOP_AGENT_SERVER_TRANSPORT" in env else "gRPC"
            return f"  {out.stdout.strip()} ({d.profile}, site={d.site}, {how})"

        with ThreadPoolExecutor(4) as pool:
            for line in pool.map(enroll, self.devices):
                console.print(line)
        for d in self.devices:
            log = open(self.work / f"{d.id}.log", "wb")  # noqa: SIM115
            self.agents[d.id] = subprocess.Popen(
                [BIN / "edgeloop-agent", "run"], env=self.agent_envs[d.id], stdout=log, stderr=log
            )

    def transport(self, device_id: str) -> str:
        return "mqtt" if "EDGELOOP_AGENT_SERVER_TRANSPORT" in self.agent_envs.get(device_id, {}) else "grpc"

    def stop(self) -> list[str]:
        """SIGTERM every agent (they flush), then the server and the broker; lines to print."""
        lines = []
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for device_id, proc in self.agents.items():
            code = proc.wait(30)
            s = agent_status(self.agent_envs[device_id])
            lines.append(
                f"  {device_id}: exit {code}, outbox queued {s.get('telemetry_queued')}, "
                f"acked {s.get('telemetry_acked')}, dropped {s.get('telemetry_dropped_total')}"
            )
        for name, proc in (("server", self.server), ("mosquitto", self.broker)):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                lines.append(f"  {name}: exit {proc.wait(30)}")
        return lines

    def kill(self) -> None:
        for proc in [*self.agents.values(), self.server, self.broker]:
            if proc is not None and proc.poll() is None:
                proc.kill()

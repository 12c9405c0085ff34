"""Real `edgeloop-server` and `edgeloop-agent` processes on loopback for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.net import free_port

BIN = Path(sys.executable).parent


def wait_until(predicate: Any, timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last={last!r})")


@dataclass
class ServerProc:
    data_dir: Path
    database_url: str = ""
    http_port: int = field(default_factory=free_port)
    enroll_port: int = field(default_factory=free_port)
    device_port: int = field(default_factory=free_port)
    env_extra: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    admin_token: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "pki" / "ca.pem"

    # What `tests.helpers.inproc.enroll`/`device_channel` read of a server (as of a LiveServer).
    @property
    def enroll_target(self) -> str:
        return f"localhost:{self.enroll_port}"

    @property
    def device_target(self) -> str:
        return f"localhost:{self.device_port}"

    @property
    def ca_pem(self) -> bytes:
        return self.ca_file.read_bytes()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}
        env.update(
            EDGELOOP_DATA_DIR=str(self.data_dir),
            EDGELOOP_DATABASE_URL=self.database_url,
            EDGELOOP_HTTP_PORT=str(self.http_port),
            EDGELOOP_ENROLL_PORT=str(self.enroll_port),
            EDGELOOP_DEVICE_PORT=str(self.device_port),
            EDGELOOP_REPORT_INTERVAL_S="1",
        )
        env.update(self.env_extra)
        return env

    def init(self) -> str:
        out = subprocess.run(
            [BIN / "edgeloop-server", "init", "--json"], env=self.env(), check=True, capture_output=True
        )
        self.admin_token = json.loads(out.stdout)["admin_token"]
        return self.admin_token

    def start(self, log: Path | None = None) -> None:
        log = log or self.data_dir / "server.log"
        fh = open(log, "ab")
        self.proc = subprocess.Popen([BIN / "edgeloop-server", "run"], env=self.env(), stdout=fh, stderr=fh)
        wait_until(self._healthy, 30, what="server /healthz")

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}")
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)

    def api(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url + "/api/v1",
            headers={"Authorization": f"Bearer {token or self.admin_token}"},
            timeout=10,
        )

    def bootstrap_token(self, labels: dict[str, str] | None = None, ttl_s: int = 3600) -> str:
        with self.api() as api:
            resp = api.post("/bootstrap-tokens", json={"labels": labels or {}, "ttl_s": ttl_s})
            resp.raise_for_status()
            return str(resp.json()["token"])


@dataclass
class AgentProc:
    device_id: str
    data_dir: Path
    server: ServerProc
    telemetry_interval_s: float = 0.2
    env_extra: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}
        env.update(
            EDGELOOP_AGENT_DEVICE_ID=self.device_id,
            EDGELOOP_AGENT_DEVICE_DATA_DIR=str(self.data_dir),
            EDGELOOP_AGENT_SERVER_ENROLL_ENDPOINT=f"localhost:{self.server.enroll_port}",
            EDGELOOP_AGENT_SERVER_CA_FILE=str(self.server.ca_file),
            EDGELOOP_AGENT_TELEMETRY_INTERVAL_S=str(self.telemetry_interval_s),
            EDGELOOP_AGENT_SYNC_BACKOFF_INITIAL_S="0.2",
            EDGELOOP_AGENT_SYNC_BACKOFF_MAX_S="2",
        )
        env.update(self.env_extra)
        return env

    def enroll(self, token: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [BIN / "edgeloop-agent", "enroll", "--token", token, "--json"],
            env=self.env(),
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        fh = open(self.data_dir.parent / f"{self.device_id}.log", "ab")
        self.proc = subprocess.Popen([BIN / "edgeloop-agent", "run"], env=self.env(), stdout=fh, stderr=fh)

    def start_ota(self, base_url: str = "", **extra: str) -> subprocess.Popen[bytes]:
        """`edgeloop-agent run` with OTA on against the server's repository (or a mirror at
        `base_url`), short polls and retry backoffs; `extra` adds or overrides EDGELOOP_* variables.
        Returns the process (also kept as `proc` unless one is already running: a second instance
        on the same data directory is how the lock is tested)."""
        env = self.env()
        env.update(
            EDGELOOP_AGENT_OTA_BASE_URL=base_url or self.server.url + "/ota",
            EDGELOOP_AGENT_OTA_TRUSTED_ROOT=str(
                self.server.data_dir / "ota" / "repo" / "metadata" / "1.root.json"
            ),
            EDGELOOP_AGENT_OTA_POLL_INTERVAL_S="1",
            EDGELOOP_AGENT_OTA_UPDATE_BACKOFF_S="0.5",
            EDGELOOP_AGENT_OTA_UPDATE_BACKOFF_MAX_S="2",
        )
        env.update(extra)
        fh = open(self.data_dir.parent / f"{self.device_id}.log", "ab")
        proc = subprocess.Popen([BIN / "edgeloop-agent", "run"], env=env, stdout=fh, stderr=fh)
        if self.proc is None or self.proc.poll() is not None:
            self.proc = proc
        return proc

    def status(self) -> dict[str, Any]:
        out = subprocess.run(
            [BIN / "edgeloop-agent", "status", "--json"], env=self.env(), capture_output=True, check=True
        )
        return dict(json.loads(out.stdout))

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

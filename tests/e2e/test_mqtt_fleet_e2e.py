"""MQTT end to end (issue 13, "Must show"): a real Mosquitto configured by `edgeloop-server
mqtt-config` (mutual TLS with the fleet CA, identity = certificate CN, ACL, CRL, persistence), a
real `edgeloop-server` with its MQTT bridge on, and real `edgeloop-agent` processes on MQTT only,
next to one on gRPC.

- the fleet enrolls (enrollment is gRPC in both modes), reports, gets desired state, and the
  API shows MQTT and gRPC devices alike except for `transport`;
- buffered telemetry arrives exactly once (seq 1..N, no gap, no duplicate) after the broker is
  restarted and after the server is SIGKILLed;
- `edgeloop devices revoke` cuts an MQTT device and a gRPC device off within a minute, and they
  stay off (on MQTT a takeover of its client ids ends its connections and the bridge refuses it;
  the pin check refuses gRPC);
- a signed release installs on an MQTT device (desired state over MQTT, bytes over HTTP/TUF);
- a federated round runs with every participant on the MQTT link.

The ACL refusals (device A under device B's topics, a client without a certificate) are asserted
against the same generated configuration in tests/integration/test_broker_security.py; bad input
on MQTT (garbage, wrong types, a flooding device, oversized messages) in test_mqtt_bridge*.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers.broker import Broker, operator_broker
from tests.helpers.procs import BIN, AgentProc, ServerProc, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@dataclass
class MqttFleet:
    server: ServerProc
    broker: Broker
    pidfile: Path
    crashes: list[int] = field(default_factory=list)  # exit codes of brokers that died on their own
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: bool = False

    @property
    def endpoint(self) -> str:
        return f"mqtts://localhost:{self.broker.port}"

    def restart_broker(self) -> None:
        with self._lock:
            self.broker.stop()  # SIGTERM: Mosquitto writes its persistence file (sessions, queues)
            self._start_broker()

    def _start_broker(self) -> None:
        self.broker = Broker(self.broker.files, self.broker.port)
        self.broker.start()
        self._write_pid()

    def supervise(self) -> None:
        """Restart a broker that died on its own, as systemd's `Restart=on-failure` would (Debian's
        Mosquitto 2.0.11 segfaulted once in a CI run of this test, cause not found: see the
        closing note of issue 13). What the fleet must survive then is a broker restart."""
        while not self._stopping:
            with self._lock:
                proc = self.broker.proc
                if not self._stopping and proc is not None and proc.poll() is not None:
                    self.crashes.append(proc.returncode)
                    self._start_broker()
            time.sleep(0.2)

    def _write_pid(self) -> None:
        assert self.broker.proc is not None
        self.pidfile.write_text(f"{self.broker.proc.pid}\n")

    def agent(self, tmp: Path, device_id: str, transport: str = "mqtt", **env: str) -> AgentProc:
        agent = AgentProc(device_id, tmp / "agents" / device_id, self.server, telemetry_interval_s=0.1)
        agent.data_dir.mkdir(parents=True)
        # A batch lost between a restarted broker and the server (QoS 1 is per hop) is resent
        # after this, on a new session (SyncConfig.ack_timeout_s).
        agent.env_extra["EDGELOOP_AGENT_SYNC_ACK_TIMEOUT_S"] = "5"
        if transport == "mqtt":
            agent.env_extra.update(
                EDGELOOP_AGENT_SERVER_TRANSPORT="mqtt", EDGELOOP_AGENT_SERVER_MQTT_ENDPOINT=self.endpoint
            )
        agent.env_extra.update(env)
        result = agent.enroll(self.server.bootstrap_token(labels={"site": "lab"}))
        assert result.returncode == 0, result.stderr.decode()
        return agent

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [BIN / "edgeloop", "--server", self.server.url, "--token", self.server.admin_token, *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)

    def device(self, device_id: str) -> dict[str, Any]:
        with self.server.api() as api:
            return dict(api.get(f"/devices/{device_id}").json())

    def seqs(self, device_id: str) -> list[int]:
        with self.server.api() as api:
            rows = api.get(f"/devices/{device_id}/telemetry", params={"limit": 10000}).json()
        return sorted(r["seq"] for r in rows)


@pytest.fixture
def fleet(tmp_path: Path, database_url: str) -> Iterator[MqttFleet]:
    server = ServerProc(data_dir=tmp_path / "server", database_url=database_url)
    server.data_dir.mkdir()
    server.init()
    # The operator's path: the server's CLI writes the broker config, ACL, CRL and identities.
    broker = operator_broker(server.env(), tmp_path / "broker")
    fleet = MqttFleet(server, broker, tmp_path / "mosquitto.pid")
    fleet._write_pid()
    server.env_extra.update(
        # One stable identity: a restarted server resumes its persistent session and its queue.
        **broker.server_env("edgeloop-server-e2e"),
        # The CRL is written on revocation, for the broker's next start; no SIGHUP reload here:
        # Debian's Mosquitto 2.0.11 segfaulted in 2 of 3 runs of this test with the reload on
        # (live TLS clients, revoked ones retrying), never without. The broker security tests show
        # the reloaded CRL refusing a revoked certificate's handshake.
        EDGELOOP_MQTT_CRL_FILE=str(broker.files.crl),
    )
    server.start()
    supervisor = threading.Thread(target=fleet.supervise, daemon=True)
    supervisor.start()
    try:
        yield fleet
    finally:
        fleet._stopping = True
        supervisor.join(5)
        server.stop()
        fleet.broker.stop()
        if fleet.crashes:
            print(f"mosquitto died on its own {len(fleet.crashes)} time(s): {fleet.crashes}")


def _running(agents: list[AgentProc]) -> None:
    for agent in agents:
        assert agent.proc is not None and agent.proc.poll() is None, f"{agent.device_id} exited"


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_mqtt_and_grpc_fleet_exactly_once_through_restarts_and_revocation(
    fleet: MqttFleet, tmp_path: Path
) -> None:
    mqtt_agents = [fleet.agent(tmp_path, f"m-{i}") for i in range(3)]
    grpc_agent = fleet.agent(tmp_path, "g-0", transport="grpc")
    agents = [*mqtt_agents, grpc_agent]
    for agent in agents:
        agent.start()

    def all_online() -> list[dict[str, Any]] | None:
        with fleet.server.api() as api:
            rows = api.get("/devices").json()
        ok = len(rows) == 4 and all(d["online"] and d["last_seen_at"] and d["observed"] for d in rows)
        return rows if ok else None

    rows = {d["id"]: d for d in wait_until(all_online, 60, what="4 devices online")}
    assert {d: rows[d]["transport"] for d in rows} == {
        "m-0": "mqtt",
        "m-1": "mqtt",
        "m-2": "mqtt",
        "g-0": "grpc",
    }
    # Indistinguishable except for the transport: same fields, same kind of observed state.
    assert len({frozenset(r) for r in rows.values()}) == 1
    assert all(r["observed"]["resources"]["mem_total_bytes"] > 0 for r in rows.values())

    # Desired state reaches an MQTT device (retained on its desired topic) and is applied.
    assert fleet.cli("devices", "label", "m-1", "tier=canary").returncode == 0
    wait_until(lambda: mqtt_agents[1].status().get("applied_generation") == 2, 20, what="m-1 gen 2")

    wait_until(lambda: all(a.status().get("telemetry_acked", 0) >= 10 for a in agents), 30, what="acks")

    # The broker restarts: agents buffer, reconnect to their persistent sessions, and drain.
    before = {a.device_id: a.status()["telemetry_last_seq"] for a in mqtt_agents}
    fleet.restart_broker()
    wait_until(
        lambda: all(
            (s := a.status())["telemetry_queued"] <= 3 and s["telemetry_acked"] > before[a.device_id]
            for a in mqtt_agents
        ),
        60,
        what="MQTT backlog drained after the broker restart",
    )

    # The server is SIGKILLed mid-stream (its uncommitted QoS 1 messages are not acked to the
    # broker, so they come again), then comes back.
    fleet.server.kill()
    time.sleep(2.0)
    fleet.server.start()
    wait_until(
        lambda: all(a.status()["telemetry_queued"] <= 3 for a in agents), 60, what="drained after SIGKILL"
    )
    _running(agents)

    # Revocation: both transports refused within a minute, and the devices stay off.
    t0 = time.monotonic()
    for device_id in ("m-2", "g-0"):
        out = fleet.cli("--json", "devices", "revoke", device_id, "--reason", "stolen")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["status"] == "revoked"
    wait_until(
        lambda: not fleet.device("m-2")["online"] and not fleet.device("g-0")["online"],
        60,
        what="revoked devices offline",
    )
    cut_off_s = time.monotonic() - t0
    counts = {d: len(fleet.seqs(d)) for d in ("m-2", "g-0")}
    time.sleep(5.0)  # their agents keep trying: nothing more may land, and they must not crash-loop
    assert {d: len(fleet.seqs(d)) for d in ("m-2", "g-0")} == counts
    assert not fleet.device("m-2")["online"] and not fleet.device("g-0")["online"]
    assert cut_off_s < 60, cut_off_s
    _running(agents)
    # On MQTT the takeover kick ended its connections and the bridge refuses what it sends after.
    m2_log = (tmp_path / "agents" / "m-2.log").read_text()
    assert "PERMISSION_DENIED" in m2_log and "revoked" in m2_log

    # Exactly once for the devices that went through both restarts.
    for agent in mqtt_agents[:2]:
        assert agent.stop() == 0
        if agent.status()["telemetry_queued"] and fleet.crashes:
            # The broker died during the shutdown flush: what is left waits on disk for the next
            # start (as after any outage), which delivers it.
            agent.start()
            wait_until(lambda a=agent: a.status()["telemetry_queued"] <= 3, 30, what="drained")
            assert agent.stop() == 0
        status = agent.status()
        assert status["telemetry_queued"] == 0 and status["telemetry_dropped_total"] == 0, status
        seqs = fleet.seqs(agent.device_id)
        assert seqs == list(range(1, status["telemetry_last_seq"] + 1)), f"{agent.device_id}: lost/duplicated"
    for agent in (mqtt_agents[2], grpc_agent):
        agent.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        agent.proc.wait(30)  # type: ignore[union-attr]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_mqtt_devices_install_a_signed_release_and_train_in_a_federated_round(
    fleet: MqttFleet, tmp_path: Path
) -> None:
    from tests.fixtures.digits import load_digits_data
    from tests.integration.test_ota_support import models

    m = models()
    with fleet.server.api() as api:
        blob = api.put("/ota/blobs", content=m.v1.read_bytes()).json()
        gold = api.put("/ota/blobs", content=m.golden.read_bytes()).json()
        body = {
            "model_name": "digits", "model_version": "1", "artifact_sha256": blob["sha256"],
            "golden_sha256": gold["sha256"], "golden_threshold": 0.8,
            "gates": {"watch_s": 0.3, "min_shadow_samples": 8},
        }  # fmt: skip
        release = api.post("/releases", json=body)
        release.raise_for_status()

    ota = fleet.agent(tmp_path, "ota-0", EDGELOOP_AGENT_FEDERATED_ENABLED="false")
    ota.start_ota()
    wait_until(lambda: fleet.device("ota-0")["online"], 30, what="ota-0 online over MQTT")
    with fleet.server.api() as api:
        dep = api.post(f"/releases/{release.json()['seq']}/deployments", json={"device_ids": ["ota-0"]})
        dep.raise_for_status()
        deployment = dep.json()["deployment_id"]
    state = wait_until(
        lambda: (
            (rows := fleet.server.api().get(f"/deployments/{deployment}").json())
            and rows[0]["state"] in {"committed", "failed", "rolled_back"}
            and rows[0]["state"]
        ),
        120,
        what="deployment finished",
    )
    assert state == "committed"
    meta = json.loads((ota.data_dir / "models" / "current" / "model.json").read_text())
    assert meta["sha256"] == blob["sha256"]  # the signed bytes serve
    assert ota.stop() == 0

    # A federated round, every participant on MQTT (the `.fl` link beside its Sync session).
    data = load_digits_data(0)
    x = data.x_train.reshape(len(data.x_train), -1)
    procs = []
    try:
        for i in range(3):
            agent = fleet.agent(tmp_path, f"fl-{i}")
            rows = np.arange(i, len(x), 3)
            np.savez(tmp_path / f"fl-{i}.npz", x=x[rows], y=data.y_train[rows])
            cmd = [sys.executable, "-m", "agent.federated", "--data-dir", str(agent.data_dir),
                   "--mqtt-endpoint", fleet.endpoint, "--samples", str(tmp_path / f"fl-{i}.npz")]  # fmt: skip
            log = open(tmp_path / f"fl-{i}.log", "wb")
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=log))
        start = fleet.cli(
            "fl", "start", "--rounds", "2", "--min-nodes", "3", "--label", "site=lab", "--lr", "0.5"
        )
        assert start.returncode == 0, start.stderr
        run_id = start.stdout.split()[-1]

        def done() -> dict[str, Any] | None:
            out = json.loads(fleet.cli("--json", "fl", "status", run_id).stdout)
            return out if out["run"]["status"] != "running" else None

        status = wait_until(done, 120, interval=0.5, what="federated run finished")
        assert status["run"]["status"] == "completed", status["run"]["detail"]
        assert [r["results"] for r in status["rounds"]] == [3, 3]
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(20)

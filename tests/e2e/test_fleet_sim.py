"""Fleet simulator end to end (issue 15, "Must show"): the simulator holds its devices through a
server SIGKILL and restart, and every simulated record arrives exactly once.

A real `edgeloop-server` process (SQLite), 200 simulated gRPC devices and 50 simulated MQTT devices
through a Mosquitto configured by `edgeloop-server mqtt-config` (mutual TLS with the fleet CA), all
enrolled through the real enrollment endpoint by the simulator, two worker processes. Telemetry
flows; the server is SIGKILLed while records are in flight and restarted on the same data dir and
ports. Then every device is connected again (gRPC devices reconnect with their backoff; MQTT
devices never lost the broker and resend what the server did not ack), and the server's stored
telemetry of each device, read through the REST API, is exactly the seqs the device produced: no
gap, no duplicate.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.fleet_sim.config import SimConfig
from bench.fleet_sim.run import FleetSim
from tests.helpers.broker import Broker, operator_broker
from tests.helpers.procs import ServerProc, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

GRPC_DEVICES = 200
MQTT_DEVICES = 50


@pytest.fixture
def server_and_broker(tmp_path: Path) -> Iterator[tuple[ServerProc, Broker | None]]:
    server = ServerProc(data_dir=tmp_path / "server")
    server.data_dir.mkdir()
    server.init()
    broker: Broker | None = None
    if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists():
        broker = operator_broker(server.env(), tmp_path / "broker")
        server.env_extra.update(broker.server_env("edgeloop-server-fleet-sim"))
    _start(server)
    try:
        yield server, broker
    finally:
        server.stop()
        if broker is not None:
            broker.stop()


def _start(server: ServerProc) -> None:
    """`ServerProc.start`, with more than its 30 s for /healthz on a loaded machine."""
    try:
        server.start()
    except AssertionError:
        assert server.proc is not None and server.proc.poll() is None, "server exited"

        def healthy() -> bool:
            try:
                return httpx.get(server.url + "/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 120, what="server /healthz (slow start)")


def _stored_seqs(server: ServerProc, device_id: str, after: int) -> list[int]:
    seqs: list[int] = []
    with server.api() as api:
        while True:
            resp = api.get(f"/devices/{device_id}/telemetry", params={"after_seq": after, "limit": 10000})
            resp.raise_for_status()
            rows = resp.json()
            seqs += [r["seq"] for r in rows]
            if len(rows) < 10000:
                return seqs
            after = rows[-1]["seq"]


def test_sim_holds_fleet_through_server_sigkill_and_every_record_arrives_once(
    server_and_broker: tuple[ServerProc, Broker | None], tmp_path: Path
) -> None:
    server, broker = server_and_broker
    mqtt = broker is not None
    devices = GRPC_DEVICES + (MQTT_DEVICES if mqtt else 0)
    cfg = SimConfig(
        server=server.url,
        token=server.admin_token,
        ca=server.ca_file,
        devices=devices,
        transport="mixed" if mqtt else "grpc",
        mqtt_share=MQTT_DEVICES / devices if mqtt else 0.0,
        mqtt_url=f"mqtts://localhost:{broker.port}" if broker is not None else "",
        enroll_target=server.enroll_target,
        grpc_target=f"127.0.0.1:{server.device_port}",
        ramp_per_s=100,
        heartbeat_s=5,
        telemetry_per_min=60,
        ack_timeout_s=5,
        backoff_initial_s=0.5,
        backoff_max_s=5,
        connect_timeout_s=5,
        workers=2,
        identities=tmp_path / "identities",
    )
    sim = FleetSim(cfg)
    sim.start()
    final = None
    try:
        assert sim.wait_connected(180), f"not every device connected: {sim.stats().connected}/{devices}"
        before = sim.stats().counters["records_acked"]
        wait_until(lambda: sim.stats().counters["records_acked"] >= before + devices * 3, 120,
                   what="telemetry flowing")  # fmt: skip

        server.kill()  # SIGKILL, with records in flight
        # every gRPC device notices (its stream ends); MQTT devices keep their broker session
        wait_until(lambda: sim.stats().connected <= devices - GRPC_DEVICES, 60, what="gRPC devices cut off")
        time.sleep(3)  # records keep being produced while the server is away
        _start(server)  # same data dir, same ports

        assert sim.wait_connected(180), f"not every device back: {sim.stats().connected}/{devices}"
        after_restart = sim.stats().counters["records_acked"]
        wait_until(lambda: sim.stats().counters["records_acked"] >= after_restart + devices * 2, 120,
                   what="telemetry flowing after the restart")  # fmt: skip
    finally:
        final = sim.stop(drain_s=60)

    assert final is not None
    c = final.counters
    print(json.dumps({k: v for k, v in final.to_dict().items() if k not in ("timeline", "per_device")}))
    assert c["reconnects"] >= GRPC_DEVICES
    assert len(final.per_device) == devices
    if mqtt:
        assert sum(d["transport"] == "mqtt" for d in final.per_device.values()) == MQTT_DEVICES
    outage = [r for r in final.recoveries if r["cause"] == "outage"]
    assert outage and outage[0]["all_back_s"] is not None, final.recoveries

    wrong: dict[str, Any] = {}
    for device_id, d in final.per_device.items():
        assert d["pending"] == 0, (device_id, d)
        produced = list(range(d["seq_first"], d["seq_last"] + 1))
        assert len(produced) >= 5, (device_id, d)
        stored = _stored_seqs(server, device_id, d["seq_first"] - 1)
        if stored != produced:
            wrong[device_id] = {"produced": len(produced), "stored": len(stored),
                                "duplicates": len(stored) - len(set(stored)),
                                "missing": sorted(set(produced) - set(stored))[:5]}  # fmt: skip
    assert not wrong, wrong
    assert c["records_acked"] == c["records_sent"]


def test_sim_faults_and_update_behaviours(tmp_path: Path) -> None:
    """Drops, churn, added delay and a reconnect storm while a release installs: failing devices
    fail at staging, good and silently bad ones commit (only rollout gates can tell those apart)
    and then send model_metrics windows, the storm's recovery is timed, and every record still
    arrives exactly once."""
    server = ServerProc(data_dir=tmp_path / "server")
    server.data_dir.mkdir()
    server.init()
    _start(server)
    devices = 40
    cfg = SimConfig(
        server=server.url, token=server.admin_token, ca=server.ca_file, devices=devices,
        enroll_target=server.enroll_target, grpc_target=f"127.0.0.1:{server.device_port}",
        ramp_per_s=40, heartbeat_s=2, telemetry_per_min=30, metrics_window_s=2, install_s=1,
        churn_per_min=20, churn_offline_s=2, drop_rate=2, delay_ms=20, storm_at_s=(20,),
        update={"good": 2, "failing": 1, "silently_bad": 1}, backoff_initial_s=0.5, backoff_max_s=3,
        ack_timeout_s=5, identities=tmp_path / "identities",
    )  # fmt: skip
    sim = FleetSim(cfg)
    try:
        try:
            sim.start()
            assert sim.wait_connected(120)
            with server.api() as api:
                blob = api.put("/ota/blobs", content=b"simulated model bytes" * 8)
                blob.raise_for_status()
                sha = blob.json()["sha256"]
                rel = api.post("/releases", json={"model_name": "digits", "model_version": "2",
                                                  "artifact_sha256": sha, "golden_sha256": sha})  # fmt: skip
                rel.raise_for_status()
                ids = [f"sim-{i:05d}" for i in range(devices)]
                dep = api.post(
                    f"/releases/{rel.json()['seq']}/deployments", json={"device_ids": ids}, timeout=60
                )
                dep.raise_for_status()
                dep_id = dep.json()["deployment_id"]

                def settled() -> dict[str, str] | None:
                    rows = api.get(f"/deployments/{dep_id}", timeout=30).json()
                    states = {r["device_id"]: r["state"] for r in rows}
                    done = len(states) == devices and all(
                        s in ("committed", "failed") for s in states.values()
                    )
                    return states if done else None

                states = wait_until(settled, 180, what="every device's install settled")
            wait_until(lambda: any(r["all_back_s"] is not None for r in sim.stats().recoveries), 120,
                       what="the storm's recovery")  # fmt: skip
        finally:
            final = sim.stop(drain_s=60)

        c = final.counters
        assert c["drops"] > 0 and c["churns"] > 0 and c["storms"] == 1
        assert [r["cause"] for r in final.recoveries if r["all_back_s"] is not None][:1] == ["storm"]
        kinds = {d: info["update_kind"] for d, info in final.per_device.items()}
        assert set(kinds.values()) == {"good", "failing", "silently_bad"}
        for device_id, kind in kinds.items():
            want = "failed" if kind == "failing" else "committed"
            assert states[device_id] == want, (device_id, kind, states[device_id])
            assert final.per_device[device_id]["outcomes"] == {dep_id: want}
        assert c["installs_failed"] == sum(k == "failing" for k in kinds.values())
        assert c["windows_sent"] > 0
        stored_kinds: set[str] = set()
        with server.api() as api:
            for device_id, d in final.per_device.items():
                assert d["pending"] == 0, (device_id, d)
                rows = api.get(f"/devices/{device_id}/telemetry",
                               params={"after_seq": d["seq_first"] - 1, "limit": 10000}).json()  # fmt: skip
                assert [r["seq"] for r in rows] == list(range(d["seq_first"], d["seq_last"] + 1)), device_id
                stored_kinds |= {r["kind"] for r in rows}
        assert stored_kinds == {"sim", "ota", "model_metrics"}
    finally:
        server.stop()

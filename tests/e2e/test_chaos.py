"""Chaos, as issue 11 asks: while 20 devices sync and an update rolls to half of them, one device
floods extreme values, one mirror serves truncated delta patches, the server is SIGKILLed and
restarted, and one agent is started a second time on its own data directory.

Afterwards every well-behaved device has all its records exactly once, every update has ended
`committed` or `failed` with a reason visible through the API, and no deployment or federated run
is left in a non-terminal state.

The fleet: 16 real `edgeloop-agent run` processes (10 of them get the update, 5 of those through
the truncating mirror), 3 protocol-level devices in this process whose every record is known, and
1 flooding device. A real `edgeloop-server` process on real PostgreSQL, real digits models.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from fleet_server.federated.lifecycle import SERVER_RESTARTED
from protos.edgeloop.v1 import device_pb2 as pb
from tests.conftest import drop_pg_database, make_pg_database
from tests.helpers.inproc import RawStream, device_channel, enroll, report
from tests.helpers.procs import AgentProc, ServerProc, wait_until
from tests.integration.test_ota_faults import FlakyHttp
from tests.integration.test_ota_support import models

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(1200)]

REAL = 16
UPDATED = 10  # dev-00 .. dev-09 get the update
VIA_BAD_MIRROR = 5  # dev-00 .. dev-04 read the repository through the truncating mirror
SIMULATED = 3
TWICE = "dev-12"  # started a second time on its own data directory
TERMINAL = {"committed", "failed", "refused", "rolled_back"}
BIG = 2**63  # a valid uint64 that no BIGINT column holds


@dataclass
class SimDevice:
    """A well-behaved device speaking the real protocol: sends numbered batches, resends what was
    not acked after a broken session, and remembers every seq the server acknowledged."""

    device_id: str
    target: ServerProc
    creds: Any
    acked: set[int] = field(default_factory=set)
    sessions: int = 0

    def run(self, stop: threading.Event, batch: int = 10, interval_s: float = 0.2) -> None:
        next_seq, pending = 1, list[int]()
        while not stop.is_set() or pending:
            try:
                with device_channel(self.target, self.creds) as ch:  # type: ignore[arg-type]
                    stream = RawStream(ch)
                    stream.send(report(self.device_id, self.sessions + 1))
                    stream.next_of("report_ack")
                    self.sessions += 1  # a session the server accepted
                    batch_id = 0
                    while not stop.is_set() or pending:
                        if not pending:
                            pending = list(range(next_seq, next_seq + batch))
                            next_seq += batch
                        batch_id += 1
                        stream.send(_batch(batch_id, pending))
                        ack = stream.next_of("telemetry_ack").telemetry_ack
                        assert not ack.rejected, f"{self.device_id}: good records refused {ack.rejected}"
                        self.acked.update(ack.seqs)
                        pending = [s for s in pending if s not in set(ack.seqs)]
                        time.sleep(interval_s)
                    stream.close()
                    return
            except (grpc.RpcError, StopIteration):  # the server went away: reconnect and resend
                time.sleep(0.5)


def _batch(batch_id: int, seqs: list[int], kind: str = "chaos") -> pb.SyncRequest:
    return pb.SyncRequest(
        telemetry=pb.TelemetryBatch(
            batch_id=batch_id,
            records=[
                pb.TelemetryRecord(seq=s, timestamp_ms=s % 2**40, kind=kind, metrics={"v": s}) for s in seqs
            ],
        )
    )


@dataclass
class Flooder:
    """Floods records and reports no BIGINT column can hold, mixed with good records."""

    device_id: str
    target: ServerProc
    creds: Any
    sent_bad: int = 0
    good_acked: set[int] = field(default_factory=set)
    refused: int = 0

    def run(self, stop: threading.Event) -> None:
        good = 1
        while not stop.is_set():
            try:
                with device_channel(self.target, self.creds) as ch:  # type: ignore[arg-type]
                    stream = RawStream(ch)
                    n = 0
                    while not stop.is_set():
                        n += 1
                        bad_report = pb.DeviceReport(
                            device_id=self.device_id, sequence=BIG + n, agent_version="chaos",
                            telemetry_dropped_total=BIG + n,
                        )  # fmt: skip
                        stream.send(pb.SyncRequest(report=bad_report))
                        stream.send(_batch(n, [BIG + n]))  # a seq beyond BIGINT
                        stream.send(_batch(n, [good], kind="chaos\x00"))  # a NUL no text column holds
                        stream.send(_batch(n, [good + 1]))  # and one good record
                        self.sent_bad += 3
                        for _ in range(3):
                            ack = stream.next_of("telemetry_ack").telemetry_ack
                            self.refused += len(ack.rejected)
                            self.good_acked.update(ack.seqs)
                        good += 2
                        time.sleep(0.02)
                    stream.close()
            except (grpc.RpcError, StopIteration):
                time.sleep(0.3)


@pytest.fixture
def pg_url(pg_available: bool) -> Iterator[str]:
    if not pg_available:
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 (start it: .ci/run does)")
    name, url = make_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(name)


def _publish(server: ServerProc, path: Path, version: str, golden: Path) -> int:
    with server.api() as api:
        blob = api.put("/ota/blobs", content=path.read_bytes()).json()
        gold = api.put("/ota/blobs", content=golden.read_bytes()).json()
        body = {
            "model_name": "digits", "model_version": version, "artifact_sha256": blob["sha256"],
            "golden_sha256": gold["sha256"], "golden_threshold": 0.8,
            "gates": {"watch_s": 0.3, "shadow_window_s": 1.0},
        }  # fmt: skip
        resp = api.post("/releases", json=body)
        resp.raise_for_status()
        return int(resp.json()["seq"])


def _deploy(server: ServerProc, seq: int, device_ids: list[str]) -> str:
    with server.api() as api:
        resp = api.post(f"/releases/{seq}/deployments", json={"device_ids": device_ids})
        resp.raise_for_status()
        return str(resp.json()["deployment_id"])


def _rows(server: ServerProc, deployment_id: str) -> list[dict[str, Any]]:
    with server.api() as api:
        resp = api.get(f"/deployments/{deployment_id}")
        resp.raise_for_status()
        return list(resp.json())


def _all_ended(server: ServerProc, deployment_id: str, n: int) -> list[dict[str, Any]] | None:
    try:
        rows = _rows(server, deployment_id)
    except Exception:
        return None
    return rows if len(rows) == n and all(r["state"] in TERMINAL for r in rows) else None


def _seqs(server: ServerProc, device_id: str) -> list[int]:
    out: list[int] = []
    with server.api() as api:
        while True:
            page = api.get(
                f"/devices/{device_id}/telemetry", params={"after_seq": out[-1] if out else 0, "limit": 10000}
            ).json()
            if not page:
                return out
            out.extend(int(r["seq"]) for r in page)


def test_chaos_fleet_keeps_every_record_and_ends_every_update(tmp_path: Path, pg_url: str) -> None:
    m = models()
    server = ServerProc(tmp_path / "server", database_url=pg_url)
    server.data_dir.mkdir()
    server.init()
    server.start()
    agents: list[AgentProc] = []
    mirrored: dict[str, str] = {}
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        v1 = _publish(server, m.v1, "1", m.golden)
        with FlakyHttp(server.data_dir / "ota" / "repo") as mirror:
            mirror.flaky.prefix, mirror.flaky.script = "/ota/targets/patches/", ["short"] * 100_000

            # ---- the fleet: 16 real agents, 3 simulated, 1 flooder
            for i in range(REAL):
                agent = AgentProc(f"dev-{i:02d}", tmp_path / "agents" / f"dev-{i:02d}", server, 0.3)
                if i < VIA_BAD_MIRROR:
                    mirrored[agent.device_id] = f"http://127.0.0.1:{mirror.port}/ota"
                agent.data_dir.mkdir(parents=True)
                result = agent.enroll(server.bootstrap_token(labels={"site": "chaos"}))
                assert result.returncode == 0, result.stderr.decode()
                agent.start_ota(mirrored.get(agent.device_id, ""), EDGELOOP_AGENT_OTA_POLL_INTERVAL_S="2")
                agents.append(agent)
            sims = [
                SimDevice(f"sim-{i}", server, enroll(server, f"sim-{i}", server.bootstrap_token(), tmp_path))  # type: ignore[arg-type]
                for i in range(SIMULATED)
            ]
            flood_creds = enroll(server, "flood-0", server.bootstrap_token(), tmp_path)  # type: ignore[arg-type]
            flooder = Flooder("flood-0", server, flood_creds)
            for worker in [*sims, flooder]:
                threads.append(threading.Thread(target=worker.run, args=(stop,), daemon=True))
                threads[-1].start()

            def online() -> bool:
                with server.api() as api:
                    devices = api.get("/devices", params={"limit": 100}).json()
                return sum(1 for d in devices if d["online"]) >= REAL + SIMULATED

            wait_until(online, 180, interval=1, what="the fleet online")

            # ---- an agent started twice on its own data directory is refused, the first keeps going
            twice = next(a for a in agents if a.device_id == TWICE)
            second = twice.start_ota()
            assert second.wait(60) == 20, "a second agent on one data directory must exit 20"
            log = (twice.data_dir.parent / f"{TWICE}.log").read_text(errors="replace")
            assert f"in use by pid {twice.proc.pid}" in log  # type: ignore[union-attr]
            assert twice.proc.poll() is None  # type: ignore[union-attr]

            # ---- v1 to half the fleet, then v2 (a delta from v1) while chaos runs
            updated = [a.device_id for a in agents[:UPDATED]]
            dep1 = _deploy(server, v1, updated)
            rows = wait_until(
                lambda: _all_ended(server, dep1, UPDATED), 300, interval=1, what="v1 everywhere"
            )
            assert {r["state"] for r in rows} == {"committed"}, rows
            healthz = server.api().get(server.url + "/healthz").json()
            assert healthz["ingest"]["rejected_records"] > 0, healthz["ingest"]  # the flood is on
            v2 = _publish(server, m.v2, "2", m.golden)
            with server.api() as api:  # a federated run that waits for devices that never come
                run = api.post("/federated/runs", json={"min_nodes": 50, "round_timeout_s": 86400})
                assert run.status_code == 202, run.text
                run_id = run.json()["run_id"]
            dep2 = _deploy(server, v2, updated)

            def moving() -> list[dict[str, Any]] | None:  # some device has started installing v2
                rows = _rows(server, dep2)
                return rows if any(r["state"] not in ("assigned", *TERMINAL) for r in rows) else None

            at_kill = wait_until(moving, 60, interval=0.05, what="v2 installs under way")
            server.kill()
            mid_update = [r["device_id"] for r in at_kill if r["state"] not in TERMINAL]
            assert mid_update, at_kill  # the server dies while updates are in flight
            time.sleep(3)  # agents and simulated devices keep producing into their queues
            server.start()

            rows = wait_until(lambda: _all_ended(server, dep2, UPDATED), 400, interval=1, what="v2 ended")
            for row in rows:
                assert row["state"] in ("committed", "failed"), row
                if row["state"] == "failed":
                    assert row["detail"], row
            assert [r["state"] for r in rows].count("committed") == UPDATED, rows  # the fallback works
            mirror_hits = [x for x in mirror.flaky.log if x[0].startswith("/ota/targets/patches/")]
            assert mirror_hits, "the bad mirror's patches were never asked for (no delta attempted)"

        with server.api() as api:
            runs = api.get("/federated/runs").json()
            run_row = next(r for r in runs if r["id"] == run_id)
            # the killed server held the run's lease: whichever notices first fails it with its reason
            # (the restarted process's startup sweep, or the scheduler taking over a dead holder's lease)
            assert run_row["status"] == "failed", run_row
            assert run_row["detail"] == SERVER_RESTARTED or re.fullmatch(
                r"runner replica \S+ lost (during round \d+|before its first round)", run_row["detail"]
            ), run_row
            assert all(r["status"] in ("completed", "failed", "cancelled") for r in runs), runs

        # ---- every agent reconnected and drained its backlog; then stop producing
        def drained() -> bool:
            return all((st := a.status())["connected"] and st["telemetry_queued"] <= 5 for a in agents)

        wait_until(drained, 120, interval=1, what="every agent reconnected with its backlog sent")
        stop.set()
        for t in threads:
            t.join(60)
        for agent in agents:
            assert agent.stop(60) == 0, agent.device_id
        for agent in agents:
            status = agent.status()
            assert status["telemetry_queued"] == 0, (agent.device_id, status)
            assert status["telemetry_dropped_total"] == 0, (agent.device_id, status)
            seqs = _seqs(server, agent.device_id)
            assert seqs == list(range(1, status["telemetry_last_seq"] + 1)), agent.device_id
        for sim in sims:
            seqs = _seqs(server, sim.device_id)
            assert seqs == sorted(sim.acked) == list(range(1, max(sim.acked) + 1)), sim.device_id
            assert sim.sessions >= 2, "the simulated device never saw the server restart"
        flood_seqs = set(_seqs(server, flooder.device_id))
        assert flooder.good_acked and flooder.good_acked <= flood_seqs
        assert all(s < BIG for s in flood_seqs) and flooder.refused > 0
        with server.api() as api:
            for dep in (dep1, dep2):
                assert all(r["state"] in TERMINAL for r in _rows(server, dep))
            devices = {d["id"]: d for d in api.get("/devices", params={"limit": 100}).json()}
        assert devices["flood-0"]["telemetry_dropped_total"] < BIG
        print(json.dumps({"mid_update_at_kill": mid_update, "flood_refused": flooder.refused,
                          "flood_good": len(flooder.good_acked),
                          "sim_sessions": [s.sessions for s in sims]}))  # fmt: skip
    finally:
        stop.set()
        for agent in agents:
            if agent.proc is not None and agent.proc.poll() is None:
                agent.proc.kill()
        server.stop()

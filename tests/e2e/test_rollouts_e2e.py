"""Rollouts end to end (issue 12, "Must show"): a real `edgeloop-server` process, three real
`edgeloop-agent` processes with an application feeding each live digits through its inference
socket, and 27 simulated devices speaking the real protocol (tests/helpers/simfleet.py), on the
real digits models (tests/fixtures/rollout_models.py).

Fast tier: the rollout models have the properties the scenarios rely on (a silently bad model
passes the device's golden-set and shadow gates but does something else on live inputs; a broken
one does not load), and simulated devices are accepted by a real server process as agents are.
Slow tier: one fleet, four rollouts in a row (each starts from where the last
left the fleet): (i)+(iv) a good retrained model goes through every batch to every device; (ii) a
model that fails to load halts at the canary, nobody else gets it, the canary stays on the
previous model; (iii) a silently bad model halts at the canary on live metrics and is rolled back
automatically; (v) devices that go silent mid-rollout become failures after the timeout and the
rollout still completes. Batch seeds are chosen with the engine's own ordering
(`planning.order`) so that real agents are (and are not) in the canary.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.client import EdgeloopClient
from agent.ota.gates import DEFAULTS, agreement_and_distance
from fleet_server.db import make_engine
from fleet_server.rollouts.metrics import device_window_sums
from fleet_server.rollouts.planning import order
from tests.fixtures.rollout_models import (
    GOLDEN_THRESHOLD,
    RolloutModels,
    golden_accuracy,
    profile,
    rollout_models,
    run,
)
from tests.helpers import simfleet as sf
from tests.helpers.procs import AgentProc, ServerProc, wait_until


def test_rollout_models_are_what_the_scenarios_need() -> None:
    m = rollout_models()
    v1_conf, v1_cls = profile(m.v1, m.x_live)
    v1_golden = golden_accuracy(m.v1, m.golden)
    assert v1_golden >= GOLDEN_THRESHOLD + 0.15

    # good: a retrained model with slightly different predictions, as accurate as v1
    good_conf, good_cls = profile(m.good, m.x_live)
    assert m.sha256("good") != m.sha256("v1")
    assert 0.9 <= float((good_cls == v1_cls).mean()) < 1.0
    assert float((good_cls == m.y_live).mean()) >= float((v1_cls == m.y_live).mean()) - 0.02
    assert abs(float(good_conf.mean()) - float(v1_conf.mean())) < 0.05

    # cold: same argmax everywhere (same golden accuracy), passes the agent's default shadow gates,
    # and the mean confidence on live inputs drops by more than 0.1
    cold_conf, cold_cls = profile(m.cold, m.x_live)
    assert (cold_cls == v1_cls).all()
    assert golden_accuracy(m.cold, m.golden) == v1_golden
    agree, distance = agreement_and_distance(run(m.v1, m.x_live), run(m.cold, m.x_live))
    assert agree == 1.0 and distance < DEFAULTS["max_distance"]
    assert float(cold_conf.mean()) < float(v1_conf.mean()) - 0.1

    # swapped: passes the golden threshold, two classes' worth of live predictions move
    sw_conf, sw_cls = profile(m.swapped, m.x_live)
    assert GOLDEN_THRESHOLD <= golden_accuracy(m.swapped, m.golden) < v1_golden - 0.05
    changed = set(np.unique(v1_cls[sw_cls != v1_cls]).tolist())
    assert changed == {3, 8}
    assert np.allclose(np.sort(sw_conf), np.sort(v1_conf))

    # broken: a release whose artifact does not load
    with pytest.raises(Exception, match=r"(?i)protobuf|load|parse"):
        run(m.broken, m.x_live)
    assert m.broken.stat().st_size < m.v1.stat().st_size


def test_simulated_devices_speak_the_real_protocol(tmp_path: Path) -> None:
    """OTA transitions and metric windows of simulated devices are accepted by a real server
    process as an agent's are: deployment rows move to committed / failed, and every window lands
    in `model_metric_window` with the served model's sha256 and real-model statistics."""
    m = rollout_models()
    pool = sf.input_pool(m.x_live, m.y_live)
    catalogue = {v: sf.behaviour("digits", v, p, pool, profile) for v, p in [("1", m.v1), ("x", m.broken)]}
    server = ServerProc(tmp_path / "server")
    server.data_dir.mkdir()
    server.init()
    server.start()
    sims: sf.SimFleet | None = None
    try:
        ids = [f"sim-{i}" for i in range(4)]
        devices = sf.enroll_fleet(
            server, [server.bootstrap_token() for _ in ids], ids, tmp_path / "ids", pool
        )
        sims = sf.SimFleet(server.device_target, server.ca_pem, devices, catalogue, window_s=0.5)
        sims.start()
        wait_until(lambda: sims is not None and sims.connected() == 4, 30, what="4 streams")
        with server.api() as api:
            v1 = sf.publish(api, m.v1, "1", m.golden)
            rows = sf.deploy_and_wait(api, v1, ids[:3], timeout_s=60)
            assert {r["state"] for r in rows} == {"committed"}, rows
            bad = sf.publish(api, m.broken, "x", m.golden)
            rows = sf.deploy_and_wait(api, bad, ids[:1], timeout_s=60)
            assert rows[0]["state"] == "failed" and rows[0]["event"] == "stage_failed", rows
        sha = catalogue["1"].sha256
        engine = make_engine(f"sqlite:///{server.data_dir / 'fleet.db'}")
        try:

            def summed() -> dict[str, Any]:
                with engine.connect() as conn:
                    got = device_window_sums(conn, ids, 0, int(time.time() * 1000) + 1, sha)
                return got if len(got) == 3 and all(s.windows >= 2 for s in got.values()) else {}

            got = wait_until(summed, 30, what="metric windows of 3 devices")
        finally:
            engine.dispose()
        assert set(got) == set(ids[:3])  # the device never assigned a model sends no windows
        for s in got.values():
            assert s.model_sha256 == sha and s.predictions > 0 and s.errors == 0
            assert sum(s.confidence_hist) == s.predictions == sum(s.class_counts)
            assert 0.8 < s.confidence_sum / s.predictions <= 1.0  # v1's real confidence
        assert sims.devices["sim-0"].serving is not None and sims.devices["sim-0"].serving.version == "1"
    finally:
        if sims is not None:
            sims.stop()
        server.stop()


# ---------------------------------------------------------------- the fleet: real agents + simulated


REAL = ("dev-a", "dev-b", "dev-c")
SIMULATED = 27
CANARY = 6  # batch 0: counts [6, 12] + the rest (12)
LABELS = {"fleet": "e2e"}
# The agents' on-device latency gate compares p95s of ~1 ms models on a shared 2-core machine: it
# is not what these tests are about, so it gets room (every other device gate keeps its default).
LENIENT = {"max_latency_ratio": 10.0, "latency_slack_ms": 50.0}


class OtaAgent(AgentProc):
    """A real agent with OTA on, one-second metric windows, and an app feeding it live inputs."""

    def launch(self) -> None:
        self.start_ota(EDGELOOP_AGENT_METRICS_WINDOW_S="1")

    def version(self) -> str:
        with EdgeloopClient(self.data_dir / "inference.sock", timeout_s=5) as client:
            return str(client.model_info().version)


def _app(sock: Path, x: np.ndarray, stop: threading.Event, served: Counter[str]) -> None:
    """An application on the device: batches of live digits through the agent's inference socket."""
    rng = np.random.default_rng(abs(hash(sock)) % 2**32)
    while not stop.is_set():
        try:
            with EdgeloopClient(sock, timeout_s=5) as client:
                while not stop.is_set():
                    idx = rng.integers(0, len(x), 8)
                    client.predict(x[idx])
                    served["rows"] += 8
                    time.sleep(0.05)
        except Exception:  # the socket is not up yet or the model is switching: retry
            served["errors"] += 1
            time.sleep(0.2)


@dataclass
class E2EFleet:
    server: ServerProc
    agents: dict[str, OtaAgent]
    sims: sf.SimFleet
    models: RolloutModels
    releases: dict[str, int]  # version -> release seq
    traffic: Counter[str]

    @property
    def ids(self) -> list[str]:
        return sorted([*self.agents, *self.sims.devices])

    def api(self) -> Any:
        return self.server.api()

    def release(self, version: str, path: Path, behaviour_of: str) -> int:
        self.sims.catalogue[version] = replace(self.sims.catalogue[behaviour_of], version=version)
        with self.api() as api:
            self.releases[version] = sf.publish(api, path, version, self.models.golden, device_gates=LENIENT)
        return self.releases[version]

    def serving_sha(self, device_id: str) -> str:
        with self.api() as api:
            slots = api.get(f"/devices/{device_id}").json()["observed"].get("slots", [])
        return str(slots[0]["sha256"]) if slots else ""

    def rollout(self, version: str, seed: str, **gates: Any) -> str:
        cfg = sf.gate_config(1.0, **{"min_devices": 3, "min_samples": 100, "silent_timeout_s": 90, **gates})
        body = {
            "name": f"e2e {version}", "releases": [self.releases[version]], "selector": {"labels": LABELS},
            "batches": {"counts": [CANARY, 12], "seed": seed},
            "gates": cfg,
            "on_breach": "rollback",
        }  # fmt: skip
        with self.api() as api:
            resp = api.post("/rollouts", json=body, timeout=60)
            assert resp.status_code == 201, resp.text
            return str(resp.json()["id"])

    def devices(self, rollout_id: str) -> list[dict[str, Any]]:
        with self.api() as api:
            resp = api.get(f"/rollouts/{rollout_id}/devices", params={"limit": 1000})
            resp.raise_for_status()
            return list(resp.json())

    def gates(self, rollout_id: str) -> list[dict[str, Any]]:
        with self.api() as api:
            resp = api.get(f"/rollouts/{rollout_id}/gates", params={"limit": 5000})
            resp.raise_for_status()
            return list(resp.json())


def seed_with(ids: list[str], in_canary: set[str], out_of_canary: set[str]) -> str:
    """A batch seed whose canary (first CANARY of the deterministic order) holds `in_canary` and
    none of `out_of_canary` (planning.order is the engine's own ordering)."""
    for i in range(100_000):
        first = set(order(ids, f"e2e-{i}")[:CANARY])
        if in_canary <= first and not (first & out_of_canary):
            return f"e2e-{i}"
    raise AssertionError("no seed found")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2EFleet]:
    tmp = tmp_path_factory.mktemp("rollouts-e2e")
    m = rollout_models()
    pool = sf.input_pool(m.x_live, m.y_live)
    catalogue = {
        v: sf.behaviour("digits", v, p, pool, profile)
        for v, p in [("1", m.v1), ("2", m.good), ("cold", m.cold), ("broken", m.broken)]
    }
    server = ServerProc(tmp / "server", env_extra={"EDGELOOP_ROLLOUT_TICK_S": "0.5"})
    server.data_dir.mkdir()
    server.init()
    server.start()
    stop = threading.Event()
    agents: dict[str, OtaAgent] = {}
    sims: sf.SimFleet | None = None
    threads: list[threading.Thread] = []
    traffic: Counter[str] = Counter()
    try:
        for name in REAL:
            agent = OtaAgent(name, tmp / "agents" / name, server, 0.3)
            agent.data_dir.mkdir(parents=True)
            result = agent.enroll(server.bootstrap_token(labels=LABELS))
            assert result.returncode == 0, result.stderr.decode()
            agent.launch()
            agents[name] = agent
            threads.append(
                threading.Thread(
                    target=_app,
                    args=(agent.data_dir / "inference.sock", m.x_live, stop, traffic),
                    daemon=True,
                )
            )
            threads[-1].start()
        ids = [f"sim-{i:02d}" for i in range(SIMULATED)]
        tokens = [server.bootstrap_token(labels=LABELS) for _ in ids]
        sims = sf.SimFleet(
            server.device_target, server.ca_pem, sf.enroll_fleet(server, tokens, ids, tmp / "ids", pool),
            catalogue, window_s=1.0,
        )  # fmt: skip
        sims.start()
        f = E2EFleet(server, agents, sims, m, {}, traffic)

        def online() -> bool:
            with f.api() as api:
                return bool(sum(d["online"] for d in api.get("/devices", params={"limit": 100}).json()) == 30)

        wait_until(online, 120, interval=0.5, what="30 devices online")
        v1 = f.release("1", m.v1, "1")
        with f.api() as api:
            rows = sf.deploy_and_wait(api, v1, f.ids, timeout_s=240)
        assert {r["state"] for r in rows} == {"committed"}, rows
        for agent in agents.values():
            wait_until(lambda a=agent: a.version() == "1", 30, what=f"{agent.device_id} serving v1")
        yield f
    finally:
        stop.set()
        if sims is not None:
            sims.stop()
        for agent in agents.values():
            if agent.proc is not None and agent.proc.poll() is None:
                agent.proc.kill()
        server.stop()


def _exposed(f: E2EFleet, version: str) -> set[str]:
    """Devices that ever received an assignment of `version` (simulated devices' own record; for
    real agents, any OTA deployment row of the release)."""
    got = {d.device_id for d in f.sims.devices.values() if any(a[1] == version for a in d.assignments)}
    with f.api() as api:
        resp = api.get(f"/releases/{f.releases[version]}/deployments")
        resp.raise_for_status()
        return got | {r["device_id"] for r in resp.json()}


def _assert_serving(f: E2EFleet, device_ids: set[str], version: str, sha: str) -> None:
    for d in sorted(device_ids):
        wait_until(lambda d=d: f.serving_sha(d) == sha, 60, what=f"{d} reporting {version}")
        if d in f.agents:
            assert f.agents[d].version() == version, d


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rollout_scenarios_with_real_agents_and_simulated_devices(fleet: E2EFleet) -> None:
    f, m = fleet, fleet.models
    real = set(REAL)
    sha = {v: hashlib.sha256(p.read_bytes()).hexdigest() for v, p in [("1", m.v1), ("2", m.good)]}

    # (i) + (iv) a good retrained model rolls through every batch to every matching device
    f.release("2", m.good, "2")
    rid = f.rollout("2", seed_with(f.ids, {"dev-a", "dev-b"}, {"dev-c"}))
    with f.api() as api:
        done = sf.wait_rollout(api, rid, sf.ENDED | {"paused"}, 300)
    assert done["state"] == "completed", done
    devices = f.devices(rid)
    failed = [(d["device_id"], d["detail"]) for d in devices if d["status"] != "committed"]
    assert len(devices) == 30 and not failed, failed
    assert {d["batch"] for d in devices} == {0, 1, 2}
    assert not [g for g in f.gates(rid) if g["verdict"] == "fail"]
    metric_looks = [g for g in f.gates(rid) if g["batch"] == 0 and g["gate"] == "confidence_mean"]
    assert metric_looks and metric_looks[-1]["verdict"] == "pass", metric_looks  # judged, not waved through
    _assert_serving(f, set(f.ids), "2", sha["2"])
    assert f.traffic["rows"] > 0

    # (ii) a model that fails to load halts at the first batch; nobody outside it gets the release;
    # the canary devices (two real agents among them) are back on (still on) the previous model
    f.release("broken", m.broken, "broken")
    seed = seed_with(f.ids, {"dev-a", "dev-b"}, {"dev-c"})
    canary = set(order(f.ids, seed)[:CANARY])
    rid = f.rollout("broken", seed)
    with f.api() as api:
        halted = sf.wait_rollout(api, rid, sf.ENDED | {"paused"}, 300)
    assert halted["state"] in ("rolled_back", "aborted"), halted
    assert halted["batch"] == 0, halted
    devices = f.devices(rid)
    assert {d["device_id"] for d in devices if d["batch"] == 0} == canary
    assert {d["status"] for d in devices if d["batch"] == 0} <= {"failed", "rolled_back"}, devices
    assert all(not d["deployment_id"] for d in devices if d["batch"] > 0), devices
    assert _exposed(f, "broken") <= canary
    install = [g for g in f.gates(rid) if g["gate"] == "install_failures"]
    assert install and install[-1]["verdict"] == "fail", install
    _assert_serving(f, canary, "2", sha["2"])

    # (iii) a silently bad model (passes golden and shadow on the agents) halts at the canary on
    # live metrics and is rolled back automatically; nobody outside the canary ever ran it
    f.release("cold", m.cold, "cold")
    seed = seed_with(f.ids, {"dev-a", "dev-c"}, {"dev-b"})
    canary = set(order(f.ids, seed)[:CANARY])
    rid = f.rollout("cold", seed)
    with f.api() as api:
        ended = sf.wait_rollout(api, rid, sf.ENDED | {"paused"}, 300)
    assert ended["state"] == "rolled_back", ended
    assert ended["batch"] == 0 and "confidence" in ended["reason"], ended
    gates = f.gates(rid)
    assert {g["gate"] for g in gates if g["verdict"] == "fail"} & {"confidence_mean", "confidence_hist"}
    assert (
        next(g for g in gates if g["gate"] == "install_failures")["verdict"] == "pass"
    )  # installs were fine
    devices = f.devices(rid)
    assert {d["status"] for d in devices if d["batch"] == 0} == {"rolled_back"}, devices
    assert _exposed(f, "cold") <= canary
    assert {d.device_id for d in f.sims.devices.values() if "cold" in d.ever_served} <= canary
    _assert_serving(f, canary, "2", sha["2"])  # the rollback release points at v2's bytes
    assert real & canary == {"dev-a", "dev-c"}

    # (v) devices that go silent mid-rollout count as failures after the timeout, never stall it
    f.release("1b", m.v1, "1")
    seed = seed_with(f.ids, set(), set())
    plan = order(f.ids, seed)
    silent = [d for d in plan[CANARY : CANARY + 12] if d.startswith("sim-")][:2]
    rid = f.rollout("1b", seed, silent_timeout_s=6, max_failure_rate=0.25)
    f.sims.silence(silent)  # mid-rollout: the canary is installing, their batch comes next
    with f.api() as api:
        ended = sf.wait_rollout(api, rid, sf.ENDED | {"paused"}, 300)
    assert ended["state"] == "completed", ended
    status = {d["device_id"]: d for d in f.devices(rid)}
    for d in silent:
        assert status[d]["status"] == "silent" and "no install report" in status[d]["detail"], status[d]

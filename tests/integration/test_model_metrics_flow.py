"""Live model metrics end to end (issue 12 item 3), on SQLite and PostgreSQL: a real `edgeloop-server`
and a real `edgeloop-agent` process; the agent installs v1 then v2 of the digits model by OTA
(golden set, drift reference, shadow run), applications predict through its inference socket,
and every metrics window lands in `model_metric_window` with the right counts, confidence
histogram and class mix, the deployment that installed the model, the drift monitor's score and,
for v2, the shadow agreement its switch measured (the same number the OTA report shows).
`device_window_sums` returns them."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, select

from agent.client import EdgeloopClient
from agent.errors import InvalidInputError
from fleet_server.db import make_engine
from fleet_server.models import TelemetryRecord
from fleet_server.rollouts.metrics import ModelMetricWindow, device_window_sums
from fleet_server.settings import Settings
from tests.helpers.procs import AgentProc, ServerProc, wait_until
from tests.integration.test_ota_support import drift_references, models

pytestmark = pytest.mark.timeout(300)


def _publish(server: ServerProc, path: Path, version: str, golden: Path, reference: Path) -> dict[str, Any]:
    with server.api() as api:
        blobs = [
            api.put("/ota/blobs", content=p.read_bytes()).json()["sha256"] for p in (path, golden, reference)
        ]
        body = {
            "model_name": "digits", "model_version": version, "artifact_sha256": blobs[0],
            "golden_sha256": blobs[1], "golden_threshold": 0.8, "drift_reference_sha256": blobs[2],
            "gates": {"watch_s": 0.3, "shadow_window_s": 3.0},
        }  # fmt: skip
        resp = api.post("/releases", json=body)
        assert resp.status_code == 201, resp.text
        return dict(resp.json())


def _deploy(server: ServerProc, seq: int, device: str) -> str:
    with server.api() as api:
        dep = api.post(f"/releases/{seq}/deployments", json={"device_ids": [device]}).json()
        deployment_id = str(dep["deployment_id"])
        final = wait_until(
            lambda: (
                (rows := api.get(f"/deployments/{deployment_id}").json())
                and rows[0]["state"] in ("committed", "failed", "rolled_back")
                and rows[0]
            ),
            120,
            what=f"deployment of release {seq}",
        )
    assert final["state"] == "committed", final
    return deployment_id


def _launch(agent: AgentProc) -> None:
    agent.start_ota(EDGELOOP_AGENT_METRICS_WINDOW_S="1", EDGELOOP_AGENT_DRIFT_INTERVAL_S="0.3")


def _traffic(client: EdgeloopClient, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Batches and single rows through the real socket, plus one refused request; the logits and
    the number of successful requests."""
    outs = [client.predict(x[:20]), client.predict(x[20:40])]
    outs += [client.predict(x[i : i + 1]) for i in range(40, 50)]
    with pytest.raises(InvalidInputError):
        client.predict(np.zeros((1, 3), np.float32))  # wrong shape: a failed request
    return np.concatenate(outs), 12


def _expected(logits: np.ndarray) -> tuple[list[int], list[int], float]:
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    top = (p / p.sum(axis=1, keepdims=True)).max(axis=1)
    hist = np.bincount(np.minimum((top * 10).astype(int), 9), minlength=10).tolist()
    classes = np.trim_zeros(np.bincount(z.argmax(axis=1), minlength=10), "b").tolist()
    return hist, classes, float(top.sum())


def _windows(engine: Engine, sha: str) -> list[Any]:
    table = ModelMetricWindow.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        return list(conn.execute(select(table).where(table.c.model_sha256 == sha).order_by(table.c.seq)))


def _padded(counts: tuple[int, ...] | list[int]) -> list[int]:
    return [int(c) for c in np.trim_zeros(np.asarray(list(counts), dtype=np.int64), "b")]


def _check_model(
    engine: Engine, sha: str, deployment_id: str, logits: np.ndarray, requests: int, since_ms: int
) -> Any:
    hist, classes, conf_sum = _expected(logits)
    rows = wait_until(
        lambda: (
            (w := _windows(engine, sha))
            and sum(r.predictions for r in w) >= len(logits)
            and sum(r.errors for r in w) >= 1
            and w
        ),
        30,
        what=f"metric windows of {sha[:12]}",
    )
    assert sum(r.predictions for r in rows) == len(logits) and sum(r.errors for r in rows) == 1
    assert {r.deployment_id for r in rows} == {deployment_id}
    assert {(r.model_name, r.window_s) for r in rows} <= {("digits", 1), ("digits", 2)}
    with engine.connect() as conn:
        sums = device_window_sums(conn, ["dev-a", "dev-b"], since_ms, int(time.time() * 1000) + 1, sha)
    assert list(sums) == ["dev-a"]
    s = sums["dev-a"]
    assert (s.model_sha256, s.windows, s.predictions, s.errors) == (sha, len(rows), len(logits), 1)
    assert list(s.confidence_hist) == hist
    assert _padded(s.class_counts) == classes
    assert s.confidence_sum == pytest.approx(conf_sum, rel=1e-4)
    assert s.latency_count == requests and s.latency_sum_ms > 0 and s.latency_p95_ms_max > 0
    assert s.drift_score_mean == 0.0  # monitored (the release ships a drift reference), no episode open
    return s


def _shadow_agreement_reported(engine: Engine, deployment_id: str) -> float:
    """The agreement in the device's own OTA report of the shadow gate (3 decimals)."""
    with engine.connect() as conn:
        table = TelemetryRecord.__table__  # type: ignore[attr-defined]
        payloads = conn.execute(select(table.c.payload).where(table.c.kind == "ota")).scalars()
        for payload in payloads:
            report = json.loads(payload)
            if report.get("deployment_id") == deployment_id and report.get("event") == "shadow_passed":
                match = re.search(r"agreement=([0-9.]+)", report["detail"])
                assert match, report
                return float(match.group(1))
    raise AssertionError("no shadow_passed report")


def test_predictions_on_a_real_agent_become_metric_windows(tmp_path: Path, database_url: str) -> None:
    m = models()
    reference = drift_references()[0]
    server = ServerProc(tmp_path / "server", database_url=database_url)
    server.init()
    server.start()
    agent = AgentProc("dev-a", tmp_path / "dev-a", server)
    engine = make_engine(
        Settings(data_dir=server.data_dir, database_url=database_url).resolved_database_url()
    )
    try:
        agent.data_dir.mkdir()
        assert agent.enroll(server.bootstrap_token()).returncode == 0
        _launch(agent)
        since = int(time.time() * 1000) - 1000
        v1 = _publish(server, m.v1, "1", m.golden, reference)
        dep1 = _deploy(server, v1["seq"], "dev-a")
        assert v1["sha256"] == hashlib.sha256(m.v1.read_bytes()).hexdigest()
        with EdgeloopClient(agent.data_dir / "inference.sock") as client:
            wait_until(lambda: client.model_info().version == "1", 10, what="v1 serving")
            logits1, requests = _traffic(client, m.x_live)
        s1 = _check_model(engine, v1["sha256"], dep1, logits1, requests, since)
        assert s1.shadow_agreement_min == -1.0  # nothing was serving before v1: no shadow run

        v2 = _publish(server, m.v2, "2", m.golden, reference)
        dep2 = _deploy(server, v2["seq"], "dev-a")
        with EdgeloopClient(agent.data_dir / "inference.sock") as client:
            wait_until(lambda: client.model_info().version == "2", 10, what="v2 serving")
            logits2, requests = _traffic(client, m.x_live[::-1].copy())
        s2 = _check_model(engine, v2["sha256"], dep2, logits2, requests, since)
        measured = _shadow_agreement_reported(engine, dep2)
        assert 0.9 <= s2.shadow_agreement_min <= 1.0  # v2 is a head fine-tune: it passed the 0.9 gate
        assert round(s2.shadow_agreement_min, 3) == measured
        rows = _windows(engine, v2["sha256"])
        assert {r.shadow_samples for r in rows} == {rows[0].shadow_samples} and rows[0].shadow_samples >= 16
        assert agent.stop() == 0
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()
        server.stop()
        engine.dispose()

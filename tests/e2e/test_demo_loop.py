"""`make demo`'s closed loop, shortened (`scripts/demo.py --quick`), run as a user runs it: one
subprocess starting a real server, real agents and (when installed) Mosquitto. Every stage's outcome
is asserted from the timeline the demo leaves behind (`--work DIR/timeline.json`, contract A of
issue 15), not from the exit code alone, and the report must carry the run's numbers."""

from __future__ import annotations

import html
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    work = tmp_path_factory.mktemp("demo") / "work"
    cmd = [sys.executable, str(ROOT / "scripts" / "demo.py"), "--quick", "--work", str(work)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=1500)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the demo's SIGTERM handler stops its server, agents and broker
        stdout, stderr = proc.communicate(timeout=120)
    out = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    return out, work


def _timeline(work: Path) -> dict[str, Any]:
    return dict(json.loads((work / "timeline.json").read_text()))


@pytest.mark.slow
@pytest.mark.timeout(1700)
def test_every_stage_of_the_quick_demo(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    out, work = demo
    t = _timeline(work)
    failed = [(s["key"], s["facts"].get("error")) for s in t["stages"] if not s["ok"]]
    assert out.returncode == 0 and not failed, (failed, out.stdout[-3000:], out.stderr[-3000:])
    keys = [s["key"] for s in t["stages"]]
    for key in ("fleet", "compile", "register_v1", "rollout_v1", "stream", "auto_retrain", "drift",
                "federated", "v2_delta", "bad_release", "guard_rails", "shutdown"):  # fmt: skip
        assert key in keys, keys
    devices = {d["id"]: d for d in t["devices"]}
    drifted = sorted(d for d, v in devices.items() if v["cohort"] == "drifted")
    stuck = [d for d, v in devices.items() if v["cohort"] == "stuck"]
    assert len(drifted) == 3 and len(stuck) == 1
    profiles = {v["profile"] for v in devices.values()}
    assert {"raspberry-pi-4", "jetson-orin-nano", "coral-dev-board"} <= profiles

    # phased rollout of v1: a canary batch, then the rest
    v1 = t["rollouts"][0]
    assert v1["outcome"] == "completed" and len(v1["phases"]) == 2 and v1["phases"][0]["name"] == "canary"

    # the stuck sensor alone: a device anomaly, no shift, no run; then the cameras of site north
    # turn: episodes from every drifted device, a population shift of those devices, and the stuck
    # sensor still told apart as a device anomaly
    alone, verdict = t["drift"]["verdicts"]
    assert alone["verdict"] != "population_shift"
    assert {"device_id": stuck[0], "signature": "stuck"} in alone["anomalies"]
    assert next(s for s in t["stages"] if s["key"] == "stuck")["facts"]["runs_opened"] == 0
    episodes = t["drift"]["episodes"]
    assert set(drifted) <= {e["device_id"] for e in episodes}
    assert verdict["verdict"] == "population_shift"
    assert set(drifted) <= set(verdict["devices"])
    assert {"device_id": stuck[0], "signature": "stuck"} in verdict["anomalies"]

    # the run was opened by the drift trigger, with secure aggregation, the stuck device excluded
    fl = t["federated"]
    assert fl["triggered_by"] == "drift" and fl["secure_aggregation"] is True
    assert fl["devices"] == drifted and fl["excluded"] == stuck
    assert fl["rounds"] and all(r["participants"] == len(drifted) for r in fl["rounds"])

    # v2 is better than v1 on the drifted inputs, measured through the agents
    acc = {a["point"]: a for a in t["accuracy"]}
    before, after, retrained = acc["v1, before drift"], acc["v1, after drift"], acc["v2, after retraining"]
    assert after["inputs"] == retrained["inputs"] == "drifted"
    assert after["accuracy"] < before["accuracy"] - 0.3
    assert retrained["accuracy"] > after["accuracy"] + 0.3
    assert "digits-head@2" in retrained["model"] and "digits-head@1" in after["model"]

    # v2 went out by delta: fewer bytes than the full files, for every device
    ota = t["ota"]
    assert ota["per_device"] and all(p["delta"] for p in ota["per_device"])
    assert 0 < ota["delta_bytes"] < ota["full_bytes"]

    # the silently bad release: halted at the canary, rolled back, canary back on v2
    bad = t["bad_release"]
    assert bad["halted_at"] == "canary" and bad["all_back_on"] == "digits-head@2"
    bad_rollout = next(r for r in t["rollouts"] if r["release"] == "digits-head@3")
    assert bad_rollout["outcome"] == "rolled_back"
    canary = bad_rollout["phases"][0]["devices"]
    assert sorted(bad["rolled_back_devices"]) == sorted(canary)
    assert all(s in ("pending", "skipped") for d, s in bad_rollout["devices"].items() if d not in canary)
    assert any(g["verdict"] == "fail" and g["phase"] == "canary" for g in bad_rollout["gates"])


@pytest.mark.slow
@pytest.mark.timeout(1700)
def test_the_report_carries_the_runs_numbers(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    out, work = demo
    report = work / "report.html"
    assert report.exists(), out.stdout[-2000:]
    text = report.read_text()
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import demo_report
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    numbers = demo_report.report_numbers(_timeline(work))
    for key in ("ota/delta_bytes", "ota/full_bytes", "federated/secure_aggregation", "bad_release/halted_at",
                "accuracy/v1, after drift/drifted", "accuracy/v2, after retraining/drifted"):  # fmt: skip
        assert html.escape(numbers[key]) in text, (key, numbers[key])
    # and every number the report prints is the run's (wall time included: it is saved before rendering)
    assert demo_report.verify(_timeline(work), work) == []

"""Rollouts judged on live model metrics vs install-failure gating alone, against the real server.

A real `edgeloop-server` process and N simulated devices (tests/helpers/simfleet.py: real
certificates, one mutual-TLS Sync stream each, OTA transitions and per-window `model_metrics`
records drawn from the real digits models' outputs on digits inputs, with a class mix and noise
level per device). The fleet is first put on v1 with a plain deployment. Then, per trial, a
candidate is published and rolled out with a 2 % canary batch (`percents [2, 100]`, on breach:
roll back):

- bad trials alternate the two silently bad models (`cold`: confidence collapses, same argmax;
  `swapped`: two classes swapped in the head), both passing the device's golden-set gate;
- good trials roll out v2 (a head fine-tune of v1); after each, the fleet is put back on v1.

Per trial: halted or not and at which batch, devices that ever served the candidate (and how many
outside the canary batch), and the time from the canary's assignment to the halt and from the
first look with the minimum sample to the halt, in report windows. The anchor, in the same run:
the install-failure gate's own verdict on the same canary batch (what hawkBit / IoT Jobs gate on);
a pass there means an install-only rollout would have continued to every device.

    python bench/rollouts/run.py --devices 1000 --bad 20 --good 20 --window 1 [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.rollout_models import profile, rollout_models
from tests.helpers import simfleet as sf
from tests.helpers.procs import ServerProc, wait_until


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def _windows(end: float | None, start: float | None, window_s: float) -> float | None:
    return (end - start) / window_s if end is not None and start else None


def _get(api: Any, path: str) -> list[Any]:
    out: list[Any] = []
    while True:
        resp = api.get(path, params={"limit": 1000, "offset": len(out)}, timeout=60)
        resp.raise_for_status()
        page = resp.json()
        out.extend(page)
        if len(page) < 1000:
            return out


GATES = {
    # Each batch must be able to settle: assigning 980 devices takes the OTA service tens of seconds.
    "silent_timeout_s": 120,
    # Histogram gates need a p-value below alpha/6 spent over the looks: with 1,000 permutations
    # (smallest p 1/1001) and 20 looks (at most 6.9e-4 at a look) they could never fail.
    "permutations": 5000,
    "max_looks": 10,
}


def trial(
    api: Any,
    fleet: sf.SimFleet,
    kind: str,
    index: int,
    path: Path,
    golden: Path,
    args: argparse.Namespace,
    behaviour: str,
) -> dict[str, Any]:
    version = f"{kind}-{index}"
    fleet.catalogue[version] = dataclasses.replace(fleet.catalogue[behaviour], version=version)
    # The swapped model's top-1 agreement with v1 (~0.8) is under the agent's default shadow gate
    # (0.9): published with min_agreement 0.75, a device whose shadow run did not catch it.
    seq = sf.publish(api, path, version, golden, shadow_min_agreement=0.75 if kind == "swapped" else None)
    body = {
        "name": f"bench {version}", "releases": [seq], "selector": {"labels": {"fleet": "bench"}},
        "batches": {"percents": [args.canary, 100], "min_per_batch": 5, "seed": f"trial-{kind}-{index}"},
        "gates": sf.gate_config(args.window, **{k: v * args.window if k.endswith("_s") else v
                                                 for k, v in GATES.items()}),
        "on_breach": "rollback",
    }  # fmt: skip
    t0 = time.time()
    resp = api.post("/rollouts", json=body, timeout=120)
    resp.raise_for_status()
    rid = resp.json()["id"]
    halted_at: float | None = None
    detail: dict[str, Any] = {}
    deadline = time.monotonic() + args.trial_timeout
    while time.monotonic() < deadline:
        detail = api.get(f"/rollouts/{rid}", timeout=60).json()
        if detail["state"] in sf.HALTED and halted_at is None:
            halted_at = time.time()
        if detail["state"] in sf.ENDED or (detail["state"] == "paused"):
            break
        time.sleep(0.2)
    if detail["state"] == "rolling_back":
        detail = sf.wait_rollout(api, rid, sf.ENDED | {"paused"}, args.trial_timeout)
    devices = _get(api, f"/rollouts/{rid}/devices")
    gates = _get(api, f"/rollouts/{rid}/gates")
    canary = {d["device_id"] for d in devices if d["batch"] == 0}
    exposed = {d.device_id for d in fleet.devices.values() if version in d.ever_served}
    received = {d.device_id for d in fleet.devices.values() if any(a[1] == version for a in d.assignments)}
    plan = detail.get("plan", [])
    canary_start = _ts(plan[0]["assigned_at"]) if plan else None
    b0 = [g for g in gates if g["batch"] == 0]
    install = [g for g in b0 if g["gate"] == "install_failures"]
    looks = [g for g in b0 if g["gate"] not in ("install_failures", "canary_vs_control")]
    first_sample = min((_ts(g["evaluated_at"]) or 0 for g in looks if g["verdict"] != "not_enough_data"),
                       default=None)  # fmt: skip
    failed = sorted({g["gate"] for g in b0 if g["verdict"] == "fail"})
    halted = halted_at is not None
    halt_batch = detail["batch"] if halted else None
    return {
        "kind": kind, "rollout": rid, "release": seq, "state": detail["state"], "halted": halted,
        "halt_batch": halt_batch, "reason": detail.get("reason", "")[:300], "failed_gates": failed,
        "canary": len(canary), "exposed": len(exposed), "exposed_outside_canary": len(exposed - canary),
        "received_outside_canary": len(received - canary),
        "install_gate_canary": install[-1]["verdict"] if install else None,
        "looks_canary": max((g["look"] for g in looks), default=0),
        "canary_to_halt_windows": _windows(halted_at, canary_start, args.window),
        "min_sample_to_halt_windows": _windows(halted_at, first_sample, args.window),
        "wall_s": time.time() - t0,
    }  # fmt: skip


def reset(api: Any, fleet: sf.SimFleet, v1_seq: int, v1_sha: str) -> None:
    """Put every device not on v1 back on v1 with a plain deployment."""
    off = [d.device_id for d in fleet.devices.values() if d.serving is None or d.serving.sha256 != v1_sha]
    if off:
        sf.deploy_and_wait(api, v1_seq, off, timeout_s=600)


def summarize(rows: list[dict[str, Any]], devices: int) -> dict[str, Any]:
    bad = [r for r in rows if r["kind"] != "good"]
    good = [r for r in rows if r["kind"] == "good"]

    def med(xs: list[float]) -> float | None:
        return statistics.median(xs) if xs else None

    return {
        "bad_trials": len(bad),
        "bad_halted_at_canary": sum(r["halted"] and r["halt_batch"] == 0 for r in bad),
        "bad_halted_any": sum(r["halted"] for r in bad),
        "good_trials": len(good),
        "good_false_halts": sum(r["halted"] for r in good),
        "bad_exposed_max": max((r["exposed"] for r in bad), default=0),
        "bad_exposed_mean": statistics.mean([r["exposed"] for r in bad]) if bad else 0,
        "bad_exposed_outside_canary": sum(r["exposed_outside_canary"] for r in bad),
        "bad_received_outside_canary": sum(r["received_outside_canary"] for r in bad),
        "canary_to_halt_windows_median": med(
            [r["canary_to_halt_windows"] for r in bad if r["canary_to_halt_windows"]]
        ),
        "canary_to_halt_windows_max": max((r["canary_to_halt_windows"] or 0 for r in bad), default=None),
        "min_sample_to_halt_windows_median": med(
            [r["min_sample_to_halt_windows"] for r in bad if r["min_sample_to_halt_windows"] is not None]
        ),
        "min_sample_to_halt_windows_max": max(
            (r["min_sample_to_halt_windows"] or 0 for r in bad), default=None
        ),
        "anchor_install_gate_halts_bad": sum(r["install_gate_canary"] == "fail" for r in bad),
        "anchor_install_gate_passes_bad": sum(r["install_gate_canary"] == "pass" for r in bad),
        "anchor_devices_exposed_per_bad": devices,
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--bad", type=int, default=20)
    ap.add_argument("--good", type=int, default=20)
    ap.add_argument("--window", type=float, default=1.0, help="report window of the simulated devices (s)")
    ap.add_argument("--canary", type=float, default=2.0, help="canary batch, percent")
    ap.add_argument("--rate", type=float, default=40.0, help="predictions/s per device (mean)")
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--trial-timeout", type=float, default=300.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    m = rollout_models()
    pool = sf.input_pool(m.x_live, m.y_live)
    catalogue = {
        name: sf.behaviour("digits", name, path, pool, profile)
        for name, path in [("1", m.v1), ("good", m.good), ("cold", m.cold), ("swapped", m.swapped)]
    }
    work = Path(tempfile.mkdtemp(prefix="edgeloop-bench-rollouts-"))
    db_url, db_name = "", ""
    if args.db == "postgres":
        from tests.conftest import make_pg_database

        db_name, db_url = make_pg_database()
    server = ServerProc(work / "server", database_url=db_url,
                        env_extra={"EDGELOOP_ROLLOUT_TICK_S": str(min(1.0, args.window / 2))})  # fmt: skip
    server.data_dir.mkdir(parents=True)
    server.init()
    server.start()
    fleet: sf.SimFleet | None = None
    rows: list[dict[str, Any]] = []
    try:
        t0 = time.time()
        with server.api() as api:
            tokens = []
            for _ in range(args.devices):
                r = api.post("/bootstrap-tokens", json={"labels": {"fleet": "bench"}, "ttl_s": 3600})
                r.raise_for_status()
                tokens.append(r.json()["token"])
        ids = [f"sim-{i:04d}" for i in range(args.devices)]
        devices = sf.enroll_fleet(server, tokens, ids, work / "ids", pool, rate=args.rate)
        fleet = sf.SimFleet(server.device_target, server.ca_pem, devices, catalogue, window_s=args.window)
        fleet.start()
        wait_until(
            lambda: fleet is not None and fleet.connected() == args.devices, 300, what="fleet connected"
        )
        print(f"{args.devices} devices enrolled and connected in {time.time() - t0:.0f}s", flush=True)
        with server.api() as api:
            v1 = sf.publish(api, m.v1, "1", m.golden)
            t1 = time.time()
            rows_v1 = sf.deploy_and_wait(api, v1, ids, timeout_s=900)
            assert all(r["state"] == "committed" for r in rows_v1)
            print(f"v1 on every device in {time.time() - t1:.0f}s", flush=True)
            time.sleep(3 * args.window)  # the control cohort has windows on v1
            # Bad trials first (each rolled back to v1); then good trials alternate v1 -> v2 -> v1:
            # each rolls a retrained model over the one the whole fleet serves (no reset needed).
            plan = [("cold" if i % 2 == 0 else "swapped", i) for i in range(args.bad)]
            plan += [("good", i) for i in range(args.good)]
            paths = {"cold": m.cold, "swapped": m.swapped}
            for kind, i in plan:
                if kind == "good":
                    path, behaves = (m.good, "good") if i % 2 == 0 else (m.v1, "1")
                else:
                    path, behaves = paths[kind], kind
                row = trial(api, fleet, kind, i, path, m.golden, args, behaves)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if kind != "good":
                    reset(api, fleet, v1, fleet.catalogue["1"].sha256)
                time.sleep(2 * args.window)
        summary = summarize(rows, args.devices)
        print(json.dumps(summary, indent=2))
        if args.json:
            doc = {"args": vars(args), "summary": summary, "trials": rows}
            args.json.write_text(json.dumps(doc, indent=2, default=str))
        return 0
    finally:
        if fleet is not None:
            fleet.stop()
        server.stop()
        if db_name:
            from tests.conftest import drop_pg_database

            drop_pg_database(db_name)


if __name__ == "__main__":
    raise SystemExit(main())

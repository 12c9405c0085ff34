"""FederatedRunner over FleetGrid with in-process devices: round records with lineage, DP epsilon
on every round, devices refusing rounds past their budget, robust strategy with anomaly scores."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from sqlmodel import Session, select

from fleet_server.audit.chain import Actor
from fleet_server.audit.port import MemoryAuditLog
from fleet_server.db import make_engine
from fleet_server.federated import reputation_store
from fleet_server.federated.grid import node_id_for
from fleet_server.federated.models import FlRound, FlRun
from fleet_server.federated.privacy import epsilon_after
from fleet_server.federated.runner import FederatedRunner, RunSpec
from fleet_server.federated.strategy import StrategySpec
from fleet_server.migrate import upgrade
from protos.edgeloop.v1 import federated_pb2 as pb
from tests.unit.fleet_server.test_federated_secagg import InProcFleet, loop, model

__all__ = ["loop"]


def _runner(tmp: Path, fleet: InProcFleet) -> tuple[FederatedRunner, object]:
    engine = make_engine(f"sqlite:///{tmp / 'fl.sqlite'}")
    upgrade(engine)
    return FederatedRunner(engine=engine, grid=fleet.grid, out_dir=tmp / "out"), engine


def _rounds(engine: object, run_id: str) -> tuple[FlRun, list[FlRound]]:
    with Session(engine) as s:  # type: ignore[call-overload]
        run = s.get(FlRun, run_id)
        rows = list(
            s.exec(select(FlRound).where(FlRound.run_id == run_id).order_by(FlRound.server_round)).all()
        )
    return run, rows


def test_dp_run_records_epsilon_and_devices_stop_at_their_budget(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    fleet = InProcFleet(loop, tmp_path, 6)
    for c in fleet.clients.values():
        c.ledger.budget_epsilon = epsilon_after(2, 4.0, 1e-5) + 1e-9  # room for exactly two noised rounds
    runner, engine = _runner(tmp_path, fleet)
    spec = RunSpec(
        StrategySpec("fedavg", min_nodes=6),
        num_rounds=3,
        round_timeout_s=10,
        dp_noise_multiplier=4.0,
        dp_clip=0.5,
    )
    run_id = runner.run_blocking(spec, model())
    run, rows = _rounds(engine, run_id)
    assert [r.results for r in rows] == [6, 6, 0] and rows[2].dropped == {"declined": 6}
    assert rows[0].epsilon < rows[1].epsilon and rows[1].delta == 1e-5
    assert rows[1].epsilon == epsilon_after(2, 4.0, 1e-5)
    assert run.status == "completed" and run.epsilon == epsilon_after(3, 4.0, 1e-5)
    assert rows[1].parent_digest == rows[0].arrays_digest and rows[2].arrays_digest == rows[1].arrays_digest
    assert (tmp_path / "out" / run_id / "final.npz").exists() and run.final_digest == rows[-1].arrays_digest


def test_multikrum_with_norm_bound_scores_the_attacker(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    def sign_flip(did: str, task: pb.TrainTask, res: pb.TaskResult) -> pb.TaskResult:
        if did == "d03" and res.arrays:
            for sent, got in zip(task.arrays, res.arrays, strict=True):
                old, new = np.frombuffer(sent.data, np.float32), np.frombuffer(got.data, np.float32)
                got.data = (old - 20 * (new - old)).astype(np.float32).tobytes()
        return res

    fleet = InProcFleet(loop, tmp_path, 8, sign_flip)
    runner, engine = _runner(tmp_path, fleet)
    spec = RunSpec(
        StrategySpec("multikrum", min_nodes=8, malicious=1), num_rounds=2, round_timeout_s=10, norm_bound=5.0
    )
    run_id = runner.run_blocking(spec, model())
    _, rows = _rounds(engine, run_id)
    for r in rows:
        assert r.results == 8
        assert max(r.anomaly_scores, key=r.anomaly_scores.get) == "d03"  # type: ignore[arg-type]


def test_reputation_is_stored_per_model_and_carries_over_to_a_restarted_runner(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    """Issue 18: a device's reputation under the robust defences outlives the process that ran the
    round (a restart, or another runner replica on the same database): a new runner continues the
    stored sums instead of starting every device at zero, so a device with a bad history stays out."""
    fleet = InProcFleet(loop, tmp_path, 8)
    runner, engine = _runner(tmp_path, fleet)
    spec = RunSpec(StrategySpec("robust-fedavg", min_nodes=8, malicious=1), num_rounds=2, round_timeout_s=10,
                   model="digits-head")  # fmt: skip
    runner.run_blocking(spec, model())
    first = reputation_store.load(engine, "digits-head")  # type: ignore[arg-type]
    assert sorted(first) == sorted(node_id_for(f"d{i:02d}") for i in range(8))  # every device, by node id
    assert reputation_store.load(engine, "another-model") == {}  # type: ignore[arg-type]

    # A history in which d03 kept pulling against the fleet (as stored by an earlier process).
    suspect = node_id_for("d03")
    reputation_store.save(engine, "digits-head", first | {suspect: -100.0})  # type: ignore[arg-type]
    restarted = FederatedRunner(engine=engine, grid=fleet.grid, out_dir=tmp_path / "out2")  # type: ignore[arg-type]
    second_run = restarted.run_blocking(spec, model())
    assert all(r.metrics["robust-excluded"] == 1 for r in _rounds(engine, second_run)[1])  # max_drop 1: d03
    second = reputation_store.load(engine, "digits-head")  # type: ignore[arg-type]
    assert -102.0 < second[suspect] < -98.0  # summed on from the stored value (two cosines), not from zero
    assert all(abs(second[k] - first[k]) <= 2.0 and second[k] != first[k] for k in first if k != suspect)


def test_run_fails_cleanly_when_too_few_devices(loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    fleet = InProcFleet(loop, tmp_path, 2)
    runner, engine = _runner(tmp_path, fleet)
    run_id = runner.run_blocking(
        RunSpec(StrategySpec("fedavg", min_nodes=3), num_rounds=1, round_timeout_s=0.5), model()
    )
    run, rows = _rounds(engine, run_id)
    assert run.status == "failed" and "only 2 eligible devices" in run.detail and rows == []


def test_flower_dp_wrapper_runs_unchanged_and_devices_clip(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    fleet = InProcFleet(loop, tmp_path, 4)
    runner, engine = _runner(tmp_path, fleet)
    strat = StrategySpec("dp-fedavg", min_nodes=4, dp_noise_multiplier=0.5, dp_clip=0.01)
    run_id = runner.run_blocking(RunSpec(strat, num_rounds=2, round_timeout_s=10), model())
    run, rows = _rounds(engine, run_id)
    assert run.status == "completed" and [r.results for r in rows] == [4, 4]
    assert rows[0].metrics["update_norm"] > 0.05  # devices report the pre-clip norm (> 5x the clip)...
    assert rows[0].arrays_digest != rows[0].parent_digest
    result = runner.result
    final = np.concatenate([result["w"].numpy().ravel(), result["b"].numpy().ravel()]) if result else None
    assert final is not None and np.linalg.norm(final) < 0.06  # 2 rounds x (clip 0.01 + noise ~0.01)


def test_drift_policy_opens_a_run_for_the_shifted_devices_only(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    from fleet_server.drift.analysis import CohortKey
    from fleet_server.drift.policy import OPEN_RETRAINING_ROUND, CohortAction
    from fleet_server.federated.trigger import DriftRetrainTrigger

    fleet = InProcFleet(loop, tmp_path, 6)
    runner, engine = _runner(tmp_path, fleet)
    action = CohortAction(
        CohortKey("pi4", "digits", "1"),
        OPEN_RETRAINING_ROUND,
        ("d00", "d01", "d02", "d03"),
        ("d03",),
        "shift",
    )
    trigger = DriftRetrainTrigger(
        engine=engine,  # type: ignore[arg-type]
        grid=fleet.grid,
        runner=runner,
        spec=RunSpec(StrategySpec("fedavg", min_nodes=3), num_rounds=1, round_timeout_s=10),
        initial=model,
        policy=lambda session: [action],
    )
    run_id = trigger.check_once()
    assert run_id is not None
    runner.wait(30)
    run, rows = _rounds(engine, run_id)
    assert run.status == "completed" and rows[0].sampled == 3
    assert set(rows[0].anomaly_scores) == {"d00", "d01", "d02"}  # d03 anomalous, d04/d05 not drifted
    assert trigger.check_once() is None  # same cohort is not retrained again
    audit = runner._audit  # the default in-memory log: the drift trigger opened the run, with why
    assert isinstance(audit, MemoryAuditLog)
    started = audit.entries[0]
    assert (started.action, started.target.id, started.actor) == (
        "federated_run.started",
        run_id,
        Actor.system("drift-trigger"),
    )
    assert started.details["cohort"]["reason"] == "shift" and started.details["cohort"]["devices"] == [
        "d00",
        "d01",
        "d02",
    ]
    assert audit.actions()[1:] == ["federated_run.round_aggregated", "federated_run.completed"]


def test_handoff_writes_an_onnx_head_with_lineage(loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    import json

    import onnx
    import onnxruntime as ort

    fleet = InProcFleet(loop, tmp_path, 3)
    runner, engine = _runner(tmp_path, fleet)
    run_id = runner.run_blocking(
        RunSpec(StrategySpec("fedavg", min_nodes=3), num_rounds=2, round_timeout_s=10), model()
    )
    run, rows = _rounds(engine, run_id)
    out = tmp_path / "out" / run_id
    lineage = json.loads(onnx.load(str(out / "final.onnx")).metadata_props[0].value)
    assert lineage["run_id"] == run_id and lineage["final_digest"] == run.final_digest
    assert [r["participants"] for r in lineage["rounds"]] == [3, 3] and lineage["parent_digest"] == rows[
        0
    ].parent_digest
    x = np.random.default_rng(0).random((5, 16)).astype(np.float32)
    w = np.load(out / "final.npz")
    expected = np.exp(x @ w["w"] + w["b"])
    expected /= expected.sum(axis=1, keepdims=True)
    got = ort.InferenceSession(str(out / "final.onnx")).run(None, {"features": x})[0]
    assert np.allclose(got, expected, atol=1e-5)


def test_straggler_is_cut_at_the_round_timeout_and_its_late_result_refused(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    import time

    fleet = InProcFleet(loop, tmp_path, 4, slow={"d02": 2.0})
    runner, engine = _runner(tmp_path, fleet)
    t0 = time.monotonic()
    run_id = runner.run_blocking(
        RunSpec(StrategySpec("fedavg", min_nodes=4), num_rounds=1, round_timeout_s=1.0), model()
    )
    assert time.monotonic() - t0 < 1.9
    _, rows = _rounds(engine, run_id)
    assert rows[0].sampled == 4 and rows[0].results == 3 and rows[0].dropped == {"straggler": 1}
    deadline = time.monotonic() + 5
    while not fleet.late and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fleet.late == [(False, "late_or_duplicate")]


def test_a_run_where_every_device_declined_fails_and_hands_nothing_off(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    fleet = InProcFleet(loop, tmp_path, 3)
    for c in fleet.clients.values():
        c.ledger.budget_epsilon = 1e-9  # every noised round would exceed it: all devices decline
    runner, engine = _runner(tmp_path, fleet)
    handed: list[str] = []
    runner.on_complete = lambda spec, arrays, lineage: handed.append(str(lineage["run_id"]))
    spec = RunSpec(
        StrategySpec("fedavg", min_nodes=3),
        num_rounds=2,
        round_timeout_s=10,
        dp_noise_multiplier=4.0,
        model="m",
    )
    run_id = runner.run_blocking(spec, model())
    run, rows = _rounds(engine, run_id)
    assert [r.results for r in rows] == [0, 0] and rows[0].dropped == {"declined": 3}
    assert run.status == "failed" and run.final_digest == ""
    assert "no round had enough participants" in run.detail and "[0, 0]" in run.detail
    assert handed == [] and "nothing handed off" in run.detail and not runner.busy()

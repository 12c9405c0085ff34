"""FleetGrid end to end: real agent processes (`python -m agent.federated`) on loopback train a
softmax head on non-IID digits through Flower's FedAvg; dropouts, stragglers and bad results."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord
from sqlmodel import Session, select

from fleet_server.db import make_engine
from fleet_server.federated.grid import GridLimits
from fleet_server.federated.models import FlRound, FlRun
from fleet_server.federated.runner import RunSpec
from fleet_server.federated.strategy import StrategySpec
from protos.edgeloop.v1 import federated_pb2 as pb
from tests.helpers.fl_fleet import Fleet
from tests.helpers.inproc import LiveServer, device_channel, enroll
from tests.helpers.procs import wait_until


def runtime(server: LiveServer):  # type: ignore[no-untyped-def]
    return server.client.app.state.federated  # type: ignore[attr-defined]


def initial() -> ArrayRecord:
    return ArrayRecord(
        {
            "w": __import__("flwr.app").app.Array(np.zeros((64, 10), np.float32)),
            "b": __import__("flwr.app").app.Array(np.zeros(10, np.float32)),
        }
    )


def accuracy(arrays: ArrayRecord, x: np.ndarray, y: np.ndarray) -> float:
    logits = x @ arrays["w"].numpy() + arrays["b"].numpy()
    return float((logits.argmax(axis=1) == y).mean())


def rounds(server: LiveServer, run_id: str) -> list[FlRound]:
    engine = make_engine(server.settings.resolved_database_url())
    with Session(engine) as s:
        out = list(
            s.exec(select(FlRound).where(FlRound.run_id == run_id).order_by(FlRound.server_round)).all()
        )
        assert s.get(FlRun, run_id) is not None
    engine.dispose()
    return out


@pytest.fixture
def fleet10(server: LiveServer, tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(server, tmp_path / "devs", 10, slow_s=1.0)
    wait_until(lambda: len(list(runtime(server).grid.get_node_ids())) == 10, 60, what="10 devices attached")
    yield fleet
    fleet.stop()


def test_real_agents_train_and_survive_20pct_sigkill_mid_round(server: LiveServer, fleet10: Fleet) -> None:
    rt = runtime(server)
    spec = RunSpec(
        strategy=StrategySpec("fedavg", min_nodes=8),
        num_rounds=3,
        round_timeout_s=30,
        train_config={"lr": 0.5, "local-epochs": 2, "batch-size": 16},
    )
    run_id = rt.runner.start(spec, initial())
    wait_until(lambda: len(rt.grid._pending) == 10, 20, interval=0.02, what="round 1 tasks out")
    for p in fleet10.procs[:2]:  # SIGKILL 20% while they are training
        p.send_signal(signal.SIGKILL)
    rt.runner.wait(120)
    recs = rounds(server, run_id)
    assert [r.server_round for r in recs] == [1, 2, 3]
    assert recs[0].sampled == 10 and recs[0].results == 8 and recs[0].dropped.get("disconnected") == 2
    assert all(r.results == 8 for r in recs[1:])
    assert recs[0].duration_s < 10, "a dropout must not hold the round until its timeout"
    assert rt.runner.result is not None
    acc = accuracy(rt.runner.result, fleet10.x_test, fleet10.y_test)
    assert acc > 0.75, acc
    assert recs[-1].arrays_digest != recs[0].parent_digest


def _bad_device(server: LiveServer, tmp: Path, device_id: str, kind: str, out: dict[str, list[str]]) -> None:
    creds = enroll(server, device_id, server.bootstrap_token(), tmp)
    with device_channel(server, creds) as ch:
        stream = ch.unary_stream(
            "/edgeloop.v1.FederatedService/Tasks",
            request_serializer=pb.TaskStreamRequest.SerializeToString,
            response_deserializer=pb.TrainTask.FromString,
        )(pb.TaskStreamRequest(protocol_version=1))
        push = ch.unary_unary(
            "/edgeloop.v1.FederatedService/PushResult",
            request_serializer=pb.TaskResult.SerializeToString,
            response_deserializer=pb.PushResultResponse.FromString,
        )
        task = next(stream)
        arrays = [pb.FlTensor(name=t.name, shape=t.shape, dtype=t.dtype, data=t.data) for t in task.arrays]
        res = pb.TaskResult(task_id=task.task_id, round_id=task.round_id, num_examples=10, arrays=arrays)
        if kind == "nan":
            res.arrays[1].data = np.full(10, np.nan, np.float32).tobytes()
        elif kind == "shape":
            res.arrays[1].shape[:] = [5, 2]
            res.arrays[0].shape[:] = [10, 64]
        elif kind == "oversized":
            res.arrays[0].data = b"\0" * 40_000
        elif kind == "wrong_round":
            res.round_id = "999:1"
            out[kind] = [push(res, timeout=10).reason]
            res.round_id = task.round_id
            res.arrays[0].data = np.full((64, 10), np.inf, np.float32).tobytes()
        reasons = [push(res, timeout=10).reason]
        reasons.append(push(res, timeout=10).reason)  # replay of the same result
        out.setdefault(kind, []).extend(reasons)
        stream.cancel()


def test_bad_results_rejected_and_counted_while_round_continues(server: LiveServer, tmp_path: Path) -> None:
    rt = runtime(server)
    rt.grid.limits = GridLimits(max_result_bytes=20_000)
    good = Fleet(server, tmp_path / "good", 4)
    out: dict[str, list[str]] = {}
    kinds = ["nan", "shape", "oversized", "wrong_round"]
    threads = [
        threading.Thread(target=_bad_device, args=(server, tmp_path / "bad", f"bad-{k}", k, out))
        for k in kinds
    ]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(list(rt.grid.get_node_ids())) == 8, 60, what="8 devices attached")
        spec = RunSpec(strategy=StrategySpec("fedavg", min_nodes=8), num_rounds=1, round_timeout_s=20)
        t0 = time.monotonic()
        run_id = rt.runner.run_blocking(spec, initial())
        for t in threads:
            t.join(10)
    finally:
        good.stop()
    rec = rounds(server, run_id)[0]
    assert rec.sampled == 8 and rec.results == 4 and time.monotonic() - t0 < 15
    assert out["nan"] == ["non_finite", "late_or_duplicate"]
    assert out["shape"][0] == "bad_shape"
    assert out["oversized"][0] == "oversized"
    assert out["wrong_round"] == ["wrong_round", "non_finite", "late_or_duplicate"]
    assert rec.rejected["non_finite"] == 2 and rec.rejected["wrong_round"] == 1
    assert rt.grid.counters()["rejected"]["late_or_duplicate"] == 4  # replays may land after the round


class RestApi:
    """The CLI's Api port over the in-process server (TestClient)."""

    def __init__(self, server: LiveServer) -> None:
        self._server = server

    def request(self, method: str, path: str, **kwargs: object) -> object:
        resp = self._server.client.request(method, "/api/v1" + path, headers=self._server.auth(), **kwargs)  # type: ignore[arg-type]
        assert resp.status_code < 300, resp.text
        return resp.json()


def test_secure_aggregation_run_via_cli_with_a_dropout_mid_protocol(
    server: LiveServer, fleet10: Fleet
) -> None:
    import argparse

    from rich.console import Console

    from fleet_server import operator_cli
    from fleet_server.federated.cli import fl_history, fl_start, fl_status

    rt, api, console = runtime(server), RestApi(server), Console(record=True, width=200)
    argv = ["fl", "start", "--strategy", "fedavg", "--rounds", "2", "--min-nodes", "9", "--timeout", "30"]
    argv += ["--secure-aggregation", "--lr", "0.5", "--json"]
    args = operator_cli.build_parser().parse_args(argv)  # the CLI's own parser and defaults
    assert args.func is fl_start
    run_id = fl_start(api, args, console)["run_id"]

    def masked_stage_out() -> bool:
        with rt.grid._lock:
            kinds = [p.request.metadata.message_type for p in rt.grid._pending.values()]
        return "train.secagg_masked" in kinds

    wait_until(masked_stage_out, 30, interval=0.02, what="masked stage of round 1")
    fleet10.procs[0].send_signal(signal.SIGKILL)  # 10% drop after sharing keys: recovered via Shamir
    rt.runner.wait(120)
    out = fl_status(api, argparse.Namespace(run_id=run_id, json=True), console)
    assert out["run"]["status"] == "completed", out["run"]["detail"]
    r1, r2 = out["rounds"]
    assert r1["results"] == 1 and r1["metrics"]["secagg-survivors"] == 9
    assert r2["metrics"]["secagg-survivors"] == 9
    assert r1["metrics"]["secagg-error-bound"] < 1e-4
    acc = accuracy(rt.runner.result, fleet10.x_test, fleet10.y_test)
    assert acc > 0.45, acc  # 2 rounds x 1 local epoch from zeros (chance: 0.1)
    fl_status(api, argparse.Namespace(run_id=run_id, json=False), console)
    fl_history(api, argparse.Namespace(limit=5, json=False), console)
    assert run_id[:12] in console.export_text()


def test_auto_retrain_policy_is_operator_only_and_toggles(server: LiveServer) -> None:
    url = "/api/v1/federated/auto-retrain"
    assert server.client.put(url, json={}, headers=server.auth("viewer")).status_code == 403
    on = server.client.put(url, json={"min_nodes": 3}, headers=server.auth("operator")).json()
    assert on["enabled"] and on["alive"] and on["interval_s"] == 30.0
    assert runtime(server).trigger is not None
    assert server.client.delete(url, headers=server.auth("operator")).json() == {"enabled": False}
    assert runtime(server).trigger is None
    bad = server.client.post(
        "/api/v1/federated/runs", json={"strategy": "nope"}, headers=server.auth("operator")
    )
    assert bad.status_code == 422

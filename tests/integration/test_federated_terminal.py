"""Federated runs against a real server (sqlite + postgres) with a real enrolled device on the
FederatedService stream: bad bodies are 422s that allocate nothing, a run stuck on a day-long
round is cancelled through `edgeloop fl cancel` and the next run starts, auto-retrain refuses
impossible intervals, and a server restart ends the run it interrupted."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from rich.console import Console
from sqlmodel import Session

from agent.federated.tensors import config_from_proto
from fleet_server import operator_cli
from fleet_server.db import make_engine
from fleet_server.errors import ConflictError
from fleet_server.federated import lifecycle
from fleet_server.federated.models import FlRun
from fleet_server.models import utcnow
from protos.edgeloop.v1 import federated_pb2 as pb
from tests.helpers.inproc import LiveServer, device_channel, enroll, live, operator_api, prepare
from tests.helpers.procs import wait_until

RUNS = "/api/v1/federated/runs"
DAY = 86_400.0
MB = 2**20


def rss_bytes() -> int:
    """This process's resident set (the in-process server's memory) from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def runtime(server: LiveServer) -> Any:
    return server.client.app.state.federated  # type: ignore[attr-defined]


def start(server: LiveServer, **body: object) -> str:
    r = server.client.post(RUNS, json=body, headers=server.auth("operator"))
    assert r.status_code == 202, r.text
    return str(r.json()["run_id"])


def run_of(server: LiveServer, run_id: str) -> dict[str, Any]:
    r = server.client.get(f"{RUNS}/{run_id}", headers=server.auth("viewer"))
    assert r.status_code == 200, r.text
    return r.json()["run"]  # type: ignore[no-any-return]


class TaskDevice:
    """An enrolled device holding a FederatedService/Tasks stream; tasks land in `tasks`."""

    def __init__(self, server: LiveServer, tmp: Path, device_id: str = "fl-dev") -> None:
        creds = enroll(server, device_id, server.bootstrap_token(), tmp)
        self.channel = device_channel(server, creds)
        self.stream = self.channel.unary_stream(
            "/edgeloop.v1.FederatedService/Tasks",
            request_serializer=pb.TaskStreamRequest.SerializeToString,
            response_deserializer=pb.TrainTask.FromString,
        )(pb.TaskStreamRequest(protocol_version=1), timeout=120)
        self._push = self.channel.unary_unary(
            "/edgeloop.v1.FederatedService/PushResult",
            request_serializer=pb.TaskResult.SerializeToString,
            response_deserializer=pb.PushResultResponse.FromString,
        )
        self.tasks: list[pb.TrainTask] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for task in self.stream:
                self.tasks.append(task)
        except grpc.RpcError:
            pass

    def answer(self, task: pb.TrainTask) -> str:
        """Send the task's own arrays back (a valid, unchanged update); returns the refusal reason."""
        arrays = [pb.FlTensor(name=t.name, shape=t.shape, dtype=t.dtype, data=t.data) for t in task.arrays]
        result = pb.TaskResult(task_id=task.task_id, round_id=task.round_id, num_examples=10, arrays=arrays)
        return str(self._push(result, timeout=10).reason)

    def close(self) -> None:
        self.stream.cancel()
        self.channel.close()


@pytest.fixture
def device(server: LiveServer, tmp_path: Path) -> Iterator[TaskDevice]:
    dev = TaskDevice(server, tmp_path / "dev")
    wait_until(lambda: len(list(runtime(server).grid.get_node_ids())) == 1, 30, what="device attached")
    yield dev
    dev.close()


BAD_BODIES: list[tuple[object, str]] = [
    ({"features": 100_000_000_000}, "features"),
    ({"features": 1_000_000, "classes": 100_000}, "head is"),
    ({"round_timeout_s": 1e300}, "round_timeout_s"),
    ({"round_timeout_s": 0}, "round_timeout_s"),
    ({"rounds": 10**12}, "rounds"),
    ({"min_nodes": 2**63}, "min_nodes"),
    ({"max_nodes": -1}, "max_nodes"),
    ({"dp_noise_multiplier": 1e-200}, "dp_noise_multiplier"),
    ({"dp_noise_multiplier": 1e300}, "dp_noise_multiplier"),
    ({"dp_clip": 0}, "dp_clip"),
    ({"dp_delta": 2}, "dp_delta"),
    ({"lr": 1e308}, "lr"),
    ({"local_epochs": 10**9}, "local_epochs"),
    ({"secagg_clip": 1e-300}, "secagg_clip"),
    ({"norm_bound": 1e300}, "norm_bound"),
    ({"clipping_norm": -1}, "clipping_norm"),
    ({"clipping_norm": 1e300}, "clipping_norm"),
    ({"malicious": 5, "min_nodes": 2}, "malicious"),
    ({"labels": {f"k{i}": "v" for i in range(1000)}}, "labels"),
    ({"strategy": "x" * 100}, "strategy"),
    # issue 11 loose ends: these reached the handlers (and PostgreSQL) before
    ({"model": "m", "model_version": 2**31}, "model_version"),  # INTEGER column on PostgreSQL
    ({"model": "m", "model_version": 2**63 - 1}, "model_version"),
    ({"strategy": "FedAvg"}, "unknown strategy"),  # names are an enum in the schema, exact
    ({"labels": {"-site": "x"}}, "labels"),  # the device label key pattern (api.params.Labels)
    ({"labels": {"site": "a\u0000b"}}, "labels"),  # PostgreSQL text cannot hold NUL
    ({"labels": {"k" * 64: "v"}}, "labels"),
    ({"profile": "pi\u0000"}, "profile"),
    ({"round_timeout": 5}, "round_timeout"),  # a typo is refused, not silently ignored
    (b'{"lr": NaN}', "lr"),
    (b'{"round_timeout_s": Infinity}', "round_timeout_s"),
]


def _post(server: LiveServer, body: object) -> Any:
    headers = server.auth("operator") | {"content-type": "application/json"}
    if isinstance(body, bytes):
        return server.client.post(RUNS, content=body, headers=headers)
    return server.client.post(RUNS, json=body, headers=headers)


def test_bad_bodies_are_422_with_the_field_named_and_allocate_nothing(server: LiveServer) -> None:
    for body, field in BAD_BODIES:
        r = _post(server, body)
        assert r.status_code == 422, (body, r.text)
        assert field in r.text, (field, r.text)
    r = _post(server, {"min_nodes": 3, "max_nodes": 2})
    assert r.status_code == 422 and "max_nodes 2 is below min_nodes 3" in r.text
    r = _post(server, {"model": "nope"})
    assert r.status_code == 404 and "no model named 'nope'" in r.text
    before = rss_bytes()
    for _ in range(20):
        assert _post(server, {"features": 100_000_000_000}).status_code == 422
        assert _post(server, {"features": 1_000_000, "classes": 100_000}).status_code == 422
    grown = rss_bytes() - before
    assert grown < 50 * MB, f"RSS grew by {grown / MB:.0f} MB across 40 refused bodies"
    assert not runtime(server).runner.busy()


def test_the_schema_states_the_strategy_names_and_the_bounds(server: LiveServer) -> None:
    schema = server.client.get("/openapi.json").json()["components"]["schemas"]["RunRequest"]["properties"]
    assert {"fedavg", "krum", "robust-fedmedian"} <= set(schema["strategy"]["enum"])
    assert schema["model_version"]["anyOf"][0]["maximum"] == 2**31 - 1
    assert schema["labels"]["additionalProperties"] is False and schema["labels"]["patternProperties"]


def test_a_refused_start_while_a_run_holds_the_slot_allocates_nothing(server: LiveServer) -> None:
    holder = start(server, min_nodes=50, round_timeout_s=DAY)  # waits a day for 50 devices
    big = {"features": 1_000_000, "classes": 16}  # the largest head allowed: 64 MB
    before = rss_bytes()
    for _ in range(20):
        r = _post(server, big)
        assert r.status_code == 409 and holder in r.json()["detail"], r.text
    grown = rss_bytes() - before
    assert grown < 50 * MB, f"RSS grew by {grown / MB:.0f} MB across 20 refused starts"
    r = server.client.post(f"{RUNS}/{holder}/cancel", json={}, headers=server.auth("operator"))
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text


def test_a_run_on_a_day_long_round_is_cancelled_by_the_cli_and_the_next_run_completes(
    server: LiveServer,
    device: TaskDevice,
) -> None:
    first = start(server, min_nodes=1, rounds=3, round_timeout_s=DAY)
    wait_until(lambda: len(device.tasks) == 1, 30, what="the first run's task on the device")
    assert _post(server, {"min_nodes": 1}).status_code == 409

    viewer = server.client.post(f"{RUNS}/{first}/cancel", json={}, headers=server.auth("viewer"))
    assert viewer.status_code == 403
    unknown = server.client.post(f"{RUNS}/{'f' * 32}/cancel", json={}, headers=server.auth("operator"))
    assert unknown.status_code == 404
    ns = operator_cli.build_parser().parse_args(["fl", "cancel", first, "--reason", "stuck on a straggler"])
    console = Console(record=True, width=300)
    api = operator_api(server)("", server.tokens["operator"])  # the CLI's Api over the in-process server
    assert ns.func(api, ns, console) is None
    out = console.export_text()
    assert f"run {first} cancelled: cancelled by operator-user: stuck on a straggler" in out

    run = run_of(server, first)
    assert (run["status"], run["cancelled_by"]) == ("cancelled", "operator-user")
    assert run["detail"] == "cancelled by operator-user: stuck on a straggler" and run["finished_at"]
    again = server.client.post(f"{RUNS}/{first}/cancel", json={}, headers=server.auth("operator"))
    assert again.status_code == 409 and "already ended: cancelled" in again.json()["detail"]
    assert device.answer(device.tasks[0]) == "late_or_duplicate"  # the abandoned round's late reply

    second = start(server, min_nodes=1, rounds=1, round_timeout_s=30)
    wait_until(lambda: len(device.tasks) == 2, 30, what="the second run's task on the device")
    assert device.answer(device.tasks[1]) == ""
    wait_until(lambda: run_of(server, second)["status"] != "running", 30, what="second run ended")
    assert run_of(server, second)["status"] == "completed", run_of(server, second)["detail"]
    listed = server.client.get(RUNS, params={"limit": 0}, headers=server.auth("viewer"))
    assert listed.status_code == 422


def test_the_cli_sets_the_device_side_clip_and_training_settings_the_device_receives(
    server: LiveServer, device: TaskDevice
) -> None:
    """`--clipping-norm` is the robustness that still applies under secure aggregation (the server
    sees only the sum): it must reach each device's task, or the product's answer is unusable."""
    args = ["fl", "start", "--min-nodes", "1", "--rounds", "1", "--timeout", "30"]
    args += ["--clipping-norm", "0.5", "--local-epochs", "3", "--lr", "0.25", "--json"]
    ns = operator_cli.build_parser().parse_args(args)
    api = operator_api(server)("", server.tokens["operator"])
    run_id = ns.func(api, ns, Console(record=True))["run_id"]
    wait_until(lambda: len(device.tasks) == 1, 30, what="the run's task on the device")
    config = config_from_proto(dict(device.tasks[0].config))
    assert (config["clipping_norm"], config["local-epochs"], config["lr"]) == (0.5, 3.0, 0.25)
    assert device.answer(device.tasks[0]) == ""
    wait_until(lambda: run_of(server, run_id)["status"] != "running", 30, what="the run ended")
    assert run_of(server, run_id)["status"] == "completed", run_of(server, run_id)["detail"]

    unclipped = start(server, min_nodes=1, rounds=1, round_timeout_s=30)
    wait_until(lambda: len(device.tasks) == 2, 30, what="the second run's task")
    assert "clipping_norm" not in config_from_proto(dict(device.tasks[1].config))  # 0 = off: not sent
    assert device.answer(device.tasks[1]) == ""
    wait_until(lambda: run_of(server, unclipped)["status"] != "running", 30, what="second run ended")


@pytest.mark.parametrize("interval", ["0", "nan", "1e300", "inf", "-1", "0.001"])
def test_auto_retrain_refuses_impossible_intervals(server: LiveServer, interval: str) -> None:
    r = server.client.put(
        "/api/v1/federated/auto-retrain",
        params={"interval_s": interval},
        json={},
        headers=server.auth("operator"),
    )
    assert r.status_code == 422 and "interval_s" in r.text, r.text
    assert runtime(server).trigger is None


def test_auto_retrain_reports_its_state(server: LiveServer) -> None:
    url = "/api/v1/federated/auto-retrain"
    assert server.client.get(url, headers=server.auth("viewer")).json() == {"enabled": False}
    bad = server.client.put(url, json={"round_timeout_s": 1e300}, headers=server.auth("operator"))
    assert bad.status_code == 422
    on = server.client.put(url, params={"interval_s": 1}, json={}, headers=server.auth("operator"))
    assert on.status_code == 200 and on.json()["enabled"] and on.json()["interval_s"] == 1.0
    wait_until(
        lambda: server.client.get(url, headers=server.auth("viewer")).json()["checks"] >= 1,
        20,
        what="a check",
    )
    state = server.client.get(url, headers=server.auth("viewer")).json()
    assert state["alive"] and state["errors"] == 0 and state["last_check_at"] is not None
    assert server.client.delete(url, headers=server.auth("operator")).json() == {"enabled": False}


def test_a_server_restart_ends_the_run_it_interrupted(tmp_path: Path, database_url: str) -> None:
    settings, tokens = prepare(tmp_path / "srv", database_url)
    engine = make_engine(settings.resolved_database_url())
    gen = live(settings, tokens)
    server = next(gen)
    stopped = start(server, min_nodes=50, round_timeout_s=DAY)
    old_runner = runtime(server).runner
    wait_until(lambda: old_runner.current() == stopped, 20, what="the runner to claim the run")
    with pytest.raises(StopIteration):
        next(gen)  # graceful stop: the run in progress ends failed
    with Session(engine) as s:  # as if a SIGKILLed server had left one running
        s.add(FlRun(id="k" * 32, strategy="fedavg", num_rounds=3, created_at=utcnow()))
        s.commit()
    try:
        for server in live(settings, tokens):
            assert (run_of(server, stopped)["status"], run_of(server, stopped)["detail"]) == (
                "failed",
                lifecycle.SERVER_STOPPED,
            )
            killed = run_of(server, "k" * 32)
            assert (killed["status"], killed["detail"]) == ("failed", lifecycle.SERVER_RESTARTED)
            assert killed["finished_at"] is not None
    finally:
        with pytest.raises(ConflictError):
            old_runner.cancel(stopped, by="test")  # already ended; makes sure its thread is gone
        engine.dispose()

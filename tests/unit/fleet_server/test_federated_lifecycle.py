"""Every federated run ends: the lifecycle table, the bounds of a run's settings, cancellation of
a run blocked on a day-long round (FleetGrid with in-process devices), an exception in the run's
thread, runs left running by a killed server, and a drift trigger that survives its own errors."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from fleet_server.audit.port import MemoryAuditLog
from fleet_server.db import make_engine
from fleet_server.errors import ConflictError, InvalidRequestError, NotFoundError
from fleet_server.federated import lifecycle, limits
from fleet_server.federated.models import FlRound, FlRun
from fleet_server.federated.privacy import epsilon_after
from fleet_server.federated.runner import FederatedRunner, RunSpec
from fleet_server.federated.secagg import SecAggParams
from fleet_server.federated.strategy import StrategySpec
from fleet_server.federated.trigger import DriftRetrainTrigger
from fleet_server.migrate import upgrade
from fleet_server.models import utcnow
from tests.unit.fleet_server.test_federated_secagg import InProcFleet, loop, model

__all__ = ["loop"]

DAY = limits.MAX_ROUND_TIMEOUT_S


def _engine(tmp: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp / 'fl.sqlite'}")
    upgrade(engine)
    return engine


def _run(engine: Engine, run_id: str) -> FlRun:
    with Session(engine) as s:
        run = s.get(FlRun, run_id)
        assert run is not None
        return run


def _wait(pred: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


# ---------------------------------------------------------------------------- pure parts


def test_transitions_go_from_running_to_exactly_one_terminal_state() -> None:
    for end in ("completed", "failed", "cancelled"):
        assert lifecycle.is_valid_transition("running", end) and lifecycle.is_terminal(end)
        for other in ("running", "completed", "failed", "cancelled"):
            assert not lifecycle.is_valid_transition(end, other)
    assert not lifecycle.is_terminal("running")
    assert lifecycle.failure_reason(ValueError("bad\nline\x1b[31m")) == "ValueError: bad line [31m"
    assert lifecycle.cancel_reason("alice", "wrong cohort") == "cancelled by alice: wrong cohort"
    assert len(lifecycle.cancel_reason("bob", "x" * 5000)) == lifecycle.MAX_DETAIL


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"round_timeout_s": 1e300}, "round_timeout_s"),
        ({"round_timeout_s": math.nan}, "round_timeout_s"),
        ({"round_timeout_s": 0.0}, "round_timeout_s"),
        ({"num_rounds": 10**9}, "rounds"),
        ({"dp_noise_multiplier": 1e-200}, "dp_noise_multiplier"),
        ({"dp_noise_multiplier": 1e200}, "dp_noise_multiplier"),
        ({"dp_noise_multiplier": math.inf}, "dp_noise_multiplier"),
        ({"dp_clip": 0.0}, "dp_clip"),
        ({"dp_delta": 1.0}, "dp_delta"),
        ({"norm_bound": 1e300}, "norm_bound"),
        ({"secagg": SecAggParams(clip=1e-30)}, "secagg_clip"),
        ({"train_config": {"lr": math.nan, "local-epochs": 1}}, "lr"),
        ({"train_config": {"lr": 0.1, "local-epochs": 10**6}}, "local_epochs"),
        ({"strategy": StrategySpec(min_nodes=0)}, "min_nodes"),
        ({"strategy": StrategySpec(min_nodes=3, malicious=3)}, "malicious"),
        ({"strategy": StrategySpec("dp-fedavg", dp_noise_multiplier=1e-300)}, "dp-fedavg"),
    ],
)
def test_specs_out_of_bounds_are_refused_with_the_field_named(change: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequestError, match=field):
        limits.check_spec(replace(RunSpec(), **change))  # type: ignore[arg-type]


def test_bounds_admit_the_defaults_and_the_extremes_they_name() -> None:
    limits.check_spec(RunSpec())
    limits.check_spec(RunSpec(round_timeout_s=DAY, num_rounds=limits.MAX_ROUNDS, dp_noise_multiplier=0.01))
    for bad in (0.0, -1.0, 0.5, math.nan, math.inf, 1e300, DAY + 1):
        with pytest.raises(InvalidRequestError, match="interval_s"):
            limits.check_interval(bad)
    limits.check_interval(1.0)
    with pytest.raises(InvalidRequestError, match="head"):
        limits.check_head(100_000_000_000, 10)
    limits.check_head(1_000_000, 16)


def test_epsilon_never_raises_on_extreme_noise() -> None:
    assert epsilon_after(3, 1e-200, 1e-5) == math.inf  # noise squared underflows to 0
    assert epsilon_after(3, math.nan, 1e-5) == math.inf
    assert epsilon_after(3, 4.0, 0.0) == math.inf
    assert 0 < epsilon_after(3, 1e200, 1e-5) < 1  # noise squared overflows to inf: a tiny epsilon
    assert math.isfinite(epsilon_after(limits.MAX_ROUNDS, limits.MIN_DP_NOISE, limits.MIN_DP_DELTA))


# ---------------------------------------------------------------------------- runner


def test_a_run_stuck_on_a_day_long_round_is_cancelled_at_once_and_the_next_run_starts(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    fleet = InProcFleet(loop, tmp_path, 4, slow={"d00": 2.0})  # d00 answers every task 2 s late
    engine = _engine(tmp_path)
    audit = MemoryAuditLog()
    runner = FederatedRunner(engine=engine, grid=fleet.grid, out_dir=tmp_path / "out", audit=audit)
    first = runner.start(RunSpec(StrategySpec("fedavg", min_nodes=4), round_timeout_s=DAY), model())
    _wait(lambda: len(fleet.grid._finished) == 3)  # three answered, the round waits for d00
    with pytest.raises(ConflictError, match=first):
        runner.start(RunSpec(), model())
    t0 = time.monotonic()
    run = runner.cancel(first, by="alice", reason="wrong cohort")
    assert time.monotonic() - t0 < 5, "cancel must not wait for the round timeout"
    assert (run.status, run.cancelled_by, run.detail) == (
        "cancelled",
        "alice",
        "cancelled by alice: wrong cohort",
    )
    assert not runner.busy() and fleet.grid._pending == {}
    assert fleet.grid.counters()["dropped"] == {"cancelled": 1}
    runner.wait(10)
    assert _run(engine, first).status == "cancelled" and _run(engine, first).finished_at is not None

    second = runner.run_blocking(
        RunSpec(StrategySpec("fedavg", min_nodes=3), num_rounds=1, round_timeout_s=10), model()
    )
    assert _run(engine, second).status == "completed"
    _wait(lambda: len(fleet.late) >= 1)
    assert fleet.late[0] == (False, "late_or_duplicate")  # d00's reply to the cancelled round is refused
    with pytest.raises(ConflictError, match="already ended: cancelled"):
        runner.cancel(first, by="alice")
    with pytest.raises(ConflictError, match="already ended: completed"):
        runner.cancel(second, by="alice")
    with pytest.raises(NotFoundError):
        runner.cancel("0" * 32, by="alice")
    # The audit log holds each state change once, in order, by who made it; refused cancels add nothing.
    trail = [(e.action, e.target.id, e.actor.kind, e.actor.name) for e in audit.entries]
    assert trail == [
        ("federated_run.started", first, "system", "federated"),
        ("federated_run.cancelled", first, "operator", "alice"),
        ("federated_run.started", second, "system", "federated"),
        ("federated_run.round_aggregated", second, "system", "federated"),
        ("federated_run.completed", second, "system", "federated"),
    ]
    assert audit.entries[1].details == {"reason": "cancelled by alice: wrong cohort", "cancelled_by": "alice"}
    assert audit.verify().ok


def test_a_secure_aggregation_round_is_abandoned_mid_protocol_on_cancel(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    fleet = InProcFleet(loop, tmp_path, 4, slow={"d03": 2.0})
    engine = _engine(tmp_path)
    runner = FederatedRunner(engine=engine, grid=fleet.grid, out_dir=tmp_path / "out")
    spec = RunSpec(StrategySpec("fedavg", min_nodes=4), round_timeout_s=DAY, secure_aggregation=True)
    run_id = runner.start(spec, model())

    def secagg_stage_out() -> bool:
        with fleet.grid._lock:
            kinds = [p.request.metadata.message_type for p in fleet.grid._pending.values()]
        return any(k.startswith("train.secagg_") for k in kinds)

    _wait(secagg_stage_out)
    t0 = time.monotonic()
    assert runner.cancel(run_id, by="carol").status == "cancelled"
    assert time.monotonic() - t0 < 5 and not runner.busy()
    runner.wait(10)
    with Session(engine) as s:
        assert s.exec(select(FlRound).where(FlRound.run_id == run_id)).all() == []  # nothing recorded
    assert _run(engine, run_id).status == "cancelled"


def test_a_run_waiting_for_devices_is_cancellable(loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    fleet = InProcFleet(loop, tmp_path, 2)
    engine = _engine(tmp_path)
    runner = FederatedRunner(engine=engine, grid=fleet.grid, out_dir=tmp_path / "out")
    run_id = runner.start(RunSpec(StrategySpec("fedavg", min_nodes=50), round_timeout_s=DAY), model())
    assert runner.current() == run_id
    run = runner.cancel(run_id, by="bob")
    assert run.status == "cancelled" and run.detail == "cancelled by bob" and runner.current() is None


def test_a_refused_start_builds_no_initial_model(loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    fleet = InProcFleet(loop, tmp_path, 1)
    runner = FederatedRunner(engine=_engine(tmp_path), grid=fleet.grid, out_dir=tmp_path / "out")
    built: list[int] = []

    def initial() -> object:
        built.append(1)
        return model()

    run_id = runner.start(RunSpec(StrategySpec("fedavg", min_nodes=9), round_timeout_s=DAY), initial)  # type: ignore[arg-type]
    assert built == [1]
    with pytest.raises(ConflictError):
        runner.start(RunSpec(), initial)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError):
        runner.start(RunSpec(round_timeout_s=math.inf), initial)  # type: ignore[arg-type]
    assert built == [1]
    runner.cancel(run_id, by="t")


def test_an_exception_in_the_run_thread_fails_the_run_with_its_message(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    fleet = InProcFleet(loop, tmp_path, 2)
    engine = _engine(tmp_path)
    runner = FederatedRunner(engine=engine, grid=fleet.grid, out_dir=tmp_path / "out")

    def evaluate(rnd: int, arrays: object) -> dict[str, float]:
        raise RuntimeError(f"evaluation crashed in round {rnd}")

    spec = RunSpec(
        StrategySpec("fedavg", min_nodes=2), num_rounds=2, round_timeout_s=10, dp_noise_multiplier=1.0
    )
    run_id = runner.start(spec, model(), evaluate)  # type: ignore[arg-type]
    runner.wait(30)
    run = _run(engine, run_id)
    assert (run.status, run.detail) == ("failed", "RuntimeError: evaluation crashed in round 1")
    assert run.epsilon == 0.0 and not runner.busy()  # no round was recorded: nothing was spent


def test_a_failure_while_recording_the_end_still_ends_the_run(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    fleet = InProcFleet(loop, tmp_path, 2)
    engine = _engine(tmp_path)
    (tmp_path / "out").write_text("not a directory")  # the final model cannot be written
    runner = FederatedRunner(engine=engine, grid=fleet.grid, out_dir=tmp_path / "out")
    run_id = runner.run_blocking(
        RunSpec(StrategySpec("fedavg", min_nodes=2), num_rounds=1, round_timeout_s=10), model()
    )
    run = _run(engine, run_id)
    assert run.status == "failed" and run.detail.startswith("NotADirectoryError") and not runner.busy()
    assert run.final_digest == "" and runner.result is None


def test_runs_left_running_by_a_killed_server_fail_at_startup(tmp_path: Path) -> None:
    from fleet_server.federated.wiring import build_federated

    engine = _engine(tmp_path)
    with Session(engine) as s:
        s.add(FlRun(id="a" * 32, strategy="fedavg", num_rounds=3, created_at=utcnow()))
        s.add(FlRun(id="b" * 32, strategy="fedavg", num_rounds=3, status="completed", created_at=utcnow()))
        s.commit()
    lp = asyncio.new_event_loop()
    audit = MemoryAuditLog()
    runtime = build_federated(engine=engine, loop=lp, data_dir=tmp_path, audit=audit, poll_s=0.1)
    runtime.start()  # the single replica takes the runner lease and fails what its predecessor left
    try:
        deadline = time.monotonic() + 20
        while _run(engine, "a" * 32).status == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        runtime.shutdown()
        lp.close()
    stale, done = _run(engine, "a" * 32), _run(engine, "b" * 32)
    assert (stale.status, stale.detail) == ("failed", lifecycle.SERVER_RESTARTED) and stale.finished_at
    assert done.status == "completed" and done.detail == ""
    [entry] = audit.entries  # only the stale run's end, by the system, with the reason
    assert (entry.action, entry.target.id, entry.actor.id) == ("federated_run.failed", "a" * 32, "federated")
    assert entry.details["reason"] == lifecycle.SERVER_RESTARTED


# ---------------------------------------------------------------------------- drift trigger


def test_trigger_refuses_impossible_intervals_and_survives_its_own_errors(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    fleet = InProcFleet(loop, tmp_path, 1)
    engine = _engine(tmp_path)
    runner = FederatedRunner(engine=engine, grid=fleet.grid, out_dir=tmp_path / "out")
    calls: list[int] = []

    def broken_policy(session: Session) -> list[object]:
        calls.append(1)
        raise ConnectionError(f"policy backend down (call {len(calls)})")

    def make(interval_s: float) -> DriftRetrainTrigger:
        return DriftRetrainTrigger(
            engine=engine,
            grid=fleet.grid,
            runner=runner,
            spec=RunSpec(),
            initial=model,
            policy=broken_policy,  # type: ignore[arg-type]
            interval_s=interval_s,
        )

    for bad in (0.0, math.nan, 1e300, math.inf, -5.0):
        with pytest.raises(InvalidRequestError, match="interval_s"):
            make(bad)
    with pytest.raises(InvalidRequestError, match="round_timeout_s"):
        DriftRetrainTrigger(
            engine=engine, grid=fleet.grid, runner=runner, spec=RunSpec(round_timeout_s=1e300), initial=model
        )
    trigger = make(limits.MIN_TRIGGER_INTERVAL_S)
    trigger.start()
    try:
        _wait(lambda: len(calls) >= 2, timeout=15)  # the first error did not end the loop
        state = trigger.status()
        assert state["alive"] and state["errors"] >= 1 and state["checks"] >= 2
        assert state["last_error"].startswith("ConnectionError: policy backend down")
    finally:
        trigger.stop()
    assert not trigger.status()["alive"]

"""One federated run at a time fleet-wide, executed by the holder of the `federated-runner` lease.

Any replica records a run (`submit`: the `fl_run` row, status running and no runner yet, plus its
inputs in `fl_run_input`) and wakes the runner over the bus (`edgeloop_fl`, `run`). A partial
unique index on `fl_run` admits one running run, so two replicas starting at once get one run and
one 409. The lease holder (`Singleton` in coordination/leases.py) claims the waiting run with a
fenced conditional update and executes it in its `FederatedRunner` (`adopt`), every write fenced
by `LeaseStore.guard` in the writing transaction.

When the holder dies mid-run, the next holder (at once on acquiring, then every `poll_s`) fails
each run still `running` under another holder or token, with the reason
"runner replica <id> lost during round <n>" (lifecycle.replica_lost_reason). Runs are not resumed:
the round in flight, its SecAgg+ keys and the devices' tasks died with the holder, and only the
final model is persisted. A holder that stalls past its lease writes nothing more (`LeaseLost`) and
abandons its run when `on_lost` fires; the end is recorded once, by the conditional update that wins.

A cancel on any replica ends the run in the database (conditional update) and wakes the runner,
which stops the run's thread at its next check.

Owns the lease callbacks, the claim and the takeover. Does not run rounds (runner.py).
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from fleet_server.audit.chain import Actor
from fleet_server.audit.port import AuditRecorder
from fleet_server.coordination.bus import Bus
from fleet_server.coordination.leases import LeaseGrant, LeaseLost, LeaseStore
from fleet_server.coordination.wakeloop import WakeLoop
from fleet_server.errors import ConflictError, NotFoundError
from fleet_server.federated import lifecycle
from fleet_server.federated.lifecycle import RunStatus
from fleet_server.federated.models import FlRun, FlRunInput
from fleet_server.federated.relay import CHANNEL
from fleet_server.federated.runner import (
    Eligible,
    FederatedRunner,
    RunSpec,
    record_of,
    record_started,
    spec_from_config,
)
from fleet_server.federated.trigger import Members

logger = logging.getLogger(__name__)

LEASE = "federated-runner"
EligibleFor = Callable[[dict[str, Any]], Eligible | None]


def arrays_to_bytes(arrays: ArrayRecord) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: a.numpy() for k, a in arrays.items()})  # type: ignore[arg-type]
    return buf.getvalue()


def arrays_from_bytes(data: bytes) -> ArrayRecord:
    with np.load(io.BytesIO(data)) as npz:
        return ArrayRecord({k: Array(npz[k]) for k in npz.files})


class RunScheduler:
    """Records runs on any replica; executes them on the lease holder; fails the dead holder's run."""

    def __init__(
        self,
        *,
        engine: Engine,
        runner: FederatedRunner,
        leases: LeaseStore,
        bus: Bus,
        replica_id: str,
        audit: AuditRecorder,
        eligible_for: EligibleFor,
        poll_s: float = 1.0,
    ) -> None:
        self._engine, self._runner, self._leases, self._bus = engine, runner, leases, bus
        self.replica_id, self._audit, self._eligible_for = replica_id, audit, eligible_for
        self._grant: LeaseGrant | None = None
        self._worker = WakeLoop("fl-scheduler", self.tick, poll_s=poll_s)
        self.taken_over: list[str] = []  # runs this replica failed after a takeover
        bus.subscribe(CHANNEL, self._on_bus)
        bus.on_reconnect(self._worker.wake)

    # ------------------------------------------------------------------ any replica

    def busy(self) -> bool:
        """Whether a run is running (or waiting for the runner) anywhere in the fleet."""
        return self.running() is not None

    def running(self) -> str | None:
        with Session(self._engine) as s:
            return s.exec(select(FlRun.id).where(col(FlRun.status) == RunStatus.RUNNING)).first()

    def check_idle(self) -> None:
        """Raises: ConflictError when a run is in progress (before the caller builds a model)."""
        holder = self.running()
        if holder is not None:
            raise _busy(holder)

    def validate(self, spec: RunSpec) -> None:
        self._runner.validate(spec)

    def start(
        self,
        spec: RunSpec,
        initial: ArrayRecord | Callable[[], ArrayRecord],
        *,
        eligible: Eligible | None = None,
        actor: Actor | None = None,
    ) -> str:
        """`FederatedRunner.start` for the fleet (the drift trigger's launcher): `eligible` must be
        persistable (`Members`, or None for every device)."""
        self.check_idle()
        persisted: dict[str, Any] = {}
        if isinstance(eligible, Members):
            persisted = {"devices": sorted(eligible.devices)}
        elif eligible is not None:
            raise TypeError(f"cannot persist the eligibility filter {eligible!r}")
        arrays = initial() if callable(initial) else initial
        return self.submit(spec, arrays, eligible=persisted, actor=actor)

    def submit(
        self, spec: RunSpec, initial: ArrayRecord, *, eligible: dict[str, Any], actor: Actor | None
    ) -> str:
        """Record a run for the runner replica and wake it; returns its id.

        Raises: InvalidRequestError for a bad spec; ConflictError when a run is in progress.
        """
        self._runner.validate(spec)
        run_id = uuid.uuid4().hex
        with Session(self._engine) as s:
            s.add(record_of(run_id, spec, initial))
            s.add(FlRunInput(run_id=run_id, arrays=arrays_to_bytes(initial), eligible=eligible))
            try:
                s.commit()
            except IntegrityError as err:  # the partial unique index: another run is running
                s.rollback()
                raise _busy(self.running() or "?") from err
        record_started(self._audit, run_id, spec, actor)
        self._publish("run")
        logger.info("federated run recorded run_id=%s replica=%s", run_id, self.replica_id)
        return run_id

    def cancel(self, run_id: str, *, by: str, reason: str, actor: Actor) -> FlRun:
        """Cancel a run wherever it executes; raises NotFoundError / ConflictError as runner.cancel."""
        if self._runner.current() == run_id:
            return self._runner.cancel(run_id, by=by, reason=reason, actor=actor)
        by = lifecycle.clean(by)[:64]
        detail = lifecycle.cancel_reason(by, reason)
        self._runner._end(run_id, RunStatus.CANCELLED, detail, actor=actor, cancelled_by=by)
        self._publish(f"cancel:{run_id}")
        with Session(self._engine, expire_on_commit=False) as s:
            run = s.get(FlRun, run_id)
        if run is None:
            raise NotFoundError(f"no federated run {run_id!r}")
        if run.status != RunStatus.CANCELLED or run.detail != detail:
            raise ConflictError(f"federated run {run_id} already ended: {run.status} {run.detail}".strip())
        logger.warning("federated run cancelled run_id=%s by=%s (runner %s)", run_id, by, run.runner or "-")
        return run

    # ------------------------------------------------------------------ lease holder

    def on_acquired(self, grant: LeaseGrant) -> None:
        logger.info("federated runner lease acquired replica=%s token=%d", self.replica_id, grant.token)
        self._grant = grant
        self._worker.wake()

    def on_lost(self) -> None:
        self._grant = None
        self._runner.abandon("federated-runner lease lost")

    def serve(self) -> None:
        """Start the holder's loop (it acts only while the lease is held)."""
        self._worker.start()

    def close(self) -> None:
        self._worker.stop()

    def _on_bus(self, payload: str) -> None:
        if payload == "run" or payload.startswith("cancel:"):
            self._worker.wake()

    def tick(self) -> None:
        """One step of the holder: stop a run ended elsewhere, fail orphans, start the waiting run."""
        grant = self._grant
        mine = self._runner.current()
        if mine is not None and self._status(mine) == RunStatus.CANCELLED:
            self._runner.abandon("cancelled on another replica")  # its end is already recorded
        if grant is None:
            return
        for run in self._running():
            if run.id == self._runner.slot_holder():
                continue  # executing here (adopted, or started locally with `runner.start`)
            if run.runner and (run.runner, run.lease_token) != (self.replica_id, grant.token):
                self._take_over(run, grant)
            elif not run.runner and self._runner.slot_holder() is None:
                self._claim(run, grant)

    def _take_over(self, run: FlRun, grant: LeaseGrant) -> None:
        reason = lifecycle.replica_lost_reason(run.runner, run.current_round)
        spec = _spec_or_none(run)
        if self._runner._end(run.id, RunStatus.FAILED, reason, spec=spec, fence=self._fence(grant)):
            self.taken_over.append(run.id)
            logger.warning("federated run failed after takeover run_id=%s %s", run.id, reason)

    def _claim(self, run: FlRun, grant: LeaseGrant) -> None:
        with Session(self._engine, expire_on_commit=False) as s:
            self._leases.guard(s, grant)
            stmt = update(FlRun).where(
                col(FlRun.id) == run.id, col(FlRun.status) == RunStatus.RUNNING, col(FlRun.runner) == ""
            )
            won = s.execute(stmt.values(runner=self.replica_id, lease_token=grant.token)).rowcount  # type: ignore[attr-defined]
            inputs = s.get(FlRunInput, run.id)
            s.commit()
        if not won:
            return
        if inputs is None:  # recorded by a server version that ran it in-process, and died
            self._runner._end(run.id, RunStatus.FAILED, lifecycle.SERVER_RESTARTED, fence=self._fence(grant))
            return
        try:
            spec = spec_from_config(run.config)
            initial = arrays_from_bytes(inputs.arrays)
            eligible = self._eligible_for(dict(inputs.eligible))
            self._runner.adopt(run.id, spec, initial, eligible=eligible, fence=self._fence(grant))
        except ConflictError:  # the local slot was taken meanwhile (`runner.start`): claim it later
            self._unclaim(run.id, grant)
            return
        except LeaseLost:
            raise
        except Exception as err:
            reason = f"could not start on the runner replica: {lifecycle.failure_reason(err)}"
            self._runner._end(run.id, RunStatus.FAILED, reason, fence=self._fence(grant))
            return
        logger.info(
            "federated run claimed run_id=%s replica=%s token=%d", run.id, self.replica_id, grant.token
        )

    def _unclaim(self, run_id: str, grant: LeaseGrant) -> None:
        with Session(self._engine) as s:
            self._leases.guard(s, grant)
            stmt = update(FlRun).where(col(FlRun.id) == run_id, col(FlRun.status) == RunStatus.RUNNING)
            s.execute(stmt.values(runner="", lease_token=0))
            s.commit()

    def _fence(self, grant: LeaseGrant) -> Callable[[Session], None]:
        return lambda session: self._leases.guard(session, grant)

    def _running(self) -> list[FlRun]:
        with Session(self._engine, expire_on_commit=False) as s:
            return list(s.exec(select(FlRun).where(col(FlRun.status) == RunStatus.RUNNING)).all())

    def _status(self, run_id: str) -> str | None:
        with Session(self._engine) as s:
            return s.exec(select(FlRun.status).where(col(FlRun.id) == run_id)).first()

    def _publish(self, payload: str) -> None:
        try:
            self._bus.publish(CHANNEL, payload)
        except Exception:  # the runner's poll finds it anyway
            logger.warning("federated bus notify failed payload=%s", payload, exc_info=True)


def _busy(holder: str) -> ConflictError:
    return ConflictError(
        f"federated run {holder} is in progress; wait for it or cancel it (edgeloop fl cancel {holder})"
    )


def _spec_or_none(run: FlRun) -> RunSpec | None:
    try:
        return spec_from_config(run.config)
    except (TypeError, ValueError):
        return None

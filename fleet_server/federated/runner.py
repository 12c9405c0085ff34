"""Drives a federated run: a Flower strategy over `FleetGrid`, one round record per round.

The loop is Flower's `Strategy.start` unrolled (configure_train -> send_and_receive ->
aggregate_train) so we can, between receiving and aggregating, score every update, bound norms,
and write the round (participants, failures, refusals, anomaly scores, DP epsilon, model digests)
to the database. The strategy itself runs unchanged. One run at a time per server process; it
runs in a worker thread because Flower strategies block.

Every run ends (lifecycle.py): `completed`, `failed` with the reason (an exception in the thread,
no round with enough participants, too few devices within the round timeout, a server restart:
`recover()` at startup) or `cancelled` by an operator (`cancel()`: the in-flight round is
abandoned at once, late device replies are refused, the slot is free for the next run). The slot
is reserved before the initial model is built (`reserve()`), so a refused start allocates nothing.

With replicas (scheduler.py) a run is recorded by whichever replica took the REST call and
executed by the `federated-runner` lease holder (`adopt`). Every write of an adopted run (round
in progress, round record, end) is fenced: `fence(session)` runs `LeaseStore.guard` inside the
same transaction, so a holder that lost the lease writes nothing (`LeaseLost`), and `abandon()`
stops its thread without recording an end: the next holder ends the run.

Every state change is recorded in the audit log after it committed: `federated_run.started` (by
the operator, or `system:drift-trigger` for a run the drift policy opened), `.round_aggregated`,
and exactly one of `.completed`, `.failed`, `.cancelled` with the reason (only the writer whose
conditional update won records the end).

Owns `FederatedRunner`: starting, adopting, stopping and ending runs, a completed run's artifacts
and hand-off. Not here (names still importable from here): the spec (runspec.py), the slot
(slot.py), the rounds and strategy (rounds.py), the rows and audit entries (run_records.py).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord
from sqlalchemy import Engine

from fleet_server.audit.chain import Actor
from fleet_server.audit.port import AuditRecorder, MemoryAuditLog
from fleet_server.coordination.leases import LeaseLost
from fleet_server.errors import ConflictError, NotFoundError
from fleet_server.federated import lifecycle
from fleet_server.federated.grid import FleetGrid
from fleet_server.federated.handoff import write_artifacts
from fleet_server.federated.lifecycle import RunStatus
from fleet_server.federated.models import FlRound, FlRun
from fleet_server.federated.rootdata import RootData
from fleet_server.federated.rounds import Rounds
from fleet_server.federated.run_records import (
    DRIFT_TRIGGER,
    SYSTEM,
    RunRecords,
    digest,
    record_of,
    record_started,
)
from fleet_server.federated.runspec import (
    CompletionHook,
    Eligible,
    EvaluateFn,
    Fence,
    RunSpec,
    spec_from_config,
    validate_spec,
)
from fleet_server.federated.slot import ActiveRun, RunCancelledError, RunSlot

__all__ = [
    "ABANDON_JOIN_S",
    "CANCEL_JOIN_S",
    "DRIFT_TRIGGER",
    "SYSTEM",
    "CompletionHook",
    "Eligible",
    "EvaluateFn",
    "FederatedRunner",
    "Fence",
    "Reservation",
    "RunCancelledError",
    "RunSpec",
    "digest",
    "record_of",
    "record_started",
    "spec_from_config",
]

logger = logging.getLogger(__name__)

ABANDON_JOIN_S = 2.0  # how long abandon() waits for the run's thread (it writes nothing more anyway)
CANCEL_JOIN_S = 10.0  # how long cancel() waits for the run's thread to leave before freeing the slot


class Reservation:
    """The slot, held while the caller builds the initial model; `start` launches the run in it."""

    def __init__(self, runner: FederatedRunner, active: ActiveRun) -> None:
        self._runner, self._active = runner, active

    def start(
        self,
        spec: RunSpec,
        initial: ArrayRecord,
        evaluate_fn: EvaluateFn | None = None,
        *,
        eligible: Eligible | None = None,
        actor: Actor | None = None,
    ) -> str:
        return self._runner._launch(self._active, spec, initial, evaluate_fn, eligible, actor=actor)


class FederatedRunner:
    """Starts runs in a worker thread and records them; `result` holds the last final model."""

    def __init__(
        self,
        *,
        engine: Engine,
        grid: FleetGrid,
        out_dir: Path,
        on_complete: CompletionHook | None = None,
        audit: AuditRecorder | None = None,
    ) -> None:
        self._engine = engine
        self._audit: AuditRecorder = audit if audit is not None else MemoryAuditLog()
        self._records = RunRecords(engine, self._audit)
        self._grid = grid
        self._rounds = Rounds(engine=engine, grid=grid, records=self._records)
        self.out_dir = out_dir
        self.on_complete = on_complete
        self._slot = RunSlot()
        self.result: ArrayRecord | None = None
        self.replica_id = ""  # recorded as the runner of runs started here (wiring sets it)
        # The model's server-held labelled set for the robust defences and aggregate validation
        # (wiring sets the registry adapter); per-device reputation per model, loaded from and written
        # back to the fl_reputation table (reputation_store.py) around every round.
        self.root_data: RootData | None = None
        self.reputations: dict[str, dict[Hashable, float]] = {}

    def busy(self) -> bool:
        return self._slot.busy()

    def slot_holder(self) -> str | None:
        """Id of the run holding the slot, also while it is being recorded and launched."""
        return self._slot.holder()

    def current(self) -> str | None:
        """Id of the run holding the slot (None when idle or while a start is being prepared)."""
        return self._slot.current()

    @staticmethod
    def validate(spec: RunSpec) -> None:
        """Raises: InvalidRequestError for a spec out of bounds or an unknown/unsuitable strategy."""
        validate_spec(spec)

    @contextmanager
    def reserve(self, run_id: str = "") -> Iterator[Reservation]:
        """Hold the one-run slot (or raise ConflictError at once, before anything is allocated)."""
        active = self._slot.take(run_id or uuid.uuid4().hex)
        try:
            yield Reservation(self, active)
        finally:
            if active.thread is None:  # never launched: give the slot back
                self._slot.release(active)

    def start(
        self,
        spec: RunSpec,
        initial: ArrayRecord | Callable[[], ArrayRecord],
        evaluate_fn: EvaluateFn | None = None,
        *,
        eligible: Eligible | None = None,
        actor: Actor | None = None,
    ) -> str:
        """Start a run (`initial` may be a function, called only once the slot is held). `actor`
        who asked (default: the drift trigger for a drift cohort, else the system).

        Raises: InvalidRequestError for a bad spec; ConflictError when a run is in progress.
        """
        self.validate(spec)
        with self.reserve() as slot:
            arrays = initial() if callable(initial) else initial
            return slot.start(spec, arrays, evaluate_fn, eligible=eligible, actor=actor)

    def adopt(
        self,
        run_id: str,
        spec: RunSpec,
        initial: ArrayRecord,
        *,
        eligible: Eligible | None,
        fence: Fence,
        evaluate_fn: EvaluateFn | None = None,
    ) -> None:
        """Execute a run another replica (or this one) recorded; every write goes through `fence`.

        Raises: ConflictError when this runner already executes a run.
        """
        with self.reserve(run_id) as slot:
            slot._active.fence = fence
            self._grid.eligible = eligible  # None: every device (a local start keeps the last filter)
            self._launch(slot._active, spec, initial, evaluate_fn, eligible, record=False)

    def abandon(self, reason: str) -> str | None:
        """The runner lease was lost: stop the run in progress without writing anything (the new
        holder ends it). Returns the abandoned run's id."""
        active = self._slot.abandon()
        if active is None or active.thread is None:
            return None
        self._grid.wake()
        logger.warning("federated run abandoned run_id=%s reason=%s", active.run_id, reason)
        if active.thread is not threading.current_thread():
            active.thread.join(ABANDON_JOIN_S)
        self._slot.release(active)
        return active.run_id

    def _launch(
        self,
        active: ActiveRun,
        spec: RunSpec,
        initial: ArrayRecord,
        evaluate_fn: EvaluateFn | None,
        eligible: Eligible | None,
        *,
        actor: Actor | None = None,
        record: bool = True,
    ) -> str:
        self.validate(spec)
        run_id, active.spec = active.run_id, spec
        if record:
            self._save(record_of(run_id, spec, initial, runner=self.replica_id))
            record_started(self._audit, run_id, spec, actor)
        if eligible is not None:
            self._grid.eligible = eligible
        thread = threading.Thread(
            target=self._guarded,
            args=(active, spec, initial, evaluate_fn),
            name=f"fl-run-{run_id[:8]}",
            daemon=True,
        )
        self._slot.launch(active, thread)
        return run_id

    def cancel(self, run_id: str, *, by: str, reason: str = "", actor: Actor | None = None) -> FlRun:
        """Cancel a running run: stop its round at once, record `cancelled` with who/why, free the slot.

        Raises: NotFoundError for an unknown run; ConflictError when it already ended.
        """
        by = lifecycle.clean(by)[:64]
        detail = lifecycle.cancel_reason(by, reason)
        run = self._stop(run_id, RunStatus.CANCELLED, detail, by, actor=actor or Actor("operator", name=by))
        logger.warning("federated run cancelled run_id=%s by=%s detail=%s", run_id, by, run.detail)
        return run

    def shutdown(self, reason: str = lifecycle.SERVER_STOPPED) -> None:
        """The server is stopping: the run in progress (if any) ends `failed` with `reason`."""
        active = self._slot.active()
        if active is not None and active.thread is not None:
            try:
                self._stop(active.run_id, RunStatus.FAILED, reason, "", join_s=2.0)
            except (ConflictError, NotFoundError):
                pass  # it ended on its own meanwhile

    def _stop(
        self,
        run_id: str,
        status: RunStatus,
        detail: str,
        by: str,
        *,
        join_s: float = CANCEL_JOIN_S,
        actor: Actor = SYSTEM,
    ) -> FlRun:
        active = self._slot.signal_stop(run_id, status, detail, by, actor)
        if active is not None:
            self._grid.wake()
            if active.thread is not None and active.thread is not threading.current_thread():
                active.thread.join(join_s)
        spec = active.spec if active is not None else None
        self._end(run_id, status, detail, spec=spec, actor=actor, cancelled_by=by)
        if active is not None:
            self._slot.release(active)  # even if its thread is still stuck: it can no longer push or record
        run = self._records.load(run_id)
        if run is None:
            raise NotFoundError(f"no federated run {run_id!r}")
        if run.status != status or run.detail != detail:
            raise ConflictError(f"federated run {run_id} already ended: {run.status} {run.detail}".strip())
        return run

    def recover(self) -> int:
        """At startup: runs a killed server left `running` are failed ("server restarted mid-run").

        Not resumed (run_records.py `RunRecords.recover`). Returns how many.
        """
        return self._records.recover()

    def wait(self, timeout: float | None = None) -> None:
        if self._slot.thread is not None:
            self._slot.thread.join(timeout)

    def run_blocking(self, spec: RunSpec, initial: ArrayRecord, evaluate_fn: EvaluateFn | None = None) -> str:
        run_id = self.start(spec, initial, evaluate_fn)
        self.wait()
        return run_id

    def _guarded(
        self, active: ActiveRun, spec: RunSpec, initial: ArrayRecord, evaluate_fn: EvaluateFn | None
    ) -> None:
        run_id, fence = active.run_id, active.fence
        try:
            try:
                final, results = self._rounds.run(
                    active, spec, initial, evaluate_fn, root_data=self.root_data, reputations=self.reputations
                )
            except RunCancelledError:
                if active.abandoned:
                    return
                logger.info("federated run stopped after cancel run_id=%s", run_id)
                self._end(
                    run_id,
                    active.stop_status,
                    active.cancel_detail,
                    spec=spec,
                    actor=active.stop_actor,
                    cancelled_by=active.cancel_by,
                    fence=fence,
                )
                return
            except LeaseLost:
                raise
            except Exception as err:
                logger.exception("federated run failed run_id=%s", run_id)
                self._end(run_id, RunStatus.FAILED, lifecycle.failure_reason(err), spec=spec, fence=fence)
                return
            if not any(n >= spec.min_results for n in results):
                reason = lifecycle.no_participants_reason(results, spec.min_results)
                logger.warning("federated run failed run_id=%s %s", run_id, reason)
                self._end(run_id, RunStatus.FAILED, reason, spec=spec, fence=fence)
                return
            self._complete(run_id, final, spec, fence=fence)
        except LeaseLost as err:  # another replica runs federated now: it ends this run, not us
            logger.warning("federated run left to the new runner run_id=%s: %s", run_id, err)
        except Exception as err:  # recording the end itself failed: last attempt, never leave it running
            logger.exception("federated run could not be recorded run_id=%s", run_id)
            self._end(run_id, RunStatus.FAILED, lifecycle.failure_reason(err), quiet=True, fence=fence)
        finally:
            self._slot.release(active)

    def _complete(
        self, run_id: str, final: ArrayRecord, spec: RunSpec, *, fence: Fence | None = None
    ) -> None:
        """Write the artifacts, record `completed`, hand the model off (unless it ended meanwhile).

        The artifacts come first: a run whose final model cannot be written (disk full) fails with
        that reason instead of completing without them.
        """
        final_digest = digest(final)
        lineage = self._records.final_lineage(run_id, final_digest, spec)
        arrays = {k: a.numpy() for k, a in final.items()}
        write_artifacts(self.out_dir / run_id, arrays, lineage)
        if not self._end(run_id, RunStatus.COMPLETED, "", spec=spec, final_digest=final_digest, fence=fence):
            return
        self.result = final
        if lineage["final_digest"] == lineage["parent_digest"]:
            # Rounds aggregated but the model did not move (e.g. zero updates): nothing new to hand off.
            self._records.note(run_id, "the model is unchanged: nothing handed off")
            return
        if self.on_complete is not None and spec.model:
            try:
                self.on_complete(spec, arrays, lineage)
            except Exception as err:  # the run itself completed; the hand-off failure is recorded on it
                logger.exception("hand-off failed run_id=%s model=%s", run_id, spec.model)
                self._records.note(run_id, f"hand-off failed: {type(err).__name__}: {err}")

    # The scheduler (and its tests) end and write runs it does not execute through these two.

    def _end(self, run_id: str, status: RunStatus, detail: str, **kwargs: Any) -> bool:
        """`RunRecords.end`. Raises: LeaseLost (from `fence`) when the runner lost its lease."""
        return self._records.end(run_id, status, detail, **kwargs)

    def _save(self, row: FlRun | FlRound, *, fence: Fence | None = None) -> None:
        self._records.save(row, fence=fence)

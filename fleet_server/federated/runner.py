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
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from fleet_server.audit.chain import Actor, Target
from fleet_server.audit.port import AuditRecorder, MemoryAuditLog, record_change
from fleet_server.coordination.leases import LeaseLost
from fleet_server.errors import ConflictError, InvalidRequestError, NotFoundError
from fleet_server.federated import lifecycle, reputation_store
from fleet_server.federated.defences.secure import ValidatedAggregate
from fleet_server.federated.grid import FleetGrid
from fleet_server.federated.handoff import write_artifacts
from fleet_server.federated.lifecycle import RunStatus
from fleet_server.federated.limits import check_spec
from fleet_server.federated.models import FlRound, FlRun
from fleet_server.federated.privacy import epsilon_after
from fleet_server.federated.robust import bound_norms, score_replies
from fleet_server.federated.rootdata import RootData
from fleet_server.federated.secagg import SecAggParams, SecAggRound
from fleet_server.federated.strategy import LINEAR, StrategySpec, make_strategy
from fleet_server.models import utcnow

logger = logging.getLogger(__name__)

EvaluateFn = Callable[[int, ArrayRecord], dict[str, float]]
Fence = Callable[[Session], None]  # raises (LeaseLost) inside the transaction when the runner lost its lease
Eligible = Callable[[set[str]], set[str]]
ABANDON_JOIN_S = 2.0  # how long abandon() waits for the run's thread (it writes nothing more anyway)
CANCEL_JOIN_S = 10.0  # how long cancel() waits for the run's thread to leave before freeing the slot
SYSTEM = Actor.system("federated")
DRIFT_TRIGGER = Actor.system("drift-trigger")


class RunCancelledError(Exception):
    """Raised inside a run's thread at the next checkpoint after `cancel()`."""


@dataclass(frozen=True)
class RunSpec:
    strategy: StrategySpec = field(default_factory=StrategySpec)
    num_rounds: int = 3
    round_timeout_s: float = 60.0
    min_results: int = 1  # fewer valid results than this: the round is skipped, model unchanged
    norm_bound: float = 0.0  # 0 = off
    secure_aggregation: bool = False  # SecAgg+; linear strategies only (no per-update scores)
    secagg: SecAggParams = field(default_factory=SecAggParams)
    train_config: dict[str, float | int | str] = field(default_factory=lambda: {"lr": 0.1, "local-epochs": 1})
    dp_noise_multiplier: float = 0.0
    dp_clip: float = 1.0
    dp_delta: float = 1e-5
    cohort: dict[str, str | list[str]] = field(default_factory=dict)
    model: str = ""  # registry model name: the final head becomes its next version (the hand-off)
    parent_version: int = 0  # registry version the run started from; 0 = the newest at hand-off


# Called after a completed run with (spec, final arrays, lineage): the registry hand-off.
CompletionHook = Callable[[RunSpec, dict[str, np.ndarray], dict[str, object]], None]


def digest(arrays: ArrayRecord) -> str:
    h = hashlib.sha256()
    for key, array in arrays.items():
        h.update(key.encode())
        h.update(np.ascontiguousarray(array.numpy()).tobytes())
    return h.hexdigest()


@dataclass
class _Active:
    """The run holding the one-run slot (its thread is None until the run is recorded and started)."""

    run_id: str
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    spec: RunSpec | None = None
    stop_status: RunStatus = RunStatus.CANCELLED  # what the run ends as once `stop` is set
    cancel_detail: str = ""
    cancel_by: str = ""
    stop_actor: Actor = SYSTEM
    fence: Fence | None = None  # set for a run adopted under a lease (scheduler.py)
    abandoned: bool = False  # the lease was lost: the thread stops and records nothing


class Reservation:
    """The slot, held while the caller builds the initial model; `start` launches the run in it."""

    def __init__(self, runner: FederatedRunner, active: _Active) -> None:
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
        self._grid = grid
        self.out_dir = out_dir
        self.on_complete = on_complete
        self._lock = threading.Lock()
        self._active: _Active | None = None
        self._thread: threading.Thread | None = None
        self.result: ArrayRecord | None = None
        self.replica_id = ""  # recorded as the runner of runs started here (wiring sets it)
        # The model's server-held labelled set for the robust defences and aggregate validation
        # (wiring sets the registry adapter); per-device reputation per model, loaded from and written
        # back to the fl_reputation table (reputation_store.py) around every round.
        self.root_data: RootData | None = None
        self.reputations: dict[str, dict[Hashable, float]] = {}

    def busy(self) -> bool:
        with self._lock:
            return self._active is not None

    def slot_holder(self) -> str | None:
        """Id of the run holding the slot, also while it is being recorded and launched."""
        with self._lock:
            return self._active.run_id if self._active is not None else None

    def current(self) -> str | None:
        """Id of the run holding the slot (None when idle or while a start is being prepared)."""
        with self._lock:
            return self._active.run_id if self._active is not None and self._active.thread else None

    @staticmethod
    def validate(spec: RunSpec) -> None:
        """Raises: InvalidRequestError for a spec out of bounds or an unknown/unsuitable strategy."""
        check_spec(spec)
        make_strategy(spec.strategy)
        if spec.secure_aggregation and spec.strategy.name.lower() not in LINEAR:
            raise InvalidRequestError(
                "secure aggregation needs a linear strategy (fedavg, fedprox, fedadam, dp-fedavg): robust"
                " rules see each update. Under secure aggregation what applies is device-side norm"
                " clipping (train_config clipping_norm), validation of the aggregate on the model's"
                " evaluation set, and DP noise (dp_noise_multiplier)"
            )

    @contextmanager
    def reserve(self, run_id: str = "") -> Iterator[Reservation]:
        """Hold the one-run slot (or raise ConflictError at once, before anything is allocated)."""
        with self._lock:
            if self._active is not None:
                holder = self._active.run_id
                raise ConflictError(
                    f"federated run {holder} is in progress; wait for it or cancel it "
                    f"(edgeloop fl cancel {holder})"
                )
            active = self._active = _Active(run_id=run_id or uuid.uuid4().hex)
        try:
            yield Reservation(self, active)
        finally:
            if active.thread is None:  # never launched: give the slot back
                self._release(active)

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
        with self._lock:
            active = self._active
            if active is None or active.thread is None:
                return None
            active.abandoned = True
            active.stop.set()
        self._grid.wake()
        logger.warning("federated run abandoned run_id=%s reason=%s", active.run_id, reason)
        if active.thread is not threading.current_thread():
            active.thread.join(ABANDON_JOIN_S)
        self._release(active)
        return active.run_id

    def _launch(
        self,
        active: _Active,
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
        with self._lock:  # started under the lock: a cancel never sees a thread it cannot join yet
            active.thread = self._thread = thread
            thread.start()
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
        with self._lock:
            active = self._active
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
        with self._lock:
            active = self._active if self._active is not None and self._active.run_id == run_id else None
            if active is not None:
                active.stop_status, active.cancel_detail, active.cancel_by = status, detail, by
                active.stop_actor = actor
                active.stop.set()
        if active is not None:
            self._grid.wake()
            if active.thread is not None and active.thread is not threading.current_thread():
                active.thread.join(join_s)
        spec = active.spec if active is not None else None
        self._end(run_id, status, detail, spec=spec, actor=actor, cancelled_by=by)
        if active is not None:
            self._release(active)  # even if its thread is still stuck: it can no longer push or record
        run = self._load(run_id)
        if run is None:
            raise NotFoundError(f"no federated run {run_id!r}")
        if run.status != status or run.detail != detail:
            raise ConflictError(f"federated run {run_id} already ended: {run.status} {run.detail}".strip())
        return run

    def recover(self) -> int:
        """At startup: runs a killed server left `running` are failed ("server restarted mid-run").

        Not resumed: the round in flight, its SecAgg keys and the devices' tasks died with the
        process, and resuming would need every round's state persisted. Returns how many.
        """
        with self._engine.begin() as conn:
            ids = list(conn.execute(select(FlRun.id).where(col(FlRun.status) == RunStatus.RUNNING)).scalars())
        n = 0
        for run_id in ids:  # one conditional update each: a run another replica ended stays as it is
            n += self._end(run_id, RunStatus.FAILED, lifecycle.SERVER_RESTARTED)
        if n:
            logger.warning("federated runs left running by a previous server marked failed count=%d", n)
        return n

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run_blocking(self, spec: RunSpec, initial: ArrayRecord, evaluate_fn: EvaluateFn | None = None) -> str:
        run_id = self.start(spec, initial, evaluate_fn)
        self.wait()
        return run_id

    def _guarded(
        self, active: _Active, spec: RunSpec, initial: ArrayRecord, evaluate_fn: EvaluateFn | None
    ) -> None:
        run_id, fence = active.run_id, active.fence
        try:
            try:
                final, results = self._run(active, spec, initial, evaluate_fn)
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
            self._release(active)

    def _release(self, active: _Active) -> None:
        with self._lock:
            if self._active is active:
                self._active = None

    @staticmethod
    def _check(stop: threading.Event) -> None:
        if stop.is_set():
            raise RunCancelledError

    def _run(
        self, active: _Active, spec: RunSpec, arrays: ArrayRecord, evaluate_fn: EvaluateFn | None
    ) -> tuple[ArrayRecord, list[int]]:
        """Returns the final arrays and the number of valid results of each round."""
        strategy, book = self._strategy(spec)
        config = ConfigRecord(dict(spec.train_config))
        if spec.dp_noise_multiplier > 0:
            config["dp-noise-multiplier"] = spec.dp_noise_multiplier
            config["dp-clip"] = spec.dp_clip
        self._grid.round_timeout_s = spec.round_timeout_s
        results: list[int] = []
        for rnd in range(1, spec.num_rounds + 1):
            self._check(active.stop)
            arrays, valid = self._round(
                active, rnd, spec, strategy, arrays, config=config, evaluate_fn=evaluate_fn
            )
            results.append(valid)
            if spec.model and book:
                reputation_store.save(self._engine, spec.model, book, active.fence)
        return arrays, results

    def _strategy(self, spec: RunSpec) -> tuple[Strategy, dict[Hashable, float]]:
        """The run's strategy with the model's root set (the `robust-<rule>` defences use it, and
        under secure aggregation, where the server sees only the sum, it validates the aggregate),
        and the reputation book the strategy updates in place."""
        root = self.root_data.for_model(spec.model) if self.root_data is not None and spec.model else None
        book = self.reputations.setdefault(spec.model, {})
        if spec.model:  # the stored book is the truth: another replica or process may have moved it
            book.clear()
            book.update(reputation_store.load(self._engine, spec.model))
        strategy = make_strategy(spec.strategy, root=root, reputation=book)
        if spec.secure_aggregation and root is not None:
            strategy = ValidatedAggregate(strategy, root)
        return strategy, book

    def _round(
        self,
        active: _Active,
        rnd: int,
        spec: RunSpec,
        strategy: object,
        arrays: ArrayRecord,
        *,
        config: ConfigRecord,
        evaluate_fn: EvaluateFn | None,
    ) -> tuple[ArrayRecord, int]:
        run_id, stop = active.run_id, active.stop
        started, t0 = utcnow(), time.monotonic()
        if active.fence is not None:  # the round a takeover names in its reason
            self._set_round(run_id, rnd, active.fence)
        before = self._grid.counters()
        self._await_nodes(spec, stop)
        messages = list(strategy.configure_train(rnd, arrays, config, self._grid))  # type: ignore[attr-defined]
        if spec.secure_aggregation:
            replies = self._secure(f"{run_id[:12]}:{rnd}", spec, messages, arrays, stop)
        else:
            replies = list(self._grid.send_and_receive(messages, timeout=spec.round_timeout_s, stop=stop))
        self._check(stop)  # a cancelled round is abandoned: nothing aggregated, nothing recorded
        valid = [m for m in replies if not m.has_error()]
        devices = self._grid.device_ids([m.metadata.src_node_id for m in valid])
        scores = dict(zip(devices, score_replies(arrays, valid), strict=True))
        if spec.norm_bound > 0:
            bound_norms(arrays, valid, spec.norm_bound)
        if hasattr(strategy, "num_nodes_to_select"):
            strategy.num_nodes_to_select = max(1, len(valid) - spec.strategy.malicious)
        parent = digest(arrays)
        metrics: dict[str, float] = {}
        if len(valid) >= spec.min_results:
            new, agg_metrics = strategy.aggregate_train(rnd, replies)  # type: ignore[attr-defined]
            arrays = new if new is not None else arrays
            metrics |= _metrics(agg_metrics)
        else:
            logger.warning(
                "round skipped run_id=%s round=%d valid=%d < min_results=%d",
                run_id,
                rnd,
                len(valid),
                spec.min_results,
            )
        if evaluate_fn is not None:
            metrics |= {f"server_{k}": v for k, v in evaluate_fn(rnd, arrays).items()}
        after = self._grid.counters()
        eps = (
            epsilon_after(rnd, spec.dp_noise_multiplier, spec.dp_delta)
            if spec.dp_noise_multiplier > 0
            else 0.0
        )
        self._save(
            FlRound(
                run_id=run_id,
                server_round=rnd,
                sampled=len(messages),
                results=len(valid),
                failures=len(replies) - len(valid) + len(messages) - len(replies),
                rejected=_diff(after["rejected"], before["rejected"]),
                dropped=_diff(after["dropped"], before["dropped"]),
                metrics=metrics,
                anomaly_scores={d: round(s, 4) for d, s in scores.items()},
                epsilon=eps,
                delta=spec.dp_delta,
                parent_digest=parent,
                arrays_digest=digest(arrays),
                duration_s=time.monotonic() - t0,
                started_at=started,
                finished_at=utcnow(),
            ),
            fence=active.fence,
        )
        what = "round_aggregated" if len(valid) >= spec.min_results else "round_skipped"
        counts = {"round": rnd, "sampled": len(messages), "results": len(valid), "epsilon": eps,
                  "arrays_digest": digest(arrays)}  # fmt: skip
        record_change(self._audit, SYSTEM, f"federated_run.{what}", _target(run_id), counts)
        logger.info(
            "round done run_id=%s round=%d sampled=%d results=%d duration=%.2fs",
            run_id,
            rnd,
            len(messages),
            len(valid),
            time.monotonic() - t0,
        )
        return arrays, len(valid)

    def _await_nodes(self, spec: RunSpec, stop: threading.Event) -> None:
        """Flower's sampler waits forever for `min_available_nodes`; we give up after the round timeout."""
        deadline = time.monotonic() + spec.round_timeout_s
        while (online := len(list(self._grid.get_node_ids()))) < spec.strategy.min_nodes:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {online} eligible devices online within the round timeout"
                    f" ({spec.round_timeout_s:g}s), need {spec.strategy.min_nodes}"
                )
            if stop.wait(0.2):
                raise RunCancelledError

    def _secure(
        self,
        round_id: str,
        spec: RunSpec,
        messages: list[Message],
        arrays: ArrayRecord,
        stop: threading.Event,
    ) -> list[Message]:
        """SecAgg+ stages; the strategy then aggregates a single reply holding the unmasked mean."""
        if not messages:
            return []
        params = replace(spec.secagg, timeout_s=spec.round_timeout_s)
        out = SecAggRound(self._grid, params, round_id, stop=stop).run(messages)
        self._check(stop)
        self._grid.note("secagg", out.rejected)
        if out.mean_delta is None:
            return []
        offset, new = 0, {}
        for key, array in arrays.items():
            value = array.numpy()
            chunk = out.mean_delta[offset : offset + value.size].reshape(value.shape)
            new[key] = Array((value + chunk).astype(value.dtype))
            offset += value.size
        metrics = MetricRecord(
            {
                "num-examples": out.total_examples,
                "secagg-survivors": len(out.survivors),
                "secagg-error-bound": out.error_bound,
            }
        )
        request = messages[0]
        request.metadata.__dict__["_message_id"] = request.metadata.message_id or uuid.uuid4().hex
        return [Message(RecordDict({"arrays": ArrayRecord(new), "metrics": metrics}), reply_to=request)]

    def _complete(
        self, run_id: str, final: ArrayRecord, spec: RunSpec, *, fence: Fence | None = None
    ) -> None:
        """Write the artifacts, record `completed`, hand the model off (unless it ended meanwhile).

        The artifacts come first: a run whose final model cannot be written (disk full) fails with
        that reason instead of completing without them.
        """
        final_digest = digest(final)
        epsilon = epsilon_after(spec.num_rounds, spec.dp_noise_multiplier, spec.dp_delta)
        with Session(self._engine) as s:
            run = s.get(FlRun, run_id)
            assert run is not None
            s.expunge(run)  # lineage of the finished run, not written back here
            run.final_digest = final_digest
            run.epsilon = epsilon if spec.dp_noise_multiplier > 0 else run.epsilon
            rounds = s.exec(select(FlRound).where(FlRound.run_id == run_id)).all()
            arrays = {k: a.numpy() for k, a in final.items()}
            lineage = _lineage(run, rounds)
        write_artifacts(self.out_dir / run_id, arrays, lineage)
        if not self._end(run_id, RunStatus.COMPLETED, "", spec=spec, final_digest=final_digest, fence=fence):
            return
        self.result = final
        if lineage["final_digest"] == lineage["parent_digest"]:
            # Rounds aggregated but the model did not move (e.g. zero updates): nothing new to hand off.
            self._note(run_id, "the model is unchanged: nothing handed off")
            return
        if self.on_complete is not None and spec.model:
            try:
                self.on_complete(spec, arrays, lineage)
            except Exception as err:  # the run itself completed; the hand-off failure is recorded on it
                logger.exception("hand-off failed run_id=%s model=%s", run_id, spec.model)
                self._note(run_id, f"hand-off failed: {type(err).__name__}: {err}")

    def _end(
        self,
        run_id: str,
        status: RunStatus,
        detail: str,
        *,
        spec: RunSpec | None = None,
        quiet: bool = False,
        actor: Actor = SYSTEM,
        fence: Fence | None = None,
        **extra: Any,
    ) -> bool:
        """Move a running run to `status` (a conditional update: False if it had already ended);
        the winner records the end in the audit log. With `fence`, only while the lease is held.

        Raises: LeaseLost (from `fence`) when the runner lost its lease: nothing was written.
        """
        assert lifecycle.is_valid_transition(RunStatus.RUNNING, status)
        values: dict[str, Any] = {"status": status, "detail": lifecycle.clean(detail)}
        values["finished_at"] = utcnow()
        if spec is not None and spec.dp_noise_multiplier > 0:
            rounds = spec.num_rounds if status == RunStatus.COMPLETED else self._rounds_done(run_id)
            values["epsilon"] = epsilon_after(rounds, spec.dp_noise_multiplier, spec.dp_delta)
        values |= extra
        try:
            with Session(self._engine) as s:
                if fence is not None:
                    fence(s)
                stmt = update(FlRun).where(col(FlRun.id) == run_id, col(FlRun.status) == RunStatus.RUNNING)
                won = bool(s.execute(stmt.values(**values)).rowcount)  # type: ignore[attr-defined]
                s.commit()
        except LeaseLost:
            raise
        except Exception:
            if quiet:
                logger.exception("could not record the end of run_id=%s status=%s", run_id, status)
                return False
            raise
        if won:
            logger.info("federated run ended run_id=%s status=%s detail=%s", run_id, status, values["detail"])
            details = {"reason": values["detail"]} | {k: v for k, v in extra.items() if isinstance(v, str)}
            record_change(self._audit, actor, f"federated_run.{status}", _target(run_id), details)
        return won

    def _rounds_done(self, run_id: str) -> int:
        with Session(self._engine) as s:
            return len(s.exec(select(FlRound.id).where(FlRound.run_id == run_id)).all())

    def _load(self, run_id: str) -> FlRun | None:
        with Session(self._engine, expire_on_commit=False) as s:
            return s.get(FlRun, run_id)

    def _note(self, run_id: str, detail: str) -> None:
        logger.warning("run_id=%s %s", run_id, detail)
        with Session(self._engine) as s:
            run = s.get(FlRun, run_id)
            if run is not None:
                run.detail = lifecycle.clean(detail)
                s.add(run)
                s.commit()

    def _save(self, row: FlRun | FlRound, *, fence: Fence | None = None) -> None:
        with Session(self._engine) as s:
            if fence is not None:
                fence(s)
            s.add(row)
            s.commit()

    def _set_round(self, run_id: str, rnd: int, fence: Fence) -> None:
        with Session(self._engine) as s:
            fence(s)
            s.execute(update(FlRun).where(col(FlRun.id) == run_id).values(current_round=rnd))
            s.commit()


def record_of(run_id: str, spec: RunSpec, initial: ArrayRecord, **extra: Any) -> FlRun:
    """The `fl_run` row of a run being started (status running)."""
    return FlRun(
        id=run_id,
        strategy=spec.strategy.name,
        secure_aggregation=spec.secure_aggregation,
        num_rounds=spec.num_rounds,
        config=_jsonable(spec),
        cohort=dict(spec.cohort),
        parent_digest=digest(initial),
        delta=spec.dp_delta,
        created_at=utcnow(),
        **extra,
    )


def record_started(audit: AuditRecorder, run_id: str, spec: RunSpec, actor: Actor | None) -> None:
    """Audit `federated_run.started` (by `actor`; default the drift trigger for a drift cohort)."""
    if actor is None:
        actor = DRIFT_TRIGGER if "drift" in spec.cohort else SYSTEM
    details = {"strategy": spec.strategy.name, "rounds": spec.num_rounds, "cohort": dict(spec.cohort),
               "model": spec.model, "parent_version": spec.parent_version,
               "secure_aggregation": spec.secure_aggregation}  # fmt: skip
    record_change(audit, actor, "federated_run.started", _target(run_id), details)


def spec_from_config(config: dict[str, Any]) -> RunSpec:
    """The RunSpec a run was recorded with (`fl_run.config`, `asdict` of the spec)."""
    c = dict(config)
    strategy = StrategySpec(**c.pop("strategy", {}))
    secagg = SecAggParams(**c.pop("secagg", {}))
    return RunSpec(strategy=strategy, secagg=secagg, **c)


def _target(run_id: str) -> Target:
    return Target("federated_run", run_id)


def _lineage(run: FlRun, rounds: list[FlRound] | Sequence[FlRound]) -> dict[str, object]:
    return {
        "run_id": run.id,
        "strategy": run.strategy,
        "parent_digest": run.parent_digest,
        "final_digest": run.final_digest,
        "epsilon": run.epsilon,
        "delta": run.delta,
        "cohort": run.cohort,
        "secure_aggregation": run.secure_aggregation,
        "participants_max": max((r.results for r in rounds), default=0),
        "rounds": [
            {
                "round_id": f"{run.id}:{r.server_round}",
                "round": r.server_round,
                "participants": r.results,
                "sampled": r.sampled,
                "digest": r.arrays_digest,
            }
            for r in sorted(rounds, key=lambda r: r.server_round)
        ],
    }


def _metrics(record: MetricRecord | None) -> dict[str, float]:
    if record is None:
        return {}
    return {k: float(v) for k, v in record.items() if isinstance(v, int | float)}


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def _jsonable(spec: RunSpec) -> dict[str, object]:
    return asdict(spec)

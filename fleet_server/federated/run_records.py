"""How a federated run is written down: its `fl_run` / `fl_round` rows and their audit entries.

Owns the row builders (`record_of`, `lineage`, `digest` of a model), the writes (`save` and
`set_round`, fenced for an adopted run; the conditional `end`, whose winner alone audits the end;
`note`), the reads a run's end needs (`final_lineage`, `rounds_done`) and the startup sweep of runs
a killed server left running (`recover`). Does not decide when or why a run ends (runner.py,
lifecycle.py), run rounds (rounds.py) or write artifacts and hand the model off (handoff.py).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from fleet_server.audit.chain import Actor, Target
from fleet_server.audit.port import AuditRecorder, record_change
from fleet_server.coordination.leases import LeaseLost
from fleet_server.federated import lifecycle
from fleet_server.federated.lifecycle import RunStatus
from fleet_server.federated.models import FlRound, FlRun
from fleet_server.federated.privacy import epsilon_after
from fleet_server.federated.runspec import Fence, RunSpec, jsonable
from fleet_server.models import utcnow

logger = logging.getLogger(__name__)

SYSTEM = Actor.system("federated")
DRIFT_TRIGGER = Actor.system("drift-trigger")


def digest(arrays: ArrayRecord) -> str:
    h = hashlib.sha256()
    for key, array in arrays.items():
        h.update(key.encode())
        h.update(np.ascontiguousarray(array.numpy()).tobytes())
    return h.hexdigest()


class RunRecords:
    """Reads and writes one server's run rows, and audits what it wrote."""

    def __init__(self, engine: Engine, audit: AuditRecorder) -> None:
        self._engine = engine
        self._audit = audit

    def end(
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
            rounds = spec.num_rounds if status == RunStatus.COMPLETED else self.rounds_done(run_id)
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
            record_change(self._audit, actor, f"federated_run.{status}", target(run_id), details)
        return won

    def recover(self) -> int:
        """At startup: runs a killed server left `running` are failed ("server restarted mid-run").

        Not resumed: the round in flight, its SecAgg keys and the devices' tasks died with the
        process, and resuming would need every round's state persisted. Returns how many.
        """
        with self._engine.begin() as conn:
            ids = list(conn.execute(select(FlRun.id).where(col(FlRun.status) == RunStatus.RUNNING)).scalars())
        n = 0
        for run_id in ids:  # one conditional update each: a run another replica ended stays as it is
            n += self.end(run_id, RunStatus.FAILED, lifecycle.SERVER_RESTARTED)
        if n:
            logger.warning("federated runs left running by a previous server marked failed count=%d", n)
        return n

    def round_done(self, row: FlRound, *, fence: Fence | None, what: str, counts: dict[str, object]) -> None:
        """Write a round's record, then audit `federated_run.<what>` with `counts`."""
        run_id = row.run_id  # read before the commit expires the row
        self.save(row, fence=fence)
        record_change(self._audit, SYSTEM, f"federated_run.{what}", target(run_id), counts)

    def final_lineage(self, run_id: str, final_digest: str, spec: RunSpec) -> dict[str, object]:
        """The lineage of a run ending with the model `final_digest` (nothing is written back)."""
        epsilon = epsilon_after(spec.num_rounds, spec.dp_noise_multiplier, spec.dp_delta)
        with Session(self._engine) as s:
            run = s.get(FlRun, run_id)
            assert run is not None
            s.expunge(run)  # lineage of the finished run, not written back here
            run.final_digest = final_digest
            run.epsilon = epsilon if spec.dp_noise_multiplier > 0 else run.epsilon
            rounds = s.exec(select(FlRound).where(FlRound.run_id == run_id)).all()
            return lineage(run, rounds)

    def rounds_done(self, run_id: str) -> int:
        with Session(self._engine) as s:
            return len(s.exec(select(FlRound.id).where(FlRound.run_id == run_id)).all())

    def load(self, run_id: str) -> FlRun | None:
        with Session(self._engine, expire_on_commit=False) as s:
            return s.get(FlRun, run_id)

    def note(self, run_id: str, detail: str) -> None:
        logger.warning("run_id=%s %s", run_id, detail)
        with Session(self._engine) as s:
            run = s.get(FlRun, run_id)
            if run is not None:
                run.detail = lifecycle.clean(detail)
                s.add(run)
                s.commit()

    def save(self, row: FlRun | FlRound, *, fence: Fence | None = None) -> None:
        with Session(self._engine) as s:
            if fence is not None:
                fence(s)
            s.add(row)
            s.commit()

    def set_round(self, run_id: str, rnd: int, fence: Fence) -> None:
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
        config=jsonable(spec),
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
    record_change(audit, actor, "federated_run.started", target(run_id), details)


def target(run_id: str) -> Target:
    return Target("federated_run", run_id)


def lineage(run: FlRun, rounds: list[FlRound] | Sequence[FlRound]) -> dict[str, object]:
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

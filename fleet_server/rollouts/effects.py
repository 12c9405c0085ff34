"""Running a step's effects, persisted as data in `rollout.pending_effects`, one at a time.

Owns the effects' stored form (`effect_dict`, written with the step that makes them), the loop
that runs the list in order, removing each effect in the transaction that does its work, so a
holder killed midway leaves the rest listed for the next holder, holding batch assignments while
no download window is open (the rollout's reason says when one opens), and the audit effect: with
a recorder that can join the transaction (`TransactionalAudit`, the SQL log) the entry is appended
and the effect removed in one transaction, so each transition's entry is written exactly once even
if a holder dies mid-effect; a recorder that cannot (the in-memory fake) gets it at-least-once.

Does not decide or persist steps (`engine.py`, `deciding.py`); assigning a batch and publishing
rollback releases are `deploying.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm.attributes import flag_modified
from sqlmodel import Session

from fleet_server.audit.chain import Actor, Target
from fleet_server.audit.port import AuditRecorder, TransactionalAudit
from fleet_server.rollouts.deploying import Deployer
from fleet_server.rollouts.leases import Claim, RolloutLeases
from fleet_server.rollouts.machine import (
    AssignBatch,
    Audit,
    CancelPending,
    Effect,
    EvaluateGates,
    Pause,
    StartRollback,
)
from fleet_server.rollouts.models import Rollout
from fleet_server.rollouts.windows import download_wait

logger = logging.getLogger(__name__)

WAIT_PREFIX = "waiting for the download window"


def effect_dict(effect: Effect, actor: Actor) -> dict[str, Any]:
    if isinstance(effect, AssignBatch):
        return {"kind": "assign_batch", "batch": effect.batch, "done": []}
    if isinstance(effect, EvaluateGates):
        return {"kind": "evaluate_gates", "batch": effect.batch}
    if isinstance(effect, Pause):
        return {"kind": "pause", "reason": effect.reason}
    if isinstance(effect, CancelPending):
        return {"kind": "cancel_pending", "reason": effect.reason}
    if isinstance(effect, StartRollback):
        return {"kind": "start_rollback", "reason": effect.reason, "done": []}
    assert isinstance(effect, Audit)
    return {
        "kind": "audit",
        "action": effect.action,
        "details": effect.details,
        "actor": {"kind": actor.kind, "id": actor.id, "name": actor.name, "role": actor.role},
    }


class EffectRunner:
    """`run_pending(claim)`: runs the claimed rollout's pending effects (each guarded by the claim)."""

    def __init__(
        self,
        *,
        db: Engine,
        leases: RolloutLeases,
        deployer: Deployer,
        audit: AuditRecorder,
        clock: Callable[[], datetime],
        crash: Callable[[str], None],
    ) -> None:
        self.db = db
        self.leases = leases
        self.deployer = deployer
        self.audit = audit
        self.clock = clock
        self.crash = crash

    def awaiting_download(self, row: Rollout) -> bool:
        """Every pending effect is a batch assignment and no download window is open: the
        rollout waits in its state (operator events and observations still apply)."""
        return (
            bool(row.pending_effects)
            and all(e.get("kind") == "assign_batch" for e in row.pending_effects)
            and download_wait(row.batch_spec, self.clock()) is not None
        )

    def _hold_assignments(self, s: Session, row: Rollout) -> bool:
        """Outside the download window: move the batch assignment behind the other effects (they
        run now) and say in the rollout's reason when the window opens. True when only the held
        assignment is left; inside the window, clear that reason and return False."""
        wait = download_wait(row.batch_spec, self.clock())
        if wait is None:
            if row.reason.startswith(WAIT_PREFIX):
                row.reason = ""
                s.add(row)
            return False
        others = [e for e in row.pending_effects if e.get("kind") != "assign_batch"]
        held = [e for e in row.pending_effects if e.get("kind") == "assign_batch"]
        row.pending_effects = [*others, *held]
        flag_modified(row, "pending_effects")
        if row.reason != wait[:1024]:
            row.reason = wait[:1024]
            logger.info("rollout %s: %s", row.id, wait)
        s.add(row)
        return not others

    def run_pending(self, claim: Claim) -> None:
        """Run the pending effects in order until none is left (or only a held assignment).

        Raises:
            LeaseLost: another holder took the rollout; the effects not yet removed stay listed.
        """
        while True:
            with Session(self.db) as s:
                self.leases.guard(s, claim)
                row = s.get(Rollout, claim.rollout_id)
                assert row is not None
                if not row.pending_effects:
                    s.commit()
                    return
                if row.pending_effects[0].get("kind") == "assign_batch" and self._hold_assignments(s, row):
                    s.commit()
                    return
                effect = dict(row.pending_effects[0])
                kind = effect["kind"]
                s.commit()  # the lease is renewed; each effect takes its own transaction (SQLite: one writer)
                if kind == "audit" and isinstance(self.audit, TransactionalAudit):
                    self._audit_and_pop(claim, effect, self.audit)
                    continue
                if kind == "assign_batch":
                    self.deployer.assign(s, claim, row, effect)
                elif kind == "start_rollback":
                    self.deployer.rollback(s, claim, row, effect)
                elif kind == "audit":
                    self._audit(row, effect)
                elif kind == "cancel_pending":  # evaluate_gates: next tick; pause: the state is it
                    logger.info(
                        "rollout %s: %s; assigned installs proceed, later batches are not assigned",
                        row.id,
                        effect.get("reason", ""),
                    )
                self._pop(s, claim)

    def _pop(self, s: Session, claim: Claim) -> None:
        self.leases.guard(s, claim)
        row = s.get(Rollout, claim.rollout_id)
        assert row is not None
        row.pending_effects = list(row.pending_effects[1:])
        flag_modified(row, "pending_effects")
        s.add(row)
        s.commit()

    def _audit_entry(self, effect: dict[str, Any]) -> tuple[Actor, str, dict[str, Any]]:
        a = effect.get("actor") or {}
        actor = Actor(
            str(a.get("kind", "system")), str(a.get("id", "")), str(a.get("name", "")), str(a.get("role", ""))
        )
        replica = self.leases.holder  # which replica advanced it
        details = {**dict(effect.get("details") or {}), "replica": replica}
        return actor, str(effect["action"]), details

    def _audit(self, row: Rollout, effect: dict[str, Any]) -> None:
        """At-least-once (a recorder that cannot join the transaction): appended, then popped."""
        actor, action, details = self._audit_entry(effect)
        self.audit.record(actor, action, Target("rollout", row.id), details)

    def _audit_and_pop(self, claim: Claim, effect: dict[str, Any], audit: TransactionalAudit) -> None:
        """Exactly once: the entry is appended and the effect popped in one transaction, so a holder
        killed in between leaves neither and the next holder writes the entry once."""
        actor, action, details = self._audit_entry(effect)
        for attempt in (1, 2):
            with Session(self.db) as s:
                self.leases.guard(s, claim)
                row = s.get(Rollout, claim.rollout_id)
                assert row is not None
                if not row.pending_effects or row.pending_effects[0] != effect:
                    s.commit()  # not ours to pop any more (cannot happen under the guard; be safe)
                    return
                try:
                    target = Target("rollout", row.id)
                    audit.record_in(s.connection(), actor, action, target=target, details=details)
                except LookupError:
                    s.rollback()
                    if attempt == 2:
                        raise
                    audit.ensure_head()
                    continue
                self.crash("audited")
                row.pending_effects = list(row.pending_effects[1:])
                flag_modified(row, "pending_effects")
                s.add(row)
                s.commit()
                return

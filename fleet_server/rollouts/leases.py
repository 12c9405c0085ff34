"""Claims on rollouts: which replica advances a rollout now, fenced so a stale holder writes nothing.

**One design, correct on SQLite and PostgreSQL.** A rollout row carries a lease (`lease_owner`,
`lease_expires_at`) and a fencing token (`lease_token`, bumped at every claim). A replica claims
with a conditional ``UPDATE ... WHERE id = ? AND (lease free or expired)``; on PostgreSQL the
candidate is first picked with ``SELECT ... FOR UPDATE SKIP LOCKED`` so replicas scanning at once
take different rollouts instead of queueing. Every write of the holder (persist, each effect)
starts with a guard ``UPDATE rollout SET lease_expires_at = ... WHERE id = ? AND lease_owner = me
AND lease_token = token`` in the same transaction; a holder whose lease expired and was taken over
fails that guard (`LeaseLost`) and writes nothing.

Owns `Claim`, `LeaseLost`, claiming (the next due rollout, a named one, waiting for one), the
guard, holding a claim around a piece of work and releasing it. Does not decide, persist or run
effects (`engine.py`, `deciding.py`, `effects.py`), and is not `fleet_server.coordination.leases`
(one lease row per singleton job): a rollout's lease lives on the rollout's own row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, String, cast, or_, update
from sqlmodel import Session, col, select

from fleet_server.errors import ConflictError, NotFoundError
from fleet_server.observability.logs import log_context
from fleet_server.rollouts.models import Rollout
from fleet_server.rollouts.states import RolloutState as S

logger = logging.getLogger(__name__)

# Advanced on every tick; any other state only while effects of its last step are left to run.
_DUE = [S.RUNNING.value, S.WAITING.value, S.ROLLING_BACK.value]


class LeaseLost(ConflictError):
    """Another replica holds this rollout now; this holder must stop writing."""


class _Killed(BaseException):
    """Test hook: simulates the process dying (the lease is not released)."""


@dataclass(frozen=True)
class Claim:
    rollout_id: str
    token: int


class RolloutLeases:
    """Claims rollouts for one holder (a replica's engine) with leases of `lease` length."""

    def __init__(self, *, db: Engine, holder: str, lease: timedelta, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.holder = holder
        self.lease = lease
        self.clock = clock

    def _free(self, now: datetime) -> Any:
        return or_(
            col(Rollout.lease_owner) == "",
            col(Rollout.lease_expires_at).is_(None),
            col(Rollout.lease_expires_at) < now,
        )

    def _take(self, s: Session, rollout_id: str, now: datetime) -> Claim | None:
        res = s.execute(
            update(Rollout)
            .where(col(Rollout.id) == rollout_id, self._free(now))
            .values(
                lease_owner=self.holder,
                lease_expires_at=now + self.lease,
                lease_token=col(Rollout.lease_token) + 1,
            )
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            s.rollback()
            return None
        token = s.exec(select(Rollout.lease_token).where(Rollout.id == rollout_id)).one()
        s.commit()
        return Claim(rollout_id, int(token))

    def claim_next(self, skip: set[str]) -> Claim | None:
        """The least recently updated due rollout (or one with effects left) not in `skip`, if free."""
        now = self.clock()
        leftovers = cast(col(Rollout.pending_effects), String) != "[]"
        with Session(self.db) as s:
            stmt = (
                select(Rollout.id)
                .where(or_(col(Rollout.state).in_(_DUE), leftovers))
                .where(self._free(now), col(Rollout.id).not_in(skip))
                .order_by(col(Rollout.updated_at))
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            rid = s.exec(stmt).first()
            if rid is None:
                return None
            return self._take(s, rid, now)

    def claim(self, rollout_id: str) -> Claim | None:
        """Claim this rollout if its lease is free or expired; None if another holder has it."""
        with Session(self.db) as s:
            return self._take(s, rollout_id, self.clock())

    def release(self, claim: Claim) -> None:
        with Session(self.db) as s:
            s.execute(
                update(Rollout)
                .where(
                    col(Rollout.id) == claim.rollout_id,
                    col(Rollout.lease_owner) == self.holder,
                    col(Rollout.lease_token) == claim.token,
                )
                .values(lease_owner="", lease_expires_at=None)
            )
            s.commit()

    def guard(self, s: Session, claim: Claim) -> None:
        """First statement of every holder write: extends the lease if it is still ours.

        Raises:
            LeaseLost: the lease expired and another holder took it (the transaction is rolled back).
        """
        res = s.execute(
            update(Rollout)
            .where(
                col(Rollout.id) == claim.rollout_id,
                col(Rollout.lease_owner) == self.holder,
                col(Rollout.lease_token) == claim.token,
            )
            .values(lease_expires_at=self.clock() + self.lease)
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            s.rollback()
            raise LeaseLost(f"rollout {claim.rollout_id}: lease lost (token {claim.token})")

    def hold(self, claim: Claim, work: Callable[[Claim], Any]) -> Any:
        """Run `work` under the claim; release it afterwards unless the process 'died' (_Killed)."""
        try:
            with log_context(rollout_id=claim.rollout_id):
                out = work(claim)
        except LeaseLost as err:
            logger.warning("%s", err)
            return None
        except Exception:
            self.release(claim)
            raise
        self.release(claim)
        return out

    def wait_claim(self, rollout_id: str, wait_s: float = 10.0) -> Claim:
        """Claim this rollout, retrying while another holder has it for up to `wait_s`.

        Raises:
            NotFoundError: no such rollout.
            ConflictError: another replica still holds it after `wait_s`.
        """
        deadline = time.monotonic() + wait_s
        while True:
            with Session(self.db) as s:
                if s.get(Rollout, rollout_id) is None:
                    raise NotFoundError(f"rollout {rollout_id} not found")
            claim = self.claim(rollout_id)
            if claim is not None:
                return claim
            if time.monotonic() > deadline:
                raise ConflictError(f"rollout {rollout_id} is being advanced by another replica; retry")
            time.sleep(0.05)

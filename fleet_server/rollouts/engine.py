"""`RolloutEngine`: advances persisted rollouts, one replica at a time per rollout, exactly once.

The coordinator: it claims a rollout, decides, steps the state machine, persists, and runs the
effects, each through its own module. The state machine itself is `machine.py` (pure), targeting
`planning.py`, statistics `gates.py` / `judge.py`.

- `leases.py`: claims. A lease and a fencing token on the rollout row; every write of the holder
  starts with a guard, so a holder whose lease was taken over writes nothing (`LeaseLost`).
- `authoring.py`: creating rollouts (with `targeting.py`) and the per-model rollout policy.
- `deciding.py` (with `looks.py`): the next event from the database, or none yet.
- `effects.py` (with `deploying.py`): running a step's effects, persisted as data.

**Step, then effects.** The engine decides the next event from the database (batch installs from
`ota_device_status`, silent devices past the timeout, metric windows through the `MetricsSource`
port for the batch vs a control cohort of matching devices still on the previous model, over the
same window), calls `machine.step`, and commits the new record together with the step's effects
as data (`rollout.pending_effects`) and the gate results, *before* running any effect. Persisting
a step also checks the record's `transition`, so no transition is applied twice. Effects then run
one by one, each removed from the list in the transaction that does its work, so a holder killed
between persist and effects leaves the effects listed and the next holder (after the lease
expires) runs them before deciding anything.

**Not done here:** cancelling assignments a device has not started (abort and a breach pause stop
further batches; devices already assigned install or report failure, guarded by their own
on-device gates; a rollback returns them), and a cross-process lock on the on-disk TUF repository
(replicas share the database; the repository writes are serialized per process by OtaService).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete
from sqlalchemy.orm.attributes import flag_modified
from sqlmodel import Session, col

from fleet_server.audit.chain import Actor
from fleet_server.audit.port import AuditRecorder
from fleet_server.models import utcnow
from fleet_server.rollouts.authoring import Authoring
from fleet_server.rollouts.deciding import Decider
from fleet_server.rollouts.deploying import Deployer
from fleet_server.rollouts.effects import EffectRunner, effect_dict
from fleet_server.rollouts.leases import Claim, LeaseLost, RolloutLeases
from fleet_server.rollouts.machine import AssignBatch, Ctx, Effect, RolloutRecord, step
from fleet_server.rollouts.models import Rollout, RolloutDevice, RolloutHold, store_record, to_record
from fleet_server.rollouts.ports import MetricsSource, OtaPort, no_metrics
from fleet_server.rollouts.schemas import RolloutCreate, RolloutPolicy
from fleet_server.rollouts.states import TERMINAL, BreachPolicy, RolloutEvent
from fleet_server.rollouts.targeting import join_late_devices

logger = logging.getLogger(__name__)

E = RolloutEvent
SYSTEM = Actor.system("rollout-engine")


class RolloutEngine:
    """Create rollouts, apply operator events, and advance due rollouts on a timer (`start`)."""

    def __init__(
        self,
        *,
        engine: Engine,
        ota: OtaPort,
        audit: AuditRecorder,
        metrics: MetricsSource = no_metrics,
        notify: Callable[[str], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
        holder: str | None = None,
        lease_s: float = 60.0,
        tick_s: float = 2.0,
    ) -> None:
        self.db = engine
        self.ota = ota
        self.audit = audit
        self.metrics = metrics
        self.notify = notify
        self.clock = clock
        self.holder = (holder or f"engine-{secrets.token_hex(4)}")[:64]
        self.lease = timedelta(seconds=lease_s)
        self.tick_s = tick_s
        self.crash_hook: Callable[[str], None] | None = None  # tests: raise at a named point
        self._poke = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._leases = RolloutLeases(db=engine, holder=self.holder, lease=self.lease, clock=clock)
        self._decider = Decider(clock=clock, metrics=metrics)
        deployer = Deployer(
            db=engine, leases=self._leases, ota=ota, notify=notify, clock=clock, crash=self._crash
        )
        self._effects = EffectRunner(
            db=engine, leases=self._leases, deployer=deployer, audit=audit, clock=clock, crash=self._crash
        )
        self._authoring = Authoring(
            db=engine, audit=audit, clock=clock, start=lambda rid, actor: self.act(rid, E.START, actor)
        )

    # ------------------------------------------------------------ loop

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"rollouts-{self.holder}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._poke.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def poke(self) -> None:
        """Advance now instead of at the next tick (e.g. an OTA report arrived)."""
        self._poke.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the loop outlives a database outage
                logger.exception("rollout tick failed")
            self._poke.wait(self.tick_s)
            self._poke.clear()

    def tick(self) -> int:
        """Claim due rollouts one at a time and advance each; returns how many were advanced."""
        done: set[str] = set()
        while (claim := self._leases.claim_next(done)) is not None:
            done.add(claim.rollout_id)
            self._leases.hold(claim, lambda c: self._advance(c, None, None))
        return len(done)

    def advance(self, rollout_id: str) -> bool:
        """Advance one rollout now if no other replica holds it; False if it is held."""
        claim = self._claim(rollout_id)
        if claim is None:
            return False
        self._leases.hold(claim, lambda c: self._advance(c, None, None))
        return True

    # ------------------------------------------------------------ operator surface

    def act(self, rollout_id: str, event: RolloutEvent, actor: Actor, reason: str = "") -> None:
        """An operator event (start, pause, resume, abort, rollback), applied now.

        Raises:
            NotFoundError: no such rollout.
            RolloutRefused (ConflictError): the state does not allow it; nothing changed.
            ConflictError: another replica holds the rollout for longer than the wait.
        """
        claim = self._leases.wait_claim(rollout_id)
        self._leases.hold(
            claim, lambda c: self._advance(c, event, Ctx(actor=actor.name or actor.id, detail=reason), actor)
        )

    def create(self, spec: RolloutCreate, actor: Actor) -> str:
        """Plan and store a rollout (a draft, started at once when `spec.start`); returns its id.

        Raises:
            NotFoundError: a release does not exist.
            InvalidRequestError: releases overlap on a profile, a selected profile has no artifact,
                no device matches, batches that do not add up.
            ConflictError: a matching device is held by another active rollout.
        """
        return self._authoring.create(spec, actor)

    def policy(self, model_name: str) -> tuple[RolloutPolicy, bool]:
        """A registered model's rollout policy and whether one is stored (else the default)."""
        return self._authoring.policy(model_name)

    def set_policy(self, model_name: str, policy: RolloutPolicy, actor: Actor) -> None:
        """Store a model's rollout policy (audited).

        Raises:
            InvalidRequestError: its batches do not add up.
        """
        self._authoring.set_policy(model_name, policy, actor)

    def start_for_model(
        self, *, model_name: str, version: str, releases: list[int], devices: list[str], actor: Actor
    ) -> dict[str, Any]:
        """A rollout of a registry version's releases (one per profile) to `devices`, with the
        model's rollout policy; returns {"rollout_id", "releases": {seq: {"deployment_id",
        "devices"}}} (the deployment of the first batch)."""
        return self._authoring.start_for_model(
            model_name=model_name, version=version, releases=releases, devices=devices, actor=actor
        )

    # ------------------------------------------------------------ advancing

    def _advance(
        self, claim: Claim, event: RolloutEvent | None, ctx: Ctx | None, actor: Actor = SYSTEM
    ) -> None:
        self._effects.run_pending(claim)
        if event is not None:
            self._step(claim, lambda s, row: (event, ctx or Ctx()), actor)
            return
        for _ in range(8):  # e.g. settled -> gates passed -> next batch assigned, in one claim
            if not self._step(claim, self._decider.decide, SYSTEM):
                return

    def _step(
        self,
        claim: Claim,
        decide: Callable[[Session, Rollout], tuple[RolloutEvent, Ctx] | None],
        actor: Actor,
    ) -> bool:
        """Decide, step, and persist record + effects + observations in one transaction; then run
        the effects. False when there was nothing to do."""
        with Session(self.db) as s:
            self._guard(s, claim)
            row = s.get(Rollout, claim.rollout_id)
            assert row is not None
            if row.pending_effects and not self._effects.awaiting_download(row):  # leftovers: run them first
                s.commit()
                self._effects.run_pending(claim)
                return True
            decided = decide(s, row)
            if decided is None:
                s.commit()  # observations (device statuses, gate looks) only
                return False
            event, ctx = decided
            record = to_record(row)
            new, effects = step(record, event, ctx)  # raises RolloutRefused: nothing is written
            self._persist(s, row, new, effects, actor)
            s.commit()
        self._crash("persisted")
        self._effects.run_pending(claim)
        return True

    def _persist(
        self, s: Session, row: Rollout, new: RolloutRecord, effects: list[Effect], actor: Actor
    ) -> None:
        now = self.clock()
        store_record(row, new)
        row.pending_effects = [effect_dict(e, actor) for e in effects]
        row.updated_at = now
        flag_modified(row, "pending_effects")
        s.add(row)
        if any(isinstance(e, AssignBatch) for e in effects):
            join_late_devices(s, row, self.clock)
        if new.state in TERMINAL:
            s.execute(delete(RolloutHold).where(col(RolloutHold.rollout_id) == row.id))

    # ------------------------------------------------------------ claims (tests reach these)

    def _claim(self, rollout_id: str) -> Claim | None:
        return self._leases.claim(rollout_id)

    def _guard(self, s: Session, claim: Claim) -> None:
        self._leases.guard(s, claim)

    def _crash(self, point: str) -> None:
        if self.crash_hook is not None:
            self.crash_hook(point)


def describe_counts(devices: Sequence[RolloutDevice]) -> dict[str, int]:
    return dict(Counter(d.status for d in devices))


__all__ = [
    "BreachPolicy",
    "LeaseLost",
    "MetricsSource",
    "OtaPort",
    "RolloutEngine",
    "describe_counts",
    "no_metrics",
]

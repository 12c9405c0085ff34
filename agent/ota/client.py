"""`OtaClient`: the agent's ModelExecutor that installs signed model updates.

Owns the effect loop around the pure machine: persist the record, report the transition through
the telemetry outbox (exactly the transition numbers the machine assigned; a report lost to a
crash is re-sent at start), then do the state's work (`work.py`) and feed the outcome back. A
transient failure is retried after an exponential backoff with jitter (`UpdateRetry`, counted by
the machine, so an update ends in `failed` with its reason after a bounded time). Checks the TUF
repository when the fleet server pushes an assignment and every `poll_interval_s`. While metadata
cannot be refreshed (offline, expired, tampered) it installs nothing and the serving model keeps
serving; metadata *refused* (verification failed) while the fleet server's desired state names a
deployment this device has not run is reported against that deployment (state `refused`, with
the reason), so the operator sees it. Does not build its adapters (the daemon does).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Protocol

from agent.backoff import Backoff
from agent.errors import IntegrityError, TransportError
from agent.ota.crash import CrashPoints
from agent.ota.machine import MAX_ATTEMPTS, Report, RunState, UpdateRecord, assign, in_flight, refuse, step
from agent.ota.states import UpdateEvent, UpdateState
from agent.ota.store import RecordStore
from agent.ota.trust import Plan, Trust
from agent.ota.work import Work
from agent.ports import Clock
from agent.reconcile import InstallModel, RemoveModel
from agent.state import DesiredState, SlotState

logger = logging.getLogger(__name__)

SLOT = "default"


@dataclass(frozen=True)
class UpdateRetry:
    """How often and how patiently a state's work is retried after a transient failure."""

    attempts: int = MAX_ATTEMPTS  # the attempt that reaches this ends the update (failed)
    initial_s: float = 2.0
    max_s: float = 60.0
    jitter: float = 0.3

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Delay before attempt number `attempt` + 1 (`attempt` >= 1 failures so far)."""
        backoff = Backoff(
            self.initial_s, self.max_s, jitter=self.jitter, rng=rng, attempt=max(0, attempt - 1)
        )
        return backoff.next_delay()


class ReportSink(Protocol):
    def append(
        self, *, timestamp_ms: int, kind: str, metrics: dict[str, float], payload: bytes = b""
    ) -> int: ...


class OtaClient:
    """Implements `agent.reconciler.ModelExecutor`; `run(stop)` is its task."""

    def __init__(
        self,
        *,
        trust: Trust,
        work: Work,
        store: RecordStore,
        reports: ReportSink,
        clock: Clock,
        poll_interval_s: float = 300.0,
        crash: CrashPoints | None = None,
        notify: Callable[[], None] | None = None,
        retry: UpdateRetry | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._trust = trust
        self._work = work
        self._store = store
        self._reports = reports
        self._clock = clock
        self._poll_s = poll_interval_s
        self._crash = crash or CrashPoints()
        self._notify = notify
        self._retry = retry or UpdateRetry()
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self.record = store.load()
        self.last_error = ""
        self.desired_deployment: tuple[str, int] | None = None  # (deployment id, release seq) pushed

    # ------------------------------------------------------------ ModelExecutor

    def slots(self) -> tuple[SlotState, ...]:
        model = self._work.serving.serving()
        if model is None:
            return ()
        return (
            SlotState(slot=SLOT, model_name=model.name, model_version=model.version, sha256=model.sha256),
        )

    def submit(self, actions: list[InstallModel | RemoveModel], desired: DesiredState) -> None:
        for action in actions:
            if isinstance(action, RemoveModel):
                logger.info("ignoring model removal slot=%s: the serving model is kept", action.slot)
        wanted = [m for m in desired.models if m.deployment_id and m.slot == SLOT] or [
            m for m in desired.models if m.deployment_id
        ]
        self.desired_deployment = (wanted[0].deployment_id, _seq(wanted[0].release_id)) if wanted else None
        if any(isinstance(a, InstallModel) for a in actions):
            self._wake.set()

    def installed_by(self, sha256: str) -> tuple[str, float, int] | None:
        """(deployment id, shadow agreement, rows compared) of the deployment whose artifact is
        `sha256`, for live model metrics; agreement -1 (rows 0) when this process measured none
        for it (no shadow run, or the agent restarted since). None: no deployment of ours."""
        rec = self.record
        artifact = rec.plan.get("artifact") if isinstance(rec.plan, dict) else None
        if not sha256 or not rec.deployment_id or not isinstance(artifact, dict):
            return None
        if artifact.get("sha256") != sha256:
            return None
        shadow = self._work.last_shadow
        if shadow is None or shadow[0] != sha256:
            return rec.deployment_id, -1.0, 0
        return rec.deployment_id, shadow[1], shadow[2]

    # ------------------------------------------------------------ task

    async def run(self, stop: asyncio.Event) -> None:
        """Resume an interrupted update, then check for assignments until `stop` is set."""
        self._flush_unreported()
        if in_flight(self.record):
            await self._drive(UpdateEvent.RESUMED, "agent restarted", stop)
        while not stop.is_set():
            self._wake.clear()  # an assignment pushed while checking wakes the next check at once
            await self.check_once(stop)
            waiters = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
            await asyncio.wait(waiters, timeout=self._poll_s, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()

    async def check_once(self, stop: asyncio.Event) -> None:
        """One repository check; starts (or continues) a deployment when one is assigned."""
        if in_flight(self.record):  # a transient failure left it here: run the state's work again
            await self._apply(self.record, [RunState(self.record.state)], stop)
            return
        try:
            plan = await asyncio.to_thread(self._trust.resolve)
        except TransportError as err:
            self.last_error = str(err)
            logger.warning("ota check failed, keeping the serving model: %s", err)
            return
        except IntegrityError as err:
            self.last_error = str(err)
            logger.warning("ota check refused, keeping the serving model: %s", err)
            await self._refused(str(err), stop)
            return
        self.last_error = ""
        if plan is None:
            return
        if plan.deployment_id == self.record.deployment_id and self.record.state is not UpdateState.REFUSED:
            return
        record, effects = assign(self.record, deployment_id=plan.deployment_id, plan=plan.to_dict())
        await self._apply(record, effects, stop)

    async def _refused(self, reason: str, stop: asyncio.Event) -> None:
        """Report a metadata refusal against the deployment the fleet server wants on this device.

        Nothing to report against when no deployment is pushed, when it is the one this device
        already ran (the refusal concerns no new install), or when the same refusal was reported.
        """
        wanted = self.desired_deployment
        if wanted is None:
            return
        deployment_id, release_seq = wanted
        rec = self.record
        if deployment_id == rec.deployment_id and (
            rec.state is not UpdateState.REFUSED or rec.detail == reason
        ):
            return
        record, effects = refuse(
            rec, deployment_id=deployment_id, release_seq=release_seq, detail=reason[:1000]
        )
        await self._apply(record, effects, stop)

    async def _drive(self, event: UpdateEvent, detail: str, stop: asyncio.Event) -> None:
        resumed_switch = event is UpdateEvent.RESUMED and self.record.state is UpdateState.SWITCHING
        if resumed_switch and self._work.already_switched(Plan.from_dict(self.record.plan), self.record):
            event, detail = UpdateEvent.SWITCHED, "switch completed before restart"
        record = replace(self.record, restarts=self.record.restarts + (event is UpdateEvent.RESUMED))
        record, effects = step(record, event, detail=detail, max_attempts=self._retry.attempts)
        await self._apply(record, effects, stop)

    async def _apply(
        self, record: UpdateRecord, effects: list[Report | RunState], stop: asyncio.Event
    ) -> None:
        while True:
            reports = [e for e in effects if isinstance(e, Report)]
            if reports:
                record = replace(record, unreported=asdict(reports[-1]))
            self._save(record)
            for report in reports:
                self._log(report)
            self._crash.hit(f"saved:{record.state}")
            self._flush_unreported()
            runs = [e for e in effects if isinstance(e, RunState)]
            if not runs:
                self._work.finished(record)
                return
            if runs[0].attempt and await self._backoff(runs[0].attempt, stop):
                return  # stopping: the state's work runs again after the restart
            self._crash.hit(f"before:{record.state}")
            outcome = await self._work.run(record, stop, save=self._save)
            if outcome is None:  # stopping: stay in the state, resume later
                return
            self._crash.hit(f"after:{record.state}")
            record, effects = step(
                self.record, outcome.event, detail=outcome.detail, max_attempts=self._retry.attempts
            )

    async def _backoff(self, attempt: int, stop: asyncio.Event) -> bool:
        """Wait the backoff before attempt `attempt` + 1; True when `stop` was set meanwhile."""
        delay = self._retry.delay(attempt, self._rng)
        try:
            await asyncio.wait_for(stop.wait(), timeout=delay)
        except TimeoutError:
            return False
        return True

    def _save(self, record: UpdateRecord) -> None:
        self._store.save(record)
        self.record = record

    def _flush_unreported(self) -> None:
        pending = self.record.unreported
        if not pending:
            return
        payload = json.dumps(
            {
                "deployment_id": pending["deployment_id"],
                "release_seq": pending["release_seq"],
                "transition": pending["transition"],
                "from": str(pending["from_state"]),
                "to": str(pending["to_state"]),
                "event": str(pending["event"]),
                "detail": pending["detail"],
            }
        ).encode()
        self._reports.append(
            timestamp_ms=self._clock.time_ms(),
            kind="ota",
            metrics={"transition": float(pending["transition"])},
            payload=payload,
        )
        self._save(replace(self.record, unreported={}))
        if self._notify is not None:
            self._notify()

    @staticmethod
    def _log(report: Report) -> None:
        logger.info(
            "ota transition from=%s to=%s event=%s deployment_id=%s release=%d detail=%s",
            report.from_state, report.to_state, report.event, report.deployment_id,
            report.release_seq, report.detail,
        )  # fmt: skip


def _seq(release_id: str) -> int:
    """The release sequence in a desired-state assignment (0 when it is not a plain number)."""
    return int(release_id) if release_id.isdigit() and len(release_id) < 19 else 0

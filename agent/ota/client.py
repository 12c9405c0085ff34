"""`OtaClient`: the agent's ModelExecutor that installs signed model updates.

Owns the effect loop around the pure machine: persist the record, report the transition through
the telemetry outbox (exactly the transition numbers the machine assigned; a report lost to a
crash is re-sent at start), then do the state's work (`work.py`) and feed the outcome back. Checks
the TUF repository when the fleet server pushes an assignment and every `poll_interval_s`. While
metadata cannot be refreshed (offline, expired, tampered) it installs nothing and the serving
model keeps serving. Does not build its adapters (the daemon does).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Protocol

from agent.errors import IntegrityError, TransportError
from agent.ota.crash import CrashPoints
from agent.ota.machine import Report, RunState, UpdateRecord, assign, in_flight, step
from agent.ota.states import UpdateEvent, UpdateState
from agent.ota.store import RecordStore
from agent.ota.trust import Plan, Trust
from agent.ota.work import Work
from agent.ports import Clock
from agent.reconcile import InstallModel, RemoveModel
from agent.state import DesiredState, SlotState

logger = logging.getLogger(__name__)

SLOT = "default"


class ReportSink(Protocol):
    def append(
        self, *, timestamp_ms: int, kind: str, metrics: dict[str, float], payload: bytes = b""
    ) -> int: ...


class OtaClient:
    """Implements `agent.sync.ModelExecutor`; `run(stop)` is its task."""

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
    ) -> None:
        self._trust = trust
        self._work = work
        self._store = store
        self._reports = reports
        self._clock = clock
        self._poll_s = poll_interval_s
        self._crash = crash or CrashPoints()
        self._notify = notify
        self._wake = asyncio.Event()
        self.record = store.load()
        self.last_error = ""

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
        if any(isinstance(a, InstallModel) for a in actions):
            self._wake.set()

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
        except (IntegrityError, TransportError) as err:
            self.last_error = str(err)
            logger.warning("ota check refused, keeping the serving model: %s", err)
            return
        self.last_error = ""
        if plan is None or plan.deployment_id == self.record.deployment_id:
            return
        record, effects = assign(self.record, deployment_id=plan.deployment_id, plan=plan.to_dict())
        await self._apply(record, effects, stop)

    async def _drive(self, event: UpdateEvent, detail: str, stop: asyncio.Event) -> None:
        resumed_switch = event is UpdateEvent.RESUMED and self.record.state is UpdateState.SWITCHING
        if resumed_switch and self._work.already_switched(Plan.from_dict(self.record.plan), self.record):
            event, detail = UpdateEvent.SWITCHED, "switch completed before restart"
        record = replace(self.record, restarts=self.record.restarts + (event is UpdateEvent.RESUMED))
        record, effects = step(record, event, detail=detail)
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
            self._crash.hit(f"before:{record.state}")
            outcome = await self._work.run(record, stop, save=self._save)
            if outcome is None:  # transient failure or stopping: stay in the state, resume later
                return
            self._crash.hit(f"after:{record.state}")
            record, effects = step(self.record, outcome.event, detail=outcome.detail)

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

"""The auto-retrain policy, persisted (`fl_auto_retrain`), and run by the `drift-trigger` lease holder.

`PUT /federated/auto-retrain` on any replica validates the settings by building the trigger
(`make_trigger`: a bad spec or registry model fails the request, not a thread later), stores them
with a bumped `version` and wakes the replicas (`edgeloop_fl`, `auto-retrain`). Only the holder of
the `drift-trigger` lease runs a `DriftRetrainTrigger`: on acquiring the lease, at every wake-up
and every `poll_s`, it (re)builds its trigger when the stored version moved, and writes the
trigger's counters back into the row (fenced), so `GET` on any replica shows them with the holder's
id. A lost lease stops the local trigger at once.

Owns the row and the holder's trigger. Does not decide what to retrain (trigger.py, drift policy).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from fleet_server.coordination.bus import Bus
from fleet_server.coordination.leases import LeaseGrant, LeaseStore
from fleet_server.coordination.wakeloop import WakeLoop
from fleet_server.federated.models import FlAutoRetrain
from fleet_server.federated.relay import CHANNEL
from fleet_server.federated.trigger import DriftRetrainTrigger
from fleet_server.models import utcnow

logger = logging.getLogger(__name__)

LEASE = "drift-trigger"
ROW = "default"
MakeTrigger = Callable[[dict[str, Any], float], DriftRetrainTrigger]


class AutoRetrain:
    """The persisted policy and, on the lease holder, its running trigger."""

    def __init__(
        self,
        *,
        engine: Engine,
        leases: LeaseStore,
        bus: Bus,
        replica_id: str,
        make_trigger: MakeTrigger | None = None,
        poll_s: float = 2.0,
    ) -> None:
        self._engine, self._leases, self._bus = engine, leases, bus
        self.replica_id, self.make_trigger = replica_id, make_trigger
        self._lock = threading.RLock()
        self._grant: LeaseGrant | None = None
        self._version = -1  # the stored version the local trigger was built from
        self._reported: dict[str, Any] = {}
        self.trigger: DriftRetrainTrigger | None = None
        self._worker = WakeLoop("fl-auto-retrain", self._step, poll_s=poll_s)
        bus.subscribe(CHANNEL, self._on_bus)
        bus.on_reconnect(self._worker.wake)

    # ------------------------------------------------------------------ any replica

    def enable(self, request: dict[str, Any], interval_s: float, *, by: str) -> dict[str, Any]:
        """Validate (raises as `make_trigger` does), store, wake the holder; returns the status."""
        assert self.make_trigger is not None, "wire make_trigger first"
        self.make_trigger(request, interval_s)  # validation only: not started
        self._store(enabled=True, request=request, interval_s=interval_s, by=by)
        return self.status()

    def disable(self, *, by: str) -> None:
        self._store(enabled=False, request=None, interval_s=None, by=by)

    def status(self) -> dict[str, Any]:
        """`{"enabled": False}` when off; else the holder's trigger status, and which replica holds it."""
        with Session(self._engine) as s:
            row = s.get(FlAutoRetrain, ROW)
        if row is None or not row.enabled:
            return {"enabled": False}
        with self._lock:
            local = (
                self.trigger.status() if self.trigger is not None and self._version == row.version else None
            )
        holder = self._leases.current(LEASE)
        base = {"enabled": True, "alive": False, "interval_s": row.interval_s}
        return base | (local or dict(row.status)) | {"holder": holder.holder if holder else ""}

    def _store(
        self, *, enabled: bool, request: dict[str, Any] | None, interval_s: float | None, by: str
    ) -> None:
        with Session(self._engine) as s:
            row = s.get(FlAutoRetrain, ROW) or FlAutoRetrain(name=ROW)
            row.enabled, row.version = enabled, row.version + 1
            if request is not None and interval_s is not None:
                row.request, row.interval_s = request, interval_s
            row.updated_by, row.updated_at, row.status = by[:64], utcnow(), {}
            s.add(row)
            s.commit()
        self.reload()  # this replica may be the holder: apply before answering
        try:
            self._bus.publish(CHANNEL, "auto-retrain")
        except Exception:  # the holder's poll picks the change up
            logger.warning("auto-retrain bus notify failed", exc_info=True)

    # ------------------------------------------------------------------ lease holder

    def on_acquired(self, grant: LeaseGrant) -> None:
        logger.info("drift-trigger lease acquired replica=%s token=%d", self.replica_id, grant.token)
        with self._lock:
            self._grant, self._version = grant, -1
        self._worker.wake()

    def on_lost(self) -> None:
        with self._lock:
            self._grant = None
            self._set(None, -1)

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()
        with self._lock:
            self._set(None, -1)

    def _on_bus(self, payload: str) -> None:
        if payload == "auto-retrain":
            self._worker.wake()

    def _step(self) -> None:
        self.reload()
        self._report()  # fenced: LeaseLost when another replica holds the trigger now

    def reload(self) -> None:
        """On the holder: (re)build the trigger when the stored policy changed."""
        with self._lock:
            if self._grant is None or self.make_trigger is None:
                return
            with Session(self._engine) as s:
                row = s.get(FlAutoRetrain, ROW)
            version = row.version if row is not None else 0
            if version == self._version:
                return
            trigger = None
            if row is not None and row.enabled:
                try:
                    trigger = self.make_trigger(dict(row.request), row.interval_s)
                except Exception:
                    logger.exception("stored auto-retrain policy refused version=%d", version)
            self._set(trigger, version)
            logger.info("auto-retrain policy applied version=%d enabled=%s", version, trigger is not None)

    def _report(self) -> None:
        with self._lock:
            grant, trigger, version = self._grant, self.trigger, self._version
        if grant is None or trigger is None:
            return
        status = trigger.status()
        if status == self._reported:
            return  # written only when it changed (at most once per check)
        with Session(self._engine) as s:
            self._leases.guard(s, grant)
            row = s.get(FlAutoRetrain, ROW)
            if row is not None and row.version == version:
                row.status = status
                s.add(row)
                s.commit()
                self._reported = status

    def _set(self, trigger: DriftRetrainTrigger | None, version: int) -> None:
        if self.trigger is not None:
            self.trigger.stop()
        self.trigger, self._version = trigger, version
        if trigger is not None:
            trigger.start()

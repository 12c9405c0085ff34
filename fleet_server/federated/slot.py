"""The one-run slot of a server process: which run holds it, its thread and its stop signal.

A run takes the slot (`take`: ConflictError at once when another run holds it, before anything
is allocated), has its thread started under the slot's lock (`launch`: a cancel never sees a
thread it cannot join yet), is told to stop (`signal_stop` for a cancel or a shutdown, `abandon`
when the lease is lost) and gives the slot back (`release`). The run's thread looks at the signal
at every checkpoint (`check_stop` raises `RunCancelledError`).

Owns: the slot, the thread handle and the stop signal with what the run should end as. Does not
wait for the thread, record anything or decide why a run ends (runner.py, run_records.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from fleet_server.audit.chain import Actor
from fleet_server.errors import ConflictError
from fleet_server.federated.lifecycle import RunStatus
from fleet_server.federated.run_records import SYSTEM
from fleet_server.federated.runspec import Fence, RunSpec


class RunCancelledError(Exception):
    """Raised inside a run's thread at the next checkpoint after `cancel()`."""


def check_stop(stop: threading.Event) -> None:
    if stop.is_set():
        raise RunCancelledError


@dataclass
class ActiveRun:
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


class RunSlot:
    """At most one run at a time; `thread` is the last run's thread (for `FederatedRunner.wait`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: ActiveRun | None = None
        self.thread: threading.Thread | None = None

    def busy(self) -> bool:
        with self._lock:
            return self._active is not None

    def holder(self) -> str | None:
        """Id of the run holding the slot, also while it is being recorded and launched."""
        with self._lock:
            return self._active.run_id if self._active is not None else None

    def current(self) -> str | None:
        """Id of the run holding the slot (None when idle or while a start is being prepared)."""
        with self._lock:
            return self._active.run_id if self._active is not None and self._active.thread else None

    def active(self) -> ActiveRun | None:
        with self._lock:
            return self._active

    def take(self, run_id: str) -> ActiveRun:
        """Raises: ConflictError when another run holds the slot."""
        with self._lock:
            if self._active is not None:
                holder = self._active.run_id
                raise ConflictError(
                    f"federated run {holder} is in progress; wait for it or cancel it "
                    f"(edgeloop fl cancel {holder})"
                )
            active = self._active = ActiveRun(run_id=run_id)
        return active

    def launch(self, active: ActiveRun, thread: threading.Thread) -> None:
        with self._lock:  # started under the lock: a cancel never sees a thread it cannot join yet
            active.thread = self.thread = thread
            thread.start()

    def signal_stop(
        self, run_id: str, status: RunStatus, detail: str, by: str, actor: Actor
    ) -> ActiveRun | None:
        """Tell `run_id`'s thread to stop and end as `status`; None when it does not hold the slot."""
        with self._lock:
            active = self._active if self._active is not None and self._active.run_id == run_id else None
            if active is not None:
                active.stop_status, active.cancel_detail, active.cancel_by = status, detail, by
                active.stop_actor = actor
                active.stop.set()
        return active

    def abandon(self) -> ActiveRun | None:
        """Tell the running run's thread to stop and record nothing; None when no run is running."""
        with self._lock:
            active = self._active
            if active is None or active.thread is None:
                return None
            active.abandoned = True
            active.stop.set()
        return active

    def release(self, active: ActiveRun) -> None:
        with self._lock:
            if self._active is active:
                self._active = None

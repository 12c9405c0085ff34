"""The registry's compile worker: one job at a time in a thread, on one replica at a time.

Owns the job queue and its thread, and with replicas the `registry-compile` lease (`leases`):
the holder queues, when it acquires the lease, every version left registered or compiling (by a
holder that died), then polls the database for versions registered on any replica; a holder that
lost the lease writes no result (`_fence`). Does not compile, judge or release a version
(`ModelRegistry.process` in service.py does, for each job).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from fleet_server.coordination.leases import LeaseGrant, LeaseLost, LeaseStore, Singleton
from fleet_server.registry.models import COMPILING, REGISTERED, ModelVersion

logger = logging.getLogger(__name__)

_STOP = -1
LEASE = "registry-compile"


class CompileWorker:
    """The worker half of `ModelRegistry` (a base class; its `__init__` sets the state below)."""

    _engine: Engine
    _jobs: queue.Queue[int]
    _thread: threading.Thread | None
    _leases: LeaseStore | None
    _poll_s: float
    _queued: set[int]
    _queued_lock: threading.Lock
    _singleton: Singleton | None
    _grant: LeaseGrant | None

    if TYPE_CHECKING:

        def process(self, version_id: int) -> None: ...

    def start(self) -> None:
        """Start the worker: at once without leases, else when this replica holds the lease."""
        if self._singleton is not None:
            self._singleton.start()
            return
        self._start_worker()

    def stop(self, timeout: float = 5.0) -> None:
        if self._singleton is not None:
            self._singleton.stop()  # on_lost stops the worker, then the lease is released
        self._stop_worker(timeout)

    def idle(self) -> bool:
        return self._jobs.unfinished_tasks == 0

    @property
    def compiles_here(self) -> bool:
        """Whether this replica runs the compile worker now."""
        return self._thread is not None

    def _acquired(self, grant: LeaseGrant) -> None:
        self._grant = grant
        self._start_worker()

    def _lost(self) -> None:
        self._grant = None
        self._stop_worker(0.0)  # a compile in flight finishes, but its results are fenced

    def _start_worker(self) -> None:
        """Requeue versions a previous holder or process left registered or compiling; run the worker."""
        if self._thread is not None:
            return
        self._enqueue_pending()
        self._thread = threading.Thread(target=self._work_loop, name="registry-compile", daemon=True)
        self._thread.start()

    def _stop_worker(self, timeout: float) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(_STOP)
            if timeout:
                thread.join(timeout)

    def _enqueue_pending(self) -> None:
        with Session(self._engine) as s:
            pending = s.exec(
                select(ModelVersion).where(col(ModelVersion.status).in_([REGISTERED, COMPILING]))
            )
            for version in pending:
                if version.compile_spec.get("profiles"):
                    self._enqueue(row_id(version))

    def _enqueue(self, version_id: int) -> None:
        with self._queued_lock:
            if version_id in self._queued:
                return
            self._queued.add(version_id)
        self._jobs.put(version_id)

    def _work_loop(self) -> None:
        while True:
            try:
                version_id = self._jobs.get(timeout=self._poll_s if self._leases is not None else None)
            except queue.Empty:  # versions registered on other replicas
                try:
                    self._enqueue_pending()
                except Exception:
                    logger.exception("registry: polling for registered versions failed")
                continue
            if version_id == _STOP:
                self._jobs.task_done()
                return
            try:
                self.process(version_id)
            except LeaseLost as err:
                logger.warning("registry compile fenced version_id=%d: %s", version_id, err)
            except Exception:  # one bad version must not stop the worker
                logger.exception("registry job failed version_id=%d", version_id)
            finally:
                with self._queued_lock:
                    self._queued.discard(version_id)
                self._jobs.task_done()

    def _fence(self, session: Session) -> None:
        """With leases: raise LeaseLost unless this replica still holds `registry-compile`."""
        if self._leases is None:
            return
        grant = self._grant
        if grant is None:
            raise LeaseLost(f"{LEASE} is not held by this replica")
        self._leases.guard(session, grant)


def row_id(version: ModelVersion) -> int:
    assert version.id is not None
    return version.id

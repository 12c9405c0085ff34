"""Named crash points for power-loss tests: ``EDGELOOP_OTA_CRASH_AT=before:watching`` kills the
process with SIGKILL when the client reaches that point: ``saved:<state>`` right after the state is
persisted and before its transition report reaches the outbox, ``before:<state>`` right before the
state's work, ``after:<state>`` right after it, before the next state is saved.
Off unless the composition root passes the variable's value; never used for control flow."""

from __future__ import annotations

import logging
import os
import signal

logger = logging.getLogger(__name__)

ENV = "EDGELOOP_OTA_CRASH_AT"


class CrashPoints:
    def __init__(self, spec: str = "") -> None:
        self._spec = spec

    @classmethod
    def from_env(cls) -> CrashPoints:
        return cls(os.environ.get(ENV, ""))

    def hit(self, name: str) -> None:
        if self._spec and name == self._spec:
            logger.warning("crash point reached point=%s: SIGKILL", name)
            os.kill(os.getpid(), signal.SIGKILL)

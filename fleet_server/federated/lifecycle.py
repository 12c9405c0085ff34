"""Lifecycle of a federated run: its states, the allowed transitions, and the reasons it ends.

A run is `running` from the moment it is recorded until it reaches exactly one terminal state:
`completed`, `failed` (with the reason: the exception, too few participants, a server restart,
the runner replica lost mid-run)
or `cancelled` (with who and why). Transitions are data (`TRANSITIONS`), checked by a pure
`is_valid_transition`; the runner applies them with a conditional update, so of two writers (a
cancel and the run's own thread) exactly one wins. Pure: no database, clock or logging here.
"""

from __future__ import annotations

import re
from enum import StrEnum


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
TRANSITIONS = frozenset((RunStatus.RUNNING, end) for end in TERMINAL)

SERVER_RESTARTED = "server restarted mid-run"  # found `running` at startup (the server was killed)
SERVER_STOPPED = "server stopped mid-run"  # the server shut down while the run was in progress
MAX_DETAIL = 500  # the column holds 512
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def is_valid_transition(current: str, new: str) -> bool:
    return (current, new) in TRANSITIONS


def is_terminal(status: str) -> bool:
    return status in TERMINAL


def clean(text: str) -> str:
    """One printable line of at most MAX_DETAIL characters (reasons reach logs, the CLI and the console)."""
    return _CONTROL.sub(" ", text).strip()[:MAX_DETAIL]


def failure_reason(err: BaseException) -> str:
    """`TypeName: message` of an exception that ended a run."""
    message = str(err)
    return clean(f"{type(err).__name__}: {message}" if message else type(err).__name__)


def cancel_reason(by: str, reason: str) -> str:
    """Detail of a cancelled run: who cancelled it and why (the reason may be empty)."""
    why = clean(reason)
    return clean(f"cancelled by {by or 'unknown'}" + (f": {why}" if why else ""))


def replica_lost_reason(replica: str, server_round: int) -> str:
    """Detail of a run whose runner replica died (or lost its lease) and another replica took over."""
    where = f"during round {server_round}" if server_round else "before its first round"
    return clean(f"runner replica {replica} lost {where}")


def no_participants_reason(results: list[int], min_results: int) -> str:
    """Detail of a run none of whose rounds had enough valid results to aggregate."""
    return clean(
        f"no round had enough participants (valid results per round {results}, needed {min_results}):"
        " the model is unchanged, nothing handed off"
    )

"""States, events and the transition table of the model-update machine (pure data, no I/O).

How to read the table: a row ``(STATE, EVENT): NEXT`` says that when the work of STATE reports
EVENT the machine moves to NEXT. Each in-flight state has work (download, verify, stage ...) that
the client runs *after* the state is persisted, so a power cut re-enters the same state and the
work runs again (every step is idempotent). Terminal states (COMMITTED, FAILED, ROLLED_BACK,
REFUSED) are the statuses a deployment ends in; a new assignment leaves them. AWAITING_WINDOW sits
between the gates and the switch while the assignment's apply windows are all closed
(`protos/edgeloop/windows.py`). REFUSED is entered
from a terminal state when the device refuses the repository's metadata for the deployment the
fleet server says it should run (rollback, freeze, rogue key, expiry): nothing was downloaded, the
serving model stays. Three events apply to any in-flight state and are handled in `machine.py`:
RESUMED (the agent restarted inside the state), LOOP_DETECTED (it restarted there too often:
before the switch the update fails, after it the previous model is restored) and RETRY (the
state's work failed transiently: it runs again after a backoff, and after a bounded number of
attempts the state's `GIVE_UP` event ends it with the last error as the reason). Values are
strings because they are persisted.
"""

from __future__ import annotations

from enum import StrEnum


class UpdateState(StrEnum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGING = "staging"
    GOLDEN_CHECK = "golden_check"
    SHADOWING = "shadowing"
    AWAITING_WINDOW = "awaiting_window"  # gates passed; the switch waits for an apply window
    SWITCHING = "switching"
    WATCHING = "watching"
    COMMITTING = "committing"
    REVERTING = "reverting"
    COMMITTED = "committed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    REFUSED = "refused"


class UpdateEvent(StrEnum):
    ASSIGNED = "assigned"
    DOWNLOADED = "downloaded"
    DOWNLOAD_FAILED = "download_failed"
    VERIFIED = "verified"
    VERIFY_FAILED = "verify_failed"
    STAGED = "staged"
    STAGE_FAILED = "stage_failed"
    GOLDEN_PASSED = "golden_passed"
    GOLDEN_FAILED = "golden_failed"
    SHADOW_PASSED = "shadow_passed"
    SHADOW_FAILED = "shadow_failed"
    WINDOW_CLOSED = "window_closed"
    WINDOW_OPENED = "window_opened"
    SWITCHED = "switched"
    SWITCH_FAILED = "switch_failed"
    WATCH_PASSED = "watch_passed"
    WATCH_FAILED = "watch_failed"
    COMMIT_DONE = "commit_done"
    REVERTED = "reverted"
    REVERT_FAILED = "revert_failed"
    RESUMED = "resumed"
    LOOP_DETECTED = "loop_detected"
    RETRY = "retry"
    METADATA_REFUSED = "metadata_refused"


S, E = UpdateState, UpdateEvent

TERMINAL = frozenset({S.IDLE, S.COMMITTED, S.FAILED, S.ROLLED_BACK, S.REFUSED})
# After these states the new model may be serving, so a failure means restoring the previous one.
SWITCHED_STATES = frozenset({S.SWITCHING, S.WATCHING, S.COMMITTING, S.REVERTING})

TRANSITIONS: dict[tuple[UpdateState, UpdateEvent], UpdateState] = {
    (S.IDLE, E.ASSIGNED): S.DOWNLOADING,
    (S.COMMITTED, E.ASSIGNED): S.DOWNLOADING,
    (S.FAILED, E.ASSIGNED): S.DOWNLOADING,
    (S.ROLLED_BACK, E.ASSIGNED): S.DOWNLOADING,
    (S.REFUSED, E.ASSIGNED): S.DOWNLOADING,
    (S.IDLE, E.METADATA_REFUSED): S.REFUSED,
    (S.COMMITTED, E.METADATA_REFUSED): S.REFUSED,
    (S.FAILED, E.METADATA_REFUSED): S.REFUSED,
    (S.ROLLED_BACK, E.METADATA_REFUSED): S.REFUSED,
    (S.REFUSED, E.METADATA_REFUSED): S.REFUSED,
    (S.DOWNLOADING, E.DOWNLOADED): S.VERIFYING,
    (S.DOWNLOADING, E.DOWNLOAD_FAILED): S.FAILED,
    (S.VERIFYING, E.VERIFIED): S.STAGING,
    (S.VERIFYING, E.VERIFY_FAILED): S.FAILED,
    (S.STAGING, E.STAGED): S.GOLDEN_CHECK,
    (S.STAGING, E.STAGE_FAILED): S.FAILED,
    (S.GOLDEN_CHECK, E.GOLDEN_PASSED): S.SHADOWING,
    (S.GOLDEN_CHECK, E.GOLDEN_FAILED): S.FAILED,
    (S.SHADOWING, E.SHADOW_PASSED): S.SWITCHING,
    (S.SHADOWING, E.SHADOW_FAILED): S.FAILED,
    # The assignment carries apply windows and none is open: staged and gated, the switch waits.
    (S.SHADOWING, E.WINDOW_CLOSED): S.AWAITING_WINDOW,
    (S.AWAITING_WINDOW, E.WINDOW_OPENED): S.SWITCHING,
    (S.SWITCHING, E.SWITCHED): S.WATCHING,
    (S.SWITCHING, E.SWITCH_FAILED): S.REVERTING,
    (S.WATCHING, E.WATCH_PASSED): S.COMMITTING,
    (S.WATCHING, E.WATCH_FAILED): S.REVERTING,
    (S.COMMITTING, E.COMMIT_DONE): S.COMMITTED,
    (S.REVERTING, E.REVERTED): S.ROLLED_BACK,
    (S.REVERTING, E.REVERT_FAILED): S.FAILED,
    # A restart loses the loaded candidate (memory): gates and switch start again from staging.
    (S.GOLDEN_CHECK, E.RESUMED): S.STAGING,
    (S.SHADOWING, E.RESUMED): S.STAGING,
    # Restarted while waiting: stage and gate the candidate again, then wait again (never early).
    (S.AWAITING_WINDOW, E.RESUMED): S.STAGING,
    (S.SWITCHING, E.RESUMED): S.STAGING,  # the client posts SWITCHED instead if the switch happened
}

# The event that ends a state whose work kept failing transiently (RETRY attempts exhausted).
# COMMITTING and AWAITING_WINDOW have none: their work cannot fail.
GIVE_UP: dict[UpdateState, UpdateEvent] = {
    S.DOWNLOADING: E.DOWNLOAD_FAILED,
    S.VERIFYING: E.VERIFY_FAILED,
    S.STAGING: E.STAGE_FAILED,
    S.GOLDEN_CHECK: E.GOLDEN_FAILED,
    S.SHADOWING: E.SHADOW_FAILED,
    S.SWITCHING: E.SWITCH_FAILED,
    S.WATCHING: E.WATCH_FAILED,
    S.REVERTING: E.REVERT_FAILED,
}

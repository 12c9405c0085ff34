"""Agent error tree and exit codes.

Each branch answers the caller's question "what do I do next?"::

    AgentError
    ├── ConfigError         fix the configuration; the daemon exits with ExitCode.CONFIG
    ├── EnrollmentError     the server refused enrollment (bad/used/expired token); do not retry blindly
    ├── TransportError      the link failed; retry with backoff, report only if it persists
    │   └── RateLimitedError  the server throttled us; back off longer
    ├── IntegrityError      bad signature, hash or length; never retry the same bytes
    ├── SlotError           model slot or disk failure; take the rollback path
    ├── InferenceError      serving a model failed
    │   ├── InvalidInputError     the caller sent a wrong shape/dtype/batch; fix the request
    │   ├── RequestTooLargeError  the request exceeds a configured limit; split it
    │   ├── ModelLoadError        an artifact cannot be loaded; never let it replace a working model
    │   │   └── BackendUnavailableError  runtime/EP/delegate the profile asks for is missing here
    │   ├── BackendCrashedError   the runtime failed mid-call; restart the backend, retry once
    │   └── NoModelError          no model is loaded yet; the caller may retry later
    ├── InstallRefusedError a local install failed a gate (golden set, busy OTA); fix the model or retry
    ├── StorageError        local state (queue, key files) unusable; exit with ExitCode.STORAGE
    └── DataDirLockedError  another agent process owns the data directory; exit DATA_DIR_LOCKED
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes; agent codes live in 10-29 (server 30-49, compiler 50-69)."""

    OK = 0
    USAGE = 2
    CONFIG = 10
    ENROLLMENT = 11
    NOT_ENROLLED = 12
    STORAGE = 13
    TRANSPORT = 14
    INFERENCE = 15
    INTEGRITY = 16  # bytes failed a hash check (e.g. `install --sha256`)
    REFUSED = 17  # a local install was refused: the model does not load, warm up or pass a gate
    DATA_DIR_LOCKED = 20  # another agent process holds the data directory


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """Configuration is missing or invalid."""


class EnrollmentError(AgentError):
    """The fleet server refused enrollment."""


class TransportError(AgentError):
    """The connection to the fleet server failed; retry with backoff."""


class RateLimitedError(TransportError):
    """The server throttled this device (RESOURCE_EXHAUSTED)."""


class IntegrityError(AgentError):
    """Bytes failed a signature, hash or length check."""


class SlotError(AgentError):
    """A model slot could not be read or written."""


class InstallRefusedError(AgentError):
    """A local install (`edgeloop-agent install`) was refused by a gate; nothing was switched."""


class StorageError(AgentError):
    """Local persistent state is unusable."""


class DataDirLockedError(AgentError):
    """Another agent process holds the data directory's lock; this one must not touch its state."""

    def __init__(self, data_dir: object, holder_pid: int | None) -> None:
        who = f"pid {holder_pid}" if holder_pid else "another process (pid unknown)"
        super().__init__(
            f"data directory {data_dir} is in use by {who}; "
            "stop that agent first or give this one its own data directory"
        )
        self.holder_pid = holder_pid


class InferenceError(AgentError):
    """Serving a model failed."""


class InvalidInputError(InferenceError):
    """The request does not match the model's input signature (shape, dtype or batch)."""


class RequestTooLargeError(InferenceError):
    """The request exceeds a configured limit (bytes or batch size)."""


class ModelLoadError(InferenceError):
    """A model artifact could not be loaded or warmed up."""


class BackendUnavailableError(ModelLoadError):
    """The runtime, execution provider or delegate the profile asks for is not installed here."""


class BackendCrashedError(InferenceError):
    """The runtime failed during a call; the backend is restarted."""


class NoModelError(InferenceError):
    """No model is loaded."""

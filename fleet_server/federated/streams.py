"""The devices' side of `FleetGrid`: who holds a task stream where, and what they send back.

Runs on the server's asyncio loop (servicer.py, mqtt/federated.py): a device attaches (its queue of
tasks; a newer stream of the same device replaces the older), detaches (its outstanding tasks are
answered at once as dropouts) and pushes results, which are checked (right device, right round, a
task still outstanding) and validated (codec.py) before they are filed as the reply the strategy
waits for; refusals and dropouts are counted by reason. With replicas the view also covers the
streams other live replicas hold (`link`, relay.py, re-read at most every `REMOTE_REFRESH_S`):
results for tasks another replica sent are relayed to the runner replica, tasks relayed here are
put on the device's stream.

Owns: the device table, node-id mapping, filing and refusing results, the counters. Does not push
tasks or wait for replies (grid.py, the Flower side), choose participants (cohort.py) or
aggregate (the Flower strategy).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import Error, Message

from fleet_server.federated.codec import (
    ResultRejectedError,
    TensorSpec,
    check_arrays,
    check_metrics,
    reply_message,
    secagg_reply,
)
from fleet_server.federated.relay import Attachment, ReplicaLink
from protos.edgeloop.v1 import federated_pb2 as pb

logger = logging.getLogger(__name__)

ERR_DROPPED = 501  # device stream closed while the task was outstanding
ERR_OFFLINE = 502  # device was not connected when the task was pushed
ERR_REJECTED = 503  # device result failed validation
ERR_DECLINED = 504  # device declined (not allowed to train now, DP budget exhausted, ...)
MAX_FINISHED = 100_000  # remembered task ids (late/duplicate detection), oldest forgotten first
REMOTE_REFRESH_S = 1.0  # how old the view of other replicas' streams may get


def node_id_for(device_id: str) -> int:
    """Stable positive 63-bit Flower node id for a device id."""
    return int.from_bytes(hashlib.sha256(device_id.encode()).digest()[:8], "big") >> 1 or 2


@dataclass(frozen=True)
class GridLimits:
    max_result_bytes: int = 64 * 2**20  # per result, all tensors
    max_abs_value: float = 1e6  # any parameter beyond this is refused
    max_examples: int = 10_000_000


@dataclass
class _Pending:
    device_id: str
    request: Message
    round_id: str
    arrays_key: str
    specs: list[TensorSpec]
    stream: Attachment | None = None  # set when the device's stream is on another replica


@dataclass
class _Device:
    queue: asyncio.Queue[pb.TrainTask | None]
    state: dict[str, float] = field(default_factory=dict)
    epoch: str = ""


class DeviceStreams:
    """Devices holding an open `FederatedService/Tasks` stream, their outstanding tasks and replies.

    The state is shared with the Flower side (`FleetGrid`), under one condition variable.
    """

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        limits: GridLimits | None = None,
        link: ReplicaLink | None = None,
    ) -> None:
        self._loop = loop
        self.link = link
        self._remote: dict[str, Attachment] = {}
        self._remote_at = -1e9
        self.limits = limits or GridLimits()
        self._lock = threading.Condition()
        self._devices: dict[str, _Device] = {}
        self._pending: dict[str, _Pending] = {}
        self._replies: dict[str, Message] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()  # recent task ids, to tell late from unknown
        self._seen: dict[int, str] = {}
        self.rejected: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    def attach(
        self, device_id: str, state: dict[str, float], transport: str = "grpc"
    ) -> asyncio.Queue[pb.TrainTask | None]:
        queue: asyncio.Queue[pb.TrainTask | None] = asyncio.Queue()
        epoch = uuid.uuid4().hex
        with self._lock:
            old = self._devices.get(device_id)
            self._devices[device_id] = _Device(queue, dict(state), epoch)
            self._seen[node_id_for(device_id)] = device_id
        if old is not None:
            old.queue.put_nowait(None)
        if self.link is not None:
            self._shielded(self.link.attached, device_id, epoch, dict(state), transport)
        logger.info("fl device attached device_id=%s node_id=%d", device_id, node_id_for(device_id))
        return queue

    def detach(self, device_id: str, queue: asyncio.Queue[pb.TrainTask | None]) -> None:
        with self._lock:
            current = self._devices.get(device_id)
            if current is None or current.queue is not queue:
                return
            del self._devices[device_id]
            lost = [i for i, p in self._pending.items() if p.device_id == device_id and p.stream is None]
            for i in lost:
                self._fail(i, ERR_DROPPED, "device disconnected mid-round")
                self.dropped["disconnected"] += 1
            self._lock.notify_all()
        if self.link is not None:
            self._shielded(self.link.detached, device_id, current.epoch)
        logger.info("fl device detached device_id=%s outstanding_tasks=%d", device_id, len(lost))

    def accept_result(self, device_id: str, result: pb.TaskResult) -> tuple[bool, str]:
        """Validate and file one device result; returns (accepted, reason)."""
        with self._lock:
            pending = self._pending.get(result.task_id)
            reason = self._precheck(device_id, result, pending)
            if reason:
                self.rejected[reason] += 1
                logger.warning(
                    "fl result rejected device_id=%s round_id=%s reason=%s",
                    device_id,
                    result.round_id,
                    reason,
                )
                return False, reason
            assert pending is not None
            try:
                reply = self._reply_for(pending, result)
            except ResultRejectedError as err:
                self.rejected[err.reason] += 1
                self._fail(result.task_id, ERR_REJECTED, str(err))
                self._lock.notify_all()
                logger.warning(
                    "fl result rejected device_id=%s round_id=%s reason=%s", device_id, pending.round_id, err
                )
                return False, err.reason
            del self._pending[result.task_id]
            self._mark_finished(result.task_id)
            self._replies[result.task_id] = reply
            self._lock.notify_all()
        return True, ""

    def owns(self, task_id: str) -> bool:
        """Whether this grid sent the task (so its result is judged here, not relayed)."""
        with self._lock:
            return task_id in self._pending or task_id in self._finished

    def forward_result(self, device_id: str, result: pb.TaskResult) -> tuple[bool, str]:
        """A device's result for a task this replica did not send: relay it to the runner replica
        (or judge it here when this replica is the runner, or single). Returns (accepted, reason)."""
        if self.link is None or self.owns(result.task_id):
            return self.accept_result(device_id, result)
        runner = self.link.runner_replica()
        if not runner or runner == self.link.replica_id:
            return self.accept_result(device_id, result)
        why = self.link.send_result(runner, device_id, result)
        if why:
            with self._lock:
                self.rejected[why] += 1
            return False, why
        return True, "relayed"

    def deliver(self, device_id: str, task: pb.TrainTask, origin: str) -> None:
        """A task the runner replica relayed here for a device streaming on this replica."""
        with self._lock:
            device = self._devices.get(device_id)
        if device is None:
            if self.link is not None:
                self.link.send_offline(origin, device_id, task.task_id)
            return
        self._loop.call_soon_threadsafe(device.queue.put_nowait, task)
        logger.debug("fl task relayed round_id=%s device_id=%s origin=%s", task.round_id, device_id, origin)

    def fail_offline(self, task_id: str) -> None:
        """The replica a task was relayed to no longer held the device's stream."""
        with self._lock:
            if task_id in self._pending:
                self._fail(task_id, ERR_DROPPED, "device disconnected mid-round")
                self.dropped["disconnected"] += 1
                self._lock.notify_all()

    def device_ids(self, node_ids: list[int]) -> list[str]:
        """Device ids for Flower node ids (devices that left since keep their node id's hex)."""
        with self._lock:
            known = dict(self._seen)
        return [known.get(n, f"node-{n:x}") for n in node_ids]

    def online_devices(self) -> list[str]:
        """Devices holding an open task stream on any live replica (before any cohort filter)."""
        remote = self._remote_streams()
        with self._lock:
            for device_id in remote:
                self._seen.setdefault(node_id_for(device_id), device_id)
            return sorted(set(self._devices) | remote.keys())

    def state_of(self, device_id: str) -> dict[str, float]:
        """Conditions the device reported when it opened its task stream (idle, charging, ...)."""
        with self._lock:
            device = self._devices.get(device_id)
            if device is not None:
                return dict(device.state)
            stream = self._remote.get(device_id)
            return dict(stream.state) if stream is not None else {}

    def note(self, kind: str, counts: Counter[str]) -> None:
        """Add protocol-level refusals (e.g. SecAgg MAC failures) to the rejected counters."""
        with self._lock:
            for reason, n in counts.items():
                self.rejected[f"{kind}:{reason}"] += n

    def counters(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {"rejected": dict(self.rejected), "dropped": dict(self.dropped)}

    # ------------------------------------------------------------------ internals

    def _precheck(self, device_id: str, result: pb.TaskResult, pending: _Pending | None) -> str:
        if pending is None:
            return "late_or_duplicate" if result.task_id in self._finished else "unknown_task"
        if pending.device_id != device_id:
            return "wrong_device"
        if result.round_id != pending.round_id:
            return "wrong_round"
        return ""

    def _reply_for(self, pending: _Pending, result: pb.TaskResult) -> Message:
        if result.error:
            self.dropped["declined"] += 1
            logger.info(
                "task declined device_id=%s round_id=%s reason=%s",
                pending.device_id,
                result.round_id,
                result.error,
            )
            return Message(Error(code=ERR_DECLINED, reason=result.error[:200]), reply_to=pending.request)
        lim = self.limits
        if pending.request.metadata.message_type.startswith("train.secagg_"):
            return secagg_reply(pending.request, result, max_bytes=lim.max_result_bytes)
        metrics = check_metrics(result, max_examples=lim.max_examples)
        arrays = None
        if pending.request.metadata.message_type.startswith("train"):
            arrays = check_arrays(
                result, pending.specs, max_bytes=lim.max_result_bytes, max_abs=lim.max_abs_value
            )
        return reply_message(pending.request, arrays_key=pending.arrays_key, arrays=arrays, metrics=metrics)

    def _fail(self, message_id: str, code: int, reason: str) -> None:
        pending = self._pending.pop(message_id, None)
        self._mark_finished(message_id)
        if pending is not None:
            self._replies[message_id] = Message(Error(code=code, reason=reason), reply_to=pending.request)

    def _remote_streams(self, max_age_s: float = REMOTE_REFRESH_S) -> dict[str, Attachment]:
        """Other replicas' streams, re-read from the database when older than `max_age_s`."""
        if self.link is None:
            return {}
        if time.monotonic() - self._remote_at >= max_age_s:
            try:
                remote = self.link.streams()
            except Exception:  # a database hiccup: keep the last view for this refresh
                logger.warning("fl stream directory unreadable", exc_info=True)
                return self._remote
            with self._lock:
                self._remote, self._remote_at = remote, time.monotonic()
        return self._remote

    def _shielded(self, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:  # the local stream still works; the fleet-wide view misses it until re-attach
            logger.warning("fl stream directory write failed", exc_info=True)

    def _mark_finished(self, message_id: str) -> None:
        self._finished[message_id] = None
        while len(self._finished) > MAX_FINISHED:
            self._finished.popitem(last=False)

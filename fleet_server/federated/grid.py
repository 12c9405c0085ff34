"""`FleetGrid`: Flower's `Grid` over our mutual-TLS `FederatedService` device streams.

Flower strategies call `push_messages` / `pull_messages` / `send_and_receive` from a worker thread;
devices attach and push results on the server's asyncio loop (servicer.py). This class is the
bridge: tasks go to a device's stream queue with `loop.call_soon_threadsafe`, results come back
under a lock and wake the waiting strategy. Dropouts are answered at once with an error reply when
a device's stream closes; stragglers past the round timeout are dropped and their late results
refused. Device results are validated (codec.py) and refusals counted by reason.

With replicas (`link`, relay.py) the grid is fleet-wide: `get_node_ids` also lists devices whose
stream another live replica holds; their tasks go through the relay to that replica, which puts
them on the device's stream (`deliver`); a result pushed to a replica that did not send the task
is relayed to the runner replica (`forward_result`). The runner re-checks every second that each
relayed task's stream is still where it was (same replica, same epoch, replica alive) and answers
a lost one as a dropout, as it does at once for a local stream.

Owns: node-id mapping, outstanding tasks, replies and counters. Does not choose participants
(cohort.py filters `get_node_ids` through `eligible`) or aggregate (the Flower strategy does).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fleet_server.federated.codec import (
    ResultRejectedError,
    TensorCache,
    TensorSpec,
    array_key,
    check_arrays,
    check_metrics,
    message_to_task,
    reply_message,
    secagg_reply,
    server_round_of,
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


class FleetGrid(Grid):
    """Flower `Grid` whose nodes are the devices holding an open `FederatedService/Tasks` stream."""

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        run_id: int = 1,
        limits: GridLimits | None = None,
        eligible: Callable[[set[str]], set[str]] | None = None,
        link: ReplicaLink | None = None,
    ) -> None:
        self._loop = loop
        self.link = link
        self._remote: dict[str, Attachment] = {}
        self._remote_at = -1e9
        self.limits = limits or GridLimits()
        self.eligible = eligible
        self._lock = threading.Condition()
        self._devices: dict[str, _Device] = {}
        self._pending: dict[str, _Pending] = {}
        self._replies: dict[str, Message] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()  # recent task ids, to tell late from unknown
        self._seen: dict[int, str] = {}
        self.rejected: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self._run = Run.create_empty(run_id)
        self.set_run(self._run)
        self.round_timeout_s = 60.0

    # ------------------------------------------------------------------ Flower Grid API

    def set_run(self, run: Run) -> None:
        self._run = run
        TaskIdentity.run_id = run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        TaskIdentity.task_id = 0

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        online = set(self.online_devices())
        if self.eligible is not None:
            online = self.eligible(online)
        return [node_id_for(d) for d in sorted(online)]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        cache: TensorCache = {}  # messages of one batch share arrays: serialize each once
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            self._push_one(msg, cache)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        with self._lock:
            return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(
        self,
        messages: Iterable[Message],
        *,
        timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> Iterable[Message]:
        """Flower's call, plus `stop`: once it is set (a cancelled run; see `wake`) nothing more is
        pushed, the wait ends at once and the outstanding tasks are forgotten like stragglers (their
        late results are refused as `late_or_duplicate`)."""
        if stop is not None and stop.is_set():
            return []
        ids = set(self.push_messages(messages))
        deadline = time.monotonic() + (timeout if timeout is not None else self.round_timeout_s)
        out: list[Message] = []
        while True:
            self._check_remote_streams(ids)
            with self._lock:
                ready = ids & self._replies.keys()
                for i in ready:
                    out.append(self._replies.pop(i))
                ids -= ready
                remaining = deadline - time.monotonic()
                if not ids or remaining <= 0 or (stop is not None and stop.is_set()):
                    break
                self._lock.wait(min(remaining, REMOTE_REFRESH_S))
        with self._lock:
            why = "cancelled" if stop is not None and stop.is_set() else "straggler"
            for i in ids:  # stragglers (or a cancelled round): forget the task, refuse its late result
                pending = self._pending.pop(i, None)
                self._mark_finished(i)
                if pending is not None:
                    self.dropped[why] += 1
                    logger.info(
                        "%s dropped round_id=%s device_id=%s", why, pending.round_id, pending.device_id
                    )
        return out

    def wake(self) -> None:
        """Wake every `send_and_receive` waiting here (call after setting its `stop` event)."""
        with self._lock:
            self._lock.notify_all()

    # ------------------------------------------------------------------ device side (event loop)

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

    def _device_for(self, node_id: int) -> str | None:
        device_id = self._seen.get(node_id)
        return device_id if device_id in self._devices or device_id in self._remote else None

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

    def _check_remote_streams(self, ids: set[str]) -> None:
        """Tasks relayed to another replica whose device stream is gone are answered as dropouts."""
        with self._lock:
            relayed = any(self._pending[i].stream is not None for i in ids if i in self._pending)
        if not relayed:
            return
        remote = self._remote_streams()
        with self._lock:
            for i in ids:
                pending = self._pending.get(i)
                if pending is None or pending.stream is None:
                    continue
                now = remote.get(pending.device_id)
                if now is not None and (now.replica_id, now.epoch) == (
                    pending.stream.replica_id,
                    pending.stream.epoch,
                ):
                    continue  # the same stream (its reported conditions may have changed)
                self._fail(i, ERR_DROPPED, "device disconnected mid-round")
                self.dropped["disconnected"] += 1
            self._lock.notify_all()

    def _shielded(self, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:  # the local stream still works; the fleet-wide view misses it until re-attach
            logger.warning("fl stream directory write failed", exc_info=True)

    def _mark_finished(self, message_id: str) -> None:
        self._finished[message_id] = None
        while len(self._finished) > MAX_FINISHED:
            self._finished.popitem(last=False)

    def _push_one(self, msg: Message, cache: TensorCache) -> None:
        round_id = msg.metadata.group_id or f"{self._run.run_id}:{server_round_of(msg)}"
        task, specs = message_to_task(msg, round_id=round_id, deadline_s=self.round_timeout_s, cache=cache)
        with self._lock:
            device_id = self._device_for(msg.metadata.dst_node_id)
            if device_id is None:
                self._pending[task.task_id] = _Pending("", msg, round_id, "", [])
                self._fail(task.task_id, ERR_OFFLINE, "device offline")
                self._lock.notify_all()
                return
            local = self._devices.get(device_id)
            stream = None if local is not None else self._remote[device_id]
            pending = _Pending(device_id, msg, round_id, array_key(msg.content), specs, stream)
            self._pending[task.task_id] = pending
        if stream is not None:
            self._relay(task, stream)
            return
        assert local is not None
        self._loop.call_soon_threadsafe(local.queue.put_nowait, task)
        logger.debug("fl task pushed round_id=%s device_id=%s kind=%s", round_id, device_id, task.kind)

    def _relay(self, task: pb.TrainTask, stream: Attachment) -> None:
        assert self.link is not None
        try:
            why = self.link.send_task(stream, task)
        except Exception as err:  # the database refused the row: the device cannot get the task
            why = f"relay failed: {type(err).__name__}"
        if why:
            with self._lock:
                self._fail(task.task_id, ERR_OFFLINE, why)
                self._lock.notify_all()
        logger.debug(
            "fl task relayed round_id=%s device_id=%s to=%s",
            task.round_id,
            stream.device_id,
            stream.replica_id,
        )

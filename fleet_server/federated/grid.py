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

Owns: the Flower side (pushing tasks, waiting for replies, stragglers, relaying tasks to other
replicas). The device side (attach/detach, filing and refusing results, node-id mapping, counters)
is `DeviceStreams` in streams.py, whose names stay importable from here. Does not choose
participants (cohort.py filters `get_node_ids` through `eligible`) or aggregate (the Flower
strategy does).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable

from flwr.app import Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fleet_server.federated.codec import TensorCache, array_key, message_to_task, server_round_of
from fleet_server.federated.relay import Attachment, ReplicaLink
from fleet_server.federated.streams import (
    ERR_DECLINED,
    ERR_DROPPED,
    ERR_OFFLINE,
    ERR_REJECTED,
    MAX_FINISHED,
    REMOTE_REFRESH_S,
    DeviceStreams,
    GridLimits,
    _Device,
    _Pending,
    node_id_for,
)
from protos.edgeloop.v1 import federated_pb2 as pb

__all__ = [
    "ERR_DECLINED",
    "ERR_DROPPED",
    "ERR_OFFLINE",
    "ERR_REJECTED",
    "MAX_FINISHED",
    "REMOTE_REFRESH_S",
    "DeviceStreams",
    "FleetGrid",
    "GridLimits",
    "_Device",
    "_Pending",
    "node_id_for",
]

logger = logging.getLogger(__name__)


class FleetGrid(DeviceStreams, Grid):
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
        DeviceStreams.__init__(self, loop=loop, limits=limits, link=link)
        self.eligible = eligible
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

    # ------------------------------------------------------------------ internals

    def _device_for(self, node_id: int) -> str | None:
        device_id = self._seen.get(node_id)
        return device_id if device_id in self._devices or device_id in self._remote else None

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

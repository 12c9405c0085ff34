"""The federated link over MQTT (`MqttFederatedLink`): same interface as `GrpcFederatedLink`.

A second MQTT connection with client id `{device_id}.fl` (a second connection under the Sync
session's id would take it over), a clean session (tasks are only meaningful while attached).
`tasks()` connects, subscribes to `fl/task` and `fl/ack`, publishes a `TaskStreamRequest` on
`fl/attach` and yields each `TrainTask`; the will (and `close()`) is an empty `fl/attach`, which
the server reads as a detach. `push()` publishes a `TaskResult` on `fl/result` and waits for the
`PushResultResponse` on `fl/ack`.

Matching results to acks: `PushResultResponse` carries no task id, so pushes are serialized (one
in flight) and the next ack answers it; MQTT keeps per-topic order on one connection. A push that
times out raises `TransportError` (as gRPC's DEADLINE_EXCEEDED does) and poisons the link, so a
late ack can never be taken for the next result: the caller reconnects with a fresh link.

Errors: the same as `mqtt_fleet` (TransportError, SessionRejectedError). Malformed tasks or acks
are dropped and counted (`malformed`). paho stays inside `agent.transport.paho_link.PahoLink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator

from google.protobuf.message import DecodeError

from agent.errors import TransportError
from agent.identity import IdentityStore
from agent.transport.paho_link import LinkDisconnected, LinkMessage, PahoLink, link_tls, parse_endpoint
from protos.edgeloop import mqtt
from protos.edgeloop.v1 import federated_pb2 as pb

logger = logging.getLogger(__name__)


class MqttFederatedLink:
    """One `{id}.fl` connection: tasks in on `fl/task`, results out on `fl/result`, acks on `fl/ack`."""

    def __init__(
        self,
        *,
        endpoint: str,
        device_id: str,
        store: IdentityStore | None,
        server_name: str = "",
        max_task_bytes: int,
        connect_timeout_s: float = 20.0,
    ) -> None:
        self._endpoint = parse_endpoint(endpoint)
        self._device_id = device_id
        self._store = store
        self._server_name = server_name
        self._max_bytes = max_task_bytes
        self._timeout_s = connect_timeout_s
        self._link: PahoLink | None = None
        self._tasks: asyncio.Queue[pb.TrainTask | TransportError] = asyncio.Queue()
        self._acks: asyncio.Queue[pb.PushResultResponse | TransportError] = asyncio.Queue()
        self._dispatch: asyncio.Task[None] | None = None
        self._push_lock = asyncio.Lock()
        self._broken: TransportError | None = None
        self.malformed: Counter[str] = Counter()

    def _topic(self, kind: str) -> str:
        return mqtt.topic(self._device_id, kind)

    async def _connect(self, request: pb.TaskStreamRequest) -> PahoLink:
        tls = link_tls(self._endpoint, self._store, self._server_name)
        link = PahoLink(
            self._endpoint,
            client_id=mqtt.client_id(self._device_id, federated=True),
            clean_session=True,
            will=(self._topic(mqtt.FL_ATTACH), b"", False),
            tls=tls,
            max_message_bytes=self._max_bytes,
        )
        try:
            await link.connect([self._topic(mqtt.FL_TASK), self._topic(mqtt.FL_ACK)], self._timeout_s)
            link.publish(self._topic(mqtt.FL_ATTACH), request.SerializeToString())
        except BaseException:
            await link.close()
            raise
        self._link = link
        self._dispatch = asyncio.create_task(self._route(link))
        return link

    async def _route(self, link: PahoLink) -> None:
        """Sort the connection's events: tasks to `tasks()`, acks to `push()`, a drop to both."""
        while True:
            ev = await link.get()
            if isinstance(ev, LinkDisconnected):
                err = TransportError(f"federated MQTT connection lost: {ev.reason}")
                self._broken = err
                self._tasks.put_nowait(err)
                self._acks.put_nowait(err)
                return
            if not isinstance(ev, LinkMessage):
                continue
            parsed = mqtt.parse(ev.topic)
            if parsed is None or parsed[0] != self._device_id:
                continue
            kind = parsed[1]
            try:
                if len(ev.payload) > self._max_bytes:
                    raise ValueError(f"{len(ev.payload)} bytes is over the {self._max_bytes} byte limit")
                if kind == mqtt.FL_TASK:
                    self._tasks.put_nowait(pb.TrainTask.FromString(ev.payload))
                elif kind == mqtt.FL_ACK:
                    self._acks.put_nowait(pb.PushResultResponse.FromString(ev.payload))
            except (DecodeError, ValueError) as err:
                self.malformed[kind] += 1
                logger.warning("malformed federated MQTT payload dropped topic=%s: %s", ev.topic, err)

    async def tasks(self, state: dict[str, float], capabilities: list[str]) -> AsyncIterator[pb.TrainTask]:
        """Yields tasks until the connection drops. Raises: TransportError (or SessionRejectedError)."""
        if self._link is None:
            await self._connect(
                pb.TaskStreamRequest(protocol_version=1, capabilities=capabilities, state=state)
            )
        while True:
            item = await self._tasks.get()
            if isinstance(item, TransportError):
                raise item
            yield item

    async def push(self, result: pb.TaskResult, timeout_s: float = 30.0) -> pb.PushResultResponse:
        """Raises: TransportError (no connection, connection lost, or no ack within `timeout_s`)."""
        async with self._push_lock:
            if self._broken is not None:
                raise self._broken
            if self._link is None:
                raise TransportError("federated MQTT link is not attached")
            while not self._acks.empty():  # acks with no push waiting for them: stale, drop
                stale = self._acks.get_nowait()
                if isinstance(stale, TransportError):
                    raise stale
            self._link.publish(self._topic(mqtt.FL_RESULT), result.SerializeToString())
            try:
                ack = await asyncio.wait_for(self._acks.get(), timeout_s)
            except TimeoutError as err:
                self._broken = TransportError(
                    f"federated push timed out (DEADLINE_EXCEEDED) task_id={result.task_id} "
                    f"round_id={result.round_id}"
                )
                raise self._broken from err
            if isinstance(ack, TransportError):
                raise ack
            return ack

    async def close(self) -> None:
        """Detach (empty `fl/attach`) and disconnect."""
        if self._dispatch is not None:
            self._dispatch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatch
        if self._link is not None:
            await self._link.close((self._topic(mqtt.FL_ATTACH), b"", False))
            self._link = None

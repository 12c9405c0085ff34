"""SessionRegistry with the presence and fan-out ports (grpc_api/sessions.py), with working fakes
of both: who runs where on a local change, a remote change, a kick and a resync; what is online
fleet-wide vs locally; presence writes follow sessions (a superseded stream writes nothing)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet

from fleet_server.grpc_api.sessions import SessionRegistry, _Session


class FakePresence:
    def __init__(self, elsewhere: dict[str, str] | None = None) -> None:
        self.changes: list[tuple[str, str, bool]] = []
        self.elsewhere = elsewhere or {}

    def connected(self, device_id: str, transport: str) -> None:
        self.changes.append((device_id, transport, True))

    def disconnected(self, device_id: str, transport: str) -> None:
        self.changes.append((device_id, transport, False))

    def online(self) -> AbstractSet[str]:
        return set(self.elsewhere)

    def transport(self, device_id: str) -> str | None:
        return self.elsewhere.get(device_id)


class FakeFanout:
    def __init__(self) -> None:
        self.desired: list[str] = []
        self.kicks: list[tuple[str, str, str]] = []

    def desired_changed(self, device_id: str) -> None:
        self.desired.append(device_id)

    def kick(self, device_id: str, code: str, detail: str) -> None:
        self.kicks.append((device_id, code, detail))


class Calls:
    def __init__(self) -> None:
        self.grpc: list[str] = []
        self.mqtt: list[str] = []
        self.kicked: list[str] = []

    async def push_grpc(self, device_id: str) -> None:
        self.grpc.append(device_id)

    async def push_mqtt(self, device_id: str) -> None:
        self.mqtt.append(device_id)

    def kick_mqtt(self, device_id: str, code: str, detail: str) -> None:
        self.kicked.append(device_id)


def registry_with(presence: FakePresence, fanout: FakeFanout, calls: Calls) -> SessionRegistry:
    registry = SessionRegistry(presence=presence, fanout=fanout)
    registry.bind_loop(asyncio.get_running_loop())
    registry.on_desired(calls.push_grpc)
    registry.on_desired(calls.push_mqtt, fleet=True)
    registry.on_kick(calls.kick_mqtt, fleet=True)
    return registry


def in_loop(test: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Run the async test body on a fresh event loop (the registry binds to the running loop)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())  # type: ignore[arg-type]

    return run


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@in_loop
async def test_a_local_change_runs_every_pusher_and_tells_the_others() -> None:
    presence, fanout, calls = FakePresence(), FakeFanout(), Calls()
    registry = registry_with(presence, fanout, calls)
    registry.notify_desired_changed("d1")
    await settle()
    assert calls.grpc == ["d1"] and calls.mqtt == ["d1"] and fanout.desired == ["d1"]


@in_loop
async def test_a_remote_change_pushes_only_to_local_grpc_sessions() -> None:
    presence, fanout, calls = FakePresence(), FakeFanout(), Calls()
    registry = registry_with(presence, fanout, calls)
    registry.add(_Session("here", None))  # type: ignore[arg-type]
    registry.remote_desired(["here", "elsewhere"])
    await settle()
    assert calls.grpc == ["here"] and calls.mqtt == []  # MQTT was pushed once, by the origin
    assert fanout.desired == []  # never re-published


@in_loop
async def test_resync_pushes_every_local_session() -> None:
    presence, fanout, calls = FakePresence(), FakeFanout(), Calls()
    registry = registry_with(presence, fanout, calls)
    for device_id in ("a", "b"):
        registry.add(_Session(device_id, None))  # type: ignore[arg-type]
    registry.resync()
    await settle()
    assert sorted(calls.grpc) == ["a", "b"] and calls.mqtt == []


@in_loop
async def test_kick_closes_here_and_tells_the_others_remote_kick_closes_only_the_stream() -> None:
    presence, fanout, calls = FakePresence(), FakeFanout(), Calls()
    registry = registry_with(presence, fanout, calls)
    session = _Session("d1", None)  # type: ignore[arg-type]
    registry.add(session)
    registry.kick("d1", "PERMISSION_DENIED", "revoked")
    await settle()
    assert session.closed_reason.startswith("abort:PERMISSION_DENIED")
    assert calls.kicked == ["d1"] and fanout.kicks == [("d1", "PERMISSION_DENIED", "revoked")]

    other = _Session("d2", None)  # type: ignore[arg-type]
    registry.add(other)
    registry.remote_kick("d2", "PERMISSION_DENIED", "revoked elsewhere")
    await settle()
    assert other.closed_reason.startswith("abort:PERMISSION_DENIED")
    assert calls.kicked == ["d1"] and len(fanout.kicks) == 1


@in_loop
async def test_online_is_fleet_wide_local_is_this_replica() -> None:
    presence, fanout, calls = FakePresence({"far": "grpc", "mq": "mqtt"}), FakeFanout(), Calls()
    registry = registry_with(presence, fanout, calls)
    registry.add(_Session("near", None))  # type: ignore[arg-type]
    registry.set_present("heard-here", True)
    assert registry.online() == {"far", "mq", "near", "heard-here"}
    assert registry.local() == {"near", "heard-here"}
    assert registry.transport("near") == "grpc" and registry.transport("far") == "grpc"
    assert registry.transport("mq") == "mqtt" and registry.transport("heard-here") == "mqtt"
    assert registry.transport("nowhere") is None


@in_loop
async def test_presence_follows_sessions_and_a_superseded_stream_writes_nothing() -> None:
    presence, fanout, calls = FakePresence(), FakeFanout(), Calls()
    registry = registry_with(presence, fanout, calls)
    first, second = _Session("d", None), _Session("d", None)  # type: ignore[arg-type]
    registry.add(first)
    registry.add(second)  # the device reconnected: the old stream is superseded
    registry.remove(first)  # the old stream's cleanup must not mark the device offline
    registry.set_present("m", True)
    registry.set_present("m", False)
    assert presence.changes == [
        ("d", "grpc", True),
        ("d", "grpc", True),
        ("m", "mqtt", True),
        ("m", "mqtt", False),
    ]
    registry.remove(second)
    assert presence.changes[-1] == ("d", "grpc", False)


@in_loop
async def test_without_ports_the_registry_is_one_process() -> None:
    calls = Calls()
    registry = SessionRegistry()
    registry.bind_loop(asyncio.get_running_loop())
    registry.on_desired(calls.push_grpc)
    registry.on_desired(calls.push_mqtt, fleet=True)
    registry.add(_Session("x", None))  # type: ignore[arg-type]
    registry.notify_desired_changed("x")
    await settle()
    assert registry.online() == registry.local() == {"x"}
    assert calls.grpc == ["x"] and calls.mqtt == ["x"]

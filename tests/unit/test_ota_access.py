"""OTA access rules without a server: path classes, token checks, the refresh loop, and the agent's
credential holder (the newest token wins; fetches wait once for the first one)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from agent.ota.fetcher import TOKEN_HEADER, OtaCredential
from fleet_server.ota.access import AccessDeniedError, OtaAccess, Reader, classify, refresh_tokens


@pytest.mark.parametrize(
    ("path", "reader", "role"),
    [
        ("metadata/root.json", Reader.ANYONE, ""),
        ("metadata/3.root.json", Reader.ANYONE, ""),
        ("metadata/timestamp.json", Reader.ANYONE, ""),
        ("metadata/7.snapshot.json", Reader.ANY_DEVICE, ""),
        ("metadata/2.director.json", Reader.ANY_DEVICE, ""),
        ("metadata/4.device-dev.1.json", Reader.ONE_DEVICE, "device-dev.1"),
        ("targets/models/m/r1/abc.model.onnx", Reader.ANY_DEVICE, ""),
        ("targets/patches/a-b.xz", Reader.ANY_DEVICE, ""),
        ("targets/devices/dev-b/abc.assignment", Reader.ONE_DEVICE, "device-dev-b"),
        ("targets/models/../devices/dev-b/abc.assignment", Reader.ONE_DEVICE, "device-dev-b"),
        ("targets//devices/dev-b/x", Reader.ONE_DEVICE, "device-dev-b"),
        ("metadata/../metadata/root.json", Reader.ANYONE, ""),
    ],
)
def test_paths_are_classified_after_normalising(path: str, reader: Reader, role: str) -> None:
    assert classify(path) == (reader, role)


def test_a_device_token_opens_its_own_role_only(tmp_path: Path) -> None:
    access = OtaAccess.load_or_create(tmp_path / "k", ttl_s=60)
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    assert OtaAccess.load_or_create(tmp_path / "k", ttl_s=60).mint("a", now_s=0) == access.mint("a", now_s=0)
    token = access.mint("dev-a", now_s=1000).token
    assert access.authorize("metadata/1.device-dev-a.json", token, now_s=1001) == "dev-a"
    assert access.authorize("metadata/root.json", "", now_s=1001) == ""
    with pytest.raises(AccessDeniedError) as err:
        access.authorize("metadata/1.device-dev-b.json", token, now_s=1001)
    assert err.value.status == 403
    with pytest.raises(AccessDeniedError) as err:
        access.authorize("targets/models/x", token, now_s=1060)  # expires_at is exclusive
    assert err.value.status == 401 and "expired" in err.value.reason
    other = OtaAccess(b"x" * 32, ttl_s=60)
    with pytest.raises(AccessDeniedError, match="signature"):
        other.verify(token, now_s=1001)
    with pytest.raises(ValueError, match="at least 32"):
        OtaAccess(b"short", ttl_s=60)


def test_refresh_pushes_every_connected_device_each_half_life() -> None:
    pushed: list[str] = []

    async def push(device_id: str) -> None:
        if device_id == "bad":
            raise RuntimeError("session gone")
        pushed.append(device_id)

    async def run() -> None:
        task = asyncio.create_task(refresh_tokens(online=lambda: {"a", "b", "bad"}, push=push, ttl_s=0.04))
        await asyncio.sleep(0.15)
        task.cancel()

    asyncio.run(run())
    assert pushed.count("a") >= 2 and pushed.count("a") == pushed.count("b")


def test_agent_credential_keeps_the_newest_and_waits_once_for_the_first() -> None:
    credential = OtaCredential(first_wait_s=5)
    threading.Timer(0.1, lambda: credential.offer("t1", 2000)).start()
    started = time.monotonic()
    assert credential.headers() == {TOKEN_HEADER: "t1"}  # blocked until the first token arrived
    assert time.monotonic() - started < 4
    credential.offer("old", 1000)  # a replayed older push does not replace a newer token
    credential.offer("", 9000)
    assert credential.headers() == {TOKEN_HEADER: "t1"}
    credential.offer("t2", 3000)
    assert credential.headers() == {TOKEN_HEADER: "t2"}
    none = OtaCredential(first_wait_s=0.05)
    assert none.headers() == {} and none.headers() == {}  # public server: go anonymous after one wait

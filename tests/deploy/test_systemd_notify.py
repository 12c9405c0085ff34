"""sd_notify: the notifier against a real AF_UNIX datagram socket, and a real agent daemon process
that a test socket supervises the way systemd does (READY=1, WATCHDOG=1, STOPPING=1 at SIGTERM)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.systemd import SystemdNotifier
from tests.helpers.procs import AgentProc, ServerProc, wait_until


class NotifySocket:
    """What systemd binds for a Type=notify service: a datagram socket collecting messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        for message in self.messages:
            if message.get(key) == value:
                return message
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            message = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append(message)
            if message.get(key) == value:
                return message
        raise AssertionError(f"no {key}={value} within {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def test_notifier_sends_ready_status_watchdog_and_stopping_once(notify_socket: NotifySocket) -> None:
    notifier = SystemdNotifier.from_env(
        {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "3000000"}
    )
    assert notifier.enabled and notifier.watchdog_interval_s == 1.5
    assert notifier.ready("serving")
    assert notifier.watchdog()
    assert notifier.stopping()
    assert not notifier.stopping()  # the signal handler and the shutdown path both call it
    assert not notifier.ready()  # a stop requested during start-up wins
    ready = notify_socket.wait_for("READY", "1", 2)
    assert ready["STATUS"] == "serving"
    notify_socket.wait_for("WATCHDOG", "1", 2)
    notify_socket.wait_for("STOPPING", "1", 2)
    assert sum("STOPPING" in m for m in notify_socket.messages) == 1


def test_abstract_namespace_socket() -> None:
    name = f"edgeloop-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert SystemdNotifier.from_env({"NOTIFY_SOCKET": "@" + name}).notify("STATUS=hi")
        sock.settimeout(2)
        assert sock.recv(100) == b"STATUS=hi"


def test_without_systemd_everything_is_a_no_op() -> None:
    notifier = SystemdNotifier.from_env({})
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    assert not notifier.ready() and not notifier.watchdog() and not notifier.stopping()
    asyncio.run(asyncio.wait_for(notifier.run_watchdog(), 1))  # returns at once


def test_watchdog_for_another_pid_is_off(notify_socket: NotifySocket) -> None:
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    assert SystemdNotifier.from_env(env, pid=4242).watchdog_interval_s is None
    assert SystemdNotifier.from_env(env, pid=1).watchdog_interval_s == 0.5


def test_unreachable_socket_is_reported_not_raised(tmp_path: Path) -> None:
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "absent.sock")})
    assert notifier.enabled
    assert not notifier.ready()


def test_agent_daemon_notifies_ready_watchdog_and_stopping(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    server = ServerProc(data_dir=tmp_path / "server")
    server.data_dir.mkdir()
    server.init()
    server.start()
    agent = AgentProc(
        device_id="sd-dev",
        data_dir=tmp_path / "agents" / "sd-dev",
        server=server,
        env_extra={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"},
    )
    agent.data_dir.mkdir(parents=True)
    try:
        enrolled = agent.enroll(server.bootstrap_token())
        assert enrolled.returncode == 0, enrolled.stderr.decode()
        agent.start()
        assert agent.proc is not None
        ready = notify_socket.wait_for("READY", "1", 90)
        assert "sd-dev" in ready["STATUS"]
        # Pings come from the event loop every WATCHDOG_USEC/2 = 0.2 s: they keep coming (the bound
        # is loose for a loaded machine; systemd would allow 0.4 s).
        for _ in range(3):
            notify_socket.messages.clear()
            notify_socket.wait_for("WATCHDOG", "1", 15)
        agent.proc.send_signal(signal.SIGTERM)
        notify_socket.wait_for("STOPPING", "1", 30)
        assert agent.proc.wait(60) == 0
        assert json.loads((agent.data_dir / "status.json").read_text())  # shut down cleanly
    except AssertionError as err:
        log = agent.data_dir.parent / "sd-dev.log"
        tail = log.read_text()[-4000:] if log.exists() else "(no log)"
        raise AssertionError(f"{err}\nagent log:\n{tail}") from err
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()
        server.stop()


@pytest.mark.slow  # a second server + agent start-up (the fast tier has one above)
def test_a_stop_during_start_up_exits_cleanly_without_ready_after_stopping(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    """`systemctl stop` while the unit is activating: SIGTERM right after the agent took its data-dir
    lock (before, the default SIGTERM action killed it: exit -15, a failed unit)."""
    server = ServerProc(data_dir=tmp_path / "server")
    server.data_dir.mkdir()
    server.init()
    server.start()
    agent = AgentProc(
        device_id="sd-early",
        data_dir=tmp_path / "agents" / "sd-early",
        server=server,
        env_extra={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"},
    )
    agent.data_dir.mkdir(parents=True)
    try:
        assert agent.enroll(server.bootstrap_token()).returncode == 0
        agent.start()
        assert agent.proc is not None
        lock = agent.data_dir / "agent.lock"
        pid = str(agent.proc.pid)
        wait_until(lambda: lock.exists() and lock.read_text().strip() == pid, 60, 0.01, "lock taken")
        time.sleep(0.3)  # asyncio.run has entered run_daemon; its adapters are still being built
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.proc.wait(60) == 0
        notify_socket.wait_for("STOPPING", "1", 5)
        kinds = [next(iter(m)) for m in notify_socket.messages if "READY" in m or "STOPPING" in m]
        assert kinds[-1] == "STOPPING" and kinds.count("STOPPING") == 1  # never READY after STOPPING
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()
        server.stop()

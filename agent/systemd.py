"""systemd service notifications (`sd_notify(3)`) over `$NOTIFY_SOCKET`, stdlib only.

Owns the datagram protocol the agent speaks to its service manager when it runs as a
`Type=notify` unit with `WatchdogSec=` (deploy/systemd/edgeloop-agent.service): `READY=1` once
the daemon serves, `WATCHDOG=1` every half of `$WATCHDOG_USEC` from the daemon's event loop (so a
hung loop stops pinging and systemd restarts the agent), `STATUS=...` lines for `systemctl
status`, and `STOPPING=1` when a stop was requested. Without `$NOTIFY_SOCKET` (not under
systemd, or `Type=simple`) every call is a no-op.

Does not decide when the daemon is ready or stopping (agent/daemon.py does) and never raises:
a notification that cannot be sent is logged once at WARNING and dropped, since the agent must
keep serving whatever its supervisor does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping

logger = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends `sd_notify` datagrams to one socket path (None: disabled, every method is a no-op)."""

    def __init__(self, address: str | None, *, watchdog_usec: int = 0) -> None:
        self._address = _socket_address(address) if address else None
        self._watchdog_usec = watchdog_usec
        self._warned = False
        self._stopping = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, pid: int | None = None) -> SystemdNotifier:
        """Read `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (the watchdog applies only when
        `WATCHDOG_PID` is unset or names this process, as in `sd_watchdog_enabled(3)`)."""
        env = os.environ if env is None else env
        usec = 0
        try:
            usec = int(env.get("WATCHDOG_USEC", "0"))
        except ValueError:
            logger.warning("ignoring WATCHDOG_USEC=%r: not an integer", env.get("WATCHDOG_USEC"))
        watchdog_pid = env.get("WATCHDOG_PID", "")
        if watchdog_pid and watchdog_pid != str(os.getpid() if pid is None else pid):
            usec = 0
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec=max(usec, 0))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send `WATCHDOG=1`: half the watchdog timeout, None when there is none."""
        if self._address is None or self._watchdog_usec <= 0:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def notify(self, *fields: str) -> bool:
        """Send `fields` (e.g. "READY=1", "STATUS=serving") as one datagram; True when sent."""
        if self._address is None:
            return False
        payload = "\n".join(f.replace("\n", " ") for f in fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, self._address)
        except OSError as err:
            if not self._warned:
                logger.warning("systemd notification not sent socket=%s: %s", self._address, err)
                self._warned = True
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """`READY=1` (not after `stopping()`: a stop requested during start-up wins)."""
        if self._stopping:
            return False
        return self.notify("READY=1", *((f"STATUS={status}",) if status else ()))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> bool:
        """`STOPPING=1` once (a second call, e.g. from the shutdown path after a signal, sends nothing)."""
        if self._stopping:
            return False
        self._stopping = True
        return self.notify("STOPPING=1", f"STATUS={status}")

    async def run_watchdog(self) -> None:
        """Ping from the running event loop until cancelled; returns at once when there is no watchdog."""
        interval = self.watchdog_interval_s
        if interval is None:
            return
        logger.info("systemd watchdog on interval_s=%.3f", interval)
        while True:
            self.watchdog()
            await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def supervised(notifier: SystemdNotifier, *, status: str) -> AsyncIterator[None]:
    """READY=1 on entry and watchdog pings from the running loop until exit, then STOPPING=1
    (if a signal handler has not sent it already)."""
    watchdog = asyncio.create_task(notifier.run_watchdog())
    notifier.ready(status)
    try:
        yield
    finally:
        notifier.stopping()
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog


def _socket_address(value: str) -> str:
    """`@name` is an abstract-namespace socket (leading NUL), anything else a filesystem path."""
    return "\0" + value[1:] if value.startswith("@") else value

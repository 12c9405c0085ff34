"""`SystemConditions`: whether this device may train now, read from the running Linux system.

Readings (each 1.0 or 0.0, plus the raw numbers behind them), as `FederatedClient` reports them
when it opens its task stream and checks them again before every task (`blocked_reason`):

- ``idle``: the 1-minute load average per CPU (``os.getloadavg``) is below `max_load_per_cpu`.
  An unreadable load average counts as busy.
- ``charging``: the device runs on external power. Read from ``/sys/class/power_supply/*/``: a
  ``Mains`` or ``USB`` supply with ``online`` = 1, or a ``Battery`` whose ``status`` is
  ``Charging`` or ``Full``. A device without any battery (no power_supply directory at all, as on
  a Raspberry Pi or a Jetson dev kit, or only external supplies) is mains-powered: charging.
- ``unmetered``: taken from config (``metered = true`` marks a cellular device). Linux has no
  portable "metered link" flag (NetworkManager has one, connman another, a bare system none), so
  the operator states it.
- ``not_updating``: no model update is in flight; asked of a callable the daemon binds to the OTA
  client's persisted state (the OTA state machine stays unaware of federated learning).

The file root, load average, CPU count and update probe are injected so tests use a fake
``/sys`` tree. A reading that cannot be taken is reported as the cautious value (busy; a
supply whose files cannot be read is skipped).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

POWER_SUPPLY_ROOT = Path("/sys/class/power_supply")
_EXTERNAL_TYPES = frozenset({"Mains", "USB", "USB_C", "USB_PD"})
_ON_POWER_STATUS = frozenset({"Charging", "Full"})


def _never_updating() -> bool:
    return False


class SystemConditions:
    """Implements `agent.federated.client.ConditionsSource` from /proc and /sys readings."""

    def __init__(
        self,
        *,
        max_load_per_cpu: float = 0.5,
        metered: bool = False,
        updating: Callable[[], bool] = _never_updating,
        power_supply_root: Path = POWER_SUPPLY_ROOT,
        loadavg: Callable[[], tuple[float, float, float]] = os.getloadavg,
        cpu_count: Callable[[], int | None] = os.cpu_count,
    ) -> None:
        """Bind the thresholds and the sources; nothing is read until `current()`.

        Args:
            max_load_per_cpu: idle below this 1-minute load average per CPU.
            metered: the device's link is metered (e.g. cellular).
            updating: returns True while a model update is in flight.
            power_supply_root: the ``/sys/class/power_supply`` directory (a fake tree in tests).
            loadavg: ``os.getloadavg`` or a stand-in.
            cpu_count: ``os.cpu_count`` or a stand-in.
        """
        self._max_load = max_load_per_cpu
        self._metered = metered
        self._updating = updating
        self._root = power_supply_root
        self._loadavg = loadavg
        self._cpu_count = cpu_count

    def current(self) -> dict[str, float]:
        load = self.load_per_cpu()
        return {
            "idle": float(load < self._max_load),
            "charging": float(self.on_external_power()),
            "unmetered": float(not self._metered),
            "not_updating": float(not self._updating()),
            "load_per_cpu": load,
        }

    def load_per_cpu(self) -> float:
        """1-minute load average divided by the CPU count; +inf when it cannot be read."""
        try:
            one_minute = self._loadavg()[0]
        except OSError:
            return float("inf")
        return one_minute / max(1, self._cpu_count() or 1)

    def on_external_power(self) -> bool:
        """Mains/USB online, a battery charging or full, or no battery at all."""
        has_battery = False
        for supply in _supplies(self._root):
            kind = _read(supply / "type")
            if kind in _EXTERNAL_TYPES and _read(supply / "online") == "1":
                return True
            if kind == "Battery":
                has_battery = True
                if _read(supply / "status") in _ON_POWER_STATUS:
                    return True
        return not has_battery


def _supplies(root: Path) -> list[Path]:
    try:
        return sorted(root.iterdir())
    except OSError:  # no power_supply class at all: a mains-powered board
        return []


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return ""

"""Resource readings from /proc and the filesystem (Linux); missing sources read as 0 / NaN."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from agent.state import Resources

_THERMAL = Path("/sys/class/thermal/thermal_zone0/temp")


def read_resources(data_dir: Path) -> Resources:
    mem_total = mem_avail = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key == "MemTotal":
                mem_total = int(rest.split()[0]) * 1024
            elif key == "MemAvailable":
                mem_avail = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    try:
        uptime = int(float(Path("/proc/uptime").read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        uptime = 0
    try:
        temp = int(_THERMAL.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        temp = math.nan
    try:
        disk_free = shutil.disk_usage(data_dir).free
    except OSError:
        disk_free = 0
    return Resources(
        cpu_load_1m=os.getloadavg()[0],
        mem_total_bytes=mem_total,
        mem_available_bytes=mem_avail,
        disk_free_bytes=disk_free,
        temperature_c=temp,
        uptime_s=uptime,
    )

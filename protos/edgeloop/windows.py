"""Maintenance windows: when a rollout may download (server) or switch (device), written once.

Shared by the fleet server (`fleet_server/rollouts/windows.py`: the download window of a batch) and
the agent (`agent/ota/work.py`: the apply window of a staged update), which must agree byte for byte
(ARCHITECTURE.md rule 1). Pure: no clock, no IO; the caller passes `now` (UTC, tz-aware).

A window is `{"days": [0-6 or "mon".."sun"], "start": "HH:MM", "end": "HH:MM", "tz": IANA name}`:
open on each listed day (in `tz`, 0 = Monday) from `start` (inclusive) to `end` (exclusive); an `end`
at or before `start` crosses midnight into the next day (the opening day is the one listed). Local
wall-clock times: a start in a DST gap opens at the first instant after the gap, an ambiguous time
(fold) means its first occurrence. An empty list of windows is always open.
Does not own: validation messages of the REST API (the server's schema) or when to ask.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
MAX_WINDOWS = 32


class WindowError(ValueError):
    """A window is malformed (unknown day, time not HH:MM, unknown time zone)."""


@dataclass(frozen=True, slots=True)
class Window:
    days: frozenset[int]
    start: time
    end: time
    tz: ZoneInfo


def parse_day(day: int | str) -> int:
    if isinstance(day, bool):
        raise WindowError(f"bad day {day!r}")
    if isinstance(day, int):
        if 0 <= day <= 6:
            return day
        raise WindowError(f"day {day} is not 0 (Monday) .. 6 (Sunday)")
    name = str(day).strip().lower()[:3]
    if name in DAY_NAMES and str(day).strip().lower() in (name, _full(name)):
        return DAY_NAMES.index(name)
    raise WindowError(f"bad day {day!r}: use 0-6 or mon..sun")


def _full(short: str) -> str:
    return {
        "mon": "monday",
        "tue": "tuesday",
        "wed": "wednesday",
        "thu": "thursday",
        "fri": "friday",
        "sat": "saturday",
        "sun": "sunday",
    }[short]


def parse_time(value: str) -> time:
    m = _HHMM.match(value)
    if m is None:
        raise WindowError(f"bad time {value!r}: use HH:MM (00:00-23:59)")
    return time(int(m.group(1)), int(m.group(2)))


def parse_tz(name: str) -> ZoneInfo:
    if not name or len(name) > 64 or ".." in name or name.startswith("/"):
        raise WindowError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as err:
        raise WindowError(f"unknown time zone {name!r}") from err


def parse(raw: Sequence[Mapping[str, Any]]) -> list[Window]:
    """Windows from their JSON form. Raises WindowError."""
    if len(raw) > MAX_WINDOWS:
        raise WindowError(f"at most {MAX_WINDOWS} windows")
    out = []
    for w in raw:
        days = w.get("days")
        if not isinstance(days, list | tuple) or not days:
            raise WindowError("a window needs at least one day")
        out.append(
            Window(
                days=frozenset(parse_day(d) for d in days),
                start=parse_time(str(w.get("start", ""))),
                end=parse_time(str(w.get("end", ""))),
                tz=parse_tz(str(w.get("tz", "UTC"))),
            )
        )
    return out


def _local(d: date, t: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock `t` on `d` in `tz` (a time in a DST gap moves past the gap)."""
    naive = datetime.combine(d, t)
    for minutes in range(0, 24 * 60):  # in a gap (DST spring forward): the first minute after it
        local = naive + timedelta(minutes=minutes)
        utc = local.replace(tzinfo=tz, fold=0).astimezone(UTC)
        if utc.astimezone(tz).replace(tzinfo=None) == local:
            return utc
    return naive.replace(tzinfo=tz).astimezone(UTC)  # pragma: no cover - no zone has a day-long gap


def _spans(w: Window, around: datetime) -> list[tuple[datetime, datetime]]:
    """Open intervals (UTC) of `w` whose opening day is within 2 days before to 8 days after `around`."""
    today = around.astimezone(w.tz).date()
    out = []
    for offset in range(-2, 9):
        d = today + timedelta(days=offset)
        if d.weekday() not in w.days:
            continue
        opens = _local(d, w.start, w.tz)
        end_day = d if w.end > w.start else d + timedelta(days=1)
        closes = _local(end_day, w.end, w.tz)
        if closes > opens:
            out.append((opens, closes))
    return out


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def is_open(windows: Sequence[Window], now: datetime) -> bool:
    """True when `now` is inside any window, or there are none."""
    if not windows:
        return True
    at = _utc(now)
    return any(o <= at < c for w in windows for o, c in _spans(w, at))


def next_open(windows: Sequence[Window], now: datetime) -> datetime | None:
    """`now` if open, else the next opening (UTC) within a week; None when there are no windows
    (always open: never waiting) or none opens within 8 days (cannot happen for a valid window)."""
    at = _utc(now)
    if is_open(windows, at):
        return at
    opens = [o for w in windows for o, _ in _spans(w, at) if o > at]
    return min(opens) if opens else None


def describe_wait(windows: Sequence[Window], now: datetime, what: str) -> str:
    """E.g. "waiting for the download window, opens at 2026-12-07T22:00:00+00:00"."""
    nxt = next_open(windows, now)
    when = nxt.isoformat(timespec="seconds") if nxt is not None else "never within a week"
    return f"waiting for the {what} window, opens at {when}"

"""Download and apply windows of a rollout: the REST shape and the server's use of the shared check.

The window arithmetic itself (`is_open`, `next_open`) is pure and lives in `protos/edgeloop/windows.py`
so the agent's apply-window check is the same code (ARCHITECTURE.md rule 1); this module re-exports it
and owns the pydantic shape (`Windows`, bounded, an unknown time zone is a 422) and how a rollout row
stores it (`batch_spec["windows"]`, no migration). Does not own when the engine asks (engine.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from protos.edgeloop.windows import (
    Window,
    WindowError,
    describe_wait,
    is_open,
    next_open,
    parse,
    parse_tz,
)

DayName = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class MaintenanceWindow(BaseModel):
    """Open on `days` (0 = Monday, or mon..sun) from `start` to `end` (HH:MM, local time in `tz`);
    an `end` at or before `start` crosses midnight."""

    model_config = ConfigDict(extra="forbid")

    days: list[Annotated[int, Field(ge=0, le=6)] | DayName] = Field(min_length=1, max_length=7)
    start: str = Field(pattern=_HHMM, max_length=5)
    end: str = Field(pattern=_HHMM, max_length=5)
    tz: str = Field(default="UTC", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_+\-/]+$")

    @field_validator("tz")
    @classmethod
    def _known_tz(cls, v: str) -> str:
        try:
            parse_tz(v)
        except WindowError as err:
            raise ValueError(str(err)) from err
        return v


class Windows(BaseModel):
    """When batches may be assigned (`download`, checked by the server) and when a device may switch
    to the staged model (`apply`, carried to the device in its signed assignment). Empty: always."""

    model_config = ConfigDict(extra="forbid")

    download: list[MaintenanceWindow] = Field(default_factory=list, max_length=32)
    apply: list[MaintenanceWindow] = Field(default_factory=list, max_length=32)


def stored(row_batch_spec: dict[str, Any], kind: Literal["download", "apply"]) -> list[Window]:
    """The rollout's parsed windows of `kind` (none stored: always open)."""
    raw = (row_batch_spec.get("windows") or {}).get(kind) or []
    return parse(raw)


def download_wait(row_batch_spec: dict[str, Any], now: datetime) -> str | None:
    """None when a batch may be assigned now; else the visible reason with the next opening."""
    windows = stored(row_batch_spec, "download")
    if is_open(windows, now):
        return None
    return describe_wait(windows, now, "download")


__all__ = [
    "MaintenanceWindow",
    "Window",
    "WindowError",
    "Windows",
    "describe_wait",
    "download_wait",
    "is_open",
    "next_open",
    "parse",
    "stored",
]

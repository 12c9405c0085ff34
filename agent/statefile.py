"""Persisted agent state (`state.json`): what was last applied from desired state.

Written atomically after every reconcile, read at start, so a restarted agent knows which
generation it already applied. Values are strings and numbers, never pickles.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from agent.fsutil import atomic_write
from agent.state import AgentSettings, ObservedState

FORMAT_VERSION = 1


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> ObservedState:
        """A missing or corrupt file yields a fresh state (and the server re-sends desired state)."""
        try:
            raw = json.loads(self.path.read_text())
            return ObservedState(
                applied_generation=int(raw["applied_generation"]),
                settings=AgentSettings(**raw["settings"]),
                labels={str(k): str(v) for k, v in raw["labels"].items()},
            )
        except (OSError, ValueError, KeyError, TypeError):
            return ObservedState()

    def save(self, state: ObservedState) -> None:
        data = {
            "format_version": FORMAT_VERSION,
            "applied_generation": state.applied_generation,
            "settings": asdict(state.settings),
            "labels": state.labels,
        }
        atomic_write(self.path, json.dumps(data, sort_keys=True).encode())

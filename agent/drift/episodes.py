"""Drift episodes: one report when drift starts and one when it ends, not one per test.

Owns the episode state machine over per-block crossings:

    QUIET --(any crossing)--> OPEN      emits the episode with state "open"
    OPEN  --(crossing)------> OPEN      evidence merged (max statistic per channel), quiet count reset;
                                        emits an "open" update only when a channel new to this
                                        episode crossed (so at most one update per channel)
    OPEN  --(quiet_blocks clean blocks in a row)--> QUIET   emits the same episode, state "closed"

Evidence is bounded (the `max_evidence` strongest channels). Pure: positions are sample counts
handed in by the monitor; wall-clock time is added by the reporter. Does not compute statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from agent.drift.bank import Crossing


class EpisodeState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True)
class Evidence:
    """Strongest crossing seen for one channel during an episode (statistic in z units or run length)."""

    channel: str
    kind: str
    feature: str
    statistic: float
    threshold: float
    window_rows: int

    @property
    def ratio(self) -> float:
        return self.statistic / self.threshold if self.threshold > 0 else 0.0


@dataclass(frozen=True)
class Episode:
    episode_id: int
    stream: str  # "inputs" | "outputs" | "labels"
    state: EpisodeState
    start_sample: int  # estimated change point (start of the strongest crossing window)
    detected_sample: int
    end_sample: int  # 0 while open
    severity: float  # strongest statistic / threshold
    evidence: tuple[Evidence, ...]
    budget_per_10k: float
    reported_sample: int = 0  # position of this report (open, update or close)


def evidence_of(crossing: Crossing) -> Evidence:
    _, _, feature = crossing.channel.partition(":")
    return Evidence(
        crossing.channel, crossing.kind, feature, crossing.statistic, crossing.threshold, crossing.window_rows
    )


class EpisodeTracker:
    """Episode state for one stream of a monitor."""

    def __init__(
        self, *, stream: str, budget_per_10k: float, quiet_blocks: int, max_evidence: int = 16
    ) -> None:
        self.stream = stream
        self._budget = budget_per_10k
        self._quiet_blocks = quiet_blocks
        self._max_evidence = max_evidence
        self._open: Episode | None = None
        self._evidence: dict[str, Evidence] = {}
        self._quiet = 0
        self._last_alarm = 0
        self._channels: set[str] = set()
        self.opened_total = 0

    @property
    def current(self) -> Episode | None:
        return self._open

    def step(self, crossings: list[Crossing], position: int, next_id: int) -> Episode | None:
        """Advance one block ending at sample `position`; returns an episode event or None."""
        if crossings:
            return self._alarm(crossings, position, next_id)
        if self._open is None:
            return None
        self._quiet += 1
        if self._quiet < self._quiet_blocks:
            return None
        closed = replace(
            self._open, state=EpisodeState.CLOSED, end_sample=self._last_alarm, reported_sample=position
        )
        self._open, self._evidence, self._quiet, self._channels = None, {}, 0, set()
        return closed

    def _alarm(self, crossings: list[Crossing], position: int, next_id: int) -> Episode | None:
        self._quiet, self._last_alarm = 0, position
        new_channel = not {c.channel for c in crossings} <= self._channels
        self._channels |= {c.channel for c in crossings}
        for c in crossings:
            ev = evidence_of(c)
            old = self._evidence.get(ev.channel)
            if old is None or ev.ratio > old.ratio:
                self._evidence[ev.channel] = ev
        strongest = sorted(self._evidence.values(), key=lambda e: -e.ratio)[: self._max_evidence]
        self._evidence = {e.channel: e for e in strongest}
        if self._open is not None:
            self._open = replace(
                self._open, severity=strongest[0].ratio, evidence=tuple(strongest), reported_sample=position
            )
            return self._open if new_channel else None
        top = strongest[0]
        self.opened_total += 1
        self._open = Episode(
            episode_id=next_id,
            stream=self.stream,
            state=EpisodeState.OPEN,
            start_sample=max(0, position - top.window_rows),
            detected_sample=position,
            end_sample=0,
            severity=top.ratio,
            evidence=tuple(strongest),
            budget_per_10k=self._budget,
            reported_sample=position,
        )
        return self._open

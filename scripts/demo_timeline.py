"""The demo's timeline (contract A of issue 15): what happened, with numbers, kept in `timeline.json`.

`Timeline.stage(key, title)` is a context manager: it times the stage, records its facts, and
rewrites the JSON file when the stage ends (ok or not), so a failed run still leaves what happened.
`summary()` prints the rich table the demo ends with.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


class Timeline:
    def __init__(self, path: Path, *, quick: bool) -> None:
        self.path = path
        self.t0 = time.monotonic()
        self.epoch0 = time.time()  # to place server timestamps (unix ms) on the timeline
        self.doc: dict[str, Any] = {
            "schema": 1,
            "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "wall_s": 0.0,
            "quick": quick,
            "console_url": "",
            "devices": [],
            "stages": [],
            "accuracy": [],
            "drift": {"episodes": [], "verdicts": [], "scores": []},
            "rollouts": [],
            "ota": {"delta_bytes": 0, "full_bytes": 0, "per_device": []},
            "federated": {},
            "bad_release": {},
        }

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def at(self, unix_ms: float) -> float:
        """A server timestamp (unix ms) as seconds since the demo started."""
        return round(unix_ms / 1000 - self.epoch0, 2)

    @contextmanager
    def stage(self, key: str, title: str) -> Iterator[dict[str, Any]]:
        """Yields the stage's `facts` dict to fill; the stage is ok unless the block raises."""
        entry: dict[str, Any] = {"key": key, "title": title, "t_start_s": self.now(), "wall_s": 0.0,
                                 "ok": False, "facts": {}}  # fmt: skip
        self.doc["stages"].append(entry)
        try:
            yield entry["facts"]
            entry["ok"] = True
        except BaseException as err:
            entry["facts"]["error"] = str(err)[:500]
            raise
        finally:
            entry["wall_s"] = round(self.now() - entry["t_start_s"], 2)
            self.save()

    def save(self) -> None:
        self.doc["wall_s"] = self.now()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_finite(self.doc), indent=2, default=str))
        tmp.replace(self.path)

    def summary(self, console: Console) -> None:
        t = self.doc
        table = Table(title="the loop, stage by stage", show_lines=False)
        for col in ("stage", "wall s", "ok", "numbers"):
            table.add_column(col, overflow="fold")
        for s in t["stages"]:
            facts = ", ".join(f"{k}={_short(v)}" for k, v in s["facts"].items() if k != "error")
            table.add_row(s["title"], f"{s['wall_s']:.1f}", "yes" if s["ok"] else "[red]NO[/]", facts)
        console.print(table)
        acc = Table(title="accuracy on held-out inputs, through the agents")
        for col in ("point", "model", "inputs", "accuracy"):
            acc.add_column(col)
        for a in t["accuracy"]:
            acc.add_row(a["point"], a["model"], a["inputs"], f"{a['accuracy']:.1%}")
        console.print(acc)
        ota, fl, bad = t["ota"], t["federated"], t["bad_release"]
        if ota.get("full_bytes"):
            console.print(
                f"OTA bytes for v2: {ota['delta_bytes']:,} B fetched vs {ota['full_bytes']:,} B full files "
                f"({ota['delta_bytes'] / ota['full_bytes']:.0%})"
            )
        if fl:
            eps = fl.get("epsilon")
            console.print(
                f"federated run {str(fl.get('run_id', ''))[:12]}: triggered_by={fl.get('triggered_by')}, "
                f"secure aggregation {'on' if fl.get('secure_aggregation') else 'off'}, "
                f"{len(fl.get('rounds', []))} rounds, devices {fl.get('devices')}, excluded {fl.get('excluded')}, "
                f"ε {'not spent (client DP off)' if eps is None else f'{eps:.3g}'}"
            )
        if bad:
            console.print(
                f"bad release {bad.get('release')}: halted at {bad.get('halted_at')}, "
                f"rolled back {bad.get('rolled_back_devices')}, all back on {bad.get('all_back_on')}"
            )
        console.print(f"total wall time {t['wall_s']:.0f} s · console {t['console_url']}")


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    text = str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _finite(x: Any) -> Any:
    """JSON without NaN/Infinity (an unbounded epsilon is written as null)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x

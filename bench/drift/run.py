"""Drift benchmark: every detector on the same streams in the same run.

Usage: .venv/bin/python bench/drift/run.py [--reps 20] [--kswin-reps 2] [--workers 2] [--json out.json]
       [--scenarios issue17]   (only the issue-17 families: wide20, wide64, daily, const)

Metrics per scenario: det% = share of change streams with an alarm in [t0, t0+1000) ([t0, t0+2000)
for the gradual ramp); mean delay of the first such alarm; FA/10k = alarms per 10,000 samples pooled
over the control streams and the pre-change halves of the change streams of the same family
(synthetic / Shuttle); CPU ms per 1,000 rows (time.process_time of the streaming loop; median
and quartiles over the streams of one width); state bytes (with the reference copy a detector
keeps, and mutable state alone); setup CPU (building and calibrating the reference; ours only).
KSWIN is left out of the issue-17 families (about a minute of CPU per d=64 stream).
"edgeloop-seasonal" runs only on the streams with timestamps (the daily family).
Needs river (anchors and the Shuttle data), numpy and scipy. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.drift.detectors import detectors
from bench.drift.streams import SCENARIOS, make_stream

CHANGES = [s for s in SCENARIOS if not s.endswith("ctrl")]
ISSUE17 = ("wide20", "wide64", "daily", "const")
BASE_CHANGES = [s for s in CHANGES if not s.startswith(ISSUE17)]
NEW_CHANGES = [s for s in CHANGES if s.startswith(ISSUE17)]


def run_task(task: tuple[str, int, list[str]]) -> list[dict[str, Any]]:
    scenario, rep, names = task
    stream = make_stream(scenario, rep)
    out = []
    times = None if stream.t is None or stream.t_ref is None else (stream.t_ref, stream.t)
    for name, fn in detectors().items():
        if name not in names or (name == "edgeloop-seasonal" and times is None):
            continue
        if name == "KSWIN" and scenario.startswith(ISSUE17):
            continue
        alarms, cpu, state, setup, mutable = fn(stream.reference, stream.data, rep, times)
        out.append(
            {
                "detector": name,
                "scenario": scenario,
                "family": stream.family,
                "rep": rep,
                "alarms": alarms,
                "cpu_s": cpu,
                "rows": int(stream.data.shape[0]),
                "d": int(stream.data.shape[1]),
                "state": state,
                "mutable": mutable,
                "setup_s": setup,
                "change_at": stream.change_at,
                "window": stream.window,
            }
        )
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    acc: dict[str, Any] = defaultdict(
        lambda: {
            "fa": defaultdict(lambda: [0, 0]),
            "det": {},
            "cpu": {},
            "state": {},
            "mutable": {},
            "setup": {},
        }
    )
    for r in rows:
        a = acc[r["detector"]]
        t0 = r["change_at"]
        quiet = r["rows"] if t0 is None else t0
        fa = a["fa"][r["family"]]
        fa[0] += sum(1 for x in r["alarms"] if x < quiet)
        fa[1] += quiet
        if t0 is not None:
            hits = [x - t0 for x in r["alarms"] if t0 <= x < t0 + r["window"]]
            a["det"].setdefault(r["scenario"], []).append(hits[0] if hits else None)
        a["cpu"].setdefault(r["d"], []).append(1e6 * r["cpu_s"] / r["rows"])
        a["state"].setdefault(r["d"], []).append(r["state"])
        a["mutable"].setdefault(r["d"], []).append(r.get("mutable", r["state"]))
        a["setup"].setdefault(r["d"], []).append(r.get("setup_s", 0.0))
    out: dict[str, Any] = {}
    for name, a in acc.items():
        det = {}
        for sc, delays in a["det"].items():
            found = [d for d in delays if d is not None]
            det[sc] = {
                "rate": len(found) / len(delays),
                "delay": sum(found) / len(found) if found else None,
                "n": len(delays),
            }
        out[name] = {
            "fa": {
                fam: {"alarms": v[0], "samples": v[1], "per_10k": 1e4 * v[0] / v[1]}
                for fam, v in a["fa"].items()
            },
            "det": det,
            "mean_det": sum(v["rate"] for v in det.values()) / max(1, len(det)),
            "cpu_ms_per_1k": {d: sum(v) / len(v) for d, v in a["cpu"].items()},
            "cpu_quartiles": {d: _quartiles(v) for d, v in a["cpu"].items()},
            "state_bytes": {d: max(v) for d, v in a["state"].items()},
            "mutable_bytes": {d: max(v) for d, v in a["mutable"].items()},
            "setup_s": {d: _quartiles(v) for d, v in a["setup"].items()},
        }
    return out


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    v = sorted(values)
    pick = [v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))] for q in (0.25, 0.5, 0.75)]
    return pick[0], pick[1], pick[2]


def _cell(det: dict[str, Any] | None) -> str:
    if det is None:
        return "-"
    delay = "-" if det["delay"] is None else f"{det['delay']:.0f}"
    return f"{100 * det['rate']:.0f}% ({delay})"


def _poisson_ci(k: int, n: int) -> str:
    # Wilson-Hilferty approximation of the exact Poisson interval, per 10k samples.
    lo = 0.0 if k == 0 else k * (1 - 1 / (9 * k) - 1.96 / (3 * math.sqrt(k))) ** 3
    hi = (k + 1) * (1 - 1 / (9 * (k + 1)) + 1.96 / (3 * math.sqrt(k + 1))) ** 3
    return f"[{1e4 * lo / n:.2f}, {1e4 * hi / n:.2f}]"


def markdown(summary: dict[str, Any]) -> str:
    head = (
        "| detector | mean det% | FA/10k syn [95% CI] | FA/10k Shuttle [95% CI] | "
        + " | ".join(s.removeprefix("syn_") for s in BASE_CHANGES)
        + " | CPU ms/1k d=5 / d=9 | state B d=5 / d=9 |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, s in summary.items():
        fa = [s["fa"].get(f, {"alarms": 0, "samples": 1, "per_10k": 0}) for f in ("syn", "shuttle")]
        if not any(sc in s["det"] for sc in BASE_CHANGES):
            continue
        cells = [_cell(s["det"].get(sc)) for sc in BASE_CHANGES]
        cpu = " / ".join(f"{s['cpu_ms_per_1k'].get(d, float('nan')):.1f}" for d in (5, 9))
        state = " / ".join(f"{s['state_bytes'].get(d, 0):,}" for d in (5, 9))
        fas = [
            f"{f['per_10k']:.2f} ({f['alarms']}/{f['samples']}) {_poisson_ci(f['alarms'], f['samples'])}"
            for f in fa
        ]
        lines.append(
            f"| {name} | {100 * s['mean_det']:.1f}% | {fas[0]} | {fas[1]} | "
            + " | ".join(cells)
            + f" | {cpu} | {state} |"
        )
    return "\n".join(lines) + "\n\n" + markdown_issue17(summary)


def _fa(s: dict[str, Any], fam: str) -> str:
    f = s["fa"].get(fam)
    if f is None:
        return "-"
    return f"{f['per_10k']:.2f} ({f['alarms']}/{f['samples']}) {_poisson_ci(f['alarms'], f['samples'])}"


def _cpu(s: dict[str, Any], d: int) -> str:
    q = s["cpu_quartiles"].get(d)
    return "-" if q is None else f"{q[1]:.1f} [{q[0]:.1f}-{q[2]:.1f}]"


def markdown_issue17(summary: dict[str, Any]) -> str:
    """Issue-17 table: wide one-feature shifts, the daily cycle, the constant feature, and costs."""
    head = (
        "| detector | wide20_one | FA/10k wide20 | wide64_one | FA/10k wide64 | daily_shift | FA/10k daily "
        "| const_change | FA/10k const | CPU ms/1k d=20 | CPU ms/1k d=64 | state B d=20 / d=64 "
        "(mutable) | setup s d=64 |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, s in summary.items():
        if not any(sc in s["det"] for sc in NEW_CHANGES):
            continue
        cells = [
            _cell(s["det"].get("wide20_one")),
            _fa(s, "wide20"),
            _cell(s["det"].get("wide64_one")),
            _fa(s, "wide64"),
            _cell(s["det"].get("daily_shift")),
            _fa(s, "daily"),
            _cell(s["det"].get("const_change")),
            _fa(s, "const"),
            _cpu(s, 20),
            _cpu(s, 64),
            " / ".join(
                f"{s['state_bytes'].get(d, 0):,} ({s['mutable_bytes'].get(d, 0):,})" for d in (20, 64)
            ),
            "-"
            if 64 not in s["setup_s"] or not s["setup_s"][64][1]
            else "{:.2f} [{:.2f}-{:.2f}]".format(
                s["setup_s"][64][1], s["setup_s"][64][0], s["setup_s"][64][2]
            ),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--kswin-reps", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", action="append", help="run only these detectors")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--scenarios", choices=("all", "issue17", "base"), default="all")
    ns = parser.parse_args()
    names = ns.only or list(detectors())
    tasks = []
    chosen_scenarios = [
        sc
        for sc in SCENARIOS
        if ns.scenarios == "all" or (sc.startswith(ISSUE17) == (ns.scenarios == "issue17"))
    ]
    # Interleaved: every repetition runs every scenario before the next repetition starts.
    for rep in range(ns.reps):
        for sc in chosen_scenarios:
            chosen = [n for n in names if n != "KSWIN" or rep < ns.kswin_reps]
            tasks.append((sc, rep, chosen))
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=ns.workers) as pool:
        rows = [r for chunk in pool.map(run_task, tasks) for r in chunk]
    summary = summarise(rows)
    print(markdown(summary))
    print(f"\n{len(tasks)} streams, {time.perf_counter() - started:.0f} s wall")
    if ns.json:
        ns.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

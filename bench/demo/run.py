"""The demo loop's wall time per stage and its bytes on the wire, with OTA deltas vs full files.

Runs the real `scripts/demo.py --quick --work DIR` (every server and agent process real, as in
`make demo`) alternately with and without `--full-files`, `--reps` times each, interleaved (the
order flips every repetition, so machine noise that drifts over the session lands on both arms),
and reads each run's `DIR/timeline.json` (contract A; written after every stage, so a failed run
still counts what it did). Per arm: each stage's wall time
(median, min-max over the runs where the stage was recorded, with its failures counted), the whole
demo's wall time, and the OTA bytes on the wire: what the devices fetched for v2
(`ota.per_device[].bytes` summed, else `ota.delta_bytes`) against what full files would have been
(`ota.full_bytes`), and what every agent fetched for every release of the run
(`ota.demo_total_bytes`, from the agents' own OTA reports). Between arms: v2's fetched bytes with
deltas as a share of those with full files. All traffic of the demo (Sync, telemetry, federated
rounds, OTA) is approximated by the loopback byte counter (/proc/net/dev `lo`) across each run:
every process of the demo talks over 127.0.0.1, but so does everything else in this network
namespace, so that number only means something on an otherwise idle machine.

    .venv/bin/python bench/demo/run.py [--reps 3] [--json out.json] [--work DIR] [--timeout-s 1800]
    .venv/bin/python bench/demo/run.py --summarize out.json     # the table again, from a saved run

Each run takes minutes; --reps 1 is a smoke run. Extra demo flags go after `--`
(e.g. `-- --devices 6`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "scripts" / "demo.py"
ARMS = ("delta", "full")  # "full" = --full-files


def demo_cmd(arm: str, work: Path, extra: list[str]) -> list[str]:
    cmd = [sys.executable, str(DEMO), "--quick", "--work", str(work)]
    return cmd + (["--full-files"] if arm == "full" else []) + extra


def loopback_bytes() -> int | None:
    """Bytes received on `lo` so far (on loopback every byte sent is received once)."""
    try:
        for line in Path("/proc/net/dev").read_text().splitlines():
            name, _, counters = line.partition(":")
            if name.strip() == "lo":
                return int(counters.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return None


def run_once(arm: str, work: Path, extra: list[str], timeout_s: float) -> dict[str, Any]:
    """One demo run; never raises for a failed demo (the timeline says how far it got)."""
    work.mkdir(parents=True, exist_ok=True)
    log = work.parent / f"{work.name}.log"
    lo0 = loopback_bytes()
    t0 = time.monotonic()
    with log.open("w") as out:
        try:
            rc: int | str = subprocess.run(
                demo_cmd(arm, work, extra), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                timeout=timeout_s, check=False, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            ).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            rc = "timeout"
    outside_s = time.monotonic() - t0
    lo1 = loopback_bytes()
    path = work / "timeline.json"
    try:
        timeline = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        timeline = {"error": f"no timeline: {e}"}
    return {"arm": arm, "rc": rc, "outside_wall_s": outside_s, "work": str(work), "log": str(log),
            "loopback_bytes": lo1 - lo0 if lo0 is not None and lo1 is not None else None,
            "timeline": timeline}  # fmt: skip


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def ota_bytes(timeline: dict[str, Any]) -> dict[str, float | None]:
    """Bytes the devices fetched for the delta-able release (v2) in one run, the full-file size of
    the same updates, and what every agent fetched for every release of the run (demo_total)."""
    ota = timeline.get("ota") if isinstance(timeline.get("ota"), dict) else {}
    per = [p for p in ota.get("per_device") or [] if isinstance(p, dict)]
    sent_per = [_num(p.get("bytes")) for p in per]
    sent = (
        sum(v for v in sent_per if v is not None)
        if per and None not in sent_per
        else _num(ota.get("delta_bytes"))
    )
    return {
        "sent": sent,
        "full": _num(ota.get("full_bytes")),
        "demo_total": _num(ota.get("demo_total_bytes")),
    }


def _stats(values: list[float]) -> dict[str, float | int] | None:
    if not values:
        return None
    return {"n": len(values), "median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm: stage wall times, demo wall time, bytes; and the delta/full ratio of sent bytes."""
    arms: dict[str, Any] = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        stages: dict[str, dict[str, Any]] = {}
        for r in mine:
            for st in r["timeline"].get("stages") or []:
                s = stages.setdefault(str(st.get("key")), {"title": st.get("title"), "wall": [], "failed": 0})
                if (w := _num(st.get("wall_s"))) is not None:
                    s["wall"].append(w)
                s["failed"] += st.get("ok") is False
        sent = [b["sent"] for r in mine if (b := ota_bytes(r["timeline"]))["sent"] is not None]
        full = [b["full"] for r in mine if (b := ota_bytes(r["timeline"]))["full"] is not None]
        walls = [w for r in mine if (w := _num(r["timeline"].get("wall_s"))) is not None]
        lo = [float(r["loopback_bytes"]) for r in mine if r.get("loopback_bytes") is not None]
        total = [b["demo_total"] for r in mine if (b := ota_bytes(r["timeline"]))["demo_total"] is not None]
        arms[arm] = {
            "runs": len(mine),
            "ok_runs": sum(1 for r in mine if r["rc"] == 0),
            "wall_s": _stats(walls),
            "stages": {
                k: {"title": v["title"], "wall_s": _stats(v["wall"]), "failed": v["failed"]}
                for k, v in stages.items()
            },
            "ota_sent_bytes": _stats(sent),
            "ota_full_bytes": _stats(full),
            "loopback_bytes": _stats(lo),
            "ota_demo_total_bytes": _stats(total),
        }
    d, f = arms["delta"]["ota_sent_bytes"], arms["full"]["ota_sent_bytes"]
    ratio = d["median"] / f["median"] if d and f and f["median"] else None
    return {"arms": arms, "delta_vs_full_sent_ratio": ratio}


def _fmt(s: dict[str, Any] | None, unit: str = "s") -> str:
    if not s:
        return "not recorded"
    if unit == "B":
        return f"{s['median']:,.0f} B ({s['min']:,.0f}-{s['max']:,.0f}, n={s['n']})"
    return f"{s['median']:.1f} s ({s['min']:.1f}-{s['max']:.1f}, n={s['n']})"


def markdown(summary: dict[str, Any], cmd: str, env: dict[str, Any]) -> str:
    """A BENCHMARKS.md section from the summary."""
    a = summary["arms"]
    keys = list(dict.fromkeys([*a["delta"]["stages"], *a["full"]["stages"]]))
    lines = [
        "### The demo loop: wall time per stage, bytes on the wire (deltas vs full files)",
        "",
        f"`{cmd}` on {env['machine']}; median (min-max, n runs), runs interleaved.",
        "",
        "| stage | with deltas | with full files |",
        "|---|---|---|",
    ]
    for k in keys:
        cells = []
        for arm in ARMS:
            st = a[arm]["stages"].get(k)
            cell = _fmt(st["wall_s"]) if st else "not run"
            cells.append(cell + (f", {st['failed']} failed" if st and st["failed"] else ""))
        lines.append(f"| {k} | {cells[0]} | {cells[1]} |")
    lines.append(f"| **whole demo** | {_fmt(a['delta']['wall_s'])} | {_fmt(a['full']['wall_s'])} |")
    lines += [
        "",
        "| OTA bytes | with deltas | with full files |",
        "|---|---|---|",
        f"| fetched by the devices | {_fmt(a['delta']['ota_sent_bytes'], 'B')} | "
        f"{_fmt(a['full']['ota_sent_bytes'], 'B')} |",
        f"| full-file size of the same updates | {_fmt(a['delta']['ota_full_bytes'], 'B')} | "
        f"{_fmt(a['full']['ota_full_bytes'], 'B')} |",
        f"| OTA, every release of the demo, all devices | {_fmt(a['delta']['ota_demo_total_bytes'], 'B')} | "
        f"{_fmt(a['full']['ota_demo_total_bytes'], 'B')} |",
        f"| whole demo on loopback (machine-wide counter) | {_fmt(a['delta']['loopback_bytes'], 'B')} | "
        f"{_fmt(a['full']['loopback_bytes'], 'B')} |",
        "",
    ]
    r = summary["delta_vs_full_sent_ratio"]
    lines.append(f"Deltas send {r:.1%} of the full-file bytes (median over runs)." if r is not None
                 else "Delta vs full ratio: not recorded.")  # fmt: skip
    runs_ok = ", ".join(f"{arm}: {a[arm]['ok_runs']}/{a[arm]['runs']} runs exited 0" for arm in ARMS)
    lines.append(f"{runs_ok}.")
    return "\n".join(lines) + "\n"


def environment() -> dict[str, Any]:
    return {
        "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}",
        "loadavg_at_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _save(path: Path | None, env: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    if path is not None:  # after every run, so an interrupted bench keeps what it measured
        data = {"env": env, "runs": runs, "summary": summarize(runs)}
        path.write_text(json.dumps(data, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    ap.add_argument("--reps", type=int, default=3, help="runs per arm (default 3)")
    ap.add_argument("--json", type=Path, default=None, help="write runs + summary here (after every run)")
    ap.add_argument(
        "--work", type=Path, default=None, help="folder for the runs (default: a temp folder, kept)"
    )
    ap.add_argument("--timeout-s", type=float, default=1800.0, help="per demo run")
    ap.add_argument(
        "--summarize", type=Path, default=None, help="print the table of an earlier --json; run nothing"
    )
    ap.add_argument("extra", nargs="*", help="after --: extra flags for scripts/demo.py")
    args = ap.parse_args(argv)
    cmd = f"python bench/demo/run.py --reps {args.reps}" + (
        " -- " + " ".join(args.extra) if args.extra else ""
    )
    if args.summarize:
        data = json.loads(args.summarize.read_text())
        print(markdown(summarize(data["runs"]), data["env"].get("cmd", cmd), data["env"]))
        return 0
    base = args.work or Path(tempfile.mkdtemp(prefix="edgeloop-demo-bench-"))
    env = {**environment(), "cmd": cmd}
    runs: list[dict[str, Any]] = []
    for rep in range(args.reps):
        for arm in ARMS if rep % 2 == 0 else ARMS[::-1]:
            work = base / f"{rep:02d}-{arm}"
            print(f"rep {rep + 1}/{args.reps} {arm}: {' '.join(demo_cmd(arm, work, args.extra))}", flush=True)
            r = run_once(arm, work, args.extra, args.timeout_s)
            b = ota_bytes(r["timeline"])
            print(f"  rc={r['rc']} wall={r['outside_wall_s']:.1f} s ota sent={b['sent']} full={b['full']} "
                  f"loopback={r['loopback_bytes']}", flush=True)  # fmt: skip
            runs.append(r)
            _save(args.json, env, runs)
    print(markdown(summarize(runs), cmd, env))
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

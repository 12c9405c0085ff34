"""The report `make demo` leaves behind: `.demo/report.html` (self-contained) and `.demo/report.md`.

`render(timeline, out_dir)` reads the demo's timeline (contract A in the issue-15 notes: stages, the
accuracy across the loop, drift episodes and cohort verdicts, rollouts with their gates, OTA bytes,
the federated run, the bad release) and writes:

- `out_dir/report.html`: one file, no network resources and no JavaScript; the plots are PNGs made
  with matplotlib (Agg) and embedded as base64 `<img>`;
- `out_dir/report/*.png`: the same plots as files;
- `out_dir/report.md`: the same numbers as Markdown, linking the PNGs, for a terminal or GitHub.

Every string from the run is escaped. A missing optional key renders as "not recorded"; a section
that cannot be drawn from what the run recorded says so in red instead of failing the demo (tests
pass `strict=True` to make that an exception). `report_numbers(timeline)` returns the exact strings
the report prints for its key numbers, and `verify(timeline, out_dir)` lists what in a written
report does not match the run (the demo's e2e test asserts it is empty).

Re-render from a saved timeline:
    .venv/bin/python scripts/demo_report.py .demo/timeline.json [--out DIR]
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:  # the dev extra brings matplotlib; without it the report keeps its tables and numbers
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    plt = None

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NR = "not recorded"
EPS_OFF = "none spent (differential privacy off)"  # the run recorded epsilon: null
KNOWN_KEYS = {
    "schema", "started_at", "wall_s", "quick", "console_url", "devices", "stages", "accuracy",
    "drift", "rollouts", "ota", "federated", "bad_release",
}  # fmt: skip
COLORS = {"normal": "#1f77b4", "drifted": "#d62728", "canary": "#ff7f0e", "control": "#7f7f7f"}
GOOD = {"pass", "completed", "ok", "stable", "succeeded", "done", "committed", "released"}
BAD = {"fail", "failed", "rolled_back", "aborted", "halted", "error", "rejected"}

# --- formatting: the exact strings the report prints (report_numbers uses the same functions) ---


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def fmt_pct(x: Any) -> str:
    """An accuracy or a ratio in [0, 1] as a percentage with one decimal: 0.9134 -> "91.3%"."""
    return f"{x * 100:.1f}%" if _is_num(x) else NR


def fmt_bytes(x: Any) -> str:
    """A byte count with thousands separators: 123456 -> "123,456 B"."""
    return f"{int(x):,} B" if _is_num(x) else NR


def fmt_s(x: Any) -> str:
    """Seconds with one decimal: 40.23 -> "40.2 s"."""
    return f"{x:.1f} s" if _is_num(x) else NR


def fmt_num(x: Any) -> str:
    """A gate value, loss, epsilon…: integers as is, floats with 4 significant digits."""
    if x is None:
        return NR
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.4g}" if math.isfinite(x) else str(x)
    if isinstance(x, list | tuple):
        return ", ".join(fmt_num(v) for v in x) if x else "none"
    if isinstance(x, dict):
        return json.dumps(x, sort_keys=True, default=str)
    return str(x)


def _names(items: list[Any], limit: int = 12) -> str:
    """Device ids and the like: all of them up to `limit`, then the first ones and the count."""
    if len(items) <= limit:
        return fmt_num(items)
    return f"{fmt_num(items[: limit - 2])}, … ({len(items)} in all)"


def _text(x: Any) -> str:
    return NR if x is None or x == "" else str(x)


def _list(x: Any) -> list[Any]:
    return list(x) if isinstance(x, list | tuple) else []


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _dicts(x: Any) -> list[dict[str, Any]]:
    return [_dict(i) for i in _list(x)]


def _plain(s: Any, limit: int = 40) -> str:
    """A run string made safe for a matplotlib label (no mathtext) and short."""
    t = str(s)
    t = t if len(t) <= limit else t[: limit - 1] + "…"
    return t.replace("$", r"\$")


def report_numbers(timeline: Mapping[str, Any]) -> dict[str, str]:
    """The formatted strings the report prints for the run's key numbers, by a stable key.

    Each value appears verbatim in report.md and as `html.escape(value)` in report.html. Keys:
    `wall`, `stage/<key>/wall`, `stage/<key>/status`, `accuracy/<point>/<inputs>`,
    `ota/delta_bytes`, `ota/full_bytes`, `ota/ratio` (delta as a share of full), `ota/saved`,
    `ota/<device>/<release>/bytes`, `ota/demo_total_bytes` (every release, every device; when
    recorded), `federated/epsilon`, `federated/delta`,
    `federated/secure_aggregation`, `federated/triggered_by`, `federated/rounds`,
    `gate/<rollout id>/<phase>/<metric>/{canary,control,threshold,verdict}`,
    `rollout/<rollout id>/outcome`, `bad_release/{halted_at,all_back_on,release}`.
    """
    n: dict[str, str] = {"wall": fmt_s(timeline.get("wall_s"))}
    for st in _dicts(timeline.get("stages")):
        n[f"stage/{st.get('key')}/wall"] = fmt_s(st.get("wall_s"))
        n[f"stage/{st.get('key')}/status"] = _status(st)
    for a in _dicts(timeline.get("accuracy")):
        n[f"accuracy/{a.get('point')}/{a.get('inputs')}"] = fmt_pct(a.get("accuracy"))
    ota = _dict(timeline.get("ota"))
    if _ota_recorded(ota):
        d, f = ota.get("delta_bytes"), ota.get("full_bytes")
        n["ota/delta_bytes"], n["ota/full_bytes"] = fmt_bytes(d), fmt_bytes(f)
        n["ota/ratio"] = fmt_pct(d / f) if _is_num(d) and _is_num(f) and f else NR
        n["ota/saved"] = fmt_bytes(f - d) if _is_num(d) and _is_num(f) else NR
        for p in _dicts(ota.get("per_device")):
            n[f"ota/{p.get('device_id')}/{p.get('release')}/bytes"] = fmt_bytes(p.get("bytes"))
        if "demo_total_bytes" in ota:
            n["ota/demo_total_bytes"] = fmt_bytes(ota.get("demo_total_bytes"))
    fed = _dict(timeline.get("federated"))
    if fed:
        eps = fed.get("epsilon")
        n["federated/epsilon"] = EPS_OFF if "epsilon" in fed and eps is None else fmt_num(eps)
        n["federated/delta"] = fmt_num(fed.get("delta"))
        n["federated/secure_aggregation"] = _onoff(fed.get("secure_aggregation"))
        n["federated/triggered_by"] = _text(fed.get("triggered_by"))
        n["federated/rounds"] = str(len(_list(fed.get("rounds"))))
    for r in _dicts(timeline.get("rollouts")):
        n[f"rollout/{r.get('id')}/outcome"] = _text(r.get("outcome"))
        for g in _dicts(r.get("gates")):
            base = f"gate/{r.get('id')}/{g.get('phase')}/{g.get('metric')}"
            n[f"{base}/canary"] = fmt_num(g.get("value_canary"))
            n[f"{base}/control"] = fmt_num(g.get("value_control"))
            n[f"{base}/threshold"] = fmt_num(g.get("threshold"))
            n[f"{base}/verdict"] = _text(g.get("verdict"))
    bad = _dict(timeline.get("bad_release"))
    if bad:
        for k in ("halted_at", "all_back_on", "release"):
            n[f"bad_release/{k}"] = _text(bad.get(k))
    return n


def verify(timeline: Mapping[str, Any], out_dir: Path) -> list[str]:
    """What is wrong with the report in out_dir for this timeline (empty when it matches the run).

    For the demo's e2e test: report.html and report.md exist, every key number of the run
    (report_numbers) is printed in both, and each embedded plot is also written as a PNG file.
    """
    out_dir = Path(out_dir)
    page_path, md_path = out_dir / "report.html", out_dir / "report.md"
    if not page_path.is_file() or not md_path.is_file():
        return [f"no report in {out_dir}"]
    page, md = page_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8")
    problems = [f"{key}: {value!r} not in report.html" for key, value in report_numbers(timeline).items()
                if html.escape(value) not in page]  # fmt: skip
    problems += [f"{key}: {value!r} not in report.md" for key, value in report_numbers(timeline).items()
                 if _md(value) not in md]  # fmt: skip
    embedded = page.count('src="data:image/png;base64,')
    files = len(list((out_dir / "report").glob("*.png")))
    if embedded != files:
        problems.append(f"{embedded} plots embedded, {files} PNG files in {out_dir / 'report'}")
    return problems


def _ota_recorded(ota: Mapping[str, Any]) -> bool:
    """The demo starts with zeros and an empty list: nothing was transferred yet."""
    return bool(_list(ota.get("per_device"))) or bool(ota.get("full_bytes")) or bool(ota.get("delta_bytes"))


def _status(stage: Mapping[str, Any]) -> str:
    ok = stage.get("ok")
    return "ok" if ok is True else "FAILED" if ok is False else NR


def _onoff(x: Any) -> str:
    return "on" if x is True else "off" if x is False else NR


def _cls(word: Any) -> str:
    w = str(word).lower()
    return "good" if w in GOOD else "bad" if w in BAD else ""


# --- the document: HTML and Markdown built side by side ---

Cell = str | tuple[str, str]  # text, or (text, css class)


class _Doc:
    def __init__(self, img_dir: Path, strict: bool) -> None:
        self.html: list[str] = []
        self.md: list[str] = []
        self.img_dir = img_dir
        self.strict = strict
        self.pngs: list[Path] = []

    def h(self, level: int, title: str, anchor: str = "") -> None:
        a = f' id="{html.escape(anchor)}"' if anchor else ""
        self.html.append(f"<h{level}{a}>{html.escape(title)}</h{level}>")
        self.md.append(f"\n{'#' * level} {_md(title)}\n")

    def p(self, text: str, cls: str = "") -> None:
        c = f' class="{cls}"' if cls else ""
        self.html.append(f"<p{c}>{html.escape(text)}</p>")
        self.md.append(f"{'**' if cls == 'bad' else ''}{_md(text)}{'**' if cls == 'bad' else ''}\n")

    def kv(self, pairs: Iterable[tuple[str, Cell]]) -> None:
        rows = [[k, v] for k, v in pairs]
        self.table(["", ""], rows, header=False)

    def table(self, head: list[str], rows: list[list[Cell]], header: bool = True) -> None:
        if not rows:
            self.p(NR, "muted")
            return
        out = ["<table>"]
        if header:
            out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
        for row in rows:
            cells = []
            for c in row:
                text, cls = (c, "") if isinstance(c, str) else c
                attr = f' class="{cls}"' if cls else ""
                cells.append(f"<td{attr}>{html.escape(text)}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</table>")
        self.html.append("\n".join(out))
        md_head = head if header else ["", ""]
        self.md.append("| " + " | ".join(_md(h) for h in md_head) + " |")
        self.md.append("|" + "---|" * len(md_head))
        for row in rows:
            texts = [c if isinstance(c, str) else c[0] for c in row]
            self.md.append("| " + " | ".join(_md(t) for t in texts) + " |")
        self.md.append("")

    def figure(self, name: str, fig: Figure, alt: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        data = buf.getvalue()
        path = self.img_dir / f"{name}.png"
        path.write_bytes(data)
        self.pngs.append(path)
        b64 = base64.b64encode(data).decode("ascii")
        self.html.append(
            f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>"
        )
        self.md.append(f"![{_md(alt)}]({self.img_dir.name}/{name}.png)\n")

    def section(self, title: str, anchor: str, build: Callable[[], None]) -> None:
        self.h(2, title, anchor)
        try:
            build()
        except Exception as e:
            if self.strict:
                raise
            self.p(f"could not render this section from the timeline: {type(e).__name__}: {e}", "bad")


def _md(s: Any) -> str:
    t = str(s).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
    return " ".join(t.split()) or " "


def _facts(facts: Any) -> str:
    d = _dict(facts)
    return "; ".join(f"{k}={fmt_num(v)}" for k, v in d.items()) if d else ""


# --- sections ---


def _header(doc: _Doc, t: Mapping[str, Any]) -> None:
    stages = _dicts(t.get("stages"))
    failed = [s for s in stages if s.get("ok") is False]
    verdict = (
        (f"{len(failed)} of {len(stages)} stages FAILED: {', '.join(_text(f.get('key')) for f in failed)}", "bad")
        if failed
        else (f"all {len(stages)} stages ok", "good") if stages else (NR, "")
    )  # fmt: skip
    url = t.get("console_url")
    doc.kv([
        ("started", _text(t.get("started_at"))),
        ("wall time", fmt_s(t.get("wall_s"))),
        ("mode", "quick" if t.get("quick") is True else "full" if t.get("quick") is False else NR),
        ("outcome", verdict),
        ("console", _text(url)),
    ])  # fmt: skip
    if plt is None:
        doc.p("plots: not drawn (matplotlib is not installed; it comes with the dev extra)", "warn")
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        doc.html.append(f'<p><a href="{html.escape(url)}">open the console</a> (while the demo runs)</p>')
    doc.h(3, "At a glance")
    doc.kv(_glance(t))
    doc.h(3, "Devices")
    _records(doc, _dicts(t.get("devices")), [("id", "device", _text), ("profile", "profile", _text),
                                             ("transport", "transport", _text), ("cohort", "cohort", _text)])  # fmt: skip


def _glance(t: Mapping[str, Any]) -> list[tuple[str, Cell]]:
    """The issue's headline numbers, one line each (the sections below hold the detail)."""
    n = report_numbers(t)
    drifted = [a for a in _dicts(t.get("accuracy")) if a.get("inputs") == "drifted"]
    acc = " → ".join(f"{fmt_pct(a.get('accuracy'))} ({_text(a.get('point'))})" for a in drifted)
    fed = _dict(t.get("federated"))
    bad = _dict(t.get("bad_release"))
    return [
        ("accuracy on drifted inputs", acc or NR),
        ("bytes on the wire", f"{n['ota/delta_bytes']} fetched{_delta_share(t)} vs {n['ota/full_bytes']} as "
         f"full files ({n['ota/ratio']} of full)" if "ota/delta_bytes" in n else NR),
        ("federated run", f"triggered by {n['federated/triggered_by']}, secure aggregation "
         f"{n['federated/secure_aggregation']}, ε {n['federated/epsilon']}, {n['federated/rounds']} rounds"
         if fed else NR),
        ("bad release", (f"{_text(bad.get('release'))} halted at {_text(bad.get('halted_at'))}, every device "
                         f"back on {_text(bad.get('all_back_on'))}", "warn") if bad else NR),
    ]  # fmt: skip


def _delta_share(t: Mapping[str, Any]) -> str:
    """How many updates went by delta, from the per-device records (a full download is never a delta)."""
    per = _dicts(_dict(t.get("ota")).get("per_device"))
    known = [p for p in per if isinstance(p.get("delta"), bool)]
    return f" ({sum(p['delta'] for p in known)} of {len(known)} updates by delta)" if known else ""


def _timeline(doc: _Doc, t: Mapping[str, Any]) -> None:
    stages = _dicts(t.get("stages"))
    rows: list[list[Cell]] = []
    for i, s in enumerate(stages, 1):
        status = _status(s)
        facts = _facts(s.get("facts"))
        detail = s.get("detail") or s.get("error")
        if detail:
            facts = f"{facts}; detail: {detail}" if facts else f"detail: {detail}"
        rows.append([
            str(i), f"{_text(s.get('title'))} [{_text(s.get('key'))}]", fmt_s(s.get("t_start_s")),
            fmt_s(s.get("wall_s")), (status, "bad" if status == "FAILED" else "good" if status == "ok" else ""),
            (facts or "", "bad" if s.get("ok") is False else ""),
        ])  # fmt: skip
    doc.table(["#", "stage", "start", "wall", "status", "facts"], rows)
    plotted = [s for s in stages if _is_num(s.get("t_start_s")) and _is_num(s.get("wall_s"))]
    if not plotted:
        return
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(plotted) + 1.2))
    for y, s in enumerate(plotted):
        color = "#d62728" if s.get("ok") is False else "#2ca02c" if s.get("ok") is True else "#999999"
        ax.barh(y, max(s["wall_s"], 0.5), left=s["t_start_s"], color=color, height=0.6)
        ax.text(s["t_start_s"] + max(s["wall_s"], 0.5), y, f" {fmt_s(s['wall_s'])}", va="center", fontsize=7)
    ax.set_yticks(range(len(plotted)), [_plain(s.get("key")) for s in plotted])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the demo started")
    ax.set_title("stages (green ok, red failed)")
    ax.grid(axis="x", alpha=0.3)
    doc.figure("stages", fig, "demo stages on a time axis")


def _accuracy(doc: _Doc, t: Mapping[str, Any]) -> None:
    acc = _dicts(t.get("accuracy"))
    _records(doc, acc, [("point", "point", _text), ("model", "model", _text), ("inputs", "inputs", _text),
                        ("accuracy", "accuracy", fmt_pct), ("t_s", "at", fmt_s)])  # fmt: skip
    slots = _accuracy_slots(acc)
    points = [min(names, key=len) for names, _ in slots]
    series: dict[str, list[tuple[int, float]]] = {}
    for x, (_, members) in enumerate(slots):
        for a in members:
            if _is_num(a.get("accuracy")):
                series.setdefault(str(a.get("inputs")), []).append((x, a["accuracy"]))
    if not series:
        return
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(9, 4))
    for inputs, pts in series.items():
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o", label=f"{_plain(inputs)} inputs", color=COLORS.get(inputs))
        dy = -14 if inputs == "drifted" else 7
        for x, y in pts:
            ax.annotate(
                fmt_pct(y), (x, y), textcoords="offset points", xytext=(0, dy), ha="center", fontsize=8
            )
    ax.set_xticks(range(len(points)), [_plain(p, 28) for p in points], rotation=15, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy across the loop (v1 -> drift -> v2)")
    ax.grid(alpha=0.3)
    ax.legend()
    doc.figure("accuracy", fig, "accuracy per point, normal vs drifted inputs")


def _accuracy_slots(acc: list[dict[str, Any]]) -> list[tuple[list[str], list[dict[str, Any]]]]:
    """Points of the loop on the x axis: the same point name, or measurements of the other inputs
    taken within a few seconds of each other, share one slot (the run lists them in time order)."""
    slots: list[tuple[list[str], list[dict[str, Any]]]] = []
    for a in acc:
        name, t_s = str(a.get("point")), a.get("t_s")
        if slots:
            names, members = slots[-1]
            same_name = name in names and all(m.get("inputs") != a.get("inputs") for m in members)
            close = (_is_num(t_s) and all(_is_num(m.get("t_s")) and abs(m["t_s"] - t_s) < 5.0 for m in members)
                     and all(m.get("inputs") != a.get("inputs") for m in members))  # fmt: skip
            if same_name or close:
                names.append(name)
                members.append(a)
                continue
        slots.append(([name], [a]))
    return slots


def _drift(doc: _Doc, t: Mapping[str, Any]) -> None:
    drift = _dict(t.get("drift"))
    if not drift:
        doc.p(NR, "muted")
        return
    episodes = _dicts(drift.get("episodes"))
    doc.h(3, "Episodes")
    _records(doc, episodes, [("device_id", "device", _text), ("t_s", "at", fmt_s), ("kind", "kind", _text),
                             ("severity", "severity", fmt_num), ("features", "features", fmt_num)])  # fmt: skip
    doc.h(3, "Cohort verdicts")
    rows: list[list[Cell]] = []
    for v in _dicts(drift.get("verdicts")):
        anomalies = ", ".join(
            f"{_dict(a).get('device_id')} ({_dict(a).get('signature')})" for a in _list(v.get("anomalies"))
        )  # fmt: skip
        verdict = _text(v.get("verdict"))
        warn = verdict in {"population_shift", "device_anomaly"}
        rows.append([_text(v.get("cohort")), (verdict, "warn" if warn else _cls(verdict)),
                     _names(_list(v.get("devices"))), anomalies or "none",
                     "; ".join(f"{k}: {fmt_num(x)}" for k, x in _extra(v, VERDICT_KEYS))])  # fmt: skip
    doc.table(["cohort", "verdict", "devices", "single-device anomalies", "other"], rows)
    scores = [_dict(s) for s in _list(drift.get("scores"))]
    if not scores:
        doc.p(f"drift scores series: {NR}", "muted")
    _drift_plot(doc, t, episodes, scores)


VERDICT_KEYS = {"cohort", "verdict", "devices", "anomalies"}


CLASS_COLORS = {"population_shift": "#ff7f0e", "device_anomaly": "#d62728", "within_budget": "#7f7f7f"}
KIND_MARKERS = {"output": "o", "single_feature": "s", "multi_feature": "D", "stuck": "X", "covariate": "o"}


def _drift_plot(
    doc: _Doc, t: Mapping[str, Any], episodes: list[dict[str, Any]], scores: list[dict[str, Any]]
) -> None:
    """Episodes per device: over time when they were opened at different times, else by severity
    (the demo stamps every episode with the moment drift was injected). Colour = the server's
    classification of the episode, marker = its kind; the cohort verdicts are printed underneath."""
    cohort = {str(_dict(d).get("id")): _text(_dict(d).get("cohort")) for d in _list(t.get("devices"))}
    devices = list(cohort)
    for e in episodes:
        if str(e.get("device_id")) not in devices:
            devices.append(str(e.get("device_id")))
    times = [float(e["t_s"]) for e in episodes if _is_num(e.get("t_s"))]
    over_time = bool(times) and max(times) - min(times) >= 2.0
    xkey = "t_s" if over_time else "severity"
    plotted = [e for e in episodes if _is_num(e.get(xkey))]
    timed_scores = [s for s in scores if _is_num(s.get("t_s")) and _is_num(s.get("score"))]
    if not plotted and not timed_scores:
        return
    nrows = 2 if timed_scores else 1
    if plt is None:
        return
    fig, axes = plt.subplots(
        nrows, 1, figsize=(9, 2.2 + 0.3 * len(devices) + 2.5 * (nrows - 1)), squeeze=False, sharex=over_time
    )
    ax = axes[0][0]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in plotted:
        groups.setdefault((str(e.get("classification") or e.get("kind")), str(e.get("kind"))), []).append(e)
    kinds = sorted({k for _, k in groups})
    sev = [float(e["severity"]) for e in plotted if _is_num(e.get("severity")) and e["severity"] > 0]
    top = max(sev, default=1.0)
    for (cls, kind), pts in sorted(groups.items()):
        off = (kinds.index(kind) - (len(kinds) - 1) / 2) * 0.12  # kinds side by side on a device's row
        sizes = [
            40 + 120 * (float(e["severity"]) / top if _is_num(e.get("severity")) and top else 0.5)
            for e in pts
        ]
        ax.scatter(
            [e[xkey] for e in pts], [devices.index(str(e.get("device_id"))) + off for e in pts],
            s=sizes if over_time else 60, color=CLASS_COLORS.get(cls, "#1f77b4"),
            marker=KIND_MARKERS.get(kind, "^"), label=_plain(f"{kind}: {cls}", 50), alpha=0.85,
        )  # fmt: skip
    ax.set_yticks(range(len(devices)), [_plain(f"{d} ({cohort.get(d, '?')})") for d in devices])
    ax.set_ylim(-0.7, len(devices) - 0.3)
    ax.invert_yaxis()
    ax.grid(alpha=0.3)
    if over_time:
        ax.set_title("drift episodes per device over time (size = severity)")
    else:
        when = f" (all opened at {fmt_s(times[0])})" if times else ""
        ax.set_title(f"drift episodes per device by severity{when}")
        ax.set_xlabel("severity")
        if sev and max(sev) / min(sev) > 20:
            ax.set_xscale("log")
    if groups:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, title="kind: classification",
                  title_fontsize=7)  # fmt: skip
    if timed_scores:
        sx = axes[1][0]
        for dev in dict.fromkeys(str(s.get("device_id")) for s in timed_scores):
            pts = sorted((s["t_s"], s["score"]) for s in timed_scores if str(s.get("device_id")) == dev)
            sx.plot(*zip(*pts, strict=True), marker=".", label=_plain(f"{dev} ({cohort.get(dev, '?')})"))
        sx.set_ylabel("drift score")
        sx.set_title("drift scores over time")
        sx.set_xlabel("seconds since the demo started")
        sx.grid(alpha=0.3)
        sx.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    if over_time:
        ax.set_xlabel("" if timed_scores else "seconds since the demo started")
    verdicts = _verdict_lines(_dict(t.get("drift")))
    fig.tight_layout()
    if verdicts:
        fig.text(0.01, 0.0, "\n".join(_plain(v, 120) for v in verdicts), fontsize=8, va="top",
                 bbox={"boxstyle": "round", "facecolor": "#fff8e6", "edgecolor": "#b35c00"})  # fmt: skip
    doc.figure(
        "drift",
        fig,
        "drift evidence: episodes per device" + (" and scores over time" if timed_scores else ""),
    )


def _verdict_lines(drift: Mapping[str, Any]) -> list[str]:
    lines = []
    for v in _dicts(drift.get("verdicts")):
        line = f"cohort {_text(v.get('cohort'))}: {_text(v.get('verdict'))}"
        anomalies = [
            f"{_text(a.get('device_id'))} ({_text(a.get('signature'))})" for a in _dicts(v.get("anomalies"))
        ]
        lines.append(line + (f"; single-device anomaly: {', '.join(anomalies)}" if anomalies else ""))
    return lines


def _rollouts(doc: _Doc, t: Mapping[str, Any]) -> None:
    rollouts = _dicts(t.get("rollouts"))
    if not rollouts:
        doc.p(NR, "muted")
        return
    t0 = _parse_time(t.get("started_at"))
    for i, r in enumerate(rollouts, 1):
        outcome = _text(r.get("outcome"))
        doc.h(3, f"{_text(r.get('release'))} (rollout {_text(r.get('id'))})")
        known = {"id", "release", "outcome", "phases", "gates", "devices"}
        doc.kv([("outcome", (outcome, _cls(outcome))), *_extra(r, known)])
        phases = _dicts(r.get("phases"))
        times = [_phase_times(p, t0) for p in phases]
        doc.table(
            ["phase", "devices", "start", "end"],
            [[_text(p.get("name")), _names(_list(p.get("devices"))), fmt_s(a), fmt_s(b)]
             for p, (a, b) in zip(phases, times, strict=True)],
        )  # fmt: skip
        gates = _dicts(r.get("gates"))
        extra_cols = [c for c in GATE_EXTRA if any(c in g for g in gates)]
        doc.table(
            ["phase", "metric", "canary", "control", "threshold", *[c.replace("_", " ") for c in extra_cols],
             "verdict"],
            [[_text(g.get("phase")), _text(g.get("metric")), fmt_num(g.get("value_canary")),
              fmt_num(g.get("value_control")), fmt_num(g.get("threshold")), *[fmt_num(g.get(c)) for c in extra_cols],
              (_text(g.get("verdict")), _cls(g.get("verdict")))] for g in gates],
        )  # fmt: skip
        statuses = _dict(r.get("devices"))
        if statuses:
            by_status: dict[str, list[str]] = {}
            for d, st in statuses.items():
                by_status.setdefault(_text(st), []).append(str(d))
            doc.table(["status in this rollout", "devices"],
                      [[(st, _cls(st)), f"{len(ds)}: {_names(ds)}"] for st, ds in by_status.items()])  # fmt: skip
        if phases or gates:
            _rollout_plot(doc, f"rollout-{i}", r=r, phases=phases, times=times, gates=gates)


GATE_EXTRA = ("p_value", "looks", "samples_canary", "samples_control")


def _parse_time(x: Any) -> datetime | None:
    if not isinstance(x, str) or not x:
        return None
    try:
        ts = datetime.fromisoformat(x.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _phase_times(p: Mapping[str, Any], t0: datetime | None) -> tuple[float | None, float | None]:
    """A phase's start and end in seconds since the demo started: t_start_s/t_end_s, else the
    server's assigned_at/settled_at timestamps against the timeline's started_at."""
    out: list[float | None] = []
    for rel, stamp in (("t_start_s", "assigned_at"), ("t_end_s", "settled_at")):
        v = p.get(rel)
        ts = _parse_time(p.get(stamp))
        if _is_num(v):
            out.append(float(v))
        elif ts is not None and t0 is not None:
            out.append(round((ts - t0).total_seconds(), 2))
        else:
            out.append(None)
    return out[0], out[1]


Column = tuple[str, str, Callable[[Any], str]]  # key, header, formatter


def _records(doc: _Doc, records: list[dict[str, Any]], cols: list[Column]) -> None:
    """A table of records: the contract's columns first, then any key the run added, as is."""
    keys = {k for k, _, _ in cols}
    extra = list(dict.fromkeys(k for r in records for k in r if k not in keys))
    head = [h for _, h, _ in cols] + [str(k).replace("_", " ") for k in extra]
    rows: list[list[Cell]] = [
        [f(r.get(k)) for k, _, f in cols] + [fmt_num(r.get(k)) if k in r else "" for k in extra]
        for r in records
    ]
    doc.table(head, rows)


def _extra(d: Mapping[str, Any], known: set[str]) -> list[tuple[str, Cell]]:
    """Fields the run recorded beyond the contract, shown as they are."""
    return [(str(k).replace("_", " "), fmt_bytes(v) if str(k).endswith("_bytes") and _is_num(v) else fmt_num(v))
            for k, v in d.items() if k not in known and v != ""]  # fmt: skip


def _rollout_plot(
    doc: _Doc,
    name: str,
    *,
    r: Mapping[str, Any],
    phases: list[dict[str, Any]],
    times: list[tuple[float | None, float | None]],
    gates: list[dict[str, Any]],
) -> None:
    plotted_gates = [g for g in gates if _is_num(g.get("value_canary")) or _is_num(g.get("value_control"))]
    ncols = max(1, min(len(plotted_gates), 4))
    grows = math.ceil(len(plotted_gates) / ncols) if plotted_gates else 0
    if plt is None:
        return
    fig = plt.figure(figsize=(9, 1.4 + 0.35 * max(len(phases), 1) + 2.6 * grows))
    grid = fig.add_gridspec(1 + grows, ncols, height_ratios=[0.6 + 0.3 * max(len(phases), 1)] + [2.2] * grows)
    ax = fig.add_subplot(grid[0, :])
    failed_phases = {str(g.get("phase")) for g in gates if str(g.get("verdict")).lower() == "fail"}
    known = [a for a, _ in times if a is not None]
    for y, (p, (start, end)) in enumerate(zip(phases, times, strict=True)):
        if start is None:
            ax.text(min(known, default=0.0), y, "  never started", va="center", fontsize=8, color="#555555")
            continue
        halted = str(p.get("name")) in failed_phases
        width = (end - start) if end is not None else 0.0
        ax.barh(y, max(width, 0.3), left=start, height=0.6,
                color="#d62728" if halted else COLORS["canary"] if p.get("name") == "canary" else "#2ca02c")  # fmt: skip
        label = "halted" if halted else "" if end is not None else "not ended"
        if label:
            ax.text(start + max(width, 0.3), y, f"  {label}", va="center", fontsize=8, color="#d62728")
    ax.set_yticks(range(len(phases)), [_plain(p.get("name")) for p in phases])
    ax.set_ylim(-0.6, max(len(phases), 1) - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the demo started")
    outcome = _text(r.get("outcome"))
    ax.set_title(
        _plain(f"{r.get('release')}: {outcome}", 80), color="#d62728" if _cls(outcome) == "bad" else "black"
    )
    for k, g in enumerate(plotted_gates):
        gx = fig.add_subplot(grid[1 + k // ncols, k % ncols])
        vals = [g.get("value_canary"), g.get("value_control")]
        verdict = _text(g.get("verdict"))
        bars = gx.bar(["canary", "control"], [v if _is_num(v) else 0 for v in vals],
                      color=[COLORS["canary"], COLORS["control"]])  # fmt: skip
        for b, v in zip(bars, vals, strict=True):
            gx.annotate(fmt_num(v), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                        xytext=(0, 2), textcoords="offset points", fontsize=8)  # fmt: skip
        gx.set_title(_plain(f"{g.get('phase')} · {g.get('metric')}", 30), fontsize=8)
        gx.set_xlabel(_plain(f"threshold {fmt_num(g.get('threshold'))}: {verdict}", 40), fontsize=8,
                      color="#d62728" if _cls(verdict) == "bad" else "#2ca02c" if _cls(verdict) == "good" else "black")  # fmt: skip
        gx.tick_params(labelsize=8)
        top = max([abs(v) for v in vals if _is_num(v)] + [0.0])
        gx.set_ylim(0, top * 1.25 if top > 0 else 1.0)
    fig.tight_layout()
    doc.figure(name, fig, f"rollout of {r.get('release')}: phases and gates (canary vs control)")


def _bytes(doc: _Doc, t: Mapping[str, Any]) -> None:
    ota = _dict(t.get("ota"))
    if not _ota_recorded(ota):
        doc.p(NR, "muted")
        return
    n = report_numbers({"ota": ota})
    use = ota.get("use_delta")
    mode = "deltas" if use is True else "full files (--full-files)" if use is False else NR
    doc.kv([
        ("fetched by the devices", n["ota/delta_bytes"]),
        ("the same updates as full files", n["ota/full_bytes"]),
        ("fetched as a share of full", n["ota/ratio"]),
        ("saved", n["ota/saved"]),
        ("transfer mode", mode),
        ("every release of the run, all devices", n.get("ota/demo_total_bytes", NR)),
        *_extra(ota, {"delta_bytes", "full_bytes", "per_device", "use_delta", "demo_total_bytes"}),
    ])  # fmt: skip
    per = _dicts(ota.get("per_device"))
    _records(doc, per, [("device_id", "device", _text), ("release", "release", _text), ("bytes", "fetched", fmt_bytes),
                        ("full_bytes", "full file", fmt_bytes), ("delta", "delta", fmt_num)])  # fmt: skip
    plotted = [p for p in per if _is_num(p.get("bytes"))]
    if not plotted:
        return
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(9, 3.5))
    xs = range(len(plotted))
    sent_colors = ["#2ca02c" if p.get("delta") is not False else COLORS["canary"] for p in plotted]
    sent = ax.bar([x - 0.2 for x in xs], [p["bytes"] / 1024 for p in plotted], 0.4, color=sent_colors,
                  label="sent (green: delta, orange: full file)")  # fmt: skip
    ax.bar([x + 0.2 for x in xs], [p["full_bytes"] / 1024 if _is_num(p.get("full_bytes")) else 0 for p in plotted],
           0.4, label="full file", color=COLORS["control"])  # fmt: skip
    for b, p in zip(sent, plotted, strict=True):
        ax.annotate(fmt_bytes(p["bytes"]), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                    xytext=(0, 2), textcoords="offset points", fontsize=7)  # fmt: skip
    ax.set_xticks(
        list(xs), [_plain(f"{p.get('device_id')}\n{p.get('release')}", 60) for p in plotted], fontsize=8
    )
    ax.set_ylabel("KiB")
    ax.set_title(_plain(f"bytes on the wire: {n['ota/delta_bytes']} sent vs {n['ota/full_bytes']} full", 90))
    top = max(
        [p["bytes"] for p in plotted]
        + [p.get("full_bytes") or 0 for p in plotted if _is_num(p.get("full_bytes"))]
    )
    ax.set_ylim(0, top / 1024 * 1.3)
    ax.legend(loc="upper center", ncols=2, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    doc.figure("bytes", fig, "bytes per device: delta sent vs full file")


def _federated(doc: _Doc, t: Mapping[str, Any]) -> None:
    fed = _dict(t.get("federated"))
    if not fed:
        doc.p(NR, "muted")
        return
    n = report_numbers({"federated": fed})
    sa = n["federated/secure_aggregation"]
    known = {
        "run_id",
        "triggered_by",
        "secure_aggregation",
        "epsilon",
        "delta",
        "devices",
        "excluded",
        "rounds",
    }
    doc.kv([
        ("run", _text(fed.get("run_id"))),
        ("triggered by", n["federated/triggered_by"]),
        ("secure aggregation", (sa, "good" if sa == "on" else "bad" if sa == "off" else "")),
        ("ε (epsilon)", n["federated/epsilon"]),
        ("δ (delta)", n["federated/delta"]),
        ("devices", _names(_list(fed.get("devices")))),
        ("excluded", _names(_list(fed.get("excluded")))),
        ("rounds", n["federated/rounds"]),
        *_extra(fed, known),
    ])  # fmt: skip
    rounds = _dicts(fed.get("rounds"))
    _records(doc, rounds, [("round", "round", fmt_num), ("participants", "participants", fmt_num),
                           ("loss", "loss", fmt_num), ("accuracy", "accuracy", fmt_pct)])  # fmt: skip
    pts = [(r.get("round"), r.get("loss"), r.get("accuracy")) for r in rounds if _is_num(r.get("round"))]
    if len(pts) < 2 or not any(_is_num(lo) or _is_num(a) for _, lo, a in pts):
        return
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(9, 3))
    loss = [(x, lo) for x, lo, _ in pts if _is_num(lo)]
    accs = [(x, a) for x, _, a in pts if _is_num(a)]
    if loss:
        ax.plot(*zip(*loss, strict=True), marker="o", color="#9467bd", label="loss")
    ax.set_xlabel("round")
    ax.set_xticks(sorted({int(x) for x, _, _ in pts}))
    ax.set_ylabel("loss")
    if accs:
        ax2 = ax.twinx()
        ax2.plot(*zip(*accs, strict=True), marker="s", color="#2ca02c", label="accuracy")
        ax2.set_ylabel("accuracy")
        ax2.set_ylim(0, 1.05)
    ax.set_title(_plain(f"federated rounds (secure aggregation {n['federated/secure_aggregation']}, "
                        f"ε {n['federated/epsilon']})", 100))  # fmt: skip
    ax.grid(alpha=0.3)
    doc.figure("federated", fig, "federated rounds: loss and accuracy")


def _bad_release(doc: _Doc, t: Mapping[str, Any]) -> None:
    bad = _dict(t.get("bad_release"))
    if not bad:
        doc.p(NR, "muted")
        return
    halted = _text(bad.get("halted_at"))
    doc.kv([
        ("release", _text(bad.get("release"))),
        ("halted at", (halted, "bad" if halted != NR else "")),
        ("rolled back devices", _names(_list(bad.get("rolled_back_devices")))),
        ("every device back on", (_text(bad.get("all_back_on")), "good" if bad.get("all_back_on") else "")),
        ("stopped by", _failing_gates(t, bad.get("release"))),
        *_extra(bad, {"release", "halted_at", "rolled_back_devices", "all_back_on"}),
    ])  # fmt: skip


def _failing_gates(t: Mapping[str, Any], release: Any) -> str:
    """The gates that failed in the bad release's rollout, canary vs control, from the rollouts."""
    found = []
    for r in _dicts(t.get("rollouts")):
        if release is None or r.get("release") != release:
            continue
        for g in _dicts(r.get("gates")):
            if str(g.get("verdict")).lower() == "fail":
                found.append(f"{_text(g.get('metric'))} at {_text(g.get('phase'))}: canary "
                             f"{fmt_num(g.get('value_canary'))} vs control {fmt_num(g.get('value_control'))} "
                             f"(threshold {fmt_num(g.get('threshold'))})")  # fmt: skip
    return "; ".join(found) or NR


def _other(doc: _Doc, t: Mapping[str, Any]) -> None:
    extra = {k: v for k, v in t.items() if k not in KNOWN_KEYS}
    if not extra:
        return
    doc.h(2, "Other recorded data", "other")
    text = json.dumps(extra, indent=2, sort_keys=True, default=str)
    doc.html.append(f"<pre>{html.escape(text)}</pre>")
    doc.md.append("```json\n" + text.replace("```", "'''") + "\n```\n")


CSS = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;
vertical-align:top;font-size:.92em}th{background:#f3f3f3}.good{color:#1a7f37;font-weight:600}
.bad{color:#fff;background:#c62828;font-weight:600}.warn{color:#b35c00;font-weight:600}.muted{color:#888}
figure{margin:1em 0}img{max-width:100%}figcaption{color:#666;font-size:.85em}pre{background:#f6f6f6;padding:.6em;
overflow:auto}nav a{margin-right:1em}
"""
SECTIONS: list[tuple[str, str, Callable[[_Doc, Mapping[str, Any]], None]]] = [
    ("Run", "run", _header),
    ("Timeline", "timeline", _timeline),
    ("Accuracy across the loop", "accuracy", _accuracy),
    ("Drift evidence", "drift", _drift),
    ("Rollout gates", "rollouts", _rollouts),
    ("Bad release", "bad-release", _bad_release),
    ("Bytes saved by deltas", "bytes", _bytes),
    ("Federated run", "federated", _federated),
]


def render(timeline: Mapping[str, Any], out_dir: Path, *, strict: bool = False) -> Path:
    """Write out_dir/report.html, out_dir/report.md and out_dir/report/*.png; return the HTML's path."""
    if not isinstance(timeline, Mapping):
        if strict:
            raise TypeError(f"the timeline is a {type(timeline).__name__}, not an object")
        timeline = {"unreadable_timeline": repr(timeline)[:2000]}
    out_dir = Path(out_dir)
    img_dir = out_dir / "report"
    img_dir.mkdir(parents=True, exist_ok=True)
    for old in img_dir.glob("*.png"):
        old.unlink()
    doc = _Doc(img_dir, strict)
    doc.html.append(
        "<nav>" + "".join(f'<a href="#{a}">{html.escape(s)}</a>' for s, a, _ in SECTIONS) + "</nav>"
    )
    for title, anchor, build in SECTIONS:
        doc.section(title, anchor, lambda b=build: b(doc, timeline))  # type: ignore[misc]
    _other(doc, timeline)
    if plt is not None:
        plt.close("all")  # figures of a section that failed half-way
    title = "edgeloop demo report"
    page = (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{CSS}</style></head><body><h1>{title}</h1>\n" + "\n".join(doc.html) + "\n</body></html>\n"
    )
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    (out_dir / "report.md").write_text(f"# {title}\n" + "\n".join(doc.md) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Render the demo report from a saved timeline.json.")
    ap.add_argument("timeline", type=Path, help="e.g. .demo/timeline.json")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: the timeline's folder)")
    args = ap.parse_args(argv)
    timeline = json.loads(args.timeline.read_text(encoding="utf-8"))
    path = render(timeline, args.out or args.timeline.parent)
    print(path)
    print(path.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

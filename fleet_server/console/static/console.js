/*
 * edgeloop operator console: a read-only view of the fleet over the REST API (/api/v1).
 *
 * Plain ES2020, no build step, no third-party code, no network beyond this server. Rules:
 *  - every REST call goes through `api(name, ...)` and ENDPOINTS below (tests check the table
 *    against the server's OpenAPI schema, so a renamed route fails a test, not an operator);
 *  - the operator token lives in sessionStorage only and is sent as `Authorization: Bearer`;
 *  - data reaches the DOM only as text nodes or attribute values (`el`, `svg`); never as markup.
 * The pure helpers (formatting, scales, lineage, chart data) are exported as
 * `EdgeloopConsole` so they can be tested without a browser.
 * One file on purpose (~1100 lines: helpers, DOM/SVG builders, seven views): no bundler, one CSP-clean
 * script request, and the ENDPOINTS table stays the single place the tests read.
 */
(function (root) {
  "use strict";

  // ------------------------------------------------------------------ REST endpoints
  // name: [method, path template]. The only place a URL of the API is written down.
  const ENDPOINTS = Object.freeze({
    devices: ["GET", "/api/v1/devices"],
    releases: ["GET", "/api/v1/releases"],
    deployment: ["GET", "/api/v1/deployments/{deployment_id}"],
    release_deployments: ["GET", "/api/v1/releases/{seq}/deployments"],
    episodes: ["GET", "/api/v1/drift/episodes"],
    runs: ["GET", "/api/v1/federated/runs"],
    run: ["GET", "/api/v1/federated/runs/{run_id}"],
    models: ["GET", "/api/v1/models"],
    rollouts: ["GET", "/api/v1/rollouts"],
    rollout: ["GET", "/api/v1/rollouts/{rollout_id}"],
    audit: ["GET", "/api/v1/audit"],
    audit_verify: ["GET", "/api/v1/audit/verify"],
  });

  const TOKEN_KEY = "edgeloop.console.token";
  const REFRESH_MS = 5000;
  const SERIES_COLORS = 8; // CSS classes s0..s7

  // ------------------------------------------------------------------ pure helpers

  function fillPath(template, params) {
    return template.replace(/\{(\w+)\}/g, (_, key) => {
      const value = params ? params[key] : undefined;
      if (value === undefined || value === null || value === "") {
        throw new Error(`missing path parameter ${key}`);
      }
      return encodeURIComponent(String(value));
    });
  }

  function withQuery(path, query) {
    const entries = Object.entries(query || {}).filter(([, v]) => v !== undefined && v !== null);
    if (!entries.length) return path;
    const qs = new URLSearchParams();
    for (const [k, v] of entries) qs.append(k, String(v));
    return `${path}?${qs.toString()}`;
  }

  // API times are ISO 8601 in UTC with an offset ("2026-01-02T03:04:05.123456Z" or "+00:00").
  // Date.parse reads a string without an offset as *local* time and only promises millisecond
  // fractions, so: cut the fraction to 3 digits and take a missing offset as UTC (older servers).
  const ISO_RE = /^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2})?)(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})?$/i;

  function parseIso(text) {
    const m = ISO_RE.exec(text.trim());
    if (!m) return Date.parse(text);
    const frac = m[3] ? `.${m[3].slice(0, 3).padEnd(3, "0")}` : "";
    let zone = (m[4] || "Z").toUpperCase();
    if (zone !== "Z" && !zone.includes(":")) zone = `${zone.slice(0, 3)}:${zone.slice(3)}`;
    return Date.parse(`${m[1]}T${m[2]}${frac}${zone}`);
  }

  function toMs(value) {
    if (value === null || value === undefined || value === "") return null;
    if (typeof value === "number") return Number.isFinite(value) ? value : null;
    if (typeof value !== "string") return null;
    const ms = parseIso(value);
    return Number.isNaN(ms) ? null : ms;
  }

  function fmtAgo(value, nowMs) {
    const ms = toMs(value);
    if (ms === null) return "never";
    const s = Math.max(0, Math.round((nowMs - ms) / 1000));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  function pad2(n) {
    return String(n).padStart(2, "0");
  }

  function fmtUtc(value) {
    const ms = toMs(value);
    if (ms === null || ms <= 0) return "–";
    const d = new Date(ms);
    const date = `${d.getUTCFullYear()}-${pad2(d.getUTCMonth() + 1)}-${pad2(d.getUTCDate())}`;
    return `${date} ${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}:${pad2(d.getUTCSeconds())}Z`;
  }

  function fmtClock(ms, spanMs) {
    const d = new Date(ms);
    const hm = `${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}`;
    if (spanMs < 120000) return `${hm}:${pad2(d.getUTCSeconds())}`;
    if (spanMs < 2 * 86400000) return hm;
    return `${pad2(d.getUTCMonth() + 1)}-${pad2(d.getUTCDate())} ${hm}`;
  }

  function fmtNum(x, digits = 3) {
    if (typeof x !== "number" || !Number.isFinite(x)) return "–";
    if (Number.isInteger(x)) return String(x);
    return String(Number(x.toPrecision(digits)));
  }

  function fmtPct(x) {
    if (typeof x !== "number" || !Number.isFinite(x)) return "–";
    return `${(x * 100).toFixed(1)}%`;
  }

  function fmtBytes(n) {
    if (typeof n !== "number" || !Number.isFinite(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = n;
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
  }

  function shortId(s, n = 12) {
    const text = String(s ?? "");
    return text.length > n ? `${text.slice(0, n)}…` : text;
  }

  function labelsText(labels) {
    return Object.keys(labels || {})
      .sort()
      .map((k) => `${k}=${labels[k]}`);
  }

  function servingModel(observed) {
    const slots = observed && Array.isArray(observed.slots) ? observed.slots : [];
    return slots
      .filter((s) => s && s.model_name)
      .map((s) => (s.model_version ? `${s.model_name}@${s.model_version}` : s.model_name))
      .join(", ");
  }

  function linearScale(d0, d1, r0, r1) {
    if (d1 === d0) {
      const mid = (r0 + r1) / 2;
      return () => mid;
    }
    const k = (r1 - r0) / (d1 - d0);
    return (x) => r0 + (x - d0) * k;
  }

  function niceTicks(lo, hi, count = 4) {
    let a = Number.isFinite(lo) ? lo : 0;
    let b = Number.isFinite(hi) ? hi : 1;
    if (b < a) [a, b] = [b, a];
    if (b === a) b = a + 1;
    const rough = (b - a) / Math.max(1, count);
    const mag = 10 ** Math.floor(Math.log10(rough));
    const norm = rough / mag;
    const unit = norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10;
    const step = unit * mag;
    const decimals = Math.max(0, -Math.floor(Math.log10(step)) + 1);
    const ticks = [];
    const start = Math.floor(a / step + 1e-9);
    const end = Math.ceil(b / step - 1e-9);
    for (let i = start; i <= end; i += 1) ticks.push(Number((i * step).toFixed(decimals)));
    return ticks;
  }

  function integerTicks(lo, hi, count = 6) {
    const ticks = niceTicks(lo, hi, count).filter((t) => Number.isInteger(t) && t >= lo && t <= hi);
    return ticks.length ? ticks : [lo];
  }

  /** Version numbers from the root ancestor to `version` (parents first), stopping at a cycle or gap. */
  function lineageChain(versions, name, version) {
    const byVersion = new Map();
    for (const v of versions || []) if (v.name === name) byVersion.set(v.version, v);
    const chain = [];
    const seen = new Set();
    let cur = byVersion.get(version);
    if (!cur) return [version];
    while (cur && !seen.has(cur.version)) {
      seen.add(cur.version);
      chain.unshift(cur.version);
      cur = cur.parent_version === null || cur.parent_version === undefined
        ? undefined
        : byVersion.get(cur.parent_version) || { version: cur.parent_version, parent_version: null };
    }
    return chain;
  }

  function releasedTo(version) {
    const devices = new Set();
    for (const rel of Object.values((version && version.releases) || {})) {
      for (const d of (rel && rel.devices) || []) devices.add(d);
    }
    return devices.size;
  }

  function profileAccuracy(version) {
    const arts = (version && version.artifacts) || {};
    return Object.keys(arts)
      .sort()
      .map((profile) => ({ profile, accuracy: arts[profile] ? arts[profile].accuracy : null }));
  }

  /** Episodes grouped by device for the timeline; open episodes run until `nowMs`. */
  function episodeSpans(episodes, nowMs) {
    const groups = new Map();
    for (const e of episodes || []) {
      const open = e.state === "open" || !(e.closed_ms > 0);
      const span = {
        id: e.id,
        stream: e.stream,
        start: e.opened_ms,
        end: open ? Math.max(nowMs, e.opened_ms) : Math.max(e.closed_ms, e.opened_ms),
        severity: e.severity,
        open,
      };
      if (!groups.has(e.device_id)) groups.set(e.device_id, []);
      groups.get(e.device_id).push(span);
    }
    return Array.from(groups.keys())
      .sort()
      .map((device) => ({ device, spans: groups.get(device).sort((a, b) => a.start - b.start) }));
  }

  /** Per-round series of a federated run: participation counts and every numeric metric. */
  function roundSeries(rounds) {
    const out = { rounds: [], sampled: [], results: [], failures: [], epsilon: [], metrics: {} };
    for (const r of rounds || []) {
      const x = r.server_round;
      out.rounds.push(x);
      out.sampled.push([x, r.sampled]);
      out.results.push([x, r.results]);
      out.failures.push([x, r.failures]);
      out.epsilon.push([x, r.epsilon]);
      for (const [key, value] of Object.entries(r.metrics || {})) {
        if (typeof value !== "number" || !Number.isFinite(value)) continue;
        if (!out.metrics[key]) out.metrics[key] = [];
        out.metrics[key].push([x, value]);
      }
    }
    return out;
  }

  // ------------------------------------------------------------------ audit helpers

  const AUDIT_SHOWN = 200; // newest entries listed in the Audit tab
  const VERIFY_EVERY_MS = 30000; // verification walks the whole chain on the server: not every refresh

  /** "operator alice (admin)", "system registry", "anonymous: no credentials". */
  function actorText(actor) {
    const a = actor || {};
    if (a.kind === "operator") return `operator ${a.name || a.id}${a.role ? ` (${a.role})` : ""}`;
    if (a.kind === "system") return `system ${a.name || a.id}`;
    return `${a.kind || "unknown"}${a.name ? `: ${a.name}` : ""}`;
  }

  /** Entry details as "key=value" items (nested values as compact JSON), each cut to `max` chars. */
  function detailsText(details, max = 80) {
    return Object.keys(details || {})
      .sort()
      .map((k) => {
        const v = details[k];
        const text = typeof v === "string" ? v : JSON.stringify(v);
        return shortId(`${k}=${text}`, max);
      });
  }

  /** The chain status line for a /audit/verify report: {ok, text}. */
  function chainStatus(report) {
    if (!report) return { ok: false, text: "not verified yet" };
    const signed = report.signatures
      ? `${report.signatures} head signature(s), last signed seq ${report.last_signed_seq}`
      : "no head signature yet";
    if (report.ok) return { ok: true, text: `intact: ${report.entries} entries up to seq ${report.head_seq}; ${signed}` };
    const where = report.broken_seq === null || report.broken_seq === undefined ? "" : ` at seq ${report.broken_seq}`;
    return { ok: false, text: `BROKEN${where}: ${report.reason || "no reason given"}` };
  }

  /** Where to start paging so that the newest `shown` entries of a chain with head `headSeq` come back. */
  function auditAfterSeq(headSeq, shown = AUDIT_SHOWN) {
    return Math.max(0, (Number.isInteger(headSeq) ? headSeq : 0) - shown);
  }

  /** A federated run's outcome for people: the reason it failed, or who cancelled it and why. */
  function runOutcome(run) {
    const r = run || {};
    if (r.status === "cancelled") return `cancelled by ${r.cancelled_by || "unknown"}${r.detail ? ` — ${r.detail}` : ""}`;
    if (r.status === "failed") return `failed: ${r.detail || "(no reason recorded)"}`;
    return r.detail || "";
  }

  // ------------------------------------------------------------------ rollout helpers

  /** Device counts by status as "committed 3 · pending 5" (statuses sorted), "" when none. */
  function countsText(counts) {
    return Object.keys(counts || {})
      .sort()
      .filter((k) => counts[k] > 0)
      .map((k) => `${k} ${counts[k]}`)
      .join(" · ");
  }

  /** Where a rollout stands: "draft", "batch 2/4", "completed (4 batches)". */
  function rolloutProgress(r) {
    const x = r || {};
    if (x.state === "draft" || !(x.batch >= 0)) return x.state === "draft" ? "draft" : `0/${x.batches ?? 0}`;
    if (x.state === "completed") return `completed (${x.batches} batch${x.batches === 1 ? "" : "es"})`;
    return `batch ${x.batch + 1}/${x.batches}`;
  }

  /** Releases of a rollout as "profile → r<seq>" items. */
  function rolloutReleases(r) {
    return ((r && r.releases) || []).map((rel) => {
      const seq = rel.release_seq ?? rel.seq;
      const profiles = Array.isArray(rel.profiles) ? rel.profiles.join(",") : rel.profile || "";
      const model = rel.model_name ? ` ${rel.model_name}@${rel.model_version}` : "";
      return `${profiles ? `${profiles} → ` : ""}r${seq ?? "?"}${model}`;
    });
  }

  const helpers = {
    ENDPOINTS, fillPath, withQuery, toMs, fmtAgo, fmtUtc, fmtClock, fmtNum, fmtPct, fmtBytes,
    shortId, labelsText, servingModel, linearScale, niceTicks, integerTicks, lineageChain,
    releasedTo, profileAccuracy, episodeSpans, roundSeries, actorText, detailsText, chainStatus,
    auditAfterSeq, runOutcome, countsText, rolloutProgress, rolloutReleases,
  };
  root.EdgeloopConsole = Object.freeze(helpers);
  if (!root.document) return; // loaded for tests: no DOM, no app

  // ------------------------------------------------------------------ DOM building (text only)

  const SVG_NS = "http://www.w3.org/2000/svg";

  function setAttrs(node, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (/^on/i.test(name) || name === "style") throw new Error(`refusing attribute ${name}`);
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }

  function append(node, children) {
    for (const child of children) {
      if (child === undefined || child === null || child === false) continue;
      if (Array.isArray(child)) append(node, child);
      else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    return append(node, children);
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    return append(node, children);
  }

  function $(id) {
    return document.getElementById(id);
  }

  function muted(text) {
    return el("p", { class: "muted" }, text);
  }

  /** columns: [{title, value(row) -> string|Node, cls?}]; opts: {key(row), selected, onSelect}. */
  function table(columns, rows, opts = {}) {
    if (!rows.length) return muted(opts.empty ?? "Nothing yet.");
    const head = el("tr", null, columns.map((c) => el("th", { class: c.cls }, c.title)));
    const body = rows.map((row) => {
      const key = opts.key ? String(opts.key(row)) : null;
      const attrs = opts.onSelect
        ? { class: key === opts.selected ? "row selectable selected" : "row selectable", tabindex: 0 }
        : { class: "row" };
      const tr = el("tr", attrs, columns.map((c) => el("td", { class: c.cls }, c.value(row))));
      if (opts.onSelect) {
        tr.addEventListener("click", () => opts.onSelect(row));
        tr.addEventListener("keydown", (ev) => {
          if (ev.key === "Enter" || ev.key === " ") {
            ev.preventDefault();
            opts.onSelect(row);
          }
        });
      }
      return tr;
    });
    return el("div", { class: "table-wrap" }, el("table", null, el("thead", null, head), el("tbody", null, body)));
  }

  function chips(items, cls = "chip") {
    return items.map((t) => el("span", { class: cls }, t));
  }

  function when(value) {
    return el("span", { title: fmtUtc(value) }, fmtAgo(value, Date.now()));
  }

  function legend(names) {
    return el(
      "div",
      { class: "legend" },
      names.map((name, i) =>
        el("span", { class: "legend-item" }, el("span", { class: `swatch s${i % SERIES_COLORS}` }), name)
      )
    );
  }

  function figure(title, chart, names) {
    return el("figure", { class: "chart" }, el("figcaption", null, title), chart, names ? legend(names) : null);
  }

  function frame(width, height, title) {
    return svg("svg", {
      viewBox: `0 0 ${width} ${height}`,
      width,
      height,
      role: "img",
      "aria-label": title,
      class: "plot",
    });
  }

  function yAxis(node, ticks, y, m, width) {
    for (const t of ticks) {
      node.append(
        svg("line", { x1: m.l, x2: width - m.r, y1: y(t), y2: y(t), class: "grid" }),
        svg("text", { x: m.l - 6, y: y(t) + 4, class: "tick", "text-anchor": "end" }, fmtNum(t))
      );
    }
  }

  function xAxis(node, ticks, x, label, m, height) {
    for (const t of ticks) {
      node.append(svg("text", { x: x(t), y: height - m.b + 16, class: "tick", "text-anchor": "middle" }, label(t)));
    }
  }

  /** series: [{name, points: [[x, y], ...]}] over integer x (rounds). */
  function lineChart(title, series, opts = {}) {
    const width = opts.width || 520;
    const height = opts.height || 200;
    const m = { l: 48, r: 14, t: 10, b: 26 };
    const xs = series.flatMap((s) => s.points.map((p) => p[0]));
    const ys = series.flatMap((s) => s.points.map((p) => p[1])).filter(Number.isFinite);
    if (!xs.length || !ys.length) return null;
    const yt = opts.integerY ? integerTicks(0, Math.max(1, ...ys), 4) : niceTicks(Math.min(0, ...ys), Math.max(...ys), 4);
    const x = linearScale(Math.min(...xs), Math.max(...xs), m.l + 8, width - m.r - 8);
    const y = linearScale(yt[0], yt[yt.length - 1], height - m.b, m.t);
    const node = frame(width, height, title);
    yAxis(node, yt, y, m, width);
    xAxis(node, integerTicks(Math.min(...xs), Math.max(...xs)), x, (t) => String(t), m, height);
    series.forEach((s, i) => {
      const cls = `s${i % SERIES_COLORS}`;
      const pts = s.points.filter((p) => Number.isFinite(p[1]));
      node.append(svg("polyline", { points: pts.map((p) => `${x(p[0])},${y(p[1])}`).join(" "), class: `line ${cls}` }));
      for (const [px, py] of pts) {
        node.append(
          svg("circle", { cx: x(px), cy: y(py), r: 3, class: `dot ${cls}` }, svg("title", null, `${s.name}, round ${px}: ${fmtNum(py, 4)}`))
        );
      }
    });
    return figure(title, node, series.length > 1 ? series.map((s) => s.name) : null);
  }

  /** Horizontal bars: [{label, value}]. */
  function barChart(title, bars) {
    if (!bars.length) return null;
    const width = 520;
    const row = 22;
    const m = { l: 130, r: 60, t: 6, b: 6 };
    const height = m.t + m.b + row * bars.length;
    const max = Math.max(...bars.map((b) => b.value), 0) || 1;
    const x = linearScale(0, max, m.l, width - m.r);
    const node = frame(width, height, title);
    bars.forEach((b, i) => {
      const top = m.t + i * row;
      node.append(
        svg("text", { x: m.l - 6, y: top + 15, class: "tick", "text-anchor": "end" }, shortId(b.label, 18), svg("title", null, b.label)),
        svg("rect", { x: m.l, y: top + 3, width: Math.max(1, x(b.value) - m.l), height: row - 6, class: `bar s${i % SERIES_COLORS}` },
          svg("title", null, `${b.label}: ${fmtNum(b.value, 4)}`)),
        svg("text", { x: x(b.value) + 4, y: top + 15, class: "tick" }, fmtNum(b.value, 3))
      );
    });
    return figure(title, node, null);
  }

  /** Drift timeline: x = time, y = severity (1 = the alarm threshold), one colour per device. */
  function timelineChart(groups, nowMs) {
    const spans = groups.flatMap((g) => g.spans);
    if (!spans.length) return null;
    const width = 760;
    const height = 240;
    const m = { l: 48, r: 16, t: 10, b: 26 };
    const t0 = Math.min(...spans.map((s) => s.start));
    const t1 = Math.max(...spans.map((s) => s.end), t0 + 1000);
    const yt = niceTicks(0, Math.max(1.2, ...spans.map((s) => s.severity)), 4);
    const x = linearScale(t0, t1, m.l + 6, width - m.r - 6);
    const y = linearScale(yt[0], yt[yt.length - 1], height - m.b, m.t);
    const node = frame(width, height, "drift episode severity per device over time");
    yAxis(node, yt, y, m, width);
    node.append(svg("line", { x1: m.l, x2: width - m.r, y1: y(1), y2: y(1), class: "threshold" }, svg("title", null, "alarm threshold (severity 1)")));
    const xt = [0, 0.25, 0.5, 0.75, 1].map((f) => t0 + f * (t1 - t0));
    xAxis(node, xt, x, (t) => fmtClock(t, t1 - t0), m, height);
    groups.forEach((g, i) => {
      const cls = `s${i % SERIES_COLORS}`;
      for (const s of g.spans) {
        const tip = `${g.device} · ${s.stream} · severity ${fmtNum(s.severity)} · ${fmtUtc(s.start)} → ${s.open ? "open" : fmtUtc(s.end)}`;
        node.append(
          svg("line", { x1: x(s.start), x2: Math.max(x(s.end), x(s.start) + 2), y1: y(s.severity), y2: y(s.severity), class: `span ${cls}${s.open ? " open" : ""}` }, svg("title", null, tip)),
          svg("circle", { cx: x(s.start), cy: y(s.severity), r: 3.5, class: `dot ${cls}` }, svg("title", null, tip))
        );
      }
    });
    const caption = `Severity per episode (strongest statistic / threshold), ${fmtUtc(t0)} – ${fmtUtc(Math.min(t1, nowMs))}; dashed = still open`;
    return figure(caption, node, groups.map((g) => g.device));
  }

  // ------------------------------------------------------------------ API client

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  const state = {
    token: null,
    view: "fleet",
    busy: false,
    pending: false, // a refresh was asked for while one was running
    release: null, // selected release seq
    lookups: [], // deployment ids typed by the operator
    run: null, // selected federated run id
    anomalyRound: null,
    model: null, // "name@version"
    rollout: null, // selected rollout id
    verify: null, // last /audit/verify report
    verifiedAt: 0, // when it was fetched (ms)
    auditFilter: "all", // all | changes (state changes) | requests (operator API calls)
  };

  async function api(name, params = {}, query = {}) {
    const [method, template] = ENDPOINTS[name];
    const url = withQuery(fillPath(template, params), query);
    let resp;
    try {
      resp = await fetch(url, {
        method,
        headers: { Authorization: `Bearer ${state.token}`, Accept: "application/json" },
        cache: "no-store",
        credentials: "omit",
      });
    } catch (err) {
      throw new ApiError(0, `server unreachable (${err.message})`);
    }
    if (!resp.ok) {
      let detail = resp.statusText;
      try {
        const body = await resp.json();
        if (body && body.detail) detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      } catch (_) {
        /* not JSON */
      }
      throw new ApiError(resp.status, detail);
    }
    return resp.json();
  }

  // ------------------------------------------------------------------ views

  function show(id, node) {
    const target = $(id);
    if (Array.isArray(node)) target.replaceChildren(...node.filter(Boolean));
    else if (node) target.replaceChildren(node);
    else target.replaceChildren();
  }

  async function loadFleet() {
    const devices = await api("devices", {}, { limit: 5000 });
    const online = devices.filter((d) => d.online).length;
    show("fleet-summary", el("p", null, `${devices.length} devices · ${online} online`));
    show("fleet-table", table(
      [
        { title: "Device", value: (d) => d.id, cls: "mono" },
        { title: "Profile", value: (d) => d.profile || "–" },
        { title: "Online", value: (d) => el("span", { class: d.online ? "pill ok" : "pill off" }, d.online ? "online" : "offline") },
        { title: "Status", value: (d) => d.status },
        { title: "Last seen", value: (d) => when(d.last_seen_at) },
        { title: "Labels", value: (d) => chips(labelsText(d.labels)) },
        { title: "Serving", value: (d) => servingModel(d.observed) || "–", cls: "mono" },
        { title: "Health", value: (d) => (d.observed && d.observed.health) || "–" },
        { title: "Agent", value: (d) => d.agent_version || "–" },
      ],
      devices,
      { empty: "No devices enrolled yet." }
    ));
  }

  async function loadReleases() {
    const releases = await api("releases");
    show("releases-table", table(
      [
        { title: "Seq", value: (r) => String(r.seq), cls: "num" },
        { title: "Model", value: (r) => `${r.model_name}@${r.model_version}`, cls: "mono" },
        { title: "Target", value: (r) => r.target_path, cls: "mono" },
        { title: "SHA-256", value: (r) => el("span", { title: r.sha256 }, shortId(r.sha256)), cls: "mono" },
        { title: "Size", value: (r) => fmtBytes(r.length), cls: "num" },
        { title: "Drift ref", value: (r) => (r.drift_reference_sha256 ? "signed" : "–") },
        { title: "By", value: (r) => r.created_by || "–" },
        { title: "Created", value: (r) => when(r.created_at) },
      ],
      releases,
      {
        empty: "No releases published yet.",
        key: (r) => r.seq,
        selected: state.release === null ? null : String(state.release),
        onSelect: (r) => select({ release: r.seq }),
      }
    ));
    const ids = [];
    if (state.release !== null) {
      const statuses = await api("release_deployments", { seq: state.release });
      for (const r of statuses) if (!ids.includes(r.deployment_id)) ids.push(r.deployment_id);
    }
    for (const id of state.lookups) if (!ids.includes(id)) ids.push(id);
    const parts = [];
    if (state.release !== null) {
      parts.push(el("h3", null, `Release ${state.release}: deployments`));
      if (!ids.length) {
        parts.push(muted("This release is not deployed to any device yet (edgeloop release deploy SEQ DEVICE…)."));
      }
    }
    for (const id of ids) parts.push(await deploymentTable(id));
    show("release-detail", parts);
  }

  // Deployment states the device reports with a reason the operator must see (agent/ota/states.py).
  const PROBLEM_STATES = new Set(["failed", "refused", "rolled_back"]);

  async function deploymentTable(id) {
    let rows;
    try {
      rows = await api("deployment", { deployment_id: id });
    } catch (err) {
      if (err.status === 404 || err.status === 422) return muted(`${id}: ${err.message}`);
      throw err;
    }
    const counts = {};
    for (const r of rows) counts[r.state] = (counts[r.state] || 0) + 1;
    const summary = Object.keys(counts).sort().map((k) => `${k} ${counts[k]}`).join(" · ");
    return el(
      "div",
      { class: "block" },
      el("h4", null, el("span", { class: "mono" }, id), ` — ${rows.length} device(s)${summary ? `: ${summary}` : ""}`),
      table(
        [
          { title: "Device", value: (r) => r.device_id, cls: "mono" },
          { title: "Release", value: (r) => String(r.release_seq), cls: "num" },
          { title: "State", value: (r) => el("span", { class: `pill state-${r.state}` }, r.state) },
          { title: "Event", value: (r) => r.event || "–" },
          // the device's reason for a refusal, failure or retry; its progress note otherwise
          { title: "Reason / detail", value: (r) => (PROBLEM_STATES.has(r.state) || r.event === "retry")
              ? el("strong", null, r.detail || "(no reason given)") : (r.detail || "") },
          { title: "Transition", value: (r) => String(r.transition), cls: "num" },
          { title: "Updated", value: (r) => when(r.updated_at) },
        ],
        rows,
        { empty: "No device in this deployment." }
      )
    );
  }

  async function loadDrift() {
    const episodes = await api("episodes", {}, { limit: 1000 });
    const now = Date.now();
    const chart = timelineChart(episodeSpans(episodes, now), now);
    show("drift-chart", chart || muted("No drift episodes reported yet."));
    show("drift-table", table(
      [
        { title: "Id", value: (e) => String(e.id), cls: "num" },
        { title: "Device", value: (e) => e.device_id, cls: "mono" },
        { title: "Stream", value: (e) => e.stream },
        { title: "State", value: (e) => el("span", { class: e.state === "open" ? "pill warn" : "pill off" }, e.state) },
        { title: "Model", value: (e) => (e.model_name ? `${e.model_name}@${e.model_version}` : "–"), cls: "mono" },
        { title: "Severity", value: (e) => fmtNum(e.severity), cls: "num" },
        { title: "Signature", value: (e) => e.signature },
        { title: "Features", value: (e) => chips((e.features || []).slice(0, 6)) },
        { title: "Opened", value: (e) => el("span", { title: fmtUtc(e.opened_ms) }, fmtAgo(e.opened_ms, now)) },
        { title: "Closed", value: (e) => (e.closed_ms > 0 ? fmtUtc(e.closed_ms) : "–") },
        { title: "Cohort verdict", value: (e) => e.classification || "–" },
      ],
      episodes,
      { empty: "" } // the chart already says when there is nothing
    ));
  }

  async function loadFederated() {
    const runs = await api("runs", {}, { limit: 50 });
    show("runs-table", table(
      [
        { title: "Run", value: (r) => el("span", { title: r.id }, shortId(r.id)), cls: "mono" },
        { title: "Strategy", value: (r) => r.strategy },
        { title: "SecAgg", value: (r) => (r.secure_aggregation ? "yes" : "no") },
        { title: "Status", value: (r) => el("span", { class: `pill run-${r.status}` }, r.status) },
        { title: "Rounds", value: (r) => String(r.num_rounds), cls: "num" },
        { title: "ε", value: (r) => fmtNum(r.epsilon), cls: "num" },
        { title: "Model", value: (r) => (r.config && r.config.model) || "–" },
        { title: "Created", value: (r) => when(r.created_at) },
        { title: "Finished", value: (r) => (r.finished_at ? when(r.finished_at) : "–") },
        { title: "Cancelled by", value: (r) => (r.status === "cancelled" ? r.cancelled_by || "unknown" : "–") },
        // why it ended: the failure reason or the cancel reason, in bold when the run did not complete
        { title: "Reason / detail", value: (r) => (r.status === "failed" || r.status === "cancelled")
            ? el("strong", null, r.detail || "(no reason recorded)") : (r.detail || "") },
      ],
      runs,
      {
        empty: "No federated runs yet.",
        key: (r) => r.id,
        selected: state.run,
        onSelect: (r) => select({ run: r.id, anomalyRound: null }),
      }
    ));
    if (!state.run) return show("run-detail", null);
    let out;
    try {
      out = await api("run", { run_id: state.run });
    } catch (err) {
      if (err.status !== 404) throw err;
      state.run = null;
      return show("run-detail", null);
    }
    show("run-detail", runDetail(out));
  }

  function runDetail(out) {
    const run = out.run;
    const rounds = out.rounds || [];
    const series = roundSeries(rounds);
    const dp = run.epsilon > 0 ? `ε = ${fmtNum(run.epsilon)} (δ = ${fmtNum(run.delta)})` : "ε = 0 (no DP noise)";
    const parts = [
      el("h3", null, `Run `, el("span", { class: "mono" }, run.id)),
      el("p", null, `${run.strategy} · ${run.status} · ${rounds.length}/${run.num_rounds} rounds · `,
        el("strong", null, dp), ` · ${out.online_devices} device(s) online`),
    ];
    if (run.status === "failed" || run.status === "cancelled") {
      parts.push(el("p", { class: `outcome run-${run.status}` }, el("strong", null, runOutcome(run)),
        run.finished_at ? ` (${fmtUtc(run.finished_at)})` : ""));
    }
    if (!rounds.length) return parts.concat(muted("No round finished yet."));
    const charts = [
      lineChart("Participation per round", [
        { name: "sampled", points: series.sampled },
        { name: "results", points: series.results },
        { name: "failures", points: series.failures },
      ], { integerY: true }),
    ];
    for (const key of Object.keys(series.metrics).sort()) {
      charts.push(lineChart(`${key} per round`, [{ name: key, points: series.metrics[key] }], { height: 160 }));
    }
    if (series.epsilon.some((p) => p[1] > 0)) {
      charts.push(lineChart("ε spent (cumulative)", [{ name: "epsilon", points: series.epsilon }], { height: 160 }));
    }
    parts.push(el("div", { class: "charts" }, charts.filter(Boolean)));
    parts.push(anomalyPanel(rounds));
    parts.push(table(
      [
        { title: "Round", value: (r) => String(r.server_round), cls: "num" },
        { title: "Sampled", value: (r) => String(r.sampled), cls: "num" },
        { title: "Results", value: (r) => String(r.results), cls: "num" },
        { title: "Failures", value: (r) => String(r.failures), cls: "num" },
        { title: "Rejected", value: (r) => Object.keys(r.rejected || {}).length ? chips(Object.keys(r.rejected)) : "–" },
        { title: "ε", value: (r) => fmtNum(r.epsilon), cls: "num" },
        { title: "Duration", value: (r) => `${fmtNum(r.duration_s)} s`, cls: "num" },
        { title: "Aggregate", value: (r) => el("span", { title: r.arrays_digest }, shortId(r.arrays_digest)), cls: "mono" },
      ],
      rounds
    ));
    return parts;
  }

  function anomalyPanel(rounds) {
    const withScores = rounds.filter((r) => Object.keys(r.anomaly_scores || {}).length);
    if (!withScores.length) return muted("No anomaly scores recorded.");
    const wanted = state.anomalyRound;
    const round = withScores.find((r) => r.server_round === wanted) || withScores[withScores.length - 1];
    const picker = el("select", { "aria-label": "round" },
      withScores.map((r) => el("option", { value: r.server_round, selected: r.server_round === round.server_round }, `round ${r.server_round}`)));
    picker.addEventListener("change", () => select({ anomalyRound: Number(picker.value) }));
    const bars = Object.entries(round.anomaly_scores)
      .map(([label, value]) => ({ label, value: Number(value) }))
      .sort((a, b) => b.value - a.value);
    return el("div", { class: "block" },
      el("h4", null, "Update anomaly scores (higher = further from the others) ", picker),
      barChart(`anomaly scores, round ${round.server_round}`, bars));
  }

  async function loadModels() {
    const versions = await api("models");
    const key = (v) => `${v.name}@${v.version}`;
    show("models-table", table(
      [
        { title: "Version", value: (v) => key(v), cls: "mono" },
        { title: "Parent", value: (v) => (v.parent_version ? `v${v.parent_version}` : "–") },
        { title: "Source", value: (v) => v.source },
        { title: "Status", value: (v) => el("span", { class: `pill model-${v.status}` }, v.status) },
        { title: "Accuracy (fp32)", value: (v) => fmtPct(v.accuracy), cls: "num" },
        { title: "Accuracy per profile", value: (v) => chips(profileAccuracy(v).map((p) => `${p.profile} ${fmtPct(p.accuracy)}`)) },
        { title: "Released to", value: (v) => String(releasedTo(v)), cls: "num" },
        { title: "Created", value: (v) => when(v.created_at) },
      ],
      versions,
      { empty: "No model registered yet.", key, selected: state.model, onSelect: (v) => select({ model: key(v) }) }
    ));
    const chosen = versions.find((v) => key(v) === state.model);
    show("model-detail", chosen ? modelDetail(chosen, versions) : null);
  }

  function modelDetail(v, versions) {
    const chain = lineageChain(versions, v.name, v.version);
    const links = [];
    chain.forEach((n, i) => {
      if (i) links.push(el("span", { class: "arrow", "aria-hidden": "true" }, "→"));
      const b = el("button", { type: "button", class: n === v.version ? "chip link current" : "chip link" }, `v${n}`);
      b.addEventListener("click", () => select({ model: `${v.name}@${n}` }));
      links.push(b);
    });
    const lin = v.lineage || {};
    const facts = [
      ["source", v.source],
      ["created by", v.created_by || "–"],
      ["artifact", v.artifact_sha256],
    ];
    if (lin.run_id) {
      facts.push(
        ["federated run", lin.run_id],
        ["strategy", lin.strategy || "–"],
        ["rounds", String((lin.rounds || []).length)],
        ["participants (max)", fmtNum(lin.participants_max)],
        ["DP", `ε = ${fmtNum(lin.epsilon || 0)}, δ = ${fmtNum(lin.delta || 0)}`],
        ["secure aggregation", String(Boolean(lin.secure_aggregation))]
      );
    }
    const arts = Object.keys(v.artifacts || {}).sort().map((p) => ({ profile: p, ...v.artifacts[p] }));
    const rels = Object.keys(v.releases || {}).sort().map((p) => ({ profile: p, ...v.releases[p] }));
    return [
      el("h3", null, `${v.name}@${v.version}`),
      el("div", { class: "chain", "aria-label": "lineage" }, links),
      el("dl", { class: "facts" }, facts.map(([k, val]) => [el("dt", null, k), el("dd", { class: "mono" }, val)])),
      v.detail ? el("p", { class: "muted" }, v.detail) : null,
      el("h4", null, "Artifacts"),
      table(
        [
          { title: "Profile", value: (a) => a.profile },
          { title: "Recipe", value: (a) => a.recipe || a.runtime || "–" },
          { title: "File", value: (a) => a.filename || "–", cls: "mono" },
          { title: "Size", value: (a) => fmtBytes(a.size_bytes), cls: "num" },
          { title: "Accuracy", value: (a) => fmtPct(a.accuracy), cls: "num" },
        ],
        arts,
        { empty: "Not compiled yet." }
      ),
      el("h4", null, "Releases"),
      table(
        [
          { title: "Profile", value: (r) => r.profile },
          { title: "Release", value: (r) => String(r.release_seq), cls: "num" },
          { title: "Deployment", value: (r) => r.deployment_id || "–", cls: "mono" },
          { title: "Devices", value: (r) => chips(r.devices || []) },
        ],
        rels,
        { empty: "Not released." }
      ),
    ];
  }

  // Rollout states that stopped short of completing: the reason is what the operator needs.
  const HALTED = new Set(["paused", "aborted", "rolling_back", "rolled_back"]);

  async function loadRollouts() {
    const rollouts = await api("rollouts", {}, { limit: 100 });
    show("rollouts-table", table(
      [
        { title: "Rollout", value: (r) => el("span", { title: r.id }, r.name || shortId(r.id)), cls: "mono" },
        { title: "State", value: (r) => el("span", { class: `pill rollout-${r.state}` }, r.state) },
        { title: "Progress", value: (r) => rolloutProgress(r) },
        { title: "Releases", value: (r) => chips(rolloutReleases(r)) },
        { title: "Devices", value: (r) => countsText(r.devices) || "–" },
        { title: "On breach", value: (r) => r.on_breach },
        { title: "Reason", value: (r) => (HALTED.has(r.state) ? el("strong", null, r.reason || "(none given)") : r.reason || "") },
        { title: "By", value: (r) => r.created_by || "–" },
        { title: "Updated", value: (r) => when(r.updated_at) },
      ],
      rollouts,
      {
        empty: "No rollouts yet (edgeloop rollout create).",
        key: (r) => r.id,
        selected: state.rollout,
        onSelect: (r) => select({ rollout: r.id }),
      }
    ));
    if (!state.rollout) return show("rollout-detail", null);
    let detail;
    try {
      detail = await api("rollout", { rollout_id: state.rollout });
    } catch (err) {
      if (err.status !== 404) throw err;
      state.rollout = null;
      return show("rollout-detail", null);
    }
    show("rollout-detail", rolloutDetail(detail));
  }

  function rolloutDetail(r) {
    const excluded = countsText(r.excluded);
    return [
      el("h3", null, "Rollout ", el("span", { class: "mono" }, r.id), r.name ? ` (${r.name})` : ""),
      el("p", null, `${r.state} · ${rolloutProgress(r)} · on breach: ${r.on_breach}`,
        r.reason ? [" · ", el("strong", null, r.reason)] : ""),
      excluded ? muted(`not targeted: ${excluded}`) : null,
      el("h4", null, "Batches"),
      table(
        [
          { title: "Batch", value: (b) => String(b.index + 1), cls: "num" },
          { title: "Devices", value: (b) => String(b.size), cls: "num" },
          { title: "Status", value: (b) => countsText(b.devices) || "–" },
          { title: "Looks", value: (b) => String(b.looks), cls: "num" },
          { title: "Assigned", value: (b) => (b.assigned_at ? when(b.assigned_at) : "–") },
          { title: "Settled", value: (b) => (b.settled_at ? when(b.settled_at) : "–") },
          { title: "Deployments", value: (b) => chips(Object.values(b.deployments || {})) },
        ],
        r.plan || [],
        { empty: "No batch planned yet." }
      ),
      el("h4", null, `Gates of the current batch${r.batch >= 0 ? ` (${r.batch + 1})` : ""}: latest look`),
      table(
        [
          { title: "Gate", value: (g) => g.gate, cls: "mono" },
          { title: "Verdict", value: (g) => el("span", { class: `pill gate-${g.verdict}` }, g.verdict) },
          { title: "Look", value: (g) => String(g.look), cls: "num" },
          { title: "Statistic", value: (g) => fmtNum(g.statistic, 4), cls: "num" },
          { title: "p", value: (g) => fmtNum(g.p_value, 3), cls: "num" },
          { title: "e", value: (g) => fmtNum(g.e_value, 3), cls: "num" },
          { title: "Threshold", value: (g) => fmtNum(g.threshold, 3), cls: "num" },
          { title: "Effect", value: (g) => fmtNum(g.effect, 3), cls: "num" },
          { title: "Samples (canary / control)", value: (g) => `${g.samples_canary} / ${g.samples_control}`, cls: "num" },
          { title: "Devices (canary / control)", value: (g) => `${g.devices_canary} / ${g.devices_control}`, cls: "num" },
          { title: "Detail", value: (g) => g.detail || "" },
          { title: "Evaluated", value: (g) => (g.evaluated_at ? when(g.evaluated_at) : "–") },
        ],
        r.latest_gates || [],
        { empty: "No gate evaluated for this batch yet." }
      ),
    ];
  }

  async function loadAudit() {
    const now = Date.now();
    if (!state.verify || now - state.verifiedAt > VERIFY_EVERY_MS) {
      state.verify = await api("audit_verify");
      state.verifiedAt = now;
    }
    const status = chainStatus(state.verify);
    show("audit-status", el("p", { class: status.ok ? "chain-status" : "chain-status broken" },
      el("span", { class: status.ok ? "pill ok" : "pill state-failed" }, status.ok ? "chain intact" : "chain broken"),
      ` ${status.text} · verified ${fmtUtc(state.verifiedAt)}`));
    const page = await api("audit", {}, { after_seq: auditAfterSeq(state.verify.head_seq), limit: 1000 });
    if (page.next_after_seq !== null) state.verify = null; // the log outgrew the last verification: redo it
    const isRequest = (e) => e.action.startsWith("api ");
    const wanted = (e) => state.auditFilter === "all" || (state.auditFilter === "requests") === isRequest(e);
    const entries = page.entries.filter(wanted).slice(-AUDIT_SHOWN).reverse(); // newest first
    show("audit-table", table(
      [
        { title: "Seq", value: (e) => String(e.seq), cls: "num" },
        { title: "When", value: (e) => when(e.ts) },
        { title: "Actor", value: (e) => el("span", { title: e.actor.id || "" }, actorText(e.actor)) },
        { title: "Action", value: (e) => e.action, cls: "mono" },
        { title: "Target", value: (e) => (e.target.kind ? `${e.target.kind} ${e.target.id}`.trim() : "–"), cls: "mono" },
        { title: "Details", value: (e) => chips(detailsText(e.details)) },
        { title: "From", value: (e) => e.source.ip || "–" },
        { title: "Hash", value: (e) => el("span", { title: e.hash }, shortId(e.hash, 10)), cls: "mono" },
      ],
      entries,
      { empty: "No audit entries yet." }
    ));
  }

  const LOADERS = {
    fleet: loadFleet, releases: loadReleases, rollouts: loadRollouts, drift: loadDrift, federated: loadFederated,
    models: loadModels, audit: loadAudit,
  };

  // ------------------------------------------------------------------ session, tabs, refresh

  function message(text, kind) {
    const box = $("message");
    box.textContent = text || "";
    box.className = `message ${kind || ""}`;
    box.hidden = !text;
  }

  function signedIn(yes) {
    $("login").hidden = yes;
    $("tabs").hidden = !yes;
    $("signout").hidden = !yes;
    for (const name of Object.keys(LOADERS)) $(`view-${name}`).hidden = !yes || name !== state.view;
    for (const tab of document.querySelectorAll(".tab")) {
      tab.classList.toggle("active", tab.dataset.view === state.view);
      tab.setAttribute("aria-pressed", String(tab.dataset.view === state.view));
    }
  }

  function signOut(text) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    signedIn(false);
    $("refreshed").textContent = "";
    message(text, text ? "error" : "");
  }

  async function refresh() {
    if (!state.token) return;
    if (state.busy) {
      state.pending = true;
      return;
    }
    state.busy = true;
    try {
      await LOADERS[state.view]();
      message("");
      $("refreshed").textContent = `updated ${fmtUtc(Date.now())}`;
    } catch (err) {
      if (err.status === 401) {
        signOut(`The server rejected the token (401: ${err.message}). Paste a valid operator token.`);
      } else if (err.status === 403) {
        message(`Forbidden (403): ${err.message}. This token's role may not read this view.`, "error");
      } else if (err instanceof ApiError) {
        message(`Request failed${err.status ? ` (${err.status})` : ""}: ${err.message}`, "error");
      } else {
        message(`Console error: ${err.message}`, "error");
      }
    } finally {
      state.busy = false;
      if (state.pending) {
        state.pending = false;
        refresh();
      }
    }
  }

  function select(changes) {
    Object.assign(state, changes);
    return refresh();
  }

  function boot() {
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = $("token");
      const token = input.value.trim();
      input.value = "";
      if (!token) return;
      state.token = token;
      sessionStorage.setItem(TOKEN_KEY, token);
      signedIn(true);
      refresh();
    });
    $("signout").addEventListener("click", () => signOut(""));
    $("audit-filter").addEventListener("change", (ev) => select({ auditFilter: ev.target.value }));
    $("audit-verify").addEventListener("click", () => select({ verify: null }));
    $("deployment-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = $("deployment-id");
      const id = input.value.trim();
      input.value = "";
      if (id && !state.lookups.includes(id)) state.lookups.push(id);
      refresh();
    });
    for (const tab of document.querySelectorAll(".tab")) {
      tab.addEventListener("click", () => {
        state.view = tab.dataset.view;
        signedIn(true);
        refresh();
      });
    }
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refresh();
    });
    setInterval(() => {
      const active = document.activeElement;
      if (document.hidden || (active && active.tagName === "SELECT")) return; // don't close an open picker
      refresh();
    }, REFRESH_MS);
    state.token = sessionStorage.getItem(TOKEN_KEY);
    signedIn(Boolean(state.token));
    refresh();
  }

  boot();
})(typeof window !== "undefined" ? window : globalThis);

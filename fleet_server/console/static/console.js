/*
 * edgeloop operator console, part 1 of 7: the REST endpoint table, the pure helpers, the API client
 * and the text-only DOM builders. Loaded first (classic deferred scripts, in order: vendor/uPlot,
 * console.js, charts.js, widgets.js, views-*.js, app.js); the later files use `EdgeloopUI` defined here.
 *
 * Rules for every file of the console:
 *  - every REST call goes through `api(name, ...)` (or `stream(name)` for the event stream) and the
 *    ENDPOINTS table below: tests check the table against the server's OpenAPI schema;
 *  - the operator token lives in sessionStorage only and is sent as `Authorization: Bearer`
 *    (never a cookie), which also makes every state-changing request CSRF-safe;
 *  - data reaches the DOM only as text nodes or attribute values (`el`); never as markup.
 * The pure helpers are exported as `EdgeloopConsole` so node can test them without a browser.
 */
(function (root) {
  "use strict";

  // ------------------------------------------------------------------ REST endpoints
  // name: [method, path template]. The only place a URL of the API is written down.
  const ENDPOINTS = Object.freeze({
    me: ["GET", "/api/v1/me"],
    events: ["GET", "/api/v1/events"],
    fleet_summary: ["GET", "/api/v1/fleet/summary"],
    fleet_devices: ["GET", "/api/v1/fleet/devices"],
    devices: ["GET", "/api/v1/devices"],
    device: ["GET", "/api/v1/devices/{device_id}"],
    device_series: ["GET", "/api/v1/devices/{device_id}/series"],
    device_labels: ["PATCH", "/api/v1/devices/{device_id}/labels"],
    device_revoke: ["POST", "/api/v1/devices/{device_id}/revoke"],
    device_sketch: ["GET", "/api/v1/drift/devices/{device_id}/sketch"],
    bootstrap_create: ["POST", "/api/v1/bootstrap-tokens"],
    releases: ["GET", "/api/v1/releases"],
    deployment: ["GET", "/api/v1/deployments/{deployment_id}"],
    release_deployments: ["GET", "/api/v1/releases/{seq}/deployments"],
    episodes: ["GET", "/api/v1/drift/episodes"],
    runs: ["GET", "/api/v1/federated/runs"],
    run: ["GET", "/api/v1/federated/runs/{run_id}"],
    run_start: ["POST", "/api/v1/federated/runs"],
    run_cancel: ["POST", "/api/v1/federated/runs/{run_id}/cancel"],
    models: ["GET", "/api/v1/models"],
    model_approve: ["POST", "/api/v1/models/{name}/versions/{version}/approve"],
    rollouts: ["GET", "/api/v1/rollouts"],
    rollout: ["GET", "/api/v1/rollouts/{rollout_id}"],
    rollout_create: ["POST", "/api/v1/rollouts"],
    rollout_gates: ["GET", "/api/v1/rollouts/{rollout_id}/gates"],
    rollout_pause: ["POST", "/api/v1/rollouts/{rollout_id}/pause"],
    rollout_resume: ["POST", "/api/v1/rollouts/{rollout_id}/resume"],
    rollout_abort: ["POST", "/api/v1/rollouts/{rollout_id}/abort"],
    rollout_rollback: ["POST", "/api/v1/rollouts/{rollout_id}/rollback"],
    audit: ["GET", "/api/v1/audit"],
    audit_verify: ["GET", "/api/v1/audit/verify"],
  });

  const TOKEN_KEY = "edgeloop.console.token";
  const ROLE_RANK = Object.freeze({ viewer: 0, operator: 1, admin: 2 });

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

  /** `query` values: scalars, or arrays for repeated parameters (label=a=b&label=c=d). */
  function withQuery(path, query) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(query || {})) {
      if (v === undefined || v === null || v === "") continue;
      if (Array.isArray(v)) for (const item of v) qs.append(k, String(item));
      else qs.append(k, String(v));
    }
    const text = qs.toString();
    return text ? `${path}?${text}` : path;
  }

  // API times are ISO 8601 in UTC with an offset. Date.parse reads a string without an offset as
  // local time and only promises millisecond fractions: cut the fraction and take no offset as UTC.
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

  const LABEL_KEY_RE = /^[a-zA-Z0-9][a-zA-Z0-9._/-]{0,62}$/;
  const LABEL_VALUE_MAX = 256;

  /** "k=v, k2=v2, gone-" -> {k: "v", k2: "v2", gone: null}; throws Error(message for people). */
  function parseLabelEdits(text, { allowRemove = true } = {}) {
    const out = {};
    const items = String(text || "").split(/[,\n]/).map((s) => s.trim()).filter(Boolean);
    for (const item of items) {
      const eq = item.indexOf("=");
      let key;
      let value;
      if (eq < 0) {
        if (!allowRemove || !item.endsWith("-")) {
          throw new Error(`"${shortId(item, 40)}" is not key=value${allowRemove ? " or key- (remove)" : ""}`);
        }
        key = item.slice(0, -1).trim();
        value = null;
      } else {
        key = item.slice(0, eq).trim();
        value = item.slice(eq + 1).trim();
      }
      if (!LABEL_KEY_RE.test(key)) {
        throw new Error(`label key "${shortId(key, 40)}" must start with a letter or digit and use only ` +
          "letters, digits, . _ / - (at most 63 characters)");
      }
      if (value !== null && (value.length > LABEL_VALUE_MAX || value.includes("\u0000"))) {
        throw new Error(`label value of "${key}" is too long or holds a NUL character`);
      }
      if (key in out) throw new Error(`label key "${key}" is given twice`);
      out[key] = value;
    }
    return out;
  }

  /** "2, 5, 10" -> {counts: [2, 5, 10]}; "1%, 10%, 100%" -> {percents: [1, 10, 100]}; throws. */
  function parseBatchPlan(text) {
    const items = String(text || "").split(/[,\s]+/).map((s) => s.trim()).filter(Boolean);
    if (!items.length) throw new Error("give the batches, e.g. 1, 5, 20 (devices) or 10%, 50%, 100%");
    const percent = items.every((s) => s.endsWith("%"));
    if (!percent && items.some((s) => s.endsWith("%"))) {
      throw new Error("batches are either all device counts or all percents (10%, 50%, 100%)");
    }
    const values = items.map((s) => (percent ? s.slice(0, -1) : s)).map((s) => {
      if (!/^\d+(\.\d+)?$/.test(s)) throw new Error(`"${shortId(s, 20)}" is not a number`);
      return Number(s);
    });
    if (values.length > 100) throw new Error("at most 100 batches");
    if (percent) {
      for (let i = 0; i < values.length; i += 1) {
        if (!(values[i] > 0 && values[i] <= 100)) throw new Error("each percent must be in (0, 100]");
        if (i && values[i] <= values[i - 1]) throw new Error("percents are cumulative: each larger than the last");
      }
      if (values[values.length - 1] !== 100) throw new Error("the last percent must be 100%");
      return { percents: values };
    }
    for (const v of values) {
      if (!Number.isInteger(v) || v < 1 || v > 1000000) throw new Error("device counts are whole numbers from 1");
    }
    return { counts: values };
  }

  /** Which operator actions the rollout state machine accepts in `state` (rollouts/states.py). */
  function rolloutActions(state) {
    const table = {
      draft: ["abort"],
      running: ["pause", "abort", "rollback"],
      waiting: ["pause", "abort", "rollback"],
      paused: ["resume", "abort", "rollback"],
      rolling_back: [],
      completed: ["rollback"],
      aborted: ["rollback"],
      rolled_back: [],
    };
    return table[state] || [];
  }

  function roleAllows(role, need) {
    return (ROLE_RANK[role] ?? -1) >= ROLE_RANK[need];
  }

  /** "Showing 51–100 of 2,000" for a page at `offset` of `count` rows out of `total`. */
  function pageText(offset, count, total) {
    if (!total || !count) return `Showing 0 of ${total || 0}`;
    return `Showing ${offset + 1}–${offset + count} of ${total}`;
  }

  /** "#/device/a%2Fb" -> {view: "device", arg: "a/b"}; unknown or empty -> fleet. */
  const VIEWS = ["fleet", "device", "releases", "models", "rollouts", "rollout", "federated", "run", "drift", "audit"];

  function parseRoute(hash) {
    const parts = String(hash || "").replace(/^#\/?/, "").split("/");
    const view = VIEWS.includes(parts[0]) ? parts[0] : "fleet";
    let arg = null;
    if (parts.length > 1 && parts[1] !== "") {
      try {
        arg = decodeURIComponent(parts.slice(1).join("/"));
      } catch (_) {
        arg = null;
      }
    }
    if ((view === "device" || view === "rollout" || view === "run") && !arg) {
      return { view: view === "device" ? "fleet" : view === "rollout" ? "rollouts" : "federated", arg: null };
    }
    return { view, arg };
  }

  function routeHash(view, arg) {
    return arg === undefined || arg === null ? `#/${view}` : `#/${view}/${encodeURIComponent(arg)}`;
  }

  /**
   * Incremental text/event-stream parser: feed() chunks, get complete events back
   * ({event, data}); comments (": ping") and unknown fields are skipped.
   */
  function sseParser() {
    let buffer = "";
    return {
      feed(chunk) {
        buffer += chunk.replace(/\r\n?/g, "\n");
        const out = [];
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let event = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (!line || line.startsWith(":")) continue;
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            let value = colon < 0 ? "" : line.slice(colon + 1);
            if (value.startsWith(" ")) value = value.slice(1);
            if (field === "event") event = value;
            else if (field === "data") data.push(value);
          }
          if (data.length) out.push({ event, data: data.join("\n") });
        }
        return out;
      },
    };
  }

  /** Reconnect delay after `failures` consecutive failures: 1, 2, 4, ... capped at 30 s. */
  function backoffMs(failures) {
    return Math.min(30000, 1000 * 2 ** Math.max(0, failures - 1));
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

  /**
   * Provenance of a registry version, in order: data -> federated round -> compiler report ->
   * signed bytes. Each step: {step, items: ["text", ...]} (only what the version carries).
   */
  function provenance(v) {
    const x = v || {};
    const ds = x.datasets || {};
    const lin = x.lineage || {};
    const data = ["calib", "eval", "golden"]
      .filter((k) => ds[`${k}_sha256`])
      .map((k) => `${k} ${shortId(ds[`${k}_sha256`], 16)}`);
    if (lin.data_sha256) data.push(`training data ${shortId(lin.data_sha256, 16)}`);
    const rounds = Array.isArray(lin.rounds) ? lin.rounds : [];
    const fed = lin.run_id
      ? [`run ${lin.run_id}`, `${rounds.length} round(s)`, lin.final_digest ? `final ${shortId(lin.final_digest, 16)}` : ""]
          .concat(rounds.length ? [`last round ${rounds[rounds.length - 1].round_id || rounds.length}`] : [])
          .filter(Boolean)
      : [];
    const arts = x.artifacts || {};
    const reports = Object.keys(arts).sort().map((p) => {
      const a = arts[p] || {};
      return `${p}: ${a.recipe || a.runtime || "?"}, acc ${fmtPct(a.accuracy)}, report ${shortId(a.report_sha256, 12)}`;
    });
    const rels = x.releases || {};
    const bytes = Object.keys(arts).sort().map((p) => {
      const rel = rels[p];
      const sha = shortId((arts[p] || {}).artifact_sha256, 16);
      return rel ? `${p}: ${sha} signed as release ${rel.release_seq}` : `${p}: ${sha} (not released)`;
    });
    return [
      { step: "Data", items: data },
      { step: "Federated round", items: fed },
      { step: "Compiler report", items: reports },
      { step: "Signed bytes", items: bytes },
    ];
  }

  /** A plain-text model card for a registry version (the fields the API carries). */
  function modelCard(v) {
    const x = v || {};
    const lines = [`Model card: ${x.name}@${x.version}`, ""];
    lines.push(`Status: ${x.status}${x.detail ? ` (${x.detail})` : ""}`);
    lines.push(`Source: ${x.source || "–"}; parent: ${x.parent_version ? `v${x.parent_version}` : "none"}`);
    lines.push(`Registered by ${x.created_by || "–"} at ${fmtUtc(x.created_at)}`);
    lines.push(`fp32 accuracy: ${fmtPct(x.accuracy)}`);
    const budgets = (x.compile_spec && x.compile_spec.budgets) || {};
    if (Object.keys(budgets).length) {
      lines.push(`Budgets: ${Object.keys(budgets).sort().map((k) => `${k}=${budgets[k]}`).join(", ")}`);
    }
    lines.push("", "Provenance:");
    for (const p of provenance(x)) lines.push(`  ${p.step}: ${p.items.length ? p.items.join("; ") : "–"}`);
    const lin = x.lineage || {};
    if (lin.run_id) {
      lines.push("", "Privacy:");
      lines.push(`  DP: epsilon ${fmtNum(lin.epsilon || 0)}, delta ${fmtNum(lin.delta || 0)}`);
      lines.push(`  secure aggregation: ${lin.secure_aggregation ? "yes" : "no"}`);
      lines.push(`  participants (max per round): ${fmtNum(lin.participants_max)}`);
    }
    lines.push("", "Per profile:");
    const arts = x.artifacts || {};
    if (!Object.keys(arts).length) lines.push("  not compiled yet");
    for (const p of Object.keys(arts).sort()) {
      const a = arts[p] || {};
      lines.push(`  ${p}: ${a.recipe || "?"} ${a.filename || ""} ${fmtBytes(a.size_bytes)}, ` +
        `accuracy ${fmtPct(a.accuracy)}, agreement ${fmtPct(a.agreement)}`);
    }
    return lines.join("\n");
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

  /** Per-round series of a federated run, as columns over server_round (null = no value). */
  function roundSeries(rounds) {
    const rs = rounds || [];
    const out = {
      rounds: rs.map((r) => r.server_round),
      sampled: rs.map((r) => r.sampled),
      results: rs.map((r) => r.results),
      failures: rs.map((r) => r.failures),
      epsilon: rs.map((r) => r.epsilon),
      metrics: {},
    };
    rs.forEach((r, i) => {
      for (const [key, value] of Object.entries(r.metrics || {})) {
        if (typeof value !== "number" || !Number.isFinite(value)) continue;
        if (!out.metrics[key]) out.metrics[key] = rs.map(() => null);
        out.metrics[key][i] = value;
      }
    });
    return out;
  }

  /** The accuracy metric of a run's rounds: the first metric key naming accuracy, else null. */
  function accuracyKey(metrics) {
    const keys = Object.keys(metrics || {}).sort();
    return keys.find((k) => k === "server_accuracy") || keys.find((k) => /acc/i.test(k)) || null;
  }

  /**
   * ε spent per device: a participant (a key of a round's anomaly scores) has spent the run's
   * cumulative ε up to the last round it took part in. [{device, epsilon}] sorted by device.
   */
  function epsilonPerDevice(rounds) {
    const spent = new Map();
    for (const r of rounds || []) {
      for (const device of Object.keys(r.anomaly_scores || {})) spent.set(device, r.epsilon || 0);
    }
    return Array.from(spent.keys()).sort().map((device) => ({ device, epsilon: spent.get(device) }));
  }

  /** Gate results (oldest first) grouped per gate: {gate: [{look, batch, ...}]} in look order. */
  function gatesByName(results) {
    const out = {};
    for (const g of results || []) {
      if (!out[g.gate]) out[g.gate] = [];
      out[g.gate].push(g);
    }
    return out;
  }

  // ------------------------------------------------------------------ audit / run / rollout text

  const AUDIT_SHOWN = 200;

  function actorText(actor) {
    const a = actor || {};
    if (a.kind === "operator") return `operator ${a.name || a.id}${a.role ? ` (${a.role})` : ""}`;
    if (a.kind === "system") return `system ${a.name || a.id}`;
    return `${a.kind || "unknown"}${a.name ? `: ${a.name}` : ""}`;
  }

  function detailsText(details, max = 80) {
    return Object.keys(details || {})
      .sort()
      .map((k) => {
        const v = details[k];
        const text = typeof v === "string" ? v : JSON.stringify(v);
        return shortId(`${k}=${text}`, max);
      });
  }

  /** The chain status line for an /audit/verify report: {ok, text}. */
  function chainStatus(report) {
    if (!report) return { ok: false, text: "not verified yet" };
    if (report.ok) {
      const signed = report.signatures
        ? `${report.signatures} head signature(s), last signed seq ${report.last_signed_seq}`
        : "no head signature yet";
      return { ok: true, text: `Chain verified: ${report.entries} entries up to seq ${report.head_seq}; ${signed}` };
    }
    const where = report.broken_seq === null || report.broken_seq === undefined ? "" : ` at ${report.broken_seq}`;
    return { ok: false, text: `Chain BROKEN${where}: ${report.reason || "no reason given"}` };
  }

  function auditAfterSeq(headSeq, shown = AUDIT_SHOWN) {
    return Math.max(0, (Number.isInteger(headSeq) ? headSeq : 0) - shown);
  }

  function runOutcome(run) {
    const r = run || {};
    if (r.status === "cancelled") return `cancelled by ${r.cancelled_by || "unknown"}${r.detail ? ` — ${r.detail}` : ""}`;
    if (r.status === "failed") return `failed: ${r.detail || "(no reason recorded)"}`;
    return r.detail || "";
  }

  function countsText(counts) {
    return Object.keys(counts || {})
      .sort()
      .filter((k) => counts[k] > 0)
      .map((k) => `${k} ${counts[k]}`)
      .join(" · ");
  }

  /** "Batch 2 of 4" (1-based), "Batch 0 of 4" before the first batch is assigned. */
  function batchText(r) {
    const x = r || {};
    const n = x.batch >= 0 ? x.batch + 1 : 0;
    return `Batch ${n} of ${x.batches ?? 0}`;
  }

  function rolloutReleases(r) {
    return ((r && r.releases) || []).map((rel) => {
      const seq = rel.release_seq ?? rel.seq;
      const profiles = Array.isArray(rel.profiles) ? rel.profiles.join(",") : rel.profile || "";
      const model = rel.model_name ? ` ${rel.model_name}@${rel.model_version}` : "";
      return `${profiles ? `${profiles} → ` : ""}r${seq ?? "?"}${model}`;
    });
  }

  /** Text for an API error body: `detail` (a string), else a short generic text; never a trace. */
  function errorText(status, body, fallback) {
    let detail = body && typeof body.detail === "string" ? body.detail : "";
    if (!detail && body && Array.isArray(body.detail)) {
      detail = body.detail.map((e) => (e && e.msg ? `${(e.loc || []).slice(1).join(".")}: ${e.msg}` : "")).join("; ");
    }
    if (!detail) detail = fallback || "the server gave no reason";
    if (/Traceback \(most recent call last\)|^\s+at .+:\d+:\d+/m.test(detail)) detail = "internal error (details in the server log)";
    return shortId(detail, 500);
  }

  const helpers = {
    ENDPOINTS, fillPath, withQuery, toMs, fmtAgo, fmtUtc, fmtNum, fmtPct, fmtBytes, shortId, labelsText,
    servingModel, parseLabelEdits, parseBatchPlan, rolloutActions, roleAllows, pageText, parseRoute,
    routeHash, sseParser, backoffMs, lineageChain, provenance, modelCard, releasedTo, profileAccuracy,
    roundSeries, accuracyKey, epsilonPerDevice, gatesByName, actorText, detailsText, chainStatus,
    auditAfterSeq, runOutcome, countsText, batchText, rolloutReleases, errorText,
  };
  root.EdgeloopConsole = Object.freeze(helpers);
  if (!root.document) return; // loaded for tests: no DOM, no app

  // ------------------------------------------------------------------ DOM building (text only)

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

  function $(id) {
    return document.getElementById(id);
  }

  // ------------------------------------------------------------------ API client

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  const session = { token: null, me: null };

  /** The one place a request leaves the page: bearer header, no cookies, no cache. */
  async function send(name, params, query, body, accept, signal) {
    const [method, template] = ENDPOINTS[name];
    const url = withQuery(fillPath(template, params), query);
    const headers = { Authorization: `Bearer ${session.token}`, Accept: accept };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let resp;
    try {
      resp = await fetch(url, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        credentials: "omit",
        signal,
      });
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw new ApiError(0, "the server is unreachable");
    }
    if (!resp.ok) {
      let parsed = null;
      try {
        parsed = await resp.json();
      } catch (_) {
        /* not JSON */
      }
      throw new ApiError(resp.status, errorText(resp.status, parsed, resp.statusText));
    }
    return resp;
  }

  async function api(name, params = {}, query = {}, body = undefined) {
    const resp = await send(name, params, query, body, "application/json");
    if (resp.status === 204) return null;
    return resp.json();
  }

  /** Open the text/event-stream `name`; returns the Response (its body is read by the caller). */
  function stream(name, signal) {
    return send(name, {}, {}, undefined, "text/event-stream", signal);
  }

  root.EdgeloopUI = { el, $, api, stream, ApiError, session, TOKEN_KEY };
})(typeof window !== "undefined" ? window : globalThis);

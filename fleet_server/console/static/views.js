/*
 * edgeloop operator console, part 3 of 4: the views (one per hash route) and the actions on them.
 *
 * A view is {render(arg, ctx) -> Promise<Node[]>, onEvent?(kind, data, ctx)}; app.js owns routing,
 * the session, the event stream and the alert region. Buttons for actions a role may not use are
 * not rendered at all (`ctx.can("operator")`); the server refuses them anyway. Every value from the
 * server is written as text (`el`), every action reports the server's `detail` on failure.
 */
(function (root) {
  "use strict";

  const { el, api, ApiError } = root.EdgeloopUI;
  const C = root.EdgeloopConsole;
  const charts = root.EdgeloopCharts;
  let uid = 0;

  // ------------------------------------------------------------------ small builders

  function muted(text) {
    return el("p", { class: "muted" }, text);
  }

  function when(value) {
    return el("time", { title: C.fmtUtc(value), datetime: C.fmtUtc(value) }, C.fmtAgo(value, Date.now()));
  }

  function chips(items, cls = "chip") {
    return items.map((t) => el("span", { class: cls }, t));
  }

  function pill(text, cls) {
    return el("span", { class: `pill ${cls || ""}` }, text);
  }

  function link(text, hash, attrs = {}) {
    return el("a", { href: hash, ...attrs }, text);
  }

  function field(label, input, hint) {
    uid += 1;
    const id = input.id || `f${uid}`;
    input.id = id;
    const hintId = hint ? `${id}-hint` : null;
    if (hintId) input.setAttribute("aria-describedby", hintId);
    return el("div", { class: "field" }, el("label", { for: id }, label), input,
      hint ? el("small", { id: hintId, class: "muted" }, hint) : null);
  }

  function input(attrs) {
    return el("input", { type: "text", spellcheck: "false", autocomplete: "off", ...attrs });
  }

  function select(options, value, attrs = {}) {
    return el("select", attrs, options.map(([v, text]) => el("option", { value: v, selected: v === value }, text)));
  }

  function button(text, attrs = {}) {
    return el("button", { type: "button", ...attrs }, text);
  }

  /**
   * columns: [{title, value(row) -> string|Node, cls?, sort?}]; opts: {caption, empty, sort, onSort}.
   * A sortable column's header is a button; aria-sort tells the current order.
   */
  function table(columns, rows, opts = {}) {
    const caption = opts.caption ? el("caption", { class: opts.captionHidden ? "sr-only" : "" }, opts.caption) : null;
    const head = el("tr", null, columns.map((c) => {
      const thCls = c.cls === "num" ? "num" : null;
      if (!c.sort || !opts.onSort) return el("th", { class: thCls, scope: "col" }, c.title);
      const cur = opts.sort || "";
      const dir = cur === c.sort ? "ascending" : cur === `-${c.sort}` ? "descending" : "none";
      const b = button(`${c.title}${dir === "ascending" ? " ▲" : dir === "descending" ? " ▼" : ""}`,
        { class: "sort", "aria-label": `Sort by ${c.title}` });
      b.addEventListener("click", () => opts.onSort(dir === "ascending" ? `-${c.sort}` : c.sort));
      return el("th", { class: thCls, scope: "col", "aria-sort": dir }, b);
    }));
    const body = rows.map((row) => el("tr", null, columns.map((c) => el("td", { class: c.cls }, c.value(row)))));
    const tbl = el("table", opts.label ? { "aria-label": opts.label } : null, caption, el("thead", null, head),
      el("tbody", null, body));
    return [el("div", { class: "table-wrap" }, tbl), rows.length ? null : muted(opts.empty ?? "Nothing yet.")];
  }

  /** Run an action from `btn`: busy while it runs; success text in the status region, errors in the alert. */
  async function act(ctx, btn, work, done) {
    if (btn) btn.disabled = true;
    try {
      const result = await work();
      if (done) ctx.notify(typeof done === "function" ? done(result) : done);
      return result;
    } catch (err) {
      ctx.fail(err);
      return undefined;
    } finally {
      if (btn && btn.isConnected) btn.disabled = false;
    }
  }

  /** A modal confirmation (<dialog>): resolves to the reason typed (string) or null when cancelled. */
  function confirmDialog(title, text, confirmLabel, { reason = true } = {}) {
    return new Promise((resolve) => {
      const why = input({ maxlength: 256 });
      const ok = el("button", { type: "submit", class: "danger" }, confirmLabel);
      const cancel = button("Cancel");
      const form = el("form", { method: "dialog" },
        el("h2", null, title), el("p", null, text), reason ? field("Reason", why, "recorded in the audit log") : null,
        el("div", { class: "actions" }, ok, cancel));
      const dlg = el("dialog", { "aria-label": title }, form);
      let answer = null;
      form.addEventListener("submit", (ev) => {
        ev.preventDefault();
        answer = why.value.trim();
        dlg.close();
      });
      cancel.addEventListener("click", () => dlg.close());
      dlg.addEventListener("close", () => {
        dlg.remove();
        resolve(answer);
      });
      document.body.append(dlg);
      dlg.showModal();
      (reason ? why : ok).focus();
    });
  }

  // ------------------------------------------------------------------ fleet

  const fleetState = {
    q: "", profile: "", label: "", online: "", model: "", health: "", sort: "id", offset: 0, limit: 50,
    fallback: false,
  };

  async function fleetPage(s) {
    const labels = s.label ? s.label.split(",").map((x) => x.trim()).filter(Boolean) : [];
    for (const l of labels) {
      if (!/^[a-zA-Z0-9][a-zA-Z0-9._/-]{0,62}=[^\u0000]*$/.test(l)) {
        throw new ApiError(0, `label filter "${C.shortId(l, 40)}" must be key=value (several: a=b, c=d)`);
      }
    }
    const query = {
      q: s.q, profile: s.profile, label: labels, online: s.online, model: s.model, health: s.health,
      sort: s.sort, limit: s.limit, offset: s.offset,
    };
    if (!s.fallback) {
      try {
        return await api("fleet_devices", {}, query);
      } catch (err) {
        if (err.status !== 404) throw err;
        s.fallback = true; // a server without the fleet view API: page over /devices in the browser
      }
    }
    const all = await api("devices", {}, { label: labels, limit: 5000 });
    const q = s.q.toLowerCase();
    let items = all.map((d) => ({ ...d, model: C.servingModel(d.observed) || null, health: (d.observed && d.observed.health) || "" }))
      .filter((d) => !q || d.id.toLowerCase().includes(q))
      .filter((d) => !s.profile || d.profile === s.profile)
      .filter((d) => !s.online || String(Boolean(d.online)) === s.online)
      .filter((d) => !s.model || d.model === s.model)
      .filter((d) => !s.health || d.health === s.health);
    const key = s.sort.replace(/^-/, "");
    const sign = s.sort.startsWith("-") ? -1 : 1;
    items = items.sort((a, b) => sign * String(a[key] ?? "").localeCompare(String(b[key] ?? "")));
    return { total: items.length, items: items.slice(s.offset, s.offset + s.limit) };
  }

  async function fleetSummary() {
    try {
      return await api("fleet_summary");
    } catch (err) {
      if (err.status !== 404) throw err;
    }
    const all = await api("devices", {}, { limit: 5000 });
    const count = (f) => all.reduce((acc, d) => ((acc[f(d)] = (acc[f(d)] || 0) + 1), acc), {});
    const online = all.filter((d) => d.online).length;
    const revoked = all.filter((d) => d.status === "revoked").length;
    return {
      total: all.length, online, offline: all.length - online - revoked, revoked,
      by_transport: count((d) => d.transport || "unknown"), by_profile: count((d) => d.profile || "–"),
      by_model: count((d) => C.servingModel(d.observed) || "none"),
      by_health: count((d) => (d.observed && d.observed.health) || "unknown"), by_label: [],
    };
  }

  function breakdown(title, counts, onPick) {
    const keys = Object.keys(counts || {}).sort((a, b) => counts[b] - counts[a] || a.localeCompare(b)).slice(0, 12);
    if (!keys.length) return null;
    return el("div", { class: "breakdown" }, el("h3", null, title), el("ul", { class: "chips" }, keys.map((k) => {
      const b = button(`${k} ${counts[k]}`, { class: "chip link", title: `filter: ${title} ${k}` });
      if (onPick) b.addEventListener("click", () => onPick(k));
      else b.disabled = true;
      return el("li", null, b);
    })));
  }

  async function renderFleet(_, ctx) {
    const s = fleetState;
    const [summary, page] = await Promise.all([fleetSummary(), fleetPage(s)]);
    const refilter = (changes) => {
      Object.assign(s, changes, { offset: 0, draft: {} });
      ctx.rerender();
    };
    // What the operator typed but has not applied yet survives a re-render (a live update or a
    // slower render that started before the typing), instead of being reset to the applied filter.
    const draft = s.draft || (s.draft = {});
    const val = (k) => (k in draft ? draft[k] : s[k]);
    const labelCounts = {};
    for (const l of summary.by_label || []) labelCounts[`${l.key}=${l.value}`] = l.count;
    const summaryBox = el("section", { class: "summary", "aria-label": "Fleet summary", id: "fleet-summary" },
      el("p", { class: "big" },
        el("span", { class: "stat ok" }, `${summary.online} online`), " · ",
        el("span", { class: "stat" }, `${summary.offline} offline`), " · ",
        el("span", { class: "stat bad" }, `${summary.revoked} revoked`), " · ",
        el("span", { class: "stat" }, `${summary.total} total`)),
      el("div", { class: "breakdowns" },
        breakdown("Profile", summary.by_profile, (k) => refilter({ profile: k })),
        breakdown("Model", summary.by_model, (k) => refilter({ model: k === "none" ? "" : k })),
        breakdown("Health", summary.by_health, (k) => refilter({ health: k })),
        breakdown("Transport", summary.by_transport, null),
        breakdown("Label", labelCounts, (k) => refilter({ label: k }))));

    const fSearch = input({ value: val("q"), maxlength: 128, placeholder: "device id" });
    const fProfile = input({ value: val("profile"), maxlength: 64 });
    const fLabel = input({ value: val("label"), maxlength: 300, placeholder: "site=a, env=prod" });
    const fOnline = select([["", "any"], ["true", "online"], ["false", "offline"]], s.online);
    const fModel = input({ value: val("model"), maxlength: 140, placeholder: "digits@3" });
    for (const [k, node] of [["q", fSearch], ["profile", fProfile], ["label", fLabel], ["model", fModel]]) {
      node.addEventListener("input", () => { draft[k] = node.value; });
    }
    const fHealth = select([["", "any"], ["healthy", "healthy"], ["stale", "stale"], ["degraded", "degraded"], ["revoked", "revoked"]], s.health);
    const filters = el("form", { class: "filters", "aria-label": "Device filters" },
      field("Search", fSearch), field("Profile", fProfile), field("Label", fLabel), field("Online", fOnline),
      field("Model", fModel), field("Health", fHealth),
      el("div", { class: "actions" }, el("button", { type: "submit" }, "Apply filters"), button("Clear", { class: "secondary" })));
    filters.addEventListener("submit", (ev) => {
      ev.preventDefault();
      refilter({ q: fSearch.value.trim(), profile: fProfile.value.trim(), label: fLabel.value.trim(),
        online: fOnline.value, model: fModel.value.trim(), health: fHealth.value });
    });
    for (const sel of [fOnline, fHealth]) sel.addEventListener("change", () => filters.requestSubmit());
    filters.querySelector(".secondary").addEventListener("click", () => refilter({ q: "", profile: "", label: "", online: "", model: "", health: "" }));

    const rows = page.items || [];
    const grid = table(
      [
        { title: "Device", value: (d) => link(d.id, C.routeHash("device", d.id), { class: "mono" }), sort: "id" },
        { title: "Profile", value: (d) => d.profile || "–", sort: "profile" },
        { title: "Online", value: (d) => pill(d.online ? "online" : "offline", d.online ? "ok" : "off") },
        { title: "Health", value: (d) => pill(d.health || "–", `health-${d.health}`) },
        { title: "Model", value: (d) => d.model || "–", cls: "mono", sort: "model" },
        { title: "Transport", value: (d) => d.transport || "–" },
        { title: "Labels", value: (d) => chips(C.labelsText(d.labels)) },
        { title: "Last seen", value: (d) => when(d.last_seen_at), sort: "last_seen_at" },
      ],
      rows,
      { caption: "Devices", empty: "No device matches these filters.", sort: s.sort,
        onSort: (sort) => { Object.assign(s, { sort, offset: 0 }); ctx.rerender(); } }
    );
    const prev = button("Previous page", { disabled: s.offset <= 0 });
    const next = button("Next page", { disabled: s.offset + rows.length >= page.total });
    prev.addEventListener("click", () => { s.offset = Math.max(0, s.offset - s.limit); ctx.rerender(); });
    next.addEventListener("click", () => { s.offset += s.limit; ctx.rerender(); });
    const size = select([["25", "25"], ["50", "50"], ["100", "100"], ["250", "250"]], String(s.limit));
    size.addEventListener("change", () => { Object.assign(s, { limit: Number(size.value), offset: 0 }); ctx.rerender(); });
    const pager = el("div", { class: "pager" }, prev,
      el("span", { role: "status", class: "page-status" }, C.pageText(s.offset, rows.length, page.total)),
      next, field("Rows per page", size));
    return [
      el("h2", null, "Fleet"),
      summaryBox,
      ctx.can("operator") ? bootstrapPanel(ctx) : null,
      filters,
      s.fallback ? muted("This server has no /fleet/devices API: filtering and paging happen in the browser (up to 5,000 devices).") : null,
      grid,
      pager,
    ];
  }

  function bootstrapPanel(ctx) {
    const labels = input({ maxlength: 400, placeholder: "site=a, env=prod" });
    const profile = input({ maxlength: 64, placeholder: "any profile" });
    const ttl = el("input", { type: "number", min: 1, max: 720, step: 1, value: 24 });
    const out = el("input", { readonly: true, class: "mono secret", value: "", spellcheck: "false" });
    const outField = field("New bootstrap token", out, "shown once: copy it now; only its hash is stored");
    outField.hidden = true;
    const create = button("Create bootstrap token");
    create.addEventListener("click", () => act(ctx, create, async () => {
      let spec;
      try {
        const hours = Number(ttl.value);
        if (!Number.isInteger(hours) || hours < 1 || hours > 720) throw new Error("valid for: 1 to 720 hours");
        spec = { labels: C.parseLabelEdits(labels.value, { allowRemove: false }), profile: profile.value.trim(), ttl_s: hours * 3600 };
      } catch (err) {
        throw new ApiError(0, err.message);
      }
      const made = await api("bootstrap_create", {}, {}, spec);
      out.value = made.token;
      outField.hidden = false;
      out.focus();
      out.select();
      return made;
    }, (made) => `Bootstrap token ${made.id} created; it expires ${C.fmtUtc(made.expires_at)}.`));
    return el("details", { class: "panel-inline", open: true }, el("summary", null, "Enrol devices"),
      el("div", { class: "row" }, field("Enrol with tags", labels, "device labels as k=v, k2=v2"), field("Enrol as device type", profile, "the only profile it may claim"),
        field("Valid for (hours)", ttl), el("div", { class: "actions" }, create)),
      outField);
  }

  // ------------------------------------------------------------------ device

  async function renderDevice(id, ctx) {
    const d = await api("device", { device_id: id });
    const [series, episodes, sketch] = await Promise.all([
      api("device_series", { device_id: id }, { window_s: 3600, points: 120 }).catch((err) => (err.status === 404 ? null : Promise.reject(err))),
      api("episodes", {}, { device_id: id, limit: 50 }),
      api("device_sketch", { device_id: id }).catch((err) => (err.status === 404 ? null : Promise.reject(err))),
    ]);
    const obs = d.observed || {};
    const facts = [
      ["Profile", d.profile || "–"], ["Status", d.status], ["Online", d.online ? "online" : "offline"],
      ["Transport", d.transport || "–"], ["Agent", d.agent_version || "–"], ["Last seen", when(d.last_seen_at)],
      ["Enrolled", C.fmtUtc(d.enrolled_at)], ["Certificate until", C.fmtUtc(d.cert_not_after)],
      ["Health", obs.health || "–"], ["Desired generation", String(d.desired_generation ?? "–")],
      ["Telemetry dropped", String(d.telemetry_dropped_total ?? 0)],
    ];
    if (d.revoked_at) facts.push(["Revoked", C.fmtUtc(d.revoked_at)]);
    const slots = Array.isArray(obs.slots) ? obs.slots : [];
    const parts = [
      el("h2", null, `Device ${d.id}`),
      el("p", null, link("← Fleet", "#/fleet")),
      el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", null, k), el("dd", null, v)])),
      el("h3", null, "Labels"),
      el("p", null, chips(C.labelsText(d.labels)).length ? chips(C.labelsText(d.labels)) : "none"),
      ctx.can("operator") ? labelEditor(d, ctx) : null,
      el("h3", null, "Slots"),
      table(
        [
          { title: "Slot", value: (s) => s.slot || "–" },
          { title: "Model", value: (s) => (s.model_name ? `${s.model_name}@${s.model_version || "?"}` : "–"), cls: "mono" },
          { title: "State", value: (s) => s.state || s.status || "–" },
          { title: "SHA-256", value: (s) => el("span", { title: s.sha256 || "" }, C.shortId(s.sha256 || "–")), cls: "mono" },
        ],
        slots,
        { caption: "Slots", captionHidden: true, empty: "The device reports no model slot." }
      ),
      el("h3", null, "Telemetry (last hour)"),
      series === null ? muted("This server has no telemetry series API yet.") : null,
      el("div", { class: "charts" }, deviceCharts(series || { t: [] })),
      el("h3", null, "Drift"),
      driftForDevice(episodes, sketch),
    ];
    if (ctx.can("operator") && d.status !== "revoked") {
      const revoke = button("Revoke device", { class: "danger" });
      revoke.addEventListener("click", async () => {
        const reason = await confirmDialog(`Revoke device ${d.id}?`,
          "Its certificate is revoked and its sessions are closed. It must enrol again to come back.", "Confirm revoke");
        if (reason === null) return;
        await act(ctx, revoke, () => api("device_revoke", { device_id: d.id }, {}, { reason }), `Device ${d.id} revoked.`);
        ctx.rerender();
      });
      parts.push(el("h3", null, "Danger zone"), el("p", null, revoke));
    }
    return parts;
  }

  function deviceCharts(s) {
    const t = s.t || [];
    return [
      charts.lines("Latency", t, [
        { name: "p50 ms", values: s.latency_p50_ms || [] },
        { name: "p95 ms", values: s.latency_p95_ms || [], dash: [6, 4] },
      ], { yLabel: "ms" }),
      charts.lines("Throughput", t, [{ name: "inferences/s", values: s.throughput_per_s || [] }], { yLabel: "per s" }),
      charts.lines("Errors", t, [{ name: "errors", values: s.errors || [] }], { yLabel: "count" }),
      charts.lines("Outbox", t, [{ name: "queued records", values: s.outbox || [] }], { yLabel: "records" }),
    ];
  }

  function labelEditor(d, ctx) {
    const box = input({ maxlength: 2000, placeholder: "site=plant-3, env=prod, old-" });
    const save = el("button", { type: "submit" }, "Save labels");
    const form = el("form", { class: "inline-form", "aria-label": "Edit labels" },
      field("Labels", box, "k=v sets, key- removes; separate with commas"), save);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      let changes;
      try {
        changes = C.parseLabelEdits(box.value);
        if (!Object.keys(changes).length) throw new Error("type at least one k=v or key-");
      } catch (err) {
        ctx.fail(new ApiError(0, err.message));
        box.setAttribute("aria-invalid", "true");
        box.focus();
        return;
      }
      box.removeAttribute("aria-invalid");
      const done = await act(ctx, save, () => api("device_labels", { device_id: d.id }, {}, { labels: changes }),
        (x) => `Labels of ${x.id}: ${C.labelsText(x.labels).join(", ") || "none"}.`);
      if (done) ctx.rerender();
    });
    return form;
  }

  /** Episodes of one device, each with its per-feature evidence plotted against the alarm threshold. */
  function driftForDevice(episodes, sketch) {
    const parts = [];
    if (sketch && sketch.features && sketch.features.length) {
      const feats = sketch.features.slice().sort((a, b) => b.psi_vs_reference - a.psi_vs_reference).slice(0, 24);
      parts.push(charts.bars("Drift against reference", feats.map((f) => ({ label: f.feature, value: f.psi_vs_reference })), {
        caption: `PSI per feature, this device vs the reference (model ${sketch.model_version || "?"}); dashed: the cohort vs the reference`,
        valueName: "device PSI", yLabel: "PSI",
        extra: [{ name: "cohort PSI", values: feats.map((f) => f.cohort_psi_vs_reference) }],
      }));
    }
    if (!episodes.length) return parts.concat(muted("No drift episode reported by this device."));
    for (const e of episodes.slice(0, 5)) parts.push(episodeBlock(e));
    return parts;
  }

  function episodeBlock(e) {
    const ev = (e.evidence || []).slice().sort((a, b) => (b.statistic / (b.threshold || 1)) - (a.statistic / (a.threshold || 1)));
    return el("div", { class: "block episode" },
      el("h4", null, `Episode ${e.episode_id} · ${e.stream} · `, pill(e.state, e.state === "open" ? "warn" : "off"),
        ` · severity ${C.fmtNum(e.severity)}`),
      el("p", { class: "muted" }, `model ${e.model_name || "?"}@${e.model_version || "?"} · opened ${C.fmtUtc(e.opened_ms)}` +
        `${e.closed_ms > 0 ? ` · closed ${C.fmtUtc(e.closed_ms)}` : ""} · ${e.signature || ""}`),
      charts.bars(`Evidence of episode ${e.episode_id}`, ev.map((x) => ({ label: x.feature || x.channel, value: x.statistic })), {
        caption: "Statistic per feature (bars) against its alarm threshold from the reference (dashed)",
        valueName: "statistic", yLabel: "statistic",
        extra: [{ name: "threshold", values: ev.map((x) => x.threshold) }],
        empty: "No per-feature evidence in this episode.",
      }));
  }

  // ------------------------------------------------------------------ releases

  async function renderReleases(_, ctx) {
    const releases = await api("releases");
    const form = el("div", { id: "rollout-form-slot" });
    const grid = table(
      [
        { title: "Seq", value: (r) => String(r.seq), cls: "num" },
        { title: "Model", value: (r) => `${r.model_name}@${r.model_version}`, cls: "mono" },
        { title: "Target", value: (r) => r.target_path, cls: "mono" },
        { title: "SHA-256", value: (r) => el("span", { title: r.sha256 }, C.shortId(r.sha256)), cls: "mono" },
        { title: "Size", value: (r) => C.fmtBytes(r.length), cls: "num" },
        { title: "Drift ref", value: (r) => (r.drift_reference_sha256 ? "signed" : "–") },
        { title: "Notes", value: (r) => r.notes || r.description || "" },
        { title: "By", value: (r) => r.created_by || "–" },
        { title: "Created", value: (r) => when(r.created_at) },
        { title: "Actions", value: (r) => {
          const show = button("Deployments", { class: "secondary", "aria-label": `Deployments of release ${r.seq}` });
          show.addEventListener("click", () => { releasesState.selected = r.seq; ctx.rerender(); });
          if (!ctx.can("operator")) return show;
          const b = button("Create rollout", { "aria-label": `Create rollout of release ${r.seq}` });
          b.addEventListener("click", () => form.replaceChildren(rolloutForm(r, ctx)));
          return [b, " ", show];
        } },
      ],
      releases,
      { caption: "Releases", empty: "No releases published yet." }
    );
    const lookup = input({ maxlength: 64, placeholder: "dep_…" });
    const lookupForm = el("form", { class: "inline-form", "aria-label": "Find a deployment" },
      field("Deployment id", lookup), el("button", { type: "submit" }, "Show status"));
    lookupForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const id = lookup.value.trim();
      if (!/^[A-Za-z0-9_-]{1,64}$/.test(id)) {
        ctx.fail(new ApiError(0, "a deployment id is letters, digits, _ and - (e.g. dep_3f2a…)"));
        return;
      }
      releasesState.deployment = id;
      ctx.rerender();
    });
    const detail = [];
    if (releasesState.selected !== null) {
      const rows = await api("release_deployments", { seq: releasesState.selected });
      detail.push(el("h3", null, `Release ${releasesState.selected}: devices`), deploymentTable(rows, "This release is not deployed to any device yet."));
    }
    if (releasesState.deployment) {
      const rows = await api("deployment", { deployment_id: releasesState.deployment });
      detail.push(el("h3", null, `Deployment ${releasesState.deployment}`), deploymentTable(rows, "No device in this deployment."));
    }
    return [el("h2", null, "Releases"), grid, form, lookupForm, detail];
  }

  const releasesState = { selected: null, deployment: null };
  const PROBLEM_STATES = new Set(["failed", "refused", "rolled_back"]);

  function deploymentTable(rows, empty) {
    return table(
      [
        { title: "Device", value: (r) => link(r.device_id, C.routeHash("device", r.device_id), { class: "mono" }) },
        { title: "Deployment", value: (r) => r.deployment_id, cls: "mono" },
        { title: "Release", value: (r) => String(r.release_seq), cls: "num" },
        { title: "State", value: (r) => pill(r.state, `state-${r.state}${PROBLEM_STATES.has(r.state) ? " bad" : ""}`) },
        { title: "Reason / detail", value: (r) => (PROBLEM_STATES.has(r.state) ? el("strong", null, r.detail || "(no reason given)") : r.detail || "") },
        { title: "Updated", value: (r) => when(r.updated_at) },
      ],
      rows,
      { caption: "Device deployment states", captionHidden: true, empty }
    );
  }

  function rolloutForm(rel, ctx) {
    const name = input({ maxlength: 128, value: `${rel.model_name}@${rel.model_version} r${rel.seq}` });
    const batches = input({ value: "1, 5, 20", maxlength: 400 });
    const selector = input({ maxlength: 400, placeholder: "site=a, env=prod" });
    const breach = select([["pause", "pause (an operator decides)"], ["rollback", "roll back at once"]], "pause");
    const start = el("button", { type: "submit" }, "Start rollout");
    const cancel = button("Cancel", { class: "secondary" });
    const form = el("form", { class: "panel-inline", "aria-label": `New rollout of release ${rel.seq}` },
      el("h3", null, `New rollout of release ${rel.seq} (${rel.model_name}@${rel.model_version})`),
      el("div", { class: "row" },
        field("Name", name),
        field("Batches (devices per batch)", batches, "device counts (1, 5, 20) or cumulative percents (10%, 50%, 100%)"),
        field("Label selector", selector, "only devices with these labels; empty: every device of the release's profile"),
        field("On breach", breach)),
      el("div", { class: "actions" }, start, cancel));
    cancel.addEventListener("click", () => form.remove());
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      let spec;
      try {
        spec = {
          name: name.value.trim(),
          releases: [rel.seq],
          batches: C.parseBatchPlan(batches.value),
          selector: { labels: C.parseLabelEdits(selector.value, { allowRemove: false }) },
          on_breach: breach.value,
          start: true,
        };
      } catch (err) {
        ctx.fail(new ApiError(0, err.message));
        return;
      }
      const made = await act(ctx, start, () => api("rollout_create", {}, {}, spec), (r) => `Rollout ${r.id} created: ${r.state}.`);
      if (made) ctx.navigate(C.routeHash("rollout", made.id));
    });
    queueMicrotask(() => batches.focus());
    return form;
  }

  // ------------------------------------------------------------------ models (registry)

  const modelsState = { selected: null };

  async function renderModels(_, ctx) {
    const versions = await api("models");
    const key = (v) => `${v.name}@${v.version}`;
    const grid = table(
      [
        { title: "Version", value: (v) => {
          const b = button(key(v), { class: "linkish mono", "aria-label": `Show ${key(v)}` });
          b.addEventListener("click", () => { modelsState.selected = key(v); ctx.rerender(); });
          return b;
        } },
        { title: "Parent", value: (v) => (v.parent_version ? `v${v.parent_version}` : "–") },
        { title: "Source", value: (v) => v.source },
        { title: "Status", value: (v) => pill(v.status, `model-${v.status}`) },
        { title: "Accuracy (fp32)", value: (v) => C.fmtPct(v.accuracy), cls: "num" },
        { title: "Per profile", value: (v) => chips(C.profileAccuracy(v).map((p) => `${p.profile} ${C.fmtPct(p.accuracy)}`)) },
        { title: "Released to", value: (v) => String(C.releasedTo(v)), cls: "num" },
        { title: "Created", value: (v) => when(v.created_at) },
        ctx.can("operator") ? { title: "Actions", value: (v) => {
          if (!["awaiting_approval", "compiled"].includes(v.status)) return "";
          const b = button("Approve", { "aria-label": `Approve ${key(v)}` });
          b.addEventListener("click", async () => {
            const ok = await act(ctx, b, () => api("model_approve", { name: v.name, version: v.version }, {}, {}),
              (x) => `${key(x)} approved: ${x.status}.`);
            if (ok) ctx.rerender();
          });
          return b;
        } } : null,
      ].filter(Boolean),
      versions,
      { caption: "Model versions", empty: "No model registered yet." }
    );
    const chosen = versions.find((v) => key(v) === modelsState.selected) || versions[0];
    return [el("h2", null, "Models"), grid, chosen ? modelDetail(chosen, versions, ctx) : null];
  }

  function modelDetail(v, versions, ctx) {
    const chain = C.lineageChain(versions, v.name, v.version);
    const links = [];
    chain.forEach((n, i) => {
      if (i) links.push(el("span", { class: "arrow", "aria-hidden": "true" }, "→"));
      const b = button(`v${n}`, { class: n === v.version ? "chip link current" : "chip link", "aria-current": n === v.version ? "true" : null });
      b.addEventListener("click", () => { modelsState.selected = `${v.name}@${n}`; ctx.rerender(); });
      links.push(b);
    });
    const steps = C.provenance(v);
    const prov = el("ol", { class: "provenance", "aria-label": "Provenance" }, steps.map((p) =>
      el("li", null, el("strong", null, p.step), el("ul", null, (p.items.length ? p.items : ["–"]).map((t) => el("li", { class: "mono" }, t))))));
    return el("section", { class: "detail", "aria-label": `Model ${v.name}@${v.version}` },
      el("h3", null, `${v.name}@${v.version}`),
      el("div", { class: "chain", "aria-label": "Version history" }, links),
      el("h4", null, "Lineage: data → federated round → compiler report → signed bytes"),
      prov,
      el("h4", null, "Model card"),
      el("pre", { class: "card", tabindex: 0, "aria-label": "Model card" }, C.modelCard(v)));
  }

  // ------------------------------------------------------------------ rollouts

  async function renderRollouts(_, ctx) {
    const rollouts = await api("rollouts", {}, { limit: 100 });
    return [
      el("h2", null, "Rollouts"),
      table(
        [
          { title: "Rollout", value: (r) => link(r.name || r.id, C.routeHash("rollout", r.id), { class: "mono" }) },
          { title: "State", value: (r) => pill(r.state, `rollout-${r.state}`) },
          { title: "Progress", value: (r) => progress(r) },
          { title: "Releases", value: (r) => chips(C.rolloutReleases(r)) },
          { title: "Devices", value: (r) => C.countsText(r.devices) || "–" },
          { title: "Reason", value: (r) => r.reason || "" },
          { title: "By", value: (r) => r.created_by || "–" },
          { title: "Updated", value: (r) => when(r.updated_at) },
        ],
        rollouts,
        { caption: "Rollouts", empty: ctx.can("operator") ? "No rollouts yet: create one from a release." : "No rollouts yet." }
      ),
    ];
  }

  function progress(r) {
    const done = r.state === "completed" ? r.batches : Math.max(0, r.batch);
    return el("span", { class: "progress-cell" },
      el("progress", { max: Math.max(1, r.batches), value: done, "aria-label": `${r.name || r.id}: ${C.batchText(r)}` }),
      ` ${C.batchText(r)}`);
  }

  const ACTION_CALLS = {
    pause: (id, reason) => api("rollout_pause", { rollout_id: id }, {}, { reason }),
    resume: (id, reason) => api("rollout_resume", { rollout_id: id }, {}, { reason }),
    abort: (id, reason) => api("rollout_abort", { rollout_id: id }, {}, { reason }),
    rollback: (id, reason) => api("rollout_rollback", { rollout_id: id }, {}, { reason }),
  };
  const ACTION_LABELS = { pause: "Pause", resume: "Resume", abort: "Abort", rollback: "Roll back" };
  const CONFIRM = new Set(["abort", "rollback"]);

  async function renderRollout(id, ctx) {
    const [r, gates] = await Promise.all([api("rollout", { rollout_id: id }), api("rollout_gates", { rollout_id: id }, { limit: 5000 })]);
    const allowed = new Set(C.rolloutActions(r.state));
    const buttons = ctx.can("operator") ? Object.keys(ACTION_CALLS).map((a) => {
      const b = button(ACTION_LABELS[a], { disabled: !allowed.has(a), class: CONFIRM.has(a) ? "danger" : "" });
      b.addEventListener("click", async () => {
        let reason = "";
        if (CONFIRM.has(a)) {
          reason = await confirmDialog(`${ACTION_LABELS[a]} rollout ${r.id}?`,
            a === "abort" ? "No further batch is assigned; devices keep what they installed."
              : "Every device that got the release goes back to its previous model.", `Confirm ${ACTION_LABELS[a].toLowerCase()}`);
          if (reason === null) return;
        }
        const done = await act(ctx, b, () => ACTION_CALLS[a](r.id, reason), (x) => `Rollout ${x.id}: ${x.state}.`);
        if (done) ctx.rerender();
      });
      return b;
    }) : [];
    const byGate = C.gatesByName(gates);
    const gatePlots = Object.keys(byGate).sort().map((name) => gateChart(name, byGate[name]));
    return [
      el("h2", null, `Rollout ${r.id}`),
      el("p", null, link("← Rollouts", "#/rollouts")),
      el("p", { class: "big" }, el("span", { class: "rollout-state" }, `State: ${r.state}`), " · ",
        el("span", { class: "rollout-batch" }, C.batchText(r)), r.name ? ` · ${r.name}` : ""),
      el("p", null, progress(r), r.reason ? [" · ", el("strong", null, r.reason)] : null),
      el("p", { class: "muted" }, `releases ${C.rolloutReleases(r).join(", ")} · on breach: ${r.on_breach} · created by ${r.created_by || "–"}`),
      buttons.length ? el("div", { class: "actions", role: "group", "aria-label": "Rollout actions" }, buttons) : null,
      el("h3", null, "Batches"),
      table(
        [
          { title: "Batch", value: (b) => String(b.index + 1), cls: "num" },
          { title: "Devices", value: (b) => String(b.size), cls: "num" },
          { title: "Progress", value: (b) => {
            const settled = Object.entries(b.devices || {}).filter(([k]) => k !== "pending" && k !== "assigned").reduce((a, [, n]) => a + n, 0);
            return el("span", { class: "progress-cell" },
              el("progress", { max: Math.max(1, b.size), value: settled, "aria-label": `batch ${b.index + 1} settled` }),
              ` ${C.countsText(b.devices) || "not assigned"}`);
          } },
          { title: "Looks", value: (b) => String(b.looks), cls: "num" },
          { title: "Assigned", value: (b) => (b.assigned_at ? when(b.assigned_at) : "–") },
          { title: "Settled", value: (b) => (b.settled_at ? when(b.settled_at) : "–") },
        ],
        r.plan || [],
        { caption: "Batches", captionHidden: true, empty: "No batch planned yet." }
      ),
      el("h3", null, "Gates: canary vs control"),
      gatePlots.length ? el("div", { class: "charts" }, gatePlots) : muted("No gate evaluated yet."),
      table(
        [
          { title: "Gate", value: (g) => g.gate, cls: "mono" },
          { title: "Verdict", value: (g) => pill(g.verdict, `gate-${g.verdict}`) },
          { title: "Statistic", value: (g) => C.fmtNum(g.statistic, 4), cls: "num" },
          { title: "Threshold", value: (g) => C.fmtNum(g.threshold, 3), cls: "num" },
          { title: "p", value: (g) => C.fmtNum(g.p_value, 3), cls: "num" },
          { title: "Effect", value: (g) => C.fmtNum(g.effect, 3), cls: "num" },
          { title: "Samples (canary / control)", value: (g) => `${g.samples_canary} / ${g.samples_control}`, cls: "num" },
          { title: "Detail", value: (g) => g.detail || "" },
        ],
        r.latest_gates || [],
        { caption: "Latest look of the current batch", empty: "" }
      ),
    ];
  }

  /** One gate over its looks: canary against control (the values the server judged) when it
   *  stores them, else the statistic against its threshold and the effect. */
  function gateChart(name, results) {
    const x = results.map((_, i) => i + 1);
    const last = results[results.length - 1];
    if (results.some((g) => g.value_canary !== null && g.value_canary !== undefined)) {
      return charts.lines(`Gate ${name}`, x, [
        { name: "canary", values: results.map((g) => g.value_canary ?? null) },
        { name: "control", values: results.map((g) => g.value_control ?? null), dash: [6, 4] },
      ], { time: false, xLabel: "look", height: 170,
        caption: `Gate ${name}: latest ${last.verdict}; statistic ${C.fmtNum(last.statistic, 3)} vs threshold ` +
          `${C.fmtNum(last.threshold, 3)}; canary ${last.samples_canary} vs control ${last.samples_control} samples ` +
          `(${last.devices_canary} vs ${last.devices_control} devices)` });
    }
    return charts.lines(`Gate ${name}`, x, [
      { name: "statistic", values: results.map((g) => g.statistic) },
      { name: "threshold", values: results.map((g) => g.threshold), dash: [6, 4] },
      { name: "effect (canary − control)", values: results.map((g) => g.effect) },
    ], { time: false, xLabel: "look", height: 170,
      caption: `Gate ${name}: latest ${last.verdict}, canary ${last.samples_canary} vs control ${last.samples_control} samples ` +
        `(${last.devices_canary} vs ${last.devices_control} devices)` });
  }

  // ------------------------------------------------------------------ federated

  async function renderFederated(_, ctx) {
    const runs = await api("runs", {}, { limit: 50 });
    const parts = [el("h2", null, "Federated")];
    if (ctx.can("operator")) parts.push(runForm(ctx));
    parts.push(table(
      [
        { title: "Run", value: (r) => link(C.shortId(r.id, 16), C.routeHash("run", r.id), { class: "mono", "aria-label": `Run ${r.id}` }) },
        { title: "Strategy", value: (r) => r.strategy },
        { title: "SecAgg", value: (r) => (r.secure_aggregation ? "yes" : "no") },
        { title: "Status", value: (r) => pill(r.status, `run-${r.status}`) },
        { title: "Rounds", value: (r) => String(r.num_rounds), cls: "num" },
        { title: "ε", value: (r) => C.fmtNum(r.epsilon), cls: "num" },
        { title: "Created", value: (r) => when(r.created_at) },
        { title: "Outcome", value: (r) => C.runOutcome(r) },
        ctx.can("operator") ? { title: "Actions", value: (r) => (r.status === "running" ? stopButton(r, ctx) : "") } : null,
      ].filter(Boolean),
      runs,
      { caption: "Federated runs", empty: "No federated runs yet." }
    ));
    if (runs.length) parts.push(await runDetail(runs[0].id, ctx, true));
    return parts;
  }

  function stopButton(r, ctx) {
    const b = button("Stop run", { class: "danger", "aria-label": `Stop run ${r.id}` });
    b.addEventListener("click", async () => {
      const reason = await confirmDialog(`Stop run ${r.id}?`, "Its current round is abandoned.", "Confirm stop");
      if (reason === null) return;
      const done = await act(ctx, b, () => api("run_cancel", { run_id: r.id }, {}, { reason }), `Run ${r.id} stopped.`);
      if (done) ctx.rerender();
    });
    return b;
  }

  function runForm(ctx) {
    const strategy = select([["fedavg", "fedavg"], ["fedprox", "fedprox"], ["fedmedian", "fedmedian"], ["fedtrimmedavg", "fedtrimmedavg"], ["krum", "krum"]], "fedavg");
    const rounds = el("input", { type: "number", min: 1, max: 1000, value: 3 });
    const minNodes = el("input", { type: "number", min: 1, max: 10000, value: 2 });
    const model = input({ maxlength: 128, placeholder: "registry model (optional)" });
    const labels = input({ maxlength: 400, placeholder: "site=a" });
    const secagg = el("input", { type: "checkbox" });
    const noise = el("input", { type: "number", min: 0, step: "any", value: 0 });
    const start = el("button", { type: "submit" }, "Start run");
    const form = el("form", { class: "panel-inline", "aria-label": "New federated run" },
      el("div", { class: "row" }, field("Strategy", strategy), field("Rounds", rounds), field("Minimum devices", minNodes),
        field("Model", model), field("Cohort labels", labels), field("DP noise multiplier", noise, "0 = off"),
        el("div", { class: "field check" }, secagg, el("label", { for: (secagg.id = `f${(uid += 1)}`) }, "Secure aggregation"))),
      el("div", { class: "actions" }, start));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      let spec;
      try {
        const n = (elm, what, lo, hi) => {
          const v = Number(elm.value);
          if (elm.value.trim() === "" || !Number.isFinite(v) || v < lo || v > hi) throw new Error(`${what} must be a number from ${lo} to ${hi}`);
          return v;
        };
        spec = {
          strategy: strategy.value,
          rounds: n(rounds, "Rounds", 1, 1000),
          min_nodes: n(minNodes, "Minimum devices", 1, 10000),
          model: model.value.trim(),
          labels: C.parseLabelEdits(labels.value, { allowRemove: false }),
          secure_aggregation: secagg.checked,
          dp_noise_multiplier: n(noise, "DP noise multiplier", 0, 1000),
        };
        if (!Number.isInteger(spec.rounds) || !Number.isInteger(spec.min_nodes)) throw new Error("Rounds and minimum devices are whole numbers");
      } catch (err) {
        ctx.fail(new ApiError(0, err.message));
        return;
      }
      const made = await act(ctx, start, () => api("run_start", {}, {}, spec), (x) => `Run ${x.run_id} started.`);
      if (made) ctx.navigate(C.routeHash("run", made.run_id));
    });
    return el("details", { class: "panel-inline", open: true }, el("summary", null, "New federated run"), form);
  }

  async function renderRun(id, ctx) {
    return [el("h2", null, `Run ${id}`), el("p", null, link("← Federated", "#/federated")), await runDetail(id, ctx, false)];
  }

  async function runDetail(id, ctx, heading) {
    const out = await api("run", { run_id: id });
    const run = out.run;
    const rounds = out.rounds || [];
    const s = C.roundSeries(rounds);
    const accKey = C.accuracyKey(s.metrics);
    const dp = run.epsilon > 0 ? `ε = ${C.fmtNum(run.epsilon)} (δ = ${C.fmtNum(run.delta)})` : "ε = 0 (no DP noise)";
    const eps = C.epsilonPerDevice(rounds);
    const latest = rounds.filter((r) => Object.keys(r.anomaly_scores || {}).length).pop();
    const anomalies = latest ? Object.entries(latest.anomaly_scores).map(([label, v]) => ({ label, value: Number(v) }))
      .sort((a, b) => b.value - a.value).slice(0, 40) : [];
    return el("section", { class: "detail", "aria-label": `Run ${run.id} detail` },
      heading ? el("h3", null, "Latest run ", el("a", { href: C.routeHash("run", run.id), class: "mono" }, run.id)) : null,
      el("p", null, `${run.strategy} · ${run.status} · ${rounds.length}/${run.num_rounds} rounds · `, el("strong", null, dp),
        ` · secure aggregation: ${run.secure_aggregation ? "on" : "off"} · ${out.online_devices} device(s) online`),
      run.status === "failed" || run.status === "cancelled" ? el("p", { class: `outcome run-${run.status}` }, el("strong", null, C.runOutcome(run))) : null,
      ctx.can("operator") && run.status === "running" && !heading ? el("p", null, stopButton(run, ctx)) : null,
      el("div", { class: "charts" },
        charts.lines("Accuracy per round", s.rounds, [{ name: accKey || "accuracy", values: accKey ? s.metrics[accKey] : [] }],
          { time: false, xLabel: "round", empty: "No accuracy reported yet." }),
        charts.lines("Participants per round", s.rounds, [
          { name: "sampled", values: s.sampled }, { name: "results", values: s.results }, { name: "failures", values: s.failures, dash: [4, 3] },
        ], { time: false, xLabel: "round", empty: "No round finished yet." }),
        charts.bars("Epsilon per device", eps.map((e) => ({ label: e.device, value: e.epsilon })), {
          caption: "ε spent per participant (cumulative ε of the last round it took part in)", valueName: "ε",
          empty: run.epsilon > 0 ? "No participant recorded yet." : "No DP noise: no ε spent." }),
        charts.bars("Anomaly scores", anomalies, { caption: latest ? `Update anomaly scores, round ${latest.server_round} (higher = further from the others)` : "Update anomaly scores",
          valueName: "score", empty: "No anomaly scores recorded." })),
      table(
        [
          { title: "Round", value: (r) => String(r.server_round), cls: "num" },
          { title: "Sampled", value: (r) => String(r.sampled), cls: "num" },
          { title: "Results", value: (r) => String(r.results), cls: "num" },
          { title: "Failures", value: (r) => String(r.failures), cls: "num" },
          { title: "Rejected", value: (r) => (Object.keys(r.rejected || {}).length ? chips(Object.keys(r.rejected)) : "–") },
          { title: "Dropped (secagg)", value: (r) => (Object.keys(r.dropped || {}).length ? chips(Object.keys(r.dropped)) : "–") },
          { title: "ε", value: (r) => C.fmtNum(r.epsilon), cls: "num" },
          { title: "Duration", value: (r) => `${C.fmtNum(r.duration_s)} s`, cls: "num" },
          { title: "Aggregate", value: (r) => el("span", { title: r.arrays_digest }, C.shortId(r.arrays_digest)), cls: "mono" },
        ],
        rounds,
        { caption: "Rounds", empty: "No round finished yet." }
      ));
  }

  // ------------------------------------------------------------------ drift

  const driftState = { selected: null };

  async function renderDrift(_, ctx) {
    const episodes = await api("episodes", {}, { limit: 500 });
    const byDevice = {};
    for (const e of episodes) byDevice[e.device_id] = Math.max(byDevice[e.device_id] || 0, e.severity);
    const worst = Object.entries(byDevice).map(([label, value]) => ({ label, value })).sort((a, b) => b.value - a.value).slice(0, 30);
    const chosen = episodes.find((e) => e.id === driftState.selected) || episodes[0];
    return [
      el("h2", null, "Drift"),
      charts.bars("Drift severity per device", worst, { caption: "Strongest episode severity per device (1 = alarm threshold)", valueName: "severity",
        extra: [{ name: "threshold", values: worst.map(() => 1) }], empty: "No drift episodes reported yet." }),
      table(
        [
          { title: "Episode", value: (e) => {
            const b = button(String(e.id), { class: "linkish", "aria-label": `Show evidence of episode ${e.id}` });
            b.addEventListener("click", () => { driftState.selected = e.id; ctx.rerender(); });
            return b;
          }, cls: "num" },
          { title: "Device", value: (e) => link(e.device_id, C.routeHash("device", e.device_id), { class: "mono" }) },
          { title: "Stream", value: (e) => e.stream },
          { title: "State", value: (e) => pill(e.state, e.state === "open" ? "warn" : "off") },
          { title: "Model", value: (e) => (e.model_name ? `${e.model_name}@${e.model_version}` : "–"), cls: "mono" },
          { title: "Severity", value: (e) => C.fmtNum(e.severity), cls: "num" },
          { title: "Features", value: (e) => chips((e.features || []).slice(0, 6)) },
          { title: "Opened", value: (e) => when(e.opened_ms) },
          { title: "Cohort verdict", value: (e) => e.classification || "–" },
        ],
        episodes,
        { caption: "Drift episodes", empty: "" }
      ),
      chosen ? episodeBlock(chosen) : null,
    ];
  }

  // ------------------------------------------------------------------ audit

  const auditState = { filter: "all" };

  async function renderAudit(_, ctx) {
    const verify = await api("audit_verify");
    const status = C.chainStatus(verify);
    const page = await api("audit", {}, { after_seq: C.auditAfterSeq(verify.head_seq), limit: 1000 });
    const isRequest = (e) => e.action.startsWith("api ");
    const wanted = (e) => auditState.filter === "all" || (auditState.filter === "requests") === isRequest(e);
    const entries = page.entries.filter(wanted).slice(-200).reverse();
    const filter = select([["all", "every entry"], ["changes", "state changes"], ["requests", "operator API requests"]], auditState.filter);
    filter.addEventListener("change", () => { auditState.filter = filter.value; ctx.rerender(); });
    return [
      el("h2", null, "Audit"),
      el("p", { class: status.ok ? "chain-status" : "chain-status broken", role: "status" },
        pill(status.ok ? "intact" : "broken", status.ok ? "ok" : "bad"), " ", status.text),
      el("div", { class: "inline-form" }, field("Show", filter)),
      table(
        [
          { title: "Seq", value: (e) => String(e.seq), cls: "num" },
          { title: "When", value: (e) => when(e.ts) },
          { title: "Actor", value: (e) => C.actorText(e.actor) },
          { title: "Action", value: (e) => e.action, cls: "mono" },
          { title: "Target", value: (e) => (e.target.kind ? `${e.target.kind} ${e.target.id}`.trim() : "–"), cls: "mono" },
          { title: "Details", value: (e) => chips(C.detailsText(e.details)) },
          { title: "From", value: (e) => (e.source && e.source.ip) || "–" },
          { title: "Hash", value: (e) => el("span", { title: e.hash }, C.shortId(e.hash, 10)), cls: "mono" },
        ],
        entries,
        { caption: "Audit log", empty: "No audit entries yet." }
      ),
    ];
  }

  // ------------------------------------------------------------------ registry of views

  root.EdgeloopViews = {
    fleet: { title: "Fleet", nav: "fleet", render: renderFleet, events: ["fleet", "device"] },
    device: { title: "Device", nav: "fleet", render: renderDevice, events: ["device"], match: (d, arg) => d.id === arg },
    releases: { title: "Releases", nav: "releases", render: renderReleases, events: [] },
    models: { title: "Models", nav: "models", render: renderModels, events: [] },
    rollouts: { title: "Rollouts", nav: "rollouts", render: renderRollouts, events: ["rollout"] },
    rollout: { title: "Rollout", nav: "rollouts", render: renderRollout, events: ["rollout"], match: (d, arg) => d.id === arg },
    federated: { title: "Federated", nav: "federated", render: renderFederated, events: ["run"] },
    run: { title: "Run", nav: "federated", render: renderRun, events: ["run"], match: (d, arg) => d.id === arg },
    drift: { title: "Drift", nav: "drift", render: renderDrift, events: [] },
    audit: { title: "Audit", nav: "audit", render: renderAudit, events: ["audit"] },
  };
})(window);

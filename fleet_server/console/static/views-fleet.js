/*
 * edgeloop operator console, part 4 of 7: the fleet overview and the device page (labels, revoke, bootstrap tokens, telemetry charts).
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
  const { muted, when, chips, pill, link, field, input, select, button, table, act, confirmDialog, episodeBlock } =
    root.EdgeloopWidgets;

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
      ctx.can("operator") ? enrolPanel(ctx) : null,
      filters,
      s.fallback ? muted("This server has no /fleet/devices API: filtering and paging happen in the browser (up to 5,000 devices).") : null,
      grid,
      pager,
    ];
  }

  // The enrol panel survives the live re-renders of one visit (device events re-render the fleet view
  // every few seconds): what the operator typed stays, and a token created while a re-render was in
  // flight lands in the panel on screen instead of a detached copy. A new visit (navigation, sign-in,
  // reload) builds it afresh, so the token is shown once.
  let enrol = null;

  function enrolPanel(ctx) {
    if (!enrol || enrol.visit !== ctx.visit) enrol = { visit: ctx.visit, node: bootstrapPanel(ctx) };
    return enrol.node;
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

  root.EdgeloopViews = Object.assign(root.EdgeloopViews || {}, {
    fleet: { title: "Fleet", nav: "fleet", render: renderFleet, events: ["fleet", "device"] },
    device: { title: "Device", nav: "fleet", render: renderDevice, events: ["device"], match: (d, arg) => d.id === arg },
  });
})(window);

/*
 * edgeloop operator console, part 5 of 7: releases, the model registry and rollouts (create, watch, pause, resume, abort, roll back).
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

  root.EdgeloopViews = Object.assign(root.EdgeloopViews || {}, {
    releases: { title: "Releases", nav: "releases", render: renderReleases, events: [] },
    models: { title: "Models", nav: "models", render: renderModels, events: [] },
    rollouts: { title: "Rollouts", nav: "rollouts", render: renderRollouts, events: ["rollout"] },
    rollout: { title: "Rollout", nav: "rollouts", render: renderRollout, events: ["rollout"], match: (d, arg) => d.id === arg },
  });
})(window);

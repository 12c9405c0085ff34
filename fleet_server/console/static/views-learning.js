/*
 * edgeloop operator console, part 6 of 7: federated runs (start, stop, rounds), drift episodes and the audit log.
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
  const { muted, when, chips, pill, link, field, input, select, button, table, act, confirmDialog, episodeBlock, nextId } =
    root.EdgeloopWidgets;

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
        el("div", { class: "field check" }, secagg, el("label", { for: (secagg.id = nextId()) }, "Secure aggregation"))),
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

  root.EdgeloopViews = Object.assign(root.EdgeloopViews || {}, {
    federated: { title: "Federated", nav: "federated", render: renderFederated, events: ["run"] },
    run: { title: "Run", nav: "federated", render: renderRun, events: ["run"], match: (d, arg) => d.id === arg },
    drift: { title: "Drift", nav: "drift", render: renderDrift, events: [] },
    audit: { title: "Audit", nav: "audit", render: renderAudit, events: ["audit"] },
  });
})(window);

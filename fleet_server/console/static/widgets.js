/*
 * edgeloop operator console, part 3 of 7: the small builders every view uses (form fields, tables,
 * actions with busy state, confirmation dialogs, drift episode blocks). Pure DOM through `el`: every
 * server value is written as text. Does not own any view (views-*.js) or the routing (app.js).
 */
(function (root) {
  "use strict";

  const { el } = root.EdgeloopUI;
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

  /** A fresh element id for label/field pairs. */
  function nextId() {
    uid += 1;
    return `f${uid}`;
  }

  function field(label, input, hint) {
    const id = input.id || nextId();
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

  /** A drift episode: its facts and the per-feature evidence plotted against the reference's thresholds. */
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

  root.EdgeloopWidgets = {
    muted, when, chips, pill, link, field, input, select, button, table, act, confirmDialog, episodeBlock, nextId,
  };
})(window);

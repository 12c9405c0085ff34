/*
 * edgeloop operator console, part 2 of 7: plots, drawn by the vendored uPlot (vendor/uPlot.iife.min.js).
 *
 * Every chart is a <figure> whose plot area is role="img" with an aria-label (its name for screen
 * readers and for tests) and a visible caption. uPlot draws on a canvas and positions its overlay
 * with element.style assignments (CSSOM), which the page's strict CSP allows; no markup is injected.
 * Charts resize with their container (ResizeObserver) and are destroyed when their view is replaced.
 */
(function (root) {
  "use strict";

  const { el } = root.EdgeloopUI;
  const C = root.EdgeloopConsole;
  // Colour-blind-safe-ish palette with >= 3:1 contrast against white (lines, not text).
  const PALETTE = ["#2457c5", "#c2410c", "#1b7f3b", "#862e9c", "#be185d", "#0b7285", "#a16207", "#495057"];
  const alive = new Set(); // {plot, wrap, observer}

  function prune() {
    for (const c of alive) {
      if (!c.wrap.isConnected) {
        c.observer.disconnect();
        c.plot.destroy();
        alive.delete(c);
      }
    }
  }

  function widthOf(wrap) {
    const w = wrap.clientWidth || (wrap.parentElement && wrap.parentElement.clientWidth) || 480;
    return Math.max(240, Math.min(w, 1200));
  }

  function mount(wrap, opts, data) {
    if (typeof root.uPlot !== "function") {
      wrap.append(el("p", { class: "muted" }, "plotting library not loaded"));
      return;
    }
    const plot = new root.uPlot({ ...opts, width: widthOf(wrap) }, data, wrap);
    const observer = new ResizeObserver(() => {
      if (!wrap.isConnected) return;
      const w = widthOf(wrap);
      if (Math.abs(w - plot.width) > 4) plot.setSize({ width: w, height: opts.height });
    });
    observer.observe(wrap);
    alive.add({ plot, wrap, observer });
  }

  function frame(label, caption, summary) {
    const wrap = el("div", { class: "plot", role: "img", "aria-label": label });
    const fig = el("figure", { class: "chart" },
      el("figcaption", null, caption || label), wrap,
      summary ? el("p", { class: "chart-summary muted" }, summary) : null);
    return { fig, wrap };
  }

  function hasData(columns) {
    return columns.some((col) => col.some((v) => typeof v === "number" && Number.isFinite(v)));
  }

  function lastValue(col) {
    for (let i = col.length - 1; i >= 0; i -= 1) if (typeof col[i] === "number") return col[i];
    return null;
  }

  /**
   * Line chart. x: numbers (unix seconds when `time`), series: [{name, values, dash?, points?}].
   * opts: {time, height, yLabel, xLabel, caption}.
   */
  function lines(label, x, series, opts = {}) {
    const summary = series.map((s) => `${s.name}: latest ${C.fmtNum(lastValue(s.values))}`).join(" · ");
    const { fig, wrap } = frame(label, opts.caption, x.length ? summary : null);
    if (!x.length || !hasData(series.map((s) => s.values))) {
      wrap.append(el("p", { class: "muted empty-plot" }, opts.empty || "No data yet."));
      return fig;
    }
    const height = opts.height || 180;
    mount(wrap, {
      height,
      scales: { x: { time: opts.time !== false } },
      series: [
        { label: opts.xLabel || (opts.time === false ? "x" : "time") },
        ...series.map((s, i) => ({
          label: s.name,
          stroke: s.color || PALETTE[i % PALETTE.length],
          width: 2,
          dash: s.dash,
          spanGaps: false,
          // dots when data is sparse: an isolated value between gaps draws no line on its own
          points: { show: s.points ?? s.values.filter((v) => typeof v === "number").length < 40 },
        })),
      ],
      axes: [
        { label: opts.xLabel, stroke: "#475467" },
        { label: opts.yLabel, stroke: "#475467", size: 56 },
      ],
      legend: { live: true },
    }, [x, ...series.map((s) => s.values)]);
    return fig;
  }

  /** Categorical bars: items [{label, value}] (and an optional reference line `ref` {name, value}). */
  function bars(label, items, opts = {}) {
    const summary = items.slice(0, 8).map((b) => `${b.label} ${C.fmtNum(b.value)}`).join(" · ");
    const { fig, wrap } = frame(label, opts.caption, items.length ? summary : null);
    if (!items.length) {
      wrap.append(el("p", { class: "muted empty-plot" }, opts.empty || "No data yet."));
      return fig;
    }
    const n = items.length;
    const x = items.map((_, i) => i);
    const names = items.map((b) => C.shortId(b.label, 14));
    const series = [
      { label: opts.xLabel || "item" },
      {
        label: opts.valueName || "value",
        stroke: PALETTE[0],
        fill: "rgba(36, 87, 197, 0.55)",
        width: 1,
        paths: root.uPlot && root.uPlot.paths.bars ? root.uPlot.paths.bars({ size: [0.6, 60] }) : undefined,
        points: { show: false },
      },
    ];
    const data = [x, items.map((b) => b.value)];
    for (const [i, extra] of (opts.extra || []).entries()) {
      series.push({ label: extra.name, stroke: PALETTE[(i + 1) % PALETTE.length], width: 2, dash: extra.dash || [6, 4], points: { show: true } });
      data.push(extra.values);
    }
    const height = opts.height || Math.max(160, Math.min(320, 120 + n * 6));
    mount(wrap, {
      height,
      scales: {
        x: { time: false, range: () => [-0.6, n - 0.4] },
        y: { range: (_, lo, hi) => [Math.min(0, lo), hi > 0 ? hi * 1.1 : 1] }, // bars start at zero
      },
      series,
      axes: [
        {
          stroke: "#475467",
          splits: () => x,
          values: (_, splits) => splits.map((i) => (Number.isInteger(i) ? names[i] ?? "" : "")),
          rotate: n > 6 ? -30 : 0,
          size: n > 6 ? 70 : 40,
        },
        { label: opts.yLabel, stroke: "#475467", size: 56 },
      ],
      legend: { live: true },
    }, data);
    return fig;
  }

  root.EdgeloopCharts = { lines, bars, prune, PALETTE };
})(window);

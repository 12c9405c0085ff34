/*
 * edgeloop operator console, part 7 of 7: the session (sign in/out, role from /me), the hash router,
 * the message regions, and live updates from the server's event stream.
 *
 * Live updates: the events stream, read with the Fetch API and a ReadableStream (the browser's SSE client cannot send
 * the Authorization header). An event re-renders the current view only when it concerns it
 * (debounced); a dropped stream reconnects with backoff (1 s doubling to 30 s); after 5 failures in
 * a row the page polls the current view every 30 s and keeps trying the stream every minute.
 */
(function (root) {
  "use strict";

  const { el, $, api, stream, ApiError, session, TOKEN_KEY } = root.EdgeloopUI;
  const C = root.EdgeloopConsole;
  const VIEWS = root.EdgeloopViews;
  const charts = root.EdgeloopCharts;

  const POLL_MS = 30000;
  const STREAM_RETRY_WHILE_POLLING_MS = 60000;
  const MAX_STREAM_FAILURES = 5;
  const THROTTLE_MS = 1000;

  const app = { route: { view: "fleet", arg: null }, rendering: false, again: false, againLoud: false, timer: null };

  // ------------------------------------------------------------------ messages

  function notify(text) {
    $("status").textContent = text || "";
  }

  function fail(err) {
    if (err && err.status === 401) {
      signOut("The server rejected the token (401). Paste a valid operator token.");
      return;
    }
    let text;
    if (err instanceof ApiError) {
      text = err.status === 403 ? `Not allowed (403): ${err.message}`
        : err.status ? `${err.message} (${err.status})` : err.message;
    } else {
      text = "Something went wrong in the page; reload it. (details in the browser console)";
      if (root.console) root.console.error(err);
    }
    const box = $("alert");
    box.textContent = text;
    box.hidden = false;
  }

  function clearAlert() {
    $("alert").textContent = "";
    $("alert").hidden = true;
  }

  // ------------------------------------------------------------------ role

  function can(need) {
    const role = session.me ? session.me.role : null;
    return C.roleAllows(role, need);
  }

  async function loadMe() {
    try {
      session.me = await api("me");
    } catch (err) {
      if (err.status !== 404) throw err;
      // A server without /me (older): show every action; the server still refuses what the role may not do.
      session.me = { name: "operator", role: "admin", unknown: true };
    }
    const who = session.me;
    $("whoami").textContent = who.unknown ? "Signed in (role unknown: this server has no /me)" : `Signed in as ${who.name} (${who.role})`;
  }

  // ------------------------------------------------------------------ rendering

  const ctx = {
    can,
    notify,
    fail,
    rerender: () => render(),
    // Bumped on every navigation and sign-in (not on a re-render): a view may keep a form node alive
    // across live re-renders of one visit and build it afresh on the next.
    visit: 0,
    navigate: (hash) => {
      if (location.hash === hash) render();
      else location.hash = hash;
    },
  };

  async function render({ quiet = false } = {}) {
    if (!session.token) return;
    if (app.rendering) {
      app.again = true;
      app.againLoud = app.againLoud || !quiet; // an operator's own request is never dropped as "live"
      return;
    }
    app.rendering = true;
    const { view, arg } = app.route;
    const spec = VIEWS[view];
    const target = $("view");
    if (!quiet) target.setAttribute("aria-busy", "true");
    try {
      const focusId = document.activeElement && target.contains(document.activeElement) ? focusKey(document.activeElement) : null;
      const nodes = await spec.render(arg, ctx);
      if (app.route.view !== view || app.route.arg !== arg) return; // navigated away meanwhile
      if (quiet && operatorBusy()) {
        // A live refresh that began before the operator started typing (or opened a dialog) must not
        // replace the form under their fingers: drop it and try again once they are done.
        scheduleLiveRender();
        return;
      }
      target.replaceChildren(...nodes.flat(3).filter(Boolean));
      charts.prune();
      if (focusId) restoreFocus(target, focusId);
      document.title = `${spec.title}${arg ? ` ${arg}` : ""} · edgeloop console`;
      $("updated").textContent = `updated ${C.fmtUtc(Date.now())}`;
      if (!quiet) clearAlert();
    } catch (err) {
      if (err instanceof ApiError && err.status === 404 && arg) {
        target.replaceChildren(el("h2", null, `${spec.title} ${arg}`), el("p", null, err.message));
      }
      fail(err);
    } finally {
      target.removeAttribute("aria-busy");
      app.rendering = false;
      if (app.again) {
        const loud = app.againLoud;
        app.again = app.againLoud = false;
        render({ quiet: !loud });
      }
    }
  }

  // Keep keyboard focus on the "same" control across a re-render (e.g. pager buttons, sort headers).
  function focusKey(node) {
    const named = node.labels && node.labels.length ? node.labels[0].textContent : "";
    const label = node.getAttribute("aria-label") || named || node.textContent || "";
    return `${node.tagName}|${label.trim()}`;
  }

  function restoreFocus(target, key) {
    for (const node of target.querySelectorAll("button, a, input, select")) {
      if (focusKey(node) === key) {
        node.focus();
        return;
      }
    }
  }

  function onRoute() {
    app.route = C.parseRoute(location.hash);
    const nav = VIEWS[app.route.view].nav;
    for (const a of document.querySelectorAll("#nav a")) {
      if (a.dataset.view === nav) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    notify("");
    ctx.visit += 1;
    const heading = render();
    heading.then(() => {
      const h = $("view").querySelector("h2");
      if (h && app.userNavigated) {
        h.setAttribute("tabindex", "-1");
        h.focus();
      }
    });
  }

  // ------------------------------------------------------------------ live updates

  const live = { ctrl: null, failures: 0, pollTimer: null, retryTimer: null, debounce: null };

  function liveText(text) {
    $("live").textContent = text;
  }

  function relevant(kind, data) {
    const spec = VIEWS[app.route.view];
    if (!spec.events.includes(kind)) return false;
    return spec.match ? spec.match(data || {}, app.route.arg) : true;
  }

  function onEvent(kind, raw) {
    let data = null;
    try {
      data = JSON.parse(raw);
    } catch (_) {
      return;
    }
    if (kind === "fleet" && data && typeof data.online === "number") {
      $("fleet-count").textContent = `${data.online}/${data.total} online`;
    }
    if (!relevant(kind, data)) return;
    scheduleLiveRender();
  }

  // At most one live re-render per THROTTLE_MS, and never under the operator's fingers: while a form
  // control of the view has focus (typing a filter, editing labels) or a dialog is open, wait.
  function scheduleLiveRender() {
    if (live.debounce) return;
    live.debounce = setTimeout(() => {
      live.debounce = null;
      if (operatorBusy()) scheduleLiveRender();
      else render({ quiet: true });
    }, THROTTLE_MS);
  }

  function operatorBusy() {
    const active = document.activeElement;
    const typing = active && $("view").contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName);
    return Boolean(typing || document.querySelector("dialog[open]"));
  }

  async function connect() {
    if (!session.token || live.ctrl) return;
    const ctrl = new AbortController();
    live.ctrl = ctrl;
    liveText(live.failures ? "Live: reconnecting…" : "Live: connecting…");
    let opened = false;
    try {
      const resp = await stream("events", ctrl.signal);
      if (!resp.body || !(resp.headers.get("content-type") || "").startsWith("text/event-stream")) {
        throw new ApiError(resp.status, "the event stream is not text/event-stream");
      }
      opened = true;
      live.failures = 0;
      stopPolling();
      liveText("Live");
      if (app.rendering === false) render({ quiet: true }); // catch up on what happened while away
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      const parser = C.sseParser();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        for (const ev of parser.feed(value)) onEvent(ev.event, ev.data);
      }
    } catch (err) {
      if (ctrl.signal.aborted) return;
      if (err && err.status === 401) {
        fail(err);
        return;
      }
    } finally {
      if (live.ctrl === ctrl) live.ctrl = null;
    }
    if (ctrl.signal.aborted || !session.token) return;
    if (!opened) live.failures += 1;
    else live.failures = 1; // a stream that ended after opening: reconnect soon
    if (live.failures >= MAX_STREAM_FAILURES) {
      startPolling();
      live.retryTimer = setTimeout(connect, STREAM_RETRY_WHILE_POLLING_MS);
    } else {
      const wait = C.backoffMs(live.failures);
      liveText(`Live: reconnecting in ${Math.round(wait / 1000)} s`);
      live.retryTimer = setTimeout(connect, wait);
    }
  }

  function startPolling() {
    liveText(`Polling every ${POLL_MS / 1000} s (live updates unavailable)`);
    if (live.pollTimer) return;
    live.pollTimer = setInterval(() => {
      if (!document.hidden) render({ quiet: true });
    }, POLL_MS);
  }

  function stopPolling() {
    clearInterval(live.pollTimer);
    live.pollTimer = null;
  }

  function disconnect() {
    if (live.ctrl) live.ctrl.abort();
    live.ctrl = null;
    clearTimeout(live.retryTimer);
    stopPolling();
    live.failures = 0;
    liveText("");
  }

  // ------------------------------------------------------------------ session

  function signedIn(yes) {
    $("login").hidden = yes;
    $("nav").hidden = !yes;
    $("session").hidden = !yes;
    $("view").hidden = !yes;
  }

  function signOut(text) {
    disconnect();
    session.token = null;
    session.me = null;
    sessionStorage.removeItem(TOKEN_KEY);
    signedIn(false);
    $("view").replaceChildren();
    $("whoami").textContent = "";
    $("fleet-count").textContent = "";
    if (text) {
      $("alert").textContent = text;
      $("alert").hidden = false;
    } else {
      clearAlert();
    }
    notify(text ? "" : "Signed out.");
    $("token").focus();
  }

  async function start() {
    signedIn(true);
    try {
      await loadMe();
    } catch (err) {
      fail(err);
      return;
    }
    onRoute();
    connect();
  }

  function boot() {
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const box = $("token");
      const token = box.value.trim();
      box.value = "";
      if (!/^[A-Za-z0-9_.-]{8,200}$/.test(token)) {
        fail(new ApiError(0, "That does not look like an operator token (op_…)."));
        return;
      }
      session.token = token;
      sessionStorage.setItem(TOKEN_KEY, token);
      start();
    });
    $("signout").addEventListener("click", () => signOut(""));
    $("alert-close").addEventListener("click", clearAlert);
    window.addEventListener("hashchange", () => {
      app.userNavigated = true;
      if (session.token) onRoute();
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && session.token && !live.ctrl && live.failures < MAX_STREAM_FAILURES) connect();
    });
    session.token = sessionStorage.getItem(TOKEN_KEY);
    if (session.token) start();
    else signedIn(false);
  }

  boot();
})(window);

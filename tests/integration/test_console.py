"""The operator web console at /console: served with strict security headers, no inline script, text-only
DOM writes, and every REST call it makes exists in the server's OpenAPI schema with the method it uses."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fleet_server.console.routes import STATIC_DIR
from tests.helpers.inproc import LiveServer

JS = (STATIC_DIR / "console.js").read_text()
HTML = (STATIC_DIR / "index.html").read_text()

_TABLE = re.compile(r"const ENDPOINTS = Object\.freeze\(\{\n(?P<body>.*?)\n\s*\}\);", re.S)
_ENTRY = re.compile(r'^\s*(\w+): \["(GET|POST|PUT|PATCH|DELETE)", "(/api/v1/[^"]*)"\],$')


def _endpoints() -> dict[str, tuple[str, str]]:
    """name -> (method, path) from the JS's ENDPOINTS table; every line of the table must parse."""
    found = _TABLE.search(JS)
    assert found, "console.js lost its ENDPOINTS table"
    out = {}
    for line in found["body"].splitlines():
        entry = _ENTRY.match(line)
        assert entry, f"unparseable ENDPOINTS line: {line!r}"
        out[entry[1]] = (entry[2], entry[3])
    return out


def _csp(header: str) -> dict[str, list[str]]:
    directives = (d.split() for d in header.split(";") if d.strip())
    return {d[0]: d[1:] for d in directives}


class _PageScan(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.stylesheets: list[str] = []
        self.script_text: list[str] = []
        self.bad_attrs: list[str] = []
        self.styles = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.bad_attrs += [f"<{tag} {k}>" for k, _ in attrs if k.startswith("on") or k == "style"]
        scripted = [k for k, v in attrs if (v or "").strip().lower().startswith("javascript:")]
        self.bad_attrs += [f"<{tag} {k}=javascript:>" for k in scripted]
        if tag == "script":
            self.scripts.append(dict(attrs))
            self._in_script = True
        elif tag == "style":
            self.styles += 1
        elif tag == "link" and dict(attrs).get("rel") == "stylesheet":
            self.stylesheets.append(dict(attrs)["href"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text.append(data)


# ---------------------------------------------------------------- served by the real app


def test_page_is_served_with_security_headers_and_no_token(server: LiveServer) -> None:
    r = server.client.get("/console")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    csp = _csp(r.headers["content-security-policy"])
    assert csp["default-src"] == ["'self'"]
    assert csp["script-src"] == ["'self'"]  # no 'unsafe-inline', no 'unsafe-eval', no nonce, no host
    assert csp["style-src"] == ["'self'"]
    assert csp["object-src"] == ["'none'"]
    assert csp["form-action"] == ["'none'"]  # a failed script never turns the login form into a GET ?token=
    assert not any("unsafe" in v for values in csp.values() for v in values)
    assert not any(token in r.text for token in server.tokens.values())
    assert "/console" not in server.client.get("/openapi.json").text  # static page, outside the API schema


def test_assets_are_served_with_their_types_and_headers(server: LiveServer) -> None:
    scan = _PageScan()
    scan.feed(server.client.get("/console").text)
    assert [s.get("src") for s in scan.scripts] == ["/console/static/console.js"]
    assert scan.stylesheets == ["/console/static/console.css"]
    for path, media in [(scan.scripts[0]["src"], "text/javascript"), (scan.stylesheets[0], "text/css")]:
        r = server.client.get(str(path))
        assert r.status_code == 200, path
        assert r.headers["content-type"] == f"{media}; charset=utf-8"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "script-src 'self'" in r.headers["content-security-policy"]
    assert server.client.get("/console/static/console.js").text == JS


@pytest.mark.parametrize(
    "path",
    [
        "/console/static/nope.js",
        "/console/static/index.html",
        "/console/static/..%2Froutes.py",
        "/console/static/",
    ],
)
def test_only_the_console_files_are_served(server: LiveServer, path: str) -> None:
    assert server.client.get(path).status_code == 404


def test_every_endpoint_the_js_calls_is_in_the_openapi_schema(server: LiveServer) -> None:
    paths = server.client.get("/openapi.json").json()["paths"]
    endpoints = _endpoints()
    assert {
        "devices",
        "releases",
        "deployment",
        "episodes",
        "runs",
        "run",
        "models",
        "audit",
        "audit_verify",
        "rollouts",
        "rollout",
    } <= set(endpoints)
    for name, (method, path) in endpoints.items():
        assert path in paths, f"{name}: {path} is not a route of the server"
        assert method.lower() in paths[path], f"{name}: {path} has no {method}"


def test_data_endpoints_require_auth_and_a_viewer_can_read_them(server: LiveServer) -> None:
    for name, (_, template) in _endpoints().items():
        path = re.sub(r"\{seq\}", "999999", re.sub(r"\{(?!seq\})\w+\}", "no-such-id", template))
        assert server.client.get(path).status_code == 401, name
        assert server.client.get(path, headers={"Authorization": "Bearer op_forged"}).status_code == 401, name
        r = server.client.get(path, headers=server.auth("viewer"))
        assert r.status_code in (200, 404), (name, r.status_code, r.text)  # 404 only for the made-up id


# ---------------------------------------------------------------- the files themselves


def test_html_has_no_inline_script_handlers_or_styles() -> None:
    scan = _PageScan()
    scan.feed(HTML)
    assert scan.scripts, "the page loads its script"
    assert all(s.get("src") for s in scan.scripts)
    assert not "".join(scan.script_text).strip()
    assert scan.bad_attrs == []
    assert scan.styles == 0


def test_js_writes_text_never_markup() -> None:
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in JS, sink
    assert not re.search(r"setAttribute\(\s*['\"](on|style)", JS)


def test_js_talks_to_the_api_only_through_the_table() -> None:
    endpoints = _endpoints()
    called = set(re.findall(r"\bapi\(\"(\w+)\"", JS))
    assert called == set(endpoints), "every declared endpoint is used, every call is declared"
    assert JS.count("fetch(") == 1  # the one place requests are made, with the bearer header
    assert JS.count('"/api/v1') == len(endpoints)  # no API path outside the table
    assert "Authorization: `Bearer ${state.token}`" in JS
    assert "localStorage" not in JS and "document.cookie" not in JS  # the token stays in sessionStorage


_NODE_CHECKS = """
const vm = require("vm"), fs = require("fs"), assert = require("assert");
const ctx = {URLSearchParams};  // what a browser window provides
vm.createContext(ctx);
vm.runInContext(fs.readFileSync(%s, "utf8"), ctx);
const C = ctx.EdgeloopConsole;
const eq = (a, b) => assert.deepStrictEqual(JSON.parse(JSON.stringify(a)), b);
eq(C.fillPath("/api/v1/federated/runs/{run_id}", {run_id: "a/b c"}), "/api/v1/federated/runs/a%%2Fb%%20c");
assert.throws(() => C.fillPath("/x/{id}", {}));
eq(C.withQuery("/d", {limit: 5, label: undefined}), "/d?limit=5");
eq(C.niceTicks(0, 1, 4), [0, 0.25, 0.5, 0.75, 1]);
eq(C.niceTicks(0, 2.31, 4), [0, 1, 2, 3]);
eq(C.integerTicks(1, 5), [1, 2, 3, 4, 5]);
eq(C.linearScale(0, 10, 0, 100)(5), 50);
eq(C.linearScale(3, 3, 0, 100)(3), 50);
eq(C.fmtAgo(null, 0), "never");
eq(C.fmtAgo(95000, 100000), "5 s ago");
eq(C.fmtAgo("2026-01-01T00:00:00Z", Date.parse("2026-01-01T03:00:00Z")), "3 h ago");
eq(C.fmtUtc(Date.parse("2026-01-02T03:04:05Z")), "2026-01-02 03:04:05Z");
eq(C.fmtPct(0.9271), "92.7%%");
eq(C.fmtPct(null), "\\u2013");  // en dash
eq(C.fmtBytes(2048), "2.0 KiB");
eq(C.labelsText({site: "plant-3", env: "prod"}), ["env=prod", "site=plant-3"]);
eq(C.servingModel({slots: [{slot: "default", model_name: "digits", model_version: "3"}]}), "digits@3");
eq(C.servingModel({}), "");
const vs = [
  {name: "m", version: 1, parent_version: null, releases: {}},
  {name: "m", version: 2, parent_version: 1, releases: {
    pi: {release_seq: 4, deployment_id: "dep_a", devices: ["a", "b"]},
    coral: {release_seq: 5, deployment_id: "dep_b", devices: ["b", "c"]},
  }},
  {name: "m", version: 3, parent_version: 2, releases: {}},
  {name: "other", version: 1, parent_version: null, releases: {}},
];
eq(C.lineageChain(vs, "m", 3), [1, 2, 3]);
eq(C.lineageChain([{name: "m", version: 1, parent_version: 1}], "m", 1), [1]);
eq(C.releasedTo(vs[1]), 3);
eq(C.profileAccuracy({artifacts: {pi: {accuracy: 0.9}}}), [{profile: "pi", accuracy: 0.9}]);
const spans = C.episodeSpans([
  {id: 1, device_id: "b", stream: "input", state: "closed", opened_ms: 10, closed_ms: 20, severity: 2},
  {id: 2, device_id: "a", stream: "output", state: "open", opened_ms: 30, closed_ms: 0, severity: 1.5},
], 100);
eq(spans.map((g) => [g.device, g.spans[0].end, g.spans[0].open]), [["a", 100, true], ["b", 20, false]]);
const s = C.roundSeries([{server_round: 1, sampled: 3, results: 2, failures: 1, epsilon: 0.5,
                          metrics: {server_accuracy: 0.8, note: "x"}}]);
eq(s.results, [[1, 2]]);
eq(s.metrics, {server_accuracy: [[1, 0.8]]});
eq(C.actorText({kind: "operator", id: "t1", name: "alice", role: "admin"}), "operator alice (admin)");
eq(C.actorText({kind: "system", id: "registry", name: "registry", role: ""}), "system registry");
eq(C.actorText({kind: "anonymous", name: "no credentials"}), "anonymous: no credentials");
eq(C.detailsText({status: 201, b: {x: [1]}, a: "y".repeat(200)}, 12),
   ["a=yyyyyyyyyy…", 'b={"x":[1]}', "status=201"]);
eq(C.chainStatus({ok: true, entries: 5, head_seq: 5, signatures: 1, last_signed_seq: 4, broken_seq: null,
                  reason: ""}),
   {ok: true, text: "intact: 5 entries up to seq 5; 1 head signature(s), last signed seq 4"});
eq(C.chainStatus({ok: false, entries: 3, head_seq: 9, signatures: 0, last_signed_seq: 0, broken_seq: 3,
                  reason: "hash mismatch"}), {ok: false, text: "BROKEN at seq 3: hash mismatch"});
eq(C.chainStatus(null).ok, false);
eq([C.auditAfterSeq(50), C.auditAfterSeq(1234), C.auditAfterSeq(undefined)], [0, 1034, 0]);
eq(C.runOutcome({status: "cancelled", cancelled_by: "alice", detail: "cancelled by alice: wrong cohort"}),
   "cancelled by alice — cancelled by alice: wrong cohort");
eq(C.runOutcome({status: "failed", detail: "server restarted mid-run"}), "failed: server restarted mid-run");
eq(C.runOutcome({status: "completed", detail: ""}), "");
eq(C.countsText({pending: 5, committed: 3, failed: 0}), "committed 3 · pending 5");
eq(C.countsText({}), "");
eq(C.rolloutProgress({state: "draft", batch: -1, batches: 4}), "draft");
eq(C.rolloutProgress({state: "running", batch: 1, batches: 4}), "batch 2/4");
eq(C.rolloutProgress({state: "completed", batch: 3, batches: 4}), "completed (4 batches)");
const rel = {seq: 7, profiles: ["pi4", "coral"], model_name: "digits", model_version: "3"};
eq(C.rolloutReleases({releases: [rel]}), ["pi4,coral → r7 digits@3"]);
console.log("ok");
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_js_helpers_under_node(tmp_path: Path) -> None:
    script = tmp_path / "check.js"
    script.write_text(_NODE_CHECKS % json.dumps(str(STATIC_DIR / "console.js")))
    done = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"

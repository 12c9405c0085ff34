"""The operator web console at /console: served with strict security headers, no inline script, text-only
DOM writes, and every REST call it makes exists in the server's OpenAPI schema with the method it uses."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fleet_server.console.routes import STATIC_DIR
from tests.helpers.inproc import LiveServer

SCRIPTS = [
    "console.js",
    "charts.js",
    "widgets.js",
    "views-fleet.js",
    "views-delivery.js",
    "views-learning.js",
    "app.js",
]  # the console's own code, in load order
CORE = (STATIC_DIR / "console.js").read_text()  # the ENDPOINTS table and the pure helpers
JS = "\n".join((STATIC_DIR / name).read_text() for name in SCRIPTS)
HTML = (STATIC_DIR / "index.html").read_text()
VENDOR = ["vendor/uPlot.iife.min.js", "vendor/uPlot.min.css", "vendor/LICENSE"]
# Streams (text/event-stream) are not plain JSON reads: a GET on them would not end.
STREAMS = {"events"}

_TABLE = re.compile(r"const ENDPOINTS = Object\.freeze\(\{\n(?P<body>.*?)\n\s*\}\);", re.S)
_ENTRY = re.compile(r'^\s*(\w+): \["(GET|POST|PUT|PATCH|DELETE)", "(/api/v1/[^"]*)"\],$')


def _endpoints() -> dict[str, tuple[str, str]]:
    """name -> (method, path) from the JS's ENDPOINTS table; every line of the table must parse."""
    found = _TABLE.search(CORE)
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
    assert [s.get("src") for s in scan.scripts] == [f"/console/static/{n}" for n in [VENDOR[0], *SCRIPTS]]
    assert scan.stylesheets == ["/console/static/vendor/uPlot.min.css", "/console/static/console.css"]
    scripts = [(str(s["src"]), "text/javascript") for s in scan.scripts]
    for path, media in [*scripts, *((css, "text/css") for css in scan.stylesheets)]:
        r = server.client.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"] == f"{media}; charset=utf-8"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "script-src 'self'" in r.headers["content-security-policy"]
    served = "\n".join(server.client.get(f"/console/static/{n}").text for n in SCRIPTS)
    assert served == JS
    licence = server.client.get("/console/static/vendor/LICENSE")
    assert licence.status_code == 200 and "MIT" in licence.text


def test_vendored_uplot_matches_its_version_file() -> None:
    """vendor/VERSION (written by scripts/vendor_uplot.py) pins the version and each file's sha256."""
    lines = (STATIC_DIR / "vendor" / "VERSION").read_text().splitlines()
    assert lines[0].startswith("uplot 1.")
    pinned = {parts[2]: parts[1] for parts in (line.split() for line in lines) if parts[0] == "sha256"}
    assert sorted(pinned) == sorted(Path(v).name for v in VENDOR)
    for name, digest in pinned.items():
        assert hashlib.sha256((STATIC_DIR / "vendor" / name).read_bytes()).hexdigest() == digest, name
    vendored = (STATIC_DIR / "vendor" / "uPlot.iife.min.js").read_text()
    for sink in ("innerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in vendored, sink  # the library writes no markup and runs no strings either


@pytest.mark.parametrize(
    "path",
    [
        "/console/static/nope.js",
        "/console/static/index.html",
        "/console/static/..%2Froutes.py",
        "/console/static/",
        "/console/static/vendor/VERSION",
        "/console/static/vendor/nope.js",
        "/console/static/vendor/..%2F..%2Froutes.py",
    ],
)
def test_only_the_console_files_are_served(server: LiveServer, path: str) -> None:
    assert server.client.get(path).status_code == 404


def test_every_endpoint_the_js_calls_is_in_the_openapi_schema(server: LiveServer) -> None:
    paths = server.client.get("/openapi.json").json()["paths"]
    endpoints = _endpoints()
    assert {
        "me",
        "events",
        "fleet_summary",
        "fleet_devices",
        "device_series",
        "device_labels",
        "device_revoke",
        "bootstrap_create",
        "releases",
        "episodes",
        "runs",
        "run",
        "run_start",
        "run_cancel",
        "models",
        "model_approve",
        "audit",
        "audit_verify",
        "rollouts",
        "rollout",
        "rollout_create",
        "rollout_gates",
        "rollout_pause",
        "rollout_resume",
        "rollout_abort",
        "rollout_rollback",
    } <= set(endpoints)
    for name, (method, path) in endpoints.items():
        assert path in paths, f"{name}: {path} is not a route of the server"
        assert method.lower() in paths[path], f"{name}: {path} has no {method}"


def _concrete(template: str) -> str:
    path = re.sub(r"\{(seq|version)\}", "999999", template)
    return re.sub(r"\{\w+\}", "no-such-id", path)


def test_data_endpoints_require_auth_and_a_viewer_can_read_them(server: LiveServer) -> None:
    for name, (method, template) in _endpoints().items():
        if method != "GET" or name in STREAMS:
            continue
        path = _concrete(template)
        assert server.client.get(path).status_code == 401, name
        assert server.client.get(path, headers={"Authorization": "Bearer op_forged"}).status_code == 401, name
        r = server.client.get(path, headers=server.auth("viewer"))
        assert r.status_code in (200, 404), (name, r.status_code, r.text)  # 404 only for the made-up id


def test_actions_the_page_offers_are_refused_to_a_viewer(server: LiveServer) -> None:
    """The page hides these buttons from viewers; the server refuses them anyway (403, never 2xx)."""
    bodies = {"device_labels": {"labels": {"a": "b"}}, "rollout_create": {"releases": [1]}, "run_start": {}}
    for name, (method, template) in _endpoints().items():
        if method == "GET":
            continue
        r = server.client.request(
            method, _concrete(template), json=bodies.get(name, {}), headers=server.auth("viewer")
        )
        assert r.status_code == 403, (name, r.status_code, r.text)
        assert "Traceback" not in r.text


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
    assert "textContent" in JS
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in JS, sink
    assert not re.search(r"setAttribute\(\s*['\"](on|style)", JS)


def test_js_talks_to_the_api_only_through_the_table() -> None:
    endpoints = _endpoints()
    called = set(re.findall(r"\b(?:api|stream)\(\"(\w+)\"", JS))
    assert called == set(endpoints), "every declared endpoint is used, every call is declared"
    assert JS.count("fetch(") == 1  # the one place requests are made, with the bearer header
    assert JS.count('"/api/v1') == len(endpoints)  # no API path outside the table
    assert "Authorization: `Bearer ${session.token}`" in JS
    assert "localStorage" not in JS and "document.cookie" not in JS  # the token stays in sessionStorage
    assert 'credentials: "omit"' in JS  # and no cookie ever rides along: state changes are CSRF-safe
    assert "EventSource" not in JS  # it cannot send the Authorization header


_NODE_CHECKS = """
const vm = require("vm"), fs = require("fs"), assert = require("assert");
const ctx = {URLSearchParams};  // what a browser window provides
vm.createContext(ctx);
vm.runInContext(fs.readFileSync(%s, "utf8"), ctx);
const C = ctx.EdgeloopConsole;
const eq = (a, b) => assert.deepStrictEqual(JSON.parse(JSON.stringify(a)), b);
const err = (f) => { try { f(); } catch (e) { return e.message; } throw new Error("no error"); };
eq(C.fillPath("/api/v1/federated/runs/{run_id}", {run_id: "a/b c"}), "/api/v1/federated/runs/a%%2Fb%%20c");
assert.throws(() => C.fillPath("/x/{id}", {}));
eq(C.withQuery("/d", {limit: 5, label: undefined, q: ""}), "/d?limit=5");
eq(C.withQuery("/d", {label: ["a=b", "c=d"], offset: 0}), "/d?label=a%%3Db&label=c%%3Dd&offset=0");
eq(C.fmtAgo(null, 0), "never");
eq(C.fmtAgo(95000, 100000), "5 s ago");
eq(C.fmtAgo("2026-01-01T00:00:00Z", Date.parse("2026-01-01T03:00:00Z")), "3 h ago");
eq(C.fmtUtc(Date.parse("2026-01-02T03:04:05Z")), "2026-01-02 03:04:05Z");
eq(C.fmtPct(0.9271), "92.7%%");
eq(C.fmtPct(null), "\\u2013");
eq(C.fmtBytes(2048), "2.0 KiB");
eq(C.labelsText({site: "plant-3", env: "prod"}), ["env=prod", "site=plant-3"]);
eq(C.servingModel({slots: [{slot: "default", model_name: "digits", model_version: "3"}]}), "digits@3");
// label edits: set, remove, and garbage refused with a message people can act on
eq(C.parseLabelEdits("site=plant-3, env = prod ,old-"), {site: "plant-3", env: "prod", old: null});
eq(C.parseLabelEdits(""), {});
assert.match(err(() => C.parseLabelEdits("justtext")), /not key=value/);
assert.match(err(() => C.parseLabelEdits("<b>=1")), /label key/);
assert.match(err(() => C.parseLabelEdits("a=1, a=2")), /twice/);
assert.match(err(() => C.parseLabelEdits("old-", {allowRemove: false})), /not key=value/);
// batch plans: device counts or cumulative percents
eq(C.parseBatchPlan("1, 5, 20"), {counts: [1, 5, 20]});
eq(C.parseBatchPlan("10%% 50%% 100%%"), {percents: [10, 50, 100]});
assert.match(err(() => C.parseBatchPlan("10%%, 50")), /either/);
assert.match(err(() => C.parseBatchPlan("50%%, 10%%, 100%%")), /cumulative/);
assert.match(err(() => C.parseBatchPlan("10%%, 50%%")), /100%%/);
assert.match(err(() => C.parseBatchPlan("two")), /not a number/);
assert.match(err(() => C.parseBatchPlan("0")), /whole numbers/);
assert.match(err(() => C.parseBatchPlan("")), /give the batches/);
// rollout actions offered per state (rollouts/states.py)
eq(C.rolloutActions("running"), ["pause", "abort", "rollback"]);
eq(C.rolloutActions("paused"), ["resume", "abort", "rollback"]);
eq(C.rolloutActions("rolled_back"), []);
eq(C.rolloutActions("nonsense"), []);
eq([C.roleAllows("viewer", "operator"), C.roleAllows("operator", "operator"),
    C.roleAllows("admin", "operator"), C.roleAllows(undefined, "viewer")], [false, true, true, false]);
eq(C.pageText(50, 50, 2000), "Showing 51\\u2013100 of 2000");
eq(C.pageText(0, 0, 0), "Showing 0 of 0");
eq(C.parseRoute("#/device/a%%2Fb"), {view: "device", arg: "a/b"});
eq(C.parseRoute("#/rollout/"), {view: "rollouts", arg: null});
eq(C.parseRoute("#/nope"), {view: "fleet", arg: null});
eq(C.parseRoute("#/device/%%E0%%A4%%A"), {view: "fleet", arg: null});
eq(C.routeHash("device", "a/b"), "#/device/a%%2Fb");
// the event-stream parser: split chunks, comments, multi-line data
const p = C.sseParser();
eq(p.feed(": ping\\n\\nevent: fleet\\ndata: {\\"online\\""), []);
eq(p.feed(": 3}\\n\\nevent: run\\r\\ndata: a\\r\\ndata: b\\r\\n\\r\\n"),
   [{event: "fleet", data: "{\\"online\\": 3}"}, {event: "run", data: "a\\nb"}]);
eq([1, 2, 3, 10].map(C.backoffMs), [1000, 2000, 4000, 30000]);
const vs = [
  {name: "m", version: 1, parent_version: null, releases: {}},
  {name: "m", version: 2, parent_version: 1, releases: {
    pi: {release_seq: 4, deployment_id: "dep_a", devices: ["a", "b"]},
    coral: {release_seq: 5, deployment_id: "dep_b", devices: ["b", "c"]},
  }},
  {name: "m", version: 3, parent_version: 2, releases: {}},
];
eq(C.lineageChain(vs, "m", 3), [1, 2, 3]);
eq(C.lineageChain([{name: "m", version: 1, parent_version: 1}], "m", 1), [1]);
eq(C.releasedTo(vs[1]), 3);
const v = {name: "digits", version: 2, status: "released",
  datasets: {calib_sha256: "c".repeat(64), eval_sha256: ""},
  lineage: {run_id: "run1", rounds: [{round_id: "run1:1"}, {round_id: "run1:2"}],
            final_digest: "f".repeat(64), epsilon: 1.5, delta: 1e-5, secure_aggregation: true,
            participants_max: 4},
  artifacts: {pi: {recipe: "int8", accuracy: 0.91, report_sha256: "r".repeat(64),
                   artifact_sha256: "a".repeat(64)}},
  releases: {pi: {release_seq: 7}}};
eq(C.provenance(v).map((s) => [s.step, s.items.length]),
   [["Data", 1], ["Federated round", 4], ["Compiler report", 1], ["Signed bytes", 1]]);
assert.match(C.provenance(v)[3].items[0], /signed as release 7/);
const card = C.modelCard(v);
assert.match(card, /^Model card: digits@2/);
assert.match(card, /secure aggregation: yes/);
assert.match(card, /pi: int8/);
const rounds = [{server_round: 1, sampled: 3, results: 2, failures: 1, epsilon: 0.5,
                 metrics: {server_accuracy: 0.8, note: "x"},
                 anomaly_scores: {a: 0.1, b: 0.2}},
                {server_round: 2, sampled: 3, results: 3, failures: 0, epsilon: 0.9, metrics: {},
                 anomaly_scores: {a: 0.1}}];
const s = C.roundSeries(rounds);
eq([s.rounds, s.results, s.metrics], [[1, 2], [2, 3], {server_accuracy: [0.8, null]}]);
eq(C.accuracyKey({loss: 1, train_acc: 2}), "train_acc");
eq(C.accuracyKey({server_accuracy: 1, train_acc: 2}), "server_accuracy");
eq(C.epsilonPerDevice(rounds), [{device: "a", epsilon: 0.9}, {device: "b", epsilon: 0.5}]);
eq(Object.keys(C.gatesByName([{gate: "x", look: 1}, {gate: "y", look: 1}, {gate: "x", look: 2}])).sort(),
   ["x", "y"]);
eq(C.actorText({kind: "operator", id: "t1", name: "alice", role: "admin"}), "operator alice (admin)");
eq(C.actorText({kind: "system", id: "registry", name: "registry", role: ""}), "system registry");
eq(C.detailsText({status: 201, b: {x: [1]}, a: "y".repeat(200)}, 12),
   ["a=yyyyyyyyyy…", 'b={"x":[1]}', "status=201"]);
eq(C.chainStatus({ok: true, entries: 5, head_seq: 5, signatures: 1, last_signed_seq: 4, broken_seq: null,
                  reason: ""}),
   {ok: true, text: "Chain verified: 5 entries up to seq 5; 1 head signature(s), last signed seq 4"});
eq(C.chainStatus({ok: false, entries: 3, head_seq: 9, signatures: 0, last_signed_seq: 0, broken_seq: 3,
                  reason: "hash mismatch"}), {ok: false, text: "Chain BROKEN at 3: hash mismatch"});
eq(C.chainStatus(null).ok, false);
eq([C.auditAfterSeq(50), C.auditAfterSeq(1234), C.auditAfterSeq(undefined)], [0, 1034, 0]);
eq(C.runOutcome({status: "failed", detail: "server restarted mid-run"}), "failed: server restarted mid-run");
eq(C.countsText({pending: 5, committed: 3, failed: 0}), "committed 3 · pending 5");
eq([C.batchText({batch: -1, batches: 4}), C.batchText({batch: 1, batches: 4})],
   ["Batch 0 of 4", "Batch 2 of 4"]);
eq(C.rolloutReleases({releases: [{seq: 7, profiles: ["pi4", "coral"], model_name: "digits",
                                  model_version: "3"}]}),
   ["pi4,coral → r7 digits@3"]);
// errors: the server's detail, a 422's field list, never a stack trace
eq(C.errorText(409, {detail: "rollout is paused"}), "rollout is paused");
eq(C.errorText(422, {detail: [{loc: ["body", "rounds"], msg: "too big"}]}), "rounds: too big");
eq(C.errorText(500, {detail: "Traceback (most recent call last):\\n  File x"}),
   "internal error (details in the server log)");
eq(C.errorText(502, null, "Bad Gateway"), "Bad Gateway");
console.log("ok");
"""


def test_js_helpers_under_node(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "node runs the console's helper checks (Debian package nodejs)"
    script = tmp_path / "check.js"
    script.write_text(_NODE_CHECKS % json.dumps(str(STATIC_DIR / "console.js")))
    done = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_every_script_parses(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node
    for name in SCRIPTS:
        done = subprocess.run(
            [node, "--check", str(STATIC_DIR / name)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (name, done.stderr)

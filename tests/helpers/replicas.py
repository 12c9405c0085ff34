"""N `edgeloop-server` replicas on one PostgreSQL database behind a TCP (L4) balancer, for the
replica end-to-end tests and the replica bench (issue 16).

- `Balancer`: a TCP balancer, TLS passes through untouched (as a cloud L4 balancer does). In a
  thread of the caller (`with Balancer(routes):`) or as its own process (`BalancerProc`, so its
  CPU is not the caller's and the GIL is not shared with a load generator).
- `Replicas`: one `edgeloop-server init` seeds the key material (fleet CA + server certificate,
  then the TUF keys, OTA access key and audit head key the first replica creates at start); every
  replica runs on the same PostgreSQL database. Either the replicas share one data directory, or
  (`separate=True`, needs an `artifact_store` every replica reaches) each has its own data
  directory with copies of the keys, as Kubernetes pods mounting the same Secrets would.
  `front` is a `ServerProc`-shaped view of the balancer for `AgentProc` and the fleet simulator.
  Each replica process gets a fresh `EDGELOOP_REPLICA_ID` (`r<i>-<start>-<random>`), so a
  restarted replica is a new holder, never mistaken for the one that died (nor for a replica of
  an earlier cluster on the same database).
- Reads of the coordination tables (`leases`, `presence`, `live_replicas`) straight from
  PostgreSQL: which replica holds a lease or a device's session.

Owns processes, ports and files of a test cluster; asserts nothing about what the servers do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.net import free_port
from tests.helpers.procs import BIN, ServerProc, wait_until

ROOT = Path(__file__).resolve().parents[2]
# Key material every replica must share (Kubernetes: Secrets), relative to a data directory.
SHARED_KEYS = ("pki", "ota/keys", "ota/access.key", "audit/head_key.pem")


class Balancer:
    """A TCP load balancer: each listening port forwards every new connection to the next live
    backend of its list, round-robin (TLS passes through untouched, as with a cloud L4 balancer).

    `active[backend_port]` counts the connections open to each backend now."""

    def __init__(self, routes: dict[int, list[int]]) -> None:
        self.routes = routes
        self.active: dict[int, int] = {b: 0 for backends in routes.values() for b in backends}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._next = dict.fromkeys(routes, 0)

    def __enter__(self) -> Balancer:
        self._thread.start()
        for port in self.routes:
            asyncio.run_coroutine_threadsafe(self._listen(port), self._loop).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _listen(self, port: int) -> None:
        await asyncio.start_server(lambda r, w: self._serve(port, r, w), "127.0.0.1", port, backlog=4096)

    async def _serve(self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backends = self.routes[port]
        start = self._next[port] = (self._next[port] + 1) % len(backends)
        for i in range(len(backends)):
            backend = backends[(start + i) % len(backends)]
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", backend)
                break
            except OSError:
                continue
        else:
            writer.close()
            return
        self.active[backend] += 1

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        finally:
            self.active[backend] -= 1


class BalancerProc:
    """`Balancer` in its own process (`python -m tests.helpers.replicas --route 8080=9001,9002`)."""

    def __init__(self, routes: dict[int, list[int]], log: Path | None = None) -> None:
        self.routes = routes
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BalancerProc:
        args = [f"{port}={','.join(map(str, backends))}" for port, backends in self.routes.items()]
        cmd = [sys.executable, "-m", "tests.helpers.replicas", *(x for a in args for x in ("--route", a))]
        err = open(self.log, "ab") if self.log else subprocess.DEVNULL  # the child holds it
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, env=dict(os.environ, PYTHONPATH=str(ROOT))
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != b"READY":
            raise RuntimeError(f"balancer did not start: {line!r}")
        return self

    def __exit__(self, *_: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@dataclass
class Replicas:
    """`n` replicas on `database_url` behind a balancer (see the module docstring).

    `start()` then use `front` (REST, enrollment, Sync through the balancer) and `servers[i]`
    (one replica directly); `kill(i)` SIGKILLs one, `restart(i)` starts it again (new replica id)."""

    root: Path
    database_url: str
    n: int = 2
    separate: bool = False  # own data dir per replica (copied keys); needs artifact_store
    artifact_store: str = ""  # EDGELOOP_ARTIFACT_STORE of every replica ("" = its data dir)
    env: dict[str, str] = field(default_factory=dict)  # extra EDGELOOP_* for every replica
    balancer_process: bool = False  # BalancerProc instead of a thread of the caller
    start_timeout_s: float = 180.0  # /healthz of a replica on a loaded 2-core box
    broker: Any = None  # the MQTT broker (tests.helpers.broker.Broker) the replicas share, if any
    servers: list[ServerProc] = field(default_factory=list)
    front: ServerProc = field(init=False)
    replica_ids: list[str] = field(default_factory=list)
    admin_token: str = ""
    _starts: int = 0
    _balancer: Balancer | BalancerProc | None = None

    def __post_init__(self) -> None:
        if self.separate and not self.artifact_store:
            raise ValueError("separate data dirs need a shared artifact_store (file:// or s3://)")
        seed = self.root / "replica-0"
        for i in range(self.n):
            data = seed if i == 0 or not self.separate else self.root / f"replica-{i}"
            env = {"EDGELOOP_LEASE_TTL_S": "6", "EDGELOOP_REPLICA_TTL_S": "6", **self.env}
            if self.artifact_store:
                env["EDGELOOP_ARTIFACT_STORE"] = self.artifact_store
            self.servers.append(ServerProc(data, database_url=self.database_url, env_extra=env))
            self.replica_ids.append("")
        self.front = ServerProc(seed, http_port=free_port(), enroll_port=free_port(), device_port=free_port())

    # ---------------------------------------------------------------- lifecycle

    @property
    def routes(self) -> dict[int, list[int]]:
        f, s = self.front, self.servers
        return {
            f.http_port: [x.http_port for x in s],
            f.enroll_port: [x.enroll_port for x in s],
            f.device_port: [x.device_port for x in s],
        }

    @property
    def seeded(self) -> bool:
        return bool(self.admin_token) and (self.servers[0].data_dir / "pki" / "ca.pem").exists()

    def seed(self) -> str:
        """`edgeloop-server init` into the first replica's data dir (fleet CA, server certificate,
        schema, admin token), unless done: what a broker config needs before the replicas start."""
        if not self.seeded:
            self.servers[0].data_dir.mkdir(parents=True, exist_ok=True)
            self.admin_token = self.servers[0].init()
        for s in (*self.servers, self.front):
            s.admin_token = self.admin_token
        return self.admin_token

    def start(self) -> Replicas:
        """Seed (unless done: `seed()`, or `admin_token` given and the data dir holds a CA, as when
        the bench starts a cluster again on the same data dir and database), start every replica,
        then the balancer."""
        self.seed()
        seed = self.servers[0]
        self._launch(0)
        if self.separate or not (seed.data_dir / "ota" / "keys" / "keys.json").exists():
            self._wait_healthy(0)  # creates the TUF keys, OTA access key, audit head key once
        for i in range(1, self.n):
            if self.separate:
                copy_keys(seed.data_dir, self.servers[i].data_dir)
            self._launch(i)
        for i in range(self.n):
            self._wait_healthy(i)
        self._balancer = (BalancerProc(self.routes, self.root / "balancer.log") if self.balancer_process
                          else Balancer(self.routes))  # fmt: skip
        self._balancer.__enter__()
        return self

    def __enter__(self) -> Replicas:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        for s in self.servers:
            if s.proc is not None and s.proc.poll() is None:
                try:
                    s.stop()
                except subprocess.TimeoutExpired:
                    s.proc.kill()
                    s.proc.wait(10)
        if self._balancer is not None:
            self._balancer.__exit__()
            self._balancer = None

    def _launch(self, i: int) -> None:
        s = self.servers[i]
        self._starts += 1
        rid = f"r{i}-{self._starts}-{secrets.token_hex(2)}"  # never an id an earlier process had
        self.replica_ids[i] = s.env_extra["EDGELOOP_REPLICA_ID"] = rid
        s.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(s.data_dir / f"replica-{i}.log", "ab")  # the child holds it
        s.proc = subprocess.Popen([BIN / "edgeloop-server", "run"], env=s.env(), stdout=log, stderr=log)

    def _wait_healthy(self, i: int) -> None:
        s = self.servers[i]

        def healthy() -> bool:
            assert s.proc is not None
            if s.proc.poll() is not None:
                raise AssertionError(f"replica {i} exited with {s.proc.returncode}; see {s.data_dir}")
            try:
                return httpx.get(s.url + "/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, self.start_timeout_s, interval=0.2, what=f"replica {i} /healthz")

    def kill(self, i: int) -> float:
        """SIGKILL replica `i`; returns the wall-clock time of the kill."""
        s = self.servers[i]
        assert s.proc is not None
        s.proc.send_signal(signal.SIGKILL)
        at = time.time()
        s.proc.wait(10)
        return at

    def restart(self, i: int) -> None:
        self._launch(i)
        self._wait_healthy(i)

    def alive(self, i: int) -> bool:
        p = self.servers[i].proc
        return p is not None and p.poll() is None

    def index_of(self, replica_id: str | None) -> int | None:
        return self.replica_ids.index(replica_id) if replica_id in self.replica_ids else None

    def pids(self) -> list[int]:
        return [s.proc.pid for s in self.servers if s.proc is not None and s.proc.poll() is None]

    @property
    def balancer_pid(self) -> int | None:
        return self._balancer.pid if isinstance(self._balancer, BalancerProc) else None

    # ---------------------------------------------------------------- REST and the database

    def api(self, method: str, path: str, *, via: int | None = None, **kw: Any) -> Any:
        """One REST call through the balancer (`via=None`) or to replica `via`; asserts < 400."""
        server = self.front if via is None else self.servers[via]
        with server.api(self.admin_token) as api:
            resp = api.request(method, path, **kw)
        assert resp.status_code < 400, (method, path, resp.status_code, resp.text)
        return resp.json() if resp.content else None

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of `sql` on the replicas' database; [] if a coordination table does not exist yet."""
        import psycopg

        with psycopg.connect(pg_dsn(self.database_url), autocommit=True) as conn:
            try:
                return list(conn.execute(sql, params).fetchall())
            except psycopg.errors.UndefinedTable:
                return []

    def leases(self) -> dict[str, Lease]:
        rows = self.query("SELECT name, holder, token, acquired_at, expires_at FROM coordination_lease")
        return {r[0]: Lease(*r) for r in rows}

    def live_replicas(self) -> dict[str, datetime]:
        return {str(r[0]): r[1] for r in self.query("SELECT id, heartbeat_at FROM server_replica")}

    def holder_of(self, device_id: str) -> int | None:
        """Index of the replica holding `device_id`'s gRPC session: its `device_presence` row, else
        (no coordination yet: online is per process) the one replica that says it is online."""
        rows = self.query("SELECT replica_id FROM device_presence WHERE device_id = %s", device_id)
        if rows and rows[0][0] is not None:
            return self.index_of(rows[0][0])
        online = [
            i for i in range(self.n)
            if self.alive(i) and self.api("GET", f"/devices/{device_id}", via=i)["online"]
        ]  # fmt: skip
        return online[0] if len(online) == 1 else None

    def trusted_root(self, dest: Path) -> Path:
        """The repository's first root.json (what a device is provisioned with), fetched through
        the balancer: with separate data dirs no replica's disk is the one to read."""
        with self.front.api(self.admin_token) as api:
            resp = api.get(self.front.url + "/ota/metadata/1.root.json")
        resp.raise_for_status()
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(resp.content)
        return dest


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    token: int
    acquired_at: datetime
    expires_at: datetime

    @property
    def acquired_s(self) -> float:
        """`acquired_at` as a Unix time (a naive timestamp is UTC, as the server writes it)."""
        at = self.acquired_at
        return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def copy_keys(src: Path, dst: Path) -> None:
    """Copy the key material of `SHARED_KEYS` (what exists of it) from one data dir to another."""
    for rel in SHARED_KEYS:
        s, d = src / rel, dst / rel
        if s.is_dir():
            shutil.copytree(s, d, dirs_exist_ok=True)
        elif s.exists():
            d.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s, d)


def pg_dsn(url: str) -> str:
    """A libpq URL from an SQLAlchemy one (`postgresql+psycopg://` -> `postgresql://`)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+')[0]}{sep}{rest}"


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TCP balancer: --route LISTEN=BACKEND,BACKEND ...")
    parser.add_argument("--route", action="append", required=True)
    ns = parser.parse_args(argv)
    routes = {int(p): [int(b) for b in bs.split(",")] for p, _, bs in (r.partition("=") for r in ns.route)}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Balancer(routes) as lb:
        print("READY", flush=True)
        while not stop.wait(5):
            print(json.dumps(lb.active), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())

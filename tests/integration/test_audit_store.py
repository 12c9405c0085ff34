"""The SQL audit log on real SQLite and PostgreSQL: concurrent appenders (threads and processes)
make one chain; raw-SQL edits, deletions, reorderings and insertions are found at their link."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from fleet_server.audit.chain import Actor, Source, Target
from fleet_server.audit.keys import AuditKey
from fleet_server.audit.store import SqlAuditLog
from fleet_server.db import make_engine
from fleet_server.migrate import upgrade
from fleet_server.settings import Settings

_APPENDER = """
import sys
from fleet_server.audit.chain import Actor
from fleet_server.audit.store import SqlAuditLog
from fleet_server.db import make_engine
log = SqlAuditLog(make_engine(sys.argv[1]))
for i in range(int(sys.argv[3])):
    log.record(Actor.system(sys.argv[2]), "test.append", details={"i": i})
"""


@pytest.fixture
def engine(tmp_path: Path, database_url: str) -> Engine:
    url = Settings(data_dir=tmp_path, database_url=database_url).resolved_database_url()
    eng = make_engine(url)
    upgrade(eng)
    return eng


def _fill(log: SqlAuditLog, n: int) -> None:
    for i in range(n):
        log.record(
            Actor.operator("t1", "alice", "operator"),
            "release.deploy",
            Target("release", str(i)),
            {"devices": [f"d{i}"]},
            Source("127.0.0.1", "pytest"),
        )


def test_threads_appending_make_one_intact_chain(engine: Engine) -> None:
    log = SqlAuditLog(engine, AuditKey.generate())
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            for i in range(25):
                log.record(Actor.system(name), "test.append", details={"i": i})
                if i % 10 == 0:
                    log.sign_head()
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(f"w{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    log.sign_head()
    report = log.verify()
    assert report.ok, report.reason
    assert (report.entries, report.head_seq) == (100, 100)
    assert report.signatures >= 2 and report.last_signed_seq == 100
    seqs = [e.seq for e in log.iter_all(batch=7)]
    assert seqs == list(range(1, 101))
    assert {e.actor.id for e in log.iter_all()} == {"w0", "w1", "w2", "w3"}
    assert all(e.ts.tzinfo is not None for e in log.page(limit=5))


def test_processes_appending_make_one_intact_chain(engine: Engine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    procs = [
        subprocess.Popen([sys.executable, "-c", _APPENDER, url, f"p{k}", "30"], stderr=subprocess.PIPE)
        for k in range(3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
    log = SqlAuditLog(engine)
    report = log.verify()
    assert report.ok, report.reason
    assert report.entries == 90
    by_actor: dict[str, list[int]] = {}
    for e in log.iter_all():
        by_actor.setdefault(e.actor.id, []).append(e.details["i"])
    assert by_actor == {f"p{k}": list(range(30)) for k in range(3)}


def _tamper(engine: Engine, sql: str, **params: object) -> None:
    with engine.begin() as conn:
        for statement in sql.split(";"):
            conn.execute(text(statement), params)


@pytest.mark.parametrize(
    ("sql", "broken", "reason"),
    [
        (
            'UPDATE audit_entry SET details = \'{"devices": ["dX"]}\' WHERE seq = 4',
            4,
            "does not match its hash",
        ),
        ("UPDATE audit_entry SET actor_name = 'mallory' WHERE seq = 5", 5, "does not match its hash"),
        ("DELETE FROM audit_entry WHERE seq = 3", 3, "entry 3 is missing"),
        (
            "UPDATE audit_entry SET seq = -4 WHERE seq = 4; UPDATE audit_entry SET seq = 4 WHERE seq = 5;"
            " UPDATE audit_entry SET seq = 5 WHERE seq = -4",
            4,
            "does not match its hash",
        ),
        ("UPDATE audit_entry SET seq = seq + 100 WHERE seq >= 6", 6, "entry 6 is missing"),
    ],
    ids=["edit-details", "edit-actor", "delete", "reorder", "gap"],
)
def test_raw_sql_tampering_is_found_at_its_link(engine: Engine, sql: str, broken: int, reason: str) -> None:
    log = SqlAuditLog(engine, AuditKey.generate())
    _fill(log, 8)
    log.sign_head()
    assert log.verify().ok
    _tamper(engine, sql)
    report = log.verify()
    assert (report.ok, report.broken_seq) == (False, broken), report
    assert reason in report.reason


def test_insert_in_the_middle_is_found(engine: Engine) -> None:
    log = SqlAuditLog(engine, AuditKey.generate())
    _fill(log, 6)
    _tamper(engine, "UPDATE audit_entry SET seq = seq + 1000 WHERE seq >= 4")
    _tamper(engine, "UPDATE audit_entry SET seq = seq - 999 WHERE seq >= 1004")
    with engine.begin() as conn:
        row = conn.execute(text("SELECT * FROM audit_entry WHERE seq = 3")).mappings().one()
        conn.execute(
            text(
                "INSERT INTO audit_entry (seq, ts, actor_kind, actor_id, actor_name, actor_role, action,"
                " target_kind, target_id, details, source_ip, source_agent, prev_hash, hash) VALUES (4, :ts,"
                " 'operator', 'x', 'mallory', 'admin', 'key.add', '', '', '{}', '', '', :prev, :h)"
            ),
            {"ts": row["ts"], "prev": row["hash"], "h": "f" * 64},
        )
    report = log.verify()
    assert (report.ok, report.broken_seq) == (False, 4)


def test_truncating_the_tail_is_found_by_the_head_and_its_signature(engine: Engine) -> None:
    log = SqlAuditLog(engine, AuditKey.generate())
    _fill(log, 5)
    assert log.sign_head() is not None
    assert log.sign_head() is None  # already signed at this head
    _tamper(engine, "DELETE FROM audit_entry WHERE seq = 5")
    report = log.verify()
    assert (report.ok, report.broken_seq) == (False, 5)
    # The attacker also moves the head back: the signature still names entry 5.
    with engine.begin() as conn:
        h4 = conn.execute(text("SELECT hash FROM audit_entry WHERE seq = 4")).scalar_one()
    _tamper(engine, "UPDATE audit_head SET seq = 4, hash = :h WHERE id = 1", h=h4)
    report = log.verify()
    assert (report.ok, report.broken_seq) == (False, 5)
    assert "signed but are gone" in report.reason


def test_a_signature_by_another_key_does_not_verify(engine: Engine) -> None:
    SqlAuditLog(engine, AuditKey.generate()).record(Actor.system("a"), "x")
    SqlAuditLog(engine, AuditKey.generate()).sign_head()
    report = SqlAuditLog(engine, AuditKey.generate()).verify()
    assert not report.ok
    assert "does not verify with the server key" in report.reason


def test_missing_head_row_is_recreated(engine: Engine) -> None:
    _tamper(engine, "DELETE FROM audit_head")
    log = SqlAuditLog(engine)
    assert log.record(Actor.system("a"), "x").seq == 1
    assert log.verify().ok

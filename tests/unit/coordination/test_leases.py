"""Lease semantics on SQLite with a hand-moved clock (PostgreSQL races: tests/integration/coordination)."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, update
from sqlmodel import Session

from fleet_server.coordination.leases import LeaseLost, LeaseStore
from fleet_server.coordination.models import CoordinationLease
from fleet_server.errors import ConflictError
from tests.unit.coordination.conftest import FakeClock


@pytest.fixture
def store(sqlite_engine: Engine, clock: FakeClock) -> LeaseStore:
    return LeaseStore(sqlite_engine, clock=clock)


def test_one_holder_at_a_time_and_reclaim_keeps_the_token(store: LeaseStore, clock: FakeClock) -> None:
    a = store.try_acquire("job", "a", 6)
    assert a is not None and a.token == 1 and a.holder == "a"
    assert store.try_acquire("job", "b", 6) is None
    clock.advance(3)
    again = store.try_acquire("job", "a", 6)
    assert again is not None and again.token == a.token and again.expires_at > a.expires_at
    assert store.current("job") == again


def test_expired_lease_is_taken_over_with_a_higher_token(store: LeaseStore, clock: FakeClock) -> None:
    a = store.try_acquire("job", "a", 6)
    assert a is not None
    clock.advance(6)
    assert store.current("job") is None
    b = store.try_acquire("job", "b", 6)
    assert b is not None and b.token == a.token + 1
    assert store.renew(a, 6) is None  # the old holder learns it lost
    assert store.renew(b, 6) is not None


def test_release_lets_another_claim_at_once(store: LeaseStore) -> None:
    a = store.try_acquire("job", "a", 60)
    assert a is not None
    store.release(a)
    store.release(a)  # idempotent
    assert store.current("job") is None
    b = store.try_acquire("job", "b", 60)
    assert b is not None and b.token == a.token + 1
    store.release(a)  # a stale release does not free b's lease
    assert store.current("job") == b


def test_tokens_strictly_increase_across_claims(store: LeaseStore, clock: FakeClock) -> None:
    tokens = []
    for i in range(5):
        grant = store.try_acquire("job", f"r{i % 2}", 1)
        assert grant is not None
        tokens.append(grant.token)
        clock.advance(1)
    assert tokens == sorted(set(tokens))


def test_renew_of_an_expired_lease_nobody_claimed_keeps_it(store: LeaseStore, clock: FakeClock) -> None:
    a = store.try_acquire("job", "a", 6)
    assert a is not None
    clock.advance(10)
    renewed = store.renew(a, 6)
    assert renewed is not None and renewed.token == a.token


def test_guard_passes_for_the_holder_and_fences_a_stale_one(
    store: LeaseStore, sqlite_engine: Engine, clock: FakeClock
) -> None:
    a = store.try_acquire("job", "a", 6)
    assert a is not None
    with Session(sqlite_engine) as session:
        store.guard(session, a)
        session.commit()
    clock.advance(7)
    with Session(sqlite_engine) as session, pytest.raises(LeaseLost):
        store.guard(session, a)  # expired, even before anyone claims it
    b = store.try_acquire("job", "b", 6)
    assert b is not None
    with Session(sqlite_engine) as session, pytest.raises(LeaseLost):
        store.guard(session, a)
    assert issubclass(LeaseLost, ConflictError)


def test_a_stolen_row_is_lost_to_renew_and_guard(store: LeaseStore, sqlite_engine: Engine) -> None:
    a = store.try_acquire("job", "a", 60)
    assert a is not None
    with sqlite_engine.begin() as conn:
        conn.execute(update(CoordinationLease.__table__).values(holder="thief", token=99))  # type: ignore[attr-defined]
    assert store.renew(a, 60) is None
    with Session(sqlite_engine) as session, pytest.raises(LeaseLost):
        store.guard(session, a)


def test_leases_are_independent_by_name(store: LeaseStore) -> None:
    assert store.try_acquire("one", "a", 6) is not None
    assert store.try_acquire("two", "b", 6) is not None


def test_holder_must_be_named(store: LeaseStore) -> None:
    with pytest.raises(ValueError):
        store.try_acquire("job", "", 6)

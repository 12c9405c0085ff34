"""Leases with fencing tokens: which replica runs a singleton job (`coordination_lease` rows).

A lease is one row per job name. Claiming it is one conditional UPDATE (free, expired or already
ours), so it is correct on PostgreSQL (row lock; a concurrent claimer re-checks the WHERE against the
winner's row and gets nothing) and on SQLite (writers serialise). Every claim by a new holder bumps
`token`, the fencing token: a holder that stalled past its expiry and was taken over still carries
the old token, and `guard` refuses it inside the transaction that would have written.

Expiry is judged with the database's clock on PostgreSQL (`clock_timestamp()`), so replicas need
not agree on the time; on SQLite (one host) with this host's. Tests inject `clock`.

`Singleton` runs one job under a lease on a thread (claim, renew, take over, release).

Does not run the jobs themselves or decide which jobs exist (each capability names its lease).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, case, func, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from fleet_server.coordination.models import CoordinationLease
from fleet_server.errors import ConflictError
from fleet_server.models import as_utc, utcnow

logger = logging.getLogger(__name__)

_T = CoordinationLease.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class LeaseGrant:
    """Proof that `holder` held `name` with fencing `token` until `expires_at` (UTC)."""

    name: str
    holder: str
    token: int
    expires_at: datetime


class LeaseLost(ConflictError):
    """The holder no longer holds the lease (expired, taken over or released): stop, write nothing."""


class LeaseStore:
    """Claims, renews, releases and checks leases in `coordination_lease`."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] | None = None) -> None:
        """`clock` None: the database's clock on PostgreSQL, this host's UTC clock on SQLite."""
        self._engine = engine
        self._clock = clock

    def try_acquire(self, name: str, holder: str, ttl_s: float) -> LeaseGrant | None:
        """Claim `name` for `holder` if it is free, expired or already ours.

        Returns the grant, or None when another holder has it. A new claim bumps the fencing
        token; re-claiming a live lease we hold keeps the token and extends the expiry.
        """
        if not holder:
            raise ValueError("a lease holder must be named")
        with self._engine.begin() as conn:
            now = db_now(conn, self._clock)
            expires = now + timedelta(seconds=ttl_s)
            ours_live = (_T.c.holder == holder) & (_T.c.expires_at > now)
            claim = (
                update(_T)
                .where(
                    _T.c.name == name,
                    or_(_T.c.holder == "", _T.c.expires_at.is_(None), _T.c.expires_at <= now, ours_live),
                )
                .values(
                    token=case((ours_live, _T.c.token), else_=_T.c.token + 1),
                    acquired_at=case(
                        (ours_live, _T.c.acquired_at), else_=literal(now, _T.c.acquired_at.type)
                    ),
                    holder=holder,
                    expires_at=expires,
                )
                .returning(_T.c.token)
            )
            token = conn.execute(claim).scalar_one_or_none()
            if token is None and _ensure_row(conn, name):  # first claim of this name ever
                token = conn.execute(claim).scalar_one_or_none()
            if token is None:
                return None
        logger.debug("lease claimed name=%s holder=%s token=%d ttl_s=%.1f", name, holder, token, ttl_s)
        return LeaseGrant(name, holder, int(token), expires)

    def renew(self, grant: LeaseGrant, ttl_s: float) -> LeaseGrant | None:
        """Extend a lease we still hold (same holder and token); None when it was lost.

        A lease that expired but that nobody claimed since still carries our token, so it renews:
        nobody else could have written under it.
        """
        with self._engine.begin() as conn:
            expires = db_now(conn, self._clock) + timedelta(seconds=ttl_s)
            result = conn.execute(
                update(_T)
                .where(_T.c.name == grant.name, _T.c.holder == grant.holder, _T.c.token == grant.token)
                .values(expires_at=expires)
            )
        if result.rowcount != 1:
            logger.info("lease lost name=%s holder=%s token=%d", grant.name, grant.holder, grant.token)
            return None
        return LeaseGrant(grant.name, grant.holder, grant.token, expires)

    def release(self, grant: LeaseGrant) -> None:
        """Give the lease up (graceful stop): another replica can claim it at once. Idempotent."""
        with self._engine.begin() as conn:
            conn.execute(
                update(_T)
                .where(_T.c.name == grant.name, _T.c.holder == grant.holder, _T.c.token == grant.token)
                .values(holder="", expires_at=None)
            )
        logger.debug("lease released name=%s holder=%s token=%d", grant.name, grant.holder, grant.token)

    def current(self, name: str) -> LeaseGrant | None:
        """The live grant on `name`, or None when it is free or expired."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(_T.c.holder, _T.c.token, _T.c.expires_at).where(_T.c.name == name)
            ).first()
            now = db_now(conn, self._clock)
        if row is None or not row.holder or row.expires_at is None:
            return None
        expires = as_utc(row.expires_at)
        if expires is None or expires <= now:
            return None
        return LeaseGrant(name, row.holder, int(row.token), expires)

    def guard(self, session: Session | Connection, grant: LeaseGrant) -> None:
        """Fencing inside the caller's transaction: raise LeaseLost unless `grant` is still live.

        On PostgreSQL the lease row is then share-locked until the caller's transaction ends, so no
        takeover commits between this check and the caller's writes. On SQLite the check is a no-op
        UPDATE, which takes the database write lock for the rest of the transaction.

        Raises:
            LeaseLost: the holder or token changed, or the lease expired.
        """
        conn = session.connection() if isinstance(session, Session) else session
        live = (
            _T.c.name == grant.name,
            _T.c.holder == grant.holder,
            _T.c.token == grant.token,
            _T.c.expires_at > db_now(conn, self._clock),
        )
        if conn.dialect.name == "postgresql":
            held = (
                conn.execute(select(_T.c.token).where(*live).with_for_update(read=True)).first() is not None
            )
        else:
            held = conn.execute(update(_T).where(*live).values(token=_T.c.token)).rowcount == 1
        if not held:
            raise LeaseLost(f"lease {grant.name!r} token {grant.token} no longer held by {grant.holder!r}")


def db_now(conn: Connection, clock: Callable[[], datetime] | None = None) -> datetime:
    """`clock()` if given; else the database's clock on PostgreSQL (`clock_timestamp()`: real
    time, not the transaction's start), this host's UTC clock on SQLite."""
    if clock is not None:
        return clock()
    if conn.dialect.name == "postgresql":
        value: datetime = conn.execute(select(func.clock_timestamp())).scalar_one()
        return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return utcnow()


def _ensure_row(conn: Connection, name: str) -> bool:
    """Create the free row of lease `name`; True when this call created it."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(_T).values(name=name, holder="", token=0).on_conflict_do_nothing(index_elements=["name"])
    return conn.execute(stmt.returning(_T.c.name)).first() is not None


class Singleton:
    """Runs a job on exactly one replica: claims `name`, renews it every `ttl_s / 3`, and while it
    is held elsewhere retries every `poll_s`.

    `on_acquired(grant)` runs on the singleton's thread when this replica becomes the holder; it
    must return quickly (start the job's own thread or task). `on_lost()` runs when the lease is
    lost (renew refused, or no successful renew for `ttl_s`) and at `stop()` while held: the job
    must stop writing. A job fences its writes with `store.guard(session, singleton.grant)`.
    `stop()` then releases the lease so another replica takes over at once.
    Takeover after a holder dies: at most `ttl_s + poll_s` (plus one claim's latency).
    """

    def __init__(
        self,
        store: LeaseStore,
        name: str,
        holder: str,
        *,
        ttl_s: float = 6.0,
        poll_s: float = 1.0,
        on_acquired: Callable[[LeaseGrant], None],
        on_lost: Callable[[], None],
    ) -> None:
        if not holder:
            raise ValueError(f"lease {name!r}: a Singleton needs a holder (the replica id)")
        self._store, self.name, self.holder = store, name, holder
        self._ttl_s, self._poll_s = ttl_s, poll_s
        self._on_acquired, self._on_lost = on_acquired, on_lost
        self._grant: LeaseGrant | None = None
        self._renewed_at = 0.0  # time.monotonic() of the last successful claim or renew
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def grant(self) -> LeaseGrant | None:
        """The current grant while this replica holds the lease, else None."""
        return self._grant

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop claiming; if held, call `on_lost` and release the lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._ttl_s + 5)
            self._thread = None
        grant = self._grant
        if grant is not None:
            self._lose("stopping")
            try:
                self._store.release(grant)
            except SQLAlchemyError as err:
                logger.warning(
                    "lease not released name=%s (it expires in %.0fs): %s", self.name, self._ttl_s, err
                )

    def _run(self) -> None:
        while not self._stop.is_set():
            held = self._step()
            self._stop.wait(self._ttl_s / 3 if held else self._poll_s)

    def _step(self) -> bool:
        """One claim or renew; returns whether the lease is held afterwards."""
        grant = self._grant
        try:
            if grant is None:
                return self._claim()
            renewed = self._store.renew(grant, self._ttl_s)
        except SQLAlchemyError as err:
            logger.warning("lease %s: database unreachable: %s", self.name, err)
            if grant is not None and time.monotonic() - self._renewed_at >= self._ttl_s:
                self._lose("not renewed within its ttl")
            return self._grant is not None
        if renewed is None:
            self._lose("renew refused (taken over or released)")
            return False
        self._grant, self._renewed_at = renewed, time.monotonic()
        return True

    def _claim(self) -> bool:
        started = time.monotonic()
        grant = self._store.try_acquire(self.name, self.holder, self._ttl_s)
        if grant is None:
            return False
        self._grant, self._renewed_at = grant, started
        logger.info("lease acquired name=%s holder=%s token=%d", self.name, self.holder, grant.token)
        try:
            self._on_acquired(grant)
        except Exception:
            logger.exception("lease %s: on_acquired failed; releasing", self.name)
            self._grant = None
            self._store.release(grant)
            return False
        return True

    def _lose(self, why: str) -> None:
        grant, self._grant = self._grant, None
        logger.info("lease lost name=%s holder=%s token=%s: %s", self.name, self.holder,
                    grant.token if grant else "-", why)  # fmt: skip
        try:
            self._on_lost()
        except Exception:
            logger.exception("lease %s: on_lost failed", self.name)

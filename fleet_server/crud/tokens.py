"""Operator tokens (roles) and one-time bootstrap tokens: their whole life in the database.

Owns minting (the secret is returned once; only its sha256 is stored), authentication (unknown,
revoked and expired tokens are refused, each with its own words), the rate-limited `last_used_at`
mark, rotation (a new secret for the same name and role; the old one revoked at once or after a
grace period, recorded as a `revoked_at` in the future), revocation (never of the last active
admin token), and the one-use consumption of bootstrap tokens. Does not own who may call these
(api/deps.py, the routes) nor the audit log (the routes record each change).

Every function that takes `now` uses it as the one clock of its decision, so tests pass a fixed
time instead of sleeping.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from fleet_server.errors import AuthError, ConflictError, ForbiddenError, InvalidRequestError, NotFoundError
from fleet_server.models import BootstrapToken, BootstrapTokenCreate, OperatorToken, as_utc, utcnow
from fleet_server.security import Role, hash_secret, new_token, role_allows, split_token

LAST_USED_EVERY = timedelta(seconds=60)
"""`last_used_at` is written at most this often per token, so the hot path stays a read."""


# ---------------------------------------------------------------- operator tokens


def _active(row: OperatorToken, now: datetime) -> bool:
    revoked, expires = as_utc(row.revoked_at), as_utc(row.expires_at)
    return (revoked is None or revoked > now) and (expires is None or expires > now)


def create_operator_token(
    *,
    session: Session,
    name: str,
    role: Role,
    created_by: str = "",
    ttl_s: int | None = None,
    rotated_from: str = "",
    now: datetime | None = None,
    commit: bool = True,
) -> tuple[OperatorToken, str]:
    """A new token; `ttl_s` None = never expires. Returns (row, full token: shown once)."""
    now = now or utcnow()
    token_id, token, digest = new_token("op")
    row = OperatorToken(
        id=token_id,
        name=name,
        role=role.value,
        secret_hash=digest,
        created_at=now,
        expires_at=None if ttl_s is None else now + timedelta(seconds=ttl_s),
        created_by=created_by[:64],
        rotated_from=rotated_from,
    )
    session.add(row)
    if commit:
        session.commit()
    return row, token


def authenticate_operator(*, session: Session, token: str, now: datetime | None = None) -> OperatorToken:
    """Raises: AuthError when the token is malformed, unknown, revoked or expired."""
    secret = split_token(token, "op")
    if secret is None:
        raise AuthError("malformed operator token")
    row = session.exec(select(OperatorToken).where(OperatorToken.secret_hash == hash_secret(secret))).first()
    if row is None:
        raise AuthError("unknown or revoked operator token")
    now = now or utcnow()
    revoked = as_utc(row.revoked_at)
    if revoked is not None and revoked <= now:
        raise AuthError(f"operator token revoked: {row.id} was revoked at {revoked.isoformat()}")
    expires = as_utc(row.expires_at)
    if expires is not None and expires <= now:
        raise AuthError(f"token expired: operator token {row.id} expired at {expires.isoformat()}")
    return row


def mark_used(*, session: Session, row: OperatorToken, now: datetime | None = None) -> bool:
    """Set `last_used_at` if it is older than LAST_USED_EVERY; commits. True if it wrote.

    The conditional UPDATE makes concurrent requests of one token write at most once.
    """
    now = now or utcnow()
    last = as_utc(row.last_used_at)
    if last is not None and now - last < LAST_USED_EVERY:
        return False
    result = session.execute(
        update(OperatorToken)
        .where(
            col(OperatorToken.id) == row.id,
            or_(
                col(OperatorToken.last_used_at).is_(None),
                col(OperatorToken.last_used_at) <= now - LAST_USED_EVERY,
            ),
        )
        .values(last_used_at=now)
    )
    session.commit()
    row.last_used_at = now
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def list_operator_tokens(*, session: Session) -> list[OperatorToken]:
    return list(session.exec(select(OperatorToken).order_by(col(OperatorToken.created_at).desc())))


def _managed(session: Session, token_id: str, actor: OperatorToken, verb: str) -> OperatorToken:
    row = session.get(OperatorToken, token_id)
    if row is None:
        raise NotFoundError(f"no operator token {token_id!r}")
    if not role_allows(actor.role, Role(row.role)):
        raise ForbiddenError(
            f"role {actor.role!r} may not {verb} token {row.id} of role {row.role!r}; needs {row.role!r}"
        )
    return row


def rotate_operator_token(
    *,
    session: Session,
    token_id: str,
    actor: OperatorToken,
    grace_s: int = 0,
    now: datetime | None = None,
) -> tuple[OperatorToken, str, OperatorToken]:
    """A new secret for token `token_id`'s name and role; the old one stops working after `grace_s`.

    The new token keeps the old one's lifetime (a 30-day token rotates into a 30-day token).
    Returns (new row, new full token, old row).

    Raises: NotFoundError, ForbiddenError (role above the actor's), ConflictError (already
    revoked or rotated, or expired), InvalidRequestError (negative grace).
    """
    if grace_s < 0:
        raise InvalidRequestError(f"grace_s must be >= 0, got {grace_s}")
    now = now or utcnow()
    old = _managed(session, token_id, actor, "rotate")
    revoked, expires = as_utc(old.revoked_at), as_utc(old.expires_at)
    if revoked is not None:
        raise ConflictError(
            f"operator token {old.id} is already revoked or rotated (at {revoked.isoformat()})"
        )
    if expires is not None and expires <= now:
        raise ConflictError(f"operator token {old.id} expired at {expires.isoformat()}; create a new one")
    created = as_utc(old.created_at)
    ttl_s = None
    if expires is not None:
        ttl_s = max(60, int((expires - (created or now)).total_seconds()))
    # Compare-and-set on revoked_at: two concurrent rotations of one token cannot both win.
    result = session.execute(
        update(OperatorToken)
        .where(col(OperatorToken.id) == old.id, col(OperatorToken.revoked_at).is_(None))
        .values(revoked_at=now + timedelta(seconds=grace_s))
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise ConflictError(f"operator token {old.id} was rotated or revoked concurrently")
    new, token = create_operator_token(
        session=session,
        name=old.name,
        role=Role(old.role),
        created_by=actor.name,
        ttl_s=ttl_s,
        rotated_from=old.id,
        now=now,
        commit=False,
    )
    session.commit()
    session.refresh(old)
    return new, token, old


def revoke_operator_token(
    *, session: Session, token_id: str, actor: OperatorToken, now: datetime | None = None
) -> OperatorToken:
    """Revoke at once (also brings forward a revocation scheduled by a rotation's grace period).

    Raises: NotFoundError, ForbiddenError (role above the actor's), ConflictError (already
    revoked; or the last active admin token, so nobody is locked out).
    """
    now = now or utcnow()
    row = _managed(session, token_id, actor, "revoke")
    revoked = as_utc(row.revoked_at)
    if revoked is not None and revoked <= now:
        raise ConflictError(f"operator token {row.id} is already revoked (at {revoked.isoformat()})")
    if row.role == Role.ADMIN.value and revoked is None:
        # Lock the active admin rows (PostgreSQL; SQLite serializes writers anyway), so two
        # concurrent revocations of the last two admin tokens cannot both pass this check.
        admins = session.exec(
            select(OperatorToken)
            .where(
                col(OperatorToken.role) == Role.ADMIN.value,
                col(OperatorToken.revoked_at).is_(None),
                or_(col(OperatorToken.expires_at).is_(None), col(OperatorToken.expires_at) > now),
            )
            .with_for_update()
        ).all()
        if not any(a.id != row.id for a in admins):
            session.rollback()
            raise ConflictError(
                f"refusing to revoke {row.id}: it is the last active admin token "
                "(create another admin token first, or rotate this one)"
            )
    result = session.execute(
        update(OperatorToken)
        .where(
            col(OperatorToken.id) == row.id,
            or_(col(OperatorToken.revoked_at).is_(None), col(OperatorToken.revoked_at) > now),
        )
        .values(revoked_at=now)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise ConflictError(f"operator token {row.id} was revoked concurrently")
    session.commit()
    session.refresh(row)
    return row


# ---------------------------------------------------------------- bootstrap tokens


def create_bootstrap_token(
    *, session: Session, spec: BootstrapTokenCreate, created_by: str
) -> tuple[BootstrapToken, str]:
    for key, value in spec.labels.items():
        if not key or len(key) > 63 or len(value) > 253:
            raise InvalidRequestError(f"invalid label {key!r}={value!r}")
    token_id, token, digest = new_token("bt")
    now = utcnow()
    row = BootstrapToken(
        id=token_id,
        secret_hash=digest,
        labels=dict(spec.labels),
        profile=spec.profile,
        created_by=created_by,
        created_at=now,
        expires_at=now + timedelta(seconds=spec.ttl_s),
    )
    session.add(row)
    session.commit()
    return row, token


def list_bootstrap_tokens(*, session: Session) -> list[BootstrapToken]:
    return list(session.exec(select(BootstrapToken).order_by(col(BootstrapToken.created_at).desc())))


def revoke_bootstrap_token(*, session: Session, token_id: str, now: datetime | None = None) -> BootstrapToken:
    """Revoke an unused bootstrap token: no device can enroll with it afterwards.

    Raises: NotFoundError; ConflictError when already revoked or already used (a used token
    enrolled a device: revoke the device instead).
    """
    now = now or utcnow()
    row = session.get(BootstrapToken, token_id)
    if row is None:
        raise NotFoundError(f"no bootstrap token {token_id!r}")
    revoked = as_utc(row.revoked_at)
    if revoked is not None:
        raise ConflictError(f"bootstrap token {row.id} is already revoked (at {revoked.isoformat()})")
    if row.used_at is not None:
        raise ConflictError(
            f"bootstrap token {row.id} was already used by device {row.used_by_device!r}; "
            "revoke the device instead"
        )
    result = session.execute(
        update(BootstrapToken)
        .where(
            col(BootstrapToken.id) == row.id,
            col(BootstrapToken.revoked_at).is_(None),
            col(BootstrapToken.used_at).is_(None),
        )
        .values(revoked_at=now)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise ConflictError(f"bootstrap token {row.id} was used or revoked concurrently")
    session.commit()
    session.refresh(row)
    return row


def consume_bootstrap_token(*, session: Session, token: str, device_id: str, profile: str) -> BootstrapToken:
    """Atomically mark a bootstrap token used by `device_id` (one use, before expiry, unrevoked).

    Does not commit: the caller commits together with the device row, so a failed enrollment
    does not burn the token.

    Raises:
        AuthError: malformed, unknown, revoked, expired, already used, or scoped to another profile.
    """
    secret = split_token(token, "bt")
    if secret is None:
        raise AuthError("malformed bootstrap token")
    row = session.exec(
        select(BootstrapToken).where(BootstrapToken.secret_hash == hash_secret(secret))
    ).first()
    if row is None:
        raise AuthError("unknown bootstrap token")
    now = utcnow()
    revoked = as_utc(row.revoked_at)
    if revoked is not None:
        raise AuthError(f"bootstrap token {row.id} was revoked at {revoked.isoformat()}")
    expires = as_utc(row.expires_at)
    if expires is not None and expires <= now:
        raise AuthError(f"bootstrap token {row.id} expired at {expires.isoformat()}")
    if row.used_at is not None:
        raise AuthError(f"bootstrap token {row.id} was already used")
    if row.profile and profile != row.profile:
        raise AuthError(f"bootstrap token {row.id} is scoped to profile {row.profile!r}, not {profile!r}")
    # Compare-and-set: two concurrent enrollments with one token cannot both win, and a
    # revocation that commits between the read above and this write wins over the enrollment.
    result = session.execute(
        update(BootstrapToken)
        .where(
            col(BootstrapToken.id) == row.id,
            col(BootstrapToken.used_at).is_(None),
            col(BootstrapToken.revoked_at).is_(None),
        )
        .values(used_at=now, used_by_device=device_id)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise AuthError(f"bootstrap token {row.id} was already used or revoked")
    return row

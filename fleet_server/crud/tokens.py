"""Operator tokens (roles) and one-time bootstrap tokens."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlmodel import Session, col, select

from fleet_server.errors import AuthError, InvalidRequestError
from fleet_server.models import BootstrapToken, BootstrapTokenCreate, OperatorToken, as_utc, utcnow
from fleet_server.security import Role, hash_secret, new_token, split_token


def create_operator_token(*, session: Session, name: str, role: Role) -> tuple[OperatorToken, str]:
    token_id, token, digest = new_token("op")
    row = OperatorToken(id=token_id, name=name, role=role.value, secret_hash=digest, created_at=utcnow())
    session.add(row)
    session.commit()
    return row, token


def authenticate_operator(*, session: Session, token: str) -> OperatorToken:
    """Raises: AuthError when the token is malformed, unknown or revoked."""
    secret = split_token(token, "op")
    if secret is None:
        raise AuthError("malformed operator token")
    row = session.exec(select(OperatorToken).where(OperatorToken.secret_hash == hash_secret(secret))).first()
    if row is None or row.revoked_at is not None:
        raise AuthError("unknown or revoked operator token")
    return row


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


def consume_bootstrap_token(*, session: Session, token: str, device_id: str, profile: str) -> BootstrapToken:
    """Atomically mark a bootstrap token used by `device_id` (one use, before expiry).

    Does not commit: the caller commits together with the device row, so a failed enrollment
    does not burn the token.

    Raises:
        AuthError: malformed, unknown, expired, already used, or scoped to another profile.
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
    expires = as_utc(row.expires_at)
    if expires is not None and expires <= now:
        raise AuthError(f"bootstrap token {row.id} expired at {expires.isoformat()}")
    if row.used_at is not None:
        raise AuthError(f"bootstrap token {row.id} was already used")
    if row.profile and profile != row.profile:
        raise AuthError(f"bootstrap token {row.id} is scoped to profile {row.profile!r}, not {profile!r}")
    # Compare-and-set: two concurrent enrollments with one token cannot both win.
    result = session.execute(
        update(BootstrapToken)
        .where(col(BootstrapToken.id) == row.id, col(BootstrapToken.used_at).is_(None))
        .values(used_at=now, used_by_device=device_id)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise AuthError(f"bootstrap token {row.id} was already used")
    return row

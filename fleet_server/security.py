"""Secrets for operator and bootstrap tokens: generation, hashing, role ordering.

Tokens look like `<kind>_<id>.<secret>`; only sha256(secret) is stored, so a database leak does
not leak usable tokens. Comparison happens on the hash through an indexed lookup.
"""

from __future__ import annotations

import hashlib
import secrets
from enum import StrEnum


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


def role_allows(have: str, need: Role) -> bool:
    try:
        return _RANK[Role(have)] >= _RANK[need]
    except ValueError:
        return False


def new_token(kind: str) -> tuple[str, str, str]:
    """Return (token_id, full_token, secret_hash)."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return token_id, f"{kind}_{token_id}.{secret}", hash_secret(secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_token(token: str, kind: str) -> str | None:
    """Return the secret part of a well-formed token of `kind`, else None."""
    prefix = f"{kind}_"
    if not token.startswith(prefix) or "." not in token or len(token) > 256:
        return None
    return token.split(".", 1)[1] or None

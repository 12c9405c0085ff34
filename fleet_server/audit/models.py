"""SQLModel tables of the audit log (changed together with migrations/versions/0010_audit_rollouts.py).

`audit_entry` is append-only: one row per recorded action, `seq` dense from 1, each row carrying the
previous row's hash. `audit_head` is a single row (id 1) holding the last seq and hash; appenders
lock it, so appends from several server processes are serialized by the database. `audit_signature`
holds the server's Ed25519 signatures over (seq, hash) of the head at signing time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Integer
from sqlmodel import Field, SQLModel

GENESIS_HASH = "0" * 64
HEAD_ID = 1


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit_entry"

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    ts: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    actor_kind: str = Field(max_length=16)  # operator | system | device | anonymous
    actor_id: str = Field(default="", max_length=128)
    actor_name: str = Field(default="", max_length=128)
    actor_role: str = Field(default="", max_length=16)
    action: str = Field(max_length=128, index=True)
    target_kind: str = Field(default="", max_length=64)
    target_id: str = Field(default="", max_length=256)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    source_ip: str = Field(default="", max_length=64)
    source_agent: str = Field(default="", max_length=256)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditHead(SQLModel, table=True):
    __tablename__ = "audit_head"

    id: int = Field(default=HEAD_ID, primary_key=True)
    seq: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    hash: str = Field(default=GENESIS_HASH, max_length=64)


class AuditSignature(SQLModel, table=True):
    __tablename__ = "audit_signature"

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    hash: str = Field(max_length=64)
    key_id: str = Field(max_length=64)
    signature: str = Field(max_length=256)  # hex Ed25519 signature over chain.head_message(seq, hash)
    signed_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))

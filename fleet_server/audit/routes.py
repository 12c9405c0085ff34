"""Audit REST routes: page through entries and verify the chain (viewer), export JSON Lines (admin).

Exporting is itself recorded (who took a copy of the log, and up to which entry).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from fleet_server.api.deps import Admin, Viewer
from fleet_server.audit.chain import Actor, Source, Target
from fleet_server.audit.store import MAX_PAGE, SqlAuditLog

router = APIRouter(prefix="/audit", tags=["audit"])

MAX_SEQ = 2**63 - 1


def get_audit(request: Request) -> SqlAuditLog:
    audit: SqlAuditLog = request.app.state.audit
    return audit


AuditDep = Annotated[SqlAuditLog, Depends(get_audit)]
AfterSeq = Annotated[int, Query(ge=0, le=MAX_SEQ, description="return entries with seq greater than this")]


class AuditPage(BaseModel):
    entries: list[dict[str, Any]]
    next_after_seq: int | None  # pass as after_seq for the next page; null when this page is the last


class AuditVerifyResult(BaseModel):
    ok: bool
    entries: int
    head_seq: int
    signatures: int
    last_signed_seq: int
    broken_seq: int | None
    reason: str


@router.get("", response_model=AuditPage)
def list_entries(
    audit: AuditDep,
    _: Viewer,
    after_seq: AfterSeq = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> AuditPage:
    rows = audit.page(after_seq=after_seq, limit=limit)
    nxt = rows[-1].seq if len(rows) == limit else None
    return AuditPage(entries=[e.to_dict() for e in rows], next_after_seq=nxt)


@router.get("/verify", response_model=AuditVerifyResult)
def verify_chain(audit: AuditDep, _: Viewer) -> AuditVerifyResult:
    return AuditVerifyResult(**audit.verify().to_dict())


class JsonLinesResponse(StreamingResponse):
    media_type = "application/x-ndjson"


_JSONL: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One audit entry (JSON object, with its hash) per line",
        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
    }
}


@router.get("/export", response_model=None, responses=_JSONL)
def export_entries(
    request: Request, audit: AuditDep, admin: Admin, after_seq: AfterSeq = 0
) -> JsonLinesResponse:
    """Every entry after `after_seq` as JSON Lines (one entry per line, with its hash)."""
    head = audit.head()
    client = request.client
    audit.record(
        Actor.operator(admin.id, admin.name, admin.role),
        "audit.export",
        Target("audit", ""),
        {"after_seq": after_seq, "head_seq": head[0] if head else 0},
        Source(client.host if client else "", request.headers.get("user-agent", "")),
    )

    def lines() -> Iterator[bytes]:
        for entry in audit.iter_all(after_seq=after_seq):
            yield json.dumps(entry.to_dict(), sort_keys=True, ensure_ascii=False).encode() + b"\n"

    return JsonLinesResponse(lines())

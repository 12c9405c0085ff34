"""Bounded parameter types for the REST API, written once and shared by every router.

Owns the numeric and string limits that the OpenAPI schema advertises and FastAPI/pydantic
enforce before a handler runs: integers fit the database's signed 64-bit columns (so a value
>= 2^63 is a 422 with a reason, never a driver overflow and a 500), page sizes are positive and
capped, and strings that land in columns are no longer than the column. Does not own domain
checks that need the database (unknown ids are a 404 from the services).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import Field, StringConstraints

INT64_MAX = 2**63 - 1  # BIGINT / SQLite INTEGER
INT32_MAX = 2**31 - 1  # INTEGER on PostgreSQL (model version numbers)
MAX_OFFSET = 10**9
ID_MAX_LEN = 128  # device ids, model names: the widest id column

LABEL_KEY_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9._/-]{0,62}$"
LABEL_VALUE_MAX_LEN = 253
LABEL_SELECTOR_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9._/-]{0,62}=[^\x00]{0,253}$"

# ------------------------------------------------------------------- numbers

Int64 = Annotated[int, Field(ge=0, le=INT64_MAX)]
"""A non-negative value stored in a BIGINT column (body fields)."""

Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="rows to skip")]
AfterSeq = Annotated[int, Query(ge=0, le=INT64_MAX, description="only rows with a larger seq")]
SinceMs = Annotated[int, Query(ge=0, le=INT64_MAX, description="unix milliseconds; 0 = all")]
ReleaseSeq = Annotated[int, Path(ge=1, le=INT64_MAX, description="release sequence number")]
RowId = Annotated[int, Path(ge=1, le=INT64_MAX, description="row id")]
VersionNo = Annotated[int, Path(ge=1, le=INT32_MAX, description="model version number")]


def page_size(maximum: int) -> Any:
    """`Query` metadata for a page size in 1..maximum: `limit: Annotated[int, page_size(500)] = 100`
    (zero or a negative limit is a 422, never "everything")."""
    return Query(ge=1, le=maximum, description=f"page size, 1-{maximum}")


# ------------------------------------------------------------------- strings

NoNul = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL

DeviceIdPath = Annotated[str, Path(max_length=ID_MAX_LEN, pattern=NoNul, description="device id")]
NamePath = Annotated[str, Path(max_length=ID_MAX_LEN, pattern=NoNul, description="model name")]
IdPath = Annotated[str, Path(max_length=64, pattern=NoNul, description="identifier")]
IdQuery = Annotated[str | None, Query(max_length=ID_MAX_LEN, pattern=NoNul)]

LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[str, StringConstraints(max_length=LABEL_VALUE_MAX_LEN, pattern=NoNul)]
_LABELS_SCHEMA = {"additionalProperties": False}  # keys outside the pattern are refused
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=64, json_schema_extra=_LABELS_SCHEMA)]
LabelChanges = Annotated[
    dict[LabelKey, LabelValue | None], Field(max_length=64, json_schema_extra=_LABELS_SCHEMA)
]
LabelSelector = Annotated[
    list[Annotated[str, StringConstraints(pattern=LABEL_SELECTOR_PATTERN)]] | None,
    Query(description="key=value; repeat to AND", max_length=64),
]

"""`S3Store`: the artifact store in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, moto).

An S3 PUT is atomic (the object appears whole or not at all); the conditional create is
``PutObject`` with ``If-None-Match: *`` (HTTP 412 when the key exists), which AWS S3 and current
MinIO honour. A store that ignores the header would silently overwrite: the TUF signer's fencing
(`fleet_server.ota.metadata_store`) then rests on the cross-replica lock alone, so use one that honours
it. Range reads stream the response body. Credentials come from the usual AWS_* environment (or an
instance role); boto3 is imported only when an S3 store is configured. Does not know what the
objects are.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fleet_server.artifacts.port import (
    CHUNK,
    ArtifactNotFoundError,
    ArtifactStoreError,
    ObjectInfo,
    check_key,
)

_MISSING = {"404", "NoSuchKey", "NotFound"}
_EXISTS = {"412", "PreconditionFailed"}


class S3Store:
    """Objects under ``s3://<bucket>/<prefix>``; `client` is a boto3 S3 client."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self._s3 = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    @classmethod
    def connect(cls, bucket: str, prefix: str = "", *, endpoint_url: str = "") -> S3Store:
        import boto3  # type: ignore[import-untyped]  # the server's s3 dependency, imported when configured
        from botocore.config import Config  # type: ignore[import-untyped]

        config = Config(retries={"max_attempts": 4, "mode": "standard"}, max_pool_connections=32)
        client = boto3.client("s3", endpoint_url=endpoint_url or None, config=config)
        return cls(client, bucket, prefix)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    # ------------------------------------------------------------ reads

    def get(self, key: str) -> bytes:
        with _errors(key):
            body: bytes = self._s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        return body

    def stat(self, key: str) -> ObjectInfo:
        with _errors(key):
            head = self._s3.head_object(Bucket=self.bucket, Key=self._key(key))
        return ObjectInfo(key, int(head["ContentLength"]))

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ArtifactNotFoundError:
            return False
        return True

    def open_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        if end <= start:
            self.stat(key)
            return iter(())
        with _errors(key):
            resp = self._s3.get_object(
                Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{end - 1}"
            )
        return _chunks(resp["Body"])

    def fetch_to(self, key: str, dest: Path) -> None:
        with _errors(key):
            resp = self._s3.get_object(Bucket=self.bucket, Key=self._key(key))
        tmp = dest.with_name(f".{dest.name}.part")
        with tmp.open("wb") as out:
            for block in _chunks(resp["Body"]):
                out.write(block)
        tmp.replace(dest)

    def list(self, prefix: str) -> Iterator[str]:
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        with _errors(prefix):
            for page in pages:
                for item in page.get("Contents", []):
                    yield str(item["Key"])[len(self.prefix) :]

    # ------------------------------------------------------------ writes

    def put(self, key: str, data: bytes) -> None:
        with _errors(key):
            self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_file(self, key: str, source: Path) -> None:
        with _errors(key), source.open("rb") as fh:
            self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=fh)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._create(key, data)

    def put_file_if_absent(self, key: str, source: Path) -> bool:
        if self.exists(key):  # content-addressed callers: skip the upload when it is there
            return False
        with source.open("rb") as fh:
            return self._create(key, fh)

    def delete(self, key: str) -> None:
        with _errors(key):
            self._s3.delete_object(Bucket=self.bucket, Key=self._key(key))

    def _create(self, key: str, body: Any) -> bool:
        from botocore.exceptions import ClientError  # type: ignore[import-untyped]

        try:
            self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=body, IfNoneMatch="*")
        except ClientError as err:
            if _code(err) in _EXISTS:
                return False
            raise ArtifactStoreError(f"S3 conditional put of {key} failed: {err}") from err
        except Exception as err:
            raise ArtifactStoreError(f"S3 conditional put of {key} failed: {err}") from err
        return True


class _errors:
    """Translate botocore failures: a missing key to ArtifactNotFoundError, the rest to
    ArtifactStoreError (as python-tuf's fetcher converts foreign exceptions at the port)."""

    def __init__(self, key: str) -> None:
        self._key = key

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, _tb: object) -> None:
        if err is None or not isinstance(err, Exception):
            return
        if isinstance(err, ArtifactNotFoundError | ArtifactStoreError | ValueError):
            return
        from botocore.exceptions import ClientError

        if isinstance(err, ClientError) and _code(err) in _MISSING:
            raise ArtifactNotFoundError(f"no artifact {self._key}") from None
        raise ArtifactStoreError(f"S3 request for {self._key} failed: {err}") from err


def _code(err: Any) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _chunks(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK)
    finally:
        body.close()

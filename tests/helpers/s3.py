"""A real S3-compatible endpoint for tests: moto in server mode on a free loopback port.

Tests talk to it over HTTP with boto3 exactly as the server does to AWS S3 or MinIO; nothing is
patched in-process. Credentials are dummies moto accepts.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "edgeloop-test",
    "AWS_SECRET_ACCESS_KEY": "edgeloop-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class MotoS3:
    endpoint_url: str
    bucket: str

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=S3_ENV["AWS_DEFAULT_REGION"],
        )

    def url(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix}".rstrip("/")


@contextmanager
def moto_s3() -> Iterator[MotoS3]:
    """A fresh moto S3 server with one empty bucket; AWS_* variables set for the process."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    try:
        host, port = server.get_host_and_port()
        s3 = MotoS3(f"http://{host}:{port}", f"edgeloop-{uuid.uuid4().hex[:10]}")
        s3.client().create_bucket(Bucket=s3.bucket)
        yield s3
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

"""A blob is named by its sha256: bytes changed in the store after the upload (someone who can
write to the bucket, a corrupt disk) are refused before they are signed into a release or
compiled, and the release flow says which blob and what to do."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from sqlmodel import Session

from fleet_server.db import make_engine
from fleet_server.errors import ConflictError
from fleet_server.federated.handoff import write_head_onnx
from fleet_server.migrate import upgrade
from fleet_server.ota.models import ReleaseCreate
from fleet_server.ota.releases import OtaService


def _upload(ota: OtaService, data: bytes) -> str:
    upload = ota.new_upload()
    upload.write_bytes(data)
    return ota.adopt_blob(upload)[0]


def test_a_blob_changed_in_the_store_is_refused_and_never_signed(tmp_path: Path) -> None:
    ota = OtaService(tmp_path / "ota")
    model = write_head_onnx(tmp_path / "m.onnx", np.ones((4, 3), np.float32), np.zeros(3, np.float32), {})
    sha = _upload(ota, model.read_bytes())
    assert ota.blob_bytes(sha) == model.read_bytes()
    assert hashlib.sha256(ota.fetch_blob(sha, tmp_path / "ok.onnx").read_bytes()).hexdigest() == sha

    stored = ota.blob(sha)  # swap the stored bytes after the upload (a new file, as a bucket write is)
    swapped = tmp_path / "swapped"
    swapped.write_bytes(model.read_bytes().replace(b"federated_head", b"evil_head_____"))
    swapped.replace(stored)

    with pytest.raises(ConflictError, match=f"blob {sha[:16]} .* does not match its sha256"):
        ota.blob_bytes(sha)
    with pytest.raises(ConflictError, match="upload it again"):
        ota.fetch_blob(sha, tmp_path / "copy.onnx")
    assert not (tmp_path / "copy.onnx").exists()

    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    upgrade(engine)
    spec = ReleaseCreate(model_name="m", model_version="1", filename="model.onnx", artifact_sha256=sha)
    with Session(engine) as session, pytest.raises(ConflictError, match="does not match its sha256"):
        ota.publish(session=session, spec=spec, created_by="t")
    assert ota.repo.release_targets() == {}  # nothing signed
    engine.dispose()

"""Data loading/shape checks and the quality metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compiler.data import check_against, from_arrays, load_dataset
from compiler.errors import InputError
from compiler.quality import classification, embedding, infer_task

SPECS: dict[str, tuple[tuple[int | str, ...], str]] = {"input": (("batch", 1, 8, 8), "float32")}


def test_npz_file_and_folder_load_with_labels(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((10, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=x[:6], y=np.arange(6))
    np.savez(tmp_path / "b.npz", x=x[6:], y=np.arange(4))
    one = load_dataset(tmp_path / "a.npz")
    both = load_dataset(tmp_path)
    assert len(one) == 6
    assert len(both) == 10
    assert both.labels is not None
    assert list(both.labels[6:]) == [0, 1, 2, 3]
    assert one.digest != both.digest
    assert load_dataset(tmp_path).digest == both.digest  # stable


def test_bad_data_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_dataset(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read"):
        load_dataset(tmp_path / "junk.npz")
    np.savez(tmp_path / "c.npz", x=np.zeros((3, 4)), y=np.zeros(2))
    with pytest.raises(InputError, match="different sample counts"):
        load_dataset(tmp_path / "c.npz")


def test_check_against_renames_single_input_and_rejects_wrong_shapes() -> None:
    ok = check_against(from_arrays({"x": np.zeros((5, 1, 8, 8))}), SPECS, "calibration")
    assert list(ok.inputs) == ["input"]
    assert ok.inputs["input"].dtype == np.float32
    with pytest.raises(InputError, match=r"shape \(5, 1, 7, 7\), model expects \('batch', 1, 8, 8\)"):
        check_against(from_arrays({"x": np.zeros((5, 1, 7, 7))}), SPECS, "calibration")
    with pytest.raises(InputError, match="no array for model input"):
        check_against(from_arrays({"a": np.zeros((2, 3)), "b": np.zeros((2, 3))}), SPECS, "evaluation")


def test_classification_metrics() -> None:
    ref = np.eye(4)[[0, 1, 2, 3]]
    out = np.eye(4)[[0, 1, 2, 0]]
    q = classification(out, ref, np.array([0, 1, 1, 3]))
    assert q.accuracy == pytest.approx(0.5)
    assert q.agreement == pytest.approx(0.75)


def test_embedding_metrics_detect_damage() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(30, 64))
    same = embedding(ref * 3.0, ref)  # scale does not matter
    assert same.cosine_mean == pytest.approx(1.0)
    assert same.nn_agreement == 1.0
    noisy = embedding(ref + rng.normal(scale=2.0, size=ref.shape), ref)
    assert noisy.cosine_mean is not None
    assert noisy.cosine_mean < 0.6
    assert noisy.nn_agreement is not None
    assert noisy.nn_agreement < 1.0
    assert infer_task(ref, None) == "embedding"
    assert infer_task(ref[:, :10], None) == "classification"

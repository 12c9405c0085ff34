"""The compile request's say on which model inputs are batched: stamped into the ONNX metadata.

Owns `stamp_batched_inputs`: a copy of an ONNX model whose ``metadata_props`` carry
``edgeloop.batched_inputs`` (comma-separated input names; empty: no input is batched), checked
against the model's inputs. The agent reads that key when it loads the artifact
(`agent.inference.signature`) and it wins over what the shapes suggest; onnxruntime quantization
keeps metadata, so every ONNX artifact built from the stamped source carries it. LiteRT artifacts
converted from PyTorch do not carry ONNX metadata. Does not build or quantize anything.
"""

from __future__ import annotations

from pathlib import Path

from agent.inference.signature import BATCHED_INPUTS_KEY, parse_batched_override
from compiler.errors import InputError
from compiler.passes.export import onnx_input_specs


def stamp_batched_inputs(model: Path, names: str, out: Path) -> Path:
    """Write `model` with ``edgeloop.batched_inputs = names`` to `out` and return `out`.

    Raises:
        InputError: `model` is not an ONNX file, or `names` lists an unknown or 0-d input.
    """
    import onnx

    if model.suffix != ".onnx":
        raise InputError(
            f"--batched-inputs stamps ONNX metadata; {model.name} is not an .onnx model "
            "(export it to ONNX first, or give the .onnx you exported)"
        )
    specs = onnx_input_specs(model)
    wanted = parse_batched_override(names)
    unknown = sorted(wanted - set(specs))
    if unknown:
        raise InputError(
            f"--batched-inputs names {unknown}, which are not inputs of {model.name} ({sorted(specs)})"
        )
    scalars = sorted(n for n in wanted if not specs[n][0])
    if scalars:
        raise InputError(f"--batched-inputs: 0-d inputs {scalars} cannot be batched")
    proto = onnx.load(str(model))
    kept = [p for p in proto.metadata_props if p.key != BATCHED_INPUTS_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = BATCHED_INPUTS_KEY, ",".join(n for n in specs if n in wanted)
    onnx.save(proto, str(out))
    return out

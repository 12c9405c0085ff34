"""A compile request's batched inputs, checked against the registered model's inputs.

Owns `check_batched_inputs`: a name that is not an input of the ONNX graph (initializers are not
inputs), or a 0-d input, is refused when the version is registered (a 422 naming the field), not
found later as a failed compile. The compiler checks again when it stamps the names into the
artifacts (`compiler.signature`); the agent reads them from there (`agent.inference.signature`).
Pure function over bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

from fleet_server.errors import InvalidRequestError


def model_inputs(model_bytes: bytes) -> dict[str, int | None]:
    """Input name -> rank (None: the graph does not say), in graph order.

    Raises:
        InvalidRequestError: not a readable ONNX model.
    """
    import onnx

    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as err:  # onnx raises DecodeError and friends
        raise InvalidRequestError(f"not a valid ONNX model: {type(err).__name__}"[:300]) from err
    inits = {t.name for t in model.graph.initializer}
    out: dict[str, int | None] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tensor = vi.type.tensor_type
        out[vi.name] = len(tensor.shape.dim) if tensor.HasField("shape") else None
    return out


def check_batched_inputs(model_bytes: bytes, names: Sequence[str], *, inherited: bool = False) -> None:
    """Raises: InvalidRequestError naming `batched_inputs` when a name is unknown or a 0-d input."""
    inputs = model_inputs(model_bytes)
    where = "batched_inputs (inherited from the parent version)" if inherited else "batched_inputs"
    unknown = [n for n in names if n not in inputs]
    if unknown:
        raise InvalidRequestError(
            f"{where}: {unknown[:10]} are not inputs of the model (its inputs: {list(inputs)[:20]})"
        )
    scalars = [n for n in names if inputs[n] == 0]
    if scalars:
        raise InvalidRequestError(f"{where}: 0-d inputs {scalars[:10]} have no batch axis")

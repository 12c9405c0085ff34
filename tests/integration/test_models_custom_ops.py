"""Issue 17: custom-op libraries declared per device profile, loaded by the backend, refused precisely.

The op libraries are real shared libraries built here with the C compiler. onnxruntime's C headers
are not installed on this machine (the pip wheel ships none), so the onnxruntime library declares
the two structs of the stable C ABI it touches (`OrtApiBase`, and `OrtApi`'s first member
`CreateStatus`) itself: its `RegisterCustomOps` entry point is called by onnxruntime and either
succeeds (registering nothing) or returns onnxruntime's own error status. Registering a real kernel
needs the full `OrtApi` table and, for LiteRT, the C++ `MutableOpResolver` API, neither of which
can be built without those headers. A model *using* a real custom kernel runs with the compiled
op library that the onnxruntime-extensions package ships (`Inverse`, declared in the profile). The
LiteRT registerer is called by the interpreter with its op resolver, which the test observes; no
LiteRT kernel library is available here, so no .tflite model runs a custom kernel.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from agent.errors import BackendUnavailableError, ConfigError, ModelLoadError
from agent.inference.registry import load_runtime
from agent.profile import load_profile
from tests.fixtures.stateful import build_stateful_onnx, initial_state

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None, reason="no C compiler (cc) to build an op library"
)

ORT_LIBRARY = r"""
#include <stdint.h>
#include <stdio.h>
typedef struct OrtApi OrtApi;
typedef struct OrtApiBase {
  const OrtApi* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)(void);
} OrtApiBase;
typedef void* (*CreateStatusFn)(int code, const char* message);  /* OrtApi's first member */

void* RegisterCustomOps(void* options, const OrtApiBase* base) {
  FILE* f = fopen(MARKER, "w");
  if (f) { fputs(base->GetVersionString(), f); fclose(f); }
#ifdef REFUSE
  const OrtApi* api = base->GetApi(1);
  return (*(CreateStatusFn const*)api)(1 /* ORT_FAIL */, REFUSE);
#else
  return 0;
#endif
}
"""

LITERT_LIBRARY = r"""
#include <stdio.h>
void EdgeloopTestOps(void* resolver) {
  FILE* f = fopen(MARKER, "w");
  if (f) { fprintf(f, "%d", resolver != 0); fclose(f); }
}
"""


def _build(tmp_path: Path, name: str, source: str, *defines: str) -> Path:
    src, lib = tmp_path / f"{name}.c", tmp_path / f"lib{name}.so"
    src.write_text(source)
    cmd = ["cc", "-shared", "-fPIC", "-O1", *(f"-D{d}" for d in defines), "-o", str(lib), str(src)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return lib


def _profile_dir(tmp_path: Path, custom_ops: str) -> Path:
    """generic-x86 with a [runtime.custom_ops] table and a folder for relative library paths."""
    base = (Path(__file__).resolve().parents[2] / "firmware_images" / "generic-x86.toml").read_text()
    directory = tmp_path / "profiles"
    (directory / "dev-box").mkdir(parents=True)
    text = base.replace('name = "generic-x86"', 'name = "dev-box"')
    text = text.replace("[quantization]", f"[runtime.custom_ops]\n{custom_ops}\n\n[quantization]")
    (directory / "dev-box.toml").write_text(text)
    return directory


def test_onnxruntime_library_from_the_profile_is_registered(tmp_path: Path) -> None:
    marker = tmp_path / "ort-called"
    lib = _build(tmp_path, "ortops", ORT_LIBRARY, f'MARKER="{marker}"')
    directory = _profile_dir(tmp_path, 'onnxruntime = ["ops/libortops.so"]')
    (directory / "dev-box" / "ops").mkdir()
    shutil.copy(lib, directory / "dev-box" / "ops" / "libortops.so")  # shipped beside the profile
    profile = load_profile("dev-box", directory)
    assert profile.runtime.onnx_custom_op_libraries == (str(directory / "dev-box" / "ops" / "libortops.so"),)
    model = build_stateful_onnx(tmp_path / "vad.onnx")
    runtime = load_runtime(model, profile)
    out = runtime.run({"x": np.ones((1, 16), np.float32), "state": initial_state(1), "sr": np.array(16000)})
    assert out["prob"].shape == (1, 1)
    assert marker.read_text().startswith("1.")  # onnxruntime called our entry point with its API


def test_onnxruntime_refusal_is_surfaced_with_its_reason(tmp_path: Path) -> None:
    marker = tmp_path / "ort-called"
    lib = _build(
        tmp_path, "ortbad", ORT_LIBRARY, f'MARKER="{marker}"', 'REFUSE="op set v2 needs a newer runtime"'
    )
    profile = load_profile("dev-box", _profile_dir(tmp_path, f'onnxruntime = ["{lib}"]'))
    with pytest.raises(BackendUnavailableError) as info:
        load_runtime(build_stateful_onnx(tmp_path / "vad.onnx"), profile)
    assert f"onnxruntime refused custom-op library {lib}" in str(info.value)
    assert "op set v2 needs a newer runtime" in str(info.value)  # the library's own words


def test_a_library_that_is_not_an_op_library_is_refused_precisely(tmp_path: Path) -> None:
    lib = _build(tmp_path, "plain", LITERT_LIBRARY, f'MARKER="{tmp_path / "m"}"')  # no RegisterCustomOps
    profile = load_profile("dev-box", _profile_dir(tmp_path, f'onnxruntime = ["{lib}"]'))
    with pytest.raises(BackendUnavailableError, match=f"onnxruntime refused custom-op library {lib}"):
        load_runtime(build_stateful_onnx(tmp_path / "vad.onnx"), profile)


def test_missing_libraries_and_bad_declarations(tmp_path: Path) -> None:
    model = build_stateful_onnx(tmp_path / "vad.onnx")
    profile = load_profile("dev-box", _profile_dir(tmp_path, 'onnxruntime = ["libgone.so"]'))
    with pytest.raises(BackendUnavailableError) as info:
        load_runtime(model, profile)
    assert "runtime.custom_ops.onnxruntime" in str(info.value) and "does not exist on this device" in str(
        info.value
    )
    for bad, says in [
        ('litert = [{ library = "x.so" }]', "registerers"),
        ('onnxruntime = "x.so"', "must be a list"),
        ('tensorrt = ["x.so"]', "unknown keys ['tensorrt']"),
    ]:
        (tmp_path / "p2").mkdir(exist_ok=True)
        with pytest.raises(ConfigError, match=re.escape(says)):
            load_profile("dev-box", _profile_dir(tmp_path / "p2" / bad[:4], bad))


def test_litert_registerer_from_the_profile_is_called(tmp_path: Path) -> None:
    from tests.fixtures.models import digits_models

    marker = tmp_path / "litert-called"
    lib = _build(tmp_path, "tflops", LITERT_LIBRARY, f'MARKER="{marker}"')
    good = _profile_dir(tmp_path, f'litert = [{{ library = "{lib}", registerers = ["EdgeloopTestOps"] }}]')
    runtime = load_runtime(digits_models().tflite_fp32, load_profile("dev-box", good))
    name = runtime.signature.inputs[0].name
    assert next(iter(runtime.run({name: np.zeros((2, 1, 8, 8), np.float32)}).values())).shape == (2, 10)
    assert marker.read_text() == "1"  # called with the interpreter's op resolver
    missing = _profile_dir(tmp_path / "b", f'litert = [{{ library = "{lib}", registerers = ["NoSuchOps"] }}]')
    with pytest.raises(BackendUnavailableError, match="exports no registerer 'NoSuchOps'"):
        load_runtime(digits_models().tflite_fp32, load_profile("dev-box", missing))


def test_a_tflite_model_with_an_unknown_custom_op_names_the_fix(tmp_path: Path) -> None:
    """A .tflite whose op is rewritten to a custom op no library registers: ModelLoadError says what to do."""
    from ai_edge_litert import schema_py_generated as schema
    from flatbuffers import Builder

    from tests.fixtures.models import digits_models

    model = schema.ModelT.InitFromPackedBuf(digits_models().tflite_fp32.read_bytes(), 0)
    code = model.operatorCodes[0]
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = "EdgeloopNoSuchOp"
    builder = Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = tmp_path / "custom.tflite"
    path.write_bytes(bytes(builder.Output()))
    with pytest.raises(ModelLoadError) as info:
        load_runtime(path, load_profile("generic-x86"))
    assert "EdgeloopNoSuchOp" in str(info.value)
    assert "declare the library that implements it in the device profile" in str(info.value)


def test_a_model_running_a_real_custom_kernel_from_a_profiles_library(tmp_path: Path) -> None:
    """A real kernel: `Inverse` from onnxruntime-extensions' op library (a pip package shipping a
    compiled custom-op library), declared in the profile, served through the agent's backend; without
    the declaration the model is refused with a ModelLoadError naming the op."""
    import onnx
    import onnxruntime_extensions
    from onnx import TensorProto, helper

    square = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3, 3]) for n in ("m", "inv")]
    graph = helper.make_graph(
        [helper.make_node("Inverse", ["m"], ["inv"], domain="ai.onnx.contrib")],
        "inverse",
        square[:1],
        square[1:],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.contrib", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    path = tmp_path / "inverse.onnx"
    onnx.save(model, path)

    library = onnxruntime_extensions.get_library_path()
    profile = load_profile("dev-box", _profile_dir(tmp_path, f'onnxruntime = ["{library}"]'))
    runtime = load_runtime(path, profile)
    m = np.array([[2, 0, 0], [0, 4, 0], [1, 0, 1]], np.float32)
    np.testing.assert_allclose(runtime.run({"m": m})["inv"], np.linalg.inv(m), rtol=1e-6)

    with pytest.raises(ModelLoadError) as info:
        load_runtime(path, load_profile("generic-x86"))
    assert "Inverse" in str(info.value)

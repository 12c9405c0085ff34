"""edgeloop compiler: turns a trained model into device-ready, validated artifacts.

Map: `passes/` (export, quantize, smooth, convert_tflite, prune, distill: one transformation each),
`pipeline` (sans-IO candidate search and budget gate), `toolchain` (the adapter that builds and
measures candidates), `measure` (runs artifacts on onnxruntime / LiteRT with profile settings),
`quality` (metrics), `build` (atomic end-to-end build), `report` (JSON + model card), `inspect`,
`bench`, `zoo` (MiniLM-L6 from its pip wheel), `cli` (the `edgeloop-compile` composition root).
Nothing imports `compiler`.
"""

"""`edgeloop-compile`: the compiler's composition root.

Parses arguments, calls one library function per subcommand, prints a human summary (rich, on
stderr) or `--json` (stdout), and maps errors to `ExitCode`. No compiler logic lives here.

    edgeloop-compile build --model M --profile P [--profile P2] --calib C.npz --eval E.npz --out DIR
        [--micro-batch N] [--latency-clock cpu|wall] [--drift-budget PER_10K]
    edgeloop-compile quantize --model m.onnx --calib C.npz --out q.onnx [--mode static|dynamic]
        [--eval E.npz] [--allow-noop]     (exit 53: nothing quantized / file grew; 52: quality)
    edgeloop-compile convert --model M --calib C.npz --out m.tflite [--quantization fp32|dynamic|full]
    edgeloop-compile prune --model M --train T.npz --eval E.npz --keep 0.5 --out m.pt2
    edgeloop-compile distill --model M --student S --train T.npz --eval E.npz --out DIR
    edgeloop-compile inspect MODEL
    edgeloop-compile bench MODEL --data E.npz
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from compiler.errors import CompilerError, ExitCode

logger = logging.getLogger("compiler")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    try:
        result = args.func(args)
    except CompilerError as err:
        _emit_error(args, err, err.exit_code)
        return int(err.exit_code)
    except KeyboardInterrupt:
        return int(ExitCode.INTERNAL)
    _emit(args, result)
    return int(ExitCode.OK)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeloop-compile", description="Compile models for device profiles.")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    def cmd(name: str, func: Callable[[argparse.Namespace], Any], help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        sp.add_argument("-v", "--verbose", action="store_true")
        sp.set_defaults(func=func)
        return sp

    b = cmd("build", _build, "search, validate and write one artifact per device profile")
    _model_args(b)
    b.add_argument(
        "--profile", action="append", default=[], required=True, help="device profile (repeatable)"
    )
    b.add_argument("--calib", type=Path, required=True, help=".npz or folder of .npz")
    b.add_argument("--eval", type=Path, required=True, help="labelled .npz (y) or unlabelled for embeddings")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument(
        "--max-accuracy-drop", type=float, default=0.01, help="top-1, as a fraction (0.01 = 1 point)"
    )
    b.add_argument("--min-cosine", type=float, default=0.99, help="embedding models: mean cosine to fp32")
    b.add_argument("--min-agreement", type=float, default=0.0, help="top-1 / nearest-neighbour agreement")
    b.add_argument(
        "--latency-tolerance", type=float, default=0.25, help="'as fast' band; 0 = strictly fastest"
    )
    b.add_argument(
        "--prefer-recipe",
        action="append",
        default=[],
        metavar="PROFILE=RECIPE",
        help="keep this recipe for the profile when it passes and is within the 'as fast' band "
        "(e.g. the one the previous version shipped with: stable numerics, smaller deltas; repeatable)",
    )
    b.add_argument(
        "--micro-batch",
        type=int,
        metavar="N",
        help="the device micro-batches up to N samples: quality must also hold at batch N "
        "(batch 1, what a lone caller gets, is always measured); overrides each profile's "
        "[serving] micro_batch (default: the profile's; 1 = batch 1 only)",
    )
    b.add_argument(
        "--drift-budget",
        type=float,
        metavar="PER_10K",
        help="false-alarm budget of the shipped drift reference: expected false drift episodes per "
        "10,000 monitored samples the device's thresholds are calibrated to (default: 0.5)",
    )
    b.add_argument(
        "--latency-clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="judge the p95 latency budget on thread CPU time (default: robust to a loaded host) "
        "or on wall time",
    )
    b.add_argument("--all-runtimes", action="store_true", help="also try the profile's fallback runtime")
    b.add_argument("--task", choices=["classification", "embedding"])
    b.add_argument("--calib-samples", type=int, default=256)
    b.add_argument(
        "--batched-inputs",
        metavar="NAMES",
        help="comma-separated inputs whose first axis is the batch ('' = none: a stateful model); "
        "stamped into the ONNX metadata (edgeloop.batched_inputs) the device reads, overriding the shapes",
    )
    b.add_argument("--force", action="store_true", help="replace a non-empty --out")

    _quantize_args(cmd("quantize", _quantize, "onnxruntime int8 quantization of an ONNX file"))
    _other_args(cmd)
    return p


def _quantize_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--model", type=Path, required=True)
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--mode", choices=["static", "dynamic"], default="static")
    q.add_argument("--calib", type=Path, help="required for static")
    q.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax")
    q.add_argument("--per-tensor", action="store_true")
    q.add_argument("--exclude", action="append", default=[], help="node kept in float (repeatable)")
    q.add_argument("--eval", type=Path, help="data to compare with fp32 at batch 1 (default: --calib)")
    q.add_argument("--task", choices=["classification", "embedding"])
    q.add_argument("--max-accuracy-drop", type=float, default=0.01, help="with labels in the data")
    q.add_argument("--min-cosine", type=float, default=0.99, help="embedding models: mean cosine to fp32")
    q.add_argument(
        "--min-agreement", type=float, default=0.95, help="top-1 (binary at 0.5 for one output) with fp32"
    )
    q.add_argument(
        "--allow-noop",
        action="store_true",
        help="write the file even when nothing was quantized or it grew (exit 53 otherwise)",
    )


def _other_args(cmd: Callable[..., argparse.ArgumentParser]) -> None:
    c = cmd("convert", _convert, "PyTorch -> ONNX (.onnx) or -> LiteRT (.tflite, fp32/dynamic/full int8)")
    _model_args(c)
    c.add_argument("--calib", type=Path, required=True, help="sample inputs (and calibration for full int8)")
    c.add_argument("--out", type=Path, required=True, help="*.onnx or *.tflite")
    c.add_argument("--quantization", choices=["fp32", "dynamic", "full"], default="fp32", help=".tflite only")

    pr = cmd("prune", _prune, "structured channel pruning + fine-tune; writes an exported program (.pt2)")
    _model_args(pr)
    pr.add_argument("--train", type=Path, required=True)
    pr.add_argument("--eval", type=Path, required=True)
    pr.add_argument("--keep", type=float, default=0.5, help="fraction of channels kept per layer")
    pr.add_argument(
        "--unstructured",
        type=float,
        metavar="AMOUNT",
        help="instead: magnitude sparsity (e.g. 0.8), reported honestly (dense size unchanged, .xz size)",
    )
    pr.add_argument("--epochs", type=int, default=10)
    pr.add_argument("--out", type=Path, required=True, help="*.pt2")

    d = cmd("distill", _distill, "train a student with and without KD; report both")
    _model_args(d)
    d.add_argument("--student", required=True, help="module:factory of the student")
    d.add_argument("--train", type=Path, required=True)
    d.add_argument("--eval", type=Path, required=True)
    d.add_argument("--temperature", type=float, default=4.0)
    d.add_argument("--alpha", type=float, default=0.7)
    d.add_argument("--epochs", type=int, default=40)
    d.add_argument("--out", type=Path, required=True, help="folder: distilled.pt, alone.pt, report.json")

    i = cmd("inspect", _inspect, "ops, parameters, MACs per sample and size of an .onnx/.tflite")
    i.add_argument("model", type=Path)

    be = cmd("bench", _bench, "batch-1 latency (1 thread) and batch-N throughput of an artifact")
    be.add_argument("model", type=Path)
    be.add_argument("--data", type=Path, required=True)
    be.add_argument("--threads", type=int, default=1)
    be.add_argument("--batch", type=int, default=32)
    be.add_argument("--runtime", choices=["onnxruntime", "litert"])


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="module:factory, .pt (TorchScript), .pt2 or .onnx")
    p.add_argument("--weights", type=Path, help="state dict for a module:factory model")


@contextmanager
def _progress(args: argparse.Namespace) -> Iterator[Callable[[str], None]]:
    from rich.console import Console

    console = Console(stderr=True)
    with console.status("starting") as status:

        def on_event(msg: str) -> None:
            status.update(msg)
            if args.verbose:
                console.log(msg)

        yield on_event


def _prefer(items: list[str]) -> dict[str, str]:
    """`PROFILE=RECIPE` pairs. Raises: InputError for an item without `=`."""
    from compiler.errors import InputError

    out: dict[str, str] = {}
    for item in items:
        profile, sep, recipe = item.partition("=")
        if not sep or not profile or not recipe:
            raise InputError(f"--prefer-recipe wants PROFILE=RECIPE, got {item!r}")
        out[profile] = recipe
    return out


def _build(args: argparse.Namespace) -> Any:
    if getattr(args, "batched_inputs", None) is None:
        return _build_model(args, args.model)
    import tempfile

    from compiler.signature import stamp_batched_inputs

    with tempfile.TemporaryDirectory() as tmp:  # the stamped source; its artifacts carry the key
        source = Path(tmp) / Path(args.model).name
        return _build_model(args, str(stamp_batched_inputs(Path(args.model), args.batched_inputs, source)))


def _build_model(args: argparse.Namespace, model: str) -> Any:
    from compiler.build import BuildRequest, build
    from compiler.pipeline import QualityBudget

    request = BuildRequest(
        model=model,
        weights=args.weights,
        profiles=tuple(args.profile),
        calib=args.calib,
        evaluation=args.eval,
        out=args.out,
        task=args.task,
        force=args.force,
        all_runtimes=args.all_runtimes,
        quality=QualityBudget(args.max_accuracy_drop, args.min_cosine, args.min_agreement),
        latency_tolerance=args.latency_tolerance,
        prefer_recipes=_prefer(args.prefer_recipe),
        calib_samples=args.calib_samples,
        micro_batch=args.micro_batch,
        latency_clock=args.latency_clock,
        drift_budget_per_10k=args.drift_budget,
    )
    with _progress(args) as on_event:
        report = build(request, on_event)
    notes = {k: v["notes"] for k, v in report["profiles"].items() if v.get("notes")}
    for profile, lines in notes.items():
        for line in lines:
            print(f"edgeloop-compile: {profile}: {line}", file=sys.stderr)
    return {
        "out": str(args.out),
        "chosen": {k: v["artifact"] for k, v in report["profiles"].items()},
        "report": str(args.out / "report.json"),
        "notes": notes,
    }


def _quantize(args: argparse.Namespace) -> Any:
    from compiler.pipeline import QualityBudget
    from compiler.quantize_run import QuantizeRequest, quantize_file

    request = QuantizeRequest(
        model=args.model,
        out=args.out,
        mode=args.mode,
        calib=args.calib,
        evaluation=args.eval,
        method=args.method,
        per_channel=not args.per_tensor,
        exclude=tuple(args.exclude),
        budget=QualityBudget(args.max_accuracy_drop, args.min_cosine, args.min_agreement),
        allow_noop=args.allow_noop,
        task=args.task,
    )
    result = quantize_file(request)
    for warning in result["warnings"]:
        print(f"edgeloop-compile: WARNING: {warning}", file=sys.stderr)
    return result


def _convert(args: argparse.Namespace) -> Any:
    import tempfile

    from compiler.data import load_dataset
    from compiler.passes import convert_tflite, export

    model = export.load_torch_model(export.resolve_source(args.model, args.weights))
    calib = load_dataset(args.calib)
    if args.out.suffix == ".onnx":
        export.export_onnx(model, calib.inputs, args.out)
    elif args.quantization == "fp32":
        convert_tflite.convert_fp32(model, calib.inputs, args.out)
    else:
        with tempfile.TemporaryDirectory(dir=args.out.parent) as tmp:
            fp32 = convert_tflite.convert_fp32(model, calib.inputs, Path(tmp) / "fp32.tflite")
            convert_tflite.quantize_tflite(fp32, args.out, args.quantization, calib)
    return {"out": str(args.out), "size_bytes": args.out.stat().st_size}


def _prune(args: argparse.Namespace) -> Any:
    import tempfile

    import torch

    from compiler.data import load_dataset
    from compiler.passes import export, prune

    model = export.load_torch_model(export.resolve_source(args.model, args.weights))
    train, evaluation = load_dataset(args.train), load_dataset(args.eval)
    report: Any
    if args.unstructured is not None:
        with tempfile.TemporaryDirectory() as tmp:
            pruned, report = prune.unstructured_report(
                model, train, evaluation, Path(tmp), amount=args.unstructured, epochs=args.epochs
            )
    else:
        pruned, report = prune.prune_and_finetune(
            model, train, evaluation, keep=args.keep, epochs=args.epochs
        )
    sample = torch.from_numpy(next(iter(train.inputs.values()))[:2])
    batch = {0: torch.export.Dim("batch")}
    torch.export.save(torch.export.export(pruned, (sample,), dynamic_shapes=(batch,)), str(args.out))
    return dataclasses.asdict(report) | {"out": str(args.out)}


def _distill(args: argparse.Namespace) -> Any:
    import torch

    from compiler.data import load_dataset
    from compiler.passes import distill, export

    teacher = export.load_torch_model(export.resolve_source(args.model, args.weights))
    train, evaluation = load_dataset(args.train), load_dataset(args.eval)
    distilled, alone, report = distill.distill(
        teacher,
        args.student,
        train,
        evaluation,
        temperature=args.temperature,
        alpha=args.alpha,
        epochs=args.epochs,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(distilled.state_dict(), args.out / "distilled.pt")
    torch.save(alone.state_dict(), args.out / "alone.pt")
    doc = dataclasses.asdict(report) | {"distillation_helped": report.distillation_helped}
    (args.out / "report.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def _inspect(args: argparse.Namespace) -> Any:
    from compiler.inspect import inspect_model

    return dataclasses.asdict(inspect_model(args.model))


def _bench(args: argparse.Namespace) -> Any:
    from compiler.bench import bench_artifact
    from compiler.data import load_dataset

    res = bench_artifact(
        args.model, load_dataset(args.data), runtime=args.runtime, threads=args.threads, batch=args.batch
    )
    return dataclasses.asdict(res)


def _emit(args: argparse.Namespace, result: Any) -> None:
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return
    from rich.console import Console
    from rich.pretty import Pretty

    Console(stderr=True).print(Pretty(result))


def _emit_error(args: argparse.Namespace, err: CompilerError, code: ExitCode) -> None:
    kind = type(err).__name__
    if args.json:
        doc = {"error": kind, "message": str(err), "exit_code": int(code)}
        print(json.dumps(doc | ({"details": err.details} if err.details else {}), default=str))
    print(f"edgeloop-compile: {kind}: {err}", file=sys.stderr)

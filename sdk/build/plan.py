"""The plan of a build (what `cfrg build` and `--dry-run` print): each part's precision per TensorRT target, the
equivalent trtexec line, and the rule check (sdk.build.tensorrt_rules) on the graph TensorRT would parse. No
torch; onnx for the rule check."""
from __future__ import annotations

import shlex
from pathlib import Path

from .dla import layer_precisions
from .options import INPUT, TARGETS, BuildOptions, target_of

PARTS = (
    ("input normalisation", "fp32"),
    ("teacher", "teacher"),
    ("student, recovery branch, segmentation head", None),
    ("cosine discrepancies and the CFRG map", "fp32"),
    ("patch-memory search and its soft max", "fp32"),
    ("global Gaussian", "fp32"),
    ("Gaussian smoothing and image score", "fp32"),
)


def cnn_precision(precision: str, dla: bool) -> str:
    if precision == "int8":
        if dla:
            return "INT8 where the Q/DQ graph quantizes (implicit: its ranges), FP16 elsewhere"
        return "INT8 convolutions and residual adds (Q/DQ), other layers FP32 (typed graph)"
    return {"fp16": "FP16", "fp32": "FP32"}[precision]


def plan_targets(options: BuildOptions, trt=None, only: str | None = None) -> list[str]:
    """The targets a plan covers: the installed TensorRT's, else `only`, else all three."""
    if trt is not None:
        return [target_of(trt.__version__)]
    return [only] if only else list(TARGETS)


def plan_text(options: BuildOptions, info, trt=None, findings: dict | None = None, only: str | None = None) -> str:
    """What `cfrg build` will do, in words, per target: the precision of each part, the rule check's findings
    (sdk.build.tensorrt_rules) and the equivalent trtexec line."""
    from .tensorrt_rules import rules, summary_lines

    size = (info.input.height, info.input.width)
    shapes = options.shapes(size)
    if options.precision == "cpu-int8":
        return "\n".join(["cfrg build plan",
                          f"  source        {options.onnx} (fp32, {size[0]}x{size[1]} {info.input.colour_order})",
                          f"  graph         {options.graph} (ONNX Runtime CPU: uint8 activations, int8 per-channel "
                          f"weights on the CNNs; the other parts FP32)", "  engine        none (a CPU graph)"])
    lines = ["cfrg build plan",
             f"  source        {options.onnx} (fp32, {size[0]}x{size[1]} {info.input.colour_order})",
             f"  graph         {options.graph}" + ("" if options.precision == "fp32" else
                                                   f" ({options.precision}; written if absent"
                                                   + (f", calibrated on {options.calib}" if options.calib else "")
                                                   + ")"),
             f"  engine        {options.engine} (+ {options.engine.with_suffix('.json').name}), parsed from "
             f"{options.engine_source.name}" + (f" with the ranges of {options.dla_calibration.name}"
                                                 if options.dla and options.precision == "int8" else ""),
             f"  shapes        {INPUT} min {'x'.join(map(str, shapes[0]))}, opt {'x'.join(map(str, shapes[1]))}, "
             f"max {'x'.join(map(str, shapes[2]))}",
             f"  workspace     {options.workspace_mib} MiB"
             + (f"; timing cache {options.timing_cache}" if options.timing_cache else "")
             + (f"; optimization level {options.optimization_level}" if options.optimization_level is not None
                else "") + ("; version-compatible" if options.version_compatible else ""),
             "  device        " + ("GPU" if not options.dla else
                                    f"DLA core {options.dla_core}" + (" with GPU fallback" if options.gpu_fallback
                                                                      else " (no GPU fallback)")),
             "  math          TF32 off (FP32 layers in full FP32)"]
    for target in plan_targets(options, trt, only):
        about = rules()["targets"][target]
        if options.dla and not about["dla"]:
            lines += [f"  target        {about['name']}: refused. {about['dla_refusal']}"]
            continue
        mode = ("builder flags (DLA: implicit precision), layers outside the CNNs held at FP32" if options.dla
                else "strongly typed: precision from the graph")
        lines += [f"  target        {about['name']} ({mode})", "    part                                            precision"]
        for part, precision in PARTS:
            if precision == "teacher":
                precision = "fp16" if options.precision != "fp32" else "fp32"
            lines.append(f"    {part:<48}{precision or cnn_precision(options.precision, options.dla)}")
        if findings is not None and target in findings:
            lines += [f"    {line}" for line in summary_lines(findings[target])]
        lines.append(f"    trtexec: {trtexec_line(options, size)}")
    return "\n".join(lines)


def trtexec_line(options: BuildOptions, size: tuple[int, int]) -> str:
    """The trtexec command that builds the same engine (the same line for every target that can build it)."""
    args = ["trtexec", f"--onnx={options.engine_source}", f"--saveEngine={options.engine}"]
    if options.dla:
        args += {"fp16": ["--fp16"], "int8": ["--int8", "--fp16", f"--calib={options.dla_calibration}"]}[
            options.precision]
        args += ["--precisionConstraints=prefer", "--layerPrecisions=" + ",".join(
            f"{pattern}:{precision}" for pattern, precision in layer_precisions(options.precision))]
    else:
        args.append("--stronglyTyped")
    args.append("--noTF32")
    for name, shape in zip(("min", "opt", "max"), options.shapes(size)):
        args.append(f"--{name}Shapes={INPUT}:{'x'.join(map(str, shape))}")
    args.append(f"--memPoolSize=workspace:{options.workspace_mib}M")
    if options.timing_cache:
        args.append(f"--timingCacheFile={options.timing_cache}")
    if options.optimization_level is not None:
        args.append(f"--builderOptimizationLevel={options.optimization_level}")
    if options.version_compatible:
        args.append("--versionCompatible")
    if options.dla:
        args.append(f"--useDLACore={options.dla_core}")
    if options.gpu_fallback:
        args.append("--allowGPUFallback")
    if options.verbose:
        args.append("--verbose")
    return " ".join(shlex.quote(a) for a in args)


def graph_for_check(options: BuildOptions, calib_files=None, fresh: bool = True):
    """The ONNX graph TensorRT would parse, for the rule check: the file when it is there and `fresh`; else (a
    dry run before the precision graph exists) the same graph made in a temporary folder (INT8: calibrated on
    two good images, or two grey frames: the Q/DQ placement and types do not depend on the ranges)."""
    import tempfile

    import onnx

    source = options.engine_source
    if source.is_file() and (fresh or options.dla):  # DLA parses the FP32 graph itself
        return onnx.load(str(source), load_external_data=False)
    from .precision import GoodFrames, to_fp16, to_int8

    with tempfile.TemporaryDirectory(prefix="cfrg-check-") as tmp:
        out = Path(tmp) / options.graph.name
        if options.precision == "fp16":
            onnx.save(to_fp16(onnx.load(str(options.onnx))), str(out))
        else:
            reader = _GreyFrames(onnx.load(str(options.onnx), load_external_data=False)) if not calib_files else \
                GoodFrames(list(calib_files)[:2], *_input_of(options.onnx))
            to_int8(options.onnx, out, options.precision, reader, Path(tmp) / "calib.json")
        return onnx.load(str(out))


def _input_of(onnx_path: Path):
    from sdk.model_info import ModelInfo

    info = ModelInfo.read(onnx_path)
    return (info.input.height, info.input.width), info.input.colour_order, info.input.name


class _GreyFrames:
    """Two mid-grey batches: a calibration reader for a graph whose ranges do not matter (graph_for_check)."""

    def __init__(self, proto):
        import numpy as np

        shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
        self.batches = [{proto.graph.input[0].name: np.full((1, *shape[1:]), 128 + 8 * k, np.uint8)} for k in range(2)]
        self.rewind()

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.batches)


def check_targets(options: BuildOptions, targets: list[str], proto) -> dict:
    """{target: findings} of sdk.build.tensorrt_rules for building `proto` (options.engine_source) there."""
    from .tensorrt_rules import check

    size = tuple(d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim)[1:3]
    return {t: check(proto, t, dla=options.dla, precision=options.precision, shapes=options.shapes(size),
                     gpu_fallback=options.gpu_fallback) for t in targets}


def relevant_errors(options: BuildOptions, findings: dict, explicit: bool) -> list[tuple[str, object]]:
    """(target, finding) errors that stop the build: on a DLA plan without an explicit target, the targets that
    have no DLA are shown as refused but do not count."""
    from .tensorrt_rules import errors, rules

    out = []
    for target, found in findings.items():
        if options.dla and not explicit and not rules()["targets"][target]["dla"]:
            continue
        out += [(target, f) for f in errors(found)]
    return out

"""TensorRT engines from the exported ONNX graph: the build plan (`cfrg build --dry-run`), the equivalent
trtexec line, the rule check (sdk.build.tensorrt_rules) and the build itself where TensorRT is installed. No torch.

One precision story for both TensorRT lines. On the GPU every build is strongly typed, from a typed graph
(model.onnx, model.fp16.onnx or the Q/DQ model.int8.onnx of sdk.build.precision): TensorRT 11 knows nothing else
and 10.x (JetPack 6 has 10.3) has STRONGLY_TYPED too, so no builder precision flags and no per-layer
constraints. TF32 is cleared in every build, since the FP32 parts (the patch-memory distances, the Gaussians)
are what TF32's 10-bit mantissa harms. DLA (10.x only) is the one place that keeps builder flags, because DLA
takes no strongly typed network and its INT8 comes from implicit quantization: static shapes, --fp16 or
--int8 with per-tensor ranges written from the Q/DQ graph's own scales, GPU fallback for the layers DLA cannot
run, and every layer outside the CNNs held at FP32 (so it runs on the GPU) by the same scope-wise
--layerPrecisions spec that the trtexec line prints. TensorRT 11 builds no DLA engines (see tensorrt_rules).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import re
import shlex
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from .precision import CNN_PARTS, HEADS, precision_path

INPUT = "frames"
WORKSPACE_MIB = 1024
TARGETS = ("10.3", "10.x", "11.x")  # TensorRT lines the plan and the rule check know
# used only on the DLA path (TensorRT 10.x): gone from 11.x's bindings
TENSORRT_10_ONLY = ("PREFER_PRECISION_CONSTRAINTS", "dynamic_range")


class BuildError(ValueError):
    """Options that do not make a build (trtexec would refuse them too)."""


def target_of(version: str) -> str:
    """TensorRT version -> its rule target: "10.3" for 10.0 to 10.7 (the DLA line; JetPack 6 ships 10.3), "10.x"
    for 10.8 on, "11.x"."""
    parts = [int(p) for p in version.split(".")[:2] if p.isdigit()]
    if parts[:1] == [10]:
        return "10.3" if parts[1:] and parts[1] <= 7 else "10.x"
    if parts[:1] == [11]:
        return "11.x"
    raise BuildError(f"TensorRT {version}: cfrg build supports TensorRT 10.x (JetPack 6: 10.3) and 11.x; "
                     f"upgrade TensorRT (JetPack 6 or later on a Jetson)")


def dla_refusal(version: str) -> str | None:
    """Why this TensorRT version builds no DLA engine (None: it does; DLA exists from 10.0 to 10.7)."""
    from .tensorrt_rules import rules

    about = rules()["targets"][target_of(version)]
    return None if about["dla"] else about["dla_refusal"]


@dataclass
class BuildOptions:
    onnx: Path
    save_engine: Path | None = None
    fp16: bool = False
    int8: bool = False
    best: bool = False
    strongly_typed: bool = False
    cpu_int8: bool = False  # the ONNX Runtime CPU graph (model.cpu-int8.onnx) instead of an engine
    calib: Path | None = None
    min_shapes: tuple[int, ...] | None = None  # NHWC, batch first
    opt_shapes: tuple[int, ...] | None = None
    max_shapes: tuple[int, ...] | None = None
    workspace_mib: int = WORKSPACE_MIB
    timing_cache: Path | None = None
    optimization_level: int | None = None  # 0..5
    dla_core: int | None = None
    gpu_fallback: bool = False
    version_compatible: bool = False
    verbose: bool = False

    @property
    def precision(self) -> str:
        if self.cpu_int8:
            return "cpu-int8"
        return "int8" if (self.int8 or self.best) else "fp16" if self.fp16 else "fp32"

    @property
    def dla(self) -> bool:
        return self.dla_core is not None

    @property
    def graph(self) -> Path:
        """The precision graph: what ONNX Runtime measures, and what a GPU engine is built from."""
        return precision_path(self.onnx, self.precision)

    @property
    def engine_source(self) -> Path:
        """The ONNX graph TensorRT parses: the typed precision graph on the GPU; on DLA the FP32 graph, whose
        precision comes from the builder flags and (INT8) the ranges of the Q/DQ graph."""
        return self.onnx if self.dla else self.graph

    @property
    def dla_calibration(self) -> Path:
        """TensorRT's calibration cache for a DLA INT8 build, written from the Q/DQ graph's scales."""
        return self.graph.with_suffix(".dla.calib")

    @property
    def engine(self) -> Path:
        """--saveEngine, else model.<precision>-gpu.engine / model.<precision>-dla<N>.engine beside the model (its
        model.json-style description then has a name of its own)."""
        device = "gpu" if not self.dla else f"dla{self.dla_core}"
        return self.save_engine or self.onnx.with_name(f"{self.onnx.stem}.{self.precision}-{device}.engine")

    def check(self, size: tuple[int, int], trt=None) -> None:
        """trtexec's own refusals, TensorRT's DLA rules, and shapes that fit the model (size = (H, W)); with the
        tensorrt module, what that TensorRT cannot build."""
        if self.strongly_typed and (self.fp16 or self.int8 or self.best):
            raise BuildError("--stronglyTyped cannot be combined with --fp16, --int8 or --best: a strongly typed "
                             "network takes its precision from the graph (drop the flag, or --stronglyTyped)")
        if self.cpu_int8 and (self.fp16 or self.int8 or self.best or self.strongly_typed or self.save_engine
                              or self.dla or self.version_compatible):
            raise BuildError("--cpuInt8 writes the ONNX Runtime CPU graph, no engine: drop --fp16, --int8, --best, "
                             "--stronglyTyped, --saveEngine, --useDLACore and --versionCompatible")
        if self.calib is not None and "int8" not in self.precision:
            raise BuildError("--calib is for INT8: add --int8 (or --best), or drop --calib")
        if self.gpu_fallback and not self.dla:
            raise BuildError("--allowGPUFallback needs --useDLACore=N")
        if self.dla and self.strongly_typed:
            raise BuildError("--useDLACore cannot be combined with --stronglyTyped: DLA takes no strongly typed "
                             "network (its precision comes from --fp16 or --int8)")
        if self.dla and self.precision == "fp32":
            raise BuildError("DLA runs FP16 or INT8 only: add --fp16, --int8 or --best to --useDLACore")
        if self.dla and self.version_compatible:
            raise BuildError("--versionCompatible cannot be combined with --useDLACore: TensorRT builds "
                             "version-compatible engines for the GPU only")
        from sdk.model_info import sidecar_path

        taken = {sidecar_path(self.onnx): self.onnx, sidecar_path(self.graph): self.graph}
        if self.precision != "cpu-int8" and sidecar_path(self.engine) in taken:
            raise BuildError(f"--saveEngine={self.engine}: its description {sidecar_path(self.engine).name} would "
                             f"replace the one of {taken[sidecar_path(self.engine)].name}; give the engine a name of "
                             f"its own, e.g. {self.onnx.stem}.{self.precision}-gpu.engine (the default)")
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise BuildError(f"--builderOptimizationLevel={self.optimization_level}: give 0 to 5 (default 3)")
        if not self.workspace_mib > 0:
            raise BuildError(f"--memPoolSize=workspace:{self.workspace_mib}: give a size > 0 (MiB)")
        h, w = size
        shapes = self.shapes(size)
        for name, shape in zip(("min", "opt", "max"), shapes):
            if shape[1:] != (h, w, 3) or shape[0] < 1:
                raise BuildError(f"--{name}Shapes={INPUT}:{'x'.join(map(str, shape))}: the model takes "
                                 f"{INPUT}:Nx{h}x{w}x3 with N >= 1")
        if not shapes[0][0] <= shapes[1][0] <= shapes[2][0]:
            raise BuildError(f"batch sizes must satisfy min <= opt <= max, got {shapes[0][0]} / {shapes[1][0]} / "
                             f"{shapes[2][0]}")
        if self.dla and not shapes[0][0] == shapes[1][0] == shapes[2][0]:
            n = shapes[2][0]
            raise BuildError(f"DLA needs static shapes, but the batch runs from {shapes[0][0]} to {n}: give one batch "
                             f"size, e.g. --minShapes=--optShapes=--maxShapes={INPUT}:{n}x{h}x{w}x3 (the runtime pads "
                             f"shorter batches up to it)")
        if trt is not None and self.dla and dla_refusal(trt.__version__):
            raise BuildError(f"TensorRT {trt.__version__} here: {dla_refusal(trt.__version__)}")

    def shapes(self, size: tuple[int, int]) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max): min defaults to batch 1, opt to min, max to opt."""
        h, w = size
        low = tuple(self.min_shapes or (1, h, w, 3))
        opt = tuple(self.opt_shapes or low)
        return low, opt, tuple(self.max_shapes or opt)


def parse_shapes(text: str) -> tuple[int, ...]:
    """trtexec's 'frames:4x256x256x3' -> (4, 256, 256, 3)."""
    m = re.fullmatch(r"([^:,]+):(\d+(?:x\d+)*)", text.strip())
    if not m:
        raise BuildError(f"shapes {text!r}: give {INPUT}:NxHxWx3, e.g. {INPUT}:1x256x256x3")
    if m.group(1) != INPUT:
        raise BuildError(f"shapes {text!r}: the model's input is {INPUT!r}, not {m.group(1)!r}")
    return tuple(int(v) for v in m.group(2).split("x"))


def parse_mem_pool(text: str) -> int:
    """trtexec's 'workspace:1024' (MiB) or 'workspace:2G' / '512M' / '1048576K' -> MiB."""
    m = re.fullmatch(r"workspace:(\d+(?:\.\d+)?)([KMG]?)", text.strip(), flags=re.IGNORECASE)
    if not m:
        raise BuildError(f"--memPoolSize={text}: give workspace:SIZE in MiB (or with K, M, G), e.g. workspace:1024")
    scale = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024}[m.group(2).upper()]
    return max(1, int(float(m.group(1)) * scale))


def layer_precisions(precision: str) -> list[tuple[str, str]]:
    """The DLA build's per-layer precision spec, read left to right with later entries winning (as trtexec's
    --layerPrecisions): every layer FP32, the teacher FP16, the heads FP16 or INT8. By name scope, so the
    layers TensorRT's parser adds for a node are covered too; the builder skips non-float layers as trtexec does."""
    heads = "int8" if precision == "int8" else "fp16"
    return [("*", "fp32"), ("/model/teacher/*", "fp16"), *((f"{part}*", heads) for part in HEADS)]


def spec_precision(name: str, spec: list[tuple[str, str]]) -> str | None:
    """The precision the spec gives a layer name (the last matching entry), as trtexec matches its one '*'."""
    found = None
    for pattern, precision in spec:
        if fnmatch.fnmatchcase(name, pattern):
            found = precision
    return found


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


def dla_calibration_cache(int8_graph) -> dict[str, float]:
    """{tensor: scale} of the Q/DQ graph's activations (per-tensor QuantizeLinear scales; amax = 127 * scale), the
    ranges a DLA INT8 build gives the same tensors of the FP32 graph (implicit quantization)."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in int8_graph.graph.initializer}
    scales = {}
    for node in int8_graph.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits and node.input[1] in inits:
            scale = inits[node.input[1]]
            if scale.size == 1:
                scales[node.input[0]] = float(scale.reshape(-1)[0])
    return scales


def calibration_cache_text(scales: dict[str, float], version: str = "100300") -> str:
    """TensorRT's calibration cache file (trtexec --calib): a header line, then "tensor: scale" with each scale as
    the hex of its big-endian float32 bits."""
    lines = [f"TRT-{version}-EntropyCalibration2"]
    lines += [f"{name}: {struct.pack('>f', scale).hex()}" for name, scale in sorted(scales.items())]
    return "\n".join(lines) + "\n"


def dla_ranges(fp32_graph, scales: dict[str, float]) -> dict[str, float]:
    """The Q/DQ graph's scales as DLA INT8 takes them: DLA's INT8 element-wise layers need equal ranges on both
    inputs, and its INT8 pooling equal input and output ranges (NvInfer.h, 10.3), so each such pair gets the
    larger of its two (a wider range never saturates). Tensors that a part held at FP32 reads (the teacher's
    features) get no range, as they read no Q/DQ copy in the Q/DQ graph."""
    produced = {o for n in fp32_graph.graph.node for o in n.output} | {i.name for i in fp32_graph.graph.input}
    fp32_readers = {i for n in fp32_graph.graph.node if not n.name.startswith(CNN_PARTS) for i in n.input}
    named = {}
    for name, scale in scales.items():  # the Q/DQ graph's copies (teacher features cast to FP32) by their own name
        base = name.removesuffix("_as_fp32").removesuffix("_as_fp16")
        if base in produced and base not in fp32_readers:  # nothing held at FP32 may read an INT8 tensor
            named[base] = scale
    scales = named
    for node in fp32_graph.graph.node:
        if node.op_type in ("Add", "Sub", "Mul", "Max", "Min"):
            pair = [t for t in node.input if t in scales]
        elif node.op_type in ("MaxPool", "AveragePool"):
            pair = [t for t in (node.input[0], node.output[0]) if t in scales]
        else:
            continue
        if len(pair) == 2:
            wide = max(scales[pair[0]], scales[pair[1]])
            scales[pair[0]] = scales[pair[1]] = wide
    return scales


def write_dla_calibration(options: BuildOptions, version: str = "100300") -> int:
    """options.dla_calibration from the Q/DQ graph's scales (what a DLA INT8 build and the trtexec line read);
    returns the number of tensors."""
    import onnx

    from sdk.files import atomic_write

    scales = dla_ranges(onnx.load(str(options.onnx), load_external_data=False),
                        dla_calibration_cache(onnx.load(str(options.graph), load_external_data=False)))
    atomic_write(options.dla_calibration, calibration_cache_text(scales, version))
    return len(scales)


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


def tensorrt_module():
    """The tensorrt module, or None where it is not installed."""
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt


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


class TensorRTBuilder:
    """parse -> configure -> build -> serialize, each a step (as Polygraphy's loaders); needs tensorrt."""

    def __init__(self, trt, options: BuildOptions, info, log=print, progress: bool = True, warn=None):
        self.trt, self.options, self.info, self.log, self.progress = trt, options, info, log, progress
        self.warn = warn or log
        severity = trt.Logger.VERBOSE if options.verbose else trt.Logger.WARNING
        self.logger = trt.Logger(severity)
        self.typed = not options.dla  # DLA takes builder flags; every GPU build is strongly typed
        self.fresh_timing_cache = False

    def parse(self):
        trt = self.trt
        builder = trt.Builder(self.logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if self.typed else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        source = self.options.engine_source
        if not parser.parse_from_file(str(source)):
            problems = []
            for i in range(parser.num_errors):
                error = parser.get_error(i)
                problems.append(f"node {error.node_name() or error.node()} ({error.node_operator()}): {error.desc()}")
            raise BuildError(f"TensorRT's ONNX parser refused {source}: " + "; ".join(problems[:5]))
        return builder, network, parser

    def configure(self, builder, network):
        trt, o = self.trt, self.options
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, o.workspace_mib << 20)
        config.clear_flag(trt.BuilderFlag.TF32)  # FP32 means FP32: the distances and Gaussians need its mantissa
        if o.optimization_level is not None:
            config.builder_optimization_level = o.optimization_level
        if o.version_compatible:
            config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        if o.dla:
            self.configure_dla(config, network)
        profile = builder.create_optimization_profile()
        shapes = o.shapes((self.info.input.height, self.info.input.width))
        profile.set_shape(INPUT, *shapes)
        config.add_optimization_profile(profile)
        if self.progress and hasattr(trt, "IProgressMonitor"):
            config.progress_monitor = build_progress(trt)
        cache = None
        if o.timing_cache is not None:
            data = o.timing_cache.read_bytes() if o.timing_cache.is_file() else b""
            cache = config.create_timing_cache(data)
            if not config.set_timing_cache(cache, ignore_mismatch=False):
                self.warn(f"warning: timing cache {o.timing_cache} was made by another TensorRT or GPU and does not "
                          f"match this one: building without it, and replacing it with this build's cache")
                cache = config.create_timing_cache(b"")
                if not config.set_timing_cache(cache, ignore_mismatch=False):
                    raise BuildError("TensorRT refused an empty timing cache; run again without --timingCacheFile")
                self.fresh_timing_cache = True
        return config, cache

    def configure_dla(self, config, network) -> None:
        """DLA on TensorRT 10.x: FP16 (and INT8 with ranges) builder flags, layers outside the CNNs at FP32 (on
        the GPU, by GPU fallback), the DLA core."""
        trt, o = self.trt, self.options
        config.set_flag(trt.BuilderFlag.FP16)
        if o.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            set_dynamic_ranges(network, read_calibration_cache(o.dla_calibration))
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        hold_precisions(trt, network, layer_precisions(o.precision))
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = o.dla_core
        if o.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

    def build(self) -> tuple[bytes, dict]:
        builder, network, _parser = self.parse()
        config, cache = self.configure(builder, network)
        t0 = time.monotonic()
        self.log(f"building {self.options.engine.name} with TensorRT {self.trt.__version__} "
                 f"({'strongly typed' if self.typed else 'DLA builder flags'}); this takes minutes")
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BuildError("TensorRT could not build the engine; run again with --verbose to see why")
        if cache is not None:
            from sdk.files import atomic_write

            atomic_write(self.options.timing_cache, bytes(cache.serialize()))
        return bytes(serialized), {"build_seconds": round(time.monotonic() - t0, 1)}


def hold_precisions(trt, network, spec: list[tuple[str, str]]) -> list[str]:
    """Give each layer the precision the spec names for it (its compute precision, as trtexec's --layerPrecisions
    sets it), skipping the layers trtexec skips on a wildcard match (sampleEngines.cpp, setLayerPrecisions):
    a layer whose default precision is INT32/INT64/BOOL/UINT8, a constant of such values, a layer whose first
    input is a shape tensor, or one whose first input and output are both such types. Returns the layers held."""
    types = {"fp32": trt.float32, "fp16": trt.float16, "int8": trt.int8}
    non_activation = (trt.int32, trt.int64, trt.bool, trt.uint8)
    held = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        precision = spec_precision(layer.name, spec)
        if precision is None or layer.precision in non_activation:
            continue
        first_in = layer.get_input(0) if layer.num_inputs >= 1 else None
        first_out = layer.get_output(0) if layer.num_outputs >= 1 else None
        if layer.type == trt.LayerType.CONSTANT and first_out is not None and first_out.dtype in non_activation:
            continue
        if first_in is not None and first_in.is_shape_tensor:
            continue
        if (first_in is not None and first_out is not None and first_in.dtype in non_activation
                and first_out.dtype in non_activation):
            continue
        layer.precision = types[precision]
        held.append(layer.name)
    return held


def read_calibration_cache(path: Path) -> dict[str, float]:
    """{tensor: scale} from a TensorRT calibration cache (calibration_cache_text)."""
    scales = {}
    for line in path.read_text(encoding="ascii").splitlines()[1:]:
        name, _, value = line.rpartition(": ")
        if name:
            scales[name] = struct.unpack(">f", bytes.fromhex(value.strip()))[0]
    return scales


def set_dynamic_ranges(network, scales: dict[str, float]) -> int:
    """Implicit INT8 for DLA: each network tensor named in `scales` gets the range +-127 * scale; returns how many."""
    tensors = {}
    for i in range(network.num_inputs):
        tensors[network.get_input(i).name] = network.get_input(i)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for k in range(layer.num_outputs):
            tensors[layer.get_output(k).name] = layer.get_output(k)
    count = 0
    for name, scale in scales.items():
        tensor = tensors.get(name)
        if tensor is not None:  # ITensor.dynamic_range: deprecated since 10.1, yet DLA's only INT8 path
            amax = 127.0 * scale
            tensor.dynamic_range = (-amax, amax)
            count += 1
    return count


def build_progress(trt):
    """A trt.IProgressMonitor that shows TensorRT's build phases as progress bars."""
    from sdk.progress import progress_bar

    class BuildProgress(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.bars = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.bars[phase_name] = progress_bar(total=num_steps, desc=phase_name, leave=parent_phase is None,
                                         position=len(self.bars))

        def step_complete(self, phase_name, step):
            bar = self.bars.get(phase_name)
            if bar is not None:
                bar.update(step + 1 - bar.n)
            return True  # go on

        def phase_finish(self, phase_name):
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return BuildProgress()


def gpu_description() -> dict:
    """Name and compute capability of CUDA device 0, read as the TensorRT backend reads them (cuda-python or
    pycuda), or {} where no CUDA binding or device answers."""
    from sdk.backends.tensorrt import CudaError, cuda_runtime

    try:
        return cuda_runtime().device()
    except (ImportError, CudaError):
        return {}


def engine_description(info, options: BuildOptions, trt, extra: dict):
    """The engine's model.json: the source model's description with precision, provenance and the engine."""
    from sdk.model_info import Provenance, file_sha256, software_versions

    size = (info.input.height, info.input.width)
    source = options.engine_source
    engine = {"tensorrt": trt.__version__, **gpu_description(), "precision": options.precision,
              "strongly_typed": not options.dla, "tf32": False, "version_compatible": options.version_compatible,
              "shapes": {k: list(v) for k, v in zip(("min", "opt", "max"), options.shapes(size))},
              "dla_core": options.dla_core, "gpu_fallback": options.gpu_fallback, "source_onnx": source.name,
              "source_sha256": file_sha256(source), "precision_graph": options.graph.name, **extra}
    return dataclasses.replace(
        info, precision=options.precision, engine=engine,
        provenance=Provenance.made_from(source, info.provenance.data_fingerprint,
                                        {**software_versions("numpy"), "tensorrt": trt.__version__},
                                        source_sha256=engine["source_sha256"]))

"""TensorRT engines from the exported ONNX graph: the build plan (`cfrg build --dry-run`), the equivalent
trtexec line, and the build itself where TensorRT is installed. No torch.

The precision comes from a precision graph (export.precision): model.fp16.onnx or the QDQ model.int8.onnx.
TensorRT 11 is strongly typed only: the typed graph is built as it is. TensorRT 10 (JetPack 6 has 10.3)
still has the --fp16/--int8 builder flags: they are set, and every layer outside the CNN parts is held at
FP32 by a precision constraint, so the numerically sensitive parts stay FP32 there too. Which kind of
TensorRT is present is found by trying (does BuilderFlag have FP16?), not by comparing version strings.
"""
from __future__ import annotations

import dataclasses
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from .precision import CNN_PARTS, precision_path

INPUT = "frames"
WORKSPACE_MIB = 1024
TENSORRT_10_ONLY = ("OBEY_PRECISION_CONSTRAINTS",)  # used only where has_precision_flags(): gone in 11.x


class BuildError(ValueError):
    """Options that do not make a build (trtexec would refuse them too)."""


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
    verbose: bool = False

    @property
    def precision(self) -> str:
        if self.cpu_int8:
            return "cpu-int8"
        return "int8" if (self.int8 or self.best) else "fp16" if self.fp16 else "fp32"

    @property
    def graph(self) -> Path:
        """The ONNX graph the engine is built from."""
        return precision_path(self.onnx, self.precision)

    @property
    def engine(self) -> Path:
        return self.save_engine or self.onnx.with_suffix(".engine")

    def check(self, size: tuple[int, int]) -> None:
        """trtexec's own refusals, plus shapes that fit the model (size = (H, W))."""
        if self.strongly_typed and (self.fp16 or self.int8 or self.best):
            raise BuildError("--stronglyTyped cannot be combined with --fp16, --int8 or --best: a strongly typed "
                             "network takes its precision from the graph (drop the flag, or --stronglyTyped)")
        if self.cpu_int8 and (self.fp16 or self.int8 or self.best or self.strongly_typed or self.save_engine
                              or self.dla_core is not None):
            raise BuildError("--cpuInt8 writes the ONNX Runtime CPU graph, no engine: drop --fp16, --int8, --best, "
                             "--stronglyTyped, --saveEngine and --useDLACore")
        if self.calib is not None and "int8" not in self.precision:
            raise BuildError("--calib is for INT8: add --int8 (or --best), or drop --calib")
        if self.gpu_fallback and self.dla_core is None:
            raise BuildError("--allowGPUFallback needs --useDLACore=N")
        if self.dla_core is not None and self.strongly_typed:
            raise BuildError("--useDLACore cannot be combined with --stronglyTyped (DLA takes builder precisions)")
        if self.dla_core is not None and self.precision == "fp32":
            raise BuildError("DLA runs FP16 or INT8 only: add --fp16, --int8 or --best to --useDLACore")
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


def fp32_layers(graph: Path) -> list[str]:
    """The layers a flag build holds at FP32: every node outside the CNN parts but Q/DQ and Casts, whose types
    the graph fixes (ONNX node names are TensorRT's layer names)."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    return [n.name for n in model.graph.node
            if not n.name.startswith(CNN_PARTS) and n.op_type not in ("QuantizeLinear", "DequantizeLinear", "Cast")]


def trtexec_line(options: BuildOptions, size: tuple[int, int], strongly_typed: bool) -> str:
    """The trtexec command that builds the same engine (precision flags only where TensorRT still has them)."""
    args = ["trtexec", f"--onnx={options.graph}", f"--saveEngine={options.engine}"]
    if strongly_typed:
        args.append("--stronglyTyped")
    else:
        args += {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", "--fp16"]}[options.precision]
        if options.precision != "fp32":
            graph = options.graph if options.graph.is_file() else options.onnx  # same node names
            args += ["--precisionConstraints=obey",
                     "--layerPrecisions=" + ",".join(f"{name}:fp32" for name in fp32_layers(graph))]
    for name, shape in zip(("min", "opt", "max"), options.shapes(size)):
        args.append(f"--{name}Shapes={INPUT}:{'x'.join(map(str, shape))}")
    args.append(f"--memPoolSize=workspace:{options.workspace_mib}M")
    if options.timing_cache:
        args.append(f"--timingCacheFile={options.timing_cache}")
    if options.optimization_level is not None:
        args.append(f"--builderOptimizationLevel={options.optimization_level}")
    if options.dla_core is not None:
        args.append(f"--useDLACore={options.dla_core}")
    if options.gpu_fallback:
        args.append("--allowGPUFallback")
    if options.verbose:
        args.append("--verbose")
    return " ".join(shlex.quote(a) for a in args)


PARTS = (
    ("input normalisation", "fp32"),
    ("teacher", "teacher"),
    ("student, recovery branch, segmentation head", None),
    ("cosine discrepancies and the CFRG map", "fp32"),
    ("patch-memory search and its soft max", "fp32"),
    ("global Gaussian", "fp32"),
    ("Gaussian smoothing and image score", "fp32"),
)


def cnn_precision(precision: str, strongly_typed: bool) -> str:
    if precision == "int8":
        rest = "FP32 (typed graph)" if strongly_typed else "FP16 (builder flag)"
        return f"INT8 convolutions and residual adds (Q/DQ), other layers {rest}"
    return {"fp16": "FP16", "fp32": "FP32"}[precision]


def tensorrt_module():
    """The tensorrt module, or None where it is not installed."""
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt


def has_precision_flags(trt) -> bool:
    """TensorRT 10.x still has BuilderFlag.FP16 / INT8; 11.x is strongly typed only."""
    return hasattr(trt.BuilderFlag, "FP16") and hasattr(trt.BuilderFlag, "INT8")


def plan_text(options: BuildOptions, info, trt=None) -> str:
    """What `cfrg build` will do, in words and as the equivalent trtexec line."""
    size = (info.input.height, info.input.width)
    shapes = options.shapes(size)
    if trt is not None:
        typed = options.strongly_typed or not has_precision_flags(trt)
        target = f"TensorRT {trt.__version__} ({'strongly typed' if typed else 'builder flags + FP32 constraints'})"
        targets = [(target, typed)]
    else:
        typed = options.strongly_typed
        targets = [("TensorRT 10.x, e.g. JetPack 6's 10.3 (builder flags + FP32 constraints)", typed),
                   ("TensorRT 11.x (strongly typed: precision from the graph)", True)]
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
             f"  engine        {options.engine} (+ {options.engine.with_suffix('.json').name})",
             f"  shapes        {INPUT} min {'x'.join(map(str, shapes[0]))}, opt {'x'.join(map(str, shapes[1]))}, "
             f"max {'x'.join(map(str, shapes[2]))}",
             f"  workspace     {options.workspace_mib} MiB"
             + (f"; timing cache {options.timing_cache}" if options.timing_cache else "")
             + (f"; optimization level {options.optimization_level}" if options.optimization_level is not None
                else ""),
             "  device        " + ("GPU" if options.dla_core is None else
                                    f"DLA core {options.dla_core}" + (" with GPU fallback" if options.gpu_fallback
                                                                      else " (no GPU fallback)"))]
    for target, typed_here in targets:
        lines += [f"  target        {target}", "    part                                            precision"]
        for part, precision in PARTS:
            if precision == "teacher":
                precision = "fp16" if options.precision != "fp32" else "fp32"
            lines.append(f"    {part:<48}{precision or cnn_precision(options.precision, typed_here)}")
        lines.append(f"    trtexec: {trtexec_line(options, size, typed_here)}")
    return "\n".join(lines)


class TensorRTBuilder:
    """parse -> configure -> build -> serialize, each a step (as Polygraphy's loaders); needs tensorrt."""

    def __init__(self, trt, options: BuildOptions, info, log=print, progress: bool = True):
        self.trt, self.options, self.info, self.log, self.progress = trt, options, info, log, progress
        severity = trt.Logger.VERBOSE if options.verbose else trt.Logger.WARNING
        self.logger = trt.Logger(severity)
        self.typed = options.strongly_typed or not has_precision_flags(trt)

    def parse(self):
        trt = self.trt
        builder = trt.Builder(self.logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if self.typed else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(self.options.graph)):
            problems = []
            for i in range(parser.num_errors):
                error = parser.get_error(i)
                problems.append(f"node {error.node_name() or error.node()} ({error.node_operator()}): {error.desc()}")
            raise BuildError(f"TensorRT's ONNX parser refused {self.options.graph}: " + "; ".join(problems[:5]))
        return builder, network, parser

    def configure(self, builder, network):
        trt, o = self.trt, self.options
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, o.workspace_mib << 20)
        if o.optimization_level is not None:
            config.builder_optimization_level = o.optimization_level
        if not self.typed and o.precision != "fp32":
            config.set_flag(trt.BuilderFlag.FP16)
            if o.precision == "int8":
                config.set_flag(trt.BuilderFlag.INT8)
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            keep = set(fp32_layers(o.graph))
            for i in range(network.num_layers):  # the numerically sensitive parts stay FP32
                layer = network.get_layer(i)
                if layer.name in keep and layer.type not in (trt.LayerType.CONSTANT, trt.LayerType.SHAPE):
                    layer.precision = trt.float32
        if o.dla_core is not None:
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = o.dla_core
            if o.gpu_fallback:
                config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
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
            config.set_timing_cache(cache, ignore_mismatch=False)
        return config, cache

    def build(self) -> tuple[bytes, dict]:
        builder, network, _parser = self.parse()
        config, cache = self.configure(builder, network)
        t0 = time.monotonic()
        self.log(f"building {self.options.engine.name} with TensorRT {self.trt.__version__} "
                 f"({'strongly typed' if self.typed else 'builder flags'}); this takes minutes")
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BuildError("TensorRT could not build the engine; run again with --verbose to see why")
        if cache is not None:
            from sdk.files import atomic_write

            atomic_write(self.options.timing_cache, bytes(cache.serialize()))
        return bytes(serialized), {"build_seconds": round(time.monotonic() - t0, 1)}


def build_progress(trt):
    """A trt.IProgressMonitor that shows TensorRT's build phases as progress bars."""
    from tqdm import tqdm

    class BuildProgress(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.bars = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.bars[phase_name] = tqdm(total=num_steps, desc=phase_name, leave=parent_phase is None,
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
    from sdk.model_info import Provenance, file_sha256, software_versions, utc_now

    size = (info.input.height, info.input.width)
    engine = {"tensorrt": trt.__version__, **gpu_description(), "precision": options.precision,
              "strongly_typed": options.strongly_typed or not has_precision_flags(trt),
              "shapes": {k: list(v) for k, v in zip(("min", "opt", "max"), options.shapes(size))},
              "dla_core": options.dla_core, "gpu_fallback": options.gpu_fallback, "source_onnx": options.graph.name,
              "source_sha256": file_sha256(options.graph), **extra}
    return dataclasses.replace(
        info, precision=options.precision, engine=engine,
        provenance=Provenance(source_model=options.graph.name, source_sha256=engine["source_sha256"],
                              data_fingerprint=info.provenance.data_fingerprint,
                              versions={**software_versions("numpy"), "tensorrt": trt.__version__},
                              created=utc_now()))


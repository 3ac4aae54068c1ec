"""What a `cfrg build` is asked for: trtexec's options (BuildOptions) with trtexec's and TensorRT's refusals,
the shape and workspace parsers, and the TensorRT line (rule target) of a TensorRT version. No torch."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .precision import precision_path

INPUT = "frames"
WORKSPACE_MIB = 1024
TARGETS = ("10.3", "10.x", "11.x")  # TensorRT lines the plan and the rule check know


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

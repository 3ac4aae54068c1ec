"""The TensorRT engine itself (needs tensorrt): parse, configure, build and serialize (TensorRTBuilder), the DLA
layer precisions and INT8 ranges set on the network, and the engine's model.json description. No torch.

One precision story for both TensorRT lines. On the GPU every build is strongly typed, from a typed graph
(model.onnx, model.fp16.onnx or the Q/DQ model.int8.onnx of sdk.build.precision): TensorRT 11 knows nothing else
and 10.x (JetPack 6 has 10.3) has STRONGLY_TYPED too, so no builder precision flags and no per-layer
constraints. TF32 is cleared in every build, since the FP32 parts (the patch-memory distances, the Gaussians)
are what TF32's 10-bit mantissa harms. DLA (10.x only) is the one place that keeps builder flags, because DLA
takes no strongly typed network and its INT8 comes from implicit quantization: static shapes, --fp16 or
--int8 with per-tensor ranges written from the Q/DQ graph's own scales, GPU fallback for the layers DLA cannot
run, and every layer outside the CNNs held at FP32 (so it runs on the GPU) by the same scope-wise
--layerPrecisions spec that the trtexec line prints. TensorRT 11 builds no DLA engines (see tensorrt_rules)."""
from __future__ import annotations

import dataclasses
import time

from .dla import layer_precisions, read_calibration_cache, spec_precision
from .options import INPUT, BuildError, BuildOptions

# used only on the DLA path (TensorRT 10.x): gone from 11.x's bindings
TENSORRT_10_ONLY = ("PREFER_PRECISION_CONSTRAINTS", "dynamic_range")


def tensorrt_module():
    """The tensorrt module, or None where it is not installed."""
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt


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

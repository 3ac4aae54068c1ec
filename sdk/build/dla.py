"""DLA's implicit precision (TensorRT 10.x): the per-layer precision spec that holds every layer outside the
CNNs at FP32, and the INT8 ranges taken from the Q/DQ graph's scales, written and read as TensorRT calibration
cache files (trtexec --calib). No torch; onnx for the graphs."""
from __future__ import annotations

import fnmatch
import struct
from pathlib import Path

from .options import BuildOptions
from .precision import CNN_PARTS, HEADS

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


def read_calibration_cache(path: Path) -> dict[str, float]:
    """{tensor: scale} from a TensorRT calibration cache (calibration_cache_text)."""
    scales = {}
    for line in path.read_text(encoding="ascii").splitlines()[1:]:
        name, _, value = line.rpartition(": ")
        if name:
            scales[name] = struct.unpack(">f", bytes.fromhex(value.strip()))[0]
    return scales

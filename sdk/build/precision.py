"""Precision-specific ONNX graphs from the FP32 export: FP16 and INT8 by explicit quantization (QDQ).

TensorRT 11 is strongly typed (the precision comes from the graph) and TensorRT 10 deprecated implicit INT8
calibration, so both precisions are prepared here, in ONNX, where ONNX Runtime runs and measures them:

    model.fp16.onnx      the CNNs (teacher, student, recovery, segmentation head) in FP16
    model.int8.onnx      for TensorRT: symmetric int8 activations, per-channel int8 weights on the convolutions
                         and residual adds of the student, recovery branch and segmentation head (where
                         TensorRT fuses conv + activation + add), float biases; the teacher in FP16
    model.cpu-int8.onnx  for ONNX Runtime on a CPU: asymmetric uint8 activations, per-channel int8 weights on
                         the heads and the teacher after its first feature tap (the teacher up to it stays
                         FP32), convolution outputs quantized too (fused into QLinearConv)

The numerically sensitive parts stay FP32 in all of them: the input normalisation, the cosine
discrepancies, the patch-memory distance search and its soft max (|a|^2 - 2ab + |b|^2 cancels in FP16),
the global Gaussian, the CFRG map (its sum or per-position z-scores), the Gaussian smoothing and the
score. Inputs and outputs keep their types, so sdk.Detector runs every graph alike. INT8 is calibrated on
good images only, and the calibration ranges are cached beside the graph (model.int8.calib.json) and reused.

Needs onnx and onnxruntime (no torch).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

CNN_PARTS = ("/model/teacher/", "/model/student/", "/model/recovery/", "/model/seg/")
PRECISIONS = ("fp32", "fp16", "int8", "cpu-int8")
SUFFIXES = {"fp16": ".fp16.onnx", "int8": ".int8.onnx", "cpu-int8": ".cpu-int8.onnx"}


def require_onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("cfrg build needs the onnx package for the precision graphs: "
                          "pip install 'cfrg-inspect[build]' (or pip install onnx)") from exc
    return onnx


def precision_path(onnx_path: str | os.PathLike, precision: str) -> Path:
    """model.onnx -> model.fp16.onnx, model.int8.onnx, model.cpu-int8.onnx (model.onnx for fp32)."""
    path = Path(onnx_path)
    if precision == "fp32":
        return path
    return path.with_name(path.name[: -len(path.suffix)] + SUFFIXES[precision])


def calibration_cache_path(onnx_path: str | os.PathLike, precision: str) -> Path:
    return precision_path(onnx_path, precision).with_suffix(".calib.json")


def check_cnn_parts(proto, source: str) -> None:
    found = {part for part in CNN_PARTS if any(n.name.startswith(part) for n in proto.graph.node)}
    if "/model/teacher/" not in found or "/model/student/" not in found:
        raise ValueError(f"{source}: no CFRG teacher/student nodes found by name ({', '.join(CNN_PARTS)}); "
                         f"export the model again with `cfrg export` (precision graphs start from its FP32 graph)")


FLOAT_ONLY_INPUTS = {"Resize": (1, 2)}  # roi and scales stay float32 whatever the data's type


def to_fp16(proto, parts: tuple[str, ...] = CNN_PARTS):
    """The nodes of `parts` (default: the CNNs) in FP16, everything else as it was, inputs and outputs
    unchanged: one Cast where a tensor crosses between the two (not around every FP32 node, which would
    round the FP32 parts to FP16 too)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(copy.deepcopy(proto))
    graph = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(graph.value_info) + list(graph.input) + list(graph.output)}
    inits = {init.name: init for init in graph.initializer}
    types.update({name: init.data_type for name, init in inits.items()})
    half = {n.name for n in graph.node if n.name.startswith(parts) and n.op_type not in ("QuantizeLinear",
                                                                                          "DequantizeLinear")}
    fp16_tensors = {o for n in graph.node if n.name in half for o in n.output if types.get(o) == TensorProto.FLOAT}
    casts, new_inits, converted = {}, [], {}

    def cast(tensor: str, to: int) -> str:
        key = (tensor, to)
        if key not in casts:
            out = f"{tensor}_as_{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}"
            casts[key] = (out, helper.make_node("Cast", [tensor], [out], to=to, name=f"{out}_cast"))
        return casts[key][0]

    def half_initializer(name: str) -> str:
        if name not in converted:
            value = numpy_helper.to_array(inits[name]).astype(np.float16)
            converted[name] = f"{name}_fp16"
            new_inits.append(numpy_helper.from_array(value, converted[name]))
        return converted[name]

    for node in graph.node:
        if node.name in half:
            keep_float = FLOAT_ONLY_INPUTS.get(node.op_type, ())
            for i, name in enumerate(node.input):
                if not name or i in keep_float or types.get(name) != TensorProto.FLOAT or name in fp16_tensors:
                    continue
                node.input[i] = half_initializer(name) if name in inits else cast(name, TensorProto.FLOAT16)
            if node.op_type == "Cast":
                for attr in node.attribute:
                    if attr.name == "to" and attr.i == TensorProto.FLOAT:
                        attr.i = TensorProto.FLOAT16
        else:
            for i, name in enumerate(node.input):
                if name in fp16_tensors:
                    node.input[i] = cast(name, TensorProto.FLOAT)
    for out in graph.output:
        if out.name in fp16_tensors:
            raise ValueError(f"graph output {out.name} comes from a CNN part; the FP16 graph keeps outputs FP32")
    order = {}  # each Cast right after the node that makes its input, so the graph stays topologically sorted
    for tensor_and_type, (_, node) in casts.items():
        order.setdefault(tensor_and_type[0], []).append(node)
    nodes = [node for name in (i.name for i in graph.input) for node in order.pop(name, [])]
    for node in graph.node:
        nodes.append(node)
        for o in node.output:
            nodes.extend(order.pop(o, []))
    nodes = [n for name in list(order) for n in order.pop(name)] + nodes  # initializers cast at the start
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    used = {i for n in graph.node for i in n.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model


class GoodFrames:
    """onnxruntime.quantization CalibrationDataReader: good images as the Detector feeds them (uint8 NHWC at
    the model size, in the model's colour order; for a model trained on tiles, `plan`, their tiles), in batches."""

    def __init__(self, files: Sequence[str | os.PathLike], size: tuple[int, int], colour_order: str,
                 input_name: str = "frames", batch: int = 8, progress: bool = False, plan=None):
        self.files, self.size, self.colour_order, self.input_name = list(files), size, colour_order.lower(), input_name
        self.batch, self.progress, self.plan = batch, progress, plan
        self._batches = None

    def _iterate(self):
        from sdk.progress import progress_bar

        for s in progress_bar(range(0, len(self.files), self.batch), desc="calibrate", unit="batch",
                      disable=not self.progress, leave=False):
            frames = model_inputs(self.files[s:s + self.batch], self.size, self.colour_order, self.plan)
            for t in range(0, len(frames), self.batch):
                yield {self.input_name: frames[t:t + self.batch]}

    def get_next(self):
        if self._batches is None:
            self._batches = self._iterate()
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = None


HEADS = ("/model/student/", "/model/recovery/", "/model/seg/")


def model_inputs(files: Sequence[str | os.PathLike], size: tuple[int, int], colour_order: str, plan=None) -> np.ndarray:
    """uint8 NHWC model inputs of image files in `colour_order`: each image at the model size, or (a model trained on
    tiles, `plan`) every tile of each image, as the Detector cuts them."""
    from sdk.data import read_image
    from sdk.evaluate import resize_for_model

    if plan is None:
        return np.stack([resize_for_model(read_image(p, colour_order), size) for p in files])
    return np.concatenate([plan.cut(read_image(p, colour_order))[0] for p in files])


@dataclasses.dataclass(frozen=True)
class Int8Recipe:
    """What an INT8 graph quantizes and how: the node-name prefixes of the parts (`parts`), the op types in them,
    node-name prefixes kept float inside them (`keep_float`), activation type (uint8 asymmetric or int8 symmetric), weights
    per channel or per tensor, the calibration method (minmax, percentile, entropy) and how far beyond the good
    images' activation range the ranges of each part reach (`headroom`)."""
    parts: tuple[str, ...]
    op_types: tuple[str, ...]
    activations: str  # "uint8" (asymmetric, ONNX Runtime CPU) or "int8" (symmetric, TensorRT)
    per_channel: bool = True
    method: str = "minmax"
    headroom: tuple[tuple[str, float], ...] = ()
    keep_float: tuple[str, ...] = ()
    outputs_quantized: bool = True  # conv outputs quantized too (QLinearConv on a CPU); TensorRT: inputs only
    teacher_float_to_first_tap: bool = False  # the teacher's layers up to its first feature tap kept float

    def options(self) -> dict:
        """onnxruntime.quantization.quantize_static options (without the nodes)."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

        methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                   "entropy": CalibrationMethod.Entropy}
        if self.method not in methods:
            raise ValueError(f"calibration method {self.method!r}: choose one of {', '.join(methods)}")
        symmetric = self.activations == "int8"
        extra = {"ActivationSymmetric": symmetric, "WeightSymmetric": True}
        if not self.outputs_quantized:
            # QuantizeBias off: TensorRT's DequantizeLinear takes INT8/FP8/INT4, not ORT's INT32 biases
            extra.update({"QuantizeBias": False, "QDQKeepRemovableActivations": True, "DedicatedQDQPair": True,
                          "OpTypesToExcludeOutputQuantization": list(self.op_types)})
        if self.method == "percentile":
            extra["CalibPercentile"] = 99.99
        return dict(quant_format=QuantFormat.QDQ, per_channel=self.per_channel,
                    activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=list(self.op_types), calibrate_method=methods[self.method],
                    extra_options=extra)

    def nodes(self, proto) -> list[str]:
        kept = teacher_to_first_tap(proto) if self.teacher_float_to_first_tap else set()
        return [n.name for n in proto.graph.node if n.name.startswith(self.parts) and n.op_type in self.op_types
                and not n.name.startswith(self.keep_float) and n.name not in kept]


def teacher_to_first_tap(proto) -> set[str]:
    """The teacher's nodes that its first feature tap (the first teacher output another part reads: stride 4)
    depends on, by name."""
    teacher = [n for n in proto.graph.node if n.name.startswith("/model/teacher/")]
    producers = {o: n for n in teacher for o in n.output}
    read_outside = {i for n in proto.graph.node if not n.name.startswith("/model/teacher/") for i in n.input}
    first = next(n for n in teacher if any(o in read_outside for o in n.output))
    kept, todo = set(), [first]
    while todo:
        node = todo.pop()
        if node.name not in kept:
            kept.add(node.name)
            todo += [producers[i] for i in node.input if i in producers]
    return kept


# The memory search and the global branch read the teacher's features, so a quantized teacher costs image AUROC
# (-1.1 and -2.7 points with TensorRT's symmetric int8 on ball_screw and magnetic_tile): the TensorRT graph
# keeps the teacher in FP16 and quantizes the trainable heads, conv and residual-add inputs only (where TensorRT
# fuses conv + activation + add). The CPU recipe was chosen over the six development sets by the worst set
# (benchmarks/cpu_int8_recipe.py, docs/deployment.md "The CPU INT8 recipe"): with the whole teacher in uint8,
# tire's maps collapse, from the stem and first blocks; keeping the teacher FP32 up to its first tap holds
# every set within 0.84 points, at the batch-1 speed of the all-uint8 graph.
RECIPES = {
    "int8": Int8Recipe(parts=HEADS, op_types=("Conv", "Add"), activations="int8", outputs_quantized=False),
    "cpu-int8": Int8Recipe(parts=CNN_PARTS, op_types=("Conv", "Add", "Relu", "Clip", "Pad", "Resize", "Concat"),
                           activations="uint8", headroom=tuple((part, 2.0) for part in HEADS),
                           teacher_float_to_first_tap=True),
}


def to_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike, target: str,
            reader: GoodFrames | None, cache: str | os.PathLike, recipe: Int8Recipe | None = None) -> None:
    """Quantize the CNN parts of the FP32 graph at fp32_path into out_path by the target's recipe (or `recipe`).
    The calibration ranges come from `cache` when it exists (then `reader` may be None), else from `reader` and
    are saved to `cache`."""
    import onnx
    from onnxruntime.quantization import quantize_static

    cache = Path(cache)
    if reader is None and not cache.is_file():
        raise FileNotFoundError(f"no calibration data for INT8: {cache} does not exist; pass --calib DIR with good "
                                f"images (the held-back good images of the training run suit)")
    proto = onnx.load(str(fp32_path))
    check_cnn_parts(proto, str(fp32_path))
    if target not in RECIPES:
        raise ValueError(f"unknown INT8 target {target!r}: choose 'int8' (TensorRT) or 'cpu-int8' (ONNX Runtime CPU)")
    recipe = recipe or RECIPES[target]
    options, nodes = recipe.options(), recipe.nodes(proto)
    if reader is not None and recipe.method != "minmax":
        reader.batch = 1  # ORT's histogram calibrators stack every batch's outputs: they must be one size
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # its advice to pre-process (shape inference) does not apply
    try:
        if not cache.is_file() and recipe.method == "entropy":
            entropy_ranges(fp32_path, recipe.op_types, reader, cache)
        elif not cache.is_file():  # calibrate once: the cache keeps the good images' own ranges
            quantize_static(str(fp32_path), str(out_path), reader, nodes_to_quantize=nodes,
                            calibration_cache_path=str(cache), **options)
        with_headroom = Path(str(out_path) + ".ranges.json")
        try:
            with_headroom.write_text(json.dumps(widen_ranges(json.loads(cache.read_text()), dict(recipe.headroom))))
            quantize_static(str(fp32_path), str(out_path), None, nodes_to_quantize=nodes,
                            calibration_cache_path=str(with_headroom), **options)
        finally:
            with_headroom.unlink(missing_ok=True)
    finally:
        root.level = level
    quantized = onnx.load(str(out_path))
    keep_fp32_inputs(quantized, set(nodes))
    if target == "int8":  # the unquantized teacher in FP16, as TensorRT runs it with the FP16 flag
        quantized = to_fp16(quantized, ("/model/teacher/",))
    onnx.save(quantized, str(out_path))


def entropy_ranges(fp32_path, op_types, reader: GoodFrames, cache: Path) -> None:
    """Entropy (KL) calibration ranges saved to `cache`, with 2048 histogram bins. quantize_static passes no
    bin counts to its entropy calibrator, whose default of 128 bins and 128 quantized bins leaves one
    candidate threshold: the full range, i.e. min/max."""
    import tempfile

    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    with tempfile.TemporaryDirectory(prefix="cfrg.calib.") as tmp:
        calibrator = create_calibrator(Path(fp32_path), list(op_types), augmented_model_path=str(Path(tmp) / "a.onnx"),
                                       calibrate_method=CalibrationMethod.Entropy,
                                       extra_options={"num_bins": 2048, "num_quantized_bins": 128})
        calibrator.collect_data(reader)
        save_tensors_data(calibrator.compute_data(), cache)


def widen_ranges(cache: dict, headroom: dict[str, float]) -> dict:
    """The calibration cache with the ranges of tensors made by the parts in `headroom` scaled by its factor."""
    cache = json.loads(json.dumps(cache))
    for name, tensor in cache.get("data", {}).items():
        factor = next((f for part, f in headroom.items() if name.startswith(part)), 1.0)
        for key in ("lowest", "highest"):  # a number, or an array as {"data": number or list} (by method)
            value = tensor[key]
            data = value["data"] if isinstance(value, dict) else value
            data = [v * factor for v in data] if isinstance(data, list) else data * factor
            tensor[key] = {**value, "data": data} if isinstance(value, dict) else data
    return cache


def keep_fp32_inputs(model, quantized: set[str]) -> None:
    """Nodes outside `quantized` read the FP32 tensor, not its Q/DQ copy: ONNX Runtime hands a quantized tensor's
    DequantizeLinear output to every consumer, so without this the FP32 parts (which read the teacher's features)
    would see int8-rounded values. Q/DQ pairs left without consumers are removed."""
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in quantized or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear":
                q = producers.get(dq.input[0])
                if q is not None and q.op_type == "QuantizeLinear":
                    node.input[i] = q.input[0]
    while True:  # drop Q/DQ whose outputs nobody reads any more
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)


class PrecisionDropError(ValueError):
    """A reduced-precision graph (or engine) that does not hold FP32's accuracy (sdk.build.precision_check)."""


CHECK_IMAGES = 64  # held-back good images the precision check uses at most (and as many synthetic ones)


def check_against(reference_backend, backend, files, size, colour_order, input_name, thresholds, name, precision,
                  accept_drop: bool, warn=print, plan=None) -> dict:
    """sdk.build.precision_check of `backend` against `reference_backend` (on the tiles of the images for a model
    trained on tiles, `plan`); PrecisionDropError unless it holds or accept_drop; returns the check's figures for
    the description."""
    from sdk.evaluate import backend_predictor

    from .precision_check import check_precision

    picks = [files[i] for i in np.linspace(0, len(files) - 1, min(len(files), CHECK_IMAGES)).round().astype(int)]
    good = model_inputs(picks, size, "rgb", plan)
    result = check_precision(backend_predictor(reference_backend, input_name, colour_order),
                             backend_predictor(backend, input_name, colour_order), good, thresholds[0], thresholds[1],
                             name, precision, batch=min(8, getattr(backend, "max_batch", 8)))
    if not result.passed:
        if not accept_drop:
            raise PrecisionDropError(f"{name} refused, it does not hold FP32's accuracy: {'; '.join(result.failures())} "
                                     f"({result.line()}); keep FP32 or FP16, or write it anyway with --accept-drop")
        result.accepted_drop = True
        warn(f"warning: {name} written under --accept-drop: {'; '.join(result.failures())}")
    return result.to_dict()


def write_precision_graph(fp32_path: str | os.PathLike, precision: str, out: str | os.PathLike, *,
                          calib_files: Sequence[str | os.PathLike] | None = None, target_frr: float | None = None,
                          progress: bool = False, accept_drop: bool = False, warn=print,
                          recipe: Int8Recipe | None = None):
    """model.<precision>.onnx (out) and its model.json from the FP32 export at fp32_path; returns its ModelInfo.

    The description carries the FP32 model's, with precision and provenance of this graph; with calibration
    images the good_only thresholds are measured again with this graph (as `cfrg export` measured them), and
    the graph is checked against FP32 on them and on their synthetic-defect twins (sdk.build.precision_check):
    one that does not hold is refused (PrecisionDropError, nothing written) unless accept_drop. `recipe`
    replaces the INT8 target's recipe (benchmarks/cpu_int8_recipe.py compares them)."""
    import onnx

    from sdk.backends.onnxruntime import OnnxRuntimeBackend
    from sdk.evaluate import backend_predictor
    from sdk.files import atomic_output
    from sdk.model_info import ModelInfo, Provenance, software_versions

    from .thresholds import measure_thresholds, score_normalisation
    from .onnx_utils import save_with_description

    if precision not in SUFFIXES:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(SUFFIXES)}")
    require_onnx()
    fp32_path, out = Path(fp32_path), Path(out)
    fp32_backend = OnnxRuntimeBackend(fp32_path)
    source = ModelInfo.read(fp32_path, fp32_backend)
    if source.precision != "fp32":
        raise ValueError(f"{fp32_path} is already a {source.precision} graph; start from the FP32 export")
    size = (source.input.height, source.input.width)
    with atomic_output(out) as tmp:
        if precision == "fp16":
            proto = onnx.load(str(fp32_path))
            check_cnn_parts(proto, str(fp32_path))
            onnx.save(to_fp16(proto), str(tmp))
        else:
            reader = (GoodFrames(calib_files, size, source.input.colour_order, source.input.name, progress=progress,
                                 plan=source.tile_plan) if calib_files else None)
            to_int8(fp32_path, tmp, precision, reader, calibration_cache_path(out, "fp32"), recipe)
        thresholds, scale = dict(source.thresholds), source.score_normalisation
        check = {}
        if calib_files:
            graph_backend = OnnxRuntimeBackend(tmp)
            predict = backend_predictor(graph_backend, source.input.name, source.input.colour_order)
            frr = target_frr if target_frr is not None else source.thresholds["good_only"].details.get(
                "target_frr", 0.01)
            measured, good_scores = measure_thresholds(predict, size, [str(p) for p in calib_files], frr, None,
                                                         None, progress, plan=source.tile_plan)
            thresholds["good_only"] = measured["good_only"]
            scale = score_normalisation(np.array(good_scores), measured["good_only"].image)
            check = check_against(fp32_backend, graph_backend, [str(p) for p in calib_files], size,
                                  source.input.colour_order, source.input.name,
                                  (source.thresholds["good_only"].image, measured["good_only"].image), out.name,
                                  precision, accept_drop, warn, plan=source.tile_plan)
        info = dataclasses.replace(
            source, thresholds=thresholds, score_normalisation=scale, precision="int8" if "int8" in precision
            else precision, precision_check=check,
            provenance=Provenance.made_from(fp32_path, source.provenance.data_fingerprint,
                                            {**software_versions("onnx", "onnxruntime", "numpy"), "graph": precision}))
        proto = onnx.load(str(tmp))
        save_with_description(proto, tmp, info)
    info.write_beside(out)
    return info

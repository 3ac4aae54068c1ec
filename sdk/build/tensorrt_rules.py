"""TensorRT's documented rules checked on an ONNX graph and a build, without TensorRT (no torch either).

The rules are data (sdk/build/tensorrt_rules.json), each with its source (document and release): what TensorRT's
ONNX parser takes per op and dtype for 10.3 (JetPack 6), current 10.x and 11.x; the UINT8 and Q/DQ rules; and
for DLA (TensorRT 10.3) which ops become DLA layers under what conditions, static shapes, FP16/INT8 only,
implicit INT8, GPU fallback. `cfrg build` (and `--dry-run`) runs check() before TensorRT would spend minutes,
and the tests run it on every graph the project writes.

    findings = check(proto, "10.3", dla=True, precision="int8", shapes=((4, H, W, 3),) * 3, gpu_fallback=True)
    errors(findings)        what would not build
    gpu_layers(findings)    what a DLA build runs on the GPU instead (GPU fallback)

ONNX node names stand for TensorRT layer names (the parser names each layer after its node, and may add
layers of its own for a node); which nodes are held at FP32 follows dla.layer_precisions.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

RULES_FILE = Path(__file__).with_name("tensorrt_rules.json")
TYPE_NAMES = {1: "FP32", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16", 11: "DOUBLE",
              16: "BF16", 17: "FP8", 18: "FP8", 19: "FP8", 20: "FP8", 22: "INT4", 23: "FP4"}
ERROR, GPU = "error", "gpu"  # would not build; runs on the GPU instead of DLA


@dataclass(frozen=True)
class Finding:
    severity: str  # ERROR or GPU
    rule: str
    node: str  # the ONNX node (TensorRT layer) or "build"
    op: str
    text: str
    sources: tuple[str, ...] = ()

    def line(self) -> str:
        where = "build" if self.node == "build" else f"{self.node} ({self.op})"
        return f"{where}: {self.text}"


@lru_cache(maxsize=1)
def rules() -> dict:
    return json.loads(RULES_FILE.read_text(encoding="utf-8"))


def source_text(ids) -> str:
    table = rules()["sources"]
    return "; ".join(f"{table[i]['title']} [{table[i]['release']}] {table[i]['url']}" for i in ids)


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == ERROR]


def gpu_layers(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == GPU]


class _Graph:
    """The facts of an ONNX graph the rules read: types, initializers, producers, consumers, shapes."""

    def __init__(self, proto):
        import onnx
        from onnx import numpy_helper

        proto = onnx.shape_inference.infer_shapes(proto)
        g = proto.graph
        self.nodes = list(g.node)
        self.inputs = {i.name for i in g.input}
        self.inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.types = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input)
                      + list(g.output)}
        self.types.update({i.name: i.data_type for i in g.initializer})
        self.shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else None
                                 for d in vi.type.tensor_type.shape.dim]
                       for vi in list(g.value_info) + list(g.input) + list(g.output)}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        for n in self.nodes:  # Constant nodes are initializers to the parser
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.inits[n.output[0]] = numpy_helper.to_array(a.t)
                        self.types[n.output[0]] = a.t.data_type

    def type_name(self, tensor: str) -> str:
        return TYPE_NAMES.get(self.types.get(tensor, 0), "unknown")

    @staticmethod
    def attrs(node) -> dict:
        from onnx import helper

        values = {}
        for a in node.attribute:
            v = helper.get_attribute_value(a)
            values[a.name] = v.decode() if isinstance(v, bytes) else v
        return values


def check_parser(proto, target: str) -> list[Finding]:
    """What TensorRT `target`'s ONNX parser (10.3, 10.x, 11.x) would refuse in the graph."""
    table = rules()["parser"]
    ops, general = table["ops"], table["rules"]
    sources = tuple(table["sources"][target])
    g = proto if isinstance(proto, _Graph) else _Graph(proto)
    found: list[Finding] = []

    def add(rule, node, text, src=sources):
        found.append(Finding(ERROR, rule, node.name or node.op_type, node.op_type, text, tuple(src)))

    for name in g.inputs:
        if g.type_name(name) == "UINT8":
            for consumer in g.consumers.get(name, []):
                to = _Graph.attrs(consumer).get("to") if consumer.op_type == "Cast" else None
                if to not in (1, 10):
                    add("uint8", consumer, f"UINT8 input {name!r} feeds a {consumer.op_type}, not a Cast to FP32/FP16: "
                        f"{general['uint8']['text']}", general["uint8"]["source"])
    for node in g.nodes:
        if node.op_type == "Constant":
            continue
        spec = ops.get(node.op_type)
        if spec is None:
            add("op", node, f"{node.op_type} is not an operator of TensorRT {target}'s ONNX parser")
            continue
        allowed = {t.strip() for t in spec.get("types_from", {}).get(target, spec["types"]).split(",")}
        which = spec.get("data_inputs", [0])
        indices = range(len(node.input)) if which == "all" else [i for i in which if i < len(node.input)]
        for i in indices:
            tensor = node.input[i]
            if not tensor:
                continue
            kind = g.type_name(tensor)
            if kind == "UINT8" and tensor in g.inputs:
                continue  # reported by the UINT8 rule
            if kind == "INT8" and node.op_type != "DequantizeLinear":
                add("quantized_types", node, f"input {tensor!r} is INT8: {general['quantized_types']['text']}",
                    general["quantized_types"]["source"])
            elif kind not in allowed and kind != "unknown":
                add("types", node, f"input {i} ({tensor!r}) is {kind}; TensorRT {target}'s parser takes "
                    f"{node.op_type} in {', '.join(sorted(allowed))}")
        attrs = _Graph.attrs(node)
        for attr, values in spec.get("attributes", {}).items():
            if attr in attrs and attrs[attr] not in values:
                add("attributes", node, f"{attr}={attrs[attr]!r} is not supported (TensorRT takes "
                    f"{', '.join(map(str, values))})", [spec.get("attribute_source", sources[0])])
        axes = spec.get("axes_initializer")
        if axes is not None and len(node.input) > axes and node.input[axes] and node.input[axes] not in g.inits:
            add("axes_initializer", node, f"axes ({node.input[axes]!r}) are computed: "
                f"{general['axes_initializer']['text']}", general["axes_initializer"]["source"])
        if "zero_point" in spec:
            zp = node.input[spec["zero_point"]] if len(node.input) > spec["zero_point"] else ""
            if zp and (zp not in g.inits or g.inits[zp].any()):
                add("zero_point", node, f"zero point {zp!r} is not all zeros: {general['zero_point']['text']}",
                    general["zero_point"]["source"])
            scale = node.input[spec["static_scale"]]
            if scale not in g.inits:
                add("static_scale", node, f"scale {scale!r} is computed: {general['static_scale']['text']}",
                    general["static_scale"]["source"])
    return found


def _within(value, bounds) -> bool:
    return bounds[0] <= value <= bounds[1]


def _dla_condition(g: _Graph, node, spec: dict) -> str | None:
    """Why this node, of an op DLA has, still cannot be a DLA layer (None: it can)."""
    attrs = _Graph.attrs(node)
    if node.op_type == "Conv":
        weight = g.inits.get(node.input[1])
        kernel = attrs.get("kernel_shape") or (list(weight.shape[2:]) if weight is not None else [])
        if len(kernel) != 2:
            return "DLA convolutions are 2D only"
        pads, strides = attrs.get("pads", [0] * 4), attrs.get("strides", [1, 1])
        if not all(_within(k, spec["kernel"]) for k in kernel):
            return f"kernel {kernel} outside DLA's {spec['kernel']}"
        if not all(_within(s, spec["stride"]) for s in strides):
            return f"stride {strides} outside DLA's {spec['stride']}"
        if not all(_within(d, spec["dilation"]) for d in attrs.get("dilations", [1, 1])):
            return f"dilation outside DLA's {spec['dilation']}"
        if not all(_within(p, spec["pad"]) and p < kernel[i % 2] for i, p in enumerate(pads)):
            return f"padding {pads} outside DLA's {spec['pad']} or not below the kernel"
        if weight is not None and weight.shape[0] > spec["max_output_maps"]:
            return f"{weight.shape[0]} output maps, DLA takes up to {spec['max_output_maps']}"
        if attrs.get("group", 1) > spec["max_groups"]:
            return f"{attrs['group']} groups, DLA takes up to {spec['max_groups']}"
    elif node.op_type in ("MaxPool", "AveragePool"):
        kernel, strides = attrs.get("kernel_shape", []), attrs.get("strides", [1] * len(attrs.get("kernel_shape", [])))
        if len(kernel) != 2 or not all(_within(k, spec["window"]) for k in kernel):
            return f"window {kernel} outside DLA's 2D {spec['window']}"
        if not all(_within(s, spec["stride"]) for s in strides):
            return f"stride {strides} outside DLA's {spec['stride']}"
        if not all(_within(p, spec["pad"]) for p in attrs.get("pads", [0] * 4)):
            return f"padding outside DLA's {spec['pad']}"
    elif node.op_type == "Concat":
        rank = len(g.shapes.get(node.output[0], []))
        axis = attrs.get("axis", 0) % rank if rank else attrs.get("axis", 0)
        if rank != 4 or axis != spec["axis"]:
            return "DLA concatenates on the channel axis of 4D tensors only"
    elif node.op_type == "Resize":
        mode = attrs.get("mode", "nearest")
        rule = spec["modes"].get(mode)
        ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
        if rule is None or ctm not in rule["coordinate_transformation_mode"]:
            return f"DLA resizes {', '.join(spec['modes'])} only, not {mode} with {ctm}"
        scales = g.inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scales is None or len(scales) != 4 or list(scales[:2]) != [1, 1]:
            return "DLA resizes by 4 constant scales with the first two 1"
        if not all(float(s).is_integer() and _within(s, rule["scale"]) for s in scales[2:]):
            return f"scales {list(map(float, scales[2:]))}: DLA takes whole numbers in {rule['scale']} for {mode}"
    elif node.op_type in ("Add", "Sub", "Mul", "Max", "Min"):
        shapes = [g.shapes.get(i) for i in node.input]
        if any(s is not None and len(s) != 4 for s in shapes) or any(i in g.inits for i in node.input):
            return "DLA element-wise layers take two 4D tensors"
    elif node.op_type in ("Relu", "Clip", "Sigmoid", "Tanh"):
        if len(g.shapes.get(node.input[0], [])) != 4:
            return "DLA activations are 2D (4D tensors) only"
    elif node.op_type == "Softmax":
        shape = g.shapes.get(node.input[0], [])
        axis = attrs.get("axis", -1) % max(1, len(shape))
        if len(shape) != 4 or axis == 0 or (shape[axis] or 0) > spec["max_axis"]:
            return "DLA's SoftMax needs a 4D tensor and a channel or spatial axis"
    return None


def check_dla(proto, target: str, precision: str, shapes, gpu_fallback: bool) -> list[Finding]:
    """What a DLA build of `proto` would refuse, and which layers it runs on the GPU instead."""
    from .engine import layer_precisions, spec_precision

    dla = rules()["dla"]
    g = proto if isinstance(proto, _Graph) else _Graph(proto)
    found: list[Finding] = []
    build = rules()["targets"][target]
    if not build["dla"]:
        found.append(Finding(ERROR, "dla_version", "build", "", build["dla_refusal"], tuple(build["dla_source"])))
        return found
    if precision not in dla["precisions"]:
        found.append(Finding(ERROR, "dla_precision", "build", "", f"DLA runs {' and '.join(dla['precisions'])} "
                             f"only, not {precision}: add --fp16 or --int8", tuple(dla["precision_source"])))
    if shapes is not None and len({tuple(s) for s in shapes}) != 1:
        found.append(Finding(ERROR, "dla_static_shapes", "build", "",
                             f"the profile runs from batch {shapes[0][0]} to {shapes[2][0]}: {dla['static_shapes']['text']}",
                             tuple(dla["static_shapes"]["source"])))
    if shapes is not None and shapes[0][0] > dla["max_batch"]:
        found.append(Finding(ERROR, "dla_batch", "build", "", f"batch {shapes[0][0]} above DLA's {dla['max_batch']}",
                             tuple(dla["static_shapes"]["source"])))
    qdq = [n for n in g.nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if qdq:
        found.append(Finding(ERROR, "dla_int8_qdq", qdq[0].name, qdq[0].op_type,
                             f"the graph has {len(qdq)} Q/DQ nodes: {dla['int8']['text']}; build DLA from the FP32 "
                             f"graph with the ranges written from the Q/DQ graph", tuple(dla["int8"]["source"])))
    spec = layer_precisions(precision)
    off_dla: list[Finding] = []
    for node in g.nodes:
        if node.op_type in ("Constant", "QuantizeLinear", "DequantizeLinear"):
            continue
        held = spec_precision(node.name, spec)
        why, src = None, dla["source"]
        if node.op_type in dla["not_dla"]:
            why = dla["not_dla"][node.op_type]
        elif node.op_type not in dla["ops"]:
            why = f"{node.op_type} is not a DLA layer"
        elif held == "fp32":
            why, src = dla["held_fp32"]["text"], dla["held_fp32"]["source"]
        else:
            why = _dla_condition(g, node, dla["ops"][node.op_type])
            src = dla["ops"][node.op_type].get("source", src)
        if why is not None:
            off_dla.append(Finding(GPU if gpu_fallback else ERROR, "dla_layer", node.name or node.op_type,
                                   node.op_type, why if gpu_fallback else
                                   f"{why}; without GPU fallback the build fails (add --allowGPUFallback)",
                                   tuple(src) + tuple(dla["fallback"]["source"])))
    found += off_dla
    return found


def check(proto, target: str, *, dla: bool = False, precision: str = "fp32", shapes=None,
          gpu_fallback: bool = False) -> list[Finding]:
    """Every rule for building `proto` on `target` ("10.3", "10.x", "11.x"), on the GPU or on DLA."""
    if target not in rules()["targets"]:
        raise ValueError(f"unknown TensorRT target {target!r}: choose {', '.join(rules()['targets'])}")
    g = _Graph(proto)
    found = check_parser(g, target)
    if dla:
        found += check_dla(g, target, precision, shapes, gpu_fallback)
    return found


def summary_lines(findings: list[Finding], limit: int = 8) -> list[str]:
    """The plan's lines for one target: the errors (each), and the layers DLA leaves to the GPU (by reason)."""
    bad, gpu = errors(findings), gpu_layers(findings)
    if not bad:
        lines = ["rules         no violation of TensorRT's documented rules (sdk/build/tensorrt_rules.json)"]
    else:
        lines = [f"rules         {len(bad)} violation(s): this would not build"]
        lines += [f"  error       {f.line()}" for f in bad[:limit]]
        if len(bad) > limit:
            lines.append(f"  error       ... and {len(bad) - limit} more")
    if gpu:
        by_reason: dict[str, list[Finding]] = {}
        for f in gpu:
            by_reason.setdefault(f.text, []).append(f)
        lines.append(f"gpu fallback  {len(gpu)} layer(s) run on the GPU, not DLA:")
        for reason, items in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            names = ", ".join(f.node for f in items[:4]) + (f", ... ({len(items)} in all)" if len(items) > 4 else "")
            lines.append(f"  {len(items):>4} x     {reason}: {names}")
    return lines

"""ONNX graph helpers (no torch): constant folding with the ONNX reference evaluator, the report of what a graph
uses outside TensorRT's ONNX parser, and saving a graph with its model description."""
from __future__ import annotations

import numpy as np


def fold_constants(model):
    """Replace every node whose inputs are all constants by an initializer (in place; returns model).

    The TorchScript exporter spells static pads as Constant/ConstantOfShape/Concat/Slice chains
    that its own folding leaves; TensorRT and linting want plain constant inputs.
    """
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    consts: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    keep = []
    for node in graph.node:
        inputs = [i for i in node.input if i]
        foldable = node.op_type == "Constant" or (inputs and all(i in consts for i in inputs))
        if foldable and node.op_type not in ("RandomNormal", "RandomUniform", "Multinomial"):
            if node.op_type == "Constant":
                sub_inputs = []
            else:
                sub_inputs = [helper.make_tensor_value_info(i, onnx.TensorProto.UNDEFINED, None) for i in inputs]
            sub = helper.make_model(
                helper.make_graph([node], "fold", sub_inputs,
                                  [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
                                   for o in node.output]),
                opset_imports=model.opset_import)
            values = ReferenceEvaluator(sub).run(None, {i: consts[i] for i in inputs})
            for name, value in zip(node.output, values):
                consts[name] = np.asarray(value)
            continue
        keep.append(node)
    used = {i for n in keep for i in n.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(keep)
    existing = {init.name for init in graph.initializer}
    for name, value in consts.items():
        if name in used and name not in existing:
            graph.initializer.append(numpy_helper.from_array(value, name))
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return model


# Operators of TensorRT's ONNX parser (onnx-tensorrt docs/operators.md) that this graph may use.
TENSORRT_OPS = frozenset({
    "Add", "ArgMax", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "Conv",
    "ConvTranspose", "Div", "Erf", "Exp", "Flatten", "Gather", "Gemm", "GlobalAveragePool", "Identity",
    "LeakyRelu", "Log", "MatMul", "Max", "MaxPool", "Min", "Mul", "Pad", "Pow", "ReduceL2", "ReduceMax", "ReduceMean",
    "ReduceSum", "Relu", "Reshape", "Resize", "Sigmoid", "Slice", "Softmax", "Sqrt", "Squeeze", "Sub",
    "Tanh", "Transpose", "Unsqueeze", "Upsample", "Expand", "Shape", "DequantizeLinear", "QuantizeLinear",
})


def graph_report(proto) -> dict:
    """Ops outside TensorRT's parser and int64 tensors that carry data (not shape arithmetic)."""
    import onnx

    ops = sorted({n.op_type for n in proto.graph.node})
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output)}
    int64 = [name for name, t in types.items() if t == onnx.TensorProto.INT64]
    return {"ops": ops, "unsupported_ops": [o for o in ops if o not in TENSORRT_OPS], "int64_tensors": int64}


def save_with_description(proto, path, info) -> None:
    """Save the graph with its model description (sdk.model_info.ModelInfo) as the 'cfrg' metadata entry."""
    import onnx

    from sdk.model_info import METADATA_KEY

    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json(indent=None)
    onnx.save(proto, str(path))

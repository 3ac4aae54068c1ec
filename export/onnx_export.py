"""Export a CFRG checkpoint to one ONNX graph that does the whole numeric job.

Graph: frames uint8 NHWC at the model size (colour order recorded) -> Cast/Transpose/normalise ->
teacher, student, recovery, segmentation -> fused map -> fixed Gaussian -> outputs
`anomaly_map` (N,H,W) float32 and `score` (N,) float32. Dynamic batch. TorchScript exporter
(no onnxscript needed), then our constant folding.
"""
from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from .model import CFRG
from .onnx_utils import fold_constants

OPSET = 17  # parsed by TensorRT 8.6, 10.x (JetPack 6: 10.3) and 11
INPUT_NAME = "frames"
OUTPUT_NAMES = ("anomaly_map", "score")

# Operators of TensorRT's ONNX parser (onnx-tensorrt docs/operators.md) that this graph may use.
TENSORRT_OPS = frozenset({
    "Add", "ArgMax", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "Conv",
    "ConvTranspose", "Div", "Erf", "Exp", "Flatten", "Gather", "Gemm", "GlobalAveragePool", "Identity",
    "LeakyRelu", "MatMul", "Max", "MaxPool", "Min", "Mul", "Pad", "Pow", "ReduceL2", "ReduceMax", "ReduceMean",
    "ReduceSum", "Relu", "Reshape", "Resize", "Sigmoid", "Slice", "Softmax", "Sqrt", "Squeeze", "Sub",
    "Tanh", "Transpose", "Unsqueeze", "Upsample", "Expand", "Shape", "DequantizeLinear", "QuantizeLinear",
})


class DeployGraph(nn.Module):
    """uint8 NHWC frames in, (anomaly_map, score) out."""

    def __init__(self, model: CFRG):
        super().__init__()
        self.model = model
        self.eval()  # the exporter restores the wrapper's mode afterwards: keep it eval

    def forward(self, frames: torch.Tensor):
        x = frames.permute(0, 3, 1, 2).to(torch.float32) * (1.0 / 255.0)
        amap, score = self.model(x)
        return amap[:, 0], score


def export_onnx(model: CFRG, path=None, opset: int = OPSET):
    """Export to ONNX (returns the onnx.ModelProto; writes it when path is given)."""
    import onnx

    model = model.eval().to(memory_format=torch.contiguous_format)
    h, w = model.config.image_size
    dummy = torch.zeros(1, h, w, 3, dtype=torch.uint8)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(DeployGraph(model), (dummy,), buf, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), do_constant_folding=True,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"},
                                        OUTPUT_NAMES[1]: {0: "batch"}})
    proto = fold_constants(onnx.load_from_string(buf.getvalue()))
    proto = onnx.shape_inference.infer_shapes(proto)
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save(proto, str(path))
    return proto


def graph_report(proto) -> dict:
    """Ops outside TensorRT's parser and int64 tensors that carry data (not shape arithmetic)."""
    import onnx

    ops = sorted({n.op_type for n in proto.graph.node})
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output)}
    int64 = [name for name, t in types.items() if t == onnx.TensorProto.INT64]
    return {"ops": ops, "unsupported_ops": [o for o in ops if o not in TENSORRT_OPS], "int64_tensors": int64}

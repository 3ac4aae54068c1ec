"""Precision graphs (sdk.build.precision): FP16 keeps the numerically sensitive parts FP32, the TensorRT INT8 graph
has Q/DQ exactly where TensorRT fuses them, the CPU INT8 graph runs in ONNX Runtime, all three pass the
TensorRT operator check and run in sdk.Detector; the calibration is cached and reused."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from sdk.build.onnx_utils import TENSORRT_OPS, graph_report
from sdk.build.precision import (CNN_PARTS, HEADS, calibration_cache_path, precision_path, teacher_to_first_tap,
                                 write_precision_graph)
from sdk import Detector
from sdk.data import read_image
from sdk.evaluate import resize_for_model
from tests.conftest import DEMO_ROOT


@pytest.fixture(scope="module")
def graphs(precision_graphs):
    return precision_graphs


def _frames(size, n=6):
    files = sorted((DEMO_ROOT / "ball_screw" / "test").glob("*/*.jpg"))[:: 32 // n][:n]
    return np.stack([resize_for_model(read_image(f, "rgb"), size) for f in files])


def _types(model) -> dict:
    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    found = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input) + list(g.output)}
    found.update({i.name: i.data_type for i in g.initializer})
    return found


def test_fp16_graph_keeps_the_sensitive_parts_fp32(graphs):
    fp32, _, _ = graphs
    model = onnx.load(str(precision_path(fp32, "fp16")))
    types = _types(model)
    for node in model.graph.node:
        outs = [types.get(o) for o in node.output if types.get(o) in (TensorProto.FLOAT, TensorProto.FLOAT16)]
        if node.op_type == "Cast" or not outs:
            continue
        want = TensorProto.FLOAT16 if node.name.startswith(CNN_PARTS) else TensorProto.FLOAT
        assert set(outs) == {want}, (node.name, node.op_type, outs)
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.UINT8]
    assert {o.type.tensor_type.elem_type for o in model.graph.output} == {TensorProto.FLOAT}
    boundary = [n for n in model.graph.node if n.name.endswith(("_as_fp16_cast", "_as_fp32_cast"))]
    assert 0 < len(boundary) <= 40  # a Cast only where a tensor crosses between FP16 and FP32 parts


def test_fp16_and_int8_graphs_stay_close_to_fp32(graphs, exported_model):
    """FP16 to a few hundredths; INT8 (a 4-step model calibrated on 4 images) the same maps up to noise. The
    accuracy of each precision on the full test sets is measured in docs/deployment.md."""
    fp32, _, _ = graphs
    det32 = Detector(fp32)
    x = _frames(det32.size)
    m32, s32 = det32.infer(x)
    spread = float(m32.max() - m32.min())
    m, s = Detector(precision_path(fp32, "fp16")).infer(x)
    assert m.dtype == np.float32 and np.abs(m - m32).max() <= 0.02 * spread and np.abs(s - s32).max() <= 0.05
    for precision in ("int8", "cpu-int8"):
        m, s = Detector(precision_path(fp32, precision)).infer(x)
        assert m.dtype == np.float32 and s.dtype == np.float32 and np.isfinite(s).all()
        assert np.corrcoef(m.ravel(), m32.ravel())[0, 1] > 0.9, precision


def _producers(model) -> dict:
    return {o: n for n in model.graph.node for o in n.output}


def _consumers(model) -> dict:
    found = {}
    for n in model.graph.node:
        for i in n.input:
            found.setdefault(i, []).append(n)
    return found


def test_tensorrt_int8_graph_places_qdq_where_tensorrt_fuses(graphs):
    fp32, _, _ = graphs
    model = onnx.load(str(precision_path(fp32, "int8")))
    producers, consumers = _producers(model), _consumers(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.name.startswith(HEADS)]
    assert convs
    types = _types(model)
    teacher = [n for n in model.graph.node if n.name.startswith("/model/teacher/") and n.op_type == "Conv"]
    assert teacher and all(types[n.output[0]] == TensorProto.FLOAT16 for n in teacher)  # unquantized, FP16
    for conv in convs:  # every head conv: a quantized input and per-channel int8 weights, symmetric
        data, weight = producers[conv.input[0]], producers[conv.input[1]]
        assert data.op_type == "DequantizeLinear" and weight.op_type == "DequantizeLinear", conv.name
        w_q, w_scale, w_zero = (inits[i] for i in weight.input)
        assert w_q.dtype == np.int8 and w_scale.size == w_q.shape[0] and not w_zero.any(), conv.name
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":  # no dangling Q: each feeds DQs only, symmetric int8
            assert {c.op_type for c in consumers[node.output[0]]} == {"DequantizeLinear"}
            zero = inits[node.input[2]]
            assert zero.dtype == np.int8 and not zero.any()
        if node.op_type == "DequantizeLinear":  # every DQ feeds only the heads' convs and adds
            assert all(c.name.startswith(HEADS) and c.op_type in ("Conv", "Add")
                       for c in consumers[node.output[0]]), node.name
            src = node.input[0]
            assert src in inits or producers[src].op_type == "QuantizeLinear"
    fp32_parts = [n for n in model.graph.node if not n.name.startswith(CNN_PARTS)
                  and n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    assert not any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                   for n in fp32_parts for i in n.input)
    adds = [n for n in model.graph.node if n.op_type == "Add" and n.name.startswith(HEADS)]
    assert adds and all(producers[i].op_type == "DequantizeLinear" for n in adds for i in n.input)


def test_cpu_int8_graph_uses_asymmetric_uint8_activations_and_widens_the_heads_ranges(graphs):
    fp32, _, _ = graphs
    model = onnx.load(str(precision_path(fp32, "cpu-int8")))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qs = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    zeros = [inits[n.input[2]] for n in qs]
    assert zeros and all(z.dtype == np.uint8 for z in zeros) and any(z.any() for z in zeros)
    assert any(n.input[0].startswith("/model/teacher/") for n in qs)  # the teacher is quantized on a CPU
    producers = {o: n for n in model.graph.node for o in n.output}
    kept = teacher_to_first_tap(onnx.load(str(fp32)))  # except up to its first tap: tire's maps collapsed in uint8
    dequantized = {n.name for n in model.graph.node
                   if any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in n.input)}
    assert len(kept) >= 5 and not kept & dequantized
    assert any(name.startswith("/model/teacher/") and name not in kept for name in dequantized)
    cache = json.loads(calibration_cache_path(precision_path(fp32, "cpu-int8"), "fp32").read_text())["data"]
    own_range = {o for n in model.graph.node if n.op_type in ("Conv", "Add", "Relu", "Clip") for o in n.output}
    scales = {n.input[0]: float(inits[n.input[1]]) for n in qs}  # (Pad, Resize, Concat share their input's)
    checked = {HEADS: 0, "/model/teacher/": 0}
    for name, scale in scales.items():  # u8 scale = (high - low) / 255 over the range, widened 2x in the heads
        if name in cache and name in own_range:
            lo, hi = min(cache[name]["lowest"]["data"][0], 0.0), max(cache[name]["highest"]["data"][0], 0.0)
            factor = 2.0 if name.startswith(HEADS) else 1.0
            assert scale == pytest.approx(factor * (hi - lo) / 255, rel=1e-3), name
            checked[HEADS if name.startswith(HEADS) else "/model/teacher/"] += name.startswith(CNN_PARTS)
    assert min(checked.values()) >= 5, checked


@pytest.mark.parametrize("precision", ["fp16", "int8", "cpu-int8"])
def test_every_precision_graph_passes_the_tensorrt_operator_check_and_has_its_description(graphs, precision):
    fp32, infos, calib = graphs
    path = precision_path(fp32, precision)
    model = onnx.load(str(path))
    report = graph_report(model)
    assert set(report["ops"]) <= TENSORRT_OPS and not report["unsupported_ops"]
    onnx.checker.check_model(model)
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["precision"] == ("fp16" if precision == "fp16" else "int8")
    assert side["provenance"]["source_model"] == "model.onnx" and side["provenance"]["versions"]["graph"] == precision
    assert side["thresholds"]["good_only"]["n_images"] == len(calib)
    assert json.loads({p.key: p.value for p in model.metadata_props}["cfrg"]) == side


def test_int8_calibration_is_cached_and_reused(graphs, tmp_path):
    fp32, _, _ = graphs
    cache = calibration_cache_path(precision_path(fp32, "int8"), "fp32")
    assert cache.is_file() and json.loads(cache.read_text())
    again = tmp_path / "again.int8.onnx"
    import shutil

    shutil.copy(cache, calibration_cache_path(again, "fp32"))
    write_precision_graph(fp32, "int8", again)  # no images: the cached ranges
    scales = lambda path: sorted(float(numpy_helper.to_array(i).ravel()[0]) for i in onnx.load(str(path)).graph.initializer
                                 if i.name.endswith("_scale"))
    assert scales(again) == scales(precision_path(fp32, "int8"))
    with pytest.raises(FileNotFoundError, match="--calib"):
        write_precision_graph(fp32, "int8", tmp_path / "none.int8.onnx")

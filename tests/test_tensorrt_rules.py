"""sdk.build.tensorrt_rules: TensorRT's documented rules, as data with sources, checked without TensorRT on every
graph the project writes (FP32, FP16, TensorRT INT8) and on the DLA build cases that would fail.

These tests prove the graphs and plans keep the rules as the rule file states them; they do not prove that the
rule file is complete or that real TensorRT agrees (tests/gpu builds real engines where TensorRT exists)."""
import json

import numpy as np
import onnx
import pytest
import torch

from export import onnx_export
from sdk.build.dla import calibration_cache_text, dla_calibration_cache, dla_ranges, read_calibration_cache
from sdk.build.options import BuildOptions
from sdk.build.precision import CNN_PARTS, precision_path
from sdk.build.tensorrt_rules import RULES_FILE, check, check_parser, errors, gpu_layers, rules, source_text
from sdk import cli
from sdk.cli import main

TARGETS = ("10.3", "10.x", "11.x")


@pytest.fixture(scope="module")
def graphs(precision_graphs):
    """model.onnx of the fixture and its FP16 and TensorRT INT8 graphs, as cfrg build writes them."""
    fp32 = precision_graphs[0]
    return {p: onnx.load(str(precision_path(fp32, p))) for p in ("fp32", "fp16", "int8")}, fp32


def _shapes(n=4, m=None):
    return ((n, 64, 128, 3), (n, 64, 128, 3), (m or n, 64, 128, 3))


def test_every_rule_names_a_source_that_exists():
    data = rules()
    ids = set(data["sources"])
    cited = set(data["dla"]["source"]) | set(data["dla_versions"]["source"])
    for section in (data["parser"]["rules"], {k: v for k, v in data["dla"].items() if isinstance(v, dict) and "source"
                                              in v}, data["build"]):
        for rule in section.values():
            cited |= set(rule["source"])
    for target in data["targets"].values():
        cited |= set(target.get("dla_source", []))
    for src in data["parser"]["sources"].values():
        cited |= set(src)
    assert cited <= ids and len(cited) >= 15
    assert all(s["url"].startswith("https://") and s["release"] for s in data["sources"].values())
    assert "NVIDIA/TensorRT/issues/3985" in source_text(["trt-3985"])
    assert json.loads(RULES_FILE.read_text())["format"] == "cfrg-tensorrt-rules-1"


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_graph_we_write_keeps_the_parser_rules_of_every_target(graphs, precision):
    """CI's check of the graphs (FP32, FP16 and the Q/DQ INT8 graph) against TensorRT 10.3, 10.x and 11.x."""
    protos, _ = graphs
    for target in TARGETS:
        assert errors(check(protos[precision], target)) == [], target
    first = protos[precision].graph.node[0]
    assert first.op_type == "Cast" and first.input[0] == "frames"


def test_the_graph_of_before_with_a_uint8_transpose_is_refused_on_every_target(exported_model, monkeypatch):
    """Today's graph before the fix fed the uint8 frames into a Transpose: the check must say so."""
    model = exported_model[0]

    def transpose_first(self, frames):
        x = frames.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        amap, score = self.model(x)
        return amap[:, 0], score

    monkeypatch.setattr(onnx_export.DeployGraph, "forward", transpose_first)
    old = onnx_export.export_onnx(model)
    assert old.graph.node[0].op_type == "Transpose"
    for target in TARGETS:
        found = errors(check(old, target))
        assert [f.rule for f in found] == ["uint8"] and found[0].op == "Transpose"
        assert "feeds a Transpose, not a Cast" in found[0].line() and "trt-3985" in found[0].sources


def test_int32_biases_zero_points_and_computed_axes_are_caught(graphs):
    """The parser rules beyond UINT8: ORT's INT32-quantized biases (DequantizeLinear takes INT8 only), a nonzero
    zero point, a computed ReduceSum axes input, an unsupported Pad mode."""
    protos, _ = graphs
    int8 = protos["int8"]
    assert not any(n.op_type == "DequantizeLinear" and n.input[0].endswith("bias_quantized") for n in int8.graph.node)
    broken = onnx.load_from_string(int8.SerializeToString())
    dq = next(n for n in broken.graph.node if n.op_type == "DequantizeLinear")
    weight = next(i for i in broken.graph.initializer if i.name == dq.input[0])
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight).astype(np.int32), weight.name))
    zp = next(i for i in broken.graph.initializer if i.name == dq.input[2])
    zp.CopyFrom(onnx.numpy_helper.from_array(np.ones(onnx.numpy_helper.to_array(zp).shape, np.int8), zp.name))
    pad = next(n for n in broken.graph.node if n.op_type == "Pad")
    next(a for a in pad.attribute if a.name == "mode").s = b"symmetric"
    rules_hit = {f.rule for f in check_parser(broken, "10.3")}
    assert {"types", "zero_point", "attributes"} <= rules_hit
    reduce = next(n for n in protos["fp32"].graph.node if n.op_type == "ReduceSum" and len(n.input) > 1)
    computed = onnx.load_from_string(protos["fp32"].SerializeToString())
    node = next(n for n in computed.graph.node if n.name == reduce.name)
    computed.graph.node.insert(0, onnx.helper.make_node("Identity", [node.input[1]], ["axes_copy"], name="copy"))
    node.input[1] = "axes_copy"
    assert "axes_initializer" in {f.rule for f in check_parser(computed, "10.3")}


def test_dla_with_a_dynamic_batch_is_refused_by_the_options_and_the_check(graphs):
    protos, fp32 = graphs
    with pytest.raises(ValueError, match="DLA needs static shapes"):
        BuildOptions(onnx=fp32, int8=True, dla_core=0, gpu_fallback=True,
                     max_shapes=(4, 64, 128, 3)).check((64, 128))
    found = errors(check(protos["fp32"], "10.3", dla=True, precision="int8", shapes=_shapes(1, 4), gpu_fallback=True))
    assert [f.rule for f in found] == ["dla_static_shapes"]
    assert errors(check(protos["fp32"], "10.3", dla=True, precision="int8", shapes=_shapes(4), gpu_fallback=True)) == []


def test_dla_without_gpu_fallback_is_refused_naming_the_layers(graphs):
    protos, _ = graphs
    found = errors(check(protos["fp32"], "10.3", dla=True, precision="fp16", shapes=_shapes(1), gpu_fallback=False))
    ops = {f.op for f in found}
    assert {"Cast", "MatMul", "ReduceSum", "Exp", "Log", "Sqrt"} <= ops and "--allowGPUFallback" in found[0].text
    assert all(f.rule == "dla_layer" for f in found)


def test_dla_int8_from_qdq_nodes_is_refused_and_its_ranges_come_from_the_qdq_graph(graphs, tmp_path):
    """DLA on 10.x takes INT8 from ranges: a Q/DQ graph is refused for DLA; the DLA build parses the FP32 graph
    with a calibration cache whose scales are the Q/DQ graph's own (equalised where DLA needs equal ranges)."""
    protos, fp32 = graphs
    found = errors(check(protos["int8"], "10.3", dla=True, precision="int8", shapes=_shapes(1), gpu_fallback=True))
    assert [f.rule for f in found] == ["dla_int8_qdq"] and "implicit quantization" in found[0].text
    options = BuildOptions(onnx=fp32, int8=True, dla_core=0, gpu_fallback=True)
    assert options.engine_source == fp32 and options.graph.name == "model.int8.onnx"
    qdq = dla_calibration_cache(protos["int8"])
    ranges = dla_ranges(protos["fp32"], qdq)
    assert len(ranges) >= 10 and all(ranges[k] >= qdq.get(k, qdq.get(k + "_as_fp32", 0)) for k in ranges)
    same = sum(ranges[k] == qdq[k] for k in ranges if k in qdq)
    assert same >= len(ranges) // 2  # most scales unchanged; Add pairs take the wider of their two
    fp32_readers = {i for n in protos["fp32"].graph.node if not n.name.startswith(CNN_PARTS) for i in n.input}
    assert not set(ranges) & fp32_readers  # nothing held at FP32 reads an INT8 tensor
    cache = tmp_path / "model.int8.dla.calib"
    cache.write_text(calibration_cache_text(ranges))
    assert cache.read_text().splitlines()[0] == "TRT-100300-EntropyCalibration2"
    back = read_calibration_cache(cache)
    assert back.keys() == ranges.keys() and all(np.float32(back[k]) == np.float32(ranges[k]) for k in back)


@pytest.mark.parametrize("target", ["10.x", "11.x"])
def test_dla_on_a_tensorrt_without_dla_is_refused_with_what_to_use(graphs, target):
    protos, _ = graphs
    found = errors(check(protos["fp32"], target, dla=True, precision="fp16", shapes=_shapes(1), gpu_fallback=True))
    assert [f.rule for f in found] == ["dla_version"] and "10.3" in found[0].text


def test_dla_lists_the_layers_that_fall_back_to_the_gpu(graphs):
    protos, _ = graphs
    found = check(protos["fp32"], "10.3", dla=True, precision="int8", shapes=_shapes(2), gpu_fallback=True)
    gpu = gpu_layers(found)
    on_gpu = {f.node for f in gpu}
    assert "/Cast" in on_gpu and any("memory" in n and "MatMul" in n for n in on_gpu)
    cnn = [n for n in protos["fp32"].graph.node if n.name.startswith("/model/student/") and n.op_type == "Conv"]
    assert cnn and not {n.name for n in cnn} & on_gpu  # the heads' convolutions stay on DLA


@pytest.mark.parametrize("args,words", [
    (["--fp16", "--tensorrt", "10.3"], ["TensorRT 10.3 (JetPack 6", "no violation", "--stronglyTyped --noTF32"]),
    (["--int8", "--useDLACore=0", "--allowGPUFallback", "--minShapes=frames:2x64x128x3",
      "--maxShapes=frames:2x64x128x3"], ["DLA core 0 with GPU fallback", "no violation", "run on the GPU, not DLA",
                                         "--calib=", "--layerPrecisions=*:fp32,/model/teacher/*:fp16",
                                         "TensorRT 11.x: refused"]),
    (["--int8", "--tensorrt", "10.x"], ["model.int8.onnx --saveEngine", "no violation"]),
    (["--int8", "--tensorrt", "11.x"], ["TensorRT 11.x (strongly typed", "no violation"]),
])
def test_dry_run_plans_report_no_violation_for_the_default_model(graphs, args, words, capsys):
    _, fp32 = graphs
    before = sorted(p.name for p in fp32.parent.iterdir())
    assert main(["build", "--onnx", str(fp32), *args, "--dry-run", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for word in words:
        assert word in out, word
    assert "TF32 off" in out
    assert sorted(p.name for p in fp32.parent.iterdir()) == before


@pytest.mark.parametrize("args,words", [
    (["--fp16", "--useDLACore=0", "--minShapes=frames:1x64x128x3"], "without GPU fallback the build fails"),
    (["--fp16", "--useDLACore=0", "--allowGPUFallback", "--tensorrt", "11.x"], "builds no DLA engines"),
    (["--fp16", "--useDLACore=0", "--allowGPUFallback", "--tensorrt", "10.x"], "have no DLA"),
])
def test_dry_run_refuses_a_dla_plan_that_would_not_build_in_one_line(graphs, args, words, capsys):
    _, fp32 = graphs
    assert main(["build", "--onnx", str(fp32), *args, "--dry-run", "--no-progress"]) == cli.EXIT_MODEL
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would not build" in err[0] and words in err[0]

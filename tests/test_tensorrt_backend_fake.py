"""`cfrg build` and sdk/backends/tensorrt.py against a FAKE TensorRT and a FAKE CUDA runtime (tests/fake_tensorrt.py;
this machine has neither). The fake enforces the documented rules it stands for (see its docstring): UINT8 only
into a Cast, TF32 on until cleared, no precision flags or layer precisions on a strongly typed network, DLA's
static shapes, precisions, implicit INT8 and GPU fallback, timing caches of another TensorRT refused, plans of
another build refused at deserialization, a DLA plan only with the runtime's DLA core set, set_input_shape False
outside the profile. Its "engine" runs the parsed ONNX graph in ONNX Runtime.

What this proves: our builder and runtime keep those rules and move the data correctly (binding by name, shapes,
pinned buffers, padding to the profile's minimum, locking, releasing). What it does not prove: that real
TensorRT or CUDA accept these calls or compute the same numbers (names: test_tensorrt_api.py; behaviour:
tests/gpu where TensorRT and a GPU exist)."""
import json
import shutil
import sys
import threading

import numpy as np
import pytest

from sdk.build.dla import read_calibration_cache
from sdk.build.engine import TensorRTBuilder
from sdk.build.options import BuildOptions
from sdk.build.precision import CNN_PARTS
from sdk import Detector, ModelFileError, Stream
from sdk import cli
from sdk.backends import tensorrt as trt_backend
from sdk.cli import main
from tests import fake_tensorrt


def _install(monkeypatch, version="10.3.0", gpu=("Fake Orin", "8.7")):
    trt = fake_tensorrt.make_tensorrt(version, fake_tensorrt.FakeCuda(gpu))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_backend, "cuda_runtime", lambda choice="auto": trt.cuda)
    return trt


@pytest.fixture()
def model(exported_model, tmp_path):
    shutil.copy(exported_model[1], tmp_path / "model.onnx")
    shutil.copy(exported_model[1].with_suffix(".json"), tmp_path / "model.json")
    return tmp_path / "model.onnx"


def _build(onnx_path, *args, name="model.fp16-gpu.engine"):
    engine = onnx_path.with_name(name)
    code = main(["build", "--onnx", str(onnx_path), *args, f"--saveEngine={engine}", "--no-progress"])
    return code, engine


def _frames(n, seed=0):
    return [np.random.default_rng(seed + i).integers(0, 256, (90, 200, 3), dtype=np.uint8) for i in range(n)]


def test_fake_parser_refuses_the_uint8_transpose_graph_and_accepts_the_cast_first_one(model, monkeypatch, tmp_path):
    import onnx

    _install(monkeypatch)
    proto = onnx.load(str(model))
    first, second = proto.graph.node[0], proto.graph.node[1]
    assert (first.op_type, second.op_type) == ("Cast", "Transpose")
    # today's order before the fix: Transpose on the uint8 frames, then Cast
    cast_out, transpose_out = first.output[0], second.output[0]
    second.input[0], first.input[0] = "frames", "uint8_nchw"
    second.output[0], first.output[0] = "uint8_nchw", transpose_out
    del proto.graph.node[:2]
    proto.graph.node.insert(0, first)
    proto.graph.node.insert(0, second)
    del proto.graph.value_info[:]
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    network = fake_tensorrt.Network(strongly_typed=True)
    parser = fake_tensorrt.OnnxParser(network, None)
    assert not parser.parse_from_file(str(old)) and "UINT8" in parser.get_error(0).desc()
    assert cast_out
    assert fake_tensorrt.OnnxParser(fake_tensorrt.Network(True), None).parse_from_file(str(model))


@pytest.mark.parametrize("version", ["10.3.0", "11.4.0"])
def test_gpu_builds_are_strongly_typed_with_tf32_off_on_both_lines(model, monkeypatch, version, capsys):
    trt = _install(monkeypatch, version)
    for flag, graph in (("--fp16", "model.fp16.onnx"), ("--stronglyTyped", "model.onnx")):
        code, engine = _build(model, flag, "--maxShapes=frames:4x64x128x3", name=f"{flag[2:]}.engine")
        assert code == 0, (capsys.readouterr().err, trt.build_log)
        net, config = trt.last_build["network"], trt.last_build["config"]
        assert net.strongly_typed and "TF32" not in config.flags and not {"FP16", "INT8"} & config.flags
        assert not any(layer.precision_set for layer in net.layers)  # no per-name constraints
        description = json.loads(engine.with_suffix(".json").read_text())
        spec = description["engine"]
        assert spec["tensorrt"] == version and spec["tf32"] is False and spec["source_onnx"] == graph
        if flag == "--fp16":  # the engine checked against the graph it was built from, on the held-back images
            assert description["precision_check"]["passed"] and description["precision_check"]["n_good"] > 0
            assert not list(model.parent.glob("*.unchecked.*"))
    assert "--stronglyTyped --noTF32" in capsys.readouterr().out


def test_dla_int8_builds_from_the_fp32_graph_with_ranges_fallback_and_fp32_held_layers(model, monkeypatch, capsys):
    trt = _install(monkeypatch, "10.3.0")
    code, engine = _build(model, "--int8", "--useDLACore=0", "--allowGPUFallback", "--minShapes=frames:2x64x128x3",
                          "--maxShapes=frames:2x64x128x3", name="dla.engine")
    assert code == 0, (capsys.readouterr().err, trt.build_log)
    net, config = trt.last_build["network"], trt.last_build["config"]
    assert not net.strongly_typed and {"FP16", "INT8", "GPU_FALLBACK", "PREFER_PRECISION_CONSTRAINTS"} <= config.flags
    assert "TF32" not in config.flags and config.default_device_type == "DLA" and config.DLA_core == 0
    assert not any(layer.op in ("QuantizeLinear", "DequantizeLinear") for layer in net.layers)
    ranged = [t for layer in net.layers for t in layer._outputs if t.dynamic_range]
    cache = read_calibration_cache(model.with_name("model.int8.dla.calib"))
    assert len(ranged) == len(cache) and all(t.dynamic_range[1] == pytest.approx(127 * cache[t.name]) for t in ranged)
    layers = {layer.name: layer for layer in net.layers}
    assert layers["/model/memory/MatMul"].precision is trt.float32
    added = [layer for name, layer in layers.items() if name.endswith("_broadcast_shuffle") and
             not name.startswith(CNN_PARTS)]
    assert added and all(layer.precision is trt.float32 for layer in added)  # the parser's own layers too
    assert all(not layer.precision_set for layer in net.layers if layer.precision in (trt.int32, trt.int64))
    teacher = [layer for layer in net.layers if layer.name.startswith("/model/teacher/") and layer.op == "Conv"]
    assert teacher and all(layer.precision is trt.float16 for layer in teacher)
    assert trt.last_build["gpu_layers"]
    out = capsys.readouterr().out
    assert f"--calib={model.with_name('model.int8.dla.calib')}" in out and "run on the GPU, not DLA" in out


def test_the_fake_refuses_what_the_old_builder_did(model, monkeypatch):
    """Against the fake, a DLA build with a dynamic batch (which the builder of before accepted) fails."""
    trt = _install(monkeypatch, "10.3.0")
    from sdk.model_info import ModelInfo

    info = ModelInfo.read(model)
    options = BuildOptions(onnx=model, fp16=True, dla_core=0, gpu_fallback=True, max_shapes=(4, 64, 128, 3))
    builder = TensorRTBuilder(trt, options, info, progress=False, log=lambda *a: None)
    with pytest.raises(ValueError, match="could not build"):
        builder.build()  # min 1, max 4 on DLA
    assert trt.build_log[-1] == "DLA needs static shapes"


def test_timing_cache_of_another_tensorrt_is_replaced_with_a_warning(model, monkeypatch, capsys, tmp_path):
    trt = _install(monkeypatch, "10.3.0")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"FAKE-TC:10.2.0:8.7\nold entries")
    code, _ = _build(model, "--fp16", f"--timingCacheFile={cache}")
    err = capsys.readouterr().err
    assert code == 0 and "does not match this one" in err and "replacing it" in err
    assert cache.read_bytes().startswith(trt.cache_key()) and b"old entries" not in cache.read_bytes()
    code, _ = _build(model, "--fp16", f"--timingCacheFile={cache}", name="again.engine")
    assert code == 0 and "does not match" not in capsys.readouterr().err


def test_dla_on_tensorrt_11_is_refused_before_any_work(model, monkeypatch, capsys):
    _install(monkeypatch, "11.4.0")
    code, engine = _build(model, "--fp16", "--useDLACore=0", "--allowGPUFallback")
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and "TensorRT 11.4.0 here" in err and "10.3" in err and not engine.exists()


# -- the runtime -------------------------------------------------------------------------------------


def test_engine_gives_the_onnx_results_and_pads_a_short_batch_to_the_profile_minimum(model, monkeypatch):
    trt = _install(monkeypatch)
    code, engine = _build(model, "--fp16", "--minShapes=frames:2x64x128x3", "--optShapes=frames:2x64x128x3",
                          "--maxShapes=frames:4x64x128x3")
    assert code == 0
    det, ref = Detector(engine), Detector(model.with_name("model.fp16.onnx"))
    assert det.backend.name == "tensorrt" and (det.backend.min_batch, det.backend.max_batch) == (2, 4)
    frame = _frames(1)[0]
    assert det(frame).score == pytest.approx(ref(frame).score, abs=1e-5)  # one frame on a min-2 engine
    got, want = det.batch(_frames(3)), ref.batch(_frames(3))
    assert [g.score for g in got] == pytest.approx([w.score for w in want], abs=1e-4)
    with pytest.raises(ValueError, match="batches of up to 4"):
        det.batch(_frames(5))
    det.backend.context.engine.profile[0] = (3, 64, 128, 3)  # the fake's profile now starts above the batch
    with pytest.raises(ValueError, match="refused the shape"):
        det.backend.run({"frames": np.zeros((2, 64, 128, 3), np.uint8)})
    del trt


@pytest.mark.parametrize("change,words", [
    ({"tensorrt": "10.3.1"}, "built with TensorRT 10.3.1, this machine has 10.3.0: a plan runs only on the TensorRT "
                             "build that made it"),
    ({"compute_capability": "9.0", "gpu": "H100"}, "compute capability 9.0")])
def test_an_engine_built_elsewhere_is_refused_before_deserializing(model, monkeypatch, change, words):
    _install(monkeypatch)
    _, engine = _build(model, "--fp16")
    side = engine.with_suffix(".json")
    d = json.loads(side.read_text())
    d["engine"].update(change)
    side.write_text(json.dumps(d))
    with pytest.raises(ModelFileError, match=words):
        Detector(engine)


def test_a_foreign_plan_that_the_description_hides_is_refused_by_deserialization(model, monkeypatch):
    trt = _install(monkeypatch)
    _, engine = _build(model, "--fp16")
    trt.__version__ = "10.3.1"  # the description is edited to match, the plan is not
    side = engine.with_suffix(".json")
    d = json.loads(side.read_text())
    d["engine"]["tensorrt"] = "10.3.1"
    side.write_text(json.dumps(d))
    with pytest.raises(ModelFileError, match="is not an engine this TensorRT"):
        Detector(engine)


def test_a_version_compatible_engine_runs_on_a_later_release_of_the_same_major(model, monkeypatch):
    trt = _install(monkeypatch, "10.3.0")
    code, engine = _build(model, "--fp16", "--versionCompatible")
    assert code == 0 and "VERSION_COMPATIBLE" in trt.last_build["config"].flags
    trt.__version__ = "10.9.0"
    det = Detector(engine)
    assert trt.runtimes[-1].engine_host_code_allowed and np.isfinite(det(_frames(1)[0]).score)
    trt.__version__ = "11.0.0"
    with pytest.raises(ModelFileError, match="version-compatible plan runs on TensorRT 10.3.0 or a later 10.x"):
        Detector(engine)


def test_a_dla_engine_sets_the_runtimes_dla_core_from_its_description(model, monkeypatch):
    trt = _install(monkeypatch)
    code, engine = _build(model, "--fp16", "--useDLACore=1", "--allowGPUFallback")
    assert code == 0
    det = Detector(engine)
    assert trt.runtimes[-1].DLA_core == 1 and np.isfinite(det(_frames(1)[0]).score)
    side = engine.with_suffix(".json")
    d = json.loads(side.read_text())
    d["engine"]["dla_core"] = None  # a description that hides the core: the fake plan then will not load
    side.write_text(json.dumps(d))
    with pytest.raises(ModelFileError, match="is not an engine this TensorRT"):
        Detector(engine)


def test_an_engine_description_without_its_engine_entry_is_refused(model, monkeypatch):
    _install(monkeypatch)
    _, engine = _build(model, "--fp16")
    side = engine.with_suffix(".json")
    d = json.loads(side.read_text())
    del d["engine"]
    side.write_text(json.dumps(d))
    with pytest.raises(ModelFileError, match="describes no TensorRT engine"):
        Detector(engine)
    assert "is a folder" in str(pytest.raises(ModelFileError, Detector, engine.parent, backend="tensorrt").value)


def test_two_threads_on_one_detector_each_get_their_own_frames(model, monkeypatch):
    """The pinned input buffer is filled under the backend's lock: concurrent Detector.batch() calls on one
    TensorRT detector cannot overwrite each other's frames."""
    trt = _install(monkeypatch)
    _, engine = _build(model, "--fp16", "--maxShapes=frames:2x64x128x3")
    det, ref = Detector(engine), Detector(model.with_name("model.fp16.onnx"))
    inputs = {k: _frames(2, seed=10 * k) for k in range(2)}
    want = {k: [r.score for r in ref.batch(f)] for k, f in inputs.items()}
    original = trt.cuda.to_device
    gate = threading.Barrier(2, timeout=5)

    def slow_copy(dst, src, stream):  # both threads reach the copy at once if nothing serialises them
        try:
            gate.wait(0.2)
        except threading.BrokenBarrierError:
            pass
        original(dst, src, stream)

    trt.cuda.to_device = slow_copy
    got, errors = {}, []

    def worker(k):
        try:
            for _ in range(5):
                got.setdefault(k, []).append([r.score for r in det.batch(inputs[k])])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    for k in inputs:
        assert all(scores == pytest.approx(want[k], abs=1e-4) for scores in got[k])


def test_close_releases_context_stream_and_buffers_and_the_detector_is_a_context_manager(model, monkeypatch):
    trt = _install(monkeypatch)
    _, engine = _build(model, "--fp16", "--maxShapes=frames:2x64x128x3")
    with Detector(engine) as det:
        assert np.isfinite(det(_frames(1)[0]).score) and trt.cuda.memory and trt.cuda.streams
    assert det.backend.context is None and not trt.cuda.memory and not trt.cuda.streams
    with pytest.raises(RuntimeError, match="is closed"):
        det(_frames(1)[0])
    det.close()  # idempotent
    onnx_det = Detector(model)
    onnx_det.close()
    with pytest.raises(RuntimeError, match="is closed"):
        onnx_det(_frames(1)[0])


def test_replicas_share_the_engine_with_a_context_each_and_the_stream_closes_them(model, monkeypatch, exported_model):
    trt = _install(monkeypatch)
    _, engine = _build(model, "--fp16", "--maxShapes=frames:2x64x128x3")
    det = Detector(engine)
    assert det.preferred_workers() == 1
    twins = det.replicas(2)
    assert all(t.backend.engine is det.backend.engine and t.backend.context is not det.backend.context
               for t in twins)
    for t in twins:
        t.close()
    with Stream(det, _frames(6), infer_workers=2, batch_size=2) as stream:
        records = list(stream)
        replicas = list(stream._replicas)
    ref = Detector(model.with_name("model.fp16.onnx"))
    assert [r.status for r in records] == ["ok"] * 6
    assert [r.score for r in records] == pytest.approx([ref(f).score for f in _frames(6)], rel=1e-5, abs=1e-4)
    assert len(replicas) == 2 and all(r.backend.context is None for r in replicas)
    assert det.backend.context is not None  # the caller's detector stays open
    del trt, exported_model


def test_an_engine_whose_plan_was_replaced_after_its_description_is_refused(model, monkeypatch):
    """A crash between writing the plan and its description, or a plan copied over, pairs an engine with another
    build's description: the plan's sha256 in the description says so."""
    _install(monkeypatch)
    _, engine = _build(model, "--fp16")
    _, other = _build(model, "--fp16", "--maxShapes=frames:2x64x128x3", name="other.engine")
    engine.write_bytes(other.read_bytes())
    with pytest.raises(ModelFileError, match="is not the plan its description"):
        Detector(engine)

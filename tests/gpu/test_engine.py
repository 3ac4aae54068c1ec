"""Real TensorRT engines, per precision, against ONNX Runtime on the same graph: runs only where TensorRT and a
CUDA GPU exist (a Jetson with JetPack, a datacenter GPU with `pip install tensorrt cuda-python`), and skips
with the reason elsewhere, as on this project's CPU machines."""
import numpy as np
import pytest

from sdk.cli import main
from tests.conftest import DEMO_ROOT

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed here: no engine can be built")
cudart = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed here")
if int(cudart.cudaGetDeviceCount()[0]) != 0 or cudart.cudaGetDeviceCount()[1] < 1:
    pytest.skip("no CUDA GPU here", allow_module_level=True)

from sdk import Detector  # noqa: E402


@pytest.fixture(scope="module")
def model(exported_model, tmp_path_factory):
    import shutil

    folder = tmp_path_factory.mktemp("engines")
    shutil.copy(exported_model[1], folder / "model.onnx")
    shutil.copy(exported_model[1].with_suffix(".json"), folder / "model.json")
    return folder / "model.onnx", exported_model[1].parent / "run"


@pytest.mark.parametrize("flags,precision,tolerance", [([], "fp32", 1e-3), (["--fp16"], "fp16", 2e-2),
                                                       (["--int8"], "int8", 0.25)])
def test_engine_matches_onnx_runtime(model, flags, precision, tolerance, capsys):
    onnx_path, run = model
    engine = onnx_path.with_name(f"model.{precision}-gpu.engine")
    calib = ["--calib", str(DEMO_ROOT / "ball_screw" / "train" / "good")] if precision == "int8" else []
    assert main(["build", "--onnx", str(onnx_path), *flags, *calib, "--saveEngine", str(engine),
                 "--maxShapes=frames:4x64x128x3", "--no-progress"]) == 0, capsys.readouterr().err
    graph = onnx_path if precision == "fp32" else onnx_path.with_name(f"model.{precision}.onnx")
    trt_det, ort_det = Detector(engine), Detector(graph, backend="onnxruntime")
    assert trt_det.info.engine["tensorrt"] == trt.__version__ and trt_det.info.precision == precision
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 128, 3), dtype=np.uint8)
    m_trt, s_trt = trt_det.infer(frames)
    m_ort, s_ort = ort_det.infer(frames)
    spread = float(m_ort.max() - m_ort.min())
    assert np.abs(m_trt - m_ort).max() <= tolerance * spread and np.abs(s_trt - s_ort).max() <= 10 * tolerance
    r = trt_det(frames[0])  # the in-place pinned-buffer path
    assert np.isfinite(r.score) and r.mask.shape == (64, 128)


def test_a_single_frame_runs_on_an_engine_whose_profile_starts_at_two(model, capsys):
    onnx_path, _ = model
    engine = onnx_path.with_name("model.fp16-min2.engine")
    assert main(["build", "--onnx", str(onnx_path), "--fp16", "--saveEngine", str(engine),
                 "--minShapes=frames:2x64x128x3", "--maxShapes=frames:4x64x128x3", "--no-progress"]) == 0, \
        capsys.readouterr().err
    det, ref = Detector(engine), Detector(onnx_path.with_name("model.fp16.onnx"), backend="onnxruntime")
    frame = np.random.default_rng(1).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    assert abs(det(frame).score - ref(frame).score) <= 0.2
    det.close()


def test_dla_int8_engine_on_an_orin(model, capsys):
    """Only on a Jetson Orin with TensorRT 10.3 (DLA cores present)."""
    if trt.Builder(trt.Logger(trt.Logger.WARNING)).num_DLA_cores < 1:
        pytest.skip("no DLA core on this GPU")
    onnx_path, _ = model
    calib = ["--calib", str(DEMO_ROOT / "ball_screw" / "train" / "good")]
    assert main(["build", "--onnx", str(onnx_path), "--int8", *calib, "--useDLACore=0", "--allowGPUFallback",
                 "--minShapes=frames:2x64x128x3", "--maxShapes=frames:2x64x128x3", "--no-progress"]) == 0, \
        capsys.readouterr().err
    det = Detector(onnx_path.with_name("model.int8-dla0.engine"))
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 128, 3), dtype=np.uint8)
    maps, scores = det.infer(frames)
    ref_maps, _ = Detector(onnx_path.with_name("model.int8.onnx"), backend="onnxruntime").infer(frames)
    assert np.isfinite(scores).all() and np.abs(maps - ref_maps).max() <= 0.25 * float(np.ptp(ref_maps))

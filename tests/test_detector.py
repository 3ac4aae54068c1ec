"""sdk.Detector on a real exported model: frames of any size/colour, results, and clear errors."""
import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from sdk.backends import ModelFileError
from sdk.detector import Detector, Result
from tests.conftest import BATCH_SCORE_TOLERANCE, DEMO_ROOT

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def detector(exported_model):
    return Detector(exported_model[1])


def demo_frame(colour=cv2.IMREAD_COLOR):
    path = sorted((DEMO_ROOT / "ball_screw" / "test" / "pitting").glob("*.jpg"))[0]
    return cv2.imread(str(path), colour)


def test_result_at_frame_resolution(detector):
    frame = demo_frame()
    r = detector(frame)
    assert isinstance(r, Result)
    assert r.anomaly_map.shape == frame.shape[:2] and r.anomaly_map.dtype == np.float32
    assert r.mask.shape == frame.shape[:2] and set(np.unique(r.mask)) <= {0, 1}
    assert r.verdict in ("ok", "defect")
    assert (r.verdict == "defect") == (r.score >= detector.image_threshold)
    assert {"preprocess_ms", "infer_ms", "postprocess_ms"} <= set(r.timings)
    for region in r.regions:
        x, y, w, h = region.box
        assert region.area <= w * h and region.max_score >= region.mean_score >= detector.pixel_threshold


def test_grayscale_rgb_bgr_and_odd_sizes(detector):
    bgr = demo_frame()
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    rgb_det = Detector(detector.path, colour="rgb")
    a = detector(bgr)
    b = rgb_det(np.ascontiguousarray(bgr[:, :, ::-1]))
    assert a.score == pytest.approx(b.score, rel=1e-6)
    assert detector(gray).anomaly_map.shape == gray.shape
    assert detector(gray[:, :, None]).anomaly_map.shape == gray.shape
    odd = bgr[3:300:2, 5:901:3]  # non-contiguous view, odd size
    assert detector(odd).mask.shape == odd.shape[:2]
    assert detector(bgr[:1, :]).anomaly_map.shape == (1, bgr.shape[1])


def test_colour_keeps_its_older_spelling(detector):
    """color= still means colour=; both at once is a TypeError that names them."""
    older = Detector(detector.path, color="rgb")
    assert older.colour == "rgb" and older.color == "rgb"  # the attribute too, read-only
    with pytest.raises(TypeError, match="colour= and color="):
        Detector(detector.path, colour="rgb", color="bgr")


def test_batch_matches_single_calls(detector):
    frames = [demo_frame(), demo_frame()[:200, :500]]
    batch = detector.batch(frames)
    for f, r in zip(frames, batch):
        assert r.score == pytest.approx(detector(f).score, **BATCH_SCORE_TOLERANCE)
    assert detector.batch([]) == []


def test_min_area_filter_and_threshold_override(detector):
    frame = demo_frame()
    low = Detector(detector.path, threshold=-1.0)  # every pixel above: one big region
    r = low(frame)
    assert r.verdict == "defect" and len(r.regions) == 1 and r.regions[0].area == frame.shape[0] * frame.shape[1]
    big = Detector(detector.path, threshold=-1.0, min_area=frame.shape[0] * frame.shape[1] + 1)
    r2 = big(frame)
    assert r2.regions == [] and r2.mask.sum() == 0 and r2.verdict == "ok"
    f1 = Detector(detector.path, threshold="f1")
    assert f1.image_threshold == pytest.approx(json.loads(detector.path.with_suffix(".json").read_text())
                                               ["thresholds"]["f1"]["image"])


@pytest.mark.parametrize("bad,match", [
    (np.zeros((10, 10, 3), np.float32), "dtype is float32; expected uint8"),
    (np.zeros((10, 10, 4), np.uint8), r"shape is \(10, 10, 4\); expected"),
    (np.zeros((0, 10, 3), np.uint8), "frame is empty"),
    (np.zeros((2, 10, 10, 3), np.uint8), "expected HxW"),
])
def test_bad_frames_are_clear_errors(detector, bad, match):
    with pytest.raises(ValueError, match=match):
        detector(bad)
    with pytest.raises(TypeError, match="numpy array"):
        detector([[1, 2], [3, 4]])


def test_missing_corrupt_and_mismatched_model_files(tmp_path, exported_model):
    _, path, info = exported_model
    with pytest.raises(ModelFileError, match="does not exist"):
        Detector(tmp_path / "nope.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x01garbage")
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        Detector(corrupt)
    with pytest.raises(ModelFileError, match="expected .onnx or .engine"):
        Detector(tmp_path / "model.bin")
    copy = tmp_path / "copy.onnx"
    shutil.copy(path, copy)
    d = info.to_dict()
    wrong = dict(d, input=dict(d["input"], height=d["input"]["height"] * 2))
    copy.with_suffix(".json").write_text(json.dumps(wrong))
    with pytest.raises(ModelFileError, match="do not match"):
        Detector(copy)
    copy.with_suffix(".json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        Detector(copy)


def test_metadata_alone_is_enough(tmp_path, exported_model):
    """Without model.json beside it, the ONNX metadata describes the model."""
    _, path, _ = exported_model
    lone = tmp_path / "lone.onnx"
    shutil.copy(path, lone)
    det = Detector(lone)
    assert det.size == tuple(json.loads(path.with_suffix(".json").read_text())["input"][k] for k in ("height", "width"))


def test_import_sdk_without_torch():
    """`import sdk` and a Detector run with torch made unimportable."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import sdk, sdk.detector, sdk.stream, sdk.sources, sdk.sinks, sdk.metrics, sdk.evaluate, sdk.data\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr

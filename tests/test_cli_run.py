"""cfrg run and the streaming path with the real exported CFRG model on a real video file."""
import json

import cv2
import numpy as np
import pytest

from sdk.cli import main
from sdk.detector import Detector
from sdk.stream import Stream
from tests.conftest import BATCH_SCORE_TOLERANCE, DEMO_ROOT

pytest.importorskip("onnxruntime")


def write_demo_video(path, n_frames=12):
    images = [cv2.imread(str(p)) for p in sorted((DEMO_ROOT / "ball_screw" / "test").glob("*/*.jpg"))[:6]]
    h, w = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (w, h))
    assert writer.isOpened()
    for i in range(n_frames):
        writer.write(images[i % len(images)])
    writer.release()
    return path, (h, w)


def test_cfrg_run_on_video_writes_one_record_per_frame(tmp_path, exported_model, capsys):
    video, hw = write_demo_video(tmp_path / "line.mp4")
    out = tmp_path / "out"
    assert main(["run", "--model", str(exported_model[1]), "--source", str(video), "--out", str(out),
                 "--no-progress"]) == 0
    lines = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert [r["frame_id"] for r in lines] == list(range(12))
    assert all(r["status"] == "ok" and r["verdict"] in ("ok", "defect") for r in lines)
    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == 12 and cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED).shape[:2] == hw
    assert len(list((out / "overlays").glob("*.png"))) == 12
    assert "12 frames" in capsys.readouterr().out


def test_stream_with_real_detector_matches_single_calls(tmp_path, exported_model):
    video, _ = write_demo_video(tmp_path / "v.mp4", n_frames=6)
    det = Detector(exported_model[1])
    with Stream(det, str(video), batch_size=2) as stream:
        records = list(stream)
    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    assert len(records) == len(frames) == 6
    for rec, frame in zip(records, frames):
        assert rec.status == "ok"
        assert rec.result.score == pytest.approx(det(frame).score, **BATCH_SCORE_TOLERANCE)  # batch 2 against 1
        assert rec.result.mask.shape == frame.shape[:2]


def test_stream_reports_a_bad_frame_and_goes_on(exported_model):
    det = Detector(exported_model[1])
    good = cv2.imread(str(sorted((DEMO_ROOT / "ball_screw" / "test" / "good").glob("*.jpg"))[0]))
    frames = [good, np.zeros((0, 5, 3), np.uint8), good.astype(np.float32), good]
    with Stream(det, frames) as stream:
        records = list(stream)
    assert [r.status for r in records] == ["ok", "error", "error", "ok"]
    assert "empty" in records[1].error and "uint8" in records[2].error


@pytest.mark.parametrize("option", [["--memory-size", "0"], ["--map-normalisation", "none"],
                                    ["--image-score", "max"], ["--memory-pool", "5"]])
def test_eval_of_an_onnx_model_refuses_map_fusion_options(exported_model, option, capsys):
    """The map of an exported model is in its graph: asking to change it is an error that says what to do."""
    path = exported_model[1]
    assert main(["eval", "--model", str(path), "--data", str(DEMO_ROOT), "--category", "ball_screw",
                 "--no-progress", *option]) == 2
    err = capsys.readouterr().err
    assert "apply to .pt checkpoints" in err and "export the checkpoint again" in err

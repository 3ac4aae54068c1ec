"""Tiled inference in sdk.Detector: a long strip cut into overlapping model-size tiles at the model's scale,
run as batches, stitched into one Result at the strip's resolution; in the Stream, cfrg run and cfrg eval."""
import json

import cv2
import numpy as np
import pytest

from sdk import Detector, Stream
from sdk.cli import main
from sdk.preprocess import preprocess
from sdk.tiling import make_tiles
from tests.conftest import DEMO_ROOT


def strip(width=900):
    """A line-scan-like strip: demo test images side by side, 96 pixels high."""
    images = [cv2.imread(str(p)) for p in sorted((DEMO_ROOT / "ball_screw" / "test").glob("*/*.jpg"))[:4]]
    row = np.concatenate([cv2.resize(im, (300, 96), interpolation=cv2.INTER_AREA) for im in images], axis=1)
    return np.ascontiguousarray(row[:, :width])


def test_tiled_result_is_the_stitched_tiles_at_the_frame_resolution(exported_model):
    path = exported_model[1]
    det = Detector(path, tiling=True, tile_overlap=16)
    frame = strip()
    r = det(frame)
    h, w = det.size  # 64 x 128
    assert r.anomaly_map.shape == frame.shape[:2] and r.mask.shape == frame.shape[:2]
    scale = h / frame.shape[0]
    scaled = np.empty((1, h, round(frame.shape[1] * scale), 3), np.uint8)
    preprocess(frame, scaled, colour_in="bgr", colour_out="rgb")
    tiles, origins = make_tiles(scaled[0], (h, w), 16)
    _, scores = Detector(path).infer(tiles)
    assert r.score == pytest.approx(float(scores.max()), abs=1e-5)
    assert r.tiling == {"tile": [h, w], "overlap": 16, "tiles": len(tiles), "scale": round(scale, 6)}
    assert len(tiles) == int(np.ceil((scaled.shape[2] - w) / (w - 16))) + 1
    batch = det.batch([frame, frame[:, :400]])
    assert batch[0].score == pytest.approx(r.score, abs=1e-5) and batch[1].anomaly_map.shape == (96, 400)


def test_tiling_options_are_checked(exported_model):
    with pytest.raises(ValueError, match="tile_overlap"):
        Detector(exported_model[1], tiling=True, tile_overlap=64)
    with pytest.raises(ValueError, match="tile_scale"):
        Detector(exported_model[1], tiling=True, tile_scale=float("nan"))


def test_tiled_stream_and_cli(exported_model, tmp_path):
    frames = [strip(900), strip(600)]
    video = tmp_path / "strips.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (900, 96))
    for _ in range(3):
        writer.write(frames[0])
    writer.release()
    with Stream(Detector(exported_model[1], tiling=True), frames, batch_size=2) as stream:
        records = list(stream)
    assert [r.status for r in records] == ["ok", "ok"] and records[1].result.anomaly_map.shape == (96, 600)
    out = tmp_path / "out"
    assert main(["run", "--model", str(exported_model[1]), "--source", str(video), "--out", str(out), "--tile",
                 "--tile-overlap", "8", "--no-progress"]) == 0
    lines = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(line["tiling"]["overlap"] == 8 and line["tiling"]["tiles"] >= 5 for line in lines)
    metrics = tmp_path / "m.json"
    assert main(["eval", "--model", str(exported_model[1]), "--data", str(DEMO_ROOT), "--category", "ball_screw",
                 "--tile", "--json", str(metrics), "--no-progress"]) == 0
    result = json.loads(metrics.read_text())
    assert result["tiling"]["overlap"] == 32 and 0 <= result["image_auroc"] <= 1

"""Tests of sdk/sinks.py: files written from real frames through sdk.Stream are readable and
complete (masks re-read equal, JSONL parseable, video frame count), written atomically."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from sdk.sinks import JsonlSink, MaskSink, OverlaySink, VideoSink, overlay, record_to_dict
from sdk.sources import Frame, open_source
from sdk.stream import Record, Stream
from stream_helpers import TinyOnnxDetector, real_images, write_video


@pytest.fixture(scope="module")
def real_frames(data_root) -> list[np.ndarray]:
    return real_images(data_root, 10, (282, 116))  # ball_screw at 1/4 size


def _run(det, source, sinks) -> list[Record]:
    with Stream(det, source, sinks=sinks) as stream:
        return list(stream)


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_mask_sink_masks_reread_equal(tmp_path, real_frames):
    sink = MaskSink(tmp_path / "masks")
    records = _run(TinyOnnxDetector(threshold=0.45), real_frames, [sink])
    assert sink.written == 10 and sink.skipped == 0
    defect_pixels = 0
    for rec in records:
        saved = cv2.imread(str(tmp_path / "masks" / f"{rec.frame_id:06d}_mask.png"), cv2.IMREAD_UNCHANGED)
        expected = (rec.result.mask > 0).astype(np.uint8) * 255
        assert saved.dtype == np.uint8 and np.array_equal(saved, expected)
        defect_pixels += int(expected.sum() // 255)
    assert 0 < defect_pixels < 10 * 282 * 116  # masks are neither all empty nor all full
    assert _leftovers(tmp_path / "masks") == []


def test_mask_sink_names_by_source_stem(tmp_path, real_frames):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, f in enumerate(real_frames[:3]):
        cv2.imwrite(str(folder / f"part_{i}.png"), f)
    sink = MaskSink(tmp_path / "masks", pattern="{stem}.png")
    _run(TinyOnnxDetector(), open_source(folder), [sink])
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["part_0.png", "part_1.png", "part_2.png"]
    with pytest.raises(ValueError, match="may only use"):
        MaskSink(tmp_path / "x", pattern="{camera}.png")


def test_jsonl_one_parseable_line_per_record_including_errors(tmp_path, real_frames):
    items = [real_frames[0], np.zeros((4, 4), np.float64), real_frames[1]]
    sink = JsonlSink(tmp_path / "log" / "records.jsonl")
    records = _run(TinyOnnxDetector(), items, [sink])
    rows = [json.loads(line) for line in (tmp_path / "log" / "records.jsonl").read_text().splitlines()]
    assert [r["frame_id"] for r in rows] == [0, 1, 2]
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert rows[1]["score"] is None and "dtype must be uint8" in rows[1]["error"]
    assert rows[0]["score"] == pytest.approx(records[0].result.score) and rows[0]["verdict"] in ("ok", "defect")
    assert rows[0]["regions"] == records[0].result.regions
    assert set(rows[0]["timestamps"]) == {"captured", "preprocessed", "inferred", "done"}
    assert sink.closed


def test_jsonl_lines_are_on_disk_before_close_and_replace_the_old_file_at_close(tmp_path, real_frames):
    path = tmp_path / "live.jsonl"
    path.write_text('{"frame_id": -1}\n')  # an earlier run's log: whole until this run's is complete
    sink = JsonlSink(path)
    stream = Stream(TinyOnnxDetector(), real_frames, sinks=[sink])
    for rec in stream:
        if rec.frame_id == 4:
            assert len(sink.live_path.read_text().splitlines()) == 5  # flushed per line, readable while running
            assert path.read_text() == '{"frame_id": -1}\n'
    assert len(path.read_text().splitlines()) == 10 and not sink.live_path.exists()
    appended = JsonlSink(path, append=True)
    appended.write(Record(99, "dropped", error="dropped: test"))
    appended.close()
    assert json.loads(path.read_text().splitlines()[-1])["frame_id"] == 99


def test_video_sink_readable_with_right_frame_count(tmp_path, real_frames):
    video_in = write_video(tmp_path / "in.mp4", real_frames * 2)
    out = tmp_path / "out" / "annotated.mp4"
    sink = VideoSink(out, fps=10)
    records = _run(TinyOnnxDetector(), open_source(video_in), [sink])
    assert len(records) == 20 and sink.written == 20
    cap = cv2.VideoCapture(str(out))
    assert cap.isOpened()
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 20
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (116, 282, 3)
        n += 1
    cap.release()
    assert n == 20 and _leftovers(out.parent) == []


def test_video_sink_not_finalised_until_close_and_empty_writes_nothing(tmp_path, real_frames):
    out = tmp_path / "v.mp4"
    sink = VideoSink(out, fps=5)
    frame = Frame(0, real_frames[0], 0.0, "test")
    sink.write(Record(0, "error", error="bad frame: test", frame=frame))  # error frames are labelled, not lost
    assert not out.exists()
    sink.close()
    assert out.exists() and sink.written == 1
    empty = VideoSink(tmp_path / "none.mp4")
    empty.write(Record(0, "dropped", error="dropped"))
    empty.close()
    assert not (tmp_path / "none.mp4").exists() and empty.skipped == 1 and _leftovers(tmp_path) == []


def test_image_sinks_skip_frames_they_cannot_draw(tmp_path, real_frames):
    items = [real_frames[0], real_frames[1].astype(np.float32), None, real_frames[2]]
    overlays, video = OverlaySink(tmp_path / "ov"), VideoSink(tmp_path / "v.mp4", fps=5)
    records = _run(TinyOnnxDetector(), items, [overlays, video])
    assert [r.status for r in records] == ["ok", "error", "error", "ok"]
    assert overlays.written == video.written == 2 and overlays.skipped == video.skipped == 2
    assert sorted(p.name for p in (tmp_path / "ov").iterdir()) == ["000000_overlay.png", "000003_overlay.png"]


def test_overlay_sink_pngs(tmp_path, real_frames):
    sink = OverlaySink(tmp_path / "ov")
    records = _run(TinyOnnxDetector(threshold=0.45), real_frames[:4], [sink])
    for rec in records:
        picture = cv2.imread(str(tmp_path / "ov" / f"{rec.frame_id:06d}_overlay.png"))
        assert picture.shape == rec.image.shape
        assert np.abs(picture.astype(int) - rec.image.astype(int)).mean() > 5  # the heat map is blended in
    only = OverlaySink(tmp_path / "defects", only_defects=True)
    for rec in records:
        only.write(rec)
    assert only.written == sum(r.verdict == "defect" for r in records)


def test_overlay_function_heat_contours_and_gray_input():
    image = np.full((60, 80), 128, np.uint8)  # grayscale frame
    amap = np.zeros((30, 40), np.float32)  # model-size map, resized to the frame
    amap[10:20, 10:20] = 1.0
    mask = np.zeros((60, 80), np.uint8)
    mask[20:40, 20:40] = 1
    out = overlay(image, amap, mask, alpha=0.5, label="defect 1.000", defect=True)
    assert out.shape == (60, 80, 3) and out.dtype == np.uint8
    hot, cold = out[30, 30].astype(int), out[55, 75].astype(int)
    assert hot[2] > hot[0] and cold[0] > cold[2]  # jet: high scores red, low scores blue (BGR)
    assert tuple(out[39, 30]) == (0, 0, 255)  # the mask's contour (bottom edge) is drawn in red
    raw_scale = overlay(image, amap * 7.0, None)  # maps above 1 scale to their max by default
    assert np.array_equal(raw_scale, overlay(image, amap, None))


def test_record_to_dict_handles_numpy_and_nan():
    class R:
        score = np.float32("nan")
        verdict = "ok"
        regions = [{"box": np.array([1, 2, 3, 4]), "max": np.float64(0.5)}]
        timings = {"infer_ms": np.float32(1.5)}

    d = record_to_dict(Record(3, "ok", result=R(), timestamps={"done": 1.0}))
    text = json.dumps(d, allow_nan=False)
    assert d["score"] is None and d["regions"] == [{"box": [1, 2, 3, 4], "max": 0.5}] and "infer_ms" in text

"""sdk.drift: the reference export writes, image statistics that do not depend on the frame's resolution, and
DriftMonitor on real images: quiet on good images, a named alarm for a dimming lamp, defocus, a camera shift and
a darker batch; inside Stream (records, verdicts.jsonl, stats) and `cfrg run`."""
import json
import math

import cv2
import numpy as np
import pytest

from benchmarks.drift_figures import drifted
from sdk import Detector, DriftMonitor, Stream
from sdk.build.thresholds import measure_thresholds
from sdk.cli import main
from sdk.data import read_image
from sdk.drift import (IMAGE_STATISTICS, cusum_arl, drift_reference, image_statistics, reference_from_files,
                       statistics_grid)
from sdk.files import image_files
from sdk.run_record import RunRecord
from sdk.sinks import JsonlSink
from stream_helpers import write_video
from tests.conftest import DEMO_ROOT

pytest.importorskip("onnxruntime")
ONSET = 20  # unchanged frames before a drift starts
FLAG_WITHIN = 40  # frames from a drift's onset to its alarm


def test_export_writes_the_reference_of_the_held_back_images(exported_model):
    _, path, info = exported_model
    ref = info.drift_reference
    run = RunRecord.read(path.parent / "run")
    files = run.held_back_files()
    det = Detector(path)
    _, scores = measure_thresholds(det.predictor(), det.size, files, 0.01, None, None, False)
    again = reference_from_files(files, scores, info.score_normalisation, det.size)
    for name in IMAGE_STATISTICS + ("score", "normalised_score"):  # OpenCV's and the graph's float32 rounding
        mine, theirs = ref["statistics"][name], again["statistics"][name]
        assert mine["n"] == theirs["n"] == len(files)
        for key in ("mean", "std", "quantiles"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), (name, key)
    assert ref["n_images"] == len(files) and ref["grid"] == list(statistics_grid(det.size))
    brightness = [image_statistics(read_image(f, "rgb"), ref["grid"], "rgb")[0] for f in files]
    assert ref["statistics"]["brightness"]["mean"] == pytest.approx(np.mean(brightness))
    normalised = [(s - info.score_normalisation.offset) / info.score_normalisation.scale for s in scores]
    assert ref["statistics"]["normalised_score"]["quantiles"][3] == pytest.approx(np.median(normalised))
    assert json.loads(path.with_suffix(".json").read_text())["drift_reference"] == ref


def test_image_statistics_hardly_depend_on_resolution_or_colour_order(data_root):
    for category in ("ball_screw", "tire", "capsules"):
        rgb = read_image(image_files(data_root / category / "test" / "good")[0], "rgb")
        grid = statistics_grid((224, 288))
        base = image_statistics(rgb, grid, "rgb")
        assert np.allclose(image_statistics(np.ascontiguousarray(rgb[..., ::-1]), grid, "bgr"), base)
        h, w = rgb.shape[:2]
        for factor in (0.5, 0.75, 1.5):
            other = image_statistics(cv2.resize(rgb, (int(w * factor), int(h * factor)),
                                                interpolation=cv2.INTER_AREA), grid, "rgb")
            i = IMAGE_STATISTICS.index
            assert other[i("brightness")] == pytest.approx(base[i("brightness")], rel=0.01)
            assert other[i("contrast")] == pytest.approx(base[i("contrast")], rel=0.03)
            assert abs(other[i("sharpness")] - base[i("sharpness")]) < 0.1  # the floor of its test
            assert abs(other[i("centre_x")] - base[i("centre_x")]) < 0.01
            assert abs(other[i("centre_y")] - base[i("centre_y")]) < 0.01


def test_the_false_alarm_bound_is_the_cusum_run_length():
    """cusum_arl (Markov chain) against Siegmund's approximation, for an unclipped N(0, 1)."""
    for k, h in ((0.5, 5.0), (1.0, 6.0)):
        b = h + 1.166
        siegmund = (math.exp(2 * k * b) - 2 * k * b - 1) / (2 * k * k)
        assert cusum_arl(k, h, clip=50) == pytest.approx(siegmund, rel=0.1)
    assert cusum_arl(1.0, 8.0, shift=3.0) < 6 < 1e6 < cusum_arl(1.0, 8.0)
    monitor = DriftMonitor(drift_reference([np.full((40, 40, 3), 100, np.uint8)] * 3, [0.0] * 3,
                                           _Normalisation(), (64, 64)))
    assert monitor.false_alarm_bound() == pytest.approx(15 / cusum_arl())


class _Normalisation:
    offset, scale = 0.0, 1.0


@pytest.fixture(scope="module")
def watched(exported_model, data_root):
    """The demo model's detector and a reference from 40 real ball_screw training images it was not trained on
    (the demo data is a subset of the set), scored by it."""
    det = Detector(exported_model[1])
    seen = {p.name for p in image_files(DEMO_ROOT / "ball_screw" / "train" / "good")}
    files = [str(p) for p in image_files(data_root / "ball_screw" / "train" / "good") if p.name not in seen][::11][:40]
    _, scores = measure_thresholds(det.predictor(), det.size, files, 0.01, None, None, False)
    reference = reference_from_files(files, scores, det.info.score_normalisation, det.size)
    good = [read_image(p, "bgr") for p in image_files(data_root / "ball_screw" / "test" / "good")]
    return det, reference, good


def _alarms(det, reference, frames):
    monitor = DriftMonitor(reference)
    events = []
    for s in range(0, len(frames), 8):
        chunk = frames[s:s + 8]
        for frame, result in zip(chunk, det.batch(chunk)):
            events += monitor.update(frame, result)
    return [e for e in events if e.kind == "drift"], monitor


def test_good_images_streamed_unchanged_raise_no_alarm(watched):
    det, reference, good = watched
    alarms, monitor = _alarms(det, reference, good)
    assert monitor.frames == len(good) > 100 and monitor.scored > 0
    assert alarms == [], [e.message for e in alarms]


@pytest.mark.parametrize("scenario,statistics,words", [
    ("dimming", {"brightness"}, "brightness dropped"),
    ("defocus", {"sharpness"}, "image blurred"),
    ("shift", {"centre_x"}, "part shifted"),
    ("batch", {"brightness", "blue_share"}, ""),
])
def test_each_drift_is_flagged_within_its_frames_and_named(watched, scenario, statistics, words):
    det, reference, good = watched
    frames = [drifted(good[i % len(good)], scenario, (i - ONSET) / 99 if i >= ONSET else -1.0, det.size)
              for i in range(ONSET + FLAG_WITHIN)]
    alarms, _ = _alarms(det, reference, frames)
    named = [e for e in alarms if e.statistic in statistics]
    assert named, f"{scenario}: no alarm on {statistics} within {FLAG_WITHIN} frames: {[e.message for e in alarms]}"
    assert all(e.frame_id >= ONSET for e in alarms), [(e.frame_id, e.message) for e in alarms]
    assert words in named[0].message


def test_stream_puts_drift_events_on_records_jsonl_and_stats(watched, tmp_path, exported_model):
    det, reference, good = watched
    frames = [good[i % len(good)] if i < ONSET else drifted(good[i % len(good)], "batch", 1.0, det.size)
              for i in range(ONSET + 20)] + good[:30]  # a darker batch, then the usual material again
    video = write_video(tmp_path / "line.avi", frames)
    with Stream(det, str(video), sinks=[JsonlSink(tmp_path / "v.jsonl")], drift=DriftMonitor(reference)) as stream:
        records = list(stream)
    events = [(r.frame_id, e) for r in records for e in r.events]
    kinds = [e.kind for _, e in events]
    assert "drift" in kinds and "drift_cleared" in kinds[kinds.index("drift"):]
    assert all(frame_id >= ONSET for frame_id, _ in events)
    lines = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    written = [e for line in lines for e in line["events"]]
    assert [e["message"] for e in written] == [e.message for _, e in events]
    stats = stream.stats()["drift"]
    assert stats["frames"] == len(frames) and stats["alarms"] == kinds.count("drift")
    assert stats["ms_per_frame"] > 0 and stats["settings"]["false_alarms_per_frame_at_most"] < 1e-4
    with Stream(det, str(video), drift=None) as quiet:
        assert all(not r.events for r in quiet) and quiet.stats()["drift"] is None


def test_several_cameras_are_watched_each_against_the_reference(watched, tmp_path):
    """Two cameras in one Stream: the one whose material turns darker is flagged, the other stays quiet (one
    monitor per camera: their statistics are not mixed)."""
    det, reference, good = watched
    steady = write_video(tmp_path / "steady.avi", good[:ONSET + 20])
    darker = write_video(tmp_path / "darker.avi", [good[i] if i < ONSET else drifted(good[i], "batch", 1.0, det.size)
                                                   for i in range(ONSET + 20)])
    with Stream(det, {"steady": str(steady), "darker": str(darker)}, drift=DriftMonitor(reference)) as stream:
        records = list(stream)
    alarms = [(r.source, e) for r in records for e in r.events if getattr(e, "kind", "") == "drift"]
    assert alarms and {source for source, _ in alarms} == {"darker"}
    assert all(e.message.startswith("darker: ") for _, e in alarms)
    stats = stream.stats()["drift"]
    assert set(stats["by_source"]) == {"steady", "darker"} and stats["frames"] == len(records)
    assert stats["by_source"]["steady"]["alarms"] == 0 and stats["alarms"] == len(alarms)


def test_cfrg_run_watches_by_default_when_the_model_has_a_reference(exported_model, tmp_path, capsys):
    frames = [read_image(p, "bgr") for p in image_files(DEMO_ROOT / "ball_screw" / "test" / "good")]
    dimmed = frames + [drifted(f, "dimming", 1.0, (64, 128)) for f in frames * 3]
    video = write_video(tmp_path / "dim.avi", dimmed)
    out = tmp_path / "out"
    assert main(["run", "--model", str(exported_model[1]), "--source", str(video), "--out", str(out),
                 "--no-progress", "--no-masks", "--no-overlays"]) == 0
    printed = capsys.readouterr().out
    assert "drift: frame " in printed and "brightness dropped" in printed
    assert f"drift watch: {len(dimmed)} frames" in printed
    lines = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert any(e["kind"] == "drift" for line in lines for e in line["events"])
    assert main(["run", "--model", str(exported_model[1]), "--source", str(video), "--no-progress",
                 "--no-drift-watch"]) == 0
    assert "drift watch: off (--no-drift-watch)" in capsys.readouterr().out

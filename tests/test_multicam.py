"""Several cameras in one stream (sdk.sources.MultiSource, sdk.Stream with a list of sources, sdk.sinks.BySource,
cfrg run with several --source): videos written by OpenCV from real images, an image folder of the demo data,
the real exported CFRG model, and TinyOnnxDetector (a real ONNX Runtime session) where a camera must fail."""
from __future__ import annotations

import json
import threading
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from sdk.cli import main
from sdk.sinks import BySource, JsonlSink
from sdk.sources import LiveSource, MultiSource, SourceError, open_source
from sdk.stream import Record, Stream
from stream_helpers import FakeCameraFactory, TinyOnnxDetector, real_images, stream_threads_alive, write_video
from tests.conftest import BATCH_SCORE_TOLERANCE, DEMO_ROOT

GOOD_FOLDER = DEMO_ROOT / "ball_screw" / "test" / "good"


@pytest.fixture()
def videos(tmp_path, data_root) -> dict[str, tuple[Path, int, tuple[int, int]]]:
    """Three videos of real images, of different lengths and frame sizes: {name: (path, frames, (h, w))}."""
    out = {}
    for name, n, size in (("a", 7, (160, 64)), ("b", 12, (96, 96)), ("c", 5, (200, 80))):
        out[name] = (write_video(tmp_path / f"{name}.mp4", real_images(data_root, n, size)), n, (size[1], size[0]))
    return out


def by_camera(records: list[Record]) -> dict[str, list[Record]]:
    cams = defaultdict(list)
    for rec in records:
        cams[rec.source].append(rec)
    return cams


def camera_threads_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("cfrg-camera")]


class CountingDetector:
    """A real sdk.Detector whose inference calls are counted with their batch sizes (one worker: no replicas)."""

    def __init__(self, det):
        self.det, self.batches = det, []

    def preprocess(self, frames):
        return self.det.preprocess(frames)

    def infer(self, batch):
        self.batches.append(len(batch))
        return self.det.infer(batch)

    def postprocess(self, frames, raw):
        return self.det.postprocess(frames, raw)


def test_four_cameras_batched_into_one_inference_call_with_the_real_model(videos, exported_model):
    from sdk.detector import Detector

    det = Detector(exported_model[1])
    counting = CountingDetector(det)
    sources = [str(videos[k][0]) for k in "abc"] + [str(GOOD_FOLDER)]
    expected = {str(videos[k][0]): videos[k][1] for k in "abc"} | {str(GOOD_FOLDER): len(list(GOOD_FOLDER.glob("*.jpg")))}
    with Stream(counting, sources, infer_workers=1, batch_timeout=0.5) as stream:
        records = list(stream)
    total = sum(expected.values())
    assert [r.frame_id for r in records] == list(range(total)) and {r.status for r in records} == {"ok"}
    cams = by_camera(records)
    assert set(cams) == set(expected)  # each record tagged with its camera (the URI, distinct here)
    for name, n in expected.items():
        assert [r.frame.frame_id for r in cams[name]] == list(range(n))  # every frame once, in its camera's order
    for k in "abc":
        assert {r.result.mask.shape for r in cams[str(videos[k][0])]} == {videos[k][2]}  # at the camera's size
    assert stream.batch_size == 4 and sum(counting.batches) == total and max(counting.batches) == 4
    # frames inferred together share their "inferred" time: some batches hold frames of several cameras
    batches = defaultdict(set)
    for rec in records:
        batches[rec.timestamps["inferred"]].add(rec.source)
    assert len(batches) == len(counting.batches) and max(len(s) for s in batches.values()) >= 3
    for rec in records[::5]:  # each result belongs to its own frame in a mixed batch
        assert rec.score == pytest.approx(det(rec.image).score, **BATCH_SCORE_TOLERANCE)
    stats = stream.stats()["sources"]
    assert {name: s["frames"] for name, s in stats.items()} == expected and all(s["ok"] == s["frames"]
                                                                                for s in stats.values())
    assert stream_threads_alive() == [] and camera_threads_alive() == []


class FailingCamera:
    """k frames, then every read raises (a driver that broke for good)."""

    def __init__(self, frames: list, k: int):
        self.frames, self.k, self.reads, self.closed = frames, k, 0, False

    def __iter__(self):
        return self

    def __next__(self):
        self.reads += 1
        if self.reads > self.k:
            raise OSError("camera driver: device not responding")
        return self.frames[self.reads - 1]

    def close(self):
        self.closed = True


def test_one_camera_failing_and_one_losing_its_feed_do_not_stop_the_others(videos):
    images = [np.full((24, 32, 3), 40 * i, np.uint8) for i in range(4)]
    failing = FailingCamera(images, k=3)
    factory = FakeCameraFactory(images, deliveries=[4, 3], open_results=[True, False, True, False, False])
    live = LiveSource("fake-live", factory, backoff_initial=0.01, backoff_max=0.01, max_retries=2)
    video = open_source(videos["b"][0])
    cameras = {"line": video, "broken": failing, "live": live}
    with Stream(TinyOnnxDetector(), MultiSource(cameras, max_errors=4)) as stream:
        records = list(stream)
    cams = by_camera(records)
    assert [r.frame_id for r in records] == list(range(len(records)))
    assert [r.frame.frame_id for r in cams["line"]] == list(range(12)) and {r.status for r in cams["line"]} == {"ok"}
    broken = cams["broken"]
    assert [r.status for r in broken] == ["ok"] * 3 + ["error"] * 4
    assert all(r.error == "source error: OSError: camera driver: device not responding" for r in broken[3:6])
    assert "camera broken left out after 4 errors in a row, the other cameras go on" in broken[-1].error
    assert [r.frame.frame_id for r in broken] == [0, 1, 2, None, None, None, None]
    assert [r.status for r in cams["live"]] == ["ok"] * 7 + ["error"]
    assert [r.frame.frame_id for r in cams["live"]][:7] == list(range(7)) and "SourceLost" in cams["live"][-1].error
    events = list(stream.events)  # the last camera's "ended" comes after the last record
    assert [e for r in records for e in r.events] == events[:sum(len(r.events) for r in records)]
    live_kinds = [e.kind for e in events if e.source == "live"]
    assert live_kinds == ["lost", "retry_failed", "reconnected", "lost", "retry_failed", "retry_failed", "gave_up",
                          "ended"]
    assert {e.source for e in events if e.kind == "ended"} == {"line", "broken", "live"}
    stats = stream.stats()
    assert stats["sources"]["line"] == {"frames": 12, "ok": 12, "errors": 0, "dropped": 0}
    assert stats["sources"]["broken"]["errors"] == 4 and stats["reconnects"] == 1 and stats["losses"] == 2
    assert failing.closed and video.closed and live.closed and camera_threads_alive() == []


def test_sinks_per_camera_dict_and_factory(videos, tmp_path):
    sources = {"a": str(videos["a"][0]), "c": str(videos["c"][0])}
    made = {}

    def sinks_of(name):
        made[name] = JsonlSink(tmp_path / "factory" / f"{name}.jsonl")
        return [made[name]]

    routed = BySource({"a": [JsonlSink(tmp_path / "dict" / "a.jsonl")]})  # no sinks for c: its records skipped
    with Stream(TinyOnnxDetector(), sources, sinks=[routed, BySource(sinks_of)]) as stream:
        records = list(stream)
    assert len(records) == 12 and set(made) == {"a", "c"} and routed.written == 7 and routed.skipped == 5
    for name, n in (("a", 7), ("c", 5)):
        lines = [json.loads(x) for x in (tmp_path / "factory" / f"{name}.jsonl").read_text().splitlines()]
        assert {x["source"] for x in lines} == {name} and [x["source_frame_id"] for x in lines] == list(range(n))
        assert [x["frame_id"] for x in lines] == [r.frame_id for r in records if r.source == name]
    assert len((tmp_path / "dict" / "a.jsonl").read_text().splitlines()) == 7 and made["c"].closed


def test_leaving_a_live_multi_camera_stream_joins_every_thread_and_tags_flushed_records(videos):
    images = [np.full((16, 16, 3), 9 * i, np.uint8) for i in range(3)]
    live = LiveSource("endless", FakeCameraFactory(images, deliveries=[None]), backoff_initial=0.01)
    video = open_source(videos["b"][0], loop=True)
    sink_sources = Counter()

    class CountingSink:
        def write(self, rec):
            sink_sources[rec.source] += 1

    delivered = 0
    with Stream(TinyOnnxDetector(infer_delay_s=0.005), [live, video], sinks=[CountingSink()]) as stream:
        for rec in stream:
            delivered += 1
            if rec.frame_id >= 20 and len(sink_sources) == 2 or rec.frame_id >= 2000:  # the video may open late
                break
    stats = stream.stats()
    assert stats["delivered"] == delivered and stats["delivered"] + stats["flushed"] == stats["frames"]
    assert sum(sink_sources.values()) == stats["frames"] and None not in sink_sources
    assert set(sink_sources) == {"endless", str(videos["b"][0])}  # both cameras reached the stream
    assert live.closed and video.closed and camera_threads_alive() == [] and stream_threads_alive() == []


def test_names_and_clear_errors(videos):
    a, b = str(videos["a"][0]), str(videos["b"][0])
    for cameras, names, want in (([a, b], None, [a, b]), ([a, a], None, ["cam0", "cam1"]),  # a URI twice: numbered
                                 ([a, b], ["left", "right"], ["left", "right"])):
        with MultiSource(cameras, names=names) as merged:
            assert merged.names == want and len(merged) == 2
    with pytest.raises(ValueError, match="at least one camera"):
        MultiSource([])
    with pytest.raises(ValueError, match="'left' given to more than one camera"):
        MultiSource([a, b], names=["left", "left"])
    with pytest.raises(ValueError, match="one name per camera"):
        MultiSource([a, b], names=["left"])
    with pytest.raises(TypeError, match="camera 1 is a numpy image"):
        MultiSource([a, np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(SourceError, match="camera right: .*missing.mp4"):
        MultiSource({"left": a, "right": str(Path(a).with_name("missing.mp4"))})
    with pytest.raises(TypeError, match="mixes cameras"):
        Stream(TinyOnnxDetector(), [a, np.zeros((8, 8, 3), np.uint8)])
    engine_like = TinyOnnxDetector()
    engine_like.backend = type("Backend", (), {"max_batch": 2})()  # a TensorRT engine's largest batch
    for det, want in ((engine_like, 2), (TinyOnnxDetector(), 3)):
        with Stream(det, [a, b, str(videos["c"][0])]) as stream:
            assert stream.batch_size == want
        assert all(cam.closed for cam in stream.source.cameras.values())
    images = [np.full((8, 8, 3), 7, np.uint8)] * 3  # a list of images is still one in-memory source
    records = list(Stream(TinyOnnxDetector(), images))
    assert [r.status for r in records] == ["ok"] * 3 and stream_threads_alive() == []


def test_cfrg_run_with_two_sources_writes_one_folder_per_camera(videos, exported_model, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["run", "--model", str(exported_model[1]), "--source", f"left={videos['a'][0]}",
            "--source", str(GOOD_FOLDER), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    n_folder = len(list(GOOD_FOLDER.glob("*.jpg")))
    for name, n in (("left", 7), ("cam1", n_folder)):
        lines = [json.loads(x) for x in (out / name / "verdicts.jsonl").read_text().splitlines()]
        assert {x["source"] for x in lines} == {name} and [x["source_frame_id"] for x in lines] == list(range(n))
        assert all(x["status"] == "ok" for x in lines)
        masks = sorted(p.name for p in (out / name / "masks").glob("*.png"))
        assert masks == [f"{i:06d}_mask.png" for i in range(n)]  # the camera's own frame ids
        assert len(list((out / name / "overlays").glob("*.png"))) == n
    run = json.loads((out / "RUN.json").read_text())
    assert run["status"] == "complete" and run["sources"] == {"left": str(videos["a"][0]), "cam1": str(GOOD_FOLDER)}
    assert run["holds"]["records"] == 7 + n_folder and run["holds"]["sources"]["left"]["masks"] == 7
    assert sum(run["verdicts_by_source"]["cam1"].values()) == n_folder
    printed = capsys.readouterr().out
    assert f"{7 + n_folder} frames:" in printed and f"  left ({videos['a'][0]}): 7 frames:" in printed
    assert f"  cam1 ({GOOD_FOLDER}): {n_folder} frames:" in printed and "left/, cam1/ (each: verdicts.jsonl" in printed
    assert sorted(p.name for p in out.iterdir()) == ["RUN.json", "cam1", "left"]
    # the next run replaces this unit (its camera folders are the run's own) ...
    assert main(args[:6] + [str(videos["c"][0])] + args[7:]) == 0
    assert len((out / "cam1" / "verdicts.jsonl").read_text().splitlines()) == 5
    # ... but a folder a run did not write is refused
    (out / "notes").mkdir()
    assert main(args) == 2 and "holds files a run did not write (notes)" in capsys.readouterr().err


def test_cfrg_run_refuses_one_camera_name_twice(videos, exported_model, tmp_path, capsys):
    a = str(videos["a"][0])
    assert main(["run", "--model", str(exported_model[1]), "--source", f"x={a}", "--source", f"x={a}",
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "camera name(s) 'x' given to more than one camera" in err and "--source left=A" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.incomplete").exists()

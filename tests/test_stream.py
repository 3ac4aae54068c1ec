"""Tests of sdk/stream.py with TinyOnnxDetector (a real ONNX Runtime session of a tiny graph that
stands in for sdk.Detector) over videos and folders written from real images."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from sdk.sinks import JsonlSink
from sdk.sources import LiveSource, open_source
from sdk.stream import Record, Stream
from stream_helpers import (FakeCameraFactory, TinyOnnxDetector, real_images, stream_threads_alive,
                            write_video)


@pytest.fixture(scope="module")
def frames_small(data_root) -> list[np.ndarray]:
    return real_images(data_root, 40, (160, 64))


@pytest.fixture()
def video(tmp_path, frames_small) -> Path:
    return write_video(tmp_path / "line.mp4", frames_small)


class RecordingSink:
    def __init__(self, interrupt_at: int | None = None):
        self.ids: list[int] = []
        self.interrupt_at = interrupt_at
        self.closed = False

    def write(self, rec: Record) -> None:
        if rec.frame_id == self.interrupt_at:
            self.interrupt_at = None
            raise KeyboardInterrupt  # Ctrl-C arriving while a sink writes
        self.ids.append(rec.frame_id)

    def close(self) -> None:
        self.closed = True


def assert_clean(stream: Stream) -> None:
    assert stream_threads_alive() == []
    assert all(not t.is_alive() for t in stream._threads)


def test_every_frame_in_order_with_results_at_frame_size(video):
    det = TinyOnnxDetector()
    with Stream(det, open_source(video)) as stream:
        records = list(stream)
    assert [r.frame_id for r in records] == list(range(40))
    assert all(r.status == "ok" for r in records)
    for r in records:
        t = r.timestamps
        assert t["captured"] <= t["preprocessed"] <= t["inferred"] <= t["done"]
        assert r.result.anomaly_map.shape == r.image.shape[:2] == (64, 160)
        assert r.result.verdict in ("ok", "defect") and r.score == r.result.score
    stats = stream.stats()
    assert stats["frames"] == stats["ok"] == 40 and stats["errors"] == stats["dropped"] == 0
    assert stats["fps"] > 0 and all(stats["stage_ms"][s] is not None for s in ("capture", "preprocess", "infer"))
    assert det.infer_threads and all(t.endswith("-infer") for t in det.infer_threads)  # not the caller's thread
    assert_clean(stream)


def test_batches_keep_order(video):
    with Stream(TinyOnnxDetector(), open_source(video), batch_size=4, queue_size=2) as stream:
        records = list(stream)
    assert [r.frame_id for r in records] == list(range(40)) and {r.status for r in records} == {"ok"}


def test_batches_larger_than_the_queue_fill_without_waiting_for_the_batch_timeout(frames_small):
    """queue_size 1, batch_size 4: taking a frame out of the pipe wakes the capture at once (it used to wait for its
    0.1 s poll, so batches ran out of their 0.05 s timeout one frame short)."""
    det = TinyOnnxDetector()
    sizes = []
    infer = det.infer
    det.infer = lambda batch: sizes.append(len(batch)) or infer(batch)
    with Stream(det, [f for f in frames_small for _ in range(4)][:48], queue_size=1, batch_size=4,
                batch_timeout=0.05, infer_workers=1) as stream:
        records = list(stream)
    assert len(records) == 48 and sum(sizes) == 48
    assert sizes.count(4) >= len(sizes) // 2, sizes


def test_back_pressure_by_default_no_drops(video):
    det = TinyOnnxDetector(infer_delay_s=0.02)
    with Stream(det, open_source(video), queue_size=1) as stream:
        records = list(stream)
    assert [r.status for r in records] == ["ok"] * 40
    # capture waited for the pipeline: frame k is read only after frame k-10 is done
    done = [r.timestamps["done"] for r in records]
    captured = [r.timestamps["captured"] for r in records]
    assert all(captured[k] >= done[k - 10] for k in range(10, 40))


def test_drop_oldest_accounts_for_every_frame(video):
    det = TinyOnnxDetector(infer_delay_s=0.03)
    with Stream(det, open_source(video), drop="oldest", queue_size=2) as stream:
        records = list(stream)
    assert [r.frame_id for r in records] == list(range(40))
    dropped = [r for r in records if r.status == "dropped"]
    ok = [r for r in records if r.status == "ok"]
    assert dropped and ok and len(dropped) + len(ok) == 40
    assert all(r.image is None and "drop='oldest'" in r.error for r in dropped)
    assert records[-1].status == "ok"  # the newest frames are kept
    assert stream.stats()["dropped"] == len(dropped)


def test_pipeline_overlaps_stages():
    class SleepyDetector(TinyOnnxDetector):
        def preprocess(self, frames):
            time.sleep(0.02)
            return super().preprocess(frames)

    frames = [np.full((32, 32, 3), i, np.uint8) for i in range(40)]
    det = SleepyDetector(infer_delay_s=0.02)
    t0 = time.monotonic()
    records = list(Stream(det, frames))
    elapsed = time.monotonic() - t0
    assert [r.status for r in records] == ["ok"] * 40
    assert elapsed < 0.75 * 40 * 0.04  # one stage after the other takes >= 1.6 s; overlapped about 0.85 s


def test_bad_frames_give_error_records_and_stream_goes_on():
    good = np.full((40, 50, 3), 100, np.uint8)
    items = [good, good.astype(np.float32), np.zeros((0, 5, 3), np.uint8), None, good[:, :, :2].copy(), good]
    for batch_size in (1, 4):
        records = list(Stream(TinyOnnxDetector(), items, batch_size=batch_size))
        assert [r.status for r in records] == ["ok", "error", "error", "error", "error", "ok"]
        assert "dtype must be uint8" in records[1].error and records[1].error.startswith("bad frame: ValueError")
        assert "numpy array" in records[3].error and "shape" in records[4].error


class FlakySource:
    """Yields frames 0..n-1 but raises on the `fail_at` calls of next()."""

    def __init__(self, n: int, fail_at: set):
        self.n, self.fail_at, self.calls, self.i, self.closed = n, fail_at, 0, 0, False

    def __iter__(self):
        return self

    def __next__(self):
        call, self.calls = self.calls, self.calls + 1
        if call in self.fail_at:
            raise OSError("camera driver hiccup")
        if self.i == self.n:
            raise StopIteration
        self.i += 1
        return np.full((30, 30, 3), self.i, np.uint8)

    def close(self):
        self.closed = True


def test_source_raising_mid_stream_continue():
    source = FlakySource(8, {3})
    records = list(Stream(TinyOnnxDetector(), source, on_error="continue"))
    assert [r.status for r in records] == ["ok"] * 3 + ["error"] + ["ok"] * 5
    assert records[3].error == "source error: OSError: camera driver hiccup" and source.closed


def test_source_raising_mid_stream_stop_ends_cleanly():
    source = FlakySource(8, {3})
    sink = RecordingSink()
    with Stream(TinyOnnxDetector(), source, on_error="stop", sinks=[sink]) as stream:
        records = list(stream)
    assert [r.status for r in records] == ["ok"] * 3 + ["error"]
    assert "on_error='stop'" in stream.stop_reason and source.closed and sink.closed
    assert sink.ids == [0, 1, 2, 3]
    assert_clean(stream)


def test_generator_source_that_raises_ends_after_error_record():
    def gen():
        yield np.zeros((20, 20, 3), np.uint8)
        raise RuntimeError("boom")

    records = list(Stream(TinyOnnxDetector(), gen()))
    assert [(r.frame_id, r.status) for r in records] == [(0, "ok"), (1, "error")]


def test_inference_failure_is_an_error_record():
    frames = [np.full((20, 20, 3), i, np.uint8) for i in range(5)]
    records = list(Stream(TinyOnnxDetector(fail_infer_on_calls={2}), frames))
    assert [r.status for r in records] == ["ok", "ok", "error", "ok", "ok"]
    assert records[2].error.startswith("inference failed: RuntimeError")


def test_failing_sink_is_counted_and_stops_only_when_asked():
    class FullDisk:
        def write(self, rec):
            if rec.frame_id == 2:
                raise OSError("No space left on device")

    frames = [np.zeros((16, 16, 3), np.uint8)] * 30
    go_on = Stream(TinyOnnxDetector(), frames, sinks=[FullDisk()])
    assert len(list(go_on)) == 30 and go_on.stats()["sink_errors"] == 1
    stop = Stream(TinyOnnxDetector(), frames, sinks=[FullDisk()], on_error="stop", queue_size=1)
    records = list(stop)
    assert [r.frame_id for r in records] == list(range(len(records))) and 3 <= len(records) < 30
    assert "FullDisk failed: OSError" in stop.stop_reason


def test_error_frames_from_a_folder_source(tmp_path, frames_small):
    import cv2
    for i, f in enumerate(frames_small[:4]):
        cv2.imwrite(str(tmp_path / f"p{i}.png"), f)
    (tmp_path / "p1b.png").write_bytes(b"\x89PNG broken")
    records = list(Stream(TinyOnnxDetector(), open_source(tmp_path)))
    assert [Path(r.frame.meta["path"]).name for r in records] == ["p0.png", "p1.png", "p1b.png", "p2.png", "p3.png"]
    assert [r.status for r in records] == ["ok", "ok", "error", "ok", "ok"]


def test_ctrl_c_in_a_sink_drains_flushes_and_joins(video, tmp_path):
    sink = RecordingSink(interrupt_at=5)
    jsonl = JsonlSink(tmp_path / "out.jsonl")
    source = open_source(video, loop=True)  # endless
    stream = Stream(TinyOnnxDetector(), source, sinks=[jsonl, sink])
    seen = []
    with pytest.raises(KeyboardInterrupt):
        for rec in stream:
            seen.append(rec.frame_id)
    total = stream.stats()["frames"]
    assert seen == [0, 1, 2, 3, 4] and total >= 6
    assert sink.ids == list(range(total))  # the interrupted record and everything captured after it
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == total and jsonl.closed and sink.closed and source.closed
    assert stream.stop_reason == "interrupted (Ctrl-C)"
    assert_clean(stream)


def test_ctrl_c_in_the_consumer_and_break_flush_the_rest(video):
    for how in ("interrupt", "break"):
        sink = RecordingSink()
        source = open_source(video, loop=True)
        try:
            with Stream(TinyOnnxDetector(), source, sinks=[sink]) as stream:
                for rec in stream:
                    if rec.frame_id == 3:
                        if how == "interrupt":
                            raise KeyboardInterrupt
                        break
        except KeyboardInterrupt:
            assert how == "interrupt"
        total = stream.stats()["frames"]
        assert stream.stats()["delivered"] == 4 and len(stream.flushed) == total - 4
        assert [r.frame_id for r in stream.flushed] == list(range(4, total))
        assert sink.ids == list(range(total)) and source.closed
        assert_clean(stream)


def test_real_sigint_while_the_consumer_waits(video, request):
    import os
    import signal

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("SIGINT is delivered to the main thread only")
    # A shell starts background jobs with SIGINT ignored; a terminal's Ctrl-C raises KeyboardInterrupt.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    sink = RecordingSink()
    det = TinyOnnxDetector(infer_delay_s=0.05)  # the consumer mostly waits for the next record
    stream = Stream(det, open_source(video, loop=True), sinks=[sink])
    timer = threading.Timer(0.4, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    n = 0
    with pytest.raises(KeyboardInterrupt):
        for _ in stream:
            n += 1
    timer.join()
    total = stream.stats()["frames"]
    assert n >= 1 and sink.ids == list(range(total)) and stream.stop_reason == "interrupted (Ctrl-C)"
    assert_clean(stream)


def test_camera_loss_in_stream_with_fake_capture_not_real_hardware():
    frames = [np.full((24, 32, 3), 60 * i, np.uint8) for i in range(3)]
    factory = FakeCameraFactory(frames, deliveries=[4, 3, None], open_results=[True, False])
    source = LiveSource("fake-cam", factory, backoff_initial=0.01, backoff_max=0.02)
    stream = Stream(TinyOnnxDetector(), source)
    records = []
    with stream:
        for rec in stream:
            records.append(rec)
            if len(records) == 12:
                break
    assert [r.frame_id for r in records] == list(range(12)) and {r.status for r in records} == {"ok"}
    kinds = [e.kind for r in records for e in r.events]
    assert kinds == ["lost", "retry_failed", "reconnected", "lost", "reconnected"]
    assert records[4].events[0].kind == "lost"  # events ride on the first frame after them
    stats = stream.stats()
    assert stats["reconnects"] == 2 and stats["losses"] == 2 and source.closed
    assert_clean(stream)


def test_camera_gone_for_good_ends_with_an_error_record():
    frames = [np.zeros((16, 16, 3), np.uint8)]
    factory = FakeCameraFactory(frames, deliveries=[3], open_results=[True] + [False] * 5)
    source = LiveSource("fake-cam", factory, backoff_initial=0.01, backoff_max=0.01, max_retries=2)
    records = list(Stream(TinyOnnxDetector(), source))
    assert [r.status for r in records] == ["ok"] * 3 + ["error"]
    assert "SourceLost" in records[-1].error and "gave up after 2" in records[-1].error
    assert [e.kind for e in records[-1].events] == ["lost", "retry_failed", "retry_failed", "gave_up"]


def test_stuck_detector_is_bounded_by_drain_timeout():
    class StuckDetector(TinyOnnxDetector):
        def infer(self, batch):
            if self.infer_calls == 1:
                self.infer_calls += 1
                time.sleep(1.5)
            return super().infer(batch)

    frames = [np.zeros((16, 16, 3), np.uint8) for _ in range(6)]
    stream = Stream(StuckDetector(), frames, drain_timeout=0.2)
    it = iter(stream)
    first = next(it)
    deadline = time.monotonic() + 5
    while stream._seq < 6 and time.monotonic() < deadline:  # on a loaded machine capture can lag
        time.sleep(0.01)
    t0 = time.monotonic()
    flushed = stream.close("test")
    assert time.monotonic() - t0 < 1.6
    assert first.status == "ok" and [r.frame_id for r in flushed] == list(range(1, 6))
    assert all(r.status == "error" and r.error.startswith("not processed") for r in flushed)
    time.sleep(1.5)  # let the sleeping worker finish before the next test counts threads


class UnevenDelayDetector(TinyOnnxDetector):
    """Inference takes 0-20 ms at random, so parallel workers finish out of order."""

    def __init__(self):
        super().__init__()
        self._rng = np.random.default_rng(0)
        self._lock = threading.Lock()

    def infer(self, batch):
        with self._lock:
            delay = float(self._rng.uniform(0, 0.02))
        time.sleep(delay)
        return super().infer(batch)


def test_parallel_inference_workers_keep_frame_order_and_pairing(video, frames_small):
    det = UnevenDelayDetector()
    with Stream(det, open_source(video), infer_workers=3, batch_size=2) as stream:
        records = list(stream)
    assert [r.frame_id for r in records] == list(range(40)) and {r.status for r in records} == {"ok"}
    assert stream.stats()["infer_workers"] == 3
    assert {t.rsplit("-", 1)[-1] for t in det.infer_threads} >= {"0", "1", "2"}  # infer-0, infer-1, infer-2
    ref = TinyOnnxDetector()
    for rec in records:  # each result belongs to its own frame
        assert rec.score == pytest.approx(ref(rec.image).score, abs=1e-6)
    assert_clean(stream)


def test_auto_inference_workers_with_the_real_detector(tmp_path, data_root, exported_model):
    """Detector on ONNX Runtime CPU: "auto" gives two single-session replicas (on 2+ cores) whose
    results equal the detector's own."""
    import os

    from sdk.detector import Detector

    det = Detector(exported_model[1])
    path = write_video(tmp_path / "auto.mp4", real_images(data_root, 12, (200, 96)))
    with Stream(det, open_source(path)) as stream:
        records = list(stream)
    want = 2 if (os.cpu_count() or 1) >= 2 else 1
    assert stream.stats()["infer_workers"] == want
    assert [r.frame_id for r in records] == list(range(12)) and {r.status for r in records} == {"ok"}
    for rec in records:
        assert rec.score == pytest.approx(det(rec.image).score, rel=1e-5)
    twin = det.replica(threads=1)
    assert twin.backend is not det.backend and twin.image_threshold == det.image_threshold
    assert_clean(stream)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="infer_workers"):
        Stream(TinyOnnxDetector(), [], infer_workers=0)
    with pytest.raises(TypeError, match="no preprocess"):
        Stream(object(), [])
    with pytest.raises(ValueError, match="drop must be"):
        Stream(TinyOnnxDetector(), [], drop="newest")
    with pytest.raises(ValueError, match="on_error must be"):
        Stream(TinyOnnxDetector(), [], on_error="ignore")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux) for VmRSS")
def test_soak_2000_frames_every_frame_accounted_memory_flat(tmp_path, data_root, exported_model):
    """2,000 frames of a real video through sdk.Stream with the real (small) exported CFRG model."""
    from sdk.detector import Detector

    base = real_images(data_root, 50, (128, 128))
    path = write_video(tmp_path / "soak.mp4", base * 40)  # 2,000 frames
    sink = JsonlSink(tmp_path / "soak.jsonl")
    rss = []
    next_id = 0
    with Stream(Detector(exported_model[1]), open_source(path), sinks=[sink], batch_size=2) as stream:
        for rec in stream:
            assert rec.frame_id == next_id and rec.status == "ok"
            next_id += 1
            if rec.frame_id % 100 == 0:
                rss.append(_rss_mb())
    assert next_id == 2000
    assert len((tmp_path / "soak.jsonl").read_text().splitlines()) == 2000
    after_warmup = rss[2:]
    print(f"soak: VmRSS every 100 frames (MB): {[round(v, 1) for v in rss]}")
    assert max(after_warmup) - min(after_warmup) < 50, rss
    assert_clean(stream)

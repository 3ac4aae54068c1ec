"""Tests of sdk/sources.py: files, folders and globs of real images, videos written from real
images, URI errors, reconnection logic (with a fake capture: not real camera hardware) and the
line-scan accumulator fed row blocks of a real image."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from sdk.sources import (Frame, ImageFilesSource, LineScanAccumulator, LiveSource, SourceError, SourceLost,
                         VideoFileSource, _opencv_has, csi_pipeline, open_source)
from stream_helpers import FakeCameraFactory, real_images, write_video


@pytest.fixture()
def image_folder(tmp_path, data_root) -> tuple[Path, list[Path]]:
    """6 real magnetic-tile JPEGs (varying sizes), a corrupt and a truncated JPEG, and a non-image."""
    files = sorted((data_root / "magnetic_tile" / "test" / "crack").glob("*.jpg"))[:6]
    folder = tmp_path / "frames"
    folder.mkdir()
    copies = []
    for i, f in enumerate(files):
        dst = folder / f"img_{i:02d}.jpg"
        shutil.copy(f, dst)
        copies.append(dst)
    (folder / "img_02b_corrupt.jpg").write_bytes(b"this is not a JPEG at all" * 10)
    data = files[0].read_bytes()
    (folder / "img_04b_truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.jpg").write_bytes(data)
    return folder, copies


def test_folder_sorted_every_file_one_item_corrupt_is_error(image_folder):
    folder, copies = image_folder
    with open_source(folder) as src:
        assert isinstance(src, ImageFilesSource) and len(src) == 8 and not src.live
        frames = list(src)
    names = [Path(f.meta["path"]).name for f in frames]
    assert names == sorted(p.name for p in folder.iterdir() if p.suffix == ".jpg" and not p.name.startswith("."))
    assert [f.frame_id for f in frames] == list(range(8))
    bad = {Path(f.meta["path"]).name: f for f in frames if not f.ok}
    assert set(bad) == {"img_02b_corrupt.jpg", "img_04b_truncated.jpg"}
    assert all(f.image is None for f in bad.values())
    assert "cannot decode" in bad["img_02b_corrupt.jpg"].error
    assert "truncated" in bad["img_04b_truncated.jpg"].error
    good = [f for f in frames if f.ok]
    for frame, path in zip(good, copies):
        expected = cv2.imread(str(path), cv2.IMREAD_COLOR)  # grayscale tiles -> 3 equal channels, BGR
        assert frame.image.dtype == np.uint8 and np.array_equal(frame.image, expected)
    assert len({f.image.shape for f in good}) > 1  # real tiles vary in size
    times = [f.timestamp for f in frames]
    assert times == sorted(times)


def test_glob_and_loop(image_folder):
    folder, copies = image_folder
    src = open_source(str(folder / "img_0[0-3].jpg"), loop=2)
    frames = list(src)
    assert [Path(f.meta["path"]).name for f in frames] == [p.name for p in copies[:4]] * 2
    assert [f.frame_id for f in frames] == list(range(8))
    assert [f.meta["pass"] for f in frames] == [0] * 4 + [1] * 4
    recursive = open_source(str(folder.parent / "**" / "img_0?.jpg"))
    assert len(list(recursive)) == 6


def test_single_image_and_rgb_option(image_folder, data_root):
    path = sorted((data_root / "ball_screw" / "test" / "pitting").glob("*.jpg"))[0]
    bgr = next(open_source(path))
    rgb = next(open_source(f"file://{path}", colour="rgb"))
    assert bgr.image.shape == (460, 1130, 3)
    assert np.array_equal(rgb.image, bgr.image[:, :, ::-1])
    assert np.array_equal(next(open_source(path, color="rgb")).image, rgb.image)  # the older spelling


def test_unknown_paths_and_options_have_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file or folder"):
        open_source(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no image files"):
        open_source(tmp_path / "empty")
    with pytest.raises(SourceError, match="no image files"):
        open_source(str(tmp_path / "*.png"))
    with pytest.raises(TypeError, match="unknown option"):
        open_source(tmp_path / "empty", fps=3)
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError, match="cannot open this video"):
        open_source(tmp_path / "bad.mp4")


@pytest.fixture()
def real_video(tmp_path, data_root) -> tuple[Path, list[np.ndarray]]:
    frames = real_images(data_root, 12, (226, 92))
    return write_video(tmp_path / "line.mp4", frames), frames


def test_video_file_frames_and_loop(real_video):
    path, written = real_video
    with open_source(path) as src:
        assert isinstance(src, VideoFileSource) and src.frame_count == 12
        frames = list(src)
    assert len(frames) == 12 and [f.frame_id for f in frames] == list(range(12))
    assert all(f.image.shape == (92, 226, 3) and f.image.dtype == np.uint8 for f in frames)
    # lossy mp4v: decoded frames are close to the real images written, not equal
    err = [np.abs(f.image.astype(int) - w.astype(int)).mean() for f, w in zip(frames, written)]
    assert max(err) < 12
    looped = list(open_source(path, loop=3))
    assert len(looped) == 36 and [f.meta["pass"] for f in looped[::12]] == [0, 1, 2]
    assert np.array_equal(looped[12].image, frames[0].image)


def test_video_file_end_is_not_a_loss(real_video):
    path, _ = real_video
    src = open_source(path)
    events = []
    src.add_listener(events.append)
    assert len(list(src)) == 12 and events == [] and not src.live
    with pytest.raises(StopIteration):
        next(src)


def test_csi_pipeline_and_missing_gstreamer_message():
    pipe = csi_pipeline(1, 1280, 720, 60, flip_method=2)
    assert pipe.startswith("nvarguscamerasrc sensor-id=1 ! ") and "width=(int)1280" in pipe
    assert "framerate=(fraction)60/1" in pipe and "flip-method=2" in pipe and pipe.endswith("sync=false")
    if _opencv_has("GStreamer"):
        pytest.skip("this OpenCV has GStreamer: the no-GStreamer message cannot be provoked here")
    with pytest.raises(SourceError, match="this OpenCV has no GStreamer support: on a Jetson use the system "
                                          "OpenCV from JetPack, not opencv-python from PyPI"):
        open_source("csi://0", open_timeout=5)


def test_unreachable_rtsp_and_missing_camera_fail_fast():
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="rtsp://127.0.0.1:9/stream: cannot open"):
        open_source("rtsp://127.0.0.1:9/stream", open_timeout=3)  # port 9: nothing listens
    with pytest.raises(SourceError, match="/dev/video97: cannot open"):
        open_source("/dev/video97", open_timeout=3)
    with pytest.raises(SourceError, match="camera:97: cannot open .*not used by another program"):
        open_source("97", open_timeout=3)
    assert time.monotonic() - t0 < 8


# ------------------------------------------------------------ reconnection (fake capture)


def _fake_frames(n: int = 3) -> list[np.ndarray]:
    return [np.full((8, 10, 3), 40 * i, np.uint8) for i in range(n)]


def test_reconnect_logic_with_fake_capture_not_real_hardware():
    # capture 1 gives 3 frames then fails; 2 reopen attempts fail; capture 2 gives 2 frames, then
    # the next reopen works at once and capture 3 streams forever
    factory = FakeCameraFactory(_fake_frames(), deliveries=[3, 2, None], open_results=[True, False, False])
    src = LiveSource("fake-cam", factory, read_timeout=1.0, backoff_initial=0.01, backoff_max=0.04, max_retries=5)
    events = []
    src.add_listener(events.append)
    frames = [next(src) for _ in range(8)]
    src.close()
    assert [f.frame_id for f in frames] == list(range(8))
    assert [e.kind for e in events] == ["lost", "retry_failed", "retry_failed", "reconnected", "lost", "reconnected"]
    assert [e.attempt for e in events if e.kind == "reconnected"] == [3, 1]
    assert src.reconnects == 2 and src.losses == 2
    for _ in range(50):  # released by the worker thread, after close()
        if all(c.released for c in factory.captures):
            break
        time.sleep(0.01)
    assert all(c.released for c in factory.captures)
    with pytest.raises(StopIteration):
        next(src)


def test_gives_up_after_max_retries_then_ends():
    factory = FakeCameraFactory(_fake_frames(), deliveries=[2], open_results=[True] + [False] * 10)
    src = LiveSource("fake-cam", factory, backoff_initial=0.01, backoff_max=0.02, max_retries=3)
    kinds = []
    src.add_listener(lambda e: kinds.append(e.kind))
    assert [next(src).frame_id for _ in range(2)] == [0, 1]
    with pytest.raises(SourceLost, match="gave up after 3 reconnect attempts"):
        next(src)
    assert kinds == ["lost", "retry_failed", "retry_failed", "retry_failed", "gave_up"]
    with pytest.raises(StopIteration):
        next(src)


def test_frozen_read_hits_deadline_not_a_hang():
    factory = FakeCameraFactory(_fake_frames(), deliveries=[1, None], hang_s=3.0)
    src = LiveSource("fake-cam", factory, read_timeout=0.2, backoff_initial=0.01)
    t0 = time.monotonic()
    frames = [next(src) for _ in range(3)]
    assert time.monotonic() - t0 < 1.5
    assert src.losses == 1 and src.reconnects == 1 and len(frames) == 3
    src.close()


def test_first_open_failure_raises_clear_error():
    factory = FakeCameraFactory(_fake_frames(), deliveries=[], open_results=[False])
    with pytest.raises(SourceError, match="fake-cam: cannot open .*did not open"):
        LiveSource("fake-cam", factory, describe_failure=lambda: "plug it in")


def test_close_interrupts_backoff_wait():
    factory = FakeCameraFactory(_fake_frames(), deliveries=[1], open_results=[True] + [False] * 10)
    src = LiveSource("fake-cam", factory, backoff_initial=5.0, backoff_max=5.0, max_retries=3)
    next(src)
    import threading
    threading.Timer(0.2, src.close).start()
    t0 = time.monotonic()
    with pytest.raises(StopIteration):
        next(src)
    assert time.monotonic() - t0 < 2.0


# ------------------------------------------------------------ line scan


@pytest.fixture()
def real_image(data_root) -> np.ndarray:
    path = sorted((data_root / "ball_screw" / "test" / "pitting").glob("*.jpg"))[3]
    return cv2.imread(str(path), cv2.IMREAD_COLOR)  # 460 x 1130 x 3


@pytest.mark.parametrize("overlap", [0, 20])
def test_line_scan_frames_from_real_image_row_blocks(real_image, overlap):
    blocks = (real_image[r:r + 7] for r in range(0, real_image.shape[0], 7))  # 7-row blocks, last one shorter
    frames = list(LineScanAccumulator(blocks, frame_height=100, overlap=overlap))
    stride = 100 - overlap
    full = [f for f in frames if not f.meta["partial"]]
    assert all(f.image.shape == (100, 1130, 3) for f in full)
    assert [f.meta["first_row"] for f in frames] == list(range(0, len(frames) * stride, stride))
    for f in frames:
        r0 = f.meta["first_row"]
        assert np.array_equal(f.image, real_image[r0:r0 + f.meta["rows"]])
    last = frames[-1]
    assert last.meta["partial"] and last.meta["first_row"] + last.meta["rows"] == 460
    assert len(full) == (460 - overlap) // stride


def test_line_scan_single_rows_grayscale_and_drop_partial(real_image):
    gray = cv2.cvtColor(real_image, cv2.COLOR_BGR2GRAY)
    frames = list(LineScanAccumulator(iter(gray), frame_height=128, partial="drop"))  # 1-D rows
    assert len(frames) == 3 and all(f.image.shape == (128, 1130) for f in frames)
    assert np.array_equal(np.concatenate([f.image for f in frames]), gray[:384])


def test_line_scan_bad_block_gives_one_error_and_restarts(real_image):
    blocks = [real_image[0:60], real_image[60:100, :500], real_image[100:150], real_image[150:200]]
    frames = list(LineScanAccumulator(blocks, frame_height=100))
    assert [f.ok for f in frames] == [False, True]
    assert "does not continue rows" in frames[0].error and "60 buffered rows discarded" in frames[0].error
    assert np.array_equal(frames[1].image, real_image[100:200])
    with pytest.raises(ValueError, match="overlap must be in"):
        LineScanAccumulator([], frame_height=10, overlap=10)


def test_line_scan_over_live_fake_camera_forwards_events():
    rows = [np.full((1, 16), i, np.uint8) for i in range(4)]
    factory = FakeCameraFactory(rows, deliveries=[5, None])
    live = LiveSource("fake-line-cam", factory, backoff_initial=0.01)
    acc = LineScanAccumulator(live, frame_height=4)
    kinds = []
    acc.add_listener(lambda e: kinds.append(e.kind))
    frames = [next(acc) for _ in range(3)]
    acc.close()
    assert acc.live and kinds == ["lost", "reconnected"]
    assert all(f.image.shape == (4, 16) for f in frames) and isinstance(frames[0], Frame)

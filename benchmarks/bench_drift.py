"""The drift watch's cost per frame against the Detector's own, in one run on the same frames.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_drift.py --model runs/drift/ball_screw/model.onnx \
        --images ../shared/data/ball_screw/test/good [--frames 60] [--size 1920x1080]

The model's model.json must hold a drift reference (cfrg export writes one; benchmarks/drift_figures.py adds one
to older models). Frames are the images as read (BGR), or resized to --size to stand for a camera. Each frame runs
through Detector(frame) (pre-process, inference, post-process) and DriftMonitor.update(frame, result), each timed
with perf_counter; medians and means are printed, with the ratio watch / detector.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdk import Detector, DriftMonitor  # noqa: E402
from sdk.data import read_image  # noqa: E402
from sdk.files import image_files  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", required=True, help="a folder of images")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", help="resize every frame to WxH first, e.g. 1920x1080")
    ap.add_argument("--backend", default="auto")
    ns = ap.parse_args()
    det = Detector(ns.model, backend=ns.backend)
    if not det.info.drift_reference:
        raise SystemExit(f"{ns.model}: its model.json has no drift reference; re-export it, or add one with "
                         f"benchmarks/drift_figures.py")
    monitor = DriftMonitor(det.info.drift_reference, colour=det.colour)
    files = image_files(ns.images)
    frames = [read_image(files[i % len(files)], "bgr") for i in range(ns.frames)]
    if ns.size:
        w, h = (int(v) for v in ns.size.lower().split("x"))
        frames = [cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in frames]
    for f in frames[:3]:  # warm-up
        monitor.update(f, det(f))
    monitor = DriftMonitor(det.info.drift_reference, colour=det.colour)
    detector_ms, watch_ms = [], []
    for f in frames:
        t0 = time.perf_counter()
        result = det(f)
        t1 = time.perf_counter()
        monitor.update(f, result)
        t2 = time.perf_counter()
        detector_ms.append(1e3 * (t1 - t0))
        watch_ms.append(1e3 * (t2 - t1))
    d, m = np.array(detector_ms), np.array(watch_ms)
    h, w = frames[0].shape[:2]
    print(f"{len(frames)} frames of {w}x{h}, model {det.size[1]}x{det.size[0]}, backend {det.backend.name}, "
          f"statistics grid {monitor.grid[1]}x{monitor.grid[0]}")
    print(f"detector    median {np.median(d):8.3f} ms   mean {d.mean():8.3f} ms per frame")
    print(f"drift watch median {np.median(m):8.3f} ms   mean {m.mean():8.3f} ms per frame")
    print(f"ratio watch / detector: {np.median(m) / np.median(d):.4f} (medians), {m.mean() / d.mean():.4f} (means)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

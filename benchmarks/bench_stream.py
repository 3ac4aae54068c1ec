"""Frames per second: a sequential loop (decode, then detector(frame)) vs sdk.Stream, same video, same run.

    python benchmarks/bench_stream.py --model model.onnx [--video in.mp4] [--frames 300]
        [--size 565x230] [--batch-size 1] [--queue-size 4] [--infer-workers auto] [--repeats 2] [--json out.json]

--model: an exported model (`cfrg export`, or runs/demo/model.onnx after `make demo`), run through
sdk.Detector. --video: a video file; without it one is written from the real test images of a data set
(--data, default CFRG_DATA or ../shared/data; --category, default ball_screw) at --size. Both loops
decode the same file with sdk.open_source; the runs alternate and the best of --repeats is kept for each.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sdk.cli import workers_arg  # noqa: E402
from sdk.data import AnomalyDataset  # noqa: E402
from sdk.detector import Detector  # noqa: E402
from sdk.evaluate import spread_indices  # noqa: E402
from sdk.sources import open_source  # noqa: E402
from sdk.stream import Stream  # noqa: E402


def make_video(args, folder: Path) -> Path:
    """A video of --frames frames cycling through up to 100 test images of the data set, at --size."""
    width, height = (int(v) for v in args.size.lower().split("x"))
    test = AnomalyDataset(args.data, args.category, "test")
    images = [cv2.resize(test.load_image(i, colour="bgr"), (width, height), interpolation=cv2.INTER_AREA)
              for i in spread_indices(len(test), 100)]
    path = folder / "bench.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write {path}")
    for i in range(args.frames):
        writer.write(images[i % len(images)])
    writer.release()
    return path


def sequential(det, video: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = 0
    with open_source(video) as source:
        for frame in source:
            det(frame.image)
            n += 1
    return n, time.perf_counter() - t0


def streamed(det, video: Path, args) -> tuple[int, float, dict]:
    t0 = time.perf_counter()
    n = 0
    with Stream(det, open_source(video), queue_size=args.queue_size, batch_size=args.batch_size,
                infer_workers=args.infer_workers) as stream:
        for rec in stream:
            if rec.status != "ok":
                raise RuntimeError(f"frame {rec.frame_id}: {rec.status}: {rec.error}")
            n += 1
    return n, time.perf_counter() - t0, stream.stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="exported .onnx (or .engine) for sdk.Detector")
    parser.add_argument("--data", default=os.environ.get("CFRG_DATA", str(ROOT.parent / "shared" / "data")),
                        help="data set root for the generated video")
    parser.add_argument("--category", default="ball_screw")
    parser.add_argument("--video", help="video file to decode (default: written from real images)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", default="565x230", help="WxH of the generated video (ball_screw at 1/2)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--queue-size", type=int, default=4)
    parser.add_argument("--infer-workers", type=workers_arg, default="auto", help="Stream inference workers: auto or N")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    det, det_name = Detector(args.model), f"sdk.Detector({args.model})"
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(args.video) if args.video else make_video(args, Path(tmp))
        cap = cv2.VideoCapture(str(video))
        size = f"{int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))}x{int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))}"
        cap.release()
        first = next(iter(open_source(video)))
        det(first.image)  # warm-up: session, allocations
        best_seq, best_stream, last_stats = float("inf"), float("inf"), {}
        for _ in range(args.repeats):
            n_seq, s = sequential(det, video)
            best_seq = min(best_seq, s)
            n_stream, s, last_stats = streamed(det, video, args)
            best_stream = min(best_stream, s)
        assert n_seq == n_stream, (n_seq, n_stream)

    fps_seq, fps_stream = n_seq / best_seq, n_stream / best_stream
    figures = {
        "detector": det_name, "video": str(args.video or f"generated {size}"), "frames": n_seq,
        "sequential_fps": round(fps_seq, 2), "stream_fps": round(fps_stream, 2),
        "ratio": round(fps_stream / fps_seq, 3), "batch_size": args.batch_size, "queue_size": args.queue_size,
        "infer_workers": last_stats.get("infer_workers"),
        "stage_ms": last_stats.get("stage_ms"), "latency_ms": last_stats.get("latency_ms"),
        "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
    }
    print(f"{det_name} on {figures['video']}, {n_seq} frames of {size}, best of {args.repeats}")
    print(f"  sequential (decode + detector(frame)): {fps_seq:7.1f} fps")
    print(f"  sdk.Stream (batch {args.batch_size}, queue {args.queue_size}, {last_stats.get('infer_workers')} "
          f"inference workers): {fps_stream:7.1f} fps"
          f"  -> {fps_stream / fps_seq:.2f}x")
    print(f"  stream stage ms/frame: {last_stats.get('stage_ms')}")
    print(f"  stream latency ms: {last_stats.get('latency_ms')}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

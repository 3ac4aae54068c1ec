#!/usr/bin/env python3
"""Camera to screen (or file) with the anomaly overlay, jetson-inference style:

    inspect_camera.py MODEL INPUT_URI [OUTPUT_URI] [--threshold T] [--min-area PX] [--max-frames N]

MODEL       model.engine (TensorRT, built with examples/jetson/build_engine.sh) or model.onnx
INPUT_URI   csi://0 (MIPI CSI camera), /dev/video0 or 0 (USB camera), rtsp://user:pw@host/stream,
            a video file, an image folder or a glob
OUTPUT_URI  display://0 (a window; the default when a display exists), a .mp4/.avi file, or none

Each frame is shown with its heat map, the defect regions' boxes, the verdict and score, and the FPS in
the status line. q or Esc in the window stops; Ctrl-C anywhere.
"""
import argparse
import os
import sys
import time

import cv2

import sdk
from sdk.checks import threshold_arg
from sdk.sinks import overlay

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("model")
p.add_argument("input")
p.add_argument("output", nargs="?", default="display://0" if os.environ.get("DISPLAY") else "none")
p.add_argument("--threshold", type=threshold_arg, default="default", help="default, good_only, f1 or a score")
p.add_argument("--min-area", type=int, default=0)
p.add_argument("--max-frames", type=int)
args = p.parse_args()

det = sdk.Detector(args.model, threshold=args.threshold, min_area=args.min_area)
writer, window, fps, shown = None, args.output.startswith("display://"), 0.0, 0
t_last = time.perf_counter()
source = sdk.open_source(args.input)
live = getattr(source, "live", False)  # a camera: show the newest frames, drop what the model cannot keep up with
with sdk.Stream(det, source, drop="oldest" if live else "none", max_frames=args.max_frames) as stream:
    for rec in stream:
        if rec.status != "ok":
            print(f"\nframe {rec.frame_id}: {rec.error}", file=sys.stderr)
            continue
        r, now = rec.result, time.perf_counter()
        fps = 0.9 * fps + 0.1 / max(now - t_last, 1e-6) if shown else 1.0 / max(now - t_last, 1e-6)
        t_last, shown = now, shown + 1
        status = f"{'NG' if r.is_defect else 'OK'}  score {r.score:.2f}  regions {len(r.regions)}  {fps:.1f} FPS"
        picture = overlay(rec.image, r.anomaly_map, r.mask, label=status, defect=r.is_defect)
        for region in r.regions:
            x, y, w, h = region.box
            cv2.rectangle(picture, (x, y), (x + w, y + h), (0, 0, 255), 2)
        if window:
            cv2.imshow(f"CFRG {os.path.basename(args.model)}", picture)
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                break
        elif args.output != "none":
            if writer is None:
                writer = cv2.VideoWriter(args.output, cv2.VideoWriter_fourcc(*("MJPG" if args.output.endswith(".avi")
                                                                                else "mp4v")),
                                         30, (picture.shape[1], picture.shape[0]))
            writer.write(picture)
        print(f"\rframe {rec.frame_id}: {status}", end="", flush=True)
if writer is not None:
    writer.release()
print(f"\n{shown} frames shown; {stream.stats()['fps']:.1f} frames/s end to end")

#!/usr/bin/env python3
"""A production-line inspection loop on `import sdk`: one verdict per part, OK/NG on stdout, a CSV or JSONL log,
crops of the defects, and a reject signal.

    python examples/line_camera.py --model model.onnx --source SOURCE [--log verdicts.csv] [--crops DIR]
        [--line-scan ROWS [--line-overlap N]] [--trigger none|stdin|gpio:PIN] [--reject-pin PIN]

SOURCE is anything sdk.open_source takes: a camera index (0), /dev/videoN, csi://0, rtsp://..., a video file,
an image folder or a glob. With --line-scan ROWS the source delivers lines (or blocks of lines) of a line
camera, and every ROWS rows make one part (a long strip, inspected in tiles). With --trigger each trigger is
one part: the next frame after it is inspected, the others are skipped (stdin: one line = one trigger, for
tests and PLC bridges; gpio:PIN: a rising edge on a Jetson header pin, through Jetson.GPIO). --reject-pin
raises a Jetson header pin for 100 ms on every NG part. The model may be model.onnx or model.engine.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import cv2

import sdk
from sdk.checks import threshold_arg


def jetson_gpio():
    """Jetson.GPIO, or None with the reason (it exists only on a Jetson with the package installed)."""
    try:
        import Jetson.GPIO as GPIO  # noqa: N814
    except (ImportError, RuntimeError) as exc:
        return None, f"Jetson.GPIO is not available here ({exc}); on a Jetson: sudo pip install Jetson.GPIO"
    return GPIO, None


class Reject:
    """Raises a header pin for each NG part; prints what it would do where there is no GPIO."""

    def __init__(self, pin: int | None):
        self.pin, self.gpio = pin, None
        if pin is not None:
            self.gpio, why = jetson_gpio()
            if self.gpio is None:
                print(f"reject signal off: {why}", file=sys.stderr)
            else:
                self.gpio.setmode(self.gpio.BOARD)
                self.gpio.setup(pin, self.gpio.OUT, initial=self.gpio.LOW)

    def __call__(self) -> None:
        if self.gpio is not None:
            self.gpio.output(self.pin, self.gpio.HIGH)
            time.sleep(0.1)
            self.gpio.output(self.pin, self.gpio.LOW)


def triggered(frames, trigger: str, gpio=None):
    """The frames to inspect: all of them, or the first one after each trigger."""
    if trigger == "none":
        yield from frames
        return
    if trigger == "stdin":
        wait = sys.stdin.readline
    else:
        pin = int(trigger.split(":", 1)[1])
        gpio.setmode(gpio.BOARD)
        gpio.setup(pin, gpio.IN)
        wait = lambda: gpio.wait_for_edge(pin, gpio.RISING) or "edge"  # noqa: E731
    frames = iter(frames)
    while wait():
        frame = next(frames, None)
        if frame is None:
            return
        yield frame


class Log:
    """verdicts.csv or verdicts.jsonl, one line per part, flushed at once."""

    FIELDS = ("part", "time", "verdict", "score", "regions", "source", "error")

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        self.file = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "w", newline="", encoding="utf-8")
            if self.path.suffix == ".csv":
                self.csv = csv.DictWriter(self.file, self.FIELDS)
                self.csv.writeheader()

    def write(self, row: dict) -> None:
        if self.file is None:
            return
        if self.path.suffix == ".csv":
            self.csv.writerow(row)
        else:
            self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def save_crops(folder: Path, part: int, image, regions, margin: int = 16) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for k, region in enumerate(regions):
        x, y, w, h = region.box
        crop = image[max(0, y - margin): y + h + margin, max(0, x - margin): x + w + margin]
        cv2.imwrite(str(folder / f"part{part:06d}_region{k}.png"), crop)
    return len(regions)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model.onnx or model.engine")
    p.add_argument("--source", required=True, help="camera index, /dev/videoN, csi://N, rtsp://..., video, folder")
    p.add_argument("--log", help="verdicts.csv or verdicts.jsonl")
    p.add_argument("--crops", help="folder for crops of the defect regions of NG parts")
    p.add_argument("--line-scan", type=int, metavar="ROWS", help="line camera: ROWS rows make one part")
    p.add_argument("--line-overlap", type=int, default=0, help="rows shared by consecutive parts")
    p.add_argument("--trigger", default="none", help="none, stdin or gpio:PIN (each trigger is one part)")
    p.add_argument("--reject-pin", type=int, help="Jetson header pin (BOARD numbering) raised on NG parts")
    p.add_argument("--threshold", type=threshold_arg, default="default", help="default, good_only, f1 or a score")
    p.add_argument("--min-area", type=int, default=0)
    p.add_argument("--max-parts", type=int, help="stop after N parts")
    args = p.parse_args(argv)
    gpio = None
    if args.trigger.startswith("gpio:"):
        gpio, why = jetson_gpio()
        if gpio is None:
            print(f"line_camera: --trigger {args.trigger}: {why}", file=sys.stderr)
            return 5
    elif args.trigger not in ("none", "stdin"):
        p.error(f"--trigger {args.trigger}: give none, stdin or gpio:PIN")
    det = sdk.Detector(args.model, threshold=args.threshold, min_area=args.min_area,
                       tiling=True if args.line_scan else None)  # a model trained on tiles tiles every frame
    source = sdk.open_source(args.source)
    if args.line_scan:
        source = sdk.LineScanAccumulator(source, frame_height=args.line_scan, overlap=args.line_overlap)
    frames = triggered(source, args.trigger, gpio)
    log, reject = Log(args.log), Reject(args.reject_pin)
    counts = {"OK": 0, "NG": 0, "ERROR": 0}
    try:
        with sdk.Stream(det, frames, max_frames=args.max_parts) as stream:
            for rec in stream:
                part = rec.frame_id
                if rec.status == "ok":
                    r = rec.result
                    status = "NG" if r.is_defect else "OK"
                    crops = save_crops(Path(args.crops), part, rec.image, r.regions) if args.crops and r.is_defect else 0
                    boxes = " ".join(f"[{x},{y} {w}x{h}]" for x, y, w, h in (g.box for g in r.regions[:3]))
                    print(f"part {part:6d}  {status}  score {r.score:8.3f}  regions {len(r.regions)}"
                          + (f" {boxes}" if boxes else "") + (f"  crops {crops}" if crops else ""), flush=True)
                    if r.is_defect:
                        reject()
                    row = {"verdict": status, "score": round(r.score, 4), "regions": len(r.regions), "error": ""}
                else:
                    status = "ERROR"
                    print(f"part {part:6d}  ERROR  {rec.error}", flush=True)
                    row = {"verdict": status, "score": "", "regions": "", "error": rec.error}
                counts[status] += 1
                log.write({"part": part, "time": round(time.time(), 3), "source": args.source, **row})
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        log.close()
    print(f"{sum(counts.values())} parts: {counts['OK']} OK, {counts['NG']} NG, {counts['ERROR']} errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Line-camera input from real parts, for trying line_camera.py --line-scan: the test images of a set, one part after
another, delivered as blocks of rows (the frames a line camera gives), with what each part holds.

    python examples/make_line_strips.py --data ../shared/data --category ball_screw --good 4 --defect 2 --out lines
    python examples/line_camera.py --model model.onnx --source lines --line-scan 460

Writes OUT/000000.png, ... (blocks of --rows rows, lossless, in order: a folder is a source sdk.open_source reads)
and OUT/truth.csv: part, image, kind and, for a defect, the box (x, y, w, h) of its ground-truth mask. The parts are
--good good test images and --defect defect test images, each spread evenly over the split in name order, a defect
after every few good parts; all must share one size (a line camera's width is fixed, and each part is one image's
rows).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sdk.data import AnomalyDataset  # noqa: E402
from sdk.evaluate import spread_indices  # noqa: E402


def part_order(good: list[int], defect: list[int]) -> list[int]:
    """The good and defect images interleaved: each defect after an equal share of the good ones."""
    order, g = [], iter(good)
    share = len(good) // (len(defect) + 1)
    for d in defect:
        order += [next(g) for _ in range(share)] + [d]
    return order + list(g)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--good", type=int, default=4)
    p.add_argument("--defect", type=int, default=2)
    p.add_argument("--rows", type=int, default=40, help="rows per block (one frame of the line camera)")
    p.add_argument("--out", required=True)
    ns = p.parse_args(argv)
    test = AnomalyDataset(ns.data, ns.category, "test")
    good = [i for i in range(len(test)) if not test[i].label]
    defect = [i for i in range(len(test)) if test[i].label]
    good, defect = ([kind[k] for k in spread_indices(len(kind), n)] for kind, n in ((good, ns.good), (defect, ns.defect)))
    order = part_order(good, defect)
    images = [test.load_image(i, colour="bgr") for i in order]
    if len({im.shape for im in images}) != 1:
        sys.exit(f"the parts' images differ in size ({sorted({im.shape[:2] for im in images})}): a line camera's "
                 f"width is fixed; choose a set whose images share one size")
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = np.concatenate(images)
    for k, y in enumerate(range(0, len(rows), ns.rows)):
        cv2.imwrite(str(out / f"{k:06d}.png"), rows[y:y + ns.rows])
    with open(out / "truth.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["part", "image", "kind", "box"])
        for part, i in enumerate(order):
            box = ""
            if test[i].label:
                ys, xs = np.nonzero(test.load_mask(i))
                box = f"{xs.min()},{ys.min()} {xs.max() - xs.min() + 1}x{ys.max() - ys.min() + 1}"
            writer.writerow([part, Path(test[i].path).name, test[i].defect_type, box])
    print(f"wrote {k + 1} blocks of {ns.rows} rows ({len(order)} parts of {images[0].shape[0]} rows, "
          f"{images[0].shape[1]} wide) and truth.csv to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

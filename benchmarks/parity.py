"""PyTorch checkpoint vs its exported ONNX graph (ONNX Runtime) on real test images.

    python benchmarks/parity.py --checkpoint runs/NAME/model.pt --onnx runs/NAME/model.onnx \\
        --data ../shared/data --category NAME [--limit 100]

Prints the largest map difference relative to the map's peak, the largest score difference
(absolute and relative to the score),
and, when the metrics JSONs of both are given (--torch-json, --onnx-json), each metric to 3 decimals.
"""
import argparse
import json

import numpy as np

from export.checkpoint import load_model
from export.predictor import torch_predictor
from sdk.data import AnomalyDataset
from sdk.detector import Detector
from sdk.evaluate import predict_dataset


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--category", required=True)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--torch-json")
    ap.add_argument("--onnx-json")
    ns = ap.parse_args()
    model = load_model(ns.checkpoint)
    det = Detector(ns.onnx)
    ds = AnomalyDataset(ns.data, ns.category, "test")
    a = predict_dataset(torch_predictor(model), ds, det.size, progress=False, limit=ns.limit)
    b = predict_dataset(det.predictor(), ds, det.size, progress=False, limit=ns.limit)
    rel = max(float(np.abs(x - y).max() / np.abs(x).max()) for x, y in zip(a.maps, b.maps))
    print(f"{ns.category}: {len(a.maps)} test images, max |map diff| / map peak {rel:.2e}, "
          f"max |score diff| {np.abs(a.scores - b.scores).max():.2e} "
          f"(relative to the score: {(np.abs(a.scores - b.scores) / np.abs(a.scores).clip(1e-12)).max():.2e})")
    if ns.torch_json and ns.onnx_json:
        ta, tb = json.load(open(ns.torch_json)), json.load(open(ns.onnx_json))
        for k in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap"):
            print(f"  {k:<12} pytorch {ta[k]:.3f}  onnxruntime {tb[k]:.3f}  equal to 3 decimals: "
                  f"{round(ta[k], 3) == round(tb[k], 3)}")


if __name__ == "__main__":
    main()

"""Research: where a trained model's AUPRO is lost. For one run's test split, at pixel false-positive rates of
1, 5, 10 and 30 % (thresholds on the good pixels of every test image, as AUPRO's), it prints how much of each
defect region the map covers, by region size in frame pixels, and where the false positives lie: on good
images, within a few pixels of a defect (the map's halo around it), or near the frame's border.

    python benchmarks/region_coverage.py --run runs/quality/fast30/paper_flr01 [--data ../shared/data]

The peer's maps get the same table: benchmarks/peer_anomalib.py --coverage.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sdk.data import AnomalyDataset  # noqa: E402
from sdk.evaluate import frame_pairs, predict_dataset  # noqa: E402

FPRS = (0.01, 0.05, 0.1, 0.3)
SIZE_BINS = (0, 25, 100, 400, 1600, np.inf)  # region area in frame pixels


def coverage_report(masks: list[np.ndarray], maps: list[np.ndarray], labels: np.ndarray, halo: int = 5,
                    border: int = 8) -> str:
    """The table described in the module docstring, as text."""
    negatives = np.concatenate([m[k == 0] for m, k in zip(maps, masks)])
    labelled = [cv2.connectedComponents((k > 0).astype(np.uint8))[1] for k in masks]  # 0: no defect

    def per_region(values: list[np.ndarray]) -> np.ndarray:  # each frame's sums over its regions, concatenated
        return np.concatenate([np.bincount(lab.ravel(), weights=v.ravel())[1:] for lab, v in zip(labelled, values)])

    areas = per_region([np.ones(lab.shape) for lab in labelled])
    in_bin = [(areas >= a) & (areas < b) for a, b in zip(SIZE_BINS[:-1], SIZE_BINS[1:])]
    kernel = np.ones((2 * halo + 1, 2 * halo + 1), np.uint8)
    near = [cv2.dilate((k > 0).astype(np.uint8), kernel) > 0 for k in masks]
    lines = [f"{len(areas)} defect regions; area bins (frame pixels): "
             + ", ".join(f"[{a:g}, {b:g}) {int(sel.sum())}"
                         for a, b, sel in zip(SIZE_BINS[:-1], SIZE_BINS[1:], in_bin)),
             "", "| FPR | mean region coverage | by area bin | false positives: good images / within "
             f"{halo} px of a defect / within {border} px of the border |", "| --- | --- | --- | --- |"]
    for fpr in FPRS:
        threshold = np.quantile(negatives, 1 - fpr)
        covered = per_region([m > threshold for m in maps]) / areas
        bins = [f"{covered[sel].mean():.2f}" if sel.any() else "-" for sel in in_bin]
        fp = [(m > threshold) & (k == 0) for m, k in zip(maps, masks)]
        total = max(sum(int(f.sum()) for f in fp), 1)
        on_good = sum(int(f.sum()) for f, label in zip(fp, labels) if label == 0) / total
        by_defect = sum(int((f & n).sum()) for f, n in zip(fp, near)) / total
        edge = sum(int(f.sum() - f[border:f.shape[0] - border, border:f.shape[1] - border].sum()) for f in fp) / total
        lines.append(f"| {100 * fpr:g} % | {covered.mean():.3f} | {' / '.join(bins)} | "
                     f"{on_good:.2f} / {by_defect:.2f} / {edge:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a training run folder (model.pt, config.json)")
    p.add_argument("--data", help="the data root, if it moved since training")
    args = p.parse_args()
    from sdk.run_record import RunRecord  # the training stack only here: coverage_report serves the peer's venv too
    from export.checkpoint import load_model
    from export.predictor import torch_predictor

    run = Path(args.run)
    record = RunRecord.read(run, args.data)
    model = load_model(run / "model.pt")
    test = AnomalyDataset(record.data, record.category, "test")
    preds = predict_dataset(torch_predictor(model), test, model.config.image_size, progress=False)
    masks, maps = frame_pairs(preds, test)
    print(f"{record.category}: {len(masks)} test images, frames {masks[0].shape[1]}x{masks[0].shape[0]}, "
          f"model input {model.config.image_size[1]}x{model.config.image_size[0]}")
    print(coverage_report(masks, maps, preds.labels))


if __name__ == "__main__":
    main()

"""Time sdk.metrics.evaluate_all on synthetic 1024x1024 masks/maps; compare with scikit-learn.

    python benchmarks/bench_metrics.py [--images 200] [--size 1024] [--sklearn-images 12]

evaluate_all runs on all --images. scikit-learn's roc_auc_score sorts every pixel (about
0.5 us per pixel here), so it runs on the first --sklearn-images only, and our pixel AUROC is
timed on exactly those pixels for the ratio. Whole run well under a minute on 2 cores.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sdk.metrics import accumulate_pixels, evaluate_all  # noqa: E402


def synthetic(n_images: int, size: int, seed: int = 0):
    """Half the images defective (1-3 discs); maps = smooth bump on the defects + noise."""
    rng = np.random.default_rng(seed)
    masks, maps, labels = [], [], []
    for i in range(n_images):
        mask = np.zeros((size, size), np.uint8)
        if i % 2 == 0:
            for _ in range(rng.integers(1, 4)):
                center = (int(rng.integers(0, size)), int(rng.integers(0, size)))
                cv2.circle(mask, center, int(rng.integers(size // 100 + 1, size // 12)), 255, -1)
        amap = rng.standard_normal((size, size), dtype=np.float32)
        amap += cv2.blur(mask, (15, 15)).astype(np.float32) * np.float32(2.0 / 255)
        masks.append(mask)
        maps.append(amap)
        labels.append(int(i % 2 == 0))
    scores = [float(m.max()) for m in maps]
    return labels, scores, masks, maps


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--sklearn-images", type=int, default=12)
    args = parser.parse_args()

    labels, scores, masks, maps = synthetic(args.images, args.size)
    n_pixels = args.images * args.size**2
    result, seconds = timed(evaluate_all, labels, scores, masks, maps)
    print(f"evaluate_all: {args.images} images of {args.size}x{args.size} ({n_pixels / 1e6:.0f} Mpx) "
          f"in {seconds:.2f} s ({seconds / args.images * 1e3:.1f} ms/image)")
    print("  " + ", ".join(f"{k}={v:.4f}" for k, v in result.items()))

    try:
        from sklearn.metrics import roc_auc_score
    except ImportError:
        print("scikit-learn not installed: no comparison")
        return
    k = min(args.sklearn_images, args.images)
    sub_masks, sub_maps = masks[:k], maps[:k]
    acc, ours_s = timed(accumulate_pixels, sub_masks, sub_maps)
    ours = acc.compute()["pixel_auroc"]
    y_true = np.concatenate([m.ravel() > 0 for m in sub_masks])
    y_score = np.concatenate([m.ravel() for m in sub_maps])
    reference, sk_s = timed(roc_auc_score, y_true, y_score)
    print(f"pixel AUROC on the first {k} images ({y_true.size / 1e6:.1f} Mpx): ours {ours_s:.2f} s "
          f"(all three pixel metrics), sklearn roc_auc_score {sk_s:.2f} s -> {sk_s / ours_s:.0f}x faster")
    print(f"  |ours - sklearn| = {abs(ours - reference):.2e} (bound {acc.error_bounds()['pixel_auroc']:.1e})")


if __name__ == "__main__":
    main()

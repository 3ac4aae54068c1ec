"""Thresholds and score normalisation for an exported model, computed with the exported graph itself."""
from __future__ import annotations

import numpy as np

from sdk import metrics
from sdk.model_info import ScoreNormalisation, Threshold


def good_only_threshold(good_scores: np.ndarray, target_frr: float) -> dict:
    """Image threshold that rejects about target_frr of good parts (quantile of held-back good scores)."""
    good_scores = np.asarray(good_scores, dtype=np.float64)
    if good_scores.size == 0:
        raise ValueError("no good images to measure the thresholds on: keep --holdout > 0 at training or pass "
                         "--good-dir")
    value = float(np.quantile(good_scores, 1.0 - target_frr, method="higher"))
    return {"value": value, "target_frr": target_frr, "n_images": int(good_scores.size),
            "observed_frr": float(np.mean(good_scores >= value))}


def f1_thresholds(labels, scores, masks, maps) -> dict:
    """F1-optimal image threshold and pixel threshold from images with defects."""
    img_thr, img_f1 = metrics.f1_optimal_threshold(labels, scores)
    pix_thr, pix_f1 = pixel_f1_threshold(masks, maps)
    return {"image": {"value": float(img_thr), "f1": float(img_f1), "n_images": int(len(labels))},
            "pixel": {"value": float(pix_thr), "f1": float(pix_f1)}}


def pixel_f1_threshold(masks, maps, n_bins: int = 4096) -> tuple[float, float]:
    """F1-optimal pixel threshold from the score histograms of sdk.metrics (no sort of all pixels).

    Pixels with score >= the returned threshold (a bin's lower edge) are predicted defective.
    """
    acc = metrics.accumulate_pixels(masks, maps, n_bins=n_bins)
    tp = np.cumsum(acc.defect_hist[::-1])[::-1]  # pixels in bin i or above
    fp = np.cumsum(acc.normal_hist[::-1])[::-1]
    total_pos = int(tp[0])
    if total_pos == 0:
        return float("nan"), float("nan")
    f1 = 2 * tp / np.maximum(tp + fp + total_pos, 1)
    i = int(np.argmax(f1))
    return float(acc.lo + i * (acc.hi - acc.lo) / acc.n_bins), float(f1[i])


def score_normalisation(good_scores: np.ndarray, threshold: float) -> ScoreNormalisation:
    """normalised = (score - good_median) / (threshold - good_median): 0 typical good, 1 at the threshold."""
    median = float(np.median(good_scores))
    scale = threshold - median
    if not scale > 0:
        scale = max(abs(threshold), 1e-6)
    return ScoreNormalisation(offset=median, scale=float(scale))


def measure_thresholds(predict, size, good_files, target_frr, defect_set, split, progress, plan=None):
    """The good_only thresholds from good images (and the f1 ones from a split with defects), computed with the
    exported graph (in tiles by `plan`, an sdk.tiling.TilePlan, for a model trained on tiles); returns them with
    the good images' scores."""
    from sdk.evaluate import file_scores, frame_pairs, predict_dataset

    # image scores; map maxima (the same unless the score is "combined")
    good_scores, good_peaks = file_scores(predict, size, good_files, plan)
    good = good_only_threshold(np.array(good_scores), target_frr)
    pixel = good_only_threshold(np.array(good_peaks), target_frr)  # about target_frr of good parts show a pixel
    thresholds = {"good_only": Threshold(good["value"], pixel["value"], {
        "target_frr": target_frr, "n_images": good["n_images"], "observed_frr": good["observed_frr"]})}
    if defect_set is not None:
        preds = predict_dataset(predict, defect_set, size, progress=progress, plan=plan)
        masks, maps = frame_pairs(preds, defect_set)
        f1 = f1_thresholds(preds.labels, preds.scores, masks, maps)
        thresholds["f1"] = Threshold(f1["image"]["value"], f1["pixel"]["value"], {
            "image_f1": f1["image"]["f1"], "pixel_f1": f1["pixel"]["f1"], "n_images": f1["image"]["n_images"],
            "split": split})
    return thresholds, good_scores

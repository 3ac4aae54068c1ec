"""Tests of sdk/metrics.py: hand-computed cases, scikit-learn parity, an exact AUPRO reference."""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from sdk import metrics
from sdk.metrics import (
    PixelMetricAccumulator,
    accumulate_pixels,
    aupro,
    evaluate_all,
    f1_optimal_threshold,
    image_auroc,
    pixel_ap,
    pixel_auroc,
)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- references


def reference_aupro(masks, maps, fpr_limit=0.3):
    """Plain and exact: every distinct score is a threshold; regions by scipy.ndimage.label."""
    structure = np.ones((3, 3), int)
    regions, normal_scores = [], []
    for mask, amap in zip(masks, maps):
        labeled, n = ndimage.label(np.asarray(mask) > 0, structure)
        regions += [amap[labeled == k] for k in range(1, n + 1)]
        normal_scores.append(amap[labeled == 0])
    normal_scores = np.sort(np.concatenate(normal_scores))
    thresholds = np.unique(np.concatenate([np.ravel(m) for m in maps]))[::-1]

    def fraction_at_or_above(sorted_scores):
        return 1 - np.searchsorted(sorted_scores, thresholds, side="left") / sorted_scores.size

    fprs = [0.0, *fraction_at_or_above(normal_scores)]
    pros = [0.0, *np.mean([fraction_at_or_above(np.sort(r)) for r in regions], axis=0)]
    # MVTec's trapezoid with the point at fpr_limit interpolated
    area = 0.0
    for i in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[i - 1], fprs[i], pros[i - 1], pros[i]
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < fpr_limit:
                y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
                area += (fpr_limit - x0) * (y0 + y_lim) / 2
            break
    return area / fpr_limit


def flat(masks, maps):
    return (np.concatenate([np.ravel(m) > 0 for m in masks]),
            np.concatenate([np.ravel(a) for a in maps]))


def random_rect_masks(rng, n_images, size_range=(20, 60), defect_every=2):
    """Masks of varying sizes with 0-3 rectangles (touching or not), maps = noise + signal."""
    masks, maps = [], []
    for i in range(n_images):
        h, w = rng.integers(*size_range, size=2)
        mask = np.zeros((h, w), np.uint8)
        if i % defect_every == 0:
            for _ in range(rng.integers(1, 4)):
                y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
                mask[y:y + rng.integers(1, 8), x:x + rng.integers(1, 8)] = 255
        amap = rng.normal(size=(h, w)) + 1.2 * (mask > 0)
        masks.append(mask)
        maps.append(amap.astype(np.float32))
    return masks, maps


# ----------------------------------------------------------------------------- hand-computed


def hand_case():
    """Region A: two diagonal pixels (one region only under 8-connectivity) scored 0.9 and 0.2,
    in a 3x3 image; region B: one pixel scored 0.5 in a 2x3 image. 12 normal pixels: one at
    0.6, eleven at 0.1.
    PRO/FPR by threshold: 0.9 -> PRO (1/2+0)/2 = 1/4, FPR 0; 0.6 -> FPR 1/12; 0.5 -> PRO 3/4;
    0.2 -> PRO 1; 0.1 -> FPR 1. AUPRO(0.3) = (1/12 * 1/4 + (0.3 - 1/12) * 1) / 0.3 = 19/24.
    Pixel AUROC: (12 + 11 + 11) / 36 = 17/18. AP: 1/3 * (1 + 2/3 + 3/4) = 29/36."""
    map1 = np.array([[0.9, 0.1, 0.1], [0.1, 0.2, 0.1], [0.1, 0.1, 0.6]], np.float32)
    mask1 = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], np.uint8)
    map2 = np.array([[0.5, 0.1, 0.1], [0.1, 0.1, 0.1]], np.float32)
    mask2 = np.array([[255, 0, 0], [0, 0, 0]], np.uint8)
    return [mask1, mask2], [map1, map2]


def test_hand_computed_two_regions():
    masks, maps = hand_case()
    assert aupro(masks, maps) == pytest.approx(19 / 24, abs=1e-9)
    assert pixel_auroc(masks, maps) == pytest.approx(17 / 18, abs=1e-9)
    assert pixel_ap(masks, maps) == pytest.approx(29 / 36, abs=1e-9)
    assert aupro(masks, maps) == pytest.approx(reference_aupro(masks, maps), abs=1e-9)


def test_diagonal_pixels_form_one_region():
    # with 4-connectivity region A would split in two and AUPRO would be (1/12*1/3 + 0.3-1/12)/0.3
    masks, maps = hand_case()
    four_connected = (1 / 12 / 3 + 0.3 - 1 / 12) / 0.3
    assert aupro(masks, maps) != pytest.approx(four_connected, abs=1e-3)
    acc = accumulate_pixels(masks, maps)
    assert acc.n_regions == 2


def test_fpr_limit_one_integrates_whole_curve():
    masks, maps = hand_case()
    # full curve: 1/12 * 1/4 + (1 - 1/12) * 1
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(1 / 48 + 11 / 12, abs=1e-9)


def test_image_auroc_and_f1_hand_computed():
    labels, scores = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert image_auroc(labels, scores) == pytest.approx(0.75)
    # thresholds 0.8 -> F1 2/3, 0.4 -> 1/2, 0.35 -> 4/5, 0.1 -> 2/3
    threshold, f1 = f1_optimal_threshold(labels, scores)
    assert threshold == pytest.approx(0.35) and f1 == pytest.approx(0.8)


def test_perfect_and_inverted_detectors():
    rng = np.random.default_rng(1)
    masks, _ = random_rect_masks(rng, 6, defect_every=1)
    perfect = [(m > 0).astype(np.float32) + rng.uniform(0, 0.5, m.shape) for m in masks]
    inverted = [-p for p in perfect]
    labels, good_scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.7, 0.9])
    result = evaluate_all(labels, good_scores, masks[:4], perfect[:4])
    assert result == pytest.approx({"image_auroc": 1.0, "pixel_auroc": 1.0, "aupro": 1.0, "pixel_ap": 1.0})
    assert image_auroc(labels, -good_scores) == 0.0
    assert pixel_auroc(masks, inverted) == pytest.approx(0.0, abs=1e-12)
    assert aupro(masks, inverted) == pytest.approx(0.0, abs=1e-12)
    assert f1_optimal_threshold(labels, good_scores) == (pytest.approx(0.7), 1.0)


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_level_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + labels, 1)  # rounding makes many ties
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    threshold, f1 = f1_optimal_threshold(labels, scores)
    brute = [(2 * np.sum((scores >= t) & (labels == 1))
              / (np.sum(scores >= t) + np.sum(labels == 1)), t) for t in np.unique(scores)]
    assert f1 == pytest.approx(max(brute)[0])
    predicted = scores >= threshold
    assert 2 * np.sum(predicted & (labels == 1)) / (predicted.sum() + labels.sum()) == pytest.approx(f1)


def structured_maps(rng):
    """Blurred blob masks of varying sizes; smooth maps with a peak at the defects, a few hard
    misses, scores quantised to uint8 in one image (many exact ties)."""
    masks, maps = [], []
    for i, (h, w) in enumerate([(64, 96), (80, 80), (50, 120), (96, 64), (72, 72)]):
        mask = np.zeros((h, w), np.uint8)
        if i != 1:
            for _ in range(2):
                cv2.circle(mask, (int(rng.integers(10, w - 10)), int(rng.integers(10, h - 10))),
                           int(rng.integers(2, 8)), 255, -1)
        amap = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), 3) * 3
        amap += cv2.GaussianBlur(rng.normal(size=(h, w)).astype(np.float32), (0, 0), 2)
        if i == 3:
            amap = np.round(amap * 20) / 20  # heavy ties
        masks.append(mask)
        maps.append(amap)
    return masks, maps


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_pixel_metrics_match_sklearn(kind):
    rng = np.random.default_rng(7)
    masks, maps = random_rect_masks(rng, 12) if kind == "random" else structured_maps(rng)
    y, s = flat(masks, maps)
    acc = accumulate_pixels(masks, maps)
    got, bounds = acc.compute(), acc.error_bounds()
    for name, expected in [("pixel_auroc", roc_auc_score(y, s)), ("pixel_ap", average_precision_score(y, s))]:
        assert got[name] == pytest.approx(expected, abs=1e-3)
        assert abs(got[name] - expected) <= bounds[name] + 1e-12, name
        assert bounds[name] < 1e-3
    assert got["aupro"] == pytest.approx(reference_aupro(masks, maps), abs=1e-3)


@pytest.mark.parametrize("fpr_limit", [0.02, 0.3, 1.0])
def test_aupro_matches_exact_reference(fpr_limit):
    rng = np.random.default_rng(3)
    masks, maps = random_rect_masks(rng, 8, size_range=(15, 40), defect_every=1)
    exact = reference_aupro(masks, maps, fpr_limit)
    acc = accumulate_pixels(masks, maps)
    got = acc.compute(fpr_limit)["aupro"]
    assert got == pytest.approx(exact, abs=1e-3)
    assert abs(got - exact) <= acc.error_bounds(fpr_limit)["aupro"] + 1e-12
    # few distinct scores, each in its own bin: binning is then exact
    coarse = [np.round(m * 4) / 4 for m in maps]
    assert aupro(masks, coarse, fpr_limit) == pytest.approx(reference_aupro(masks, coarse, fpr_limit), abs=1e-9)


def test_real_magnetic_tile_masks_match_references(data_root):
    """Real masks (0/255 PNG, different sizes per image) with a crude real detector: the
    deviation of each image from its median-blurred self."""
    real_data = data_root / "magnetic_tile"
    pairs = [(real_data / "test" / kind / f"{p.stem.removesuffix('_mask')}.jpg", p)
             for kind in ("blowhole", "crack", "fray")
             for p in sorted((real_data / "ground_truth" / kind).glob("*_mask.png"))[:2]]
    pairs += [(p, None) for p in sorted((real_data / "test" / "good").glob("*.jpg"))[:2]]
    masks, maps = [], []
    for image_path, mask_path in pairs:
        gray = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE)
        mask = np.zeros_like(gray) if mask_path is None else cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        deviation = cv2.absdiff(gray, cv2.medianBlur(gray, 21)).astype(np.float32)
        masks.append(mask)
        maps.append(cv2.GaussianBlur(deviation, (0, 0), 2))
    assert len({m.shape for m in masks}) > 1  # sizes really differ
    y, s = flat(masks, maps)
    result = evaluate_all([1] * 6 + [0] * 2, [float(m.max()) for m in maps], masks, maps)
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-3)
    assert result["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-3)
    assert result["aupro"] == pytest.approx(reference_aupro(masks, maps), abs=1e-3)


def test_stacked_array_and_mask_formats_agree():
    rng = np.random.default_rng(5)
    masks = np.zeros((4, 32, 40), np.uint8)
    masks[0, 3:9, 5:12] = 255
    masks[2, 20:30, 1:4] = 255
    maps = rng.normal(size=masks.shape).astype(np.float32) + (masks > 0)
    expected = evaluate_all([1, 0, 1, 0], [3, 1, 2, 0], list(masks), list(maps))
    for mask_variant in (masks, masks > 0, (masks > 0).astype(np.int64), masks.astype(np.float32) / 255):
        assert evaluate_all([1, 0, 1, 0], [3, 1, 2, 0], mask_variant, maps) == expected
    assert expected["pixel_auroc"] == pytest.approx(roc_auc_score(*flat(masks, maps)), abs=1e-3)


def test_accumulator_streams_like_function_api():
    rng = np.random.default_rng(11)
    masks, maps = random_rect_masks(rng, 10)
    lo = min(float(m.min()) for m in maps)
    hi = max(float(m.max()) for m in maps)
    acc = PixelMetricAccumulator(score_range=(lo, hi))
    for mask, amap in zip(masks, maps):
        acc.update(mask, amap)
    assert acc.compute() == accumulate_pixels(masks, maps).compute()
    assert acc.n_images == 10 and acc.n_clipped_pixels == 0
    # a one-shot generator needs score_range (no second pass possible)
    with pytest.raises(TypeError, match="score_range"):
        pixel_auroc((m for m in masks), (a for a in maps))
    assert pixel_auroc(iter(masks), iter(maps), score_range=(lo, hi)) == acc.compute()["pixel_auroc"]


def test_narrow_score_range_clips_and_bound_still_holds():
    rng = np.random.default_rng(2)
    masks, maps = random_rect_masks(rng, 10)
    y, s = flat(masks, maps)
    acc = accumulate_pixels(masks, maps, score_range=(-1.0, 1.0))
    assert acc.n_clipped_pixels == np.count_nonzero((s < -1) | (s > 1))
    diff = abs(acc.compute()["pixel_auroc"] - roc_auc_score(y, s))
    assert diff <= acc.error_bounds()["pixel_auroc"] + 1e-12


def test_outlier_stretched_range_is_reported_by_bound():
    # one huge outlier crowds all other pixels into the first bins; the bound must say so
    rng = np.random.default_rng(4)
    masks, maps = random_rect_masks(rng, 6)
    maps[0][0, 0] = 1e6
    y, s = flat(masks, maps)
    acc = accumulate_pixels(masks, maps, n_bins=4096)
    bound = acc.error_bounds()["pixel_auroc"]
    assert abs(acc.compute()["pixel_auroc"] - roc_auc_score(y, s)) <= bound + 1e-12
    assert bound > 0.01


def test_constant_maps_give_chance_auroc():
    masks, _ = hand_case()
    constant = [np.full(m.shape, 0.3, np.float32) for m in masks]
    assert pixel_auroc(masks, constant) == pytest.approx(0.5)
    assert image_auroc([0, 1, 0, 1], [2, 2, 2, 2]) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- empty classes


def test_no_defects_gives_nan_without_crash():
    rng = np.random.default_rng(0)
    masks = [np.zeros((10, 12), np.uint8), np.zeros((7, 9), bool)]
    maps = [rng.random((10, 12)), rng.random((7, 9))]
    result = evaluate_all([0, 0], [0.1, 0.4], masks, maps)
    assert set(result) == {"image_auroc", "pixel_auroc", "aupro", "pixel_ap"}
    assert all(np.isnan(v) for v in result.values())
    assert f1_optimal_threshold([0, 0], [0.1, 0.4]) == pytest.approx((np.nan, np.nan), nan_ok=True)


def test_all_defect_pixels_gives_nan_auroc_but_defined_ap():
    masks = [np.ones((4, 4), np.uint8)]
    maps = [np.arange(16, dtype=np.float32).reshape(4, 4)]
    result = evaluate_all([1], [0.5], masks, maps)
    assert np.isnan(result["image_auroc"]) and np.isnan(result["pixel_auroc"]) and np.isnan(result["aupro"])
    assert result["pixel_ap"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- bad input


def test_shape_mismatch_names_image_and_shapes():
    masks = [np.zeros((8, 8)), np.zeros((16, 8))]
    maps = [np.zeros((8, 8)), np.zeros((8, 16))]
    with pytest.raises(ValueError, match=r"image 1: mask shape \(16, 8\) != anomaly map shape \(8, 16\)"):
        pixel_auroc(masks, maps)
    acc = PixelMetricAccumulator(score_range=(0, 1))
    acc.update(masks[0], maps[0])
    with pytest.raises(ValueError, match=r"image 1: .*\(16, 8\).*\(8, 16\)"):
        acc.update(masks[1], maps[1])


@pytest.mark.parametrize("score_range", [None, (0.0, 1.0)])
def test_nan_in_map_names_image_and_shape(score_range):
    maps = [np.zeros((5, 6), np.float32) for _ in range(3)]
    maps[2][1, 1] = np.nan
    masks = [np.zeros((5, 6), np.uint8)] * 3
    with pytest.raises(ValueError, match=r"image 2: anomaly map of shape \(5, 6\) has 1 non-finite"):
        aupro(masks, maps, score_range=score_range)


def test_other_bad_inputs():
    with pytest.raises(ValueError, match="3 masks but 2 anomaly maps"):
        pixel_ap([np.zeros((2, 2))] * 3, [np.zeros((2, 2))] * 2)
    with pytest.raises(ValueError, match="must be 2-D"):
        pixel_auroc([np.zeros((2, 2, 3))], [np.zeros((2, 2, 3))])
    with pytest.raises(ValueError, match=r"image 0: anomaly map is empty \(shape \(0, 5\)\)"):
        pixel_auroc([np.zeros((0, 5))], [np.zeros((0, 5))])
    with pytest.raises(ValueError, match="labels must be 0/1"):
        image_auroc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="one entry per image"):
        image_auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="non-finite at image indices \\[1\\]"):
        f1_optimal_threshold([0, 1], [0.1, np.inf])
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro([np.zeros((2, 2))], [np.zeros((2, 2))], fpr_limit=0)
    with pytest.raises(ValueError, match="2 image labels but 1 masks"):
        evaluate_all([0, 1], [0.1, 0.2], [np.zeros((2, 2))], [np.zeros((2, 2))])


def test_module_imports_without_scipy_or_sklearn():
    code = "import sys, sdk.metrics; bad = {'scipy', 'sklearn', 'torch'} & set(sys.modules); print(bad); assert not bad"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)
    assert metrics.DEFAULT_N_BINS >= 4096

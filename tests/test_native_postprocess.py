"""sdk.postprocess: C++ extension vs the NumPy/OpenCV twin; hand-computable regions; overlay."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from sdk import postprocess as post
from sdk.native import require_native
from tests.native_helpers import assert_refused, run

_native = require_native()  # fails the module with the build command when it is missing


def assert_same(*args, **kwargs):
    """Runs postprocess on both implementations; maps within 1e-5 (bit-equal in practice), masks and
    regions identical. Returns the native result."""
    twin = run("twin", lambda: post.postprocess(*args, **kwargs))
    native = run("native", lambda: post.postprocess(*args, **kwargs))
    np.testing.assert_allclose(native[0], twin[0], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(native[1], twin[1])
    assert native[2] == twin[2]
    return native


def smooth_map(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    noise = rng.random((h + 8, w + 8), dtype=np.float32)
    return cv2.GaussianBlur(noise, (0, 0), 1.5)[4 : 4 + h, 4 : 4 + w].copy()


def test_twin_resize_is_opencv_bilinear_bit_for_bit():
    rng = np.random.default_rng(0)
    use_ipp = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)  # OpenCV's own code; its IPP backend rounds differently (~1e-5)
    try:
        for sh, sw, dh, dw in [(256, 256, 1080, 1920), (13, 17, 40, 41), (64, 64, 20, 25), (1, 7, 5, 3), (9, 1, 2, 4)]:
            m = rng.random((sh, sw), dtype=np.float32)
            expected = cv2.resize(m, (dw, dh), interpolation=cv2.INTER_LINEAR)
            np.testing.assert_array_equal(post.resize_map(m, dw, dh), expected)
    finally:
        cv2.ipp.setUseIPP(use_ipp)


def test_one_map_to_frame_resize():
    """map_to_frame (native and twin) is the full map postprocess writes: evaluation, the sinks and the
    Detector resize alike."""
    rng = np.random.default_rng(7)
    for sh, sw, dh, dw in [(256, 256, 1080, 1920), (13, 17, 40, 41), (64, 64, 20, 25), (1, 7, 5, 3)]:
        m = random_view(rng, sh, sw)
        full = run("native", lambda: post.postprocess(m, (dh, dw), 0.5))[0]
        for implementation in ("native", "twin"):
            np.testing.assert_array_equal(run(implementation, lambda: post.map_to_frame(m, (dh, dw), threads=2)), full)
    assert post.map_to_frame(m, m.shape) is m


def test_hand_computable_regions():
    m = np.zeros((6, 8), np.float32)
    m[1, 1], m[2, 2] = 0.9, 0.7  # diagonal neighbours: one 8-connected region
    m[0, 6] = 0.6  # one pixel: dropped by min_area=2
    m[4, 3:7] = [0.5, 0.6, 0.7, 0.8]  # 0.5 == threshold counts (score >= threshold)
    full, mask, regions = assert_same(m, (6, 8), threshold=0.5, min_area=2)
    f = np.float32
    mean_a = float(f((float(f(0.9)) + float(f(0.7))) / 2))
    mean_b = float(f(sum(float(f(v)) for v in (0.5, 0.6, 0.7, 0.8)) / 4))
    assert regions == [
        post.Region((1, 1, 2, 2), 2, float(f(0.9)), mean_a),
        post.Region((3, 4, 4, 1), 4, float(f(0.8)), mean_b),
    ]
    expected_mask = np.zeros((6, 8), np.uint8)
    expected_mask[1, 1] = expected_mask[2, 2] = 255
    expected_mask[4, 3:7] = 255
    np.testing.assert_array_equal(mask, expected_mask)
    np.testing.assert_array_equal(full, m)  # same size: the map itself


def test_components_crossing_thread_bands():
    """A comb joined only on its last row, split across 8 bands by threads=2: one region."""
    m = np.zeros((301, 40), np.float32)
    m[:, [5, 15, 25]] = 1.0
    m[300, 5:26] = 1.0
    m[10:290, 35] = 2.0
    for threads in (1, 2, 3):
        _, _, regions = assert_same(m, (301, 40), threshold=0.5, threads=threads)
        assert [r.box for r in regions] == [(5, 0, 21, 301), (35, 10, 1, 280)]
        assert [r.area for r in regions] == [3 * 301 + 21 - 3, 280]


def random_view(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = smooth_map(rng, 2 * h + 1, 2 * w + 1)
    kind = rng.choice(["contiguous", "negative", "steps", "transposed"])
    if kind == "negative":
        return base[::-1, ::-1][:h, :w]
    if kind == "steps":
        return base[::2, ::2][:h, :w]
    if kind == "transposed":
        return base.T[:w, :h].T
    return np.ascontiguousarray(base[:h, :w])


@pytest.mark.parametrize("seed", range(6))
def test_random_maps_identical_to_twin(seed):
    rng = np.random.default_rng(seed)
    for _ in range(12):
        mh, mw = (int(v) for v in rng.integers(1, 48, 2))
        fh, fw = (int(v) for v in rng.integers(1, 260, 2))
        if rng.random() < 0.2:
            fh = 1
        if rng.random() < 0.2:
            fw = 1
        m = random_view(rng, mh, mw)
        kwargs = dict(min_area=int(rng.integers(0, 30)), threads=int(rng.integers(1, 3)),
                      mask_value=int(rng.choice([1, 255])))
        threshold = float(np.quantile(m, rng.uniform(0.3, 0.95)))  # often an exact map value
        assert_same(m, (fh, fw, 3), threshold, **kwargs)


def test_real_defect_masks(data_root):
    """Maps shaped like the real defects (ground-truth masks, blurred, at model size) back to the
    real frame sizes: identical results, and every found region overlaps the defect."""
    rng = np.random.default_rng(4)
    pairs = []
    for category, defect in (("ball_screw", "pitting"), ("magnetic_tile", "blowhole"), ("magnetic_tile", "fray")):
        masks = sorted((data_root / category / "ground_truth" / defect).glob("*_mask.png"))[:2]
        pairs += [(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), p) for p in masks]
    for gt, path in pairs:
        small = cv2.resize(gt.astype(np.float32) / 255.0, (256, 256), interpolation=cv2.INTER_AREA)
        amap = cv2.GaussianBlur(small, (0, 0), 2.0) + 0.05 * smooth_map(rng, 256, 256)
        full, mask, regions = assert_same(amap, gt.shape, threshold=0.25, min_area=10, threads=2)
        assert full.shape == gt.shape and regions, path.name
        for r in regions:
            x, y, w, h = r.box
            assert (gt[y : y + h, x : x + w] > 0).any(), (path.name, r)


def test_output_buffers_are_filled_in_place():
    m = smooth_map(np.random.default_rng(5), 32, 32)
    out_map = np.full((100, 120), -1, np.float32)
    out_mask = np.full((100, 120), 7, np.uint8)
    for implementation in ("twin", "native"):
        full, mask, _ = run(implementation,
                            lambda: post.postprocess(m, (100, 120), 0.5, out_map=out_map, out_mask=out_mask))
        assert full is out_map and mask is out_mask
        assert (out_map != -1).all() and np.isin(out_mask, (0, 255)).all()


BAD_CALLS = [
    (dict(anomaly_map=np.zeros((8, 8), np.float64)), ["float32", "float64 array of shape (8, 8)"]),
    (dict(anomaly_map=np.zeros((1, 8, 8), np.float32)), ["(H, W)", "float32 array of shape (1, 8, 8)"]),
    (dict(frame_shape=(0, 5)), ["frame_shape must be positive"]),
    (dict(out_map=np.zeros((10, 20), np.float64)),
     ["out_map must be a writeable float32 array of shape (10, 20)", "got float64"]),
    (dict(out_mask=np.zeros((20, 10), np.uint8)), ["out_mask", "(10, 20)", "uint8 array of shape (20, 10)"]),
    (dict(min_area=-1), ["min_area must be", "-1"]),
    (dict(mask_value=0), ["mask_value must be", "0"]),
]


@pytest.mark.parametrize("implementation", ["twin", "native"])
@pytest.mark.parametrize("bad,words", BAD_CALLS)
def test_bad_arguments_say_what_was_expected_and_what_came(implementation, bad, words):
    kwargs = dict(anomaly_map=np.zeros((8, 8), np.float32), frame_shape=(10, 20), threshold=0.5)
    kwargs.update(bad)
    assert_refused(implementation, lambda: post.postprocess(**kwargs), words)


def test_extension_checks_its_own_arguments():
    m, fm, mk = np.zeros((8, 8), np.float32), np.zeros((10, 20), np.float32), np.zeros((10, 20), np.uint8)
    expected = r"out_mask must be a uint8 array of shape \(10, 20\); got uint8 array of shape \(20, 10\)"
    with pytest.raises(ValueError, match=expected):
        _native.postprocess(m, 10, 20, 0.5, 0, fm, mk.T)
    with pytest.raises(ValueError, match=r"anomaly_map must be a numpy array .* got list"):
        _native.postprocess([[0.0]], 10, 20, 0.5, 0, fm, mk)
    read_only = np.zeros((10, 20), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="out_map must be writeable"):
        _native.resize_map(m, read_only)


@pytest.mark.parametrize("gray", [False, True])
@pytest.mark.parametrize("colour_order", ["bgr", "rgb"])
def test_overlay_identical_and_draws_contours(gray, colour_order):
    rng = np.random.default_rng(6)
    frame = rng.integers(0, 256, (60, 80) if gray else (60, 80, 3), dtype=np.uint8)
    amap = smooth_map(rng, 60, 80) * 3 - 1
    mask = np.zeros((60, 80), np.uint8)
    mask[10:30, 20:50] = 255
    images = [
        run(implementation,
            lambda: post.blend_heatmap(frame, amap, mask, alpha=0.4, colour_order=colour_order, threads=2))
        for implementation in ("twin", "native")
    ]
    np.testing.assert_array_equal(images[0], images[1])
    red = (0, 0, 255) if colour_order == "bgr" else (255, 0, 0)
    img = images[1]
    assert tuple(img[10, 30]) == red and tuple(img[29, 49]) == red and tuple(img[20, 20]) == red
    assert tuple(img[20, 30]) != red  # interior: heat map blend
    blank = run("native", lambda: post.blend_heatmap(frame, amap, mask, alpha=0.0))
    inside = mask == 0
    expected = frame if not gray else np.repeat(frame[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(blank[inside], expected[inside])  # alpha 0: the frame itself

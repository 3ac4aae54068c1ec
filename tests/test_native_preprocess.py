"""sdk.preprocess: C++ extension vs the NumPy/OpenCV twin vs plain cv2, on real and random frames."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from sdk import preprocess as pre
from sdk.native import require_native
from tests.native_helpers import assert_refused, run

_native = require_native()  # fails the module with the build command when it is missing


def both(make_out, **kwargs):
    """(twin out, native out) for the same call."""
    results = []
    for implementation in ("twin", "native"):
        out = make_out()
        run(implementation, lambda: pre.preprocess(out=out, **kwargs))
        results.append(out)
    return tuple(results)


def cv2_composite(frame, size, colour_in, colour_out):
    """What preprocess promises to equal: cv2.resize (area for >= 2x shrink on both axes) + cvtColor."""
    h, w = size
    big_down = frame.shape[0] >= 2 * h and frame.shape[1] >= 2 * w
    img = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA if big_down else cv2.INTER_LINEAR)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if colour_out != "gray" else img[:, :, None]
    if colour_out == "gray":
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if colour_in == "bgr" else cv2.COLOR_RGB2GRAY)[:, :, None]
    return img if colour_in == colour_out else img[:, :, ::-1]


def real_frames(data_root: Path):
    colour = sorted((data_root / "ball_screw" / "test" / "pitting").glob("*.jpg"))[:2]
    gray = sorted((data_root / "magnetic_tile" / "test" / "blowhole").glob("*.jpg"))[:2]
    frames = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in colour]
    frames += [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in gray]
    assert all(f is not None for f in frames)
    return frames


@pytest.mark.parametrize("size", [(256, 256), (224, 320), (97, 61)])
@pytest.mark.parametrize("colour_out", ["rgb", "bgr", "gray"])
def test_real_images_equal_opencv_composite(data_root, size, colour_out):
    channels = 1 if colour_out == "gray" else 3
    for frame in real_frames(data_root):
        expected = cv2_composite(frame, size, "bgr", colour_out)
        a, b = both(lambda: pre.make_batch(1, size, channels), frame=frame, colour_out=colour_out)
        np.testing.assert_array_equal(a[0], expected)
        np.testing.assert_array_equal(b[0], expected)


def random_case(rng: np.random.Generator):
    """A frame view with awkward geometry and strides, and preprocess arguments for it."""
    h, w = (int(v) for v in rng.integers(1, 90, 2))
    if rng.random() < 0.15:
        h = 1
    if rng.random() < 0.15:
        w = 1
    kind = rng.choice(["bgr", "gray2d", "gray3d"])
    base = rng.integers(0, 256, (2 * h + 3, 3 * w + 2, 3 if kind == "bgr" else 1), dtype=np.uint8)
    view = rng.choice(["contiguous", "negative", "steps", "transposed", "channels_reversed"])
    if view == "negative":
        frame = base[::-1, ::-1][:h, :w]
    elif view == "steps":
        frame = base[::2, ::3][:h, :w]
    elif view == "transposed":
        frame = base.transpose(1, 0, 2)[:w, :h].transpose(1, 0, 2)
    elif view == "channels_reversed":
        frame = base[:h, :w, ::-1]
    else:
        frame = np.ascontiguousarray(base[:h, :w])
    if kind == "gray2d":
        frame = frame[:, :, 0]
    out_h, out_w = (int(v) for v in rng.integers(1, 70, 2))
    if rng.random() < 0.25 and h >= 2 and w >= 2:  # integer area factors (OpenCV's fast kernels)
        out_h, out_w = h // int(rng.integers(1, 3)), w // int(rng.integers(1, 3))
    kwargs = dict(
        frame=frame,
        colour_in=str(rng.choice(["bgr", "rgb"])),
        colour_out=str(rng.choice(["rgb", "bgr", "gray"])),
        threads=int(rng.integers(1, 3)),
    )
    if rng.random() < 0.3:
        kwargs["interpolation"] = "linear"
    return kwargs, (max(out_h, 1), max(out_w, 1))


@pytest.mark.parametrize("seed", range(8))
def test_random_views_identical_to_twin(seed):
    rng = np.random.default_rng(seed)
    for _ in range(25):
        kwargs, size = random_case(rng)
        channels = 1 if kwargs["colour_out"] == "gray" else 3
        def make_out():
            out = pre.make_batch(2, size, channels)
            out[...] = 7
            return out

        a, b = both(make_out, index=1, **kwargs)
        np.testing.assert_array_equal(a, b, err_msg=str({k: v for k, v in kwargs.items() if k != "frame"}))
        assert (a[0] == 7).all()  # only the indexed slot is written


def test_interpolation_rule_follows_training():
    assert pre.choose_interpolation(1920, 1080, 256, 256) == "area"
    assert pre.choose_interpolation(1130, 460, 256, 256) == "linear"  # 1.8x on one axis
    assert pre.choose_interpolation(100, 100, 256, 256) == "linear"


BAD_CALLS = [
    (dict(frame=np.zeros((10, 10, 3), np.float32)), ["uint8", "float32 array of shape (10, 10, 3)"]),
    (dict(frame=np.zeros((10, 10, 4), np.uint8)), ["(H, W, 3)", "uint8 array of shape (10, 10, 4)"]),
    (dict(frame=[[1, 2]]), ["numpy", "got list"]),
    (dict(out=np.zeros((1, 8, 8, 3), np.float32)), ["uint8 (N, H, W, C)", "float32 array of shape (1, 8, 8, 3)"]),
    (dict(out=np.zeros((8, 8, 3), np.uint8)), ["(N, H, W, C)", "uint8 array of shape (8, 8, 3)"]),
    (dict(index=2), ["index must be in [0, 1)", "got 2"]),
    (dict(colour_out="gray"), ["needs 1 channel", "uint8 array of shape (1, 8, 8, 3)"]),
    (dict(colour_in="yuv"), ["colour_in must be one of", "'yuv'"]),
    (dict(interpolation="area", size=(8, 8), out=np.zeros((1, 16, 16, 3), np.uint8)), ["size (8, 8)"]),
    (dict(interpolation="area", out=np.zeros((1, 16, 16, 3), np.uint8)), ["only shrinks", "10x10", "16x16"]),
    (dict(interpolation="cubic"), ["interpolation must be one of", "'cubic'"]),
    (dict(threads=-1), ["threads must be", "-1"]),
]


@pytest.mark.parametrize("implementation", ["twin", "native"])
@pytest.mark.parametrize("bad,words", BAD_CALLS)
def test_bad_arguments_say_what_was_expected_and_what_came(implementation, bad, words):
    kwargs = dict(frame=np.zeros((10, 10, 3), np.uint8), out=np.zeros((1, 8, 8, 3), np.uint8))
    kwargs.update(bad)
    assert_refused(implementation, lambda: pre.preprocess(**kwargs), words)


def test_extension_checks_its_own_arguments():
    frame, out = np.zeros((10, 10, 3), np.uint8), np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"frame must be a uint8 .* got float64 array of shape \(10, 10\)"):
        _native.preprocess(np.zeros((10, 10)), out)
    with pytest.raises(ValueError, match=r"out must be uint8 \(N, H, W, C\).* got float32 array"):
        _native.preprocess(frame, out.astype(np.float32))
    with pytest.raises(ValueError, match="only shrinks: the frame is 6x6 and the target 8x8"):
        _native.preprocess(frame[:6, :6], out, interpolation="area")
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        _native.preprocess(frame, out)

"""sdk.preprocess: C++ extension vs the NumPy/OpenCV twin vs plain cv2, on real and random frames."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from sdk import preprocess as pre
from sdk.native import require_native, use_backend

_native = require_native()  # fails the module with the build command when it is missing


def run(backend: str, fn):
    with use_backend(backend):
        return fn()


def both(make_out, **kwargs):
    """(twin out, native out, twin rect, native rect) for the same call."""
    results = []
    for backend in ("twin", "native"):
        out = make_out()
        rect = run(backend, lambda: pre.preprocess(out=out, **kwargs))
        results.append((out, rect))
    (a, ra), (b, rb) = results
    return a, b, ra, rb


def cv2_composite(frame, size, color_in, color_out):
    """What preprocess promises to equal: cv2.resize (area for >= 2x shrink on both axes) + cvtColor."""
    h, w = size
    big_down = frame.shape[0] >= 2 * h and frame.shape[1] >= 2 * w
    img = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA if big_down else cv2.INTER_LINEAR)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if color_out != "gray" else img[:, :, None]
    if color_out == "gray":
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if color_in == "bgr" else cv2.COLOR_RGB2GRAY)[:, :, None]
    return img if color_in == color_out else img[:, :, ::-1]


def real_frames(data_root: Path):
    colour = sorted((data_root / "ball_screw" / "test" / "pitting").glob("*.jpg"))[:2]
    gray = sorted((data_root / "magnetic_tile" / "test" / "blowhole").glob("*.jpg"))[:2]
    frames = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in colour]
    frames += [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in gray]
    assert all(f is not None for f in frames)
    return frames


@pytest.mark.parametrize("size", [(256, 256), (224, 320), (97, 61)])
@pytest.mark.parametrize("color_out", ["rgb", "bgr", "gray"])
def test_real_images_equal_opencv_composite(data_root, size, color_out):
    channels = 1 if color_out == "gray" else 3
    for frame in real_frames(data_root):
        expected = cv2_composite(frame, size, "bgr", color_out)
        a, b, _, _ = both(lambda: pre.make_batch(1, size, channels), frame=frame, color_out=color_out)
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
        color_in=str(rng.choice(["bgr", "rgb"])),
        color_out=str(rng.choice(["rgb", "bgr", "gray"])),
        mode=str(rng.choice(["resize", "resize", "letterbox"])),
        threads=int(rng.integers(1, 3)),
    )
    if rng.random() < 0.3 and h > 2 and w > 2:
        x, y = int(rng.integers(0, w - 1)), int(rng.integers(0, h - 1))
        kwargs["roi"] = (x, y, int(rng.integers(1, w - x + 1)), int(rng.integers(1, h - y + 1)))
    if rng.random() < 0.3:
        kwargs["interpolation"] = "linear"
    layout = str(rng.choice(["nhwc_u8", "nhwc_u8", "nchw_f32", "nchw_f16"]))
    if layout != "nhwc_u8" and rng.random() < 0.7:
        kwargs.update(mean=float(rng.uniform(0, 200)), std=float(rng.uniform(0.5, 80)))
    return kwargs, (max(out_h, 1), max(out_w, 1)), layout


@pytest.mark.parametrize("seed", range(8))
def test_random_views_identical_to_twin(seed):
    rng = np.random.default_rng(seed)
    for _ in range(25):
        kwargs, size, layout = random_case(rng)
        channels = 1 if kwargs["color_out"] == "gray" else 3
        def make_out():
            out = pre.make_batch(2, size, channels, layout)
            out[...] = 7
            return out

        a, b, ra, rb = both(make_out, index=1, **kwargs)
        assert ra == rb
        if layout == "nchw_f16":
            a, b = a.view(np.uint16), b.view(np.uint16)  # bit-exact, NaN-safe
        np.testing.assert_array_equal(a, b, err_msg=str({k: v for k, v in kwargs.items() if k != "frame"}))


def test_only_the_indexed_slot_is_written():
    frame = np.random.default_rng(1).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    for backend in ("twin", "native"):
        out = np.full((3, 32, 32, 3), 9, np.uint8)
        run(backend, lambda: pre.preprocess(frame, out, index=1, mode="letterbox", pad_value=3))
        assert (out[0] == 9).all() and (out[2] == 9).all()
        assert (out[1, :, :4] == 3).all()  # letterbox border: 90x120 -> 24x32 centred, 4 px each side
        assert (out[1, :, 4:28] != 3).any()


def test_letterbox_rect_and_padding():
    frame = np.full((480, 640, 3), 200, np.uint8)
    out = pre.make_batch(1, (256, 256))
    rect = run("native", lambda: pre.preprocess(frame, out, mode="letterbox", pad_value=114))
    assert rect == (0, 32, 256, 192)
    assert (out[0, :32] == 114).all() and (out[0, 224:] == 114).all()
    assert (out[0, 32:224] == 200).all()
    assert pre.letterbox_rect(100, 1, 64, 64) == (0, 31, 64, 1)


def test_float_layouts_are_normalised_uint8_values():
    frame = np.random.default_rng(2).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    u8, f32, f16 = (pre.make_batch(1, (64, 96), layout=layout) for layout in pre.LAYOUTS)
    run("native", lambda: pre.preprocess(frame, u8))
    run("native", lambda: pre.preprocess(frame, f32, mean=mean, std=std))
    run("native", lambda: pre.preprocess(frame, f16, mean=mean, std=std))
    expected = (u8[0].astype(np.float32) - np.float32(mean)) / np.float32(std)
    np.testing.assert_array_equal(f32[0], expected.transpose(2, 0, 1))
    np.testing.assert_array_equal(f16.view(np.uint16), f32.astype(np.float16).view(np.uint16))


def test_half_rounding_matches_numpy():
    rng = np.random.default_rng(3)
    values = np.concatenate([
        rng.normal(0, 10, 2000), rng.uniform(-70000, 70000, 500), 2.0 ** rng.uniform(-26, -13, 500),
        [0.0, -0.0, 65504.0, 65520.0, 65519.99, 2.0**-24, 2.0**-25, 3 * 2.0**-26, np.inf, -np.inf],
    ]).astype(np.float32)
    got = np.array([_native.float_to_half_bits(float(v)) for v in values], dtype=np.uint16)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(got, expected)


def test_interpolation_rule_follows_training():
    assert pre.choose_interpolation(1920, 1080, 256, 256) == "area"
    assert pre.choose_interpolation(1130, 460, 256, 256) == "linear"  # 1.8x on one axis
    assert pre.choose_interpolation(100, 100, 256, 256) == "linear"


BAD_CALLS = [
    (dict(frame=np.zeros((10, 10, 3), np.float32)), ["uint8", "float32 array of shape (10, 10, 3)"]),
    (dict(frame=np.zeros((10, 10, 4), np.uint8)), ["(H, W, 3)", "uint8 array of shape (10, 10, 4)"]),
    (dict(frame=[[1, 2]]), ["numpy", "got list"]),
    (dict(out=np.zeros((1, 8, 8, 3), np.float64)), ["float32 or float16", "float64 array of shape (1, 8, 8, 3)"]),
    (dict(out=np.zeros((8, 8, 3), np.uint8)), ["(N, H, W, C)", "uint8 array of shape (8, 8, 3)"]),
    (dict(index=2), ["index must be in [0, 1)", "got 2"]),
    (dict(roi=(5, 5, 10, 3)), ["roi (x=5, y=5, w=10, h=3)", "width 10 and height 10"]),
    (dict(color_out="gray"), ["needs 1 channel", "uint8 array of shape (1, 8, 8, 3)"]),
    (dict(color_in="yuv"), ["color_in must be one of", "'yuv'"]),
    (dict(mean=0.5), ["float layouts only", "uint8 array"]),
    (dict(interpolation="area", size=(8, 8), out=np.zeros((1, 16, 16, 3), np.uint8)), ["size (8, 8)"]),
    (dict(interpolation="area", out=np.zeros((1, 16, 16, 3), np.uint8)), ["only shrinks", "10x10", "16x16"]),
    (dict(mode="crop"), ["mode must be one of", "'crop'"]),
    (dict(threads=-1), ["threads must be", "-1"]),
]


@pytest.mark.parametrize("backend", ["twin", "native"])
@pytest.mark.parametrize("bad,words", BAD_CALLS)
def test_bad_arguments_say_what_was_expected_and_what_came(backend, bad, words):
    kwargs = dict(frame=np.zeros((10, 10, 3), np.uint8), out=np.zeros((1, 8, 8, 3), np.uint8))
    kwargs.update(bad)
    with pytest.raises(ValueError) as info:
        run(backend, lambda: pre.preprocess(**kwargs))
    for word in words:
        assert word in str(info.value)


def test_extension_checks_its_own_arguments():
    frame, out = np.zeros((10, 10, 3), np.uint8), np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"frame must be a uint8 .* got float64 array of shape \(10, 10\)"):
        _native.preprocess(np.zeros((10, 10)), out)
    with pytest.raises(ValueError, match=r"roi \(x=0, y=0, w=11, h=10\)"):
        _native.preprocess(frame, out, roi=(0, 0, 11, 10))
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        _native.preprocess(frame, out)

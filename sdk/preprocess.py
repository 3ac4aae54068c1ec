"""Camera frame -> model input, in one pass, straight into a caller-owned batch buffer.

``preprocess(frame, out, index)`` crops (a view, no copy), resizes, converts colour and packs one
frame into ``out[index]``:

* ``out`` uint8 (N, H, W, C): layout ``nhwc_u8`` (the ONNX graph's input; it normalises inside);
* ``out`` float32 / float16 (N, C, H, W): ``nchw_f32`` / ``nchw_f16``, value ``(v - mean) / std``
  per output channel, v the uint8 pixel (mean/std in pixel units, e.g. ImageNet
  mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)).

``out`` may be any writable array (a pinned host buffer included); the extension writes into it
without an intermediate image. Semantics, identical for the C++ extension and the NumPy/OpenCV
twin:

1. crop ``roi=(x, y, w, h)`` of the frame (uint8 HxW, HxWx1, HxWx3 BGR or RGB, any strides);
2. resize to the content rectangle: the whole model input (``mode="resize"``) or the centred
   aspect-preserving rectangle (``mode="letterbox"``, borders filled with ``pad_value``);
   ``interpolation="auto"`` uses cv2.resize INTER_AREA when the crop shrinks by >= 2x on both
   axes, INTER_LINEAR (half-pixel centres) otherwise, as training does;
3. convert colour (``color_in`` -> ``color_out``; gray <-> colour as cv2.cvtColor does);
4. pack into ``out[index]``.

Parity: the extension reproduces OpenCV's own uint8 resize and colour arithmetic, so its
uint8 outputs equal ``cv2.resize`` + ``cv2.cvtColor`` (the twin) bit for bit with the installed
OpenCV 5.0 (the tests check it on real and random frames). Another OpenCV build may round
differently in places (e.g. other SIMD paths): the documented tolerance is +-1 on uint8 values.
Float outputs are ``(v - mean) / std`` in float32 on those uint8 values (float16: rounded to
nearest even), identical between extension and twin.

The extension releases the GIL, uses ``threads`` workers on large crops and allocates nothing
image-sized per call (per-thread scratch rows and coefficient tables are reused).
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np

from .checks import Rect, as_rect, check_choice, check_frame, check_rect_inside, check_threads, describe
from .native import native_module

LAYOUTS = ("nhwc_u8", "nchw_f32", "nchw_f16")
_LAYOUT_DTYPES = {"nhwc_u8": np.uint8, "nchw_f32": np.float32, "nchw_f16": np.float16}


def choose_interpolation(src_w: int, src_h: int, dst_w: int, dst_h: int) -> str:
    """'area' when shrinking by >= 2x on both axes, else 'linear': the rule of
    sdk.evaluate.resize_for_model, so training, evaluation and deployment see the same pixels."""
    return "area" if src_w >= 2 * dst_w and src_h >= 2 * dst_h else "linear"


def letterbox_rect(src_w: int, src_h: int, dst_w: int, dst_h: int) -> Rect:
    """The centred rectangle (x, y, w, h) of a dst_w x dst_h input that holds the source with its
    aspect ratio kept (sizes rounded half up, at least 1 pixel)."""
    scale = min(dst_w / src_w, dst_h / src_h)
    w = min(dst_w, max(1, int(math.floor(src_w * scale + 0.5))))
    h = min(dst_h, max(1, int(math.floor(src_h * scale + 0.5))))
    return (dst_w - w) // 2, (dst_h - h) // 2, w, h


def input_layout(out: Any) -> tuple[str, int, int, int]:
    """(layout, channels, height, width) of a batch buffer, from its dtype and shape."""
    expected = "uint8 (N, H, W, C) for 'nhwc_u8', float32 or float16 (N, C, H, W) for 'nchw_f32'/'nchw_f16', C = 1 or 3"
    if isinstance(out, np.ndarray) and out.ndim == 4:
        if out.dtype == np.uint8:
            layout, (c, h, w) = "nhwc_u8", (out.shape[3], out.shape[1], out.shape[2])
        elif out.dtype in (np.float32, np.float16):
            layout = "nchw_f32" if out.dtype == np.float32 else "nchw_f16"
            c, h, w = out.shape[1:]
        else:
            layout = ""
        if layout and c in (1, 3) and h > 0 and w > 0:
            if not out.flags.writeable:
                raise ValueError(f"out must be writeable; got {describe(out)}")
            return layout, int(c), int(h), int(w)
    raise ValueError(f"out must be a numpy array: {expected}; got {describe(out)}")


def make_batch(batch: int, size: tuple[int, int], channels: int = 3, layout: str = "nhwc_u8") -> np.ndarray:
    """An empty batch buffer for ``preprocess`` (size = (H, W))."""
    check_choice(layout, "layout", LAYOUTS)
    h, w = size
    shape = (batch, h, w, channels) if layout == "nhwc_u8" else (batch, channels, h, w)
    return np.empty(shape, dtype=_LAYOUT_DTYPES[layout])


def _per_channel(value: Optional[Union[float, Sequence[float]]], channels: int, name: str) -> list[float]:
    if value is None:
        return []
    values = [float(v) for v in np.atleast_1d(np.asarray(value, dtype=np.float64))]
    if len(values) not in (1, channels):
        raise ValueError(f"{name} must have 1 or {channels} values; got {len(values)}")
    if name == "std" and any(v == 0 for v in values):
        raise ValueError(f"std must not contain zeros; got {values}")
    return values


def preprocess(
    frame: np.ndarray,
    out: np.ndarray,
    index: int = 0,
    size: Optional[tuple[int, int]] = None,
    color_in: str = "bgr",
    color_out: Optional[str] = None,
    mode: str = "resize",
    roi: Optional[Rect] = None,
    layout: Optional[str] = None,
    mean: Optional[Union[float, Sequence[float]]] = None,
    std: Optional[Union[float, Sequence[float]]] = None,
    interpolation: str = "auto",
    pad_value: int = 0,
    threads: int = 0,
) -> Rect:
    """Writes one frame into ``out[index]``; returns the content rectangle (x, y, w, h) in model
    input pixels (the whole input for mode="resize"; for "letterbox" where the image landed, to
    pass as ``map_rect`` to :func:`sdk.postprocess.postprocess`).

    size: (H, W), optional check against ``out``. color_in: 'bgr' or 'rgb' (ignored for 1-channel
    frames). color_out: 'rgb', 'bgr' or 'gray'; default 'rgb' for 3-channel ``out``, 'gray' for
    1-channel. layout: optional check ('nhwc_u8', 'nchw_f32', 'nchw_f16'); inferred from ``out``.
    mean/std: float layouts only, 1 or C values. interpolation: 'auto', 'linear' or 'area'.
    threads: 0 = automatic (several only on large crops), else that many. Raises ValueError on
    bad arguments, saying what was expected and what came.
    """
    frame = check_frame(frame)
    fh, fw = frame.shape[:2]
    out_layout, channels, out_h, out_w = input_layout(out)
    if layout is not None and check_choice(layout, "layout", LAYOUTS) != out_layout:
        raise ValueError(f"layout {layout!r} does not match out: {describe(out)} is {out_layout!r}")
    if size is not None and tuple(size) != (out_h, out_w):
        raise ValueError(f"size {tuple(size)} (H, W) does not match out: {describe(out)}")
    if not isinstance(index, (int, np.integer)) or not 0 <= index < out.shape[0]:
        raise ValueError(f"index must be in [0, {out.shape[0]}) for out of batch size {out.shape[0]}; got {index!r}")
    check_choice(color_in, "color_in", ("bgr", "rgb"))
    if color_out is None:
        color_out = "rgb" if channels == 3 else "gray"
    check_choice(color_out, "color_out", ("rgb", "bgr", "gray"))
    if (color_out == "gray") != (channels == 1):
        need = 1 if color_out == "gray" else 3
        raise ValueError(f"color_out {color_out!r} needs {need} channel(s) in out; got {describe(out)}")
    check_choice(mode, "mode", ("resize", "letterbox"))
    check_choice(interpolation, "interpolation", ("auto", "linear", "area"))
    rect = check_rect_inside(as_rect(roi, "roi"), fw, fh, "roi", "the frame") if roi is not None else (0, 0, fw, fh)
    content = letterbox_rect(rect[2], rect[3], out_w, out_h) if mode == "letterbox" else (0, 0, out_w, out_h)
    if interpolation == "auto":
        interpolation = choose_interpolation(rect[2], rect[3], content[2], content[3])
    elif interpolation == "area" and (content[2] > rect[2] or content[3] > rect[3]):
        raise ValueError(
            f"interpolation 'area' only shrinks: the crop is {rect[2]}x{rect[3]} and the target "
            f"{content[2]}x{content[3]}; use 'linear' or 'auto'"
        )
    if out_layout == "nhwc_u8" and (mean is not None or std is not None):
        raise ValueError(f"mean/std apply to float layouts only; out is {describe(out)}")
    means, stds = _per_channel(mean, channels, "mean"), _per_channel(std, channels, "std")
    if not isinstance(pad_value, (int, np.integer)) or not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value must be an int in [0, 255]; got {pad_value!r}")
    threads = check_threads(threads)

    args = (frame, out, int(index), rect, color_in, color_out, content, interpolation, means, stds, int(pad_value))
    native = native_module()
    if native is not None:
        native.preprocess(*args, threads)
    else:
        _preprocess_twin(*args)
    return content


def _preprocess_twin(
    frame: np.ndarray,
    out: np.ndarray,
    index: int,
    roi: Rect,
    color_in: str,
    color_out: str,
    content: Rect,
    interpolation: str,
    mean: list[float],
    std: list[float],
    pad_value: int,
) -> None:
    """The reference: cv2.resize + cv2.cvtColor + NumPy packing."""
    x, y, w, h = roi
    crop = frame[y : y + h, x : x + w]
    if crop.ndim == 3 and crop.shape[2] == 1:
        crop = crop[:, :, 0]
    cx, cy, cw, ch = content
    if (cw, ch) == (w, h):
        resized = crop
    else:
        flag = cv2.INTER_AREA if interpolation == "area" else cv2.INTER_LINEAR
        resized = cv2.resize(np.ascontiguousarray(crop), (cw, ch), interpolation=flag)
    if out.dtype == np.uint8:
        out_h, out_w, channels = out.shape[1:]
    else:
        channels, out_h, out_w = out.shape[1:]
    if resized.ndim == 3 and channels == 3:
        image = resized if color_in == color_out else cv2.cvtColor(np.ascontiguousarray(resized), cv2.COLOR_BGR2RGB)
    elif resized.ndim == 3:
        code = cv2.COLOR_BGR2GRAY if color_in == "bgr" else cv2.COLOR_RGB2GRAY
        image = cv2.cvtColor(np.ascontiguousarray(resized), code)[:, :, None]
    elif channels == 3:
        image = cv2.cvtColor(np.ascontiguousarray(resized), cv2.COLOR_GRAY2BGR)
    else:
        image = resized[:, :, None]
    letterboxed = content != (0, 0, out_w, out_h)
    if out.dtype == np.uint8:
        if letterboxed:
            out[index] = pad_value
        out[index, cy : cy + ch, cx : cx + cw] = image
        return
    m = np.asarray(mean if mean else [0.0], dtype=np.float32)
    s = np.asarray(std if std else [1.0], dtype=np.float32)
    m, s = np.broadcast_to(m, (channels,)), np.broadcast_to(s, (channels,))
    if letterboxed:
        out[index] = ((np.float32(pad_value) - m) / s)[:, None, None]
    values = (image.astype(np.float32) - m) / s
    out[index, :, cy : cy + ch, cx : cx + cw] = values.transpose(2, 0, 1)

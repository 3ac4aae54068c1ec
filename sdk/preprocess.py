"""Camera frame -> model input, in one pass, straight into a caller-owned batch buffer.

``preprocess(frame, out, index)`` resizes, converts colour and packs one frame into ``out[index]``,
``out`` uint8 (N, H, W, C) (the ONNX graph's input; it normalises inside). ``out`` may be any
writable array (a pinned host buffer included); the extension writes into it without an
intermediate image. Semantics, identical for the C++ extension and the NumPy/OpenCV twin:

1. resize the frame (uint8 HxW, HxWx1, HxWx3 BGR or RGB, any strides) to the model input;
   ``interpolation="auto"`` uses cv2.resize INTER_AREA when the frame shrinks by >= 2x on both
   axes, INTER_LINEAR (half-pixel centres) otherwise, as training does;
2. convert colour (``colour_in`` -> ``colour_out``; gray <-> colour as cv2.cvtColor does);
3. pack into ``out[index]``.

Parity: the extension reproduces OpenCV's own uint8 resize and colour arithmetic, so its
outputs equal ``cv2.resize`` + ``cv2.cvtColor`` (the twin) bit for bit with the installed
OpenCV 5.0 (the tests check it on real and random frames). Another OpenCV build may round
differently in places (e.g. other SIMD paths): the documented tolerance is +-1 on uint8 values.

The extension releases the GIL, uses ``threads`` workers on large frames and allocates nothing
image-sized per call (per-thread scratch rows and coefficient tables are reused).
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from .checks import check_choice, check_frame, check_threads, describe, older_spellings
from .native import native_module


def choose_interpolation(src_w: int, src_h: int, dst_w: int, dst_h: int) -> str:
    """'area' when shrinking by >= 2x on both axes, else 'linear': the rule of
    sdk.evaluate.resize_for_model, so training, evaluation and deployment see the same pixels."""
    return "area" if src_w >= 2 * dst_w and src_h >= 2 * dst_h else "linear"


def input_size(out: object) -> tuple[int, int, int]:
    """(channels, height, width) of a uint8 (N, H, W, C) batch buffer, C = 1 or 3."""
    if isinstance(out, np.ndarray) and out.ndim == 4 and out.dtype == np.uint8:
        h, w, c = out.shape[1:]
        if c in (1, 3) and h > 0 and w > 0:
            if not out.flags.writeable:
                raise ValueError(f"out must be writeable; got {describe(out)}")
            return int(c), int(h), int(w)
    raise ValueError(f"out must be a numpy array: uint8 (N, H, W, C), C = 1 or 3; got {describe(out)}")


def make_batch(batch: int, size: tuple[int, int], channels: int = 3) -> np.ndarray:
    """An empty uint8 (batch, H, W, channels) buffer for ``preprocess`` (size = (H, W))."""
    h, w = size
    return np.empty((batch, h, w, channels), dtype=np.uint8)


@older_spellings(color_in="colour_in", color_out="colour_out")
def preprocess(
    frame: np.ndarray,
    out: np.ndarray,
    index: int = 0,
    size: Optional[tuple[int, int]] = None,
    colour_in: str = "bgr",
    colour_out: Optional[str] = None,
    interpolation: str = "auto",
    threads: int = 0,
) -> None:
    """Writes one frame into ``out[index]``.

    size: (H, W), optional check against ``out``. colour_in: 'bgr' or 'rgb' (ignored for 1-channel
    frames). colour_out: 'rgb', 'bgr' or 'gray'; default 'rgb' for 3-channel ``out``, 'gray' for
    1-channel. interpolation: 'auto', 'linear' or 'area'. threads: 0 = automatic (several only on
    large frames), else that many. Raises ValueError on bad arguments, saying what was expected and
    what came.
    """
    frame = check_frame(frame)
    fh, fw = frame.shape[:2]
    channels, out_h, out_w = input_size(out)
    if size is not None and tuple(size) != (out_h, out_w):
        raise ValueError(f"size {tuple(size)} (H, W) does not match out: {describe(out)}")
    if not isinstance(index, (int, np.integer)) or not 0 <= index < out.shape[0]:
        raise ValueError(f"index must be in [0, {out.shape[0]}) for out of batch size {out.shape[0]}; got {index!r}")
    check_choice(colour_in, "colour_in", ("bgr", "rgb"))
    if colour_out is None:
        colour_out = "rgb" if channels == 3 else "gray"
    check_choice(colour_out, "colour_out", ("rgb", "bgr", "gray"))
    if (colour_out == "gray") != (channels == 1):
        need = 1 if colour_out == "gray" else 3
        raise ValueError(f"colour_out {colour_out!r} needs {need} channel(s) in out; got {describe(out)}")
    check_choice(interpolation, "interpolation", ("auto", "linear", "area"))
    if interpolation == "auto":
        interpolation = choose_interpolation(fw, fh, out_w, out_h)
    elif interpolation == "area" and (out_w > fw or out_h > fh):
        raise ValueError(
            f"interpolation 'area' only shrinks: the frame is {fw}x{fh} and the target "
            f"{out_w}x{out_h}; use 'linear' or 'auto'"
        )
    threads = check_threads(threads)

    native = native_module()
    if native is not None:
        native.preprocess(frame, out, int(index), colour_in, colour_out, interpolation, threads)
    else:
        _preprocess_twin(frame, out, int(index), colour_in, colour_out, interpolation)


def _preprocess_twin(frame: np.ndarray, out: np.ndarray, index: int, colour_in: str, colour_out: str,
                     interpolation: str) -> None:
    """The reference: cv2.resize + cv2.cvtColor + NumPy packing."""
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    out_h, out_w, channels = out.shape[1:]
    if frame.shape[:2] == (out_h, out_w):
        resized = frame
    else:
        flag = cv2.INTER_AREA if interpolation == "area" else cv2.INTER_LINEAR
        resized = cv2.resize(np.ascontiguousarray(frame), (out_w, out_h), interpolation=flag)
    if resized.ndim == 3 and channels == 3:
        image = resized if colour_in == colour_out else cv2.cvtColor(np.ascontiguousarray(resized), cv2.COLOR_BGR2RGB)
    elif resized.ndim == 3:
        code = cv2.COLOR_BGR2GRAY if colour_in == "bgr" else cv2.COLOR_RGB2GRAY
        image = cv2.cvtColor(np.ascontiguousarray(resized), code)[:, :, None]
    elif channels == 3:
        image = cv2.cvtColor(np.ascontiguousarray(resized), cv2.COLOR_GRAY2BGR)
    else:
        image = resized[:, :, None]
    out[index] = image

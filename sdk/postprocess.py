"""Anomaly map (model size) -> the frame's resolution, mask and regions; and the overlay.

``map_to_frame(anomaly_map, frame_shape)`` is the one map-to-frame resize: bilinear, half-pixel
centres, the arithmetic of OpenCV's own cv2.resize INTER_LINEAR (cv2 with its IPP backend differs
from it by up to ~1e-4 on a map's values). The Detector (through ``postprocess``), the evaluation
(sdk.evaluate) and the sinks all resize with it.

``postprocess(anomaly_map, frame_shape, threshold, min_area)`` returns

* ``full_map``: float32 (H, W), ``map_to_frame(anomaly_map, frame_shape)``;
* ``mask``: uint8 (H, W), ``mask_value`` (255) on pixels with ``full_map >= threshold`` (compared
  in float32; ``score >= threshold`` is positive, as in sdk.metrics and the thresholds' measurement) that
  belong to an 8-connected region of at least ``min_area`` pixels, else 0;
* ``regions``: list of :class:`Region` (box (x, y, w, h) in frame pixels, area in pixels, max and
  mean score rounded to float32), ordered by the raster position of each region's first pixel.

The C++ extension does all of it in one multithreaded pass over the rows (connected components
on runs); the twin is NumPy + cv2.connectedComponentsWithStats. Masks and regions are identical
between them, maps bit-identical (the tests allow 1e-5).

``blend_heatmap(frame, full_map, mask)`` blends a JET heat map on the frame and draws region contours.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import cv2
import numpy as np

from .checks import check_choice, check_frame, check_map, check_output, check_threads, describe, older_spellings
from .native import native_module


class Region(NamedTuple):
    box: tuple[int, int, int, int]  # x, y, w, h in frame pixels
    area: int  # pixels
    max_score: float
    mean_score: float


def _frame_hw(frame_shape: Any) -> tuple[int, int]:
    try:
        h, w = int(frame_shape[0]), int(frame_shape[1])
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"frame_shape must be (H, W) or (H, W, C); got {frame_shape!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"frame_shape must be positive; got {frame_shape!r}")
    return h, w


def postprocess(
    anomaly_map: np.ndarray,
    frame_shape: Sequence[int],
    threshold: float,
    min_area: int = 0,
    out_map: Optional[np.ndarray] = None,
    out_mask: Optional[np.ndarray] = None,
    mask_value: int = 255,
    threads: int = 0,
) -> tuple[np.ndarray, np.ndarray, list[Region]]:
    """(full_map, mask, regions) at the frame's resolution; see the module docstring.

    anomaly_map: float32 (h, w), any strides. frame_shape: (H, W) or (H, W, C).
    out_map / out_mask: float32 / uint8 (H, W) buffers to fill (no allocation then).
    mask_value: value of mask pixels (1..255). threads: 0 = automatic.
    """
    anomaly_map = check_map(anomaly_map)
    h, w = _frame_hw(frame_shape)
    if not isinstance(min_area, (int, np.integer)) or min_area < 0:
        raise ValueError(f"min_area must be an int >= 0; got {min_area!r}")
    threshold = float(threshold)
    if not isinstance(mask_value, (int, np.integer)) or not 1 <= mask_value <= 255:
        raise ValueError(f"mask_value must be an int in [1, 255]; got {mask_value!r}")
    threads = check_threads(threads)
    out_map = np.empty((h, w), np.float32) if out_map is None else check_output(out_map, "out_map", np.float32, (h, w))
    out_mask = np.empty((h, w), np.uint8) if out_mask is None else check_output(out_mask, "out_mask", np.uint8, (h, w))

    native = native_module()
    if native is not None:
        rows = native.postprocess(anomaly_map, h, w, threshold, int(min_area), out_map, out_mask, int(mask_value), threads)
        regions = [
            Region((int(r[0]), int(r[1]), int(r[2]), int(r[3])), int(r[4]), float(r[5]), float(r[6])) for r in rows
        ]
        return out_map, out_mask, regions
    out_map[...] = resize_map(anomaly_map, w, h)
    out_mask[...], regions = region_stats(out_map, out_map >= np.float32(threshold), int(min_area), int(mask_value))
    return out_map, out_mask, regions


def map_to_frame(anomaly_map: np.ndarray, frame_shape: Sequence[int], threads: int = 0) -> np.ndarray:
    """float32 (H, W): the map resized to the frame's (H, W) as postprocess resizes it (the map itself
    when it already has that shape). anomaly_map: float32 or float64 (h, w) (other dtypes are cast)."""
    anomaly_map = np.asarray(anomaly_map)
    if anomaly_map.dtype != np.float32:
        anomaly_map = anomaly_map.astype(np.float32)
    anomaly_map = check_map(anomaly_map)
    h, w = _frame_hw(frame_shape)
    if anomaly_map.shape == (h, w):
        return anomaly_map
    threads = check_threads(threads)
    native = native_module()
    if native is None:
        return resize_map(anomaly_map, w, h)
    out = np.empty((h, w), np.float32)
    native.resize_map(anomaly_map, out, threads)
    return out


def _linear_taps(ssize: int, dsize: int, clamp: bool) -> tuple[np.ndarray, np.ndarray]:
    """Source index and float32 fraction per destination index, as cv::resize computes them."""
    scale = 1.0 / (dsize / ssize)
    frac = ((np.arange(dsize, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    index = np.floor(frac).astype(np.int64)
    frac = frac - index.astype(np.float32)
    if clamp:
        low, high = index < 0, index >= ssize - 1
        frac[low | high] = 0.0
        index[low] = 0
        index[high] = ssize - 1
    return index, frac


def resize_map(anomaly_map: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear float32 resize, bit-identical to OpenCV's own INTER_LINEAR code (the twin)."""
    sh, sw = anomaly_map.shape
    x0, fx = _linear_taps(sw, width, clamp=True)
    x1 = np.minimum(x0 + 1, sw - 1)
    y, fy = _linear_taps(sh, height, clamp=False)
    y0, y1 = np.clip(y, 0, sh - 1), np.clip(y + 1, 0, sh - 1)
    one = np.float32(1.0)
    rows = anomaly_map[:, x0] * (one - fx) + anomaly_map[:, x1] * fx
    return rows[y0] * (one - fy)[:, None] + rows[y1] * fy[:, None]


def region_stats(
    scores: np.ndarray, inside: np.ndarray, min_area: int, mask_value: int = 255
) -> tuple[np.ndarray, list[Region]]:
    """Twin of the native statistics: (uint8 mask of kept regions, regions in raster order of
    their first pixel) from a float32 score image and its boolean threshold mask."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(inside.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    areas = stats[:, cv2.CC_STAT_AREA]
    keep = areas >= min_area
    keep[0] = False
    sums = np.bincount(labels.ravel(), weights=scores.ravel(), minlength=count)
    found = []
    for label in np.flatnonzero(keep):
        x, y, w, h = (int(v) for v in stats[label, :4])
        window = labels[y : y + h, x : x + w] == label
        first_x = x + int(np.argmax(window[0]))
        peak = float(scores[y : y + h, x : x + w][window].max())
        mean = float(np.float32(sums[label] / areas[label]))
        region = Region((x, y, w, h), int(areas[label]), peak, mean)
        found.append(((y, first_x), region))
    found.sort(key=lambda item: item[0])
    mask = np.where(keep[labels], np.uint8(mask_value), np.uint8(0))
    return mask, [region for _, region in found]


@older_spellings(color_order="colour_order")
def jet_lut(colour_order: str = "bgr") -> np.ndarray:
    """cv2.COLORMAP_JET as a (256, 3) uint8 table in the frame's colour order."""
    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), cv2.COLORMAP_JET).reshape(256, 3)
    return np.ascontiguousarray(lut[:, ::-1] if colour_order == "rgb" else lut)


@older_spellings(color_order="colour_order", contour_color="contour_colour")
def blend_heatmap(
    frame: np.ndarray,
    anomaly_map_full: np.ndarray,
    mask: np.ndarray,
    alpha: float = 0.5,
    value_range: Optional[tuple[float, float]] = None,
    colour_order: str = "bgr",
    contour_colour: Optional[tuple[int, int, int]] = None,
    out: Optional[np.ndarray] = None,
    threads: int = 0,
) -> np.ndarray:
    """uint8 (H, W, 3) image: ``rint(frame * (1 - alpha) + jet(map) * alpha)`` (float32), the map
    scaled so value_range (default: the map's min and max) spans the colour map, and the contours
    of ``mask`` (mask pixels with a 4-neighbour outside the mask or the image) in contour_colour
    (default red), in the frame's colour order. A gray frame gives a 3-channel result."""
    frame = check_frame(frame)
    h, w = frame.shape[:2]
    anomaly_map_full = check_map(anomaly_map_full)
    if anomaly_map_full.shape != (h, w):
        raise ValueError(f"anomaly_map_full must have the frame's shape {(h, w)}; got {anomaly_map_full.shape}")
    if not isinstance(mask, np.ndarray) or mask.dtype != np.uint8 or mask.shape != (h, w):
        raise ValueError(f"mask must be a uint8 array of the frame's shape {(h, w)}; got {describe(mask)}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha!r}")
    check_choice(colour_order, "colour_order", ("bgr", "rgb"))
    if value_range is None:
        value_range = (float(anomaly_map_full.min()), float(anomaly_map_full.max()))
    lo, hi = (float(v) for v in value_range)
    red = (0, 0, 255) if colour_order == "bgr" else (255, 0, 0)
    colour = contour_colour if contour_colour is not None else red
    if len(colour) != 3 or not all(0 <= int(c) <= 255 for c in colour):
        raise ValueError(f"contour_colour must be 3 ints in [0, 255]; got {colour!r}")
    threads = check_threads(threads)
    out = np.empty((h, w, 3), np.uint8) if out is None else check_output(out, "out", np.uint8, (h, w, 3))
    lo32 = np.float32(lo)
    scale32 = np.float32(255.0 / (hi - lo)) if hi > lo else np.float32(0.0)
    alpha32, inv32 = np.float32(alpha), np.float32(1.0 - float(alpha))
    lut = jet_lut(colour_order)

    native = native_module()
    if native is not None:
        colour_list = [int(c) for c in colour]
        native.overlay(frame, anomaly_map_full, mask, out, lo32, scale32, alpha32, inv32, lut, colour_list, threads)
        return out
    t = np.nan_to_num((anomaly_map_full - lo32) * scale32, nan=0.0)
    np.clip(t, 0.0, 255.0, out=t)
    heat = lut[np.rint(t).astype(np.intp)].astype(np.float32)
    pixels = frame.reshape(h, w, -1).astype(np.float32)
    blend = np.rint(pixels * inv32 + heat * alpha32)
    out[...] = np.clip(blend, 0, 255).astype(np.uint8)
    inside = np.pad(mask != 0, 1, constant_values=False)
    interior = inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:]
    out[(mask != 0) & ~interior] = np.asarray(colour, dtype=np.uint8)
    return out

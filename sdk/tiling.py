"""Tiling for large frames (line cameras: 4096-16384 px wide): overlapping tiles at model size,
and the tile maps stitched back into one frame-size map.

Along each axis, tiles start every ``tile - overlap`` pixels and the last one is aligned with the
frame's end, so every pixel is covered, every overlap is at least ``overlap`` wide and no tile is
resized. A frame shorter than a tile gets one tile, padded with ``pad_value``.

``stitch(..., mode="max")`` takes the maximum where tiles overlap; ``mode="mean"`` the mean
weighted by each pixel's distance to its tile's edge (min(i + 1, n - i) per axis), so tile
borders, where the model sees least context, count least. Run post-processing on the stitched
map: a defect on a tile border then is one region, found once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np

from .checks import check_choice, check_frame, check_output, check_threads, describe, require, whole
from .native import native_module
from .preprocess import preprocess

Pair = Union[int, Sequence[int]]
MIN_TILE_SIDE = 32  # the teacher's coarsest stride: a smaller frame has no feature left
MAX_TILED_PIXELS = 1 << 28  # a scaled frame beyond this would not fit in memory as tiles
# with a margin, where two tiles' insides overlap (the last tile along an axis is aligned with the frame's end):
# "max" of their maps (models exported before the option), or "mean" (the maximum of two maps of a good part is
# higher than either, so the overlaps read as seams)
TILE_JOINS = ("max", "mean")


def _pair(value: Pair, name: str) -> tuple[int, int]:
    """(h, w) from an int or a pair."""
    try:
        h, w = (int(value), int(value)) if np.isscalar(value) else (int(value[0]), int(value[1]))
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"{name} must be an int or (h, w); got {value!r}") from None
    return h, w


def tile_positions(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis: every tile - overlap pixels, the last aligned with the end."""
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile; got tile={tile}, overlap={overlap}")
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = -(-(length - tile) // stride) + 1  # ceil
    return [min(i * stride, length - tile) for i in range(count)]


def tile_grid(frame_shape: Sequence[int], tile: Pair, overlap: Pair = 0) -> tuple[list[int], list[int]]:
    """(xs, ys): tile starts along x and y for a frame of shape (H, W[, C])."""
    th, tw = _pair(tile, "tile")
    oy, ox = _pair(overlap, "overlap")
    return tile_positions(int(frame_shape[1]), tw, ox), tile_positions(int(frame_shape[0]), th, oy)


def make_tiles(
    frame: np.ndarray,
    tile: Pair = 256,
    overlap: Pair = 32,
    pad_value: int = 0,
    out: Optional[np.ndarray] = None,
    threads: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(tiles, origins): tiles uint8 (N, th, tw[, C]) in row-major order (frame dims kept: a
    2-D frame gives 3-D tiles), origins int64 (N, 2) of (x, y). ``out`` may be given (e.g. the
    engine's input buffer when no colour conversion is needed). tile, overlap: int or (h, w)."""
    frame = check_frame(frame)
    th, tw = _pair(tile, "tile")
    xs, ys = tile_grid(frame.shape, (th, tw), overlap)
    if not isinstance(pad_value, (int, np.integer)) or not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value must be an int in [0, 255]; got {pad_value!r}")
    threads = check_threads(threads)
    shape = (len(xs) * len(ys), th, tw) + frame.shape[2:]
    out = np.empty(shape, np.uint8) if out is None else check_output(out, "out", np.uint8, shape)
    origins = np.array([(x, y) for y in ys for x in xs], dtype=np.int64)

    native = native_module()
    if native is not None:
        native.make_tiles(frame, th, tw, xs, ys, int(pad_value), out, threads)
        return out, origins
    for i, (x, y) in enumerate(origins):
        part = frame[y : y + th, x : x + tw]
        out[i] = pad_value
        out[i, : part.shape[0], : part.shape[1]] = part
    return out, origins


def tile_weights(tile_h: int, tile_w: int) -> np.ndarray:
    """float32 (tile_h, tile_w) weights of mode='mean': min(i + 1, n - i) per axis, multiplied."""
    wy = np.minimum(np.arange(tile_h) + 1, tile_h - np.arange(tile_h)).astype(np.float32)
    wx = np.minimum(np.arange(tile_w) + 1, tile_w - np.arange(tile_w)).astype(np.float32)
    return wy[:, None] * wx[None, :]


def stitch(
    tile_maps: np.ndarray,
    origins: np.ndarray,
    frame_shape: Sequence[int],
    mode: str = "max",
    out: Optional[np.ndarray] = None,
    threads: int = 0,
) -> np.ndarray:
    """float32 (H, W) map from per-tile maps (N, th, tw) placed at origins (N, 2) of (x, y);
    'max' or 'mean' (weighted) in the overlaps, 0 where no tile lies."""
    ok = isinstance(tile_maps, np.ndarray) and tile_maps.dtype == np.float32 and tile_maps.ndim == 3
    if not ok or len(tile_maps) < 1:
        raise ValueError(f"tile_maps must be a float32 array of shape (N, tile_h, tile_w); got {describe(tile_maps)}")
    n, th, tw = tile_maps.shape
    origins = np.asarray(origins)
    if origins.shape != (n, 2) or origins.dtype.kind not in "iu":
        raise ValueError(f"origins must be an int array of shape ({n}, 2) holding (x, y); got {describe(origins)}")
    origins = origins.astype(np.int64, copy=False)
    h, w = int(frame_shape[0]), int(frame_shape[1])
    bad = (origins[:, 0] < 0) | (origins[:, 1] < 0) | (origins[:, 0] >= w) | (origins[:, 1] >= h)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"origin {i} (x={origins[i, 0]}, y={origins[i, 1]}) lies outside the frame of width {w} and height {h}"
        )
    check_choice(mode, "mode", ("max", "mean"))
    threads = check_threads(threads)
    out = np.empty((h, w), np.float32) if out is None else check_output(out, "out", np.float32, (h, w))

    native = native_module()
    if native is not None:
        native.stitch(tile_maps, origins, h, w, mode, out, threads)
        return out
    weights = tile_weights(th, tw)
    acc = np.full((h, w), -np.inf if mode == "max" else 0.0, np.float32)
    wsum = np.zeros((h, w), np.float32)
    for tile_map, (x, y) in zip(tile_maps, origins):
        ch, cw = min(th, h - y), min(tw, w - x)
        a, s = acc[y : y + ch, x : x + cw], wsum[y : y + ch, x : x + cw]
        if mode == "max":
            np.maximum(a, tile_map[:ch, :cw], out=a)
            s[...] = 1.0
        else:
            a += weights[:ch, :cw] * tile_map[:ch, :cw]
            s += weights[:ch, :cw]
    covered = wsum > 0
    if mode == "max":
        out[...] = np.where(covered, acc, np.float32(0.0))
    else:
        out[...] = 0.0
        np.divide(acc, wsum, out=out, where=covered)
    return out


@dataclass(frozen=True)
class TilePlan:
    """How a model sees a frame in tiles: the frame scaled by `scale` model pixels per frame pixel (None: so that
    its short side fits the tile), cut into tiles of `tile` (h, w) model pixels that overlap by `overlap`; the
    tile maps stitched with the maximum in the overlaps; the frame's score the mean of its `score_top` highest
    tiles' (1: the highest; a frame of fewer tiles: all of them).

    With a `margin` (models trained on tiles: half the overlap), a tile's outer `margin` pixels are context only:
    the scaled frame is first padded by `margin` on every side (mirrored), each tile gives its map inside the
    margin (the model scores the same region), and those insides cover the frame, so no pixel's value comes from
    near a tile's edge, where a network sees least and responds most; where two insides overlap, `join_mode` combines
    them (TILE_JOINS)."""

    tile: tuple
    overlap: int = 32
    scale: Optional[float] = None
    margin: int = 0
    score_top: int = 1
    join_mode: str = "max"  # with a margin: how the insides' overlaps (where the last tile along an axis meets) combine

    def __post_init__(self):
        check_choice(self.join_mode, "join_mode", TILE_JOINS)
        require(self.score_top, whole(1), f"score_top (the tiles a frame's score averages) must be a whole number "
                                          f">= 1, got {self.score_top!r}")
        if self.margin and (self.overlap != 2 * self.margin or min(self.tile) <= 2 * self.margin):
            raise ValueError(f"a tile margin of {self.margin} needs an overlap of {2 * self.margin} and tiles larger "
                             f"than {2 * self.margin} a side; got overlap {self.overlap}, tile {self.tile}")

    def scale_for(self, frame_hw: Sequence[int]) -> float:
        if self.scale is not None:
            return float(self.scale)
        return max(self.tile[0] / frame_hw[0], self.tile[1] / frame_hw[1])

    def scaled_size(self, frame_hw: Sequence[int]) -> tuple[tuple[int, int], float]:
        """((h, w) of the scaled frame, the scale); ValueError for a frame the model cannot see at this scale."""
        scale = self.scale_for(frame_hw)
        h, w = int(frame_hw[0]), int(frame_hw[1])
        scaled = (max(1, round(h * scale)), max(1, round(w * scale)))
        if min(scaled) < MIN_TILE_SIDE:
            raise ValueError(f"tile_scale {scale:g} makes this {w}x{h} frame {scaled[1]}x{scaled[0]} model pixels; the "
                             f"model needs at least {MIN_TILE_SIDE} a side (its coarsest stride): give a scale of at "
                             f"least {MIN_TILE_SIDE / min(h, w):.4g}, or leave it out")
        if scaled[0] * scaled[1] > MAX_TILED_PIXELS:
            raise ValueError(f"tile_scale {scale:g} makes this {w}x{h} frame {scaled[1]}x{scaled[0]} model pixels, "
                             f"more than {MAX_TILED_PIXELS} to tile: give a smaller scale")
        return scaled, scale

    def cut(self, frame: np.ndarray, colour_in: str = "rgb", colour_out: str = "rgb"):
        """(tiles uint8 (N, th, tw, 3) in colour_out, origins (N, 2) of (x, y), scaled (h, w), scale)."""
        scaled_hw, scale = self.scaled_size(frame.shape[:2])
        scaled = np.empty((1, *scaled_hw, 3), np.uint8)
        preprocess(frame, scaled, index=0, colour_in=colour_in, colour_out=colour_out)
        tiles, origins = self.tiles_of(scaled[0])
        return tiles, origins, scaled_hw, scale

    def padded(self, scaled: np.ndarray) -> np.ndarray:
        """The scaled frame with its margin (mirrored) on every side: what the tiles are cut from."""
        m = self.margin
        if not m:
            return scaled
        return np.pad(scaled, ((m, m), (m, m)) + ((0, 0),) * (scaled.ndim - 2), mode="reflect")

    def tiles_of(self, scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tiles, origins in the padded frame) of a frame already at the model's scale."""
        return make_tiles(self.padded(scaled), self.tile, self.overlap)

    def join(self, tile_maps: np.ndarray, origins: np.ndarray, scaled_hw: Sequence[int]) -> np.ndarray:
        """The frame's map at its scaled size from its tiles' maps (with a margin, from their insides)."""
        maps = np.ascontiguousarray(tile_maps, dtype=np.float32)
        m = self.margin
        if not m:
            return stitch(maps, origins, scaled_hw, mode="max")
        h, w = int(scaled_hw[0]), int(scaled_hw[1])
        padded_hw, at = (h + 2 * m, w + 2 * m), np.asarray(origins) + m  # the insides in the padded frame
        inside = np.ascontiguousarray(maps[:, m:maps.shape[1] - m, m:maps.shape[2] - m])
        if self.join_mode == "max":
            full = stitch(inside, at, padded_hw, mode="max")
        else:  # stitch's "mean" weighs each tile's pixels by their distance from its edge; this is the plain mean
            total, count = np.zeros(padded_hw, np.float32), np.zeros(padded_hw, np.float32)
            ih, iw = inside.shape[1:]
            for share, (x, y) in zip(inside, at):
                total[y:y + ih, x:x + iw] += share
                count[y:y + ih, x:x + iw] += 1
            full = np.divide(total, count, out=total, where=count > 0)  # the insides cover the frame, not the pad
        return np.ascontiguousarray(full[m:m + h, m:m + w])

    def frame_score(self, tile_scores) -> float:
        """The frame's score from its tiles' scores: the mean of the `score_top` highest."""
        s = np.asarray(tile_scores, np.float64).reshape(-1)
        if not len(s):
            raise ValueError("a frame's score needs at least one tile's score")
        k = min(self.score_top, len(s))
        return float(np.partition(s, len(s) - k)[len(s) - k:].mean())

    def count(self, frame_hw: Sequence[int]) -> int:
        """Tiles of a frame of (h, w)."""
        h, w = self.scaled_size(frame_hw)[0]
        xs, ys = tile_grid((h + 2 * self.margin, w + 2 * self.margin), self.tile, self.overlap)
        return len(xs) * len(ys)


def tiled_predict(predict: Callable, frames_rgb: Sequence[np.ndarray], plan: TilePlan, max_batch: int = 8):
    """(maps at each frame's scaled size, scores: plan.frame_score) of RGB frames through `predict` (uint8 RGB NHWC
    tiles -> (maps (N, th, tw), scores (N,))), in batches of at most `max_batch` tiles."""
    cuts = [plan.cut(f) for f in frames_rgb]
    tiles = np.concatenate([c[0] for c in cuts])
    maps, scores = [], []
    for s in range(0, len(tiles), max_batch):
        m, sc = predict(np.ascontiguousarray(tiles[s:s + max_batch]))
        maps.append(np.asarray(m, np.float32).reshape(-1, *plan.tile))
        scores.append(np.asarray(sc, np.float64).reshape(-1))
    maps, scores = np.concatenate(maps), np.concatenate(scores)
    out_maps, out_scores, first = [], [], 0
    for tiles_k, origins, scaled_hw, _ in cuts:
        n = len(tiles_k)
        out_maps.append(plan.join(maps[first:first + n], origins, scaled_hw))
        out_scores.append(plan.frame_score(scores[first:first + n]))
        first += n
    return out_maps, out_scores

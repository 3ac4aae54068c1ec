"""sdk.tiling: positions, C++ extension vs the NumPy twin, and a defect on a tile border."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from sdk import postprocess as post
from sdk import tiling
from sdk.native import require_native
from tests.native_helpers import assert_refused, run

_native = require_native()  # fails the module with the build command when it is missing


def test_tile_positions():
    assert tiling.tile_positions(1000, 256, 32) == [0, 224, 448, 672, 744]
    assert tiling.tile_positions(256, 256, 32) == [0]
    assert tiling.tile_positions(100, 256, 32) == [0]  # one padded tile
    assert tiling.tile_positions(257, 256, 0) == [0, 1]
    positions = tiling.tile_positions(16384, 256, 48)
    assert positions[-1] == 16384 - 256 and all(b - a <= 208 for a, b in zip(positions, positions[1:]))
    with pytest.raises(ValueError, match="overlap < tile"):
        tiling.tile_positions(1000, 256, 256)


def frame_view(rng: np.random.Generator, h: int, w: int, kind: str) -> np.ndarray:
    base = rng.integers(0, 256, (h + 5, 2 * w + 3, 3), dtype=np.uint8)
    if kind == "gray":
        return np.ascontiguousarray(base[:h, :w, 0])
    if kind == "gray3d":
        return base[:h, :w, :1]
    if kind == "steps":
        return base[::-1, ::2][:h, :w]
    if kind == "channels_reversed":
        return base[:h, :w, ::-1]
    return np.ascontiguousarray(base[:h, :w])


@pytest.mark.parametrize("kind", ["bgr", "gray", "gray3d", "steps", "channels_reversed"])
def test_tiles_and_stitch_identical_to_twin(kind):
    rng = np.random.default_rng(len(kind))
    geometries = [(70, 301, (32, 48), (5, 9)), (20, 20, 32, 4), (1, 90, (1, 16), (0, 3)), (64, 64, 64, 0)]
    for h, w, tile, overlap in geometries:
        frame = frame_view(rng, h, w, kind)
        results = [run(b, lambda: tiling.make_tiles(frame, tile, overlap, pad_value=17, threads=2))
                   for b in ("twin", "native")]
        np.testing.assert_array_equal(results[0][0], results[1][0])
        np.testing.assert_array_equal(results[0][1], results[1][1])
        tiles, origins = results[1]
        maps = rng.random(tiles.shape[:3], dtype=np.float32)
        for mode in ("max", "mean"):
            for threads in (1, 2):
                a, b = (run(be, lambda: tiling.stitch(maps, origins, frame.shape, mode, threads=threads))
                        for be in ("twin", "native"))
                np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
                np.testing.assert_array_equal(b, a)  # the same float32 operations in the same order


def test_stitching_the_tiles_gives_back_the_frame():
    frame = np.random.default_rng(7).integers(0, 256, (300, 1000), dtype=np.uint8)
    tiles, origins = run("native", lambda: tiling.make_tiles(frame, 128, 24))
    maps = tiles.astype(np.float32)
    np.testing.assert_array_equal(tiling.stitch(maps, origins, frame.shape, "max"), frame)
    np.testing.assert_allclose(tiling.stitch(maps, origins, frame.shape, "mean"), frame, rtol=1e-6)
    # Non-contiguous tile maps and a strided output buffer.
    out = np.zeros((300, 2000), np.float32)[:, ::2]
    tiling.stitch(np.ascontiguousarray(maps[:, ::-1])[:, ::-1], origins, frame.shape, "max", out=out)
    np.testing.assert_array_equal(out, frame)


def test_defect_on_a_tile_border_is_found_once(data_root):
    """A line-camera-like strip of real magnetic-tile texture with one defect painted across the
    border of two tiles: per-tile post-processing reports it twice, the stitched map once."""
    paths = sorted((data_root / "magnetic_tile" / "train" / "good").glob("*.jpg"))[:6]
    strip = np.hstack([cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (200, 256)) for p in paths])
    tile, overlap = 256, 32
    x_border = tiling.tile_positions(strip.shape[1], tile, overlap)[1] + tile  # right edge of tile 1
    cv2.circle(strip, (x_border - 3, 128), 12, 255, -1)
    tiles, origins = tiling.make_tiles(strip, tile, overlap)

    def fake_model(t: np.ndarray) -> np.ndarray:  # anomaly = brightness far above the texture
        return (t.astype(np.float32) - 200.0) / 55.0

    maps = np.stack([fake_model(t) for t in tiles])
    per_tile = sum(len(post.postprocess(m, m.shape, 0.5, min_area=20)[2]) for m in maps)
    assert per_tile == 2
    for implementation in ("twin", "native"):
        for mode in ("max", "mean"):
            full = run(implementation, lambda: tiling.stitch(maps, origins, strip.shape, mode))
            _, _, regions = post.postprocess(full, strip.shape, 0.5, min_area=20)
            assert len(regions) == 1 and abs(regions[0].box[0] + regions[0].box[2] / 2 - (x_border - 3)) <= 2


BAD_TILES = [
    (dict(frame=np.zeros((10, 10), np.int16)), ["uint8", "int16 array of shape (10, 10)"]),
    (dict(tile=(0, 8)), ["tile >= 1", "tile=0"]),
    (dict(overlap=8), ["overlap < tile", "overlap=8"]),
    (dict(out=np.zeros((4, 8, 8), np.uint8)),
     ["out must be a writeable uint8 array of shape (4, 8, 8, 3)", "(4, 8, 8)"]),
]


@pytest.mark.parametrize("implementation", ["twin", "native"])
@pytest.mark.parametrize("bad,words", BAD_TILES)
def test_bad_tiling_arguments(implementation, bad, words):
    kwargs = dict(frame=np.zeros((10, 10, 3), np.uint8), tile=8, overlap=4)
    kwargs.update(bad)
    assert_refused(implementation, lambda: tiling.make_tiles(**kwargs), words)


BAD_STITCH = [
    (dict(tile_maps=np.zeros((2, 8, 8), np.float64)), ["float32", "float64 array of shape (2, 8, 8)"]),
    (dict(origins=np.zeros((3, 2), np.int64)), ["shape (2, 2)", "int64 array of shape (3, 2)"]),
    (dict(origins=np.array([[0, 0], [20, 0]])), ["origin 1 (x=20, y=0)", "width 16"]),
    (dict(mode="median"), ["mode must be one of", "'median'"]),
    (dict(out=np.zeros((16, 10), np.float32)), ["(10, 16)", "float32 array of shape (16, 10)"]),
]


@pytest.mark.parametrize("implementation", ["twin", "native"])
@pytest.mark.parametrize("bad,words", BAD_STITCH)
def test_bad_stitch_arguments(implementation, bad, words):
    kwargs = dict(tile_maps=np.zeros((2, 8, 8), np.float32), origins=np.array([[0, 0], [8, 2]]), frame_shape=(10, 16))
    kwargs.update(bad)
    assert_refused(implementation, lambda: tiling.stitch(**kwargs), words)


def test_extension_checks_its_own_arguments():
    frame = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match=r"tile x origins must lie in \[0, 2\]; got 5"):
        _native.make_tiles(frame, 8, 8, [5], [0], 0, np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"origins must be an int64 array of shape \(1, 2\)"):
        maps, out = np.zeros((1, 8, 8), np.float32), np.zeros((10, 10), np.float32)
        _native.stitch(maps, np.zeros((1, 2), np.int32), 10, 10, "max", out)

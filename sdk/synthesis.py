"""Synthetic defects on good images, for training CFRG's segmentation head and recovery branch.

numpy + OpenCV only. `DefectSynthesizer(...)(image, rng)` returns (augmented image, mask, kind):

- perlin_texture: DRAEM recipe, a thresholded, rotated Perlin-noise mask blended with a texture
  (procedural, or from a user's texture folder) at opacity beta ~ U(0.1, 1).
- perlin_donor:   the same mask filled with a jittered patch of another good image.
- scratch:        thin curves (Bezier or random walk), 1-4 px, brighter or darker than the surface.
- spot:           pits, dirt, blobs: soft irregular ellipses from ~2 px to ~5 % of the image.
- dent:           local shading of a bump (light side / dark side).
- discoloration:  a smooth-edged region with a brightness / contrast / hue shift.

Guarantees (checked on every sample): the mask is never empty; pixels where mask == 0 are
byte-identical to the input; inside the mask the change is visible (mean change over the mask core
>= MIN_MEAN_CHANGE grey levels, and at least 75 % of the core changed by >= MIN_PIXEL_CHANGE);
a grayscale-looking input (three equal channels) gets intensity-only changes and stays
grayscale-looking. The output depends only on the image, the rng state and the constructor
arguments, so one seed gives byte-identical results.
"""
from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence

import cv2
import numpy as np

from sdk.files import IMAGE_EXTENSIONS, image_files

ALL_KINDS = ("perlin_texture", "perlin_donor", "scratch", "spot", "dent", "discoloration")

MIN_MEAN_CHANGE = 16.0  # grey levels, mean |change| over the mask core (mask >= 0.5)
MIN_PIXEL_CHANGE = 5.0  # grey levels that at least 75 % of the core must change by
MASK_FLOOR = 0.05  # mask values below this are set to 0 (and those pixels are left unchanged)
MIN_CORE_PIXELS = 4  # a mask needs at least this many pixels >= 0.5
MAX_TRIES = 12  # attempts per sample before the guaranteed fallback
TEXTURE_BANK_SIZE = 24  # procedural texture fields cached per synthesizer
TEXTURE_BANK_SIDE = 256
MAX_TEXTURE_SIDE = 512  # textures loaded from a folder are shrunk to this longest side
FRESH_TEXTURE_PROB = 0.1  # chance to draw a brand-new procedural texture instead of a cached one

_RNG = np.random.Generator
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # RGB order


class _Patch(NamedTuple):
    """A defect confined to a box: top-left corner, mask (h, w) and full-strength change (h, w, C)."""
    y0: int
    x0: int
    mask: np.ndarray
    delta: np.ndarray


# ----------------------------------------------------------------------------------------------
# Perlin noise and masks
# ----------------------------------------------------------------------------------------------

def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(shape: Sequence[int], res: int | Sequence[int], rng: _RNG) -> np.ndarray:
    """2-D gradient noise as DRAEM's rand_perlin_2d: `res` cells along (y, x), any shape.

    Returns float32 (H, W), roughly in [-1, 1], zero at the cell corners.
    """
    h, w = int(shape[0]), int(shape[1])
    ry, rx = (int(res), int(res)) if np.isscalar(res) else (int(res[0]), int(res[1]))
    if h < 1 or w < 1 or ry < 1 or rx < 1:
        raise ValueError(f"perlin_noise: shape {shape} and res {res} must be positive")
    ys = (np.arange(h, dtype=np.float32) + 0.5) * np.float32(ry / h)
    xs = (np.arange(w, dtype=np.float32) + 0.5) * np.float32(rx / w)
    iy = np.minimum(ys.astype(np.int64), ry - 1)
    ix = np.minimum(xs.astype(np.int64), rx - 1)
    fy = (ys - iy)[:, None]
    fx = (xs - ix)[None, :]
    angles = rng.random((ry + 1, rx + 1)) * (2 * np.pi)
    grad_y = np.sin(angles).astype(np.float32)
    grad_x = np.cos(angles).astype(np.float32)

    def corner(dy: int, dx: int) -> np.ndarray:
        rows_y, rows_x = grad_y[iy + dy], grad_x[iy + dy]
        return rows_y[:, ix + dx] * (fy - dy) + rows_x[:, ix + dx] * (fx - dx)

    ty, tx = _fade(fy), _fade(fx)
    n0 = corner(0, 0)
    n0 += tx * (corner(0, 1) - n0)
    n1 = corner(1, 0)
    n1 += tx * (corner(1, 1) - n1)
    n0 += ty * (n1 - n0)
    return (n0 * np.float32(math.sqrt(2.0))).astype(np.float32, copy=False)


def _upsample_rotated(small: np.ndarray, shape: tuple[int, int], angle_deg: float) -> np.ndarray:
    """Resize a low-resolution field to `shape` and rotate it about the centre, in one warp."""
    h, w = shape
    sh, sw = small.shape[:2]
    a = math.radians(angle_deg)
    cos, sin = math.cos(a), math.sin(a)
    sy, sx = sh / h, sw / w
    # inverse map (output pixel -> source pixel): rotate in output space, then scale to source
    m = np.array([[sx * cos, -sx * sin, 0.0], [sy * sin, sy * cos, 0.0]], np.float64)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    m[0, 2] = (sw - 1) / 2 - (m[0, 0] * cx + m[0, 1] * cy)
    m[1, 2] = (sh - 1) / 2 - (m[1, 0] * cx + m[1, 1] * cy)
    return cv2.warpAffine(small, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT_101)


def _perlin_field(shape: tuple[int, int], res: tuple[int, int], rng: _RNG, angle: float = 0.0) -> np.ndarray:
    """Perlin noise at `shape`, computed at a lower resolution (cells >= 6 px) and upsampled."""
    h, w = shape
    ry, rx = res
    factor = max(1.0, min(h / ry, w / rx) / 6.0)
    small_shape = (max(2, math.ceil(h / factor)), max(2, math.ceil(w / factor)))
    small = perlin_noise(small_shape, res, rng)
    if small_shape == (h, w) and angle == 0.0:
        return small
    return _upsample_rotated(small, (h, w), angle)


def perlin_mask(shape: Sequence[int], rng: _RNG, min_scale: int = 0, max_scale: int = 6,
                threshold: float = 0.5) -> np.ndarray:
    """DRAEM's anomaly mask: Perlin noise with 2**U{min_scale..max_scale-1} cells per side (per
    axis, counted on a square of the image's area), rotated by U(-90, 90) degrees, thresholded.

    Returns float32 (H, W) of 0 and 1; it is redrawn until non-empty (up to 50 draws).
    """
    h, w = int(shape[0]), int(shape[1])
    if max_scale <= min_scale:
        raise ValueError(f"perlin_mask: max_scale ({max_scale}) must exceed min_scale ({min_scale})")
    side = math.sqrt(h * w)
    mask = np.zeros((h, w), np.float32)
    for _ in range(50):
        sy, sx = 2 ** rng.integers(min_scale, max_scale, size=2)
        res = (max(1, round(sy * h / side)), max(1, round(sx * w / side)))
        noise = _perlin_field((h, w), res, rng, angle=float(rng.uniform(-90, 90)))
        mask = (noise > threshold).astype(np.float32)
        if mask.any():
            break
    return mask


# ----------------------------------------------------------------------------------------------
# Procedural textures
# ----------------------------------------------------------------------------------------------

def _normalise(field: np.ndarray) -> np.ndarray:
    lo, hi = float(field.min()), float(field.max())
    return ((field - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def _coords(h: int, w: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by `angle` radians: (u along the direction, v across it)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    return x * c + y * s, -x * s + y * c


def _fractal(h: int, w: int, rng: _RNG, octaves: int | None = None, turbulence: bool = False) -> np.ndarray:
    octaves = int(rng.integers(3, 6)) if octaves is None else octaves
    base = int(2 ** rng.integers(0, 3))
    persistence = float(rng.uniform(0.4, 0.7))
    side = math.sqrt(h * w)
    total = np.zeros((h, w), np.float32)
    amp = 1.0
    for o in range(octaves):
        r = base * 2 ** o
        n = _perlin_field((h, w), (max(1, round(r * h / side)), max(1, round(r * w / side))), rng)
        total += amp * (np.abs(n) if turbulence else n)
        amp *= persistence
    return total


def _tex_fractal(h: int, w: int, rng: _RNG) -> np.ndarray:
    style = rng.integers(3)
    f = _normalise(_fractal(h, w, rng, turbulence=style == 1))
    return 1 - np.abs(2 * f - 1) if style == 2 else f  # plain, turbulent, ridged


def _tex_stripes(h: int, w: int, rng: _RNG) -> np.ndarray:
    u, _ = _coords(h, w, float(rng.uniform(0, np.pi)))
    period = float(rng.uniform(4, 40))
    warp = _fractal(h, w, rng, octaves=3) * float(rng.uniform(0, 0.6) * period)
    v = np.sin((u + warp) * np.float32(2 * np.pi / period))
    if rng.random() < 0.5:
        v = np.tanh(v * float(rng.uniform(2, 8)))  # harder, square-ish stripes
    return _normalise(v)


def _tex_cells(h: int, w: int, rng: _RNG) -> np.ndarray:
    n = int(rng.integers(8, 120))
    seeds = np.ones((h, w), np.uint8)
    seeds[rng.integers(0, h, n), rng.integers(0, w, n)] = 0
    dist, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    dist = _normalise(dist)
    style = rng.integers(3)
    if style == 0:
        return dist  # cell distance
    values = rng.random(labels.max() + 1).astype(np.float32)[labels]
    if style == 1:
        return values  # mosaic
    return _normalise(values * (1 - dist))  # cobblestones


def _tex_checker(h: int, w: int, rng: _RNG) -> np.ndarray:
    u, v = _coords(h, w, float(rng.uniform(0, np.pi)))
    period = float(rng.uniform(6, 48))
    if rng.random() < 0.5:
        warp = _fractal(h, w, rng, octaves=2) * float(rng.uniform(0.1, 0.5) * period)
        u, v = u + warp, v + warp
    board = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    return cv2.GaussianBlur(board, (0, 0), float(rng.uniform(0.5, 2.0)))


def _tex_marble(h: int, w: int, rng: _RNG) -> np.ndarray:
    u, _ = _coords(h, w, float(rng.uniform(0, np.pi)))
    freq = float(rng.uniform(0.02, 0.15))
    turb = _fractal(h, w, rng, turbulence=True) * float(rng.uniform(2, 8))
    return _normalise(np.sin(u * freq + turb))


def _tex_gradient(h: int, w: int, rng: _RNG) -> np.ndarray:
    if rng.random() < 0.5:
        g, _ = _coords(h, w, float(rng.uniform(0, 2 * np.pi)))
    else:
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        g = np.hypot(x - rng.uniform(0, w), y - rng.uniform(0, h))
    g = _normalise(g) * float(rng.uniform(1, 4))  # a few repeats: bands or rings
    g = g % 1.0 if rng.random() < 0.5 else np.abs((g % 2.0) - 1.0)
    return _normalise(g + 0.15 * _fractal(h, w, rng, octaves=3))


def _tex_grain(h: int, w: int, rng: _RNG) -> np.ndarray:
    """Blurred white noise: sand, paper, or (anisotropic) brushed metal."""
    noise = rng.random((h, w), dtype=np.float32)
    sx, sy = float(rng.uniform(0.5, 2.0)), float(rng.uniform(0.5, 2.0))
    if rng.random() < 0.5:
        sx = float(rng.uniform(6, 20))  # brushed: long streaks
    field = cv2.GaussianBlur(noise, (0, 0), sigmaX=sx, sigmaY=sy, borderType=cv2.BORDER_REFLECT_101)
    if sx > 5:
        field = _upsample_rotated(field, (h, w), float(rng.uniform(0, 180)))
    return _normalise(field)


_TEXTURE_GENERATORS: tuple[Callable[[int, int, _RNG], np.ndarray], ...] = (
    _tex_fractal, _tex_stripes, _tex_cells, _tex_checker, _tex_marble, _tex_gradient, _tex_grain)


def _texture_field(shape: Sequence[int], rng: _RNG) -> np.ndarray:
    """A uint8 (H, W) structure field from a random generator, sometimes a product of two."""
    h, w = int(shape[0]), int(shape[1])
    gens = _TEXTURE_GENERATORS
    field = gens[rng.integers(len(gens))](h, w, rng)
    if rng.random() < 0.3:
        field = _normalise(field * (0.5 + gens[rng.integers(len(gens))](h, w, rng)))
    return np.clip(field * 255 + 0.5, 0, 255).astype(np.uint8)


def _random_palette(rng: _RNG, channels: int) -> np.ndarray:
    """A 256-entry lookup table through 2-4 random colour (or grey) stops: uint8 (256, channels)."""
    n = int(rng.integers(2, 5))
    stops = np.sort(np.concatenate([[0.0, 1.0], rng.random(n - 2)]))
    colours = rng.uniform(0, 255, (n, channels))
    t = np.linspace(0, 1, 256)
    lut = np.stack([np.interp(t, stops, colours[:, c]) for c in range(channels)], axis=1)
    return np.clip(lut + 0.5, 0, 255).astype(np.uint8)


def _apply_palette(field: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """uint8 (H, W) field through a (256, C) lookup table -> uint8 (H, W, C)."""
    channels = lut.shape[1]
    src = field if channels == 1 else cv2.merge([field] * channels)
    return cv2.LUT(src, lut.reshape(256, 1, channels)).reshape(field.shape[:2] + (channels,))


def procedural_texture(shape: Sequence[int], rng: _RNG) -> np.ndarray:
    """A random texture, uint8 (H, W, 3): fractal noise, stripes, Voronoi cells, checkers,
    marble, gradients or grain, coloured through a random palette."""
    return _apply_palette(_texture_field(shape, rng), _random_palette(rng, 3))


# ----------------------------------------------------------------------------------------------
# Helpers for the defect kinds
# ----------------------------------------------------------------------------------------------

def _is_grayscale(image: np.ndarray) -> bool:
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]))


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> (H, W, channels); 1 channel is the luminance."""
    if channels == 3:
        return image
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)[..., None]


def _sample_window(source: np.ndarray, shape: tuple[int, int], rng: _RNG, angle_deg: float,
                   scale: float, interp: int = cv2.INTER_LINEAR) -> np.ndarray:
    """A (h, w) window of `source` at a random place, rotated and scaled (reflecting at borders)."""
    h, w = shape
    sh, sw = source.shape[:2]
    a = math.radians(angle_deg)
    c, s = math.cos(a) / scale, math.sin(a) / scale
    m = np.array([[c, -s, 0.0], [s, c, 0.0]])
    cy, cx = rng.uniform(0, sh), rng.uniform(0, sw)  # source point under the window centre
    m[0, 2] = cx - (m[0, 0] * (w - 1) / 2 + m[0, 1] * (h - 1) / 2)
    m[1, 2] = cy - (m[1, 0] * (w - 1) / 2 + m[1, 1] * (h - 1) / 2)
    out = cv2.warpAffine(source, m, (w, h), flags=interp | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REFLECT_101)
    return out if out.ndim == source.ndim else out[..., None]


def _mask_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """Bounding box of the non-zero pixels (bool or float mask), None when there are none."""
    x, y, w, h = cv2.boundingRect((mask > 0).astype(np.uint8))
    if w == 0 or h == 0:
        return None
    return slice(y, y + h), slice(x, x + w)


def _max_abs_change(out: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per-pixel largest |out - x| over the channels of two uint8 images, uint8 (h, w)."""
    diff = cv2.absdiff(out, x)
    if diff.ndim == 2:
        return diff
    return np.maximum(np.maximum(diff[..., 0], diff[..., 1]), diff[..., 2])


def _signed_blend(x: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """Change that blends x towards white (strength > 0) or black (< 0) by |strength|."""
    pos = np.maximum(strength, 0)[..., None]
    return pos * 255.0 - np.abs(strength)[..., None] * x


def _pick_polarity(mean_level: float, rng: _RNG) -> float:
    """+1 (brighter) or -1 (darker), avoiding directions the surface has little room for."""
    can_dark, can_bright = mean_level >= 40, mean_level <= 215
    if can_dark and can_bright:
        return 1.0 if rng.random() < 0.5 else -1.0
    return -1.0 if can_dark else 1.0


def _log_uniform(rng: _RNG, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _clip_box(cy: float, cx: float, half_h: float, half_w: float, h: int, w: int) -> tuple[int, int, int, int]:
    y0, y1 = max(0, int(cy - half_h)), min(h, int(math.ceil(cy + half_h)) + 1)
    x0, x1 = max(0, int(cx - half_w)), min(w, int(math.ceil(cx + half_w)) + 1)
    return y0, y1, x0, x1


def _elliptic_radius(y0: int, y1: int, x0: int, x1: int, cy: float, cx: float, a: float, b: float,
                     angle: float) -> np.ndarray:
    """Normalised elliptic distance (1 on the ellipse) over the box, semi-axes a (along angle), b."""
    y, x = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    y -= cy
    x -= cx
    c, s = math.cos(angle), math.sin(angle)
    u = (x * c + y * s) / a
    v = (-x * s + y * c) / b
    return np.sqrt(u * u + v * v)


def _soft_step(d: np.ndarray, edge: float) -> np.ndarray:
    """1 inside (d <= 1 - edge), 0 outside (d >= 1), smooth in between."""
    t = np.clip((1.0 - d) / max(edge, 1e-3), 0, 1)
    return (t * t * (3 - 2 * t)).astype(np.float32)


def _visibility(change: np.ndarray, core: np.ndarray) -> tuple[float, float]:
    """(mean change over the core, fraction of the core changed by >= MIN_PIXEL_CHANGE)."""
    values = change[core]
    if values.size < MIN_CORE_PIXELS:
        return 0.0, 0.0
    return float(values.mean()), np.count_nonzero(values >= MIN_PIXEL_CHANGE) / values.size


def _is_visible(change: np.ndarray, core: np.ndarray) -> bool:
    mean, changed = _visibility(change, core)
    return mean >= MIN_MEAN_CHANGE and changed >= 0.75


def _drop_faint_parts(mask: np.ndarray, out: np.ndarray, x: np.ndarray, change: np.ndarray) -> None:
    """Removes (in place) mask components whose core changed too little to see, restoring their pixels."""
    count, labels = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)
    if count <= 2:  # background and a single part
        return
    core = mask >= 0.5
    core_labels = labels[core]
    pixels = np.bincount(core_labels, minlength=count)
    total = np.bincount(core_labels, weights=change[core], minlength=count)
    faint = total < MIN_MEAN_CHANGE * np.maximum(pixels, 1)
    faint[0] = False
    if faint.any():
        drop = faint[labels]
        mask[drop] = 0
        out[drop] = x[drop]
        change[drop] = 0


def _compose(x: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """uint8 x + float delta, rounded and saturated, uint8 with x's shape."""
    return cv2.add(x, delta, dtype=cv2.CV_8U).reshape(x.shape)


def _apply_visible(img_c: np.ndarray, patch: _Patch) -> tuple[np.ndarray, np.ndarray] | None:
    """Composes a patch; boosts it (up to 3x) when too faint, drops parts that stay invisible.

    Returns (mask, changed box as uint8) with the mask floored at MASK_FLOOR, or None when the
    defect cannot be made visible.
    """
    mask = patch.mask.astype(np.float32)  # a copy
    mask[mask < MASK_FLOOR] = 0
    core = mask >= 0.5
    if int(np.count_nonzero(core)) < MIN_CORE_PIXELS:
        return None
    h, w = mask.shape
    x = img_c[patch.y0:patch.y0 + h, patch.x0:patch.x0 + w]
    delta = patch.delta * mask[..., None]
    out = _compose(x, delta)
    change = _max_abs_change(out, x)
    if not _is_visible(change, core):
        values = change[core].astype(np.float32)
        mean = float(values.mean())
        q25 = float(np.partition(values, values.size // 4)[values.size // 4])
        gain = max(MIN_MEAN_CHANGE / max(mean, 1e-3), MIN_PIXEL_CHANGE / max(q25, 1e-3)) * 1.1
        if gain > 3.0:
            return None
        out = _compose(x, delta * np.float32(gain))
        change = _max_abs_change(out, x)
    _drop_faint_parts(mask, out, x, change)
    if not _is_visible(change, mask >= 0.5):
        return None
    return mask, out


# ----------------------------------------------------------------------------------------------
# The synthesizer
# ----------------------------------------------------------------------------------------------

def load_textures(texture_dir: str | Path, max_side: int = MAX_TEXTURE_SIDE) -> list[np.ndarray]:
    """All images of a folder (not recursive) as uint8 RGB, shrunk to `max_side` at most."""
    folder = Path(texture_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"texture_dir {folder} is not a folder: pass a folder of texture images "
                                f"({', '.join(IMAGE_EXTENSIONS)}) or leave texture_dir unset")
    textures = []
    for path in image_files(folder):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"texture {path} could not be read as an image: remove or replace it")
        scale = max_side / max(bgr.shape[:2])
        if scale < 1:
            bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        textures.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if not textures:
        raise ValueError(f"texture_dir {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}): "
                         f"put texture images there or leave texture_dir unset for procedural textures")
    return textures


def _check_image(image: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{what} must be a uint8 (H, W, 3) array, got {desc}: convert it, e.g. with "
                         f"cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB) or image.astype(np.uint8)")
    if min(image.shape[:2]) < 16:
        raise ValueError(f"{what} is {image.shape[0]}x{image.shape[1]}: defect synthesis needs at least 16x16")
    return image


class DefectSynthesizer:
    """Draws one synthetic defect on a good image: `augmented, mask, kind = synth(image, rng)`.

    donor_images: good images (uint8 RGB, any size) that perlin_donor copies patches from; kept by
        reference, not copied. Without donors the image itself, moved and rotated, is the donor.
    texture_dir: a folder of texture images for perlin_texture (all loaded once); without it,
        procedural textures are used.
    kinds / kind_weights: which defect kinds to draw and their relative frequency (a sequence
        aligned with kinds, or a mapping kind -> weight; default uniform).
    seed: seeds the cached bank of procedural texture fields (not the per-sample randomness).
    """

    def __init__(self, donor_images: Sequence[np.ndarray] = (), texture_dir: str | None = None,
                 kinds: Sequence[str] = ALL_KINDS,
                 kind_weights: Sequence[float] | Mapping[str, float] | None = None,
                 texture_bank_size: int = TEXTURE_BANK_SIZE, seed: int = 0):
        self.kinds = tuple(kinds)
        unknown = [k for k in self.kinds if k not in ALL_KINDS]
        if not self.kinds or unknown:
            raise ValueError(f"unknown or no defect kinds {unknown or list(kinds)}: choose from {ALL_KINDS}")
        self.weights = self._weights(kind_weights)
        self.donors = [_check_image(d, f"donor_images[{i}]") for i, d in enumerate(donor_images)]
        self.textures = load_textures(texture_dir) if texture_dir is not None else None
        self.texture_bank_size = max(1, int(texture_bank_size))
        self.seed = seed
        self._bank: list[np.ndarray] | None = None
        self._bank_lock = threading.Lock()
        self._makers: dict[str, Callable[[np.ndarray, _RNG], _Patch | None]] = {
            "perlin_texture": self._perlin_texture, "perlin_donor": self._perlin_donor,
            "scratch": self._scratch, "spot": self._spot, "dent": self._dent,
            "discoloration": self._discoloration}

    def _weights(self, kind_weights: Sequence[float] | Mapping[str, float] | None) -> np.ndarray:
        if kind_weights is None:
            w = np.ones(len(self.kinds))
        elif isinstance(kind_weights, Mapping):
            extra = set(kind_weights) - set(self.kinds)
            if extra:
                raise ValueError(f"kind_weights names kinds {sorted(extra)} that are not in kinds {self.kinds}")
            w = np.array([float(kind_weights.get(k, 0.0)) for k in self.kinds])
        else:
            w = np.asarray(kind_weights, np.float64)
            if w.shape != (len(self.kinds),):
                raise ValueError(f"kind_weights has {w.size} values for {len(self.kinds)} kinds {self.kinds}: "
                                 f"give one weight per kind, or a mapping kind -> weight")
        if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"kind_weights {list(w)} must be non-negative with a positive sum")
        return w / w.sum()

    # -- public --------------------------------------------------------------------------------

    def __call__(self, image: np.ndarray, rng: _RNG) -> tuple[np.ndarray, np.ndarray, str]:
        image = _check_image(image, "image")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy Generator, got {type(rng).__name__}: pass np.random.default_rng(seed)")
        channels = 1 if _is_grayscale(image) else 3
        img_c = image if channels == 3 else np.ascontiguousarray(image[..., 0])[..., None]
        kind = self.kinds[int(rng.choice(len(self.kinds), p=self.weights))]
        result = None
        for _ in range(MAX_TRIES):
            patch = self._makers[kind](img_c, rng)
            result = _apply_visible(img_c, patch) if patch is not None else None
            if result is not None:
                break
        if result is None:  # a surface no kind could mark visibly (e.g. saturated): a plain blob
            kind = "spot"
            patch = self._fallback_blob(img_c, rng)
            result = _apply_visible(img_c, patch)
            if result is None:  # cannot happen: the blob changes every pixel by 100 levels
                raise RuntimeError("defect synthesis failed to mark the image: please report this image")
        box_mask, box_out = result
        h, w = box_mask.shape
        ys, xs = slice(patch.y0, patch.y0 + h), slice(patch.x0, patch.x0 + w)
        out = image.copy()
        out[ys, xs] = box_out  # broadcasts a single grey channel over the three
        mask = np.zeros(image.shape[:2], np.float32)
        mask[ys, xs] = box_mask
        return out, mask, kind

    # -- textures ------------------------------------------------------------------------------

    def _texture_bank(self) -> list[np.ndarray]:
        with self._bank_lock:
            if self._bank is None:
                bank_rng = np.random.default_rng([self.seed, 0x7E57])
                side = TEXTURE_BANK_SIDE
                self._bank = [_texture_field((side, side), bank_rng) for _ in range(self.texture_bank_size)]
            return self._bank

    def _texture(self, shape: tuple[int, int], channels: int, rng: _RNG) -> np.ndarray:
        """A float32 (h, w, channels) texture: folder image or procedural field + random palette."""
        angle, scale = float(rng.uniform(0, 360)), _log_uniform(rng, 0.5, 2.0)
        if self.textures is not None:
            src = self.textures[int(rng.integers(len(self.textures)))]
            return self._jitter(_to_channels(_sample_window(src, shape, rng, angle, scale), channels), rng, 30)
        if rng.random() < FRESH_TEXTURE_PROB:
            field = _texture_field((128, 128), rng)
        else:
            bank = self._texture_bank()
            field = bank[int(rng.integers(len(bank)))]
        window = _sample_window(field, shape, rng, angle, scale)
        return _apply_palette(window, _random_palette(rng, channels)).astype(np.float32)

    @staticmethod
    def _jitter(tex: np.ndarray, rng: _RNG, brightness: float) -> np.ndarray:
        """uint8 texture -> float32 with contrast, brightness and (colour) channel-gain jitter."""
        channels = tex.shape[2]
        mean = np.array(cv2.mean(tex)[:channels], np.float32)
        contrast = float(rng.uniform(0.7, 1.4))
        gain = np.full(channels, contrast, np.float32)
        offset = mean * (1 - contrast) + float(rng.uniform(-brightness, brightness))
        if channels == 3:
            channel_gain = rng.uniform(0.85, 1.15, 3).astype(np.float32)
            gain *= channel_gain
            offset *= channel_gain
        out = tex.astype(np.float32)
        out *= gain
        out += offset
        return out

    # -- kinds ---------------------------------------------------------------------------------

    def _perlin_region(self, img_c: np.ndarray, rng: _RNG) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
        mask = perlin_mask(img_c.shape[:2], rng)
        box = _mask_box(mask) or (slice(0, 1), slice(0, 1))
        return box, mask[box], img_c[box].astype(np.float32)

    def _perlin_texture(self, img_c: np.ndarray, rng: _RNG) -> _Patch:
        (ys, xs), m, x = self._perlin_region(img_c, rng)
        tex = self._texture(m.shape, img_c.shape[2], rng)
        beta = float(rng.uniform(0.1, 1.0))  # texture opacity
        return _Patch(ys.start, xs.start, m, beta * (tex - x))

    def _perlin_donor(self, img_c: np.ndarray, rng: _RNG) -> _Patch:
        (ys, xs), m, x = self._perlin_region(img_c, rng)
        channels = img_c.shape[2]
        if self.donors:
            donor = _to_channels(self.donors[int(rng.integers(len(self.donors)))], channels)
            angle = float(rng.choice([0.0, 90.0, 180.0, 270.0])) + float(rng.normal(0, 10))
            patch = _sample_window(donor, m.shape, rng, angle, _log_uniform(rng, 0.7, 1.4))
        else:  # the image itself, moved far and turned
            angle = float(rng.choice([90.0, 180.0, 270.0])) + float(rng.normal(0, 10))
            patch = _sample_window(img_c, m.shape, rng, angle, _log_uniform(rng, 0.7, 1.4))
        patch = self._jitter(patch, rng, brightness=40)
        opacity = float(rng.uniform(0.5, 1.0))
        return _Patch(ys.start, xs.start, m, opacity * (patch - x))

    def _scratch(self, img_c: np.ndarray, rng: _RNG) -> _Patch | None:
        h, w = img_c.shape[:2]
        diag = math.hypot(h, w)
        curves = []
        for _ in range(int(rng.choice([1, 1, 1, 2, 2, 3]))):
            length = diag * float(rng.uniform(0.08, 0.6))
            start = rng.uniform((0, 0), (w, h))
            heading = float(rng.uniform(0, 2 * np.pi))
            if rng.random() < 0.5:  # smooth arc: cubic Bezier
                end = start + length * np.array([math.cos(heading), math.sin(heading)])
                normal = np.array([-math.sin(heading), math.cos(heading)])
                c1 = start + (end - start) / 3 + normal * length * float(rng.uniform(-0.3, 0.3))
                c2 = start + 2 * (end - start) / 3 + normal * length * float(rng.uniform(-0.3, 0.3))
                t = np.linspace(0, 1, max(8, int(length / 3)))[:, None]
                pts = ((1 - t) ** 3 * start + 3 * (1 - t) ** 2 * t * c1 + 3 * (1 - t) * t * t * c2
                       + t ** 3 * end)
            else:  # crack: random walk, slowly turning heading plus per-step jitter
                step = float(rng.uniform(2.0, 4.0))
                n = max(4, int(length / step))
                ang = (heading + np.cumsum(rng.normal(0, float(rng.uniform(0.02, 0.12)), n))
                       + rng.normal(0, float(rng.uniform(0.0, 0.6)), n))
                steps = np.stack([np.cos(ang), np.sin(ang)], axis=1) * step
                pts = start + np.cumsum(steps, axis=0)
            curves.append((pts, int(rng.choice([1, 1, 1, 2, 2, 3, 4]))))
        allpts = np.concatenate([p for p, _ in curves])
        x0 = max(0, int(allpts[:, 0].min()) - 4)
        x1 = min(w, int(allpts[:, 0].max()) + 6)
        y0 = max(0, int(allpts[:, 1].min()) - 4)
        y1 = min(h, int(allpts[:, 1].max()) + 6)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return None
        shape = (y1 - y0, x1 - x0)
        x = img_c[y0:y1, x0:x1].astype(np.float32)
        polarity = _pick_polarity(float(x.mean()), rng)
        amp = float(rng.uniform(0.3, 0.8))
        wobble = np.clip(_perlin_field(shape, (3, 3), rng) * 0.7 + 0.7, 0.35, 1.0)  # along the scratch
        m = np.zeros(shape, np.float32)
        strength = np.zeros(shape, np.float32)
        for pts, thickness in curves:
            pts = pts - (x0, y0)
            canvas = np.zeros(shape, np.uint8)
            fixed = np.rint(pts * 16).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(canvas, [fixed], False, 255, thickness, cv2.LINE_AA, shift=4)
            ys, xs = np.nonzero(canvas)
            cover = canvas[ys, xs].astype(np.float32) / 255
            # fades towards both ends
            to_end = np.minimum(np.hypot(xs - pts[0, 0], ys - pts[0, 1]), np.hypot(xs - pts[-1, 0], ys - pts[-1, 1]))
            ramp = max(2.0, float(np.hypot(*(pts[-1] - pts[0]))) * float(rng.uniform(0.1, 0.3)))
            taper = np.clip(to_end / ramp, 0.3, 1.0)
            take = cover > m[ys, xs]
            ys, xs = ys[take], xs[take]
            m[ys, xs] = cover[take]
            strength[ys, xs] = polarity * amp * taper[take] * wobble[ys, xs]
        return _Patch(y0, x0, m, _signed_blend(x, strength))

    def _spot(self, img_c: np.ndarray, rng: _RNG) -> _Patch | None:
        h, w = img_c.shape[:2]
        r_max = max(2.0, math.sqrt(0.05 * h * w / np.pi))  # ~5 % of the image
        layout = rng.random()
        if layout < 0.6:
            radii = [_log_uniform(rng, 1.5, r_max)]
            centres = [rng.uniform((0, 0), (h, w))]
        else:  # a few spots, or a cluster of small dirt
            n = int(rng.integers(2, 4)) if layout < 0.85 else int(rng.integers(3, 9))
            top = max(2.0, r_max / 2 if layout < 0.85 else r_max / 4)
            radii = [_log_uniform(rng, 1.5, top) for _ in range(n)]
            spread = float(rng.uniform(0.05, 0.2)) * min(h, w) if layout >= 0.85 else max(h, w)
            c0 = rng.uniform((0, 0), (h, w))
            centres = [np.clip(c0 + rng.normal(0, spread, 2), 0, (h - 1, w - 1)) for _ in range(n)]
        mask = np.zeros((h, w), np.float32)
        strength = np.zeros((h, w), np.float32)
        for r, (cy, cx) in zip(radii, centres):
            aspect = _log_uniform(rng, 1.0, 2.5)
            a, b = r * math.sqrt(aspect), r / math.sqrt(aspect)
            b = max(b, 1.2)
            y0, y1, x0, x1 = _clip_box(cy, cx, a * 1.5 + 2, a * 1.5 + 2, h, w)
            d = _elliptic_radius(y0, y1, x0, x1, cy, cx, a, b, float(rng.uniform(0, np.pi)))
            if r > 4:  # irregular outline
                d *= 1 + float(rng.uniform(0.1, 0.35)) * _perlin_field(d.shape, (3, 3), rng)
            edge = min(0.6, max(float(rng.uniform(0.15, 0.4)), 1.0 / b))
            m = _soft_step(d, edge)
            x = img_c[y0:y1, x0:x1].astype(np.float32)
            core = m >= 0.5
            level = float(x.mean(axis=2)[core].mean()) if core.any() else float(x.mean())
            # domed profile: strongest in the middle, at least 45 % at the rim
            s = _pick_polarity(level, rng) * float(rng.uniform(0.4, 0.95)) * (
                0.45 + 0.55 * np.sqrt(np.clip(1 - d * d, 0, 1)))
            if r > 3:  # mottled inside
                s = s * (0.75 + 0.25 * _perlin_field(d.shape, (2, 2), rng))
            if r > 4 and rng.random() < 0.3:  # a pit with a raised rim of the opposite tone
                s = s * (1 - 1.6 * np.exp(-(((d - 0.85) / 0.1) ** 2)))
            box = (slice(y0, y1), slice(x0, x1))
            take = m > mask[box]
            strength[box] = np.where(take, s, strength[box])
            mask[box] = np.maximum(mask[box], m)
        box = _mask_box(mask >= MASK_FLOOR)
        if box is None:
            return None
        ys, xs = box
        return _Patch(ys.start, xs.start, mask[box], _signed_blend(img_c[box].astype(np.float32), strength[box]))

    def _dent(self, img_c: np.ndarray, rng: _RNG) -> _Patch | None:
        h, w = img_c.shape[:2]
        sigma = _log_uniform(rng, 0.025, 0.1) * math.sqrt(h * w)
        aspect = _log_uniform(rng, 1.0, 3.0)
        sa, sb = sigma * math.sqrt(aspect), max(2.0, sigma / math.sqrt(aspect))
        cy, cx = rng.uniform((0, 0), (h, w))
        y0, y1, x0, x1 = _clip_box(cy, cx, 4 * sa, 4 * sa, h, w)  # shading ~0 at 4 sigma
        theta = float(rng.uniform(0, np.pi))
        y, x = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        y -= cy
        x -= cx
        c, s = math.cos(theta), math.sin(theta)
        u, v = (x * c + y * s) / sa, (-x * s + y * c) / sb
        bump = np.exp(-0.5 * (u * u + v * v))
        # gradient of the bump in image axes, then along the light direction
        du, dv = -u / sa * bump, -v / sb * bump
        gx, gy = du * c - dv * s, du * s + dv * c
        light = float(rng.uniform(0, 2 * np.pi))
        shade = gx * math.cos(light) + gy * math.sin(light)
        shade /= max(float(np.abs(shade).max()), 1e-6)
        shading = np.clip(float(rng.uniform(0.4, 0.8)) * (1 if rng.random() < 0.5 else -1)
                          * (shade + float(rng.uniform(-0.4, 0.4)) * bump), -1, 1)
        patch_x = img_c[y0:y1, x0:x1].astype(np.float32)
        delta = _signed_blend(patch_x, shading)
        # mask: where the shading changes the surface's mean level by 4 .. 12 grey levels and more,
        # closed over the line where the light and dark sides meet
        mean_level = float(patch_x.mean())
        level_change = np.abs(shading) * np.where(shading > 0, 255 - mean_level, mean_level)
        visible = np.clip((level_change - 4.0) / 8.0, 0, 1).astype(np.float32)
        k = max(3, int(1.5 * sb) | 1)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        m = cv2.morphologyEx(visible, cv2.MORPH_CLOSE, kernel, borderType=cv2.BORDER_REPLICATE)
        return _Patch(y0, x0, m, delta)

    def _discoloration(self, img_c: np.ndarray, rng: _RNG) -> _Patch | None:
        h, w = img_c.shape[:2]
        region = perlin_mask((h, w), rng, min_scale=0, max_scale=3)
        sigma = float(rng.uniform(1.5, 6.0))
        m = cv2.GaussianBlur(region, (0, 0), sigma)
        m = np.clip((m - 0.25) * 2, 0, 1)  # soft edge, solid core
        box = _mask_box(m >= MASK_FLOOR)
        if box is None:
            return None
        m = m[box]
        x = img_c[box].astype(np.float32)
        mean = x.mean(axis=(0, 1), keepdims=True)
        level = float(mean.mean())
        shift = _pick_polarity(level, rng) * float(rng.uniform(15, 50))
        target = (x - mean) * float(rng.uniform(0.6, 1.5)) + mean + shift
        style = rng.random() if x.shape[2] == 3 else 1.0
        if style < 0.35:  # hue rotation (up to ~25 degrees) and saturation change, in HSV
            hsv = cv2.cvtColor(np.clip(target, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
            hsv[..., 0] = (hsv[..., 0] + float(rng.uniform(3, 12)) * (1 if rng.random() < 0.5 else -1)) % 180
            hsv[..., 1] = np.clip(hsv[..., 1] * float(rng.uniform(0.6, 1.5)), 0, 255)
            target = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
        elif style < 0.7:  # a tint
            target = target * rng.uniform(0.8, 1.2, 3).astype(np.float32)
        return _Patch(box[0].start, box[1].start, m, target - x)

    def _fallback_blob(self, img_c: np.ndarray, rng: _RNG) -> _Patch:
        """A solid disc pushed 100 levels away from the surface: always visible."""
        h, w = img_c.shape[:2]
        r = max(3.0, 0.05 * min(h, w))
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        y0, y1, x0, x1 = _clip_box(cy, cx, r + 1, r + 1, h, w)
        d = _elliptic_radius(y0, y1, x0, x1, cy, cx, r, r, 0.0)
        m = (d <= 1).astype(np.float32)
        x = img_c[y0:y1, x0:x1].astype(np.float32)
        return _Patch(y0, x0, m, np.where(x < 128, 100.0, -100.0).astype(np.float32))

"""Tests of sdk/synthesis.py and export/contact_sheet.py, mostly on real good images."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from export.contact_sheet import GAP, load_category_images, main, sheet_shape, write_contact_sheet
from sdk.synthesis import (ALL_KINDS, MIN_MEAN_CHANGE, MIN_PIXEL_CHANGE, DefectSynthesizer, perlin_mask,
                              perlin_noise, procedural_texture)

DATA_ROOT = Path(os.environ.get("CFRG_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SEEDS = range(4)


@pytest.fixture(scope="module")
def real_root() -> Path:
    if not (DATA_ROOT / "magnetic_tile").is_dir() or not (DATA_ROOT / "ball_screw").is_dir():
        pytest.skip(f"real data not found at {DATA_ROOT} (set CFRG_DATA to its folder)")
    return DATA_ROOT


@pytest.fixture(scope="module")
def tiles(real_root) -> list[np.ndarray]:
    """Grayscale magnetic tiles (3 equal channels), 256x256."""
    return load_category_images(real_root, "magnetic_tile", (256, 256), limit=6)


@pytest.fixture(scope="module")
def screws(real_root) -> list[np.ndarray]:
    """Colour ball screws, 256x256."""
    return load_category_images(real_root, "ball_screw", (256, 256), limit=6)


def is_gray(image: np.ndarray) -> bool:
    return bool((image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all())


def check_sample(image: np.ndarray, out: np.ndarray, mask: np.ndarray, kind: str) -> None:
    """Shapes, a non-empty mask, nothing changed outside it, a visible change inside it."""
    assert out.shape == image.shape and out.dtype == np.uint8
    assert mask.shape == image.shape[:2] and mask.dtype == np.float32
    assert 0 <= mask.min() and mask.max() <= 1
    core = mask >= 0.5
    assert core.sum() >= 4, f"{kind}: empty mask"
    change = np.abs(out.astype(np.int16) - image).max(axis=2)
    assert change[mask == 0].max(initial=0) == 0, f"{kind}: pixels outside the mask changed"
    assert change[core].mean() >= MIN_MEAN_CHANGE, f"{kind}: change inside the mask too faint"
    assert (change[core] >= MIN_PIXEL_CHANGE).mean() >= 0.75, f"{kind}: much of the mask unchanged"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_kind_marks_a_visible_defect_where_the_mask_says(kind, tiles, screws):
    synth = DefectSynthesizer(donor_images=screws[3:], kinds=[kind])
    for i, image in enumerate(tiles[:3] + screws[:3]):
        for seed in SEEDS:
            out, mask, got = synth(image, np.random.default_rng([seed, i]))
            assert got == kind
            check_sample(image, out, mask, kind)


def test_same_seed_gives_identical_bytes(tiles, screws):
    first = DefectSynthesizer(donor_images=screws)
    second = DefectSynthesizer(donor_images=screws)  # a fresh synthesizer, its own texture bank
    for i, image in enumerate(tiles + screws):
        a = first(image, np.random.default_rng(100 + i))
        b = second(image, np.random.default_rng(100 + i))
        c = first(image, np.random.default_rng(100 + i))  # the same one again: no hidden state
        for other in (b, c):
            assert a[2] == other[2]
            assert a[0].tobytes() == other[0].tobytes()
            assert a[1].tobytes() == other[1].tobytes()
    # and different seeds give different samples
    outs = {first(tiles[0], np.random.default_rng(s))[0].tobytes() for s in range(5)}
    assert len(outs) == 5


def test_all_kinds_are_drawn_and_weights_are_respected(tiles):
    rng = np.random.default_rng(0)
    drawn = {DefectSynthesizer()(tiles[0], rng)[2] for _ in range(60)}
    assert drawn == set(ALL_KINDS)
    only = DefectSynthesizer(kind_weights={"scratch": 1.0, "spot": 0.0})
    assert {only(tiles[1], rng)[2] for _ in range(10)} == {"scratch"}


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_grayscale_input_stays_grayscale(kind, tiles):
    assert all(is_gray(t) for t in tiles), "magnetic_tile images are expected grayscale"
    synth = DefectSynthesizer(donor_images=tiles, kinds=[kind])  # grey donors
    colour_donor = DefectSynthesizer(kinds=[kind], donor_images=[procedural_texture((128, 128), np.random.default_rng(1))])
    for seed in SEEDS:
        for s in (synth, colour_donor):
            out, mask, _ = s(tiles[seed], np.random.default_rng(seed))
            assert is_gray(out), f"{kind} put colour into a grayscale image"


def test_colour_images_can_get_colour_changes(screws):
    synth = DefectSynthesizer(kinds=["perlin_texture"])
    tinted = 0
    for seed in range(8):
        out, mask, _ = synth(screws[0], np.random.default_rng(seed))
        d = out.astype(np.int16) - screws[0]
        tinted += int(np.abs(d[..., 0] - d[..., 2])[mask >= 0.5].mean() > 5)
    assert tinted >= 4


@pytest.mark.parametrize("size", [(192, 448), (448, 192), (100, 37)])
def test_non_square_sizes(size, real_root):
    h, w = size
    images = load_category_images(real_root, "ball_screw", (h, w), limit=2)
    images += load_category_images(real_root, "magnetic_tile", (h, w), limit=2)
    for kind in ALL_KINDS:
        synth = DefectSynthesizer(donor_images=images[:1], kinds=[kind])
        for i, image in enumerate(images):
            out, mask, _ = synth(image, np.random.default_rng([7, i]))
            check_sample(image, out, mask, kind)


def test_saturated_flat_and_tiny_images_still_get_a_visible_defect():
    flats = [np.zeros((64, 64, 3), np.uint8), np.full((64, 64, 3), 255, np.uint8), np.full((32, 80, 3), 128, np.uint8),
             np.full((16, 16, 3), 90, np.uint8)]  # the smallest size accepted
    synth = DefectSynthesizer()
    for i, image in enumerate(flats):
        for seed in range(30):
            out, mask, kind = synth(image, np.random.default_rng([seed, i]))
            check_sample(image, out, mask, kind)


def test_texture_dir_is_used(tmp_path, screws):
    red = np.zeros((96, 120, 3), np.uint8)
    red[..., 2] = 255  # BGR on disk: pure red
    cv2.imwrite(str(tmp_path / "red.png"), red)
    cv2.imwrite(str(tmp_path / "red2.jpg"), cv2.resize(red, (300, 200)))
    (tmp_path / "notes.txt").write_text("not an image")
    synth = DefectSynthesizer(texture_dir=str(tmp_path), kinds=["perlin_texture"])
    assert len(synth.textures) == 2
    for seed in SEEDS:
        out, mask, _ = synth(screws[1], np.random.default_rng(seed))
        check_sample(screws[1], out, mask, "perlin_texture")
        core = mask >= 0.5
        red_before = (screws[1][..., 0].astype(int) - screws[1][..., 2])[core].mean()
        red_after = (out[..., 0].astype(int) - out[..., 2])[core].mean()
        assert red_after > red_before + 10, "the red texture did not show inside the mask"


def test_empty_or_missing_texture_dir_gives_a_clear_error(tmp_path):
    (tmp_path / "readme.txt").write_text("no textures here")
    with pytest.raises(ValueError, match="holds no images"):
        DefectSynthesizer(texture_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        DefectSynthesizer(texture_dir=str(tmp_path / "missing"))


def test_bad_arguments_give_clear_errors(tiles):
    with pytest.raises(ValueError, match="unknown or no defect kinds"):
        DefectSynthesizer(kinds=["scratch", "rust"])
    with pytest.raises(ValueError, match="one weight per kind"):
        DefectSynthesizer(kinds=["scratch", "spot"], kind_weights=[1.0])
    with pytest.raises(ValueError, match="uint8 \\(H, W, 3\\)"):
        DefectSynthesizer()(tiles[0].astype(np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8 \\(H, W, 3\\)"):
        DefectSynthesizer()(tiles[0][..., 0], np.random.default_rng(0))
    with pytest.raises(TypeError, match="default_rng"):
        DefectSynthesizer()(tiles[0], 0)


def test_perlin_noise_mask_and_texture_generators():
    rng = np.random.default_rng(0)
    noise = perlin_noise((50, 70), (4, 5), rng)
    assert noise.shape == (50, 70) and noise.dtype == np.float32
    assert -1.5 < noise.min() < -0.1 and 0.1 < noise.max() < 1.5
    assert np.array_equal(noise, perlin_noise((50, 70), (4, 5), np.random.default_rng(0)))
    # smooth: neighbours differ far less than the range
    assert np.abs(np.diff(noise, axis=1)).max() < 0.5
    for _ in range(10):
        mask = perlin_mask((64, 96), rng)
        assert mask.shape == (64, 96) and mask.dtype == np.float32
        assert set(np.unique(mask)) <= {0.0, 1.0} and mask.any()
    kinds_of_texture = set()
    for seed in range(12):
        tex = procedural_texture((40, 60), np.random.default_rng(seed))
        assert tex.shape == (40, 60, 3) and tex.dtype == np.uint8
        assert tex.std() > 3, "a texture should not be flat"
        kinds_of_texture.add(tex.tobytes())
    assert len(kinds_of_texture) == 12


def test_contact_sheet_function_writes_expected_png(tmp_path, tiles, screws):
    images = [cv2.resize(im, (80, 64)) for im in tiles[:2] + screws[:2]]
    out = tmp_path / "sheet.png"
    sheet = write_contact_sheet(images, out, n=6, seed=0, synthesizer=DefectSynthesizer(donor_images=images))
    read = cv2.imread(str(out))
    assert read is not None
    # 6 cells of [sample | mask], 4 per row: 2 rows of 64, 4 cells of 2*80, gaps between
    assert read.shape == (2 * 64 + GAP, 4 * 160 + 3 * GAP, 3) == sheet_shape(6, (64, 80)) + (3,)
    assert np.array_equal(cv2.cvtColor(read, cv2.COLOR_BGR2RGB), sheet)
    # each mask panel holds a non-empty mask
    for i in range(6):
        r, c = divmod(i, 4)
        panel = sheet[r * (64 + GAP):r * (64 + GAP) + 64, c * (160 + GAP) + 80:c * (160 + GAP) + 160]
        assert panel.max() > 127


def test_contact_sheet_command_line(tmp_path, real_root):
    out = tmp_path / "cli.png"
    main(["--data", str(real_root), "--category", "magnetic_tile", "--out", str(out), "--n", "3",
          "--image-size", "96x128", "--seed", "1"])
    read = cv2.imread(str(out))
    assert read is not None and read.shape == sheet_shape(3, (96, 128)) + (3,)

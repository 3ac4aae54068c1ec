"""Tests of sdk/data.py: real data (counts, pixels) and small malformed datasets built in tmp_path."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from sdk.data import AnomalyDataset, DatasetError, Sample, list_categories, read_image, read_mask

DATA_ROOT = Path(os.environ.get("CFRG_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

EXPECTED_COUNTS = {
    "magnetic_tile": (667, {"good": 285, "blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 99}),
    "ball_screw": (482, {"good": 206, "pitting": 167}),
}


@pytest.fixture(scope="module")
def data_root() -> Path:
    if not (DATA_ROOT / "magnetic_tile").is_dir():
        pytest.skip(f"real data not found at {DATA_ROOT} (set CFRG_DATA to its folder)")
    return DATA_ROOT


# ---------------------------------------------------------------- real data


def test_list_categories_real(data_root):
    assert {"magnetic_tile", "ball_screw"} <= set(list_categories(data_root))


@pytest.mark.parametrize("category", sorted(EXPECTED_COUNTS))
def test_real_counts_and_order(data_root, category):
    n_train, test_counts = EXPECTED_COUNTS[category]
    train = AnomalyDataset(data_root, category, "train")
    test = AnomalyDataset(data_root, category, "test")
    assert len(train) == n_train
    assert train.defect_types == ["good"]
    assert all(s.label == 0 and s.mask_path is None for s in train.samples)
    names = [Path(s.path).name for s in train.samples]
    assert names == sorted(names)

    counts = {t: sum(s.defect_type == t for s in test.samples) for t in test.defect_types}
    assert counts == test_counts
    assert test.defect_types == sorted(test_counts)
    keys = [(s.defect_type, Path(s.path).name) for s in test.samples]
    assert keys == sorted(keys)
    for s in test.samples:
        assert s.label == (s.defect_type != "good")
        assert (s.mask_path is None) == (s.defect_type == "good")
        if s.mask_path:
            assert Path(s.mask_path).name == Path(s.path).stem + "_mask.png"
    # train and test images are disjoint
    assert not {Path(s.path).name for s in train.samples} & {Path(s.path).name for s in test.samples}


def test_real_magnetic_tile_pixels(data_root):
    """Grayscale JPEGs of varying size: 3 equal channels, masks binary and of the image size."""
    test = AnomalyDataset(data_root, "magnetic_tile", "test")
    picks = [next(i for i, s in enumerate(test) if s.defect_type == t) for t in test.defect_types]
    shapes = set()
    for i in picks:
        image = test.load_image(i)
        mask = test.load_mask(i)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
        assert set(np.unique(mask)) <= {0, 1}
        if test[i].label == 1:
            assert mask.any(), f"empty mask for {test[i].path}"
        else:
            assert not mask.any()
        shapes.add(image.shape)
    assert len(shapes) > 1  # sizes vary in this category


def test_real_ball_screw_pixels(data_root):
    """Colour JPEGs 1130x460: RGB is BGR reversed, pitting masks binary and of the image size."""
    test = AnomalyDataset(data_root, "ball_screw", "test")
    defect = next(i for i, s in enumerate(test) if s.label == 1)
    good = next(i for i, s in enumerate(test) if s.label == 0)
    rgb = test.load_image(defect)
    bgr = test.load_image(defect, colour="bgr")
    assert rgb.shape == (460, 1130, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, bgr[..., ::-1])
    assert not np.array_equal(rgb[..., 0], rgb[..., 2])  # really colour
    mask = test.load_mask(defect)
    assert mask.shape == (460, 1130) and set(np.unique(mask)) == {0, 1}
    assert test.load_mask(good).shape == (460, 1130) and not test.load_mask(good).any()


def test_real_fingerprint_stable(data_root):
    a = AnomalyDataset(data_root, "ball_screw", "train").fingerprint()
    b = AnomalyDataset(str(data_root) + "/", "ball_screw", "train").fingerprint()
    assert a == b and len(a) == 64
    assert a != AnomalyDataset(data_root, "ball_screw", "test").fingerprint()
    assert a != AnomalyDataset(data_root, "magnetic_tile", "train").fingerprint()


# ---------------------------------------------------------------- synthetic datasets


def _image(h=32, w=48, colour=True) -> np.ndarray:
    rng = np.random.default_rng(h * 1000 + w)
    return rng.integers(0, 256, (h, w, 3) if colour else (h, w), dtype=np.uint8)


def _mask(h=32, w=48, value=255) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[4:12, 8:20] = value
    return m


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array), path
    return path


def make_dataset(root: Path, category="cat", mask_style="mvtec", ext=".png") -> Path:
    """A tiny valid dataset: 3 train images, 2 good + 2 'scratch' test images with masks."""
    base = root / category
    for n in range(3):
        _write(base / "train" / "good" / f"{n:03d}{ext}", _image())
    for n in range(2):
        _write(base / "test" / "good" / f"{n:03d}{ext}", _image())
        _write(base / "test" / "scratch" / f"{n:03d}{ext}", _image())
        mask_name = f"{n:03d}_mask.png" if mask_style == "mvtec" else f"{n:03d}.png"
        _write(base / "ground_truth" / "scratch" / mask_name, _mask())
    return root


def test_synthetic_valid_ignores_hidden_and_non_images(tmp_path):
    root = make_dataset(tmp_path)
    good = root / "cat" / "train" / "good"
    (good / ".DS_Store").write_bytes(b"\0\0")
    _write(good / ".hidden.png", _image())
    (good / "LICENSE").write_text("text")
    (good / "notes.txt").write_text("text")
    (root / "cat" / "test" / ".cache").mkdir()
    _write(root / "cat" / "test" / ".cache" / "x.png", _image())
    train = AnomalyDataset(root, "cat", "train")
    assert [Path(s.path).name for s in train.samples] == ["000.png", "001.png", "002.png"]
    test = AnomalyDataset(root, "cat", "test")
    assert test.defect_types == ["good", "scratch"]
    assert [(s.defect_type, Path(s.path).name, s.label) for s in test.samples] == [
        ("good", "000.png", 0), ("good", "001.png", 0), ("scratch", "000.png", 1), ("scratch", "001.png", 1)]
    assert isinstance(test[2], Sample) and test[2].mask_path.endswith("000_mask.png")
    assert list_categories(root) == ["cat"]


def test_3cad_mask_naming(tmp_path):
    root = make_dataset(tmp_path, mask_style="3cad")
    test = AnomalyDataset(root, "cat", "test")
    defects = [s for s in test.samples if s.label == 1]
    assert [Path(s.mask_path).name for s in defects] == ["000.png", "001.png"]
    i = test.samples.index(defects[0])
    assert test.load_mask(i).sum() == 8 * 12


@pytest.mark.parametrize("ext", [".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".PNG", ".JPG"])
def test_image_extensions(tmp_path, ext):
    root = make_dataset(tmp_path, ext=ext)
    train = AnomalyDataset(root, "cat", "train")
    assert len(train) == 3 and train.load_image(0).shape == (32, 48, 3)
    test = AnomalyDataset(root, "cat", "test")
    assert len(test) == 4 and test.load_mask(3).shape == (32, 48)


def test_grayscale_vs_colour(tmp_path):
    gray = _image(colour=False)
    colour = _image()
    read_gray = read_image(_write(tmp_path / "g.png", gray))
    assert read_gray.shape == (32, 48, 3) and all(np.array_equal(read_gray[..., c], gray) for c in range(3))
    assert np.array_equal(read_image(_write(tmp_path / "c.png", colour), "bgr"), colour)
    assert np.array_equal(read_image(tmp_path / "c.png", "rgb"), colour[..., ::-1])
    bgra = np.dstack([colour, np.full(colour.shape[:2], 7, np.uint8)])
    assert np.array_equal(read_image(_write(tmp_path / "a.png", bgra), "bgr"), colour)  # alpha dropped
    with pytest.raises(DatasetError, match="'bgr' or 'rgb'"):
        read_image(tmp_path / "c.png", "hsv")


def test_16bit_png_converted(tmp_path):
    ramp16 = (np.arange(32 * 48, dtype=np.uint32).reshape(32, 48) * 43).astype(np.uint16)
    ramp16[0, 0], ramp16[0, 1] = 0, 65535
    image = read_image(_write(tmp_path / "deep.png", ramp16))
    assert image.dtype == np.uint8 and image.shape == (32, 48, 3)
    assert image[0, 0, 0] == 0 and image[0, 1, 0] == 255
    assert np.array_equal(image[..., 0], np.round(ramp16 / 257.0).astype(np.uint8))
    colour16 = np.stack([ramp16, ramp16 // 2, ramp16 // 4], axis=2)
    assert np.array_equal(read_image(_write(tmp_path / "deep_c.png", colour16), "bgr"),
                          np.round(colour16 / 257.0).astype(np.uint8))


@pytest.mark.parametrize("kind", ["0_255", "0_1", "antialiased", "colour", "16bit", "16bit_0_255"])
def test_mask_value_rules(tmp_path, kind):
    m = _mask(value=255)
    expected = (m > 0).astype(np.uint8)
    if kind == "0_1":
        m = expected.copy()
    elif kind == "antialiased":  # soft edge: 100 stays background, 200 is defect
        m[3, 8:20], m[12, 8:20] = 100, 200
        expected[12, 8:20] = 1
    elif kind == "colour":
        m = np.dstack([np.zeros_like(m), np.zeros_like(m), m])
    elif kind == "16bit":
        m = m.astype(np.uint16) * 257
    elif kind == "16bit_0_255":  # 8-bit values saved in a 16-bit file
        m = m.astype(np.uint16)
    out = read_mask(_write(tmp_path / "m.png", m), expected_shape=(32, 48, 3))
    assert out.dtype == np.uint8 and np.array_equal(out, expected)


# ---------------------------------------------------------------- error cases


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="does not exist") as err:
        AnomalyDataset(tmp_path / "nowhere", "cat", "train")
    assert "nowhere" in str(err.value)
    with pytest.raises(DatasetError, match="nowhere"):
        list_categories(tmp_path / "nowhere")


def test_missing_category_lists_existing(tmp_path):
    root = make_dataset(tmp_path, category="bottle")
    make_dataset(tmp_path, category="screw")
    with pytest.raises(DatasetError) as err:
        AnomalyDataset(root, "capsule", "train")
    message = str(err.value)
    assert "capsule" in message and "bottle, screw" in message


def test_bad_split(tmp_path):
    with pytest.raises(DatasetError, match="split"):
        AnomalyDataset(make_dataset(tmp_path), "cat", "val")


@pytest.mark.parametrize("removed, split, words", [
    ("train/good", "train", "training folder"),
    ("test", "test", "test folder"),
    ("ground_truth/scratch", "test", "mask folder"),
])
def test_missing_folder(tmp_path, removed, split, words):
    root = make_dataset(tmp_path)
    shutil.rmtree(root / "cat" / removed)
    with pytest.raises(DatasetError, match=f"{words} .* does not exist") as err:
        AnomalyDataset(root, "cat", split)
    assert str(root / "cat" / removed) in str(err.value)


def test_empty_train_good(tmp_path):
    root = make_dataset(tmp_path)
    good = root / "cat" / "train" / "good"
    for p in good.iterdir():
        p.unlink()
    (good / "README.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="holds no images") as err:
        AnomalyDataset(root, "cat", "train")
    assert str(good) in str(err.value)


@pytest.mark.parametrize("mask_style", ["mvtec", "3cad"])
def test_defect_image_without_mask(tmp_path, mask_style):
    root = make_dataset(tmp_path, mask_style=mask_style)
    gt = root / "cat" / "ground_truth" / "scratch"
    (gt / ("001_mask.png" if mask_style == "mvtec" else "001.png")).unlink()
    with pytest.raises(DatasetError, match="no mask") as err:
        AnomalyDataset(root, "cat", "test")
    message = str(err.value)
    assert str(root / "cat" / "test" / "scratch" / "001.png") in message
    assert str(gt / "001_mask.png") in message and str(gt / "001.png") in message  # names looked for
    assert "000.png (" not in message  # the image that has its mask is not blamed


def test_mask_size_mismatch(tmp_path):
    root = make_dataset(tmp_path)
    bad_mask = _write(root / "cat" / "ground_truth" / "scratch" / "001_mask.png", _mask(h=30, w=40))
    test = AnomalyDataset(root, "cat", "test")  # the scan reads no pixels
    i = next(i for i, s in enumerate(test) if s.mask_path == str(bad_mask))
    with pytest.raises(DatasetError) as err:
        test.load_mask(i)
    message = str(err.value)
    assert str(bad_mask) in message and test[i].path in message
    assert "40x30" in message and "48x32" in message
    with pytest.raises(DatasetError, match="40x30"):
        read_mask(bad_mask, expected_shape=(32, 48))


@pytest.mark.parametrize("content", ["garbage", "empty", "truncated_jpg", "truncated_png"])
def test_corrupt_image(tmp_path, content):
    ext = ".jpg" if content == "truncated_jpg" else ".png"
    path = tmp_path / f"broken{ext}"
    if content == "garbage":
        path.write_bytes(b"this is not an image" * 10)
    elif content == "empty":
        path.write_bytes(b"")
    else:
        full = cv2.imencode(ext, _image(h=120, w=160))[1].tobytes()
        path.write_bytes(full[: len(full) // 2])
    with pytest.raises(DatasetError) as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_corrupt_image_in_dataset(tmp_path):
    root = make_dataset(tmp_path)
    broken = root / "cat" / "train" / "good" / "001.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    train = AnomalyDataset(root, "cat", "train")
    train.load_image(0)
    with pytest.raises(DatasetError, match="cannot decode") as err:
        train.load_image(1)
    assert str(broken) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist") as err:
        read_image(tmp_path / "gone.png")
    assert "gone.png" in str(err.value)


def test_fingerprint_tracks_files_not_mtimes(tmp_path):
    root_a = make_dataset(tmp_path / "a")
    root_b = tmp_path / "b"
    shutil.copytree(root_a, root_b)  # another machine: other absolute path, other mtimes
    first = root_b / "cat" / "train" / "good" / "000.png"
    os.utime(first, (1_000_000, 1_000_000))
    fp_a = AnomalyDataset(root_a, "cat", "train").fingerprint()
    assert AnomalyDataset(root_b, "cat", "train").fingerprint() == fp_a
    _write(first, _image(h=40))  # content of another size
    assert AnomalyDataset(root_b, "cat", "train").fingerprint() != fp_a
    # test split covers masks too
    test_fp = AnomalyDataset(root_a, "cat", "test").fingerprint()
    _write(root_a / "cat" / "ground_truth" / "scratch" / "000_mask.png", _mask(h=40))
    assert AnomalyDataset(root_a, "cat", "test").fingerprint() != test_fp

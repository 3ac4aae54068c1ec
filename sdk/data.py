"""Dataset reader for the MVTec AD / 3CAD folder layout (numpy + opencv only).

Layout::

    <root>/<category>/train/good/*                    defect-free training images
    <root>/<category>/test/<type>/*                   test images, <type> "good" or a defect name
    <root>/<category>/ground_truth/<type>/<mask>      one mask per defective test image

A mask for image ``<stem>.<ext>`` is ``<stem>_mask.png`` (MVTec AD) or ``<stem>.png`` (3CAD's
release); the first one found wins. "good" test images have no masks.

Rules:
- Images: .png .jpg .jpeg .bmp .tif .tiff .webp (any case). Hidden files (".*") and other files are
  ignored. Order is deterministic: train by file name, test by (defect type, file name).
- Pixels: uint8 HxWx3, RGB (default) or BGR. Grayscale is replicated to 3 channels, alpha is
  dropped, 16-bit is scaled to 8-bit over the full range (round(v / 257)). EXIF orientation is
  ignored so that images and masks stay pixel-aligned.
- Masks: uint8 HxW in {0, 1}. Colour masks take the maximum over their colour channels. A mask
  whose values are all 0 or 1 is used as is; otherwise a pixel is defective when its 8-bit value
  is > 127 (16-bit masks with values above 255: > 32767), which handles 0/255 and anti-aliased
  masks.
"""
from __future__ import annotations

import hashlib
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .files import IMAGE_EXTENSIONS, image_files
from .checks import check_colour, older_spellings

SPLITS = ("train", "test")
GOOD = "good"
_FINGERPRINT_VERSION = b"cfrg-dataset-fingerprint-v1\n"
_JPEG_TAIL_BYTES = 4096  # where a complete JPEG's end-of-image marker must lie


class DatasetError(ValueError):
    """A dataset file or folder is missing or malformed; the message says which and how to fix it."""


@dataclass(frozen=True)
class Sample:
    path: str
    label: int  # 0 good, 1 defect
    defect_type: str  # "good" for good samples
    mask_path: str | None  # None for good samples


def _is_visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _subfolders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and _is_visible(p)), key=lambda p: p.name)


def _read_raw(path: str | os.PathLike) -> np.ndarray:
    """Decode a file as stored (depth and channels unchanged); DatasetError if it cannot be read."""
    p = Path(path)
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise DatasetError(f"{p}: {what}; check the path")
    data = np.fromfile(p, dtype=np.uint8)  # fromfile + imdecode also works with non-ASCII paths
    if data.size == 0:
        raise DatasetError(f"{p}: file is empty (0 bytes); replace it with a valid image or delete it")
    # Older OpenCV returns a half-grey picture for a truncated JPEG: require the end-of-image marker.
    if data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in data[-_JPEG_TAIL_BYTES:].tobytes():
        raise DatasetError(f"{p}: JPEG is truncated (no end-of-image marker); copy the file again")
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise DatasetError(f"{p}: cannot decode the image ({exc}); the file is corrupt or not an image") from exc
    if image is None or image.size == 0:
        raise DatasetError(
            f"{p}: cannot decode the image; the file is corrupt, truncated or not a "
            f"{'/'.join(IMAGE_EXTENSIONS)} image; re-export or delete it"
        )
    return image


def _to_uint8(image: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:  # full-range scaling: 65535 -> 255, rounded
        return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise DatasetError(
        f"{path}: unsupported pixel type {image.dtype}; save the image as 8-bit or 16-bit unsigned"
    )


@older_spellings(color="colour")
def read_image(path: str | os.PathLike, colour: str = "rgb") -> np.ndarray:
    """Read an image as uint8 HxWx3 in RGB or BGR order (see module docstring for the rules)."""
    try:
        order = check_colour(colour)
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
    image = _to_uint8(_read_raw(path), path)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise DatasetError(
            f"{path}: unsupported image shape {image.shape}; expected grayscale, BGR or BGRA"
        )
    code = {("rgb", 3): cv2.COLOR_BGR2RGB, ("rgb", 4): cv2.COLOR_BGRA2RGB, ("bgr", 4): cv2.COLOR_BGRA2BGR}
    key = (order, image.shape[2])
    return cv2.cvtColor(image, code[key]) if key in code else np.ascontiguousarray(image)


def read_mask(path: str | os.PathLike, expected_shape: Sequence[int] | None = None) -> np.ndarray:
    """Read a mask as uint8 HxW in {0, 1}; expected_shape (H, W[, C]) is checked when given."""
    mask = _read_raw(path)
    if mask.ndim == 3:  # colour mask: drop alpha, any lit colour channel marks a defect
        mask = mask[:, :, : min(mask.shape[2], 3)].max(axis=2)
    if mask.dtype not in (np.uint8, np.uint16):
        raise DatasetError(f"{path}: unsupported mask pixel type {mask.dtype}; save masks as 8-bit PNG")
    peak = int(mask.max(initial=0))
    if peak > 1:  # 0/255, anti-aliased or 16-bit: threshold at half range
        mask = mask > (32767 if peak > 255 else 127)
    mask = mask.astype(np.uint8)
    if expected_shape is not None and tuple(mask.shape) != tuple(expected_shape[:2]):
        h, w = expected_shape[:2]
        raise DatasetError(
            f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image is {w}x{h}; "
            f"resize the mask to the image size (nearest neighbour) or fix the pairing"
        )
    return mask


def _categories(root: Path) -> list[str]:
    return [p.name for p in _subfolders(root) if (p / "train").is_dir() or (p / "test").is_dir()]


def list_categories(root: str | os.PathLike) -> list[str]:
    """Sorted names of the category folders under root (those holding a train/ or test/ folder)."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise DatasetError(f"dataset root {root_path} does not exist or is not a folder; check the path")
    return _categories(root_path)


def _mask_candidates(image: Path) -> tuple[str, str]:
    return (f"{image.stem}_mask.png", f"{image.stem}.png")


class AnomalyDataset:
    """One split of one category. Scans and validates file names eagerly; pixels load on demand."""

    def __init__(self, root: str | os.PathLike, category: str, split: str):
        if split not in SPLITS:
            raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root).expanduser().absolute()
        self.category = category
        self.split = split
        if not self.root.is_dir():
            raise DatasetError(f"dataset root {self.root} does not exist or is not a folder; check the path")
        self.category_dir = self.root / category
        if not self.category_dir.is_dir():
            found = ", ".join(_categories(self.root)) or "none"
            raise DatasetError(
                f"category folder {self.category_dir} does not exist; categories under {self.root}: {found}"
            )
        self.samples: list[Sample] = self._scan_train() if split == "train" else self._scan_test()
        self._image_shapes: dict[int, tuple[int, int]] = {}  # (H, W) of images already decoded

    def _scan_train(self) -> list[Sample]:
        good_dir = self.category_dir / "train" / GOOD
        if not good_dir.is_dir():
            raise DatasetError(
                f"training folder {good_dir} does not exist; put the defect-free training images there"
            )
        files = image_files(good_dir)
        if not files:
            raise DatasetError(
                f"training folder {good_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                f"put the defect-free training images there"
            )
        return [Sample(str(p), 0, GOOD, None) for p in files]

    def _scan_test(self) -> list[Sample]:
        test_dir = self.category_dir / "test"
        if not test_dir.is_dir():
            raise DatasetError(
                f"test folder {test_dir} does not exist; expected test/good and test/<defect type> folders"
            )
        samples: list[Sample] = []
        for type_dir in _subfolders(test_dir):
            defect_type = type_dir.name
            files = image_files(type_dir)
            if defect_type == GOOD:
                samples += [Sample(str(p), 0, GOOD, None) for p in files]
            elif files:
                samples += self._pair_masks(defect_type, files)
        if not samples:
            raise DatasetError(f"test folder {test_dir} holds no images in its type folders (good, <defect>)")
        return samples

    def _pair_masks(self, defect_type: str, files: list[Path]) -> list[Sample]:
        gt_dir = self.category_dir / "ground_truth" / defect_type
        if not gt_dir.is_dir():
            raise DatasetError(
                f"mask folder {gt_dir} does not exist, but test/{defect_type} holds {len(files)} images; "
                f"add a mask <stem>_mask.png or <stem>.png per image there"
            )
        by_name = {p.name.lower(): p for p in gt_dir.iterdir() if _is_visible(p) and p.is_file()}
        samples, missing = [], []
        for image in files:
            names = _mask_candidates(image)
            mask = next((by_name[n.lower()] for n in names if n.lower() in by_name), None)
            if mask is None:
                missing.append(f"{image} (looked for {' or '.join(str(gt_dir / n) for n in names)})")
            else:
                samples.append(Sample(str(image), 1, defect_type, str(mask)))
        if missing:
            shown = "\n  ".join(missing[:5]) + ("\n  ..." if len(missing) > 5 else "")
            raise DatasetError(
                f"{len(missing)} defect image(s) in test/{defect_type} have no mask:\n  {shown}\n"
                f"add the masks (MVTec AD: <stem>_mask.png, 3CAD: <stem>.png) or move the images out"
            )
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    @property
    def defect_types(self) -> list[str]:
        return sorted({s.defect_type for s in self.samples})

    @older_spellings(color="colour")
    def load_image(self, i: int, colour: str = "rgb") -> np.ndarray:
        image = read_image(self.samples[i].path, colour)
        self._image_shapes[i] = image.shape[:2]
        return image

    def _image_shape(self, i: int) -> tuple[int, int]:
        if i not in self._image_shapes:
            self.load_image(i)
        return self._image_shapes[i]

    def load_mask(self, i: int) -> np.ndarray:
        """uint8 HxW in {0, 1}; zeros for good samples; the mask must have its image's size."""
        sample = self.samples[i]
        shape = self._image_shape(i)
        if sample.mask_path is None:
            return np.zeros(shape, np.uint8)
        try:
            return read_mask(sample.mask_path, shape)
        except DatasetError as exc:
            raise DatasetError(f"{exc} (image: {sample.path})") from exc

    def files(self) -> list[Path]:
        """Every file the split uses: its images, and for the test split its masks."""
        paths = [Path(s.path) for s in self.samples]
        return paths + [Path(s.mask_path) for s in self.samples if s.mask_path]

    def fingerprint(self) -> str:
        """sha256 over (path relative to root, byte size) of the split's files; no mtimes, so it is
        stable across machines and copies. Paths use "/" and Unicode NFC."""
        digest = hashlib.sha256(_FINGERPRINT_VERSION)
        entries = []
        for p in self.files():
            rel = unicodedata.normalize("NFC", p.relative_to(self.root).as_posix())
            try:
                size = p.stat().st_size
            except OSError as exc:
                raise DatasetError(f"{p}: cannot read the file size ({exc}); was it removed after the scan?") from exc
            entries.append(f"{rel}\t{size}\n")
        for entry in sorted(entries):
            digest.update(entry.encode("utf-8"))
        return digest.hexdigest()

    def __repr__(self) -> str:
        return f"AnomalyDataset({str(self.root)!r}, {self.category!r}, {self.split!r}, {len(self)} samples)"

"""Contact sheet of synthetic defects: each sample beside its mask, labelled with its kind.

    python -m export.contact_sheet --data ROOT --category NAME --out sheet.png [--n 24] [--seed 0]
        [--image-size 256] [--texture-dir DIR]

For eyeballing what DefectSynthesizer teaches the model. Images are RGB throughout.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from sdk.data import AnomalyDataset
from sdk.evaluate import spread_indices
from sdk.files import atomic_output

from sdk.synthesis import DefectSynthesizer

SHEET_COLUMNS = 4  # sample+mask pairs per row
GAP = 4  # pixels between cells
MAX_SOURCE_IMAGES = 64  # images read from a dataset (evenly spaced): enough for samples and donors


def sheet_shape(n: int, cell_hw: tuple[int, int], columns: int = SHEET_COLUMNS) -> tuple[int, int]:
    """(height, width) of the sheet: n cells of [sample | mask], `columns` cells per row."""
    ch, cw = cell_hw
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    return rows * ch + (rows - 1) * GAP, cols * 2 * cw + (cols - 1) * GAP


def _label(tile: np.ndarray, text: str) -> None:
    scale = max(0.35, tile.shape[1] / 640)
    org = (4, int(14 * scale / 0.45))
    for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):  # dark outline, same glyph advance as the text
        cv2.putText(tile, text, (org[0] + dx, org[1] + dy), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(tile, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 0), 1, cv2.LINE_AA)


def write_contact_sheet(images: Sequence[np.ndarray], out_path: str | Path, n: int = 24, seed: int = 0,
                        synthesizer: DefectSynthesizer | None = None, columns: int = SHEET_COLUMNS) -> np.ndarray:
    """Draws n samples (image i % len(images), rng seeded with (seed, i)) and writes a PNG.

    Every cell has the size of images[0]. Returns the sheet (uint8 RGB).
    """
    if not len(images):
        raise ValueError("write_contact_sheet: no images given")
    if n < 1:
        raise ValueError(f"write_contact_sheet: n must be >= 1, got {n}")
    synthesizer = synthesizer or DefectSynthesizer()
    ch, cw = images[0].shape[:2]
    sheet = np.full(sheet_shape(n, (ch, cw), columns) + (3,), 40, np.uint8)
    cols = min(columns, n)
    for i in range(n):
        image = images[i % len(images)]
        if image.shape[:2] != (ch, cw):
            image = cv2.resize(image, (cw, ch), interpolation=cv2.INTER_AREA)
        augmented, mask, kind = synthesizer(image, np.random.default_rng([seed, i]))
        tile = augmented.copy()
        _label(tile, f"{i}:{kind}")
        mask_rgb = np.repeat(np.rint(mask * 255).astype(np.uint8)[..., None], 3, axis=2)
        r, c = divmod(i, cols)
        y, x = r * (ch + GAP), c * (2 * cw + GAP)
        sheet[y:y + ch, x:x + cw] = tile
        sheet[y:y + ch, x + cw:x + 2 * cw] = mask_rgb
    out_path = Path(out_path)
    with atomic_output(out_path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {out_path}: check the folder is writable and the name ends in .png")
    return sheet


def _parse_size(text: str) -> tuple[int, int]:
    """'256' -> (256, 256); '192x448' -> (192, 448) as (height, width)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 16:
        raise argparse.ArgumentTypeError(f"--image-size {text!r}: give N or HxW, each >= 16 (e.g. 256 or 192x448)")
    return (values[0], values[-1])


def load_category_images(root: str | Path, category: str, size: tuple[int, int],
                         limit: int = MAX_SOURCE_IMAGES) -> list[np.ndarray]:
    """Up to `limit` good training images (evenly spaced in sorted order), RGB, resized to size (h, w)."""
    dataset = AnomalyDataset(root, category, "train")
    count = len(dataset)
    if count == 0:
        raise FileNotFoundError(f"no training images for {category!r} under {root}: expected "
                                f"<root>/{category}/train/good/*.png|jpg")
    h, w = size
    return [cv2.resize(dataset.load_image(i), (w, h), interpolation=cv2.INTER_AREA)
            for i in spread_indices(count, limit)]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m export.contact_sheet", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="dataset root (MVTec AD layout)")
    p.add_argument("--category", required=True)
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--n", type=int, default=24, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=_parse_size, default=(256, 256), help="N or HxW")
    p.add_argument("--texture-dir", help="folder of texture images (default: procedural textures)")
    p.add_argument("--kinds", help="comma-separated defect kinds (default: all)")
    args = p.parse_args(argv)
    images = load_category_images(args.data, args.category, args.image_size)
    kinds = tuple(k.strip() for k in args.kinds.split(",")) if args.kinds else None
    synth = DefectSynthesizer(donor_images=images, texture_dir=args.texture_dir,
                              **({"kinds": kinds} if kinds else {}))
    # samples drawn from a spread of the loaded images
    order = np.random.default_rng(args.seed).permutation(len(images))
    write_contact_sheet([images[i] for i in order], args.out, args.n, args.seed, synth)
    print(f"wrote {args.out}: {args.n} samples of {args.category} at {args.image_size[0]}x{args.image_size[1]}")


if __name__ == "__main__":
    main()

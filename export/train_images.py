"""The good training images: which are held back for the thresholds, whether there are enough, loading them."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from sdk.data import AnomalyDataset
from sdk.evaluate import resize_for_model


def split_holdout(n: int, fraction: float) -> tuple[list[int], list[int]]:
    """Deterministic split: every k-th good image is held back (k = round(1 / fraction))."""
    if fraction <= 0:
        return list(range(n)), []
    train, held = _split(n, fraction)
    if len(train) < MIN_FIT_IMAGES:
        raise ValueError(f"only {n} good training images: too few to hold back {fraction:.0%}; use --holdout 0")
    return train, held


MIN_FIT_IMAGES = 2  # the map's and the global branch's statistics need two good images to have a spread


def minimum_training_images(holdout: float) -> int:
    """The fewest good images that leave MIN_FIT_IMAGES to fit on and, with --holdout > 0, one held back."""
    n = MIN_FIT_IMAGES
    while True:
        train, held = (list(range(n)), []) if holdout <= 0 else _split(n, holdout)
        if len(train) >= MIN_FIT_IMAGES and (holdout <= 0 or held):
            return n
        n += 1


def _holdout_every(fraction: float) -> int:
    """Every k-th good image is held back."""
    return max(2, int(round(1 / fraction)))


def _split(n: int, fraction: float) -> tuple[list[int], list[int]]:
    k = _holdout_every(fraction)
    return [i for i in range(n) if i % k != k - 1], [i for i in range(n) if i % k == k - 1]


def check_training_size(n: int, holdout: float, folder) -> None:
    """Refuse, before any work, a training set too small for every step after it (statistics, thresholds)."""
    need = minimum_training_images(holdout)
    if n < need:
        from sdk.data import DatasetError

        held = "" if holdout <= 0 else f", and one in {_holdout_every(holdout)} held back for the thresholds"
        raise DatasetError(f"{folder} holds {n} good image(s); training needs at least {need} ({MIN_FIT_IMAGES} to "
                           f"fit the statistics on{held}): add good images" + (
                               "" if holdout <= 0 else f", or use --holdout 0 with {MIN_FIT_IMAGES} (the export "
                                                       f"then needs --good-dir with good images)"))


def load_train_images(dataset: AnomalyDataset, size: Sequence[int], progress: bool,
                      index: Sequence[int] | None = None) -> np.ndarray:
    from sdk.progress import progress_bar
    index = range(len(dataset)) if index is None else index
    imgs = [resize_for_model(dataset.load_image(i, colour="rgb"), size)
            for i in progress_bar(index, desc="load train", unit="img", disable=not progress, leave=False)]
    return np.stack(imgs)


def load_scaled_images(dataset: AnomalyDataset, plan, progress: bool, index: Sequence[int]) -> list[np.ndarray]:
    """The good images at the scale of a model trained on tiles (an sdk.tiling.TilePlan), each at its own size, the
    pixels the Detector's tiles are cut from."""
    from sdk.progress import progress_bar
    out = []
    for i in progress_bar(index, desc="load train", unit="img", disable=not progress, leave=False):
        image = dataset.load_image(i, colour="rgb")
        out.append(resize_for_model(image, plan.scaled_size(image.shape[:2])[0]))
    return out


def grid_tiles(scaled_images: Sequence[np.ndarray], plan) -> np.ndarray:
    """Every tile of every scaled image, as the Detector cuts them (uint8 (N, th, tw, 3)): what the statistics
    after training are fitted on, so that they hold for a tile at any place."""
    return np.concatenate([plan.tiles_of(image)[0] for image in scaled_images])


def good_images(dataset: AnomalyDataset, size: Sequence[int], plan, progress: bool, train_idx: Sequence[int],
                holdout_idx: Sequence[int], holdout: bool = True):
    """(what the statistics are fitted on, the held-back good images for their z-scores (None when none are held
    back or `holdout` is False), the training images at the training scale (None for whole frames)): for whole
    frames, the images at `size`; for a model trained on tiles (`plan`), every tile of them."""
    if plan is None:
        images = load_train_images(dataset, size, progress, train_idx)
        return images, (load_train_images(dataset, size, False, holdout_idx) if holdout_idx and holdout else None), None
    scaled = load_scaled_images(dataset, plan, progress, train_idx)
    held = (grid_tiles(load_scaled_images(dataset, plan, False, holdout_idx), plan)
            if holdout_idx and holdout else None)
    return grid_tiles(scaled, plan), held, scaled

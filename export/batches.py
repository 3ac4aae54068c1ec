"""Synthetic training batches (defects drawn on good images, optionally flipped, made in a background thread),
the teacher's features they need, and the losses of one step."""
from __future__ import annotations

import queue
import threading

import numpy as np
import torch
import torch.nn.functional as F

from sdk.synthesis import DefectSynthesizer

from .blocks import cos_distance
from .model import CFRG, to_tensor


def focal_loss(logit: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
    p = torch.sigmoid(logit)
    pt = p * target + (1 - p) * (1 - target)
    return ((1 - pt) ** gamma * bce).mean()


def dice_loss(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logit)
    inter = (p * target).flatten(1).sum(1)
    denom = (p + target).flatten(1).sum(1)
    has = target.flatten(1).amax(1) > 0
    if not has.any():
        return logit.new_zeros(())
    return (1 - (2 * inter + 1) / (denom + 1))[has].mean()


def cfrg_losses(model: CFRG, x: torch.Tensor, t_clean: list[torch.Tensor], mask: torch.Tensor,
                t_in: list[torch.Tensor] | None = None) -> dict:
    """Distillation, recovery and segmentation losses for a synthetic batch.

    Student and recovery both aim at the teacher's features of the clean image: on normal
    pixels that pulls them onto the teacher, on defect pixels it pushes them away from the
    teacher's (anomalous) features of the input. `t_in`: the teacher's features of x, if known.
    """
    t_in = model.teacher_features(x) if t_in is None else t_in
    out = model.heads(x, t_in)
    losses = {"student": sum(cos_distance(s, t).mean() for s, t in zip(out["student"], t_clean)) / 3}
    if model.recovery is not None:
        losses["recovery"] = sum(cos_distance(r, t).mean() for r, t in zip(out["recovery"], t_clean)) / 3
    if model.seg is not None:
        logit = out["seg_logit"]
        target = F.adaptive_avg_pool2d(mask, logit.shape[-2:]).clamp_(0, 1)
        losses["seg"] = 5.0 * focal_loss(logit, target) + dice_loss(logit, target)
    losses["total"] = sum(losses.values())
    return losses


def flip_image(image: np.ndarray, code: int) -> np.ndarray:
    """code bit 0: mirrored left-right; bit 1: upside down."""
    if code & 1:
        image = image[:, ::-1]
    if code & 2:
        image = image[::-1]
    return np.ascontiguousarray(image)


def flipped_images(images: np.ndarray, idx: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """images[idx], each flipped by its code (flip_image)."""
    return np.stack([flip_image(images[i], f) for i, f in zip(idx, flips)])


@torch.no_grad()
def batch_teacher_features(teacher: torch.nn.Module, model: CFRG, x: torch.Tensor, known: list[torch.Tensor],
                           fresh: torch.Tensor) -> list[torch.Tensor]:
    """The teacher's features of batch x: `known` where `fresh` (a boolean per image) is False, computed by
    `teacher` (model.teacher or a BatchNorm-folded copy) where it is True."""
    if not bool(fresh.any()):
        return known
    computed = teacher(model.normalise(x[fresh]))
    out = [k.clone() for k in known]
    for o, f in zip(out, computed):
        o[fresh] = f
    return out


def step_inputs(teacher: torch.nn.Module, model: CFRG, images: np.ndarray, cache: list[torch.Tensor],
                idx: np.ndarray, xs: np.ndarray, masks: np.ndarray, flips: np.ndarray,
                clean: np.ndarray | None = None) -> tuple:
    """cfrg_losses' (x, t_clean, mask, t_in) for a BatchMaker batch. `teacher` runs only where the cache of
    clean features cannot serve: the flipped clean images, and the images with a defect. A CropBatchMaker batch
    brings its `clean` crops, whose features the teacher computes (no cache holds crops at random places)."""
    x, mask = to_tensor(xs), torch.from_numpy(masks)
    if clean is not None:
        with torch.no_grad():
            t_clean = teacher(model.normalise(to_tensor(clean)))
        return x, t_clean, mask, batch_teacher_features(teacher, model, x, t_clean, mask.flatten(1).amax(1) > 0)
    t_clean = [c[torch.from_numpy(idx)].to(torch.float32, memory_format=torch.channels_last) for c in cache]
    if flips.any():
        t_clean = batch_teacher_features(teacher, model, to_tensor(flipped_images(images, idx, flips)), t_clean,
                                         torch.from_numpy(flips != 0))
    t_in = batch_teacher_features(teacher, model, x, t_clean, mask.flatten(1).amax(1) > 0)
    return x, t_clean, mask, t_in


class BatchMaker:
    """Synthetic batches made in a background thread; batch k depends only on (seed, k).

    Each batch is (image indices, images with any synthetic defects, masks, flip codes): with `flip`, three
    in four images are flipped (flip_image) before a defect is drawn on them."""

    def __init__(self, images: np.ndarray, synth: DefectSynthesizer, batch_size: int, anomaly_prob: float,
                 seed: int, start_step: int = 0, prefetch: int = 3, flip: bool = False):
        self.images, self.synth, self.bs, self.p, self.seed = images, synth, batch_size, anomaly_prob, seed
        self.flip = flip
        self.q: queue.Queue = queue.Queue(maxsize=prefetch)
        self.step = start_step
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def make(self, step: int):
        rng = np.random.default_rng([self.seed, step])
        idx = rng.integers(0, len(self.images), self.bs)
        h, w = self.images.shape[1:3]
        xs = np.empty((self.bs, h, w, 3), np.uint8)
        masks = np.zeros((self.bs, 1, h, w), np.float32)
        flips = rng.integers(0, 4, self.bs) if self.flip else np.zeros(self.bs, np.int64)
        for j, i in enumerate(idx):
            image = flip_image(self.images[i], flips[j]) if flips[j] else self.images[i]
            if rng.random() < self.p:
                xs[j], masks[j, 0], _ = self.synth(image, rng)
            else:
                xs[j] = image
        return idx, xs, masks, flips

    def _run(self):
        step = self.step
        while not self.stop.is_set():
            try:
                item = self.make(step)
            except Exception as exc:  # noqa: BLE001 - handed to next(), else the training loop waits forever
                item = exc
            while not self.stop.is_set():
                try:
                    self.q.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return
            step += 1

    def next(self):
        item = self.q.get()
        if isinstance(item, Exception):
            raise item
        return item

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)


def random_crop(image: np.ndarray, size, rng: np.random.Generator) -> np.ndarray:
    """A (h, w) crop of `image` at a uniformly random place; an image smaller than the crop is padded with 0 on
    its bottom and right, as sdk.tiling pads a frame smaller than a tile."""
    th, tw = size
    h, w = image.shape[:2]
    y, x = int(rng.integers(0, max(h - th, 0) + 1)), int(rng.integers(0, max(w - tw, 0) + 1))
    part = image[y:y + th, x:x + tw]
    if part.shape[:2] == (th, tw):
        return part
    out = np.zeros((th, tw, *image.shape[2:]), image.dtype)
    out[:part.shape[0], :part.shape[1]] = part
    return out


class CropBatchMaker(BatchMaker):
    """BatchMaker for training on tiles: each image of a batch is a crop of the tile size at a random place in a
    good image (at the training scale), flipped as BatchMaker flips, a synthetic defect drawn inside the crop.
    Batches are (image indices, crops with defects, masks, flip codes, clean crops)."""

    def __init__(self, images, synth: DefectSynthesizer, batch_size: int, anomaly_prob: float, seed: int,
                 crop, start_step: int = 0, prefetch: int = 3, flip: bool = False):
        self.crop = tuple(crop)
        super().__init__(images, synth, batch_size, anomaly_prob, seed, start_step, prefetch, flip)

    def make(self, step: int):
        rng = np.random.default_rng([self.seed, step])
        idx = rng.integers(0, len(self.images), self.bs)
        h, w = self.crop
        clean = np.empty((self.bs, h, w, 3), np.uint8)
        xs = np.empty_like(clean)
        masks = np.zeros((self.bs, 1, h, w), np.float32)
        flips = rng.integers(0, 4, self.bs) if self.flip else np.zeros(self.bs, np.int64)
        for j, i in enumerate(idx):
            clean[j] = flip_image(random_crop(self.images[i], self.crop, rng), flips[j])
            if rng.random() < self.p:
                xs[j], masks[j, 0], _ = self.synth(clean[j], rng)
            else:
                xs[j] = clean[j]
        return idx, xs, masks, flips, clean

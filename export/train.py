"""Train CFRG on good images with synthetic defects, under a step count or a wall-clock budget."""
from __future__ import annotations

import json
import math
import os
import queue
import signal
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sdk.data import AnomalyDataset
from sdk.evaluate import evaluate, format_table, predict_dataset, resize_for_model, spread_indices
from sdk.files import atomic_output, check_output_folder, write_json
from sdk.model_info import software_versions

from .config import FINE_SPREAD_LIMIT, CFRGConfig
from .model import (CFRG, GlobalGaussian, auto_fine_weight, cos_distance, fold_batchnorm, load_checkpoint,
                    save_checkpoint)
from .options import TrainArgs, auto_image_size, auto_memory_pool, shared_aspect
from sdk.run_record import RunRecord
from sdk.synthesis import DefectSynthesizer


def _to_tensor(batch_u8: np.ndarray) -> torch.Tensor:
    """uint8 NHWC RGB -> float NCHW in [0, 1], channels_last memory."""
    x = torch.from_numpy(batch_u8).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)


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
                idx: np.ndarray, xs: np.ndarray, masks: np.ndarray, flips: np.ndarray) -> tuple:
    """cfrg_losses' (x, t_clean, mask, t_in) for a BatchMaker batch. `teacher` runs only where the cache of
    clean features cannot serve: the flipped clean images, and the images with a defect."""
    x, mask = _to_tensor(xs), torch.from_numpy(masks)
    t_clean = [c[torch.from_numpy(idx)].to(torch.float32, memory_format=torch.channels_last) for c in cache]
    if flips.any():
        t_clean = batch_teacher_features(teacher, model, _to_tensor(flipped_images(images, idx, flips)), t_clean,
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


class WeightAverage:
    """An exponential moving average of the trained modules' weights and BatchNorm statistics (the student, the
    recovery branch, the segmentation head; not the frozen teacher). The decay ramps up over the first steps
    (min(decay, (1 + k) / (10 + k)) at update k), so early weights do not linger."""

    prefixes = ("student.", "recovery.", "seg.")

    def __init__(self, model: CFRG, decay: float):
        state = model.state_dict()  # tensors that share storage with the model's
        self.decay = decay
        self.names = [n for n, t in state.items() if n.startswith(self.prefixes) and t.is_floating_point()]
        self.live = [state[n] for n in self.names]
        self.average = [t.detach().clone() for t in self.live]
        self.updates = 0

    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.average, self.live, 1.0 - decay)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "tensors": dict(zip(self.names, self.average))}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for avg, name in zip(self.average, self.names):
            avg.copy_(state["tensors"][name])

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the model's weights and the average (twice: back as they were)."""
        for live, avg in zip(self.live, self.average):
            tmp = live.clone()
            live.copy_(avg)
            avg.copy_(tmp)


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
                                                       f"then needs --calib-dir with good images)"))


def load_train_images(dataset: AnomalyDataset, size: Sequence[int], progress: bool,
                      index: Sequence[int] | None = None) -> np.ndarray:
    from sdk.progress import progress_bar
    index = range(len(dataset)) if index is None else index
    imgs = [resize_for_model(dataset.load_image(i, color="rgb"), size)
            for i in progress_bar(index, desc="load train", unit="img", disable=not progress, leave=False)]
    return np.stack(imgs)


@torch.no_grad()
def teacher_cache(model: CFRG, images: np.ndarray, batch: int = 16) -> list[torch.Tensor]:
    """Teacher features of every clean training image (float16, reused every step)."""
    feats: list[list[torch.Tensor]] = [[], [], []]
    for s in range(0, len(images), batch):
        for k, f in enumerate(model.teacher_features(_to_tensor(images[s:s + batch]))):
            feats[k].append(f.to(torch.float16).contiguous())
    return [torch.cat(f) for f in feats]


def calibrate_map(model: CFRG, images: np.ndarray, limit: int | None = None, progress: bool = False,
                  batch: int = 16) -> int:
    """Per-position map statistics from good training images (all, or `limit` spread over the set)."""
    from sdk.progress import progress_bar

    if model.config.map_normalisation != "position":
        return 0
    index = np.array(spread_indices(len(images), limit))
    bar = progress_bar(total=len(index), desc="map statistics", unit="img", disable=not progress, leave=False)

    def batches():
        for s in range(0, len(index), batch):
            yield _to_tensor(images[index[s:s + batch]])
            bar.update(len(index[s:s + batch]))

    try:
        return model.calibrate_map(batches())
    finally:
        bar.close()


@torch.no_grad()
def calibrate_memory(model: CFRG, images: np.ndarray, holdout: np.ndarray | None = None,
                     cache: list[torch.Tensor] | None = None, limit: int | None = None,
                     progress: bool = False, batch: int = 8, seed: int = 0) -> int:
    """Fill the patch memory from good training images (all, or `limit` spread over the set; teacher
    features from `cache` when given) and measure the z-score statistics of both maps, and of the two
    branch scores ("combined" image score), on good images: the held-out ones when there are at least 8,
    else the training images with each image's own patches left out of its nearest-neighbour search.
    The global branch (if any) is fitted on all the training images and z-scored on the same held-out
    ones (else cross-fitted on the training images). Run after calibrate_map. Returns the images in the bank."""
    from sdk.progress import progress_bar

    memory = model.memory
    if memory is None:
        return 0
    was_training = model.training
    model.eval()
    index = np.array(spread_indices(len(images), limit))
    if cache is None:  # the same float16 features training caches, so a rebuilt memory equals the trained one
        cache = teacher_cache(model, images)
    embeddings = []
    for s in progress_bar(range(0, len(index), batch), desc="patch memory", unit="batch", disable=not progress,
                  leave=False):
        idx = torch.from_numpy(index[s:s + batch])
        embeddings.append(memory.embed([c[idx].float() for c in cache]).half())
    source = torch.from_numpy(index)[memory.fill(torch.cat(embeddings), seed=seed, progress=progress)]
    use_holdout = holdout is not None and len(holdout) >= 8
    if use_holdout:
        stat_images, stat_ids = holdout, np.full(len(holdout), -1)
    else:
        stat_images, stat_ids = images[index], index
    held_descriptors = [] if model.global_gaussian is not None and use_holdout else None  # global branch's z-scores

    def maps_and_distances():
        for s in progress_bar(range(0, len(stat_images), batch), desc="memory statistics", unit="batch",
                      disable=not progress, leave=False):
            x = _to_tensor(stat_images[s:s + batch])
            t_feats = model.teacher_features(x)
            heads = model.heads(x, t_feats)
            amap = model.anomaly_map(x, heads)
            own = source.view(1, -1, 1, 1) == torch.from_numpy(stat_ids[s:s + batch]).view(-1, 1, 1, 1)
            if held_descriptors is not None:
                held_descriptors.append(GlobalGaussian.describe(t_feats))
            plain = model.plain_map(x, heads, amap) if memory.plain_stats else None
            yield amap, memory.nearest_sq(memory.embed(t_feats), exclude=own).sqrt(), plain

    memory.calibrate(maps_and_distances())
    if model.global_gaussian is not None:  # from every training image: it needs more than its dimensions
        train_descriptors = torch.cat([GlobalGaussian.describe([c[s:s + 64] for c in cache])
                                       for s in range(0, len(cache[0]), 64)])
        held = torch.cat(held_descriptors) if held_descriptors is not None else None  # else cross-fitted
        model.global_gaussian.fit_and_calibrate(train_descriptors, held)
    model.train(was_training)
    return len(index)


@torch.no_grad()
def calibrate_fine(model: CFRG, images: np.ndarray, holdout: np.ndarray | None = None,
                   cache: list[torch.Tensor] | None = None, limit: int | None = None, progress: bool = False,
                   batch: int = 8, seed: int = 0, max_rows: int = 200_000, max_good: int = 200,
                   weight: float | str | None = None) -> dict | None:
    """The fine-feature Gaussian: fitted on up to `max_rows` cells drawn evenly from the training images' features
    (all, or `limit` spread over the set), scaled on good images: the held-out ones when there are at least 8, else
    the training images (both peaks then biased low: the Gaussian was fitted on them and their own patches are in
    the memory), at most `max_good` (or `limit`) spread over them. Run after calibrate_memory: the scale depends on
    the pixel map. `weight`: None keeps config.fine_weight (nothing to do at 0); "auto" takes auto_fine_weight of
    the fit's spread, and at 0 leaves the model without the branch. Returns {"images", "spread", "weight"} (None
    when there was nothing to fit)."""
    from sdk.progress import progress_bar

    weight = model.config.fine_weight if weight is None else weight
    if weight != "auto" and not weight:
        return None
    fine = model.fine or model.new_fine_branch()
    was_training = model.training
    model.eval()
    index = torch.from_numpy(np.array(spread_indices(len(images), limit)))
    if cache is None:
        cache = teacher_cache(model, images[index.numpy()])
        index = torch.arange(len(index))
    n = len(index)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for s in progress_bar(range(0, n, batch), desc="fine Gaussian", unit="batch", disable=not progress, leave=False):
        f = fine.features([c[index[s:s + batch]].float() for c in cache])
        f = f.permute(0, 2, 3, 1).reshape(len(f), -1, f.shape[1])  # (images, cells, D)
        per_image = min(f.shape[1], max(1, max_rows // n))
        pick = torch.rand(f.shape[:2], generator=g).argsort(1)[:, :per_image]
        rows.append(torch.gather(f, 1, pick.unsqueeze(-1).expand(-1, -1, f.shape[2])).reshape(-1, f.shape[2]))
    rows = torch.cat(rows)
    fine.fit(rows)
    spread = fine.spread(rows)
    auto = weight == "auto"
    weight = auto_fine_weight(spread) if auto else float(weight)
    model.config = replace(model.config, fine_weight=weight)
    model.fine = fine if weight > 0 else None
    if model.fine is not None:
        good = holdout if holdout is not None and len(holdout) >= 8 else images
        good = good[np.array(spread_indices(len(good), min(max_good, limit or max_good)))]
        maps, pixel_maps = [], []
        for s in range(0, len(good), batch):
            pixel_map, _, t_feats = model.map_before_fine(_to_tensor(good[s:s + batch]))
            pixel_maps.append(pixel_map)
            maps.append(fine.distance_map(t_feats))
        fine.calibrate(weight, torch.cat(maps), torch.cat(pixel_maps), n)
    model.train(was_training)
    if auto:
        print(f"--fine-weight auto: spread {spread:.2f} -> weight {weight:g}"
              + ("" if weight else f" (no branch: the spread is above {FINE_SPREAD_LIMIT:g})"))
    return {"images": n, "spread": round(spread, 4), "weight": weight}


def torch_predictor(model: CFRG):
    """A NumPy predictor (sdk.evaluate.Predictor) around an inference copy of the PyTorch model (BatchNorm
    folded into the convolutions; later changes to `model` are not seen)."""
    inference = fold_batchnorm(model)

    @torch.inference_mode()
    def predict(frames_u8: np.ndarray):
        amap, score = inference(_to_tensor(frames_u8))
        return amap[:, 0].numpy(), score.numpy()

    return predict


def run_eval(model: CFRG, test: AnomalyDataset, limit=None, progress=True) -> dict:
    preds = predict_dataset(torch_predictor(model), test, model.config.image_size, progress=progress, limit=limit)
    return evaluate(preds, test)


# what last.pt leaves out: the frozen teacher, and the fine branch, refitted at the end ("auto" may add or drop it)
NOT_TRAINING_STATE = ("teacher.", "fine.")


def _resume_key(config: CFRGConfig, args: TrainArgs) -> dict:
    """What a resumed run must share with the first: the model and the images it trains on."""
    return {**{f"model.{k}": v for k, v in config.to_dict().items()}, "category": args.category,
            "holdout": args.holdout, "augment": args.augment, "ema": args.ema}


_RESUME_KEY_DEFAULTS = {"augment": "none", "ema": 0.0,  # keys that runs saved before them did not record
                        "model.fine_weight": 0.0}


def _check_resume(state: dict, last: Path, config: CFRGConfig, args: TrainArgs) -> None:
    if "run" not in state:  # last.pt from before this record existed: the state-dict check still applies
        return
    saved, now = json.loads(state["run"]), _resume_key(config, args)
    saved = {**_RESUME_KEY_DEFAULTS, **saved}
    diff = [f"{k}: {saved.get(k)} then, {now[k]} now" for k in now if saved.get(k) != now[k]]
    if diff:
        raise ValueError(f"--resume: {last} comes from a different run ({'; '.join(diff)}); "
                         f"resume with the first run's options or use a new --out")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training at a step boundary; the message says where the work was saved."""


class StopSignals:
    """While active (main thread only), Ctrl-C and SIGTERM ask training to stop at the next step boundary
    (`requested` names the signal), so a checkpoint never holds half an optimiser step; a second Ctrl-C
    stops at once."""

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def open_datasets(args: TrainArgs) -> tuple[AnomalyDataset, AnomalyDataset | None]:
    """Every option in range, the training images present and the output folder writable, before any work."""
    args.validate()
    train_set = AnomalyDataset(args.data, args.category, "train")
    check_training_size(len(train_set), args.holdout, Path(args.data) / args.category / "train")
    test_set = None
    if args.eval_every or args.final_eval:
        try:
            test_set = AnomalyDataset(args.data, args.category, "test")
        except Exception as exc:  # noqa: BLE001 - a missing test split only disables evaluation
            print(f"no evaluation: {exc}")
    check_output_folder(args.out)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return train_set, test_set


def resolve_image_size(args: TrainArgs, train_set: AnomalyDataset) -> tuple[int, int]:
    """The input size: as given, or for --image-size auto from the training images' aspect ratio (up to 64
    images spread over the set)."""
    if args.image_size != "auto":
        return tuple(args.image_size)
    sizes = [train_set.load_image(i).shape[:2] for i in spread_indices(len(train_set), 64)]
    size = auto_image_size(sizes)
    why = ("the training images' aspect ratio" if shared_aspect(sizes) else
           "square: the training images' aspect ratios vary, so no one shape is kept")
    print(f"--image-size auto: {size[0]}x{size[1]} ({why})")
    return size


def resume_state(last: Path, model: CFRG, opt: torch.optim.Optimizer, config: CFRGConfig,
                 args: TrainArgs, average: WeightAverage | None) -> tuple[int, float, list]:
    """Load OUT/last.pt into the model, the optimiser and the weight average; returns (step, seconds trained,
    evaluation history)."""
    if not last.is_file():
        raise FileNotFoundError(f"--resume: {last} does not exist; train without --resume first")
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise ValueError(f"--resume: {last} is not readable ({type(exc).__name__}: {exc}); "
                         f"delete it and train without --resume") from exc
    _check_resume(state, last, config, args)
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    missing = [k for k in missing if not k.startswith(NOT_TRAINING_STATE)]
    if missing or unexpected:
        raise ValueError(f"--resume: {last} holds another architecture (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}); resume with the options of the first run, or use a new --out")
    opt.load_state_dict(state["optimizer"])
    if average is not None:
        average.load_state_dict(state["average"])  # --ema is in the resume key, so last.pt has one
    print(f"resumed from {last} at step {state['step']}, {state['elapsed'] / 60:.1f} min trained")
    return state["step"], state["elapsed"], json.loads(state["history"])


def calibrate(model: CFRG, images: np.ndarray, holdout_images: np.ndarray | None, cache: list[torch.Tensor],
              seed: int, limit: int | None = None, progress: bool = False,
              fine_weight: float | str | None = None) -> tuple[int, int, dict | None]:
    """The map's per-position statistics, then the patch memory and the score statistics, then the fine-feature
    Gaussian (calibrate_fine's `weight`), from good images; returns the images the first two used and the fine
    branch's fit."""
    n_stats = calibrate_map(model, images, limit=limit, progress=progress)
    n_memory = calibrate_memory(model, images, holdout_images, cache, limit=limit, progress=progress, seed=seed)
    fine = calibrate_fine(model, images, holdout_images, cache, limit=limit, progress=progress, seed=seed,
                          weight=fine_weight)
    return n_stats, n_memory, fine


def write_run(args: TrainArgs, model: CFRG, train_set: AnomalyDataset, test_set: AnomalyDataset | None,
              train_idx: list[int], holdout_idx: list[int], summary: dict) -> dict:
    """OUT/model.pt, the final evaluation (OUT/metrics.json) and OUT/config.json; returns the config."""
    out = Path(args.out)
    save_checkpoint(model, out / "model.pt", extra={"train": summary})
    cfg = {"model": model.config.to_dict(), "train": {k: (list(v) if isinstance(v, tuple) else v)
                                                      for k, v in asdict(args).items()},
           "data_fingerprint": train_set.fingerprint(), "n_train_images": len(train_idx),
           "holdout": [os.path.relpath(train_set[i].path, args.data) for i in holdout_idx],
           "versions": software_versions("torch", "numpy"), "summary": summary}
    if args.final_eval and test_set is not None:
        model.eval()
        res = run_eval(model, test_set, progress=args.progress)
        print(format_table(res))
        cfg["metrics"] = res
        write_json(out / "metrics.json", res)
    write_json(out / "config.json", cfg)
    return cfg


def train(args: TrainArgs) -> dict:
    """Train and write OUT/model.pt, OUT/config.json (and OUT/last.pt for resuming)."""
    from sdk.progress import progress_bar

    train_set, test_set = open_datasets(args)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = args.model_config(resolve_image_size(args, train_set))
    model = CFRG(config, teacher_weights=args.teacher_weights).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=args.lr, weight_decay=1e-4)
    last = Path(args.out) / "last.pt"
    average = WeightAverage(model, args.ema) if args.ema else None
    step, elapsed, history = (resume_state(last, model, opt, config, args, average) if args.resume
                              else (0, 0.0, []))
    train_idx, holdout_idx = split_holdout(len(train_set), args.holdout)
    images = load_train_images(train_set, config.image_size, args.progress, train_idx)
    cache = teacher_cache(model, images)
    holdout_images = (load_train_images(train_set, config.image_size, False, holdout_idx)
                      if holdout_idx and (model.memory is not None or model.fine is not None
                                          or args.fine_weight == "auto") else None)
    synth = DefectSynthesizer(donor_images=list(images), texture_dir=args.texture_dir)
    budget = args.time_budget * 60.0
    total_steps = args.steps or None

    def progress_fraction():
        fr = elapsed / budget if budget > 0 else 0.0
        if total_steps:
            fr = max(fr, step / total_steps) if budget > 0 else step / total_steps
        return min(fr, 1.0)

    def save_last():
        with atomic_output(last) as tmp:
            torch.save({"model": {k: v for k, v in model.state_dict().items() if not k.startswith(NOT_TRAINING_STATE)},
                        "optimizer": opt.state_dict(), "step": step, "elapsed": elapsed,
                        "history": json.dumps(history), "run": json.dumps(_resume_key(config, args)),
                        **({"average": average.state_dict()} if average is not None else {})}, tmp)

    maker = BatchMaker(images, synth, args.batch_size, args.anomaly_prob, args.seed, start_step=step,
                       flip=args.augment == "flip")
    teacher = fold_batchnorm(model.teacher)  # a third less time than model.teacher, the same features
    bar = progress_bar(total=100, desc=f"train {args.category}", unit="%", disable=not args.progress,
               bar_format="{l_bar}{bar}| {n:.0f}/{total}% [{elapsed}<{remaining}{postfix}]")
    bar.update(100 * progress_fraction())
    next_eval = elapsed + args.eval_every * 60 if args.eval_every else math.inf
    next_save = elapsed + 60
    model.train()
    stop = StopSignals()
    try:
        with stop:
            while progress_fraction() < 1.0 and stop.requested is None:
                t0 = time.perf_counter()
                idx, xs, masks, flips = maker.next()
                for g in opt.param_groups:
                    g["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * progress_fraction()))
                losses = cfrg_losses(model, *step_inputs(teacher, model, images, cache, idx, xs, masks, flips))
                opt.zero_grad(set_to_none=True)
                losses["total"].backward()
                opt.step()
                if average is not None:
                    average.update()
                step += 1
                elapsed += time.perf_counter() - t0
                bar.update(100 * progress_fraction() - bar.n)  # to the position, so rounding never passes 100
                if step % 10 == 0:
                    bar.set_postfix({k: f"{v.item():.3f}" for k, v in losses.items()} | {"step": step})
                if elapsed >= next_save:
                    save_last()
                    next_save = elapsed + 60
                if elapsed >= next_eval and test_set is not None:
                    if average is not None:
                        average.swap()  # the weights that will be saved are the ones evaluated
                    calibrate(model, images, holdout_images, cache, args.seed, limit=128, fine_weight=args.fine_weight)
                    res = run_eval(model, test_set, args.eval_limit, progress=False)
                    if average is not None:
                        average.swap()
                    history.append({"step": step, "minutes": elapsed / 60,
                                    **{k: res[k] for k in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")}})
                    bar.write(f"eval @ step {step} ({elapsed / 60:.1f} min): " + ", ".join(
                        f"{k} {v:.3f}" for k, v in history[-1].items() if k not in ("step", "minutes")))
                    model.train()
                    next_eval = elapsed + args.eval_every * 60
    finally:
        maker.close()
        bar.close()
    save_last()  # the finished steps are kept whatever happens next
    if stop.requested:
        raise TrainingInterrupted(f"{stop.requested} at step {step} ({elapsed / 60:.1f} min trained): saved {last}; "
                                  f"the same command with --resume continues from there")
    if average is not None:
        average.swap()  # model.pt holds the average; last.pt keeps both for --resume
    n_stats, n_memory, fine = calibrate(model, images, holdout_images, cache, args.seed, progress=args.progress,
                                        fine_weight=args.fine_weight)
    summary = {"steps": step, "train_minutes": elapsed / 60, "samples_seen": step * args.batch_size,
               "map_stats_images": n_stats, "memory_images": n_memory, "fine": fine, "history": history}
    return write_run(args, model, train_set, test_set, train_idx, holdout_idx, summary)


def run_images(run_dir, data: str | None, size: Sequence[int], progress: bool,
               holdout: bool = True) -> tuple[np.ndarray, np.ndarray | None, int]:
    """A run's good training images and (`holdout`) its held-back good images (None when it held none back or
    they are not asked for) at `size`, and its seed: its config.json says which images, `data` says where they
    live now."""
    run = RunRecord.read(run_dir, data)
    train_set = AnomalyDataset(run.data, run.category, "train")
    if run.data_fingerprint and train_set.fingerprint() != run.data_fingerprint:
        raise ValueError(f"the training images under {train_set.root} differ from those the run was trained "
                         f"on (data fingerprint); pass --data with the run's data set")
    train_idx, holdout_idx = split_holdout(len(train_set), run.holdout_fraction)
    images = load_train_images(train_set, size, progress, train_idx)
    held = load_train_images(train_set, size, False, holdout_idx) if holdout_idx and holdout else None
    return images, held, run.seed


def with_map_fusion(model: CFRG, run_dir, map_normalisation: str | None = None, memory_size: int | None = None,
                    data: str | None = None, progress: bool = True, image_score: str | None = None,
                    memory_pool: int | str | None = None, global_score: bool | None = None,
                    pixel_map: str | None = None, gaussian_sigma: float | None = None,
                    seg_sigma: float | None = None, sum_seg_weight: float | None = None,
                    fine_weight: float | str | None = None) -> CFRG:
    """The same trained weights with another anomaly-map fusion (map normalisation, smoothing, the segmentation's
    weight in the sum, patch memory size and pooling ("auto": from the input size), image score and its global
    branch, pixel map, the fine-feature Gaussian's weight ("auto": from its fit, calibrate_fine)). Map statistics,
    the memory, the global branch and the fine branch are rebuilt from the run's own good images: its config.json
    says which, `data` says where they live now."""
    if memory_pool == "auto":
        memory_pool = auto_memory_pool(model.config.image_size)
    auto_fine = fine_weight == "auto"  # the weight comes from the fit: always refitted
    changes = {"map_normalisation": map_normalisation, "memory_size": memory_size, "image_score": image_score,
               "memory_pool": memory_pool, "global_score": global_score, "pixel_map": pixel_map,
               "gaussian_sigma": gaussian_sigma, "seg_sigma": seg_sigma, "sum_seg_weight": sum_seg_weight,
               "fine_weight": 0.0 if auto_fine else fine_weight}
    old = model.config.to_dict()
    changes = {k: v for k, v in changes.items()
               if v is not None and (v != old[k] or (k == "fine_weight" and auto_fine))}
    if not changes:
        return model
    config = CFRGConfig.from_dict({**old, **changes})
    memory_options = [k for k in ("memory_pool", "image_score", "global_score") if k in changes]
    if memory_options and not config.memory_size:
        raise ValueError(f"{' and '.join(memory_options)} apply to a patch memory and this model has none: "
                         f"add one with a memory size (cfrg eval --memory-size 10000)")
    if config.global_score and changes.get("global_score") and config.image_score != "combined":
        raise ValueError("global_score is a branch of the combined image score and this model's image score is "
                         f"{config.image_score!r}: add --image-score combined")
    new_stats = "map_normalisation" in changes  # otherwise the map statistics carry over
    # the pixel map alone keeps the memory and the score, unless the plain map's statistics come or go
    new_memory = (bool(set(changes) - {"pixel_map", "fine_weight"})
                  or ("pixel_map" in changes and "plain_fused" in (old["pixel_map"], config.pixel_map)))
    new = CFRG(config, pretrained_teacher=False)
    # the fine branch is scaled against the pixel map, so any change refits it
    rebuilt = ((("memory.", "global_gaussian.") if new_memory else ()) + (("map_",) if new_stats else ())
               + ("fine.",))
    missing, _ = new.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith(rebuilt)},
                                     strict=False)
    assert all(k.startswith(rebuilt) for k in missing), missing  # same weights, only the map differs
    new.eval()
    rebuild_memory = bool(config.memory_size and new_memory)
    fine = auto_fine or config.fine_weight > 0
    if (new_stats and config.map_normalisation == "position") or rebuild_memory or fine:
        images, holdout, seed = run_images(run_dir, data, config.image_size, progress,
                                           holdout=rebuild_memory or fine)
        if new_stats and config.map_normalisation == "position":
            calibrate_map(new, images, progress=progress)
        cache = teacher_cache(new, images) if rebuild_memory or fine else None
        if rebuild_memory:  # memory statistics depend on the map
            calibrate_memory(new, images, holdout, cache, progress=progress, seed=seed)
        calibrate_fine(new, images, holdout, cache, progress=progress, seed=seed,
                       weight="auto" if auto_fine else None)
    return new.to(memory_format=torch.channels_last).eval()


def load_model(path) -> CFRG:
    model, _ = load_checkpoint(path)
    return model.to(memory_format=torch.channels_last)

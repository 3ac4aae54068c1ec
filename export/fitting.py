"""The statistics fitted on good images after training (map statistics, patch memory, score statistics, the
fine-feature Gaussian, the tile offset), and the re-fusion of trained weights with other map and score options."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import torch

from sdk.data import AnomalyDataset
from sdk.evaluate import spread_indices
from sdk.run_record import RunRecord

from .blocks import inside
from .config import FINE_SPREAD_LIMIT, CFRGConfig
from .gaussians import GlobalGaussian, auto_fine_weight
from .map_options import MAP_OPTIONS, MAP_STATISTICS, MEMORY
from .model import CFRG, to_tensor
from .train_images import good_images


@torch.no_grad()
def teacher_cache(model: CFRG, images: np.ndarray, batch: int = 16) -> list[torch.Tensor]:
    """Teacher features of every clean training image (float16, reused every step)."""
    feats: list[list[torch.Tensor]] = [[], [], []]
    for s in range(0, len(images), batch):
        for k, f in enumerate(model.teacher_features(to_tensor(images[s:s + batch]))):
            feats[k].append(f.to(torch.float16).contiguous())
    return [torch.cat(f) for f in feats]


def fit_map(model: CFRG, images: np.ndarray, limit: int | None = None, progress: bool = False,
                  batch: int = 16) -> int:
    """Per-position map statistics from good training images (all, or `limit` spread over the set)."""
    from sdk.progress import progress_bar

    if model.config.map_normalisation != "position":
        return 0
    index = np.array(spread_indices(len(images), limit))
    bar = progress_bar(total=len(index), desc="map statistics", unit="img", disable=not progress, leave=False)

    def batches():
        for s in range(0, len(index), batch):
            yield to_tensor(images[index[s:s + batch]])
            bar.update(len(index[s:s + batch]))

    try:
        return model.fit_map(batches())
    finally:
        bar.close()


@torch.no_grad()
def fit_memory(model: CFRG, images: np.ndarray, holdout: np.ndarray | None = None,
                     cache: list[torch.Tensor] | None = None, limit: int | None = None,
                     progress: bool = False, batch: int = 8, seed: int = 0) -> int:
    """Fill the patch memory from good training images (all, or `limit` spread over the set; teacher
    features from `cache` when given) and measure the z-score statistics of both maps, and of the two
    branch scores ("combined" image score), on good images: the held-out ones when there are at least 8,
    else the training images with each image's own patches left out of its nearest-neighbour search.
    The global branch (if any) is fitted on all the training images and z-scored on the same held-out
    ones (else cross-fitted on the training images). Run after fit_map. Returns the images in the bank."""
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
            x = to_tensor(stat_images[s:s + batch])
            t_feats = model.teacher_features(x)
            heads = model.heads(x, t_feats)
            amap = model.anomaly_map(x, heads)
            own = source.view(1, -1, 1, 1) == torch.from_numpy(stat_ids[s:s + batch]).view(-1, 1, 1, 1)
            if held_descriptors is not None:
                held_descriptors.append(GlobalGaussian.describe(t_feats))
            plain = model.plain_map(x, heads, amap) if memory.plain_stats else None
            yield amap, memory.nearest_sq(memory.embed(t_feats), exclude=own).sqrt(), plain

    memory.fit_z_scores(maps_and_distances())
    if model.global_gaussian is not None:  # from every training image: it needs more than its dimensions
        train_descriptors = torch.cat([GlobalGaussian.describe([c[s:s + 64] for c in cache])
                                       for s in range(0, len(cache[0]), 64)])
        held = torch.cat(held_descriptors) if held_descriptors is not None else None  # else cross-fitted
        model.global_gaussian.fit_with_z_scores(train_descriptors, held)
    model.train(was_training)
    return len(index)


@torch.no_grad()
def fit_fine(model: CFRG, images: np.ndarray, holdout: np.ndarray | None = None,
                   cache: list[torch.Tensor] | None = None, limit: int | None = None, progress: bool = False,
                   batch: int = 8, seed: int = 0, max_rows: int = 200_000, max_good: int = 200,
                   weight: float | str | None = None) -> dict | None:
    """The fine-feature Gaussian: fitted on up to `max_rows` cells drawn evenly from the training images' features
    (all, or `limit` spread over the set), scaled on good images: the held-out ones when there are at least 8, else
    the training images (both peaks then biased low: the Gaussian was fitted on them and their own patches are in
    the memory), at most `max_good` (or `limit`) spread over them. Run after fit_memory: the scale depends on
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
            pixel_map, _, t_feats = model.map_before_fine(to_tensor(good[s:s + batch]))
            pixel_maps.append(pixel_map)
            maps.append(fine.distance_map(t_feats))
        fine.fit_scale(weight, torch.cat(maps), torch.cat(pixel_maps), n)
    model.train(was_training)
    if auto:
        print(f"--fine-weight auto: spread {spread:.2f} -> weight {weight:g}"
              + ("" if weight else f" (no branch: the spread is above {FINE_SPREAD_LIMIT:g})"))
    return {"images": n, "spread": round(spread, 4), "weight": weight}


MIN_OFFSET_TILES = 64  # held-back tiles the tile offset needs before it takes them over the training tiles


@torch.no_grad()
def fit_tile_offset(model: CFRG, tiles: np.ndarray, holdout: np.ndarray | None = None, limit: int | None = 512,
                    batch: int = 8, progress: bool = False) -> int | None:
    """The offset a model trained on tiles subtracts from every tile's map: the mean output map of good tiles (as
    the Detector cuts them: the held-back images' when there are at least MIN_OFFSET_TILES, else the training
    images', whose own patches are in the memory; at most `limit`, spread over them) by position in the tile, less
    that mean's mean inside the margins. A network sees least near a tile's edge and responds most there, so
    without it the stitched map rises along the seams. Run last: it is measured on the output map. Returns the
    tiles used (None: the model has no offset)."""
    from sdk.progress import progress_bar

    if model.tile_offset is None:
        return None
    was_training = model.training
    model.eval()
    model.tile_offset.zero_()
    if holdout is not None and len(holdout) >= MIN_OFFSET_TILES:
        tiles = holdout
    index = spread_indices(len(tiles), limit)
    total = torch.zeros_like(model.tile_offset, dtype=torch.float64)
    for s in progress_bar(range(0, len(index), batch), desc="tile offset", unit="batch", disable=not progress,
                          leave=False):
        amap, _ = model(to_tensor(tiles[np.array(index[s:s + batch])]))
        total += amap.double().sum(0, keepdim=True)
    mean = total / len(index)
    model.tile_offset.copy_((mean - inside(mean, model.config.tile_margin).mean()).float())
    model.train(was_training)
    return len(index)


def fit_statistics(model: CFRG, images: np.ndarray, holdout_images: np.ndarray | None, cache: list[torch.Tensor],
              seed: int, limit: int | None = None, progress: bool = False,
              fine_weight: float | str | None = None) -> tuple[int, int, dict | None]:
    """The map's per-position statistics, then the patch memory and the score statistics, then the fine-feature
    Gaussian (fit_fine's `weight`), then (on tiles) the tile offset, from good images; returns the images the first
    two used and the fine branch's fit."""
    n_stats = fit_map(model, images, limit=limit, progress=progress)
    n_memory = fit_memory(model, images, holdout_images, cache, limit=limit, progress=progress, seed=seed)
    fine = fit_fine(model, images, holdout_images, cache, limit=limit, progress=progress, seed=seed,
                          weight=fine_weight)
    fit_tile_offset(model, images, holdout_images, limit=min(limit or 512, 512), progress=progress)
    return n_stats, n_memory, fine


def run_images(run_dir, data: str | None, size: Sequence[int], progress: bool,
               holdout: bool = True, plan=None) -> tuple[np.ndarray, np.ndarray | None, int]:
    """A run's good training images and (`holdout`) its held-back good images (None when it held none back or
    they are not asked for) at `size` (or, for a model trained on tiles, every tile of them by `plan`), and its
    seed: its config.json says which images, `data` says where they live now."""
    run = RunRecord.read(run_dir, data)
    train_set = AnomalyDataset(run.data, run.category, "train")
    if run.data_fingerprint and train_set.fingerprint() != run.data_fingerprint:
        raise ValueError(f"the training images under {train_set.root} differ from those the run was trained "
                         f"on (data fingerprint); pass --data with the run's data set")
    train_idx, holdout_idx = run.split([smp.path for smp in train_set.samples])
    images, held, _ = good_images(train_set, size, plan, progress, train_idx, holdout_idx, holdout)
    return images, held, run.seed


REFIT_ORDER = ("map_normalisation", "memory_size")  # with_map_fusion's options that may be given by position


def with_map_fusion(model: CFRG, run_dir, *ordered, data: str | None = None, progress: bool = True,
                    **values) -> CFRG:
    """The same trained weights with other map and score options (MAP_OPTIONS by name, or REFIT_ORDER's by
    position; None: as trained). What each option's change rebuilds (MapOption.refits): the map statistics, the
    memory, the global branch and the fine branch are rebuilt from the run's own good images: its config.json says
    which, `data` says where they live now. "auto": memory_pool from the input size, fine_weight from its fit."""
    values = {**dict(zip(REFIT_ORDER, ordered)), **values}
    unknown = set(values) - set(MAP_OPTIONS)
    if unknown or len(ordered) > len(REFIT_ORDER):
        raise TypeError(f"with_map_fusion: not a map or score option: {sorted(unknown) or ordered}")
    old = model.config.to_dict()
    changes, refit = {}, set()
    for name, o in MAP_OPTIONS.items():  # in their declared order
        given = values.get(name)
        if given is None:
            continue
        value = o.config_value(given, model.config.image_size, tiles=bool(model.config.tile_scale))
        if value != old[name] or (o.auto_refits and given == "auto"):
            changes[name] = value
            refit |= o.refits(old[name], value)
    if not changes:
        return model
    config = CFRGConfig.from_dict({**old, **changes})
    memory_options = [k for k in changes if MAP_OPTIONS[k].needs_memory]
    if memory_options and not config.memory_size:
        raise ValueError(f"{' and '.join(memory_options)} apply to a patch memory and this model has none: "
                         f"add one with a memory size (cfrg eval --memory-size 10000)")
    if config.global_score and changes.get("global_score") and config.image_score != "combined":
        raise ValueError("global_score is a branch of the combined image score and this model's image score is "
                         f"{config.image_score!r}: add --image-score combined")
    new_stats, new_memory = MAP_STATISTICS in refit, MEMORY in refit  # otherwise they carry over
    new = CFRG(config, pretrained_teacher=False)
    if not refit:  # e.g. the tiles a frame's score averages: the model itself is the same
        new.load_state_dict(model.state_dict())
        return new.to(memory_format=torch.channels_last).eval()
    # the fine branch is scaled against the pixel map, and the tile offset measured on it, so any change refits them
    rebuilt = ((("memory.", "global_gaussian.") if new_memory else ()) + (("map_",) if new_stats else ())
               + ("fine.", "tile_offset"))
    missing, _ = new.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith(rebuilt)},
                                     strict=False)
    assert all(k.startswith(rebuilt) for k in missing), missing  # same weights, only the map differs
    new.eval()
    rebuild_memory = bool(config.memory_size and new_memory)
    fine_from_fit = values.get("fine_weight") == "auto"
    fine = fine_from_fit or config.fine_weight > 0
    offset = new.tile_offset is not None
    if (new_stats and config.map_normalisation == "position") or rebuild_memory or fine or offset:
        images, holdout, seed = run_images(run_dir, data, config.image_size, progress,
                                           holdout=rebuild_memory or fine or offset, plan=config.tile_plan())
        if new_stats and config.map_normalisation == "position":
            fit_map(new, images, progress=progress)
        cache = teacher_cache(new, images) if rebuild_memory or fine else None
        if rebuild_memory:  # memory statistics depend on the map
            fit_memory(new, images, holdout, cache, progress=progress, seed=seed)
        fit_fine(new, images, holdout, cache, progress=progress, seed=seed,
                       weight="auto" if fine_from_fit else None)
        fit_tile_offset(new, images, holdout, progress=progress)
    return new.to(memory_format=torch.channels_last).eval()

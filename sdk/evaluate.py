"""Evaluate any predictor on a test split with the field's metrics (NumPy + OpenCV only).

A predictor maps a batch of uint8 RGB NHWC frames at the model size to (maps (N,H,W) float32,
scores (N,)). The PyTorch checkpoint and every exported model are judged by this one code path.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from . import metrics
from .data import AnomalyDataset
from .files import write_png
from .postprocess import blend_heatmap, map_to_frame

Predictor = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")


def resize_for_model(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """RGB HxWx3 uint8 -> (height, width) model input, through the same pre-processing the SDK
    runs in the field (sdk.preprocess: area for >= 2x down-scales, bilinear otherwise)."""
    from .preprocess import preprocess

    h, w = int(size[0]), int(size[1])
    if image.shape[:2] == (h, w) and image.ndim == 3:
        return image
    out = np.empty((1, h, w, 3), np.uint8)
    preprocess(image, out, colour_in="rgb", colour_out="rgb")
    return out[0]


def backend_predictor(backend, input_name: str = "frames", colour_order: str = "rgb") -> Predictor:
    """Predictor around any sdk backend of an exported model whose input takes `colour_order` frames; a batch larger
    than the backend's largest (a TensorRT engine's `max_batch`) runs in parts it takes."""

    def predict(frames_rgb: np.ndarray):
        frames = frames_rgb if colour_order.lower() == "rgb" else frames_rgb[..., ::-1]
        step = getattr(backend, "max_batch", None) or len(frames)
        outs = [backend.run({input_name: np.ascontiguousarray(frames[s:s + step])}) for s in range(0, len(frames), step)]
        if len(outs) == 1:
            return outs[0]["anomaly_map"], outs[0]["score"]
        return (np.concatenate([o["anomaly_map"] for o in outs]), np.concatenate([o["score"] for o in outs]))

    return predict


@dataclass
class Predictions:
    labels: np.ndarray
    scores: np.ndarray
    defect_types: list[str]
    maps: list[np.ndarray]  # model-size maps
    paths: list[str]
    frame_shapes: list[tuple[int, int]] = field(default_factory=list)


def frame_runner(predict: Predictor, image_size: Sequence[int], plan=None):
    """run(RGB images of any size) -> (maps, scores) through `predict`: each image squeezed to the model size
    (maps at the model size), or with an sdk.tiling.TilePlan (a model trained on tiles) cut into its tiles (maps
    at the scaled image's size, the highest tile's score)."""
    if plan is not None:
        from .tiling import tiled_predict

        return lambda images: tiled_predict(predict, images, plan)

    def run(images):
        m, s = predict(np.stack([resize_for_model(img, image_size) for img in images]))
        return (list(np.asarray(m, dtype=np.float32).reshape(len(images), *m.shape[-2:])),
                np.asarray(s, dtype=np.float64).reshape(-1).tolist())

    return run


def file_scores(predict: Predictor, image_size: Sequence[int], files: Sequence, plan=None,
                progress: Callable[[int], None] | None = None) -> tuple[list[float], list[float]]:
    """(image scores, map peaks) of image files through `predict` (frame_runner: squeezed, or in tiles by `plan`),
    in batches of 8; `progress(n)` after each batch."""
    from .data import read_image

    run = frame_runner(predict, image_size, plan)
    scores, peaks = [], []
    for s in range(0, len(files), 8):
        maps, batch_scores = run([read_image(p, "rgb") for p in files[s:s + 8]])
        scores.extend(float(v) for v in batch_scores)
        peaks.extend(float(np.max(m)) for m in maps)
        if progress:
            progress(len(maps))
    return scores, peaks


def predict_dataset(predict: Predictor, dataset: AnomalyDataset, image_size: Sequence[int],
                    batch_size: int = 8, progress: bool = True, limit: int | None = None, plan=None) -> Predictions:
    """Run the predictor over a split in batches (frame_runner: squeezed, or in tiles by `plan`); keeps the maps
    at the model size (or the scaled frame's)."""
    return _predict(frame_runner(predict, image_size, plan), dataset, batch_size, progress, limit)


def predict_frames(detector, dataset: AnomalyDataset, batch_size: int = 8, progress: bool = True,
                   limit: int | None = None) -> Predictions:
    """Run an sdk.Detector (colour="rgb"; e.g. tiled) on each image at its own resolution; keeps the
    frame-size maps it returns."""

    def run(images):
        results = detector.batch(images)
        return [r.anomaly_map for r in results], [r.score for r in results]

    return _predict(run, dataset, batch_size, progress, limit)


def _predict(run, dataset: AnomalyDataset, batch_size: int, progress: bool, limit: int | None) -> Predictions:
    """Batches of RGB images of a split (all, or `limit` spread over it) through run(images) -> (maps, scores)."""
    from .progress import progress_bar

    index = spread_indices(len(dataset), limit)
    maps, scores, shapes = [], [], []
    bar = progress_bar(total=len(index), desc="predict", unit="img", disable=not progress, leave=False)
    for start in range(0, len(index), batch_size):
        chunk = index[start:start + batch_size]
        images = [dataset.load_image(i, colour="rgb") for i in chunk]
        shapes.extend(img.shape[:2] for img in images)
        m, s = run(images)
        maps.extend(m)
        scores.extend(s)
        bar.update(len(chunk))
    bar.close()
    samples = [dataset[i] for i in index]
    return Predictions(labels=np.array([s.label for s in samples]), scores=np.array(scores, dtype=np.float64),
                       defect_types=[s.defect_type for s in samples], maps=maps,
                       paths=[s.path for s in samples], frame_shapes=shapes)


def spread_indices(total: int, limit: int | None = None) -> list[int]:
    """min(limit, total) indices spread evenly over range(total) (all of them without a limit)."""
    n = total if limit is None else min(limit, total)
    if n >= total:
        return list(range(total))
    return sorted({int(round(v)) for v in np.linspace(0, total - 1, n)})


def frame_pairs(preds: Predictions, dataset: AnomalyDataset) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Ground-truth masks and the predicted maps resized to them (as the Detector resizes), in prediction order."""
    path_to_index = {s.path: i for i, s in enumerate(dataset.samples)}
    masks = [dataset.load_mask(path_to_index[p]) for p in preds.paths]
    return masks, [map_to_frame(m, mask.shape) for m, mask in zip(preds.maps, masks)]


def evaluate(preds: Predictions, dataset: AnomalyDataset, fpr_limit: float = 0.3) -> dict:
    """Overall metrics and, per defect type, metrics on good + that type.

    Metrics are taken at each frame's own resolution: maps are resized to the ground truth once.
    """
    masks, maps = frame_pairs(preds, dataset)

    def metrics_of(index: list[int]) -> dict:
        m = metrics.evaluate_all(preds.labels[index], preds.scores[index], [masks[k] for k in index],
                                 [maps[k] for k in index], fpr_limit=fpr_limit)
        return {k: float(m[k]) for k in METRIC_KEYS}

    result = metrics_of(list(range(len(preds.paths))))
    types = sorted({t for t in preds.defect_types if t != "good"})
    good = [k for k, t in enumerate(preds.defect_types) if t == "good"]
    per_defect = {}
    for t in types:
        idx = good + [k for k, d in enumerate(preds.defect_types) if d == t]
        per_defect[t] = metrics_of(idx)
        per_defect[t]["count"] = len(idx) - len(good)
    result["per_defect"] = per_defect
    result["n_images"] = len(preds.paths)
    result["n_good"] = len(good)
    return undefined_as_null(result, n_good=len(good), n_defect=len(preds.paths) - len(good))


def undefined_as_null(result: dict, n_good: int, n_defect: int) -> dict:
    """Metrics that cannot be computed (NaN) become None, with the reason under "undefined": JSON has no NaN."""
    reasons = {}
    why = ("the split has no good images" if n_good == 0 else "the split has no defect images" if n_defect == 0
           else "no defect pixel in the masks, or no good pixel")

    def clean(d: dict, where: str) -> None:
        for k in METRIC_KEYS:
            if k in d and d[k] is not None and not np.isfinite(d[k]):
                d[k] = None
                reasons[f"{where}{k}"] = why

    clean(result, "")
    for t, m in result.get("per_defect", {}).items():
        clean(m, f"{t}.")
    if reasons:
        result["undefined"] = reasons
    return result


def format_table(result: dict) -> str:
    head = f"{'defect type':<16}{'n':>5}  {'I-AUROC':>8}{'P-AUROC':>9}{'AUPRO':>8}{'AP':>8}"
    rows = [head, "-" * len(head)]

    def row(name, n, m):
        vals = "".join(f"{'n/a':>{w}}" if m[k] is None else f"{100 * m[k]:>{w}.1f}"
                       for k, w in zip(METRIC_KEYS, (8, 9, 8, 8)))
        return f"{name:<16}{n:>5}  {vals}"

    for t, m in result.get("per_defect", {}).items():
        rows.append(row(t, m["count"], m))
    rows.append("-" * len(head))
    rows.append(row("overall", result.get("n_images", 0), result))
    return "\n".join(rows)


def save_overlays(preds: Predictions, dataset: AnomalyDataset, out_dir: str | os.PathLike,
                  vmax: float | None = None) -> int:
    """Write <type>_<stem>.png: image | anomaly heat map | ground-truth contours, side by side."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path_to_index = {s.path: i for i, s in enumerate(dataset.samples)}
    vmax = vmax or float(np.percentile(preds.scores, 99)) or 1.0
    for k, path in enumerate(preds.paths):
        i = path_to_index[path]
        img = dataset.load_image(i, colour="bgr")
        mask = dataset.load_mask(i)
        amap = map_to_frame(preds.maps[k], img.shape[:2])
        blend = blend_heatmap(img, amap, np.zeros_like(mask), value_range=(0.0, vmax))
        gt = blend_heatmap(img, amap, mask, alpha=0.0, contour_colour=(0, 255, 0))
        panel = np.concatenate([img, blend, gt], axis=1)
        cv2.putText(panel, f"{preds.defect_types[k]} score {preds.scores[k]:.3f}", (5, 20),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
        write_png(out / f"{preds.defect_types[k]}_{Path(path).stem}.png", panel)
    return len(preds.paths)



"""A reduced-precision graph checked against its FP32 graph before `cfrg build` keeps it (numpy, OpenCV and
onnxruntime; no torch, no labelled test data).

Both graphs run on the good images held back at training and on the same images with one synthetic defect
each (sdk.synthesis, the defects training draws). What is compared:

    score_rank_correlation   Spearman correlation of the image scores, good and synthetic together (judged
                             from 20 images on: fewer make it noise)
    auroc_drop               AUROC of good against synthetic image scores, FP32 minus the graph's
    pixel_auroc_drop         pixel AUROC on the synthetic defects' masks, FP32 minus the graph's
    verdict_agreement        share of images whose verdict is the same, each graph at its own good_only
                             threshold (as each would run); at most 5 % (and at least one) may change
    map_difference           the largest |map - FP32 map| as a share of the FP32 maps' range

A graph outside LIMITS is refused (or written with a warning under --accept-drop); the figures go into the
graph's model.json ("precision_check"). How LIMITS were chosen: docs/deployment.md, "The build checks its
own output".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

# the smallest (min_) or largest (max_) value a graph may show
LIMITS = {"min_score_rank_correlation": 0.99, "max_auroc_drop": 0.02, "max_pixel_auroc_drop": 0.01,
          "max_verdict_changes": 0.05,  # share of images whose verdict may change (one at least: small sets)
          "min_images_for_rank": 20}  # fewer images (good + synthetic) make the rank correlation noise


@dataclass
class PrecisionCheck:
    graph: str
    precision: str
    n_good: int
    n_synthetic: int
    score_rank_correlation: float
    auroc_fp32: float
    auroc: float
    pixel_auroc_fp32: float
    pixel_auroc: float
    verdict_agreement: float
    map_difference: float
    limits: dict = field(default_factory=lambda: dict(LIMITS))
    accepted_drop: bool = False

    @property
    def auroc_drop(self) -> float:
        return self.auroc_fp32 - self.auroc

    @property
    def pixel_auroc_drop(self) -> float:
        return self.pixel_auroc_fp32 - self.pixel_auroc

    def failures(self) -> list[str]:
        lim, out = self.limits, []
        enough = self.n_good + self.n_synthetic >= lim.get("min_images_for_rank", 0)
        if enough and self.score_rank_correlation < lim["min_score_rank_correlation"]:
            out.append(f"score rank correlation {self.score_rank_correlation:.3f} < {lim['min_score_rank_correlation']}")
        if self.auroc_drop > lim["max_auroc_drop"]:
            out.append(f"good-vs-synthetic AUROC {100 * self.auroc:.1f} against FP32's {100 * self.auroc_fp32:.1f} "
                       f"(drop {100 * self.auroc_drop:.1f} > {100 * lim['max_auroc_drop']:.0f} points)")
        if self.pixel_auroc_drop > lim["max_pixel_auroc_drop"]:
            out.append(f"pixel AUROC on synthetic defects {100 * self.pixel_auroc:.2f} against "
                       f"{100 * self.pixel_auroc_fp32:.2f} (drop > {100 * lim['max_pixel_auroc_drop']:.0f} point)")
        total = self.n_good + self.n_synthetic
        changed = round((1 - self.verdict_agreement) * total)
        if changed > max(1, int(lim["max_verdict_changes"] * total)):
            out.append(f"{changed} of {total} verdicts change (more than {100 * lim['max_verdict_changes']:.0f} %)")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures()

    def line(self) -> str:
        return (f"{self.graph} against FP32 on {self.n_good} held-back good images and {self.n_synthetic} with "
                f"synthetic defects: score rank correlation {self.score_rank_correlation:.4f}, AUROC "
                f"{100 * self.auroc:.2f} (FP32 {100 * self.auroc_fp32:.2f}), pixel AUROC {100 * self.pixel_auroc:.2f} "
                f"(FP32 {100 * self.pixel_auroc_fp32:.2f}), verdicts agree {100 * self.verdict_agreement:.1f} %, "
                f"largest map difference {100 * self.map_difference:.2f} % of the FP32 range")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(auroc_drop=self.auroc_drop, pixel_auroc_drop=self.pixel_auroc_drop, passed=self.passed,
                 failures=self.failures())
        return d


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank."""
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="mergesort")
    r = np.empty(len(values), np.float64)
    r[order] = np.arange(1, len(values) + 1)
    sorted_values = values[order]
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or sorted_values[i] != sorted_values[start]:
            if i - start > 1:
                r[order[start:i]] = (start + 1 + i) / 2.0
            start = i
    return r


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    ra, rb = ranks(np.asarray(a)), ranks(np.asarray(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra ** 2).sum() * (rb ** 2).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else 1.0


def synthetic_set(good: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each good image (uint8 RGB NHWC at the model size) with one synthetic defect: (images, masks 0/1)."""
    from ..synthesis import DefectSynthesizer

    synth = DefectSynthesizer(donor_images=list(good), seed=seed)
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for image in good:
        augmented, mask, _ = synth(image, rng)
        images.append(augmented)
        masks.append((np.asarray(mask) >= 0.5).astype(np.uint8))
    return np.stack(images), np.stack(masks)


def _predict(predict, frames: np.ndarray, batch: int = 8):
    maps, scores = [], []
    for s in range(0, len(frames), batch):
        m, sc = predict(frames[s:s + batch])
        maps.append(np.asarray(m, np.float32))
        scores.append(np.asarray(sc, np.float64))
    return np.concatenate(maps), np.concatenate(scores)


def check_precision(reference, graph, good: np.ndarray, reference_threshold: float, graph_threshold: float,
                    graph_name: str, precision: str, seed: int = 0, batch: int = 8) -> PrecisionCheck:
    """Compare two predictors (RGB uint8 NHWC -> maps, scores) on good images and their synthetic twins."""
    from sdk.metrics import image_auroc, pixel_auroc

    defects, masks = synthetic_set(good, seed)
    frames = np.concatenate([good, defects])
    labels = np.r_[np.zeros(len(good)), np.ones(len(defects))].astype(np.int64)
    maps_ref, scores_ref = _predict(reference, frames, batch)
    maps, scores = _predict(graph, frames, batch)
    n = len(good)
    span = float(maps_ref.max() - maps_ref.min()) or 1.0
    return PrecisionCheck(
        graph=graph_name, precision=precision, n_good=n, n_synthetic=len(defects),
        score_rank_correlation=spearman(scores_ref, scores),
        auroc_fp32=float(image_auroc(labels, scores_ref)), auroc=float(image_auroc(labels, scores)),
        pixel_auroc_fp32=float(pixel_auroc(list(masks), list(maps_ref[n:]))),
        pixel_auroc=float(pixel_auroc(list(masks), list(maps[n:]))),
        verdict_agreement=float(np.mean((scores_ref >= reference_threshold) == (scores >= graph_threshold))),
        map_difference=float(np.abs(maps - maps_ref).max() / span))

"""Re-thresholding from the line (`cfrg threshold`): new thresholds from images collected on the line (for example
the false rejects an operator confirmed as good), without retraining.

The model runs as the field runs it (sdk.Detector, any backend: ONNX Runtime, a TensorRT engine); good_only is the
(1 - target FRR) quantile of the line's good images, its pixel threshold the same quantile of their map peaks (as
cfrg export measures them); with defect images as well, f1 is the F1-optimal image threshold between the two sets.
The model description is written again with the replaced values appended to its threshold_history (when, from
what, the thresholds, the default and the score normalisation), so nothing is lost.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .data import DatasetError
from .model_info import ModelInfo, Threshold, utc_now

MIN_GOOD_IMAGES = 20  # below this the quantile says little about a 1 % rate


@dataclass(frozen=True)
class Rethresholded:
    old: ModelInfo
    new: ModelInfo
    good_scores: list[float]
    defect_scores: list[float]
    description: Path  # the model.json written


def files_fingerprint(files: Sequence[str | os.PathLike]) -> str:
    """SHA-256 over the files' names and contents, in order."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(Path(f).name.encode("utf-8"))
        digest.update(Path(f).read_bytes())
    return digest.hexdigest()


def score_files(detector, files: Sequence[str | os.PathLike], progress: Callable[[int], None] | None = None):
    """(image scores, map peaks) of the files at the model's input (in tiles for a model trained on tiles), as cfrg
    export measures them."""
    from .evaluate import file_scores

    return file_scores(detector.predictor(), detector.size, files, detector.frame_plan, progress)


class DriftRefusal(DatasetError):
    """The line's good images no longer look like the images the model was exported with."""


def drift_check(detector, good_files: Sequence[str | os.PathLike]) -> list[str]:
    """The drift alarms the line's good images raise against the model's drift reference, in file order ([]:
    none); None when the model has no reference to compare with."""
    from .data import read_image
    from .drift import DriftMonitor

    reference = detector.info.drift_reference
    if not reference:
        return None
    monitor = DriftMonitor(reference, colour="bgr")
    alarms = []
    for f in good_files:
        frame = read_image(f, "bgr")
        alarms += [e.message for e in monitor.update(frame, detector(frame)) if e.kind == "drift"]
    return alarms


def new_thresholds(good_scores, good_peaks, defect_scores, target_frr: float, sources: dict) -> dict[str, Threshold]:
    from .build.thresholds import good_only_threshold
    from .metrics import f1_optimal_threshold

    good = good_only_threshold(np.array(good_scores), target_frr)
    pixel = good_only_threshold(np.array(good_peaks), target_frr)
    thresholds = {"good_only": Threshold(good["value"], pixel["value"], {
        "target_frr": target_frr, "n_images": good["n_images"], "observed_frr": good["observed_frr"],
        "measured_on": sources["good"]})}
    if defect_scores:
        labels = [0] * len(good_scores) + [1] * len(defect_scores)
        value, f1 = f1_optimal_threshold(labels, list(good_scores) + list(defect_scores))
        thresholds["f1"] = Threshold(float(value), pixel["value"], {
            "image_f1": float(f1), "n_images": len(labels), "measured_on": f"{sources['good']} + {sources['defect']}",
            "pixel_from": "the good_only pixel threshold (defect images without masks)"})
    return thresholds


def rethreshold(model_path: str | os.PathLike, good_files: Sequence[str | os.PathLike],
                defect_files: Sequence[str | os.PathLike] = (), *, target_frr: float = 0.01, default: str = "good_only",
                command: str = "cfrg threshold", progress: bool = False, ignore_drift: bool = False) -> Rethresholded:
    """Measure new thresholds on the line's images and write the model description again (history kept).

    First the good images go through a DriftMonitor against the model's drift reference: when they no longer look
    like the images it was exported with (a dimmer lamp, a moved camera, another material), new thresholds would
    hide the change, so DriftRefusal says why and nothing is written (unless ignore_drift; the history records
    it)."""
    from .detector import Detector
    from .progress import progress_bar

    if not 0.0 < target_frr < 1.0:
        raise ValueError(f"--target-frr must be in (0, 1), e.g. 0.01 for 1 % of good parts rejected; got {target_frr}")
    if len(good_files) < MIN_GOOD_IMAGES:
        raise ValueError(f"{len(good_files)} good images: a threshold at {target_frr:.1%} false rejects needs at least "
                         f"{MIN_GOOD_IMAGES} (better {int(np.ceil(10 / target_frr))}); collect more good parts")
    if default not in ("good_only", "f1") or (default == "f1" and not defect_files):
        raise ValueError(f"--default {default}: choose good_only, or f1 with --defect DIR")
    model_path = Path(model_path)
    with Detector(model_path) as detector:
        alarms = drift_check(detector, good_files)
        if alarms and not ignore_drift:
            raise DriftRefusal(f"the {len(good_files)} good images no longer look like the images {model_path.name} "
                               f"was exported with: {'; '.join(dict.fromkeys(alarms))}; new thresholds would hide "
                               f"that: fix the lamp, camera or material, or retrain (cfrg train); --ignore-drift sets "
                               f"them anyway")
        bar = progress_bar(desc="threshold", unit="image", total=len(good_files) + len(defect_files),
                           disable=not progress)
        try:
            good_scores, good_peaks = score_files(detector, good_files, bar.update)
            defect_scores = score_files(detector, defect_files, bar.update)[0] if defect_files else []
        finally:
            bar.close()
        old = detector.info
    from .build.thresholds import score_normalisation

    sources = {"good": f"{len(good_files)} good images (sha256 {files_fingerprint(good_files)[:16]})",
               "defect": f"{len(defect_files)} defect images"}
    thresholds = new_thresholds(good_scores, good_peaks, defect_scores, target_frr, sources)
    drift = ("no drift reference in model.json: not checked" if alarms is None else
             f"ignored: {'; '.join(dict.fromkeys(alarms))}" if alarms else "no drift against the reference")
    replaced = {"replaced": utc_now(), "by": command, "drift_check": drift, "default": old.default_threshold,
                "thresholds": {name: t.to_dict() for name, t in old.thresholds.items()},
                "score_normalisation": old.score_normalisation.to_dict()}
    new = dataclasses.replace(old, thresholds=thresholds, default_threshold=default,
                              score_normalisation=score_normalisation(np.array(good_scores),
                                                                      thresholds["good_only"].image),
                              threshold_history=[*old.threshold_history, replaced])
    return Rethresholded(old=old, new=new, good_scores=good_scores, defect_scores=defect_scores,
                         description=new.write_beside(model_path))

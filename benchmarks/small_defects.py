"""Which defects an exported model catches at its own thresholds, by defect size: for every test image of a set, the
verdict sdk.Detector gives (as a line camera or any deployment would), and for a defect image whether one of the
mask's regions overlaps its ground truth. The defect images are binned by their mask's area in frame pixels
(quartiles of the split, or --edges); good images give the false rejects at the same thresholds.

    python benchmarks/small_defects.py --model runs/line/off_ball_screw/model.onnx --category ball_screw \\
        [--data ../shared/data] [--min-area 0] [--edges 173,878,1910] [--json runs/small.json]

"caught" is the verdict ("defect"); "found" is a region of the Detector's mask touching the defect's mask (the
region a line camera reports; on good images a region anywhere is a false one); "I-AUROC" is the bin's defect images
against every good image by score alone, with no threshold, the figure the peer gets too
(benchmarks/peer_anomalib.py --by-size); "peak inside / outside" are the map's highest values on and off the defect,
in units of the pixel threshold (a defect the map sees stands above 1 inside and below it outside).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sdk import Detector  # noqa: E402
from sdk.data import AnomalyDataset  # noqa: E402
from sdk.metrics import image_auroc  # noqa: E402


def peak(amap: np.ndarray, where: np.ndarray, pixel_threshold: float):
    """The map's highest value on `where`, in units of the pixel threshold (None where `where` is empty)."""
    return round(float(amap[where].max()) / pixel_threshold, 3) if where.any() else None


def image_rows(model: str, data: str, category: str, min_area: int = 0) -> tuple[list[dict], Detector]:
    """One row per test image: label, score, verdict and, for a defect, its area and whether a region found it."""
    det = Detector(model, colour="rgb", min_area=min_area)
    test = AnomalyDataset(data, category, "test")
    rows = []
    for i in range(len(test)):
        r = det(test.load_image(i, colour="rgb"))
        row = {"image": Path(str(test[i].path)).name, "label": int(test[i].label), "type": test[i].defect_type,
               "score": round(float(r.score), 4), "caught": r.verdict == "defect", "regions": len(r.regions)}
        if test[i].label:
            truth = test.load_mask(i) > 0
            row.update(area=int(truth.sum()), found=bool((r.mask.astype(bool) & truth).any()),
                       peak_inside=peak(r.anomaly_map, truth, det.pixel_threshold),
                       peak_outside=peak(r.anomaly_map, ~truth, det.pixel_threshold))
        rows.append(row)
    return rows, det


def area_bins(areas, edges: list[float] | None = None) -> tuple[list[float], list[tuple[float, float]]]:
    """The bins' inner bounds (None: the quartiles of the areas above 0; an empty mask has no size) and each bin's
    [low, high) in frame pixels."""
    areas = np.asarray(areas, float)
    areas = areas[areas > 0]
    if not len(areas):
        raise ValueError("the test split has no defect images with a defect in their mask: nothing to bin by size")
    if edges is None:
        edges = [float(v) for v in np.percentile(areas, [25, 50, 75])]
    bounds = [0.0, *edges, np.inf]
    return edges, list(zip(bounds[:-1], bounds[1:]))


def area_edges(text: str) -> list[float]:
    """--edges: comma-separated inner bounds of the area bins in frame pixels, rising (an argparse type)."""
    try:
        edges = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes comma-separated numbers of pixels, e.g. 173,878,1910; got {text!r}")
    if edges != sorted(edges):
        raise argparse.ArgumentTypeError(f"the bounds must rise: {text!r}")
    return edges


def bin_name(lo: float, hi: float) -> str:
    """A bin's label, [lo, hi) in pixels, with the bounds as given (not rounded)."""
    return f"{lo:g}-<{hi:g}" if np.isfinite(hi) else f">={lo:g}"


def bin_members(areas, bins: list[tuple[float, float]]) -> list[np.ndarray]:
    """For each bin [lo, hi): which of `areas` fall in it; an area of 0 (a defect image whose mask is empty) in none."""
    areas = np.asarray(areas, float)
    return [(areas >= lo) & (areas < hi) & (areas > 0) for lo, hi in bins]


def size_auroc(good_scores, defect_scores, areas, edges: list[float] | None = None) -> list[dict]:
    """Per area bin: the I-AUROC (%) of its defect images against every good image, by score alone."""
    areas, defect_scores = np.asarray(areas, float), np.asarray(defect_scores, float)
    good_scores = np.asarray(good_scores, float)
    bins = area_bins(areas, edges)[1]
    rows = []
    for (lo, hi), pick in zip(bins, bin_members(areas, bins)):
        labels = np.r_[np.zeros(len(good_scores)), np.ones(pick.sum())]
        auroc = 100 * image_auroc(labels, np.r_[good_scores, defect_scores[pick]]) \
            if pick.any() and len(good_scores) else None
        rows.append({"area": bin_name(lo, hi), "images": int(pick.sum()),
                     "i_auroc": None if auroc is None else round(auroc, 2)})
    return rows


def size_table(rows: list[dict], edges: list[float] | None = None) -> tuple[list[float], list[dict]]:
    """The defect rows binned by area (edges: the bins' inner bounds; None: the quartiles of the areas). Defect images
    whose mask is empty have no area and fall in no bin."""
    defects = [r for r in rows if r["label"]]
    areas = [r["area"] for r in defects]
    edges, bins = area_bins(areas, edges)
    aurocs = size_auroc([r["score"] for r in rows if not r["label"]], [r["score"] for r in defects], areas, edges)
    table = []
    for auroc, pick in zip(aurocs, bin_members(areas, bins)):
        inside = [r for r, p in zip(defects, pick) if p]
        n = len(inside)

        def median(key):
            values = [r[key] for r in inside if r[key] is not None]
            return round(float(np.median(values)), 3) if values else None

        table.append({"area": auroc["area"], "images": n, "i_auroc": auroc["i_auroc"],
                      "caught": sum(r["caught"] for r in inside), "found": sum(r["found"] for r in inside),
                      "caught_or_found": sum(r["caught"] or r["found"] for r in inside),
                      "median_peak_inside": median("peak_inside"), "median_peak_outside": median("peak_outside")})
    return edges, table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model.onnx (or an engine) of cfrg export")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--category", required=True)
    p.add_argument("--min-area", type=int, default=0, help="the Detector's minimum region area (as deployed)")
    p.add_argument("--edges", type=area_edges, help="comma-separated inner bounds of the area bins, in frame "
                   "pixels (default: the quartiles)")
    p.add_argument("--json")
    ns = p.parse_args(argv)
    rows, det = image_rows(ns.model, ns.data, ns.category, ns.min_area)
    edges, table = size_table(rows, ns.edges)
    good = [r for r in rows if not r["label"]]
    rejected = sum(r["caught"] for r in good)
    with_region = sum(r["regions"] > 0 for r in good)
    either = sum(r["caught"] or r["regions"] > 0 for r in good)
    unmasked = sum(1 for r in rows if r["label"] and r["area"] == 0)
    if unmasked:
        print(f"{unmasked} defect image(s) have an empty mask: counted in no size bin")
    print(f"{ns.category}: image threshold {det.image_threshold:.4g}, pixel threshold {det.pixel_threshold:.4g}, "
          f"min area {ns.min_area}; good images rejected {rejected}/{len(good)} (with a region {with_region}, "
          f"either {either})")
    print("\n| defect area (px) | images | caught | found | caught or found | I-AUROC | peak inside / outside "
          "(x pixel thr) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for t in table:
        n = max(t["images"], 1)
        counts = " | ".join(f"{t[k]} ({100 * t[k] / n:.0f}%)" for k in ("caught", "found", "caught_or_found"))
        print(f"| {t['area']} | {t['images']} | {counts} | {t['i_auroc']} | "
              f"{t['median_peak_inside']} / {t['median_peak_outside']} |")
    if ns.json:
        Path(ns.json).write_text(json.dumps({"model": ns.model, "category": ns.category, "min_area": ns.min_area,
                                             "image_threshold": det.image_threshold,
                                             "pixel_threshold": det.pixel_threshold, "edges": edges,
                                             "good_rejected": [rejected, len(good)],
                                             "good_with_region": with_region, "good_either": either,
                                             "table": table, "rows": rows},
                                            indent=1, allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

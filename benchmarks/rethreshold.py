"""Re-thresholding from the line, measured: thresholds recomputed by `cfrg threshold` from one half of a set's
test/good images move the false-reject rate on the other half to the target, within its confidence interval.

    python benchmarks/rethreshold.py --runs runs/prec/ball_screw,runs/prec/magnetic_tile [--target-frr 0.05]
        [--splits 50] [--data ../shared/data] [--json out.json]

Each run folder holds model.onnx + model.json of cfrg export; the model is copied to a temporary folder (the run's
model.json is never rewritten). First the command itself: `rethreshold` (what cfrg threshold runs) on the even
half of test/good, the Detector then reading the new default, the odd half judged. Then --splits random half
splits (seeded), thresholds set by the same function (sdk.rethreshold.new_thresholds) on scores of the same
graph: the false-reject rate on the judged half against the target. Its 95 % interval counts both halves'
sampling, target +- 1.96 sqrt(p (1 - p) (1/n_fit + 1/n_judged)) (the threshold is itself estimated from n_fit
images); a split "holds" when its rate lies inside, and about 95 % should. Sets with fewer than 2 x 20 good test
images are skipped (cfrg threshold needs 20).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sdk.detector import Detector  # noqa: E402
from sdk.files import image_files  # noqa: E402
from sdk.rethreshold import MIN_GOOD_IMAGES, new_thresholds, rethreshold, score_files  # noqa: E402


def interval(target: float, n_fit: int, n_judged: int) -> tuple[float, float]:
    half = 1.96 * np.sqrt(target * (1 - target) * (1 / n_fit + 1 / n_judged))
    return max(0.0, target - half), min(1.0, target + half)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", required=True, help="comma-separated run folders with model.onnx and model.json")
    parser.add_argument("--data", default=os.environ.get("CFRG_DATA", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--target-frr", type=float, default=0.05)
    parser.add_argument("--splits", type=int, default=50)
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    print(f"{'set':<14} {'fit':>4} {'judged':>6} {'FRR before':>10} {'FRR after':>10} {'95% interval':>15} "
          f"{'splits holding':>15} {'mean FRR after':>15}")
    rng = np.random.default_rng(0)
    for run in args.runs.split(","):
        run = Path(run)
        info = json.loads((run / "model.json").read_text())
        category = info["training"]["category"]
        good = image_files(Path(args.data) / category / "test" / "good")
        if len(good) < 2 * MIN_GOOD_IMAGES:
            print(f"{category:<14} skipped: {len(good)} good test images")
            continue
        fit, judged = good[0::2], good[1::2]
        with tempfile.TemporaryDirectory() as tmp:
            model = Path(tmp) / "model.onnx"
            shutil.copy(run / "model.onnx", model)
            shutil.copy(run / "model.json", Path(tmp) / "model.json")
            before = Detector(model).image_threshold
            done = rethreshold(model, fit, target_frr=args.target_frr)
            with Detector(model) as det:
                after = det.image_threshold  # the new default, read back
                assert after == done.new.thresholds["good_only"].image
                scores, peaks = (np.array(v) for v in score_files(det, good))
        judged_scores = scores[1::2]
        low, high = interval(args.target_frr, len(fit), len(judged))
        frr_after = float((judged_scores >= after).mean())
        held, rates = 0, []
        for _ in range(args.splits):
            order = rng.permutation(len(good))
            a, b = order[: len(good) // 2], order[len(good) // 2:]
            t = new_thresholds(scores[a], peaks[a], [], args.target_frr, {"good": "split"})["good_only"].image
            rate = float((scores[b] >= t).mean())
            rates.append(rate)
            low_b, high_b = interval(args.target_frr, len(a), len(b))
            held += int(low_b <= rate <= high_b)
        row = {"set": category, "n_fit": len(fit), "n_judged": len(judged), "threshold_before": before,
               "threshold_after": after, "frr_before": float((judged_scores >= before).mean()), "frr_after": frr_after,
               "interval_95": [low, high], "holds": bool(low <= frr_after <= high), "target": args.target_frr,
               "splits": args.splits, "splits_holding": held, "mean_frr_after_splits": float(np.mean(rates)),
               "sd_frr_after_splits": float(np.std(rates))}
        rows.append(row)
        print(f"{category:<14} {len(fit):>4} {len(judged):>6} {row['frr_before']:>10.3f} {frr_after:>10.3f} "
              f"[{low:.3f}, {high:.3f}] {held:>7} of {args.splits:<5} {np.mean(rates):>9.3f} +- {np.std(rates):.3f}")
    print(f"target FRR {args.target_frr}: the even/odd split holds it on {sum(r['holds'] for r in rows)} of "
          f"{len(rows)} sets; random splits: {sum(r['splits_holding'] for r in rows)} of "
          f"{sum(r['splits'] for r in rows)}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The drift watch on real data: for each trained model (RUNS/<set>/model.onnx, read-only), its drift reference
from the run's held-back good images (the export's own function), written with model.json into OUT/<set>/;
then the good test images streamed unchanged (false alarms) and four simulated drifts (frames to the first
alarm, and to the first good part the Detector rejects), and the same frames replayed under other CUSUM
settings (the defaults' choice across all sets: mean and worst set).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/drift_figures.py --runs /work/main/runs/prec --out runs/drift

The good test images are streamed in name order (which groups acquisition sessions: magnetic_tile's first 50 are
all dark tiles) and in a shuffled order (seed 0). Drifts start after ONSET unchanged frames (the shuffled good
test images, repeated to ONSET + LENGTH):
    dimming   the lamp: brightness x (1 - 0.5 t), t = 0..1 over LENGTH frames
    defocus   Gaussian blur, sigma 0..4 model pixels over LENGTH frames
    shift     the camera knocked: every frame moved 5 % of its width right (reflected border), from the onset
    batch     a darker material batch: 88 % brightness and a browner shade (blue x 0.94), from the onset
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdk.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from sdk.build.thresholds import measure_thresholds  # noqa: E402
from sdk.data import read_image  # noqa: E402
from sdk.detector import Detector  # noqa: E402
from sdk.drift import (IMAGE_STATISTICS, SLACK, DECISION, WATCHED, DriftMonitor, cusum_arl,  # noqa: E402
                       image_statistics, reference_from_files)
from sdk.evaluate import backend_predictor  # noqa: E402
from sdk.files import image_files  # noqa: E402
from sdk.model_info import ModelInfo  # noqa: E402
from sdk.run_record import RunRecord  # noqa: E402

SETS = ("ball_screw", "capsules", "magnetic_tile", "paper_brg02", "paper_flr01", "tire")
ONSET, LENGTH = 20, 100
SETTINGS = [(0.5, 10.0), (0.5, 14.0), (1.0, 6.0), (1.0, 8.0), (1.5, 6.0)]  # (slack k, decision h)


def drifted(image_bgr: np.ndarray, scenario: str, t: float, model_hw) -> np.ndarray:
    """The frame under `scenario` at progress t in [0, 1] (t < 0: before the onset, unchanged)."""
    if t < 0 or scenario == "good":
        return image_bgr
    if scenario == "dimming":
        return np.clip(image_bgr.astype(np.float32) * (1 - 0.5 * t), 0, 255).astype(np.uint8)
    if scenario == "defocus":
        sigma = 4.0 * t * image_bgr.shape[0] / model_hw[0]  # model pixels -> frame pixels
        return image_bgr if sigma < 0.05 else cv2.GaussianBlur(image_bgr, (0, 0), sigma)
    if scenario == "shift":
        dx = 0.05 * image_bgr.shape[1]
        return cv2.warpAffine(image_bgr, np.float32([[1, 0, dx], [0, 1, 0]]), image_bgr.shape[1::-1],
                              borderMode=cv2.BORDER_REFLECT_101)
    if scenario == "batch":
        return np.clip(image_bgr.astype(np.float32) * np.float32([0.88 * 0.94, 0.88, 0.88]), 0, 255).astype(np.uint8)
    raise ValueError(scenario)


def with_reference(run: Path, out: Path, data: str) -> Path:
    """OUT/model.onnx (a link to the run's) with model.json holding the drift reference, measured as export does."""
    info = ModelInfo.read(run / "model.onnx")
    files = RunRecord.read(run, data).held_back_files()
    size = (info.input.height, info.input.width)
    predict = backend_predictor(OnnxRuntimeBackend(run / "model.onnx"), info.input.name, info.input.colour_order)
    target = info.thresholds["good_only"].details.get("target_frr", 0.01)
    thresholds, scores = measure_thresholds(predict, size, files, target, None, None, False)
    if not np.isclose(thresholds["good_only"].image, info.thresholds["good_only"].image, rtol=1e-4):
        print(f"  note: held-back scores give threshold {thresholds['good_only'].image:.5g}, model.json says "
              f"{info.thresholds['good_only'].image:.5g}", file=sys.stderr)
    reference = reference_from_files(files, scores, info.score_normalisation, size)
    out.mkdir(parents=True, exist_ok=True)
    link = out / "model.onnx"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink((run / "model.onnx").resolve(), link)
    ModelInfo.from_dict({**info.to_dict(), "drift_reference": reference}).write_beside(link)
    shutil.copy(run / "config.json", out / "config.json")
    return link


def watched_values(det: Detector, frames: list[np.ndarray], grid) -> tuple[np.ndarray, list[str]]:
    """(frames, WATCHED + normalised score or NaN) and the verdicts, as DriftMonitor.update computes them."""
    index = [IMAGE_STATISTICS.index(n) for n in WATCHED]
    rows, verdicts = [], []
    for s in range(0, len(frames), 8):
        chunk = frames[s:s + 8]
        for frame, result in zip(chunk, det.batch(chunk)):
            score = result.normalised_score if result.verdict == "ok" else np.nan
            rows.append(np.append(image_statistics(frame, grid, "bgr")[index], score))
            verdicts.append(result.verdict)
    return np.array(rows), verdicts


def replay(reference: dict, values: np.ndarray, frame_hw, slack: float, decision: float):
    monitor = DriftMonitor(reference, slack=slack, decision=decision)
    alarms = []
    for i, row in enumerate(values):
        alarms += [e for e in monitor.observe(row, i, frame_hw) if e.kind == "drift"]
    return alarms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="/work/main/runs/prec")
    ap.add_argument("--out", default=str(ROOT / "runs" / "drift"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--sets", nargs="*", default=list(SETS))
    ns = ap.parse_args()
    results = {}
    for name in ns.sets:
        print(f"[{name}]", flush=True)
        model = with_reference(Path(ns.runs) / name, Path(ns.out) / name, ns.data)
        det = Detector(model, backend="onnxruntime")
        reference = det.info.drift_reference
        grid, size = reference["grid"], det.size
        good = [read_image(p, "bgr") for p in image_files(Path(ns.data) / name / "test" / "good")]
        frames_hw = good[0].shape[:2]
        order = np.random.default_rng(0).permutation(len(good))
        shuffled = [good[i] for i in order]
        looped = [shuffled[i % len(good)] for i in range(ONSET + LENGTH)]
        sequences = {"good": (good, [-1.0] * len(good)), "shuffled": (shuffled, [-1.0] * len(good))}
        for scenario in ("dimming", "defocus", "shift", "batch"):
            ts = [(i - ONSET) / (LENGTH - 1) if i >= ONSET else -1.0 for i in range(len(looped))]
            sequences[scenario] = ([drifted(f, scenario, t, size) for f, t in zip(looped, ts)], ts)
        entry = {"n_reference": reference["n_images"], "n_good": len(good)}
        baseline = None  # each good test image's own verdict, unchanged (from the shuffled stream)
        for scenario, (frames, ts) in sequences.items():
            values, verdicts = watched_values(det, frames, grid)
            baseline = [verdicts[list(order).index(i)] for i in range(len(good))] if scenario == "shuffled" else baseline
            # good parts the drift turned into rejects: judged defect now, ok unchanged (shuffled order)
            rejects = [i for i, v in enumerate(verdicts) if v == "defect" and ts[i] >= 0
                       and baseline is not None and baseline[order[i % len(good)]] == "ok"]
            per_setting = {}
            for k, h in SETTINGS:
                alarms = replay(reference, values, frames_hw, k, h)
                start = 0 if scenario in ("good", "shuffled") else ONSET
                after = [e for e in alarms if e.frame_id >= start]
                first = after[0] if after else None
                per_setting[f"{k:g}/{h:g}"] = {
                    "alarms": len(alarms), "before_onset": len(alarms) - len(after),
                    "first": None if first is None else first.frame_id - start,
                    "message": None if first is None else first.message}
            entry[scenario] = {"settings": per_setting, "first_reject": rejects[0] - ONSET if rejects else None,
                               "rejects": len(rejects), "frames": len(frames),
                               "defect_verdicts": sum(v == "defect" for v in verdicts)}
            d = per_setting[f"{SLACK:g}/{DECISION:g}"]
            print(f"  {scenario:8s} alarms {d['alarms']:2d} first {d['first']} ({d['message']}); good parts newly "
                  f"rejected {len(rejects)}, first {entry[scenario]['first_reject']}", flush=True)
        results[name] = entry
        det.close()
    Path(ns.out).mkdir(parents=True, exist_ok=True)
    (Path(ns.out) / "figures.json").write_text(json.dumps(results, indent=2))
    print_tables(results)
    return 0


def print_tables(results: dict) -> None:
    print("\nAlarms on the good test images streamed unchanged (defaults k=%g h=%g), name order / shuffled:"
          % (SLACK, DECISION))
    key = f"{SLACK:g}/{DECISION:g}"
    total = [sum(r[o]["settings"][key]["alarms"] for r in results.values()) for o in ("good", "shuffled")]
    frames = sum(r["good"]["frames"] for r in results.values())
    for name, r in results.items():
        first = r["good"]["settings"][key]
        said = f" (frame {first['first']}: {first['message']})" if first["message"] else ""
        print(f"  {name:14s} {r['good']['frames']:4d} frames, {first['alarms']} / "
              f"{r['shuffled']['settings'][key]['alarms']} alarms{said}; reference: {r['n_reference']} held-back "
              f"images; the model rejects {r['good']['defect_verdicts']} of these good images")
    print(f"  all sets       {frames:4d} frames, {total[0]} / {total[1]} alarms")
    print("\nFrames from the onset to the first alarm (defaults); in brackets, to the first good part the drift "
          "made the model reject:")
    print("  set            " + "".join(f"{s:>20s}" for s in ("dimming", "defocus", "shift", "batch")))
    for name, r in results.items():
        cells = []
        for s in ("dimming", "defocus", "shift", "batch"):
            first = r[s]["settings"][key]["first"]
            cells.append(f"{'-' if first is None else first} [{'-' if r[s]['first_reject'] is None else r[s]['first_reject']}]")
        print(f"  {name:14s} " + "".join(f"{c:>20s}" for c in cells))
    print("\nCUSUM settings across all sets: false alarms on the good streams, frames to flag each drift "
          "(mean over sets / worst set; unflagged counted as the drift's length)")
    for k, h in SETTINGS:
        key = f"{k:g}/{h:g}"
        fa = sum(r[o]["settings"][key]["alarms"] + sum(r[s]["settings"][key]["before_onset"] for s in (
            "dimming", "defocus", "shift", "batch")) for r in results.values() for o in ("good", "shuffled"))
        cells = []
        for s in ("dimming", "defocus", "shift", "batch"):
            firsts = [r[s]["settings"][key]["first"] for r in results.values()]
            firsts = [LENGTH if f is None else f for f in firsts]
            cells.append(f"{np.mean(firsts):5.1f}/{max(firsts):3d}")
        bound = (2 * len(WATCHED) + 1) / cusum_arl(k, h)
        print(f"  k={k:<4g} h={h:<4g} false alarms (good streams, before onsets) {fa:2d}, bound {bound:.2g}/frame  " + "  ".join(cells))


if __name__ == "__main__":
    raise SystemExit(main())

"""What tiles cost, and whether their seams show: latency and memory per frame as a function of the frame's size for
a model trained on tiles (cfrg train --scale) against a whole-frame model, in one run; and the stitched map along
the tiles' seams on good images against the map elsewhere.

    python benchmarks/tiles.py --tiled runs/tiles/auto8_ball_screw/model.onnx --whole runs/prec/ball_screw/model.onnx \\
        [--data ../shared/data --category ball_screw] [--repeats 20] [--json runs/tiles/cost.json]
    python benchmarks/tiles.py --tiled runs/tiles/auto8_ball_screw/model.onnx --seams-only

Frame sizes: one tile (the tiled model's tile at its scale, so exactly one tile), a 1130x460 part (ball_screw's
own size) and a 4096x2048 strip, cut from real images of --category (repeated to fill the strip). Each (model, frame
size) runs in its own process, one frame at a time through sdk.Detector (ONNX Runtime, every core): the p50 and p90
of Detector(frame) (pre-processing, tiles, inference, stitching, post-processing; not the decoding), and the
process's peak resident memory above what it held with the model loaded before its first frame (the tiles, the
maps, ONNX Runtime's buffers for that batch). Seams: on the good test images, the mean of the tiled model's stitched
map within 2 model pixels of a seam between tiles' shares of the frame (inside it) against its mean elsewhere on
pixels of one share (off the seams, and off the spans where the last tile along an axis overlaps its neighbour): their
ratio (1.0: the seams do not show; only for maps that are positive there) and their difference in standard deviations
of the map elsewhere (0: the seams do not show; z-scored maps, such as the tiles' summed memory, go below 0), per
image and then averaged, with its 95% interval. A part's map is not flat, so any line differs from the rest a
little: the same figure for the seams moved by 16 to 64 model pixels either way (lines of the same shape that are not
seams, none on an overlap) is the noise floor, and the seams show where they stand above each of those lines image
by image, the 95% interval of the paired difference above 0 ("shows").
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def frames_of(data: str, category: str, sizes: dict) -> dict:
    """{name: BGR frame of that size}, cut from (or tiled with) the category's real test images."""
    from sdk.data import AnomalyDataset

    test = AnomalyDataset(data, category, "test")
    image = test.load_image(0, colour="bgr")
    out = {}
    for name, (h, w) in sizes.items():
        reps = (-(-h // image.shape[0]), -(-w // image.shape[1]), 1)
        out[name] = np.ascontiguousarray(np.tile(image, reps)[:h, :w]) if (h, w) != image.shape[:2] else image
    return out


def measure_one(model: str, frame_path: str, repeats: int) -> dict:
    """In this process: the model loaded, then `repeats` calls on the frame (after one warm-up)."""
    import resource

    from sdk import Detector

    frame = np.load(frame_path)
    det = Detector(model)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    first = det(frame)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        det(frame)
        times.append(1e3 * (time.perf_counter() - t0))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"p50_ms": round(float(np.percentile(times, 50)), 2), "p90_ms": round(float(np.percentile(times, 90)), 2),
            "tiles": first.tiling["tiles"] if first.tiling else 1, "memory_mib": round((peak - before) / 1024, 1)}


# lines of the seams' shape that are not seams: the seams moved by these many model pixels (the noise floor)
CONTROL_SHIFTS = (-64, -48, -32, -16, 16, 32, 48, 64)
SEAM_HALF_WIDTH = 2  # model pixels either side of a line


def span_band(shape: tuple[int, int], x_spans, y_spans) -> np.ndarray:
    """The pixels in the columns [start, end) of x_spans and the rows [start, end) of y_spans."""
    band = np.zeros(shape, bool)
    for start, end in x_spans:
        band[:, max(0, start):end] = True
    for start, end in y_spans:
        band[max(0, start):end, :] = True
    return band


def line_band(shape: tuple[int, int], x_edges, y_edges, half: int = SEAM_HALF_WIDTH) -> np.ndarray:
    """The pixels within `half` of the vertical lines at x_edges and the horizontal ones at y_edges (edges inside the
    frame, as seam_edges and control_edges give them)."""
    return span_band(shape, [(e - half, e + half) for e in x_edges], [(e - half, e + half) for e in y_edges])


def share_starts(shape: tuple[int, int], plan) -> tuple[list[int], list[int], int, int]:
    """Where the tiles' shares of a frame (their insides, [x, x + tw) and [y, y + th)) start in map pixels; tw, th."""
    from sdk.tiling import tile_grid

    m = plan.margin
    xs, ys = tile_grid((shape[0] + 2 * m, shape[1] + 2 * m), plan.tile, plan.overlap)
    return xs, ys, plan.tile[1] - 2 * m, plan.tile[0] - 2 * m


def seam_edges(shape: tuple[int, int], plan) -> tuple[list[int], list[int]]:
    """Where the tiles' shares of a frame meet, in map pixels (inside the frame)."""
    xs, ys, tw, th = share_starts(shape, plan)
    x_edges = sorted({e for x in xs for e in (x, x + tw) if 0 < e < shape[1]})
    y_edges = sorted({e for y in ys for e in (y, y + th) if 0 < e < shape[0]})
    return x_edges, y_edges


def shared_spans(shape: tuple[int, int], plan) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The spans along x and along y where two shares overlap (the last tile along an axis is aligned with the
    frame's end), whose pixels are a join of two maps rather than one map: [start, end) in map pixels."""
    xs, ys, tw, th = share_starts(shape, plan)

    def spans(starts, side):
        return [(b, a + side) for a, b in zip(starts, starts[1:]) if b < a + side]

    return spans(xs, tw), spans(ys, th)


def control_edges(edges: list[int], shift: int, size: int, shared=()) -> list[int]:
    """The seams moved by `shift`, less those that land within two bands of a seam, outside the frame, or with their
    band on a span two shares overlap (`shared`)."""
    h = SEAM_HALF_WIDTH
    return [e + shift for e in edges
            if 0 < e + shift < size and min(abs(e + shift - f) for f in edges) >= 3 * h
            and not any(e + shift - h < end and start < e + shift + h for start, end in shared)]


def excess_in_sd(values: np.ndarray, far: float, sd: float) -> float:
    """How far the mean of `values` stands above `far`, in units of `sd` (NaN where the map elsewhere is flat)."""
    return (float(values.mean()) - far) / sd if sd > 0 else float("nan")


def line_figures(amap: np.ndarray, plan) -> dict:
    """One stitched map: its mean on the seams' bands and on the pixels of one share away from the seams (the
    reference: not on a seam's band, not where two shares overlap), the reference's spread, the seams' excess over
    the reference in that spread, and each control line's excess (shifts whose lines all fall on seams, on an
    overlap or outside are left out)."""
    x_edges, y_edges = seam_edges(amap.shape, plan)
    x_shared, y_shared = shared_spans(amap.shape, plan)
    seams = line_band(amap.shape, x_edges, y_edges)
    overlaps = span_band(amap.shape, x_shared, y_shared)
    rest = amap[~seams & ~overlaps]
    far, sd = float(rest.mean()), float(rest.std())
    control = {}
    for s in CONTROL_SHIFTS:
        lines = line_band(amap.shape, control_edges(x_edges, s, amap.shape[1], x_shared),
                          control_edges(y_edges, s, amap.shape[0], y_shared)) & ~seams & ~overlaps
        if lines.any():
            control[s] = excess_in_sd(amap[lines], far, sd)
    return {"seam_mean": float(amap[seams].mean()), "elsewhere_mean": far, "elsewhere_sd": sd,
            "excess_sd": excess_in_sd(amap[seams], far, sd), "control_excess_sd": control}


def rounded(value, digits: int = 3):
    """A figure for the JSON output: rounded, or None where it is not a number (JSON has no NaN)."""
    return round(float(value), digits) if value is not None and np.isfinite(value) else None


def mean_and_interval(values) -> tuple[float, float]:
    """The mean of the finite values and the half-width of its 95% interval (NaN with fewer than two)."""
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), 1.96 * float(v.std(ddof=1)) / np.sqrt(len(v)) if len(v) > 1 else float("nan")


def seams_show(seam: list[float], controls: dict[int, list[float]]) -> bool:
    """The seams show where, image by image, they stand above every control line: for each control, the lower end of
    the 95% interval of (seams' excess - that line's excess) over the images is above 0 (pairs within an image, so
    what the image adds to every line cancels). Against 8 controls by their means alone, a map with no seams at all
    would show about 1 time in 9 (the seams are then one of 9 lines of the same kind)."""
    if not controls:
        return False
    for values in controls.values():
        diff = [a - b for a, b in zip(seam, values) if np.isfinite(a) and np.isfinite(b)]
        mean, half = mean_and_interval(diff)
        if not (np.isfinite(half) and mean - half > 0):
            return False
    return True


def seam_ratio(model: str, data: str, category: str, limit: int) -> dict:
    """The stitched map within 2 model pixels of the inner seams against the map of one share elsewhere, on good test
    images; and the same for lines of the same shape that are not seams (the seams moved by CONTROL_SHIFTS, off the
    tiles' overlaps), the noise floor a seam must rise above to show. Excess figures are per image, then averaged."""
    from sdk import Detector
    from sdk.data import AnomalyDataset
    from sdk.evaluate import backend_predictor, spread_indices
    from sdk.tiling import tiled_predict

    det = Detector(model, colour="rgb")
    plan = det.frame_plan
    test = AnomalyDataset(data, category, "test")
    good = [i for i in range(len(test)) if not test[i].label]
    near, far, excess = [], [], []
    control = {s: [] for s in CONTROL_SHIFTS}
    predict = backend_predictor(det.backend, det.input_name, det.model_colour)
    for i in [good[k] for k in spread_indices(len(good), limit)]:
        (amap,), _ = tiled_predict(predict, [test.load_image(i, colour="rgb")], plan)
        figures = line_figures(amap, plan)
        near.append(figures["seam_mean"])
        far.append(figures["elsewhere_mean"])
        excess.append(figures["excess_sd"])
        for s in CONTROL_SHIFTS:
            control[s].append(figures["control_excess_sd"].get(s, np.nan))
    if not near:
        raise ValueError(f"{category}'s test split has no good images: the seams are measured on good images")
    ratio = np.mean(near) / np.mean(far) if np.mean(far) > 0 else None
    seam = mean_and_interval(excess)
    control_sd = {s: m for s, m in ((s, mean_and_interval(v)[0]) for s, v in control.items()) if np.isfinite(m)}
    return {"images": len(near), "seam_mean": rounded(np.mean(near), 4), "elsewhere_mean": rounded(np.mean(far), 4),
            "ratio": rounded(ratio),
            # per image, then averaged: the seams' excess over the map elsewhere, and its 95% interval
            "excess_sd": rounded(seam[0]), "excess_sd_interval": rounded(seam[1]),
            "control_excess_sd": {str(s): rounded(v) for s, v in control_sd.items()},
            "control_max_sd": rounded(max(control_sd.values())) if control_sd else None,
            "controls_above": sum(v >= seam[0] for v in control_sd.values()),
            "shows": seams_show(excess, {s: control[s] for s in control_sd})}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiled", help="model.onnx of a model trained on tiles (required)")
    p.add_argument("--whole", help="model.onnx of a whole-frame model of the same set (required)")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--category", default="ball_screw")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--seam-images", type=int, default=25)
    p.add_argument("--seams-only", action="store_true", help="only the seams of --tiled (no --whole, no latency)")
    p.add_argument("--json")
    p.add_argument("--one", nargs=3, metavar=("MODEL", "FRAME", "REPEATS"), help=argparse.SUPPRESS)  # child process
    ns = p.parse_args(argv)
    if ns.one:
        print(json.dumps(measure_one(ns.one[0], ns.one[1], int(ns.one[2]))))
        return 0
    if ns.seams_only and ns.tiled:
        seams = seam_ratio(ns.tiled, ns.data, ns.category, ns.seam_images)
        print(f"seams: {seams}")
        if ns.json:
            Path(ns.json).write_text(json.dumps({"tiled": ns.tiled, "seams": seams}, indent=2, allow_nan=False))
        return 0
    if not (ns.tiled and ns.whole):
        p.error("give --tiled MODEL and --whole MODEL (or --tiled MODEL --seams-only)")

    from sdk.model_info import ModelInfo

    tiling = ModelInfo.read(ns.tiled).tiling
    if not tiling:
        sys.exit(f"{ns.tiled} was not trained on tiles (its model.json has no 'tiling'): give a model of cfrg train --scale")
    one_tile = tuple(int((t - 2 * tiling.get("margin", 0)) * tiling["scale"]) for t in tiling["tile"])  # one tile's share
    sizes = {f"one tile ({one_tile[1]}x{one_tile[0]})": one_tile, "a part (1130x460)": (460, 1130),
             "a strip (4096x2048)": (2048, 4096)}
    frames = frames_of(ns.data, ns.category, sizes)
    rows = []
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"cfrg-tiles-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    for name, frame in frames.items():
        path = tmp / f"{len(rows)}.npy"
        np.save(path, frame)
        for kind, model in (("tiles", ns.tiled), ("whole", ns.whole)):
            done = subprocess.run([sys.executable, __file__, "--one", model, str(path), str(ns.repeats)],
                                  capture_output=True, text=True, check=True)
            rows.append({"frame": name, "model": kind, **json.loads(done.stdout.strip().splitlines()[-1])})
            print(f"{name:<26} {kind:<6} {rows[-1]}", flush=True)
    seams = seam_ratio(ns.tiled, ns.data, ns.category, ns.seam_images)
    print(f"seams: {seams}")
    result = {"machine": {"cpu_cores": os.cpu_count(), "processor": platform.processor() or platform.machine()},
              "tiled": ns.tiled, "whole": ns.whole, "tiling": tiling, "rows": rows, "seams": seams}
    print("\n| frame | model | tiles | p50 ms | p90 ms | memory MiB | p50 vs whole |\n| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        whole = next(w for w in rows if w["frame"] == r["frame"] and w["model"] == "whole")
        print(f"| {r['frame']} | {r['model']} | {r['tiles']} | {r['p50_ms']} | {r['p90_ms']} | {r['memory_mib']} | "
              f"{r['p50_ms'] / whole['p50_ms']:.2f}x |")
    if ns.json:
        Path(ns.json).write_text(json.dumps(result, indent=2, allow_nan=False))
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())

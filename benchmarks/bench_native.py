"""sdk._native (C++) against the best OpenCV / NumPy composites doing the same job, 1 and 2 threads.

    python benchmarks/bench_native.py [--reps 30] [--data ../shared/data]

Cases (outputs written into preallocated buffers on both sides):
  pre  area     1920x1080 BGR frame -> 256x256 RGB uint8 NHWC slot (the default: >= 2x shrink, so
                INTER_AREA); baseline cv2.resize(INTER_AREA) + cv2.cvtColor + np.copyto.
  pre  linear   the same with interpolation forced to bilinear; baseline cv2.resize(INTER_LINEAR) + ...
  post          256x256 float map -> 1920x1080: resize, threshold, 8-connected components, min-area
                filter, per-region box/area/max/mean, filtered mask; baseline cv2.resize (into the
                output) + cv2.compare + cv2.connectedComponentsWithStats + NumPy statistics (per
                region bounding-box slices) + np.take for the filtered mask.
  tiles max     8192x1024 BGR frame -> 256x256 tiles (overlap 32), stitched back with 'max';
                baseline the NumPy twin (sdk.tiling with CFRG_NO_NATIVE=1).
  tiles mean    the same with the weighted mean.

Threads: the baseline runs with cv2.setNumThreads(1) / (2) (the NumPy parts are single-threaded),
the native side with threads=1 / 2. Runs are interleaved (baseline, native, baseline, native, ...)
and medians of --reps repetitions are reported, because other jobs share this machine's 2 cores:
absolute times are noisy, ratios from the same run are the fair figure.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sdk import postprocess as post  # noqa: E402
from sdk import preprocess as pre  # noqa: E402
from sdk import tiling  # noqa: E402
from sdk.native import require_native, use_implementation  # noqa: E402



def load_frame(data: Path, size: tuple[int, int]) -> np.ndarray:
    """A real ball-screw photo scaled to size (W, H), or noise when the data is absent."""
    paths = sorted((data / "ball_screw" / "test" / "pitting").glob("*.jpg"))
    if paths:
        return cv2.resize(cv2.imread(str(paths[0]), cv2.IMREAD_COLOR), size, interpolation=cv2.INTER_CUBIC)
    return np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def load_map(data: Path) -> np.ndarray:
    """A 256x256 anomaly-map-like image: a real defect mask, blurred, plus smooth noise."""
    rng = np.random.default_rng(1)
    noise = cv2.GaussianBlur(rng.random((256, 256), dtype=np.float32), (0, 0), 3) * 0.3
    paths = sorted((data / "ball_screw" / "ground_truth" / "pitting").glob("*_mask.png"))
    masks = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths[:3]]
    base = np.zeros((256, 256), np.float32)
    for i, m in enumerate(masks):  # three defects side by side
        small = cv2.resize(m.astype(np.float32) / 255, (256, 256), interpolation=cv2.INTER_AREA)
        base = np.maximum(base, np.roll(cv2.GaussianBlur(small, (0, 0), 2), 60 * i, axis=1))
    return base + noise


def cv_threads(n: int):
    def run(fn):
        cv2.setNumThreads(n)
        return fn()

    return run


def make_cases(data: Path):
    frame = load_frame(data, (1920, 1080))
    u8 = pre.make_batch(1, (256, 256))

    def composite(interp):
        img = cv2.cvtColor(cv2.resize(frame, (256, 256), interpolation=interp), cv2.COLOR_BGR2RGB)
        np.copyto(u8[0], img)

    amap = load_map(data)
    full, mask = np.empty((1080, 1920), np.float32), np.empty((1080, 1920), np.uint8)
    threshold, min_area = 0.3, 50  # three regions, one per real defect

    def post_baseline():
        resized = cv2.resize(amap, (1920, 1080), dst=full, interpolation=cv2.INTER_LINEAR)
        binary = cv2.compare(resized, threshold, cv2.CMP_GE)  # uint8 0/255 in one pass
        count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        keep = stats[:, cv2.CC_STAT_AREA] >= min_area
        keep[0] = False
        regions = []
        for k in np.flatnonzero(keep):
            x, y, w, h, area = stats[k]
            inside = labels[y : y + h, x : x + w] == k
            values = resized[y : y + h, x : x + w][inside]
            regions.append(((x, y, w, h), area, values.max(), values.mean()))
        np.take(np.where(keep, np.uint8(255), np.uint8(0)), labels, out=mask)  # min-area filtered mask
        return regions

    line = load_frame(data, (8192, 1024))
    tiles, origins = tiling.make_tiles(line, 256, 32)
    maps = np.random.default_rng(2).random(tiles.shape[:3], dtype=np.float32)
    stitched = np.empty((1024, 8192), np.float32)

    def tiles_twin(mode):
        with use_implementation("twin"):
            t, o = tiling.make_tiles(line, 256, 32, out=tiles)
            tiling.stitch(maps, o, line.shape, mode, out=stitched)

    def tiles_native(mode, threads):
        t, o = tiling.make_tiles(line, 256, 32, out=tiles, threads=threads)
        tiling.stitch(maps, o, line.shape, mode, out=stitched, threads=threads)

    return [
        ("pre area 1920x1080->256 u8", lambda: composite(cv2.INTER_AREA),
         lambda t: pre.preprocess(frame, u8, colour_out="rgb", threads=t)),
        ("pre linear 1920x1080->256 u8", lambda: composite(cv2.INTER_LINEAR),
         lambda t: pre.preprocess(frame, u8, colour_out="rgb", interpolation="linear", threads=t)),
        ("post 256->1920x1080 +CC+stats", post_baseline,
         lambda t: post.postprocess(amap, (1080, 1920), threshold, min_area, out_map=full, out_mask=mask, threads=t)),
        ("tiles 8192x1024 + stitch max", lambda: tiles_twin("max"), lambda t: tiles_native("max", t)),
        ("tiles 8192x1024 + stitch mean", lambda: tiles_twin("mean"), lambda t: tiles_native("mean", t)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=30, help="repetitions per variant (medians reported)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    os.environ["CFRG_NO_NATIVE"] = "0"
    try:
        require_native()
    except ImportError as exc:
        sys.exit(str(exc))
    default_cv_threads = cv2.getNumThreads()
    cases = make_cases(args.data)
    load_before = os.getloadavg()[0]
    times = {name: {k: [] for k in ("b1", "b2", "n1", "n2")} for name, _, _ in cases}
    for name, baseline, native in cases:  # warm-up: thread pools, caches, page faults
        cv_threads(1)(baseline), native(1), cv_threads(2)(baseline), native(2)
    for _ in range(args.reps):
        for name, baseline, native in cases:
            for key, fn in (("b1", lambda: cv_threads(1)(baseline)), ("n1", lambda: native(1)),
                            ("b2", lambda: cv_threads(2)(baseline)), ("n2", lambda: native(2))):
                start = time.perf_counter()
                fn()
                times[name][key].append(time.perf_counter() - start)
    cv2.setNumThreads(default_cv_threads)

    print(f"medians of {args.reps} interleaved runs, ms; ratio = baseline / native at the same thread count")
    print(f"load average (1 min) before {load_before:.1f}, after {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores:"
          " other jobs share the CPUs, so absolute times are noisy")
    columns = ("base 1t", "base 2t", "nat 1t", "nat 2t")
    header = f"{'case':32s} " + " ".join(f"{c:>8s}" for c in columns) + f" {'ratio 1t':>9s} {'ratio 2t':>9s}"
    print(header)
    print("-" * len(header))
    for name, _, _ in cases:
        med = {k: 1e3 * float(np.median(v)) for k, v in times[name].items()}
        print(f"{name:32s} {med['b1']:8.2f} {med['b2']:8.2f} {med['n1']:8.2f} {med['n2']:8.2f} "
              f"{med['b1'] / med['n1']:8.2f}x {med['b2'] / med['n2']:8.2f}x")


if __name__ == "__main__":
    main()

"""Many cameras, one server: frames per second and p50/p99 latency for 1, 2 and 4 cameras sent to one `cfrg serve`
server, against the same cameras each with a local Detector, in one run on the same machine.

    python benchmarks/triton_cameras.py --model runs/prec/ball_screw/model.onnx [--cameras 1,2,4] [--seconds 10]
        [--camera-fps 0,12] [--serve-python .venv-serve/bin/python] [--max-batch 8] [--queue-delay-us 500]
        [--json out.json]

Each camera is a thread that sends its next frame as soon as the last came back (real test images of --category
from --data, at the model's size): with --camera-fps 0 a camera that never waits, so the figures are the most each
setup delivers; with N, a real camera delivering N frames/s, so the latencies are those of a line that keeps up.
Three setups per camera count:
  local     every camera its own sdk.Detector (its own ONNX Runtime session) in this process;
  server    every camera its own sdk.Detector("grpc://...") to the one server, which batches across them;
  stream    all cameras in one sdk.Stream into the server: their frames batched into one request
            (batch size = camera count, two requests in flight).
Latency is per frame, from the call to its result; the stream's is capture to record, so it includes the frames
waiting in the pipeline (the cameras never wait here; queue_size 1). The server runs on this machine too, so on a
CPU it competes with the cameras for the same cores; the core count is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sdk.data import AnomalyDataset  # noqa: E402
from sdk.detector import Detector  # noqa: E402
from sdk.evaluate import spread_indices  # noqa: E402
from sdk.stream import Stream  # noqa: E402
from sdk.triton.process import ServerProcess, serve_python  # noqa: E402


def camera_images(args, size: tuple[int, int]) -> list[np.ndarray]:
    test = AnomalyDataset(args.data, args.category, "test")
    return [cv2.resize(test.load_image(i, colour="bgr"), (size[1], size[0]), interpolation=cv2.INTER_AREA)
            for i in spread_indices(len(test), 32)]


def summary(latencies_ms: list[float], frames: int, seconds: float) -> dict:
    lat = np.asarray(latencies_ms) if latencies_ms else np.asarray([np.nan])
    return {"frames": frames, "seconds": round(seconds, 3), "fps": round(frames / seconds, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2)}


def wait_for_frame(start: float, i: int, fps: float) -> None:
    """A camera at `fps` delivers frame i at start + i / fps (no wait when fps is 0: as fast as it is read)."""
    if fps > 0:
        delay = start + i / fps - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def cameras_calling(detectors: list, images: list, seconds: float, fps: float = 0.0) -> dict:
    """Each detector is one camera's thread, calling it frame after frame for `seconds`."""
    latencies: list[list[float]] = [[] for _ in detectors]
    errors: list[str] = []
    start = threading.Barrier(len(detectors) + 1)
    stop_at: list[float] = []

    def camera(k: int, det) -> None:
        start.wait()
        i, began = k, time.perf_counter()
        try:
            while time.perf_counter() < stop_at[0]:
                wait_for_frame(began, i - k, fps)
                t0 = time.perf_counter()
                det(images[i % len(images)])
                latencies[k].append(1e3 * (time.perf_counter() - t0))
                i += 1
        except Exception as exc:  # noqa: BLE001 - reported with the figures
            errors.append(f"camera {k}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=camera, args=(k, d), daemon=True) for k, d in enumerate(detectors)]
    for t in threads:
        t.start()
    for det in detectors:  # warm-up outside the clock
        det(images[0])
    stop_at.append(time.perf_counter() + seconds)
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("; ".join(errors))
    result = summary([x for lat in latencies for x in lat], sum(map(len, latencies)), time.perf_counter() - t0)
    result["per_camera_fps"] = [round(len(lat) / seconds, 2) for lat in latencies]
    return result


def one_stream(url: str, cameras: int, images: list, seconds: float, fps: float = 0.0) -> dict:
    """All cameras as one sdk.Stream source list into the server (frames of every camera batched together)."""
    det = Detector(url)
    det(images[0])
    began = time.perf_counter()
    stop_at = began + seconds

    def camera(k: int):
        i = 0
        while time.perf_counter() < stop_at:
            wait_for_frame(began, i, fps)
            yield images[(i + k) % len(images)]
            i += 1

    t0 = time.perf_counter()
    sources = {f"cam{k}": camera(k) for k in range(cameras)} if cameras > 1 else camera(0)
    with Stream(det, sources, batch_size=cameras, infer_workers=2, queue_size=1) as stream:
        records = list(stream)
    elapsed = time.perf_counter() - t0
    bad = [r.error for r in records if r.status != "ok"]
    if bad:
        raise RuntimeError(f"{len(bad)} stream records not ok, first: {bad[0]}")
    return summary([r.latency_ms for r in records], len(records), elapsed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model.onnx of cfrg export")
    parser.add_argument("--data", default=os.environ.get("CFRG_DATA", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--category", default="ball_screw")
    parser.add_argument("--cameras", default="1,2,4")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--serve-python", default=serve_python())
    parser.add_argument("--camera-fps", default="0,12",
                        help="comma-separated camera frame rates, each a pass over every setup (0: cameras that never "
                             "wait, the most each setup delivers; N: real cameras at N frames/s, for latency)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--queue-delay-us", type=int, default=500)
    parser.add_argument("--json")
    args = parser.parse_args()
    counts = [int(c) for c in args.cameras.split(",")]
    local_probe = Detector(args.model)
    images = camera_images(args, local_probe.size)
    report = {"machine": {"cpu_cores": os.cpu_count(), "platform": platform.platform(),
                          "processor": platform.processor() or platform.machine()},
              "model": str(args.model), "size": list(local_probe.size), "seconds": args.seconds, "runs": []}
    print(f"{os.cpu_count()} CPU cores; model {args.model} at {local_probe.size[1]}x{local_probe.size[0]}; "
          f"{args.seconds:g} s per setup; the server on this machine too")
    extra = ["--max-batch", str(args.max_batch), "--queue-delay-us", str(args.queue_delay_us)]
    with ServerProcess(args.model, name="bench", python=args.serve_python, extra_args=extra) as server:
        url = server.url("grpc")
        print(f"server: {server.announcement}")
        for fps in [float(f) for f in args.camera_fps.split(",")]:
            pace = "as fast as possible" if fps == 0 else f"{fps:g} frames/s each"
            print(f"cameras {pace}:")
            print(f"{'cameras':>7} {'setup':>7} {'fps':>8} {'p50 ms':>8} {'p99 ms':>8} {'fps vs local':>12}")
            for n in counts:
                local = cameras_calling([Detector(args.model) for _ in range(n)], images, args.seconds, fps)
                served = cameras_calling([Detector(url) for _ in range(n)], images, args.seconds, fps)
                streamed = one_stream(url, n, images, args.seconds, fps)
                for setup, r in (("local", local), ("server", served), ("stream", streamed)):
                    r.update(cameras=n, camera_fps=fps, setup=setup, ratio_to_local=round(r["fps"] / local["fps"], 3))
                    report["runs"].append(r)
                    print(f"{n:>7} {setup:>7} {r['fps']:>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
                          f"{r['ratio_to_local']:>11.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`cfrg bench`: inference latency and throughput of exported models on any backend, as trtexec summarises them.

Each model gets the same batch of frames at its input size. After a warm-up the models run in turns of a
few batches each, so a machine whose speed drifts treats them alike, until --iterations batches or
--duration seconds per model; the first model is the baseline the others are compared with.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Timing:
    model: str
    backend: str
    precision: str
    batch: int
    seconds: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        ms = np.asarray(self.seconds) * 1e3
        total = float(np.sum(self.seconds))
        return {"model": self.model, "backend": self.backend, "precision": self.precision, "batch": self.batch,
                "iterations": len(ms), "min_ms": float(ms.min()), "median_ms": float(np.median(ms)),
                "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
                "mean_ms": float(ms.mean()), "batches_per_s": len(ms) / total,
                "images_per_s": len(ms) * self.batch / total}


def bench(paths, batch: int = 1, iterations: int = 100, duration: float = 0.0, warmup: int = 5, turn: int = 5,
          seed: int = 0, progress: bool = True) -> list[dict]:
    """Latency summaries of each model's inference on one batch (same frames for all), in turns."""
    from .progress import progress_bar

    from .detector import Detector

    detectors = [Detector(p) for p in paths]
    rng = np.random.default_rng(seed)
    batches = [np.ascontiguousarray(rng.integers(0, 256, (batch, *d.size, 3), dtype=np.uint8)) for d in detectors]
    timings = [Timing(str(p), d.backend.name, d.info.precision, batch) for p, d in zip(paths, detectors)]
    for det, frames in zip(detectors, batches):
        for _ in range(warmup):
            det.infer(frames)
    bar = progress_bar(total=iterations * len(paths), desc="bench", unit="batch", disable=not progress)
    start = time.perf_counter()
    while True:
        done = min(len(t.seconds) for t in timings)
        if done >= iterations or (duration and time.perf_counter() - start >= duration * len(paths)):
            break
        for det, frames, timing in zip(detectors, batches, timings):
            for _ in range(min(turn, iterations - len(timing.seconds))):
                t0 = time.perf_counter()
                det.infer(frames)
                timing.seconds.append(time.perf_counter() - t0)
                bar.update(1)
    bar.close()
    return [t.summary() for t in timings]


def format_report(results: list[dict]) -> str:
    base = results[0]
    lines = []
    for r in results:
        lines.append(f"{r['model']} ({r['backend']}, {r['precision']}), batch {r['batch']}: {r['iterations']} "
                     f"iterations")
        lines.append(f"  latency ms: min {r['min_ms']:.2f}, median {r['median_ms']:.2f}, p90 {r['p90_ms']:.2f}, "
                     f"p99 {r['p99_ms']:.2f}, mean {r['mean_ms']:.2f}")
        lines.append(f"  throughput: {r['batches_per_s']:.2f} batches/s, {r['images_per_s']:.2f} images/s")
        if r is not base:
            lines.append(f"  speed-up against {base['model']}: {base['median_ms'] / r['median_ms']:.2f}x "
                         f"(median latency, same run)")
    return "\n".join(lines)

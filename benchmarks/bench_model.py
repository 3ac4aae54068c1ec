"""Inference cost of the PyTorch CFRG model: median ms per image (batch 1) and GFLOPs.

    python benchmarks/bench_model.py [--image-size 256] [--teacher efficientnet_lite0] [--memory-size 10000]

Prints the full model (BatchNorm folded into the convolutions, as `cfrg eval` runs it) against the same
model unfolded, without its patch memory, and its teacher alone (the floor any teacher-student method
pays), all measured in the same run.
"""
import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from export.model import CFRG, CFRGConfig
from export.predictor import fold_batchnorm
from export.options import parse_size


def median_ms(fn, x, runs):
    with torch.inference_mode():
        for _ in range(5):
            fn(x)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def gflops(fn, x):
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn(x)
    return counter.get_total_flops() / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", type=parse_size, default=(256, 256))
    ap.add_argument("--teacher", default="efficientnet_lite0")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--memory-size", type=int, default=CFRGConfig.memory_size)
    ns = ap.parse_args()
    if ns.threads:
        torch.set_num_threads(ns.threads)
    model = CFRG(CFRGConfig(image_size=ns.image_size, teacher=ns.teacher, memory_size=ns.memory_size)).eval()
    model = model.to(memory_format=torch.channels_last)
    no_memory = CFRG(CFRGConfig(image_size=ns.image_size, teacher=ns.teacher, memory_size=0)).eval()
    no_memory = no_memory.to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, *ns.image_size).contiguous(memory_format=torch.channels_last)
    folded = fold_batchnorm(model)
    rows = [(f"CFRG full (memory {ns.memory_size})", folded),
            ("CFRG full, BatchNorm unfolded", model), ("CFRG without memory", fold_batchnorm(no_memory)),
            ("teacher alone", folded.teacher_features)]
    print(f"image {ns.image_size[0]}x{ns.image_size[1]}, batch 1, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    base = None
    for name, fn in rows:
        ms, gf = median_ms(fn, x, ns.runs), gflops(fn, x)
        base = base or ms
        print(f"{name:<30} {ms:8.1f} ms  {gf:6.2f} GFLOPs  ratio to full {ms / base:5.2f}")


if __name__ == "__main__":
    main()

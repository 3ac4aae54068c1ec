"""Model-only latency of the exported graph in ONNX Runtime (FP32, CPU) vs the same model in eager PyTorch
(BatchNorm folded, as `cfrg eval` runs it; the exporter folds it into the graph too).

    python benchmarks/bench_onnx.py --checkpoint runs/NAME/model.pt [--onnx model.onnx] [--runs 50] [--threads 0]

Median ms per call at batch 1 (and batch 8 per image), both measured in this run, interleaved.
Without --onnx the checkpoint is exported to a temporary file first.
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def median_ms(fn, runs):
    for _ in range(5):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--onnx")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0, help="threads for both runtimes (0: their defaults)")
    ns = ap.parse_args()

    import onnxruntime as ort
    import torch

    from export.predictor import fold_batchnorm
    from export.onnx_export import export_onnx
    from export.checkpoint import load_model

    if ns.threads:
        torch.set_num_threads(ns.threads)
    model = load_model(ns.checkpoint).eval()
    path = ns.onnx
    if not path:
        path = str(Path(tempfile.mkdtemp()) / "model.onnx")
        export_onnx(model, path)
    model = fold_batchnorm(model)
    options = ort.SessionOptions()
    if ns.threads:
        options.intra_op_num_threads = ns.threads
    sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    h, w = model.config.image_size
    rng = np.random.default_rng(0)
    print(f"model {h}x{w}, onnxruntime {ort.__version__}, torch {torch.__version__}, threads {ns.threads or 'default'}")
    for batch in (1, 8):
        frames = rng.integers(0, 255, (batch, h, w, 3), dtype=np.uint8)
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255).contiguous(memory_format=torch.channels_last)

        def run_torch():
            with torch.inference_mode():
                model(x)

        t_ort = median_ms(lambda: sess.run(None, {"frames": frames}), ns.runs // batch + 3)
        t_pt = median_ms(run_torch, ns.runs // batch + 3)
        print(f"batch {batch}: onnxruntime {t_ort / batch:6.1f} ms/image   pytorch eager {t_pt / batch:6.1f} ms/image"
              f"   ratio pytorch/onnxruntime {t_pt / t_ort:4.2f}")


if __name__ == "__main__":
    main()

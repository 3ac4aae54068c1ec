"""Training throughput: median seconds per step on real good images, the loop as `cfrg train` runs it against
the teacher run unfolded on the whole batch (the loop before), measured in the same run.

    python benchmarks/bench_train_step.py --data ../shared/data --category paper_flr01 [--steps 30] [--threads 1]
        [--augment none|flip]

Both arms take the same batches (BatchMaker, seed 0) and the same starting weights; each step is a forward,
a backward and an AdamW step. A ratio above 1 means more steps in the same time budget.
"""
import argparse
import copy
import statistics
import time

import torch

from export.model import CFRG
from export.predictor import fold_batchnorm
from export.options import TrainArgs
from sdk.synthesis import DefectSynthesizer
from export.batches import BatchMaker, cfrg_losses, flipped_images, step_inputs
from export.model import to_tensor
from export.train_images import load_train_images
from export.train import resolve_image_size
from export.fitting import teacher_cache
from sdk.data import AnomalyDataset


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--category", required=True)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--augment", choices=("none", "flip"), default="none")
    ns = ap.parse_args()
    torch.set_num_threads(ns.threads)
    args = TrainArgs(data=ns.data, category=ns.category, out="", scale="whole", final_eval=False)  # nothing written
    train_set = AnomalyDataset(ns.data, ns.category, "train")
    size = resolve_image_size(args, train_set)
    torch.manual_seed(0)
    model = CFRG(args.model_config(size)).to(memory_format=torch.channels_last).train()
    images = load_train_images(train_set, size, progress=False)
    cache = teacher_cache(model, images)
    maker = BatchMaker(images, DefectSynthesizer(donor_images=list(images)), args.batch_size, args.anomaly_prob,
                       seed=0, flip=ns.augment == "flip")
    try:
        batches = [maker.next() for _ in range(ns.steps + 3)]
    finally:
        maker.close()
    folded = fold_batchnorm(model.teacher)

    def step_now(net, batch):
        return cfrg_losses(net, *step_inputs(folded, net, images, cache, *batch))

    def step_before(net, batch):
        idx, xs, masks, flips = batch
        x, mask = to_tensor(xs), torch.from_numpy(masks)
        t_clean = [c[torch.from_numpy(idx)].float() for c in cache]
        if flips.any():  # the loop before had no flips: the unfolded teacher on every clean image
            t_clean = net.teacher_features(to_tensor(flipped_images(images, idx, flips)))
        return cfrg_losses(net, x, t_clean, mask)

    print(f"{ns.category} {size[0]}x{size[1]}, batch {args.batch_size}, augment {ns.augment}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    result = {}
    for name, step in (("before: teacher on every image, unfolded", step_before),
                       ("now: folded teacher, defect images only", step_now)):
        net = copy.deepcopy(model)
        opt = torch.optim.AdamW(net.trainable_parameters(), lr=args.lr, weight_decay=1e-4)
        times = []
        for k, batch in enumerate(batches):
            t = time.perf_counter()
            losses = step(net, batch)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            opt.step()
            if k >= 3:  # warm-up steps not counted
                times.append(time.perf_counter() - t)
        result[name] = statistics.median(times)
        print(f"{name:<42} {result[name]:.3f} s per step")
    before, now = result.values()
    print(f"steps per minute, now / before: {before / now:.2f}x")


if __name__ == "__main__":
    main()

"""Train CFRG on good images with synthetic defects, under a step count or a wall-clock budget."""
from __future__ import annotations

import math
import signal
import threading
import time
from pathlib import Path

import torch

from sdk.data import AnomalyDataset
from sdk.evaluate import format_table, spread_indices
from sdk.files import check_output_folder, write_json
from sdk.model_info import software_versions
from sdk.run_record import RunRecord
from sdk.synthesis import DefectSynthesizer

from .batches import BatchMaker, CropBatchMaker, cfrg_losses, step_inputs
from .checkpoint import save_checkpoint
from .fitting import fit_statistics, teacher_cache
from .model import CFRG
from .options import TrainArgs, auto_image_size, auto_scale, auto_tile_size, shared_aspect
from .predictor import fold_batchnorm, run_eval
from .resume import resume_state, save_state
from .train_images import check_training_size, good_images, split_holdout


class WeightAverage:
    """An exponential moving average of the trained modules' weights and BatchNorm statistics (the student, the
    recovery branch, the segmentation head; not the frozen teacher). The decay ramps up over the first steps
    (min(decay, (1 + k) / (10 + k)) at update k), so early weights do not linger."""

    prefixes = ("student.", "recovery.", "seg.")

    def __init__(self, model: CFRG, decay: float):
        state = model.state_dict()  # tensors that share storage with the model's
        self.decay = decay
        self.names = [n for n, t in state.items() if n.startswith(self.prefixes) and t.is_floating_point()]
        self.live = [state[n] for n in self.names]
        self.average = [t.detach().clone() for t in self.live]
        self.updates = 0

    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.average, self.live, 1.0 - decay)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "tensors": dict(zip(self.names, self.average))}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for avg, name in zip(self.average, self.names):
            avg.copy_(state["tensors"][name])

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the model's weights and the average (twice: back as they were)."""
        for live, avg in zip(self.live, self.average):
            tmp = live.clone()
            live.copy_(avg)
            avg.copy_(tmp)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training at a step boundary; the message says where the work was saved."""


class StopSignals:
    """While active (main thread only), Ctrl-C and SIGTERM ask training to stop at the next step boundary
    (`requested` names the signal), so a checkpoint never holds half an optimiser step; a second Ctrl-C
    stops at once."""

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def open_datasets(args: TrainArgs) -> tuple[AnomalyDataset, AnomalyDataset | None]:
    """Every option in range, the training images present and the output folder writable, before any work."""
    args.validate()
    train_set = AnomalyDataset(args.data, args.category, "train")
    check_training_size(len(train_set), args.holdout, Path(args.data) / args.category / "train")
    test_set = None
    if args.eval_every or args.final_eval:
        try:
            test_set = AnomalyDataset(args.data, args.category, "test")
        except Exception as exc:  # noqa: BLE001 - a missing test split only disables evaluation
            print(f"no evaluation: {exc}")
    check_output_folder(args.out)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return train_set, test_set


def resolve_image_size(args: TrainArgs, train_set: AnomalyDataset) -> tuple[int, int]:
    """The input size: as given, or for --image-size auto from the training images' aspect ratio (up to 64
    images spread over the set)."""
    if args.image_size != "auto":
        return tuple(args.image_size)
    sizes = [train_set.load_image(i).shape[:2] for i in spread_indices(len(train_set), 64)]
    size = auto_image_size(sizes)
    why = ("the training images' aspect ratio" if shared_aspect(sizes) else
           "square: the training images' aspect ratios vary, so no one shape is kept")
    print(f"--image-size auto: {size[0]}x{size[1]} ({why})")
    return size


def resolve_geometry(args: TrainArgs, train_set: AnomalyDataset) -> tuple[tuple[int, int], float]:
    """(input size, tile scale): for whole frames (scale 0) the input size of resolve_image_size; for tiles
    (--scale S, or --scale auto where the images are large) the tile, TILE_SIDE a side unless the images are
    smaller at that scale (or --image-size when given)."""
    if args.scale == "whole":
        return resolve_image_size(args, train_set), 0.0
    sizes = [train_set.load_image(i).shape[:2] for i in spread_indices(len(train_set), 64)]
    scale = args.scale
    if scale == "auto":
        scale, why = auto_scale(sizes, args.tile_overlap)
        print(f"--scale auto: {why}")
        if not scale:
            return resolve_image_size(args, train_set), 0.0
    tile = tuple(args.image_size) if args.image_size != "auto" else auto_tile_size(sizes, scale)
    print(f"training on {tile[1]}x{tile[0]} tiles at {scale:g} image pixels per model pixel, overlap "
          f"{args.tile_overlap} (margins of {args.tile_overlap // 2})")
    return tile, float(scale)


class TrainingImages:
    """The good images a run trains and fits on. Whole frames: arrays at the input size (`images`, with the
    teacher's cached features). Tiles: the images at the training scale (`scaled`, cropped at random for each
    step) and every tile of them as the Detector cuts them (`images`, what the statistics are fitted on)."""

    def __init__(self, train_set: AnomalyDataset, config, train_idx: list[int], holdout_idx: list[int],
                 progress: bool, need_holdout: bool):
        self.plan = config.tile_plan()
        self.images, self.holdout, self.scaled = good_images(train_set, config.image_size, self.plan, progress,
                                                             train_idx, holdout_idx, need_holdout)
        self._cache = None

    def cache(self, model: CFRG) -> list[torch.Tensor]:
        """The teacher's features of `images` (computed once)."""
        if self._cache is None:
            self._cache = teacher_cache(model, self.images)
        return self._cache

    def batch_maker(self, synth, args: TrainArgs, start_step: int) -> BatchMaker:
        if self.plan is None:
            return BatchMaker(self.images, synth, args.batch_size, args.anomaly_prob, args.seed,
                              start_step=start_step, flip=args.augment == "flip")
        padded = [self.plan.padded(image) for image in self.scaled]  # crops hold the margins the tiles hold
        return CropBatchMaker(padded, synth, args.batch_size, args.anomaly_prob, args.seed, self.plan.tile,
                              start_step=start_step, flip=args.augment == "flip")

    def donors(self) -> list:
        return list(self.images if self.scaled is None else self.scaled)


def write_run(args: TrainArgs, model: CFRG, train_set: AnomalyDataset, test_set: AnomalyDataset | None,
              train_idx: list[int], holdout_idx: list[int], summary: dict) -> dict:
    """OUT/model.pt, the final evaluation (OUT/metrics.json) and OUT/config.json; returns the config."""
    out = Path(args.out)
    save_checkpoint(model, out / "model.pt", extra={"train": summary})
    metrics = None
    if args.final_eval and test_set is not None:
        model.eval()
        metrics = run_eval(model, test_set, progress=args.progress)
        print(format_table(metrics))
        write_json(out / "metrics.json", metrics)
    return RunRecord.write(out, model=model.config.to_dict(), train=args.record(),
                           data_fingerprint=train_set.fingerprint(), n_train_images=len(train_idx),
                           holdout_files=[train_set[i].path for i in holdout_idx],
                           versions=software_versions("torch", "numpy"), summary=summary, metrics=metrics)


def train(args: TrainArgs) -> dict:
    """Train and write OUT/model.pt, OUT/config.json (and OUT/last.pt for resuming)."""
    from sdk.progress import progress_bar

    train_set, test_set = open_datasets(args)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = args.model_config(*resolve_geometry(args, train_set))
    model = CFRG(config, teacher_weights=args.teacher_weights).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=args.lr, weight_decay=1e-4)
    last = Path(args.out) / "last.pt"
    average = WeightAverage(model, args.ema) if args.ema else None
    step, elapsed, history = (resume_state(last, model, opt, config, args, average) if args.resume
                              else (0, 0.0, []))
    train_idx, holdout_idx = split_holdout(len(train_set), args.holdout)
    good = TrainingImages(train_set, config, train_idx, holdout_idx, args.progress,
                          need_holdout=model.memory is not None or model.fine is not None or args.fine_weight == "auto")
    images, holdout_images = good.images, good.holdout
    cache = None if good.plan is not None else good.cache(model)  # tiles: the teacher runs on each step's crops
    synth = DefectSynthesizer(donor_images=good.donors(), texture_dir=args.texture_dir)
    budget = args.time_budget * 60.0
    total_steps = args.steps or None

    def progress_fraction():
        fr = elapsed / budget if budget > 0 else 0.0
        if total_steps:
            fr = max(fr, step / total_steps) if budget > 0 else step / total_steps
        return min(fr, 1.0)

    def save_last():
        save_state(last, model, opt, step, elapsed, history, config, args, average)

    maker = good.batch_maker(synth, args, step)
    teacher = fold_batchnorm(model.teacher)  # a third less time than model.teacher, the same features
    bar = progress_bar(total=100, desc=f"train {args.category}", unit="%", disable=not args.progress,
               bar_format="{l_bar}{bar}| {n:.0f}/{total}% [{elapsed}<{remaining}{postfix}]")
    bar.update(100 * progress_fraction())
    next_eval = elapsed + args.eval_every * 60 if args.eval_every else math.inf
    next_save = elapsed + 60
    model.train()
    stop = StopSignals()
    try:
        with stop:
            while progress_fraction() < 1.0 and stop.requested is None:
                t0 = time.perf_counter()
                batch = maker.next()
                for g in opt.param_groups:
                    g["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * progress_fraction()))
                losses = cfrg_losses(model, *step_inputs(teacher, model, images, cache, *batch))
                opt.zero_grad(set_to_none=True)
                losses["total"].backward()
                opt.step()
                if average is not None:
                    average.update()
                step += 1
                elapsed += time.perf_counter() - t0
                bar.update(100 * progress_fraction() - bar.n)  # to the position, so rounding never passes 100
                if step % 10 == 0:
                    bar.set_postfix({k: f"{v.item():.3f}" for k, v in losses.items()} | {"step": step})
                if elapsed >= next_save:
                    save_last()
                    next_save = elapsed + 60
                if elapsed >= next_eval and test_set is not None:
                    if average is not None:
                        average.swap()  # the weights that will be saved are the ones evaluated
                    fit_statistics(model, images, holdout_images, good.cache(model), args.seed, limit=128,
                                   fine_weight=args.fine_weight)
                    res = run_eval(model, test_set, args.eval_limit, progress=False)
                    if average is not None:
                        average.swap()
                    history.append({"step": step, "minutes": elapsed / 60,
                                    **{k: res[k] for k in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")}})
                    bar.write(f"eval @ step {step} ({elapsed / 60:.1f} min): " + ", ".join(
                        f"{k} {v:.3f}" for k, v in history[-1].items() if k not in ("step", "minutes")))
                    model.train()
                    next_eval = elapsed + args.eval_every * 60
    finally:
        maker.close()
        bar.close()
    save_last()  # the finished steps are kept whatever happens next
    if stop.requested:
        raise TrainingInterrupted(f"{stop.requested} at step {step} ({elapsed / 60:.1f} min trained): saved {last}; "
                                  f"the same command with --resume continues from there")
    if average is not None:
        average.swap()  # model.pt holds the average; last.pt keeps both for --resume
    n_stats, n_memory, fine = fit_statistics(model, images, holdout_images, good.cache(model), args.seed,
                                             progress=args.progress, fine_weight=args.fine_weight)
    summary = {"steps": step, "train_minutes": elapsed / 60, "samples_seen": step * args.batch_size,
               **({"fit_tiles": len(images)} if good.plan is not None else {}),
               "map_stats_images": n_stats, "memory_images": n_memory, "fine": fine, "history": history}
    return write_run(args, model, train_set, test_set, train_idx, holdout_idx, summary)

"""`cfrg` command line: train, eval, demo."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEMO_DATA = Path(__file__).resolve().parents[1] / "data" / "demo"


def parse_size(text: str) -> tuple[int, int]:
    """'256' -> (256, 256); 'HxW' e.g. '192x448' -> (192, 448). Sides must be multiples of 32."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size {text!r}: give N or HxW, e.g. 256 or 192x448") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or any(p < 32 or p % 32 for p in parts):
        raise argparse.ArgumentTypeError(f"image size {text!r}: each side must be a multiple of 32 and >= 32")
    return parts[0], parts[1]


def _odd_positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1 or value % 2 == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give an odd whole number >= 1 (the window is centred)")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= 0")
    return value


def _needs_torch(what: str):
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit(f"cfrg {what} needs PyTorch: pip install 'cfrg-inspect[train]' (or pip install torch==2.13.0)")


def add_train_args(p: argparse.ArgumentParser, demo: bool = False) -> None:
    if not demo:
        p.add_argument("--data", required=True, help="dataset root in MVTec AD / 3CAD layout")
        p.add_argument("--category", required=True, help="category folder under the root")
        p.add_argument("--out", required=True, help="output folder for model.pt and config.json")
    p.add_argument("--image-size", type=parse_size, default=(256, 256), help="N or HxW (default 256)")
    p.add_argument("--teacher", default="efficientnet_lite0",
                   choices=["efficientnet_lite0", "efficientnet_lite2", "wide_resnet50_2"])
    p.add_argument("--teacher-weights", help="state dict file for wide_resnet50_2 (torchvision format)")
    p.add_argument("--time-budget", type=float, default=3.0 if demo else 30.0,
                   help="minutes of training (evaluation not counted)")
    p.add_argument("--steps", type=int, default=0, help="stop after N steps (0: only the time budget)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=float, default=0.0, help="minutes between evaluations (0: end only)")
    p.add_argument("--eval-limit", type=int, help="images per periodic evaluation (default: all)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--holdout", type=float, default=0.1,
                   help="fraction of good training images held back for threshold calibration (default 0.1)")
    p.add_argument("--texture-dir", help="folder of texture images for defect synthesis")
    p.add_argument("--no-recovery", action="store_true", help="ablation: drop the recovery branch")
    p.add_argument("--no-segmentation", action="store_true", help="ablation: drop the segmentation head")
    p.add_argument("--recovery-stride", type=int, default=32, choices=[16, 32],
                   help="stride of the recovery bottleneck (default 32)")
    p.add_argument("--recovery-width", type=int, default=128, help="recovery branch width (default 128)")
    p.add_argument("--map-normalisation", default="position", choices=["position", "none"],
                   help="anomaly map fusion: 'position' z-scores each discrepancy per position with good-image "
                        "statistics (default); 'none' is the paper's plain sum")
    p.add_argument("--memory-size", type=_non_negative_int, default=10000,
                   help="patches in the good-patch memory fused with the map (default 10000; 0: no memory)")
    p.add_argument("--memory-pool", type=_odd_positive_int, default=9,
                   help="neighbourhood, in feature cells, that each memory patch averages (odd; default 9)")
    p.add_argument("--image-score", default="combined", choices=["combined", "max"],
                   help="image score: 'combined' sums the CFRG map's max, a soft max of the memory distances and "
                        "(--global-score) a Gaussian distance of the image's global statistics, each z-scored on "
                        "held-out good images (default); 'max' is the fused map's max")
    p.add_argument("--global-score", action=argparse.BooleanOptionalAction, default=True,
                   help="add to the combined image score a Gaussian over each image's global feature statistics, "
                        "z-scored on held-out good images (default on)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--no-progress", action="store_true")


def train_args_from(ns, data, category, out):
    from export.train import TrainArgs

    return TrainArgs(data=data, category=category, out=out, image_size=ns.image_size, teacher=ns.teacher,
                     teacher_weights=ns.teacher_weights, steps=ns.steps, time_budget=ns.time_budget,
                     batch_size=ns.batch_size, lr=ns.lr, seed=ns.seed, eval_every=ns.eval_every,
                     eval_limit=ns.eval_limit, resume=ns.resume, texture_dir=ns.texture_dir, holdout=ns.holdout,
                     use_recovery=not ns.no_recovery, use_segmentation=not ns.no_segmentation,
                     recovery_code_stride=ns.recovery_stride, recovery_width=ns.recovery_width,
                     map_normalisation=ns.map_normalisation, memory_size=ns.memory_size,
                     memory_pool=ns.memory_pool, image_score=ns.image_score, global_score=ns.global_score,
                     threads=ns.threads,
                     progress=not ns.no_progress)


def cmd_train(ns) -> int:
    _needs_torch("train")
    from export.train import train

    cfg = train(train_args_from(ns, ns.data, ns.category, ns.out))
    print(f"wrote {Path(ns.out) / 'model.pt'} and config.json ({cfg['summary']['steps']} steps, "
          f"{cfg['summary']['train_minutes']:.1f} min)")
    return 0


def cmd_eval(ns) -> int:
    from .data import AnomalyDataset
    from .evaluate import evaluate, format_table, predict_dataset, save_overlays, write_json

    model_path = Path(ns.model)
    if not model_path.exists():
        raise FileNotFoundError(f"model file {model_path} does not exist: pass DIR/model.pt from `cfrg train` "
                                f"or a model.onnx from `cfrg export`")
    other_fusion = (ns.map_normalisation or ns.memory_size is not None or ns.memory_pool is not None
                    or ns.image_score or ns.global_score is not None)
    if model_path.suffix == ".pt":
        _needs_torch("eval of a .pt checkpoint")
        from export.train import load_model, torch_predictor

        model = load_model(model_path)
        if other_fusion:
            from export.train import with_map_fusion

            model = with_map_fusion(model, model_path.parent, ns.map_normalisation, ns.memory_size, ns.data,
                                    progress=not ns.no_progress, image_score=ns.image_score,
                                    memory_pool=ns.memory_pool, global_score=ns.global_score)
        predict, size = torch_predictor(model), model.config.image_size
    else:
        if other_fusion:
            raise ValueError(f"--map-normalisation, --memory-size, --memory-pool, --image-score and --global-score "
                             f"apply to .pt checkpoints: the map and score of {model_path.name} are built into the "
                             f"graph; export the checkpoint again instead")
        from .detector import Detector
        det = Detector(model_path, backend=ns.backend)
        predict, size = det.predictor(), det.size
    test = AnomalyDataset(ns.data, ns.category, "test")
    t0 = time.perf_counter()
    preds = predict_dataset(predict, test, size, batch_size=ns.batch_size, progress=not ns.no_progress)
    seconds = time.perf_counter() - t0
    result = evaluate(preds, test, fpr_limit=ns.fpr_limit)
    result.update(model=str(model_path), category=ns.category, seconds_per_image=seconds / max(len(test), 1))
    print(format_table(result))
    if ns.json:
        write_json(result, ns.json)
        print(f"wrote {ns.json}")
    if ns.save_maps:
        n = save_overlays(preds, test, ns.save_maps)
        print(f"wrote {n} overlays to {ns.save_maps}")
    return 0


def cmd_export(ns) -> int:
    _needs_torch("export")
    from export.onnx_export import export_checkpoint

    info = export_checkpoint(ns.checkpoint, ns.output, data=ns.data, category=ns.category, calib_dir=ns.calib_dir,
                             target_frr=ns.target_frr, defect_split=ns.defect_split, progress=not ns.no_progress)
    t = info["thresholds"]
    line = f"good-only threshold {t['good_only']['image']:.4f} (target FRR {ns.target_frr:.2%}, " \
           f"{t['good_only']['n_images']} held-back good images)"
    if "f1" in t:
        line += f"; F1-optimal image {t['f1']['image']:.4f} (F1 {t['f1']['image_f1']:.3f}), " \
                f"pixel {t['f1']['pixel']:.4f} (F1 {t['f1']['pixel_f1']:.3f})"
    print(line)
    print(f"wrote {ns.output} and {Path(ns.output).with_suffix('.json')}")
    return 0


def run_stream(model, source, out: Path | None, *, masks=True, overlays=True, video=None, batch_size=1,
               queue_size=4, drop="none", threshold="default", min_area=0, progress=True, limit=None,
               infer_workers="auto") -> dict:
    """Stream a source through a Detector into sinks; returns stream stats plus verdict counts."""
    from tqdm import tqdm

    from .detector import Detector
    from .sinks import JsonlSink, MaskSink, OverlaySink, VideoSink
    from .stream import Stream

    det = Detector(model, threshold=threshold, min_area=min_area)
    sinks = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        sinks.append(JsonlSink(out / "verdicts.jsonl"))
        if masks:
            sinks.append(MaskSink(out / "masks"))
        if overlays:
            sinks.append(OverlaySink(out / "overlays"))
        if video:
            sinks.append(VideoSink(out / video, fps=10))
    counts = {"ok": 0, "defect": 0, "error": 0, "dropped": 0}
    bar = tqdm(desc="run", unit="frame", disable=not progress, total=limit)
    with Stream(det, source, batch_size=batch_size, queue_size=queue_size, drop=drop, sinks=sinks,
                infer_workers=infer_workers) as stream:
        for n, rec in enumerate(stream, 1):
            key = rec.verdict if rec.status == "ok" else rec.status
            counts[key] = counts.get(key, 0) + 1
            bar.update(1)
            if n % 10 == 0:
                bar.set_postfix(fps=f"{stream.stats()['fps']:.1f}", defects=counts["defect"], errors=counts["error"])
            if limit and n >= limit:
                break
    bar.close()
    stats = stream.stats()
    stats["verdicts"] = counts
    return stats


def cmd_run(ns) -> int:
    out = Path(ns.out) if ns.out else None
    if ns.video and out is None:
        raise ValueError(f"--video {ns.video} is written into the --out folder: give --out DIR as well")
    stats = run_stream(ns.model, ns.source, out, masks=not ns.no_masks, overlays=not ns.no_overlays,
                       video=ns.video, batch_size=ns.batch_size, queue_size=ns.queue_size, drop=ns.drop,
                       threshold=_threshold_arg(ns.threshold), min_area=ns.min_area, progress=not ns.no_progress,
                       limit=ns.max_frames, infer_workers=ns.infer_workers)
    v = stats["verdicts"]
    print(f"{stats['frames']} frames: {v['ok']} ok, {v['defect']} defect, {v['error']} errors, "
          f"{v['dropped']} dropped; {stats['fps']:.1f} frames/s end to end")
    if out is not None:
        print(f"wrote {out / 'verdicts.jsonl'}" + ("" if ns.no_masks else f", {out / 'masks'}")
              + ("" if ns.no_overlays else f", {out / 'overlays'}"))
    return 0 if v["error"] == 0 else 1


def workers_arg(text: str):
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--infer-workers {text!r}: give 'auto' or a whole number >= 1")
    return int(text)


def _threshold_arg(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def cmd_demo(ns) -> int:
    """Train on the built-in data, export, stream its test images as a camera, print metrics and speed."""
    _needs_torch("demo")
    from export.onnx_export import export_checkpoint
    from export.train import train

    from .data import AnomalyDataset
    from .detector import Detector
    from .evaluate import evaluate, format_table, predict_dataset

    out = Path(ns.out)
    data, category = str(DEMO_DATA), "ball_screw"
    print(f"[1/4] training CFRG on the built-in ball_screw subset ({DEMO_DATA}) for {ns.time_budget} min")
    args = train_args_from(ns, data, category, str(out / "train"))
    args.final_eval = False  # step 4 evaluates the exported model
    train(args)
    print("[2/4] exporting to ONNX with thresholds calibrated on held-back good images")
    onnx_path = out / "model.onnx"
    export_checkpoint(out / "train" / "model.pt", onnx_path, defect_split="test", progress=not ns.no_progress)
    print(f"[3/4] streaming the test images as a camera through {onnx_path}")
    source = str(DEMO_DATA / category / "test" / "*" / "*.jpg")
    stats = run_stream(onnx_path, source, out / "stream", video="annotated.mp4", progress=not ns.no_progress)
    v = stats["verdicts"]
    print(f"    {stats['frames']} frames: {v['ok']} ok, {v['defect']} defect, {v['error']} errors; "
          f"{stats['fps']:.1f} frames/s end to end; masks, overlays, verdicts.jsonl in {out / 'stream'}")
    print("[4/4] metrics of the exported model on the test split")
    det = Detector(onnx_path)
    test = AnomalyDataset(data, category, "test")
    preds = predict_dataset(det.predictor(), test, det.size,
                            progress=not ns.no_progress)
    result = evaluate(preds, test)
    print(format_table(result))
    print("demo metrics (ONNX Runtime): " + ", ".join(f"{k} {result[k]:.3f}" for k in
                                                       ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cfrg", description="CFRG visual anomaly detection")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train CFRG on good images of one category")
    add_train_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="evaluate a model on a category's test split")
    p.add_argument("--model", required=True, help="checkpoint model.pt or exported model.onnx")
    p.add_argument("--backend", default="auto", help="for exported models: auto, onnxruntime, tensorrt")
    p.add_argument("--data", required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--json", help="write the metrics here")
    p.add_argument("--save-maps", help="folder for anomaly-map overlays beside the ground truth")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--fpr-limit", type=float, default=0.3, help="AUPRO integration limit (default 0.3)")
    p.add_argument("--map-normalisation", choices=["position", "none"],
                   help="checkpoints: evaluate the same weights with this map fusion (default: the trained one)")
    p.add_argument("--memory-size", type=_non_negative_int,
                   help="checkpoints: evaluate the same weights with a patch memory of this size, rebuilt from the "
                        "run's good images (0: none; default: the trained one)")
    p.add_argument("--memory-pool", type=_odd_positive_int,
                   help="checkpoints with a patch memory: evaluate the same weights with this memory pooling, the "
                        "memory rebuilt from the run's good images (default: the trained one)")
    p.add_argument("--image-score", choices=["combined", "max"],
                   help="checkpoints with a patch memory: evaluate the same weights with this image score "
                        "(its statistics rebuilt from the run's good images; default: the trained one)")
    p.add_argument("--global-score", action=argparse.BooleanOptionalAction, default=None,
                   help="checkpoints with a combined image score: evaluate the same weights with (or without) its "
                        "global branch, rebuilt from the run's good images (default: the trained one)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("export", help="export a checkpoint to one ONNX graph + model.json")
    p.add_argument("checkpoint", help="model.pt from cfrg train")
    p.add_argument("-o", "--output", required=True, help="output .onnx path (model.json is written beside it)")
    p.add_argument("--data", help="dataset root (default: the one recorded at training)")
    p.add_argument("--category", help="category (default: the one recorded at training)")
    p.add_argument("--calib-dir", help="folder of good images for the threshold (default: held-back training images)")
    p.add_argument("--target-frr", type=float, default=0.01, help="false-reject rate on good parts (default 0.01)")
    p.add_argument("--defect-split", help="split with defect images for F1-optimal thresholds, e.g. test")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("run", help="stream a camera, video, folder or glob through a model to verdicts and masks")
    p.add_argument("--model", required=True, help="exported model.onnx")
    p.add_argument("--source", required=True,
                   help="camera index, /dev/videoN, csi://N, rtsp://..., video file, image folder or glob")
    p.add_argument("--out", help="folder for verdicts.jsonl, masks/ and overlays/ (default: write nothing)")
    p.add_argument("--threshold", default="default", help="default, good_only, f1 or a raw score")
    p.add_argument("--min-area", type=int, default=0, help="smallest region in frame pixels (default 0)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--queue-size", type=int, default=4)
    p.add_argument("--infer-workers", type=workers_arg, default="auto",
                   help="parallel inference sessions: auto (2 on a multi-core CPU) or N")
    p.add_argument("--drop", choices=["none", "oldest"], default="none",
                   help="none: back-pressure (default); oldest: drop frames the model cannot keep up with")
    p.add_argument("--video", help="also write an annotated video with this file name into --out")
    p.add_argument("--no-masks", action="store_true")
    p.add_argument("--no-overlays", action="store_true")
    p.add_argument("--max-frames", type=int, help="stop after N frames")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("demo", help="train and evaluate on the built-in ball_screw subset")
    p.add_argument("--out", default="runs/demo")
    add_train_args(p, demo=True)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    from .sources import SourceError

    ns = build_parser().parse_args(argv)
    try:
        return ns.func(ns)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    # Expected failures (bad paths, data, models, sources, permissions): one line, no traceback.
    except (ValueError, OSError, SourceError, ImportError, NotImplementedError) as exc:
        print(f"cfrg {ns.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`cfrg` command line.

Field commands run with the runtime alone (numpy, opencv, onnxruntime), as on a Jetson that only deploys:
    cfrg run    stream a camera, video, folder or glob through an exported model to verdicts and masks
    cfrg eval   evaluate an exported model (or, with the factory, a checkpoint) on a test split
    cfrg bench  inference latency and throughput of models on any backend
    cfrg build  FP16/INT8 precision graphs and TensorRT engines, trtexec-style (needs onnx; TensorRT to
                build the engine itself)
Factory commands need PyTorch (pip install 'cfrg-inspect[train]') and load it only when they run:
    cfrg train  train CFRG on good images of one category
    cfrg export export a checkpoint to one ONNX graph + model.json
    cfrg demo   train, export, stream and evaluate on the built-in ball_screw subset
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from .checks import INT64_MAX, checked_type, number, threshold_arg, whole
from .run import OutputWriteError, Terminated, interruption, run_stream
from .sources import check_camera_names

DEMO_DATA = Path(__file__).resolve().parent / "demo"  # package data: found from any install
MAX_BATCH = 4096  # frames per batch or queue: beyond it the buffers alone outgrow any Jetson or server
FACTORY_INSTALL = "pip install 'cfrg-inspect[train]' (or pip install torch==2.13.0 and the package's [train] extras)"


class FactoryMissing(ImportError):
    """A factory command was run where PyTorch (or another training dependency) is not installed."""


def factory(module: str, what: str):
    """export.<module>, imported when a factory command runs; FactoryMissing says what to install."""
    try:
        return importlib.import_module(f"export.{module}")
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "a training dependency"
        raise FactoryMissing(f"{what} needs the factory side, and {missing} is not importable here ({exc}); "
                             f"install it with {FACTORY_INSTALL}") from exc


def _options():
    """export.options: the training options' declaration (plain data, no torch)."""
    from export import options

    return options


def cmd_train(ns) -> int:
    args = _options().train_args_from(ns)
    args.validate()
    cfg = factory("train", "training").train(args)
    print(f"wrote {Path(ns.out) / 'model.pt'} and config.json ({cfg['summary']['steps']} steps, "
          f"{cfg['summary']['train_minutes']:.1f} min)")
    return 0


def cmd_eval(ns) -> int:
    from .data import AnomalyDataset
    from .detector import Detector
    from .evaluate import evaluate, format_table, predict_dataset, predict_frames, save_overlays
    from .files import check_output_folder, write_json

    from .backends import ModelFileError

    model_path = Path(ns.model)
    if not model_path.exists():
        raise ModelFileError(f"model file {model_path} does not exist: pass DIR/model.pt from `cfrg train` "
                             f"or a model.onnx from `cfrg export`")
    eval_options = _options().EVAL_OPTIONS
    other_fusion = {k: getattr(ns, k) for k in eval_options if getattr(ns, k) is not None}
    if model_path.suffix == ".pt":
        what = "evaluating a .pt checkpoint"
        model = factory("checkpoint", what).load_model(model_path)
        if other_fusion:
            model = factory("fitting", what).with_map_fusion(model, model_path.parent, data=ns.data,
                                                             progress=ns.progress, **other_fusion)
        if ns.tile and model.config.tile_plan() is None:
            raise ValueError("--tile runs exported models: export the checkpoint (cfrg export) and evaluate the .onnx")
        predict, size = factory("predictor", what).torch_predictor(model), model.config.image_size
        plan = model.config.tile_plan()  # a model trained on tiles is judged in tiles
    else:
        if other_fusion:
            raise ValueError(f"{', '.join(_options().flag_names(eval_options))} apply to .pt checkpoints: the map and score of "
                             f"{model_path.name} are built into the graph; export the checkpoint again instead")
        det = Detector(model_path, backend=ns.backend, colour="rgb", **_tiling(ns))
        predict, size, plan = (det if det.tiling else det.predictor()), det.size, det.frame_plan
    test = AnomalyDataset(ns.data, ns.category, "test")
    if not any(smp.label for smp in test.samples):
        from .data import DatasetError

        raise DatasetError(f"{Path(ns.data) / ns.category / 'test'} holds {len(test)} good images and no defect images: "
                           f"I-AUROC, P-AUROC, AUPRO and AP need both; add defect images with their masks, or use "
                           f"`cfrg run` for verdicts on good parts")
    for output in ([Path(ns.json).parent] if ns.json else []) + ([Path(ns.save_maps)] if ns.save_maps else []):
        check_output_folder(output)  # before the long prediction, not after it
    t0 = time.perf_counter()
    preds = (predict_frames(predict, test, batch_size=ns.batch_size, progress=ns.progress)
             if isinstance(predict, Detector) else
             predict_dataset(predict, test, size, batch_size=ns.batch_size, progress=ns.progress, plan=plan))
    seconds = time.perf_counter() - t0
    result = evaluate(preds, test, fpr_limit=ns.fpr_limit)
    result.update(model=str(model_path), category=ns.category, seconds_per_image=seconds / max(len(test), 1))
    if plan is not None:
        result["tiling"] = {"overlap": plan.overlap, "tile": list(plan.tile),
                            "model_pixels_per_frame_pixel": plan.scale or "short side fits the model"}
    print(format_table(result))
    for name, why in result.get("undefined", {}).items():
        print(f"  {name}: not defined ({why}); written as null")
    if ns.json:
        write_json(ns.json, result)
        print(f"wrote {ns.json}")
    if ns.save_maps:
        n = save_overlays(preds, test, ns.save_maps)
        print(f"wrote {n} overlays to {ns.save_maps}")
    return 0


def cmd_export(ns) -> int:
    exporter = factory("onnx_export", "exporting")
    info = exporter.export_checkpoint(ns.checkpoint, ns.output, data=ns.data, category=ns.category,
                                      good_dir=ns.good_dir, target_frr=ns.target_frr, defect_split=ns.defect_split,
                                      progress=ns.progress)
    good, f1 = info.thresholds["good_only"], info.thresholds.get("f1")
    line = f"good-only threshold {good.image:.4f} (target FRR {ns.target_frr:.2%}, " \
           f"{good.details['n_images']} held-back good images)"
    if f1 is not None:
        line += f"; F1-optimal image {f1.image:.4f} (F1 {f1.details['image_f1']:.3f}), " \
                f"pixel {f1.pixel:.4f} (F1 {f1.details['pixel_f1']:.3f})"
    print(line)
    from .model_card import card_path

    print(f"wrote {ns.output}, {Path(ns.output).with_suffix('.json')} and {card_path(ns.output)}")
    return 0


def cmd_threshold(ns) -> int:
    from .backends import backend_for
    from .files import image_files
    from .rethreshold import rethreshold

    good = image_files(ns.good)
    defect = image_files(ns.defect) if ns.defect else []
    done = rethreshold(ns.model, good, defect, target_frr=ns.target_frr, default=ns.default,
                       command=f"cfrg threshold --good {ns.good}" + (f" --defect {ns.defect}" if ns.defect else ""),
                       progress=ns.progress, ignore_drift=ns.ignore_drift)
    before = done.old.thresholds[done.old.default_threshold].image
    for name, t in done.new.thresholds.items():
        was = done.old.thresholds.get(name)
        print(f"{name}: image {t.image:.5g} (was {was.image:.5g}), pixel {t.pixel:.5g} (was {was.pixel:.5g})" if was
              else f"{name}: image {t.image:.5g}, pixel {t.pixel:.5g} (new)")
    after = done.new.thresholds[done.new.default_threshold].image
    rejected = lambda value: sum(s >= value for s in done.good_scores)  # noqa: E731
    print(f"the {len(good)} good images: {rejected(before)} rejected at the old default threshold, "
          f"{rejected(after)} at the new one ({done.new.default_threshold})")
    print(f"drift check: {done.new.threshold_history[-1]['drift_check']}")
    print(f"wrote {done.description} (the old thresholds kept in its threshold_history)")
    if backend_for(ns.model) == "onnxruntime":  # an engine has no description inside
        print(f"{Path(ns.model).name} keeps the export's thresholds in its own description: deploy "
              f"{done.description.name} beside it, or a copy without it runs at the old ones")
    return 0


def cmd_card(ns) -> int:
    from .files import image_files
    from .model_card import training_run, write_model_card
    from .model_info import ModelInfo

    model = Path(ns.model)
    try:
        run = training_run(ModelInfo.read(model))
    except FileNotFoundError:
        if not ns.good_dir:
            raise
        run = None  # the card without the run's counts
    good = image_files(ns.good_dir) if ns.good_dir else list(run.holdout_files)
    out = write_model_card(model, good, out=ns.out, run=run.raw if run else None, progress=ns.progress)
    print(f"wrote {out} ({len(good)} good images)")
    return 0


def cmd_build(ns) -> int:
    """trtexec-style: the precision graph, TensorRT's documented rules checked on what TensorRT would parse, then
    a TensorRT engine where TensorRT is installed (sdk.build.command)."""
    from .build.command import build
    from .build.options import WORKSPACE_MIB, BuildOptions

    options = BuildOptions(
        onnx=Path(ns.onnx), save_engine=Path(ns.saveEngine) if ns.saveEngine else None, fp16=ns.fp16, int8=ns.int8,
        best=ns.best, strongly_typed=ns.stronglyTyped, cpu_int8=ns.cpuInt8, calib=Path(ns.calib) if ns.calib else None,
        min_shapes=ns.minShapes, opt_shapes=ns.optShapes, max_shapes=ns.maxShapes,
        workspace_mib=ns.memPoolSize or WORKSPACE_MIB,
        timing_cache=Path(ns.timingCacheFile) if ns.timingCacheFile else None,
        optimization_level=ns.builderOptimizationLevel, dla_core=ns.useDLACore, gpu_fallback=ns.allowGPUFallback,
        version_compatible=ns.versionCompatible, verbose=ns.verbose)
    result = build(options, dry_run=ns.dry_run, target=ns.tensorrt, accept_drop=ns.accept_drop, data=ns.data,
                   category=ns.category, progress=ns.progress)
    if result is not None and result.no_engine:
        print(result.no_engine, file=sys.stderr)
        return EXIT_NO_ENGINE
    return 0


def cmd_triton(ns) -> int:
    from .triton.repository import RepositoryOptions, write_repository

    model = Path(ns.model)
    options = RepositoryOptions(model=model, repository=Path(ns.repository), name=ns.name or model.stem.split(".")[0],
                                version=ns.version, max_batch=ns.max_batch,
                                preferred_batches=tuple(ns.preferred_batch or ()), queue_delay_us=ns.queue_delay_us,
                                instances=ns.instances, kind=ns.kind)
    folder, info = write_repository(options)
    print(f"wrote {folder}/config.pbtxt and {folder}/{options.version}/{options.model_file} (backend {options.backend}, "
          f"max batch {options.max_batch}, preferred {list(options.preferred)}, {options.instances} instance(s))")
    if options.is_engine:
        print(f"the server must run TensorRT {info.engine_spec(model).tensorrt} (the engine's), or a later release of "
              f"the same major for an engine built with --versionCompatible")
    return 0


def cmd_serve(ns) -> int:
    from .triton.serve import ServeOptions, serve

    model = Path(ns.model)
    serve(ServeOptions(model=model, name=ns.name or model.stem.split(".")[0], host=ns.host, grpc_port=ns.grpc_port,
                       http_port=ns.http_port, metrics_port=ns.metrics_port, max_batch=ns.max_batch,
                       preferred_batches=tuple(ns.preferred_batch or ()), queue_delay_us=ns.queue_delay_us,
                       instances=ns.instances, device=ns.device, threads=ns.threads,
                       log_file=Path(ns.log_file) if ns.log_file else None))
    return 0  # not reached: serve() ends by an interrupt or an error


def cmd_bench(ns) -> int:
    from .bench import bench, format_report
    from .files import check_output_folder, write_json

    if ns.json:
        check_output_folder(Path(ns.json).parent)
    results = bench(ns.model, batch=ns.batch, iterations=ns.iterations, duration=ns.duration, warmup=ns.warmup,
                    progress=ns.progress)
    print(format_report(results))
    if ns.json:
        write_json(ns.json, results)
        print(f"wrote {ns.json}")
    return 0


def cmd_run(ns) -> int:
    out = Path(ns.out) if ns.out else None
    if ns.video and out is None:
        raise ValueError(f"--video {ns.video} is written into the --out folder: give --out DIR as well")
    if ns.video and (Path(ns.video).name != ns.video or Path(ns.video).suffix.lower() not in (".mp4", ".avi")):
        raise ValueError(f"--video {ns.video}: give a file name (no folder) ending in .mp4 or .avi, "
                         f"e.g. --video annotated.mp4")
    cameras = camera_names(ns.source) if len(ns.source) > 1 else None
    stats = run_stream(ns.model, cameras or ns.source[0], out, masks=not ns.no_masks, overlays=not ns.no_overlays,
                       video=ns.video, batch_size=ns.batch_size, queue_size=ns.queue_size, drop=ns.drop,
                       threshold=ns.threshold, min_area=ns.min_area, progress=ns.progress,
                       limit=ns.max_frames, infer_workers=ns.infer_workers, tiling=_tiling(ns),
                       drift=None if ns.no_drift_watch else "auto")
    v = stats["verdicts"]
    print(f"{stats['frames']} frames: {_counts_text(v)}; {stats['fps']:.1f} frames/s end to end")
    for name, uri in (cameras or {}).items():
        each = stats["verdicts_by_source"][name]
        print(f"  {name} ({uri}): {sum(each.values())} frames: {_counts_text(each)}")
    print(drift_summary_line(stats["drift"], ns.no_drift_watch))
    if out is not None:
        files = ("verdicts.jsonl" + ("" if ns.no_masks else ", masks/") + ("" if ns.no_overlays else ", overlays/")
                 + (f", {ns.video}" if ns.video else ""))
        where = files if cameras is None else f"{'/, '.join(cameras)}/ (each: {files})"
        print(f"wrote {out}: {where}, RUN.json (complete; {stats['frames']} records)")
    return 0 if v["error"] == 0 else EXIT_FRAME_ERRORS


def _counts_text(v: dict) -> str:
    return f"{v['ok']} ok, {v['defect']} defect, {v['error']} errors, {v['dropped']} dropped"


CAMERA_NAME = re.compile(r"([A-Za-z0-9][A-Za-z0-9_-]{0,63})=(.+)")


def camera_names(sources: list[str]) -> dict[str, str]:
    """{name: URI} of several --source values: NAME=URI (unless the whole value is an existing path), else cam<i>."""
    named = []
    for i, text in enumerate(sources):
        match = CAMERA_NAME.fullmatch(text)
        named.append(match.groups() if match and not Path(text).exists() else (f"cam{i}", text))
    try:
        check_camera_names([name for name, _ in named], len(named))
    except ValueError as exc:
        raise ValueError(f"--source: {exc}; name them, e.g. --source left=A --source right=B (unnamed ones are "
                         f"cam0, cam1, ...)") from None
    return dict(named)


def drift_summary_line(drift: dict | None, turned_off: bool) -> str:
    """`cfrg run`'s last word on the drift watch."""
    if drift is None:
        return ("drift watch: off (--no-drift-watch)" if turned_off else
                "drift watch: off (model.json has no drift reference; re-export the model with `cfrg export`)")
    active = f"; still drifting: {', '.join(drift['active'])}" if drift["active"] else ""
    return (f"drift watch: {drift['frames']} frames ({drift['scored_frames']} scored), {drift['alarms']} alarm(s)"
            f"{active}; {drift['ms_per_frame']} ms per frame")


def _tiling(ns) -> dict:
    """Detector options of --tile, --tile-overlap, --tile-scale."""
    # without --tile, a model trained on tiles tiles anyway, as it was trained (the overlap and scale given or its own)
    return {"tiling": True if ns.tile else None, "tile_overlap": ns.tile_overlap, "tile_scale": ns.tile_scale}


def _tile_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", action="store_true",
                   help="tiled inference for frames much larger than the model input (line-scan strips): "
                        "overlapping tiles of the model's size, maps stitched, the highest tile score")
    p.add_argument("--tile-overlap", type=checked_type(int, whole(0, 4096)),
                   help="overlap of neighbouring tiles in model pixels (default: the model's own for a model trained "
                        "on tiles, else 32)")
    p.add_argument("--tile-scale", type=checked_type(float, number(0, 64, low_open=True, high_open=False)),
                   help="model pixels per frame pixel (default: the model's own for a model trained on tiles, else "
                        "the frame's short side fits the model's)")


def workers_arg(text: str):
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--infer-workers {text!r}: give 'auto' or a whole number >= 1")
    return int(text)


def cmd_demo(ns) -> int:
    """Train on the built-in data, export, stream its test images as a camera, print metrics and speed."""
    exporter = factory("onnx_export", "the demo")
    training = factory("train", "the demo")

    from .data import AnomalyDataset
    from .detector import Detector
    from .evaluate import evaluate, format_table, predict_dataset

    out = Path(ns.out)
    data, category = str(DEMO_DATA), "ball_screw"
    print(f"[1/4] training CFRG on the built-in ball_screw subset ({DEMO_DATA}) for {ns.time_budget} min")
    if not (DEMO_DATA / category / "train").is_dir():
        raise FileNotFoundError(f"the built-in demo data is missing from {DEMO_DATA}; reinstall the package "
                                f"(pip install .) from a complete checkout")
    # step 4 evaluates the exported model, so training skips its own final evaluation
    training.train(_options().train_args_from(ns, data=data, category=category, out=str(out / "train"),
                                              final_eval=False))
    print("[2/4] exporting to ONNX with thresholds measured on held-back good images")
    onnx_path = out / "model.onnx"
    exporter.export_checkpoint(out / "train" / "model.pt", onnx_path, defect_split="test",
                               progress=ns.progress)
    print(f"[3/4] streaming the test images as a camera through {onnx_path}")
    source = str(DEMO_DATA / category / "test" / "*" / "*.jpg")
    stats = run_stream(onnx_path, source, out / "stream", video="annotated.mp4", progress=ns.progress)
    v = stats["verdicts"]
    print(f"    {stats['frames']} frames: {v['ok']} ok, {v['defect']} defect, {v['error']} errors; "
          f"{stats['fps']:.1f} frames/s end to end; masks, overlays, verdicts.jsonl in {out / 'stream'}")
    print("[4/4] metrics of the exported model on the test split")
    det = Detector(onnx_path)
    test = AnomalyDataset(data, category, "test")
    preds = predict_dataset(det.predictor(), test, det.size, progress=ns.progress, plan=det.frame_plan)
    result = evaluate(preds, test)
    print(format_table(result))
    print("demo metrics (ONNX Runtime): " + ", ".join(f"{k} {result[k]:.3f}" for k in
                                                       ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")))
    return 0


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line refusal (its usage only with --help, or with --debug)."""

    verbose_errors = False

    def error(self, message: str):
        if self.verbose_errors:
            super().error(message)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    options = _options()
    parser = OneLineParser(prog="cfrg", description="CFRG visual anomaly detection",
                           epilog="exit codes: 0 done; 1 some frames failed (run); 2 bad option or value; "
                                  "3 bad data or source; 4 bad model file; 5 missing dependency; "
                                  "6 output not writable; 7 not in this release; 8 no engine built (no TensorRT); "
                                  "9 a precision graph fails its check against FP32; 130 interrupted")
    common = OneLineParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)

    for add in (_train_command, _eval_command, _export_command, _run_command, _build_command, _triton_command,
                _serve_command, _threshold_command, _card_command,
                _bench_command, _demo_command):
        add(command, options)
    return parser


def _train_command(command, options) -> None:
    p = command("train", help="train CFRG on good images of one category (needs PyTorch)")
    options.add_train_options(p)
    p.set_defaults(func=cmd_train)


def _eval_command(command, options) -> None:
    p = command("eval", help="evaluate a model on a category's test split")
    p.add_argument("--model", required=True, help="checkpoint model.pt (needs PyTorch) or exported model.onnx")
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt"],
                   help="for exported models (default: from the file's suffix)")
    p.add_argument("--data", required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--json", help="write the metrics here")
    p.add_argument("--save-maps", help="folder for anomaly-map overlays beside the ground truth")
    p.add_argument("--batch-size", type=checked_type(int, whole(1, MAX_BATCH)), default=8)
    p.add_argument("--fpr-limit", type=checked_type(float, number(0, 1, low_open=True, high_open=False)),
                   default=0.3, help="AUPRO integration limit (default 0.3)")
    options.add_eval_options(p)
    _tile_options(p)
    _no_progress(p)
    p.set_defaults(func=cmd_eval)


def _export_command(command, options) -> None:
    p = command("export", help="export a checkpoint to one ONNX graph + model.json (needs PyTorch)")
    p.add_argument("checkpoint", help="model.pt from cfrg train")
    p.add_argument("-o", "--output", required=True, help="output .onnx path (model.json is written beside it)")
    p.add_argument("--data", help="dataset root (default: the one recorded at training)")
    p.add_argument("--category", help="category (default: the one recorded at training)")
    p.add_argument("--good-dir", "--calib-dir", dest="good_dir", metavar="DIR",
                   help="folder of good images to measure the thresholds on (default: the good images held back at "
                        "training; --calib-dir is the older name)")
    p.add_argument("--target-frr", type=checked_type(float, number(0, 1)), default=0.01,
                   help="false-reject rate on good parts (default 0.01)")
    p.add_argument("--defect-split", help="split with defect images for F1-optimal thresholds, e.g. test")
    _no_progress(p)
    p.set_defaults(func=cmd_export)


def _run_command(command, options) -> None:
    p = command("run", help="stream a camera, video, folder or glob through a model to verdicts and masks")
    p.add_argument("--model", required=True, help="exported model.onnx, an engine of cfrg build, or a served model: "
                                                  "grpc://HOST:PORT/NAME (cfrg serve)")
    p.add_argument("--source", required=True, action="append",
                   help="camera index, /dev/videoN, csi://N, rtsp://..., video file, image folder or glob; repeat "
                        "for several cameras in one stream (batched together), each NAME=URI or named cam0, cam1, ...")
    p.add_argument("--out", help="folder for verdicts.jsonl, masks/ and overlays/ (default: write nothing); with "
                                 "several --source one such folder per camera, OUT/NAME/")
    p.add_argument("--threshold", type=threshold_arg, default="default",
                   help="default, good_only, f1 or a raw score")
    p.add_argument("--min-area", type=checked_type(int, whole(0, INT64_MAX)), default=0,
                   help="smallest region in frame pixels (default 0)")
    p.add_argument("--batch-size", type=checked_type(int, whole(1, MAX_BATCH)),
                   help="frames per inference call (default 1; with several --source, one per camera)")
    p.add_argument("--queue-size", type=checked_type(int, whole(1, MAX_BATCH)), default=4)
    p.add_argument("--infer-workers", type=workers_arg, default="auto",
                   help="parallel inference sessions: auto (what the backend suits: 2 on a multi-core CPU) or N")
    p.add_argument("--drop", choices=["none", "oldest"], default="none",
                   help="none: back-pressure (default); oldest: drop frames the model cannot keep up with")
    p.add_argument("--video", help="also write an annotated video with this file name into --out")
    p.add_argument("--no-masks", action="store_true")
    p.add_argument("--no-overlays", action="store_true")
    p.add_argument("--no-drift-watch", action="store_true",
                   help="do not watch the frames for drift (on when model.json has a drift reference)")
    p.add_argument("--max-frames", type=checked_type(int, whole(1, INT64_MAX)), help="stop after N frames (of all cameras together)")
    _tile_options(p)
    _no_progress(p)
    p.set_defaults(func=cmd_run)


def _build_command(command, options) -> None:
    p = command("build", help="trtexec-style: FP16/INT8 precision graphs and a TensorRT engine",
                description="Builds a TensorRT engine from model.onnx with trtexec's flag spellings. The precision "
                            "comes from a precision graph written beside the model (model.fp16.onnx, the QDQ "
                            "model.int8.onnx); where TensorRT is absent the graph is written and checked, and the "
                            "command exits 8.")
    p.add_argument("--onnx", required=True, help="the FP32 model.onnx of cfrg export")
    p.add_argument("--saveEngine", help="engine path (default: model.engine beside the ONNX)")
    p.add_argument("--fp16", action="store_true", help="FP16 CNNs (model.fp16.onnx), sensitive parts FP32")
    p.add_argument("--int8", action="store_true", help="INT8 by explicit quantization (model.int8.onnx)")
    p.add_argument("--best", action="store_true", help="INT8 where quantized, FP16 elsewhere in the CNNs")
    p.add_argument("--stronglyTyped", action="store_true", help="precision from the graph only (TensorRT 11 always)")
    p.add_argument("--calib", help="INT8 calibration: a folder of good images, or a .calib.json cache (default: "
                                   "the good images held back at training)")
    p.add_argument("--cpuInt8", action="store_true",
                   help="write model.cpu-int8.onnx for ONNX Runtime on a CPU (uint8 activations) instead of an engine")
    p.add_argument("--minShapes", type=_engine_arg("parse_shapes"), help="e.g. frames:1x256x256x3")
    p.add_argument("--optShapes", type=_engine_arg("parse_shapes"), help="e.g. frames:4x256x256x3")
    p.add_argument("--maxShapes", type=_engine_arg("parse_shapes"), help="e.g. frames:8x256x256x3")
    p.add_argument("--memPoolSize", type=_engine_arg("parse_mem_pool"), help="workspace:N (MiB; or K, M, G)")
    p.add_argument("--timingCacheFile", help="timing cache, read and updated")
    p.add_argument("--builderOptimizationLevel", type=int, help="0 to 5 (TensorRT's default 3)")
    p.add_argument("--useDLACore", type=checked_type(int, whole(0)), help="DLA core (Jetson Orin: 0 or 1)")
    p.add_argument("--allowGPUFallback", action="store_true", help="layers DLA cannot run go to the GPU")
    p.add_argument("--versionCompatible", action="store_true",
                   help="an engine later TensorRT releases of the same major can run (GPU only)")
    p.add_argument("--tensorrt", choices=["10.3", "10.x", "11.x"],
                   help="the TensorRT whose rules the plan and check use where none is installed (default: all "
                        "three; 10.3 = JetPack 6)")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the equivalent trtexec line only")
    p.add_argument("--accept-drop", action="store_true",
                   help="write a reduced-precision graph or engine that fails its check against FP32 (with a "
                        "warning, recorded in its model.json) instead of refusing it")
    p.add_argument("--data", help="dataset root: report the precision graph's accuracy against FP32")
    p.add_argument("--category", help="category for --data")
    _no_progress(p)
    p.set_defaults(func=cmd_build)


def _triton_command(command, options) -> None:
    p = command("triton", help="write a Triton Inference Server model repository entry for a model or engine",
                description="Writes REPOSITORY/NAME/config.pbtxt and REPOSITORY/NAME/VERSION/model.onnx (backend "
                            "onnxruntime) or model.plan (backend tensorrt, an engine of cfrg build), with the model's "
                            "description in the config's parameters.")
    p.add_argument("--model", required=True, help="model.onnx (or a precision graph) from cfrg export / cfrg build, or "
                                                  "an engine from cfrg build")
    p.add_argument("--repository", required=True, help="the model repository folder (tritonserver --model-repository)")
    _served_model_arguments(p)
    p.add_argument("--version", type=checked_type(int, whole(1, 10**9)), default=1)
    p.add_argument("--kind", choices=["auto", "cpu", "gpu"], default="auto",
                   help="instance kind (default: GPU for an engine, CPU for ONNX)")
    p.set_defaults(func=cmd_triton)


def _threshold_command(command, options) -> None:
    p = command("threshold", help="new thresholds from good (and defect) images of the line, without retraining",
                description="Runs the model on images collected on the line (e.g. false rejects confirmed as good) "
                            "and writes its model.json again with the new thresholds; the old ones are kept in "
                            "its threshold_history.")
    p.add_argument("--model", required=True, help="model.onnx or an engine of cfrg build (its model.json is rewritten)")
    p.add_argument("--good", required=True, help="a folder of good images from the line")
    p.add_argument("--defect", help="a folder of defect images from the line: adds the F1-optimal threshold 'f1'")
    p.add_argument("--target-frr", type=float, default=0.01, help="good parts rejected by good_only (default 0.01)")
    p.add_argument("--default", choices=["good_only", "f1"], default="good_only",
                   help="the threshold the Detector and cfrg run use by default (default good_only)")
    p.add_argument("--ignore-drift", action="store_true",
                   help="set the thresholds even when the good images drifted from the model's drift reference")
    _no_progress(p)
    p.set_defaults(func=cmd_threshold)


def _card_command(command, options) -> None:
    p = command("card", help="write the model card (NAME_card.html) again, e.g. after cfrg build",
                description="The model card: training data, the held-back good scores and synthetic defects with the "
                            "thresholds, example overlays, latency on this machine, the precision graphs beside the "
                            "model, the drift reference. cfrg export writes it; this command writes it again.")
    p.add_argument("--model", required=True, help="model.onnx of cfrg export")
    p.add_argument("--good-dir", help="good images (default: the held-back ones of the training run)")
    p.add_argument("--out", help="the HTML file (default: NAME_card.html beside the model)")
    _no_progress(p)
    p.set_defaults(func=cmd_card)


def _served_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model's name and batching on a Triton server (cfrg triton and cfrg serve)."""
    p.add_argument("--name", help="the model's name on the server (default: the file's stem, e.g. model)")
    p.add_argument("--max-batch", type=checked_type(int, whole(1, MAX_BATCH)), default=8,
                   help="max_batch_size: the largest batch the server forms (default 8)")
    p.add_argument("--preferred-batch", type=checked_type(int, whole(1, MAX_BATCH)), action="append",
                   help="a preferred batch size of the dynamic batcher; repeat (default: 2, 4, ... up to --max-batch)")
    p.add_argument("--queue-delay-us", type=checked_type(int, whole(0, 10**7)), default=500,
                   help="how long the batcher waits to fill a batch, microseconds (default 500)")
    p.add_argument("--instances", type=checked_type(int, whole(1, 64)), default=1, help="model instances (default 1)")


def _serve_command(command, options) -> None:
    p = command("serve", help="serve a model over gRPC and HTTP through Triton Inference Server (PyTriton)",
                description="Serves model.onnx with Triton Inference Server as PyTriton bundles it, the model in ONNX "
                            "Runtime (CPU or CUDA); clients: sdk.Detector('grpc://HOST:PORT/NAME'), cfrg run --model "
                            "grpc://HOST:PORT/NAME. Needs the server environment: make serve-venv (PyTriton needs "
                            "numpy < 2). Stops on Ctrl-C or SIGTERM.")
    p.add_argument("--model", required=True, help="model.onnx (or a precision graph) from cfrg export / cfrg build")
    _served_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: every "
                                                       "interface)")
    port = checked_type(int, whole(1, 65535))
    p.add_argument("--grpc-port", type=port, default=8001, help="default 8001")
    p.add_argument("--http-port", type=port, default=8000, help="default 8000")
    p.add_argument("--metrics-port", type=port, default=8002, help="Prometheus metrics (default 8002)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where ONNX Runtime runs the model (default: CUDA when the server's onnxruntime has it)")
    p.add_argument("--threads", type=checked_type(int, whole(0, 1024)), default=0,
                   help="ONNX Runtime threads per instance (default 0: its own choice)")
    p.add_argument("--log-file", help="write Triton's own log there instead of the terminal")
    p.set_defaults(func=cmd_serve)


def _bench_command(command, options) -> None:
    p = command("bench", help="inference latency percentiles and throughput of one or more models (any backend)")
    p.add_argument("--model", action="append", required=True,
                   help="model.onnx or model.engine; repeat to compare in one run (the first is the baseline)")
    p.add_argument("--batch", type=checked_type(int, whole(1, MAX_BATCH)), default=1)
    p.add_argument("--iterations", type=checked_type(int, whole(1, 10**9)), default=100, help="batches per model")
    p.add_argument("--duration", type=checked_type(float, number(0)), default=0.0,
                   help="seconds per model at most (0: only --iterations)")
    p.add_argument("--warmup", type=checked_type(int, whole(0, 10**9)), default=5, help="batches before timing")
    p.add_argument("--json", help="also write the figures here")
    _no_progress(p)
    p.set_defaults(func=cmd_bench)


def _demo_command(command, options) -> None:
    p = command("demo", help="train, export, stream and evaluate on the built-in ball_screw subset "
                             "(needs PyTorch)")
    p.add_argument("--out", default="runs/demo")
    options.add_train_options(p, demo=True)
    p.set_defaults(func=cmd_demo)


def _engine_arg(name: str):
    """An argparse type from sdk.build.options' parsers (BuildError becomes the flag's error)."""
    def parse(text: str):
        from .build import options
        try:
            return getattr(options, name)(text)
        except options.BuildError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name
    return parse


def _no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


# Exit codes of expected failures (a real bug keeps its traceback and exits 1).
EXIT_FRAME_ERRORS = 1  # cfrg run finished, but some frames gave error records
EXIT_USAGE = 2  # a bad option or value (argparse's code too)
EXIT_DATA = 3  # a data set, image folder or source that is missing or malformed
EXIT_MODEL = 4  # a model file (checkpoint, ONNX, model.json) that is missing, corrupt or mismatched
EXIT_MISSING = 5  # a dependency is not installed (e.g. PyTorch for the factory commands)
EXIT_OUTPUT = 6  # an output cannot be written
EXIT_UNSUPPORTED = 7  # not available in this release
EXIT_NO_ENGINE = 8  # cfrg build prepared the precision graph, but TensorRT is not installed: no engine
EXIT_PRECISION = 9  # cfrg build: a reduced-precision graph or engine does not hold FP32's accuracy (--accept-drop)
EXIT_INTERRUPTED = 130  # Ctrl-C and SIGTERM alike
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def exit_code(exc: BaseException) -> int | None:
    """The exit code of an expected failure, or None for a real bug."""
    from .backends import ModelFileError
    from .data import DatasetError
    from .sources import SourceError

    try:
        from sdk.build.precision import PrecisionDropError
        precision_drop = (PrecisionDropError,)
    except ImportError:  # a field install without onnx
        precision_drop = ()
    for kinds, code in ((precision_drop, EXIT_PRECISION), ((ImportError,), EXIT_MISSING), ((ModelFileError,), EXIT_MODEL),
                        ((DatasetError, SourceError, FileNotFoundError, NotADirectoryError), EXIT_DATA),
                        ((NotImplementedError,), EXIT_UNSUPPORTED), ((ValueError,), EXIT_USAGE),
                        ((OSError,), EXIT_OUTPUT)):
        if isinstance(exc, kinds):
            return code
    return None


_SIGNALLED: list[str] = []  # a library that catches broadly may turn the interrupt into its own error


def _terminate(signum, frame) -> None:
    _SIGNALLED.append("SIGTERM")
    raise Terminated("SIGTERM")


def _quiet_libraries(debug: bool) -> None:
    """OpenCV's and FFmpeg's own warnings stay out of the terminal unless --debug (set before cv2 loads)."""
    if not debug:
        os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    OneLineParser.verbose_errors = debug
    _SIGNALLED.clear()  # main() may run several times in one process (tests, embedding)
    _quiet_libraries(debug)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    parser = build_parser()
    ns, unknown = parser.parse_known_args(args)
    if unknown:
        if ns.command == "build":
            print(f"cfrg build: error: unknown option {unknown[0]} (trtexec spellings: --onnx, --saveEngine, --fp16, "
                  f"--int8, --best, --stronglyTyped, --calib, --minShapes, --optShapes, --maxShapes, --memPoolSize, "
                  f"--timingCacheFile, --builderOptimizationLevel, --useDLACore, --allowGPUFallback, --versionCompatible, "
                  f"--verbose, --dry-run, --tensorrt, --accept-drop; see cfrg build --help)", file=sys.stderr)
            return EXIT_USAGE
        parser.parse_args(args)  # argparse's own error for the other commands
    try:
        return ns.func(ns)
    except KeyboardInterrupt as exc:
        if ns.debug:
            raise
        print(f"cfrg {ns.command}: interrupted ({interruption(exc)})", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # expected failures: one line that names the problem and the fix
        if _SIGNALLED and not ns.debug:  # e.g. SIGTERM inside an import that re-raised it as ImportError
            print(f"cfrg {ns.command}: interrupted ({_SIGNALLED[0]})", file=sys.stderr)
            return EXIT_INTERRUPTED
        code = exit_code(exc)
        if code is None or ns.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, OSError) and not isinstance(exc, OutputWriteError) and exc.errno in WRITE_ERRNOS:
            message = (f"{exc.filename or 'an output'}: {exc.strerror}; free space, fix the permissions or choose "
                       f"another path")
        print(f"cfrg {ns.command}: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())

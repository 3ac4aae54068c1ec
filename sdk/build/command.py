"""`cfrg build` as one call (build): the model and the installed TensorRT checked, the good images that calibrate
and check chosen, the precision graph made only where it is absent or made from another model.onnx, the plan
and rule check, then the engine built, checked against its graph and moved into place. No torch.

Lines go out as they happen, through `say` (what was done) and `warn` (warnings, on stderr in the CLI); the
result says what was written, or why no engine was built."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from . import dla, engine, plan
from .options import BuildOptions, target_of


def stderr_line(text: str) -> None:
    print(text, file=sys.stderr)


@dataclass(frozen=True)
class BuildResult:
    """What a build wrote: the precision graph, and the engine unless `no_engine` says why there is none."""

    graph: Path
    engine: Path | None = None
    no_engine: str | None = None


def build(options: BuildOptions, *, dry_run: bool = False, target: str | None = None, accept_drop: bool = False,
          data: str | None = None, category: str | None = None, progress: bool = True, say=print,
          warn=stderr_line) -> BuildResult | None:
    """Run `cfrg build` for these options; `target` picks the TensorRT rules where none is installed (--tensorrt),
    `data`/`category` add the precision graph's accuracy against FP32 on that test split. None for a dry run."""
    from sdk.files import check_output_folder

    onnx_path = options.onnx
    info, trt = checked_model(options, target)
    calib_files = calibration_images(options)
    current = options.precision == "fp32" or made_from(options.graph, onnx_path)
    if calib_files is None and options.precision != "fp32" and not current:
        calib_files = held_back_images(info, say)  # INT8's calibration, and every graph's check against FP32
    check_output_folder(options.engine.parent)
    write_graph = dict(progress=progress, accept_drop=accept_drop, say=say, warn=warn)
    if options.precision == "cpu-int8":
        say(plan.plan_text(options, info, trt))
        if dry_run:
            return None
        write_precision_graph(options, calib_files, **write_graph)
        say(f"wrote {options.graph} for ONNX Runtime on a CPU (cfrg run --model {options.graph})")
        return BuildResult(options.graph)
    targets = plan.plan_targets(options, trt, target)
    if dry_run:
        findings = plan.check_targets(options, targets, plan.graph_for_check(options, calib_files, fresh=current))
        say(plan.plan_text(options, info, trt, findings, target))
        refuse_rule_errors(options, findings, explicit=bool(target))
        return None
    if not current or calib_files:
        write_precision_graph(options, calib_files, **write_graph)
    if options.dla and options.precision == "int8":
        n = dla.write_dla_calibration(options)
        say(f"wrote {options.dla_calibration} (the Q/DQ graph's ranges of {n} tensors, for DLA's implicit INT8)")
    findings = plan.check_targets(options, targets, plan.graph_for_check(options))
    say(plan.plan_text(options, info, trt, findings, target))
    refuse_rule_errors(options, findings, explicit=bool(target))
    if data:
        report_precision_accuracy(onnx_path, options.graph, data, category, progress, say)
    if trt is None:
        return BuildResult(options.graph, no_engine=(
            f"no engine built: TensorRT is not installed here (`import tensorrt` failed). {options.graph} is ready and "
            f"runs in ONNX Runtime (cfrg eval --model {options.graph}); build the engine on the target with the same "
            f"command, or with the trtexec line above"))
    build_engine(options, info, trt, calib_files or held_back_images(info, say, quiet=True), accept_drop=accept_drop,
                 progress=progress, say=say, warn=warn)
    return BuildResult(options.graph, options.engine)


def checked_model(options: BuildOptions, target: str | None):
    """(the FP32 model's description, the tensorrt module or None) once --onnx, --tensorrt and the options hold."""
    from sdk.backends import refuse_folder
    from sdk.backends.onnxruntime import OnnxRuntimeBackend
    from sdk.model_info import ModelInfo

    onnx_path = options.onnx
    refuse_folder(onnx_path)
    if onnx_path.suffix.lower() != ".onnx" or not onnx_path.is_file():
        raise FileNotFoundError(f"--onnx={onnx_path}: give the model.onnx that `cfrg export` wrote")
    info = ModelInfo.read(onnx_path, OnnxRuntimeBackend(onnx_path))
    if info.precision != "fp32":
        raise ValueError(f"--onnx={onnx_path} is a {info.precision} graph; pass the FP32 model.onnx of `cfrg export`")
    trt = engine.tensorrt_module()
    if trt is not None and target and target_of(trt.__version__) != target:
        raise ValueError(f"--tensorrt {target}: this machine has TensorRT {trt.__version__}; drop --tensorrt "
                         f"(it picks the rules of a TensorRT that is not installed, for --dry-run)")
    options.check((info.input.height, info.input.width), trt)
    return info, trt


def build_engine(options: BuildOptions, info, trt, good_files, *, accept_drop: bool, progress: bool, say,
                 warn) -> None:
    """options.engine built by TensorRT, checked against its graph on `good_files` and moved into place."""
    plan_bytes, extra = engine.TensorRTBuilder(trt, options, info, log=say, progress=progress, warn=warn).build()
    description = engine.engine_description(info, options, trt,
                                            {**extra, "plan_sha256": hashlib.sha256(plan_bytes).hexdigest()})
    checked_engine(options, description, plan_bytes, good_files, accept_drop, warn)
    say(f"wrote {options.engine} ({len(plan_bytes) / 2**20:.1f} MiB, {extra['build_seconds']} s) and "
        f"{options.engine.with_suffix('.json').name}")


def calibration_images(options: BuildOptions) -> list[str] | None:
    """The good images of --calib DIR; a --calib .calib.json cache is copied to where the INT8 graph's writer
    reads it (None then, as without --calib)."""
    from sdk.files import atomic_write, image_files

    from .precision import calibration_cache_path

    calib = options.calib
    if calib is None:
        return None
    if calib.is_dir():
        files = [str(p) for p in image_files(calib)]
        if not files:
            raise FileNotFoundError(f"--calib={calib}: the folder holds no images; give good images")
        return files
    if calib.suffix == ".json" and calib.is_file():
        cache = calibration_cache_path(options.graph, "fp32")
        if calib.resolve() != cache.resolve():
            atomic_write(cache, calib.read_bytes())
        return None
    raise FileNotFoundError(f"--calib={calib}: give a folder of good images or a .calib.json cache")


def made_from(graph: Path, onnx_path: Path) -> bool:
    """The precision graph exists and was made from this very model.onnx (its provenance's sha256)."""
    from sdk.model_info import ModelInfo, file_sha256

    if not graph.is_file():
        return False
    try:
        return ModelInfo.read(graph).provenance.source_sha256 == file_sha256(onnx_path)
    except ValueError:  # a damaged description: make the graph again
        return False


def held_back_images(info, say=print, quiet: bool = False) -> list[str] | None:
    """INT8 calibration and the precision check by default: the good images held back at training, from the run
    the export recorded."""
    from sdk.run_record import RunRecord

    run_dir = info.training.get("run_dir")
    if not run_dir or not (Path(run_dir) / "config.json").is_file():
        return None  # write_precision_graph then asks for --calib
    files = [str(p) for p in RunRecord.read(run_dir).holdout_files if p.is_file()]
    if files and not quiet:
        say(f"calibrating and checking on the {len(files)} good images held back at training ({run_dir})")
    return files or None


def write_precision_graph(options: BuildOptions, calib_files, *, progress: bool, accept_drop: bool, say,
                          warn) -> None:
    """options.graph from the FP32 model, checked against it (sdk.build.precision_check), with its figures said."""
    from .precision import write_precision_graph as write

    say(f"writing {options.graph}" + (f", calibrated on {len(calib_files)} good images" if calib_files else ""))
    info = write(options.onnx, options.precision, options.graph, calib_files=calib_files, progress=progress,
                 accept_drop=accept_drop, warn=warn)
    check = info.precision_check
    if check:
        say(f"checked against FP32: score rank correlation {check['score_rank_correlation']:.4f}, good-vs-synthetic "
            f"AUROC {100 * check['auroc']:.2f} (FP32 {100 * check['auroc_fp32']:.2f}), verdicts agree "
            f"{100 * check['verdict_agreement']:.1f} %" + (" (accepted drop)" if check["accepted_drop"] else ""))


def refuse_rule_errors(options: BuildOptions, findings: dict, explicit: bool) -> None:
    """One line naming the broken TensorRT rules (the plan above lists them), before TensorRT spends minutes."""
    from sdk.backends import ModelFileError

    bad = plan.relevant_errors(options, findings, explicit=explicit)
    if bad:
        target, first = bad[0]
        raise ModelFileError(f"{options.engine_source} would not build: {len(bad)} violation(s) of TensorRT's "
                             f"documented rules (first, for TensorRT {target}: {first.line()}); see the plan above")


def checked_engine(options: BuildOptions, description, data: bytes, good_files, accept_drop: bool, warn):
    """The engine against the graph it was built from (sdk.build.precision_check), staged under a visible name
    beside it; moved into place only when it holds (or under --accept-drop)."""
    from sdk.backends.onnxruntime import OnnxRuntimeBackend
    from sdk.backends.tensorrt import TensorRTBackend
    from sdk.files import atomic_write
    from sdk.model_info import ModelInfo, sidecar_path

    from .precision import check_against

    staged = options.engine.with_name(f"{options.engine.stem}.unchecked{options.engine.suffix}")
    try:
        atomic_write(staged, data)
        description.write_beside(staged)
        if good_files and options.precision != "fp32":
            backend = TensorRTBackend(staged)
            try:
                size = (description.input.height, description.input.width)
                reference = options.graph
                check = check_against(OnnxRuntimeBackend(reference), backend, good_files, size,
                                      description.input.colour_order, description.input.name,
                                      (ModelInfo.read(reference).thresholds["good_only"].image,
                                       description.thresholds["good_only"].image), options.engine.name,
                                      options.precision, accept_drop, warn, plan=description.tile_plan)
            finally:
                backend.close()
            description = dataclasses.replace(description, precision_check=check)
        elif options.precision != "fp32":
            warn(f"note: {options.engine.name} not checked against {options.graph.name}: no good images (pass --calib DIR)")
        os.replace(staged, options.engine)
        description.write_beside(options.engine)
    finally:
        staged.unlink(missing_ok=True)
        sidecar_path(staged).unlink(missing_ok=True)
    return description


def report_precision_accuracy(fp32: Path, graph: Path, data: str, category: str | None, progress: bool,
                              say=print) -> None:
    """The four metrics of the FP32 graph and of the precision graph on a test split, and their differences."""
    from sdk.data import AnomalyDataset
    from sdk.detector import Detector
    from sdk.evaluate import METRIC_KEYS, evaluate, predict_dataset

    test = AnomalyDataset(data, category, "test")
    rows = {}
    for path in dict.fromkeys((fp32, graph)):
        det = Detector(path)
        rows[path.name] = evaluate(predict_dataset(det.predictor(), test, det.size, progress=progress,
                                                   plan=det.frame_plan), test)
    say(f"accuracy on {category}/test ({len(test)} images), percent:  " + "  ".join(METRIC_KEYS))
    for name, result in rows.items():
        say(f"  {name:<28}" + "".join(f"{100 * result[k]:>12.2f}" for k in METRIC_KEYS))
    if len(rows) == 2:
        (_, a), (_, b) = rows.items()
        say(f"  {'difference':<28}" + "".join(f"{100 * (b[k] - a[k]):>+12.2f}" for k in METRIC_KEYS))

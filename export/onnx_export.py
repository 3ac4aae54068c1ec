"""Export a CFRG checkpoint to one ONNX graph that does the whole numeric job.

Graph: frames uint8 NHWC at the model size (colour order recorded) -> Cast, then Transpose, normalise ->
teacher, student, recovery, segmentation -> fused map -> fixed Gaussian -> outputs
`anomaly_map` (N,H,W) float32 and `score` (N,) float32. Dynamic batch. TorchScript exporter
(no onnxscript needed), then our constant folding.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

import torch
from torch import nn

from sdk.files import IMAGE_EXTENSIONS, atomic_output, check_output_folder, image_files
from sdk.drift import reference_from_files
from sdk.model_info import OUTPUT_NAMES, InputSpec, ModelInfo, Provenance, software_versions

from .checkpoint import load_checkpoint
from .model import CFRG
from sdk.build.onnx_utils import fold_constants, save_with_description
from sdk.run_record import RunRecord

OPSET = 17  # parsed by TensorRT 8.6, 10.x (JetPack 6: 10.3) and 11
INPUT_NAME = "frames"

class DeployGraph(nn.Module):
    """uint8 NHWC frames in, (anomaly_map, score) out."""

    def __init__(self, model: CFRG):
        super().__init__()
        self.model = model
        self.eval()  # the exporter restores the wrapper's mode afterwards: keep it eval

    def forward(self, frames: torch.Tensor):
        # Cast first: TensorRT takes UINT8 only as a network input that feeds a Cast (sdk/build/tensorrt_rules.json)
        x = frames.to(torch.float32).permute(0, 3, 1, 2) / 255.0  # as export.model.to_tensor
        amap, score = self.model(x)
        return amap[:, 0], score


def export_onnx(model: CFRG, path=None, opset: int = OPSET):
    """Export to ONNX (returns the onnx.ModelProto; writes it when path is given)."""
    import onnx

    model = model.eval().to(memory_format=torch.contiguous_format)
    h, w = model.config.image_size
    dummy = torch.zeros(1, h, w, 3, dtype=torch.uint8)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(DeployGraph(model), (dummy,), buf, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), do_constant_folding=True,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"},
                                        OUTPUT_NAMES[1]: {0: "batch"}})
    proto = fold_constants(onnx.load_from_string(buf.getvalue()))
    proto = onnx.shape_inference.infer_shapes(proto)
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save(proto, str(path))
    return proto


def _good_threshold_images(ckpt_dir: Path, data: str | None, good_dir: str | None) -> list[str]:
    """Held-back good images recorded at training, or every image of --good-dir."""
    if good_dir:
        if not Path(good_dir).is_dir():
            raise FileNotFoundError(f"--good-dir {good_dir} is not a folder; pass a folder of good images")
        files = [str(p) for p in image_files(good_dir)]
        if not files:
            raise ValueError(f"--good-dir {good_dir} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return files
    return RunRecord.read(ckpt_dir, data).held_back_files()


def _score_description(model) -> str:
    if model.memory is not None and model.memory.score_temperature is not None:
        cfrg = "the max of the CFRG map"
        memory = f"a soft max (temperature {model.memory.score_temperature:g}) of the patch-memory distances"
        if model.global_gaussian is not None:
            return (f"float32 (N,) = sum of three branch scores z-scored on good images: {cfrg}, {memory} and the "
                    "Mahalanobis distance of the image's global feature statistics")
        return f"float32 (N,) = sum of two branch scores z-scored on good images: {cfrg} and {memory}"
    return "float32 (N,) = max of the map"


def export_checkpoint(checkpoint, out, data: str | None = None, category: str | None = None,
                      good_dir: str | None = None, target_frr: float = 0.01, defect_split: str | None = None,
                      progress: bool = True) -> ModelInfo:
    """Checkpoint -> out (.onnx) + model.json with thresholds measured on good images; returns the model description.
    Nothing is written until every input has been checked, and out is replaced only when complete."""
    import onnx

    from sdk.backends.onnxruntime import OnnxRuntimeBackend
    from sdk.data import AnomalyDataset
    from sdk.evaluate import backend_predictor

    from sdk.build.thresholds import measure_thresholds, score_normalisation

    checkpoint, out = Path(checkpoint), Path(out)
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"output {out} must end in .onnx (model.json is written beside it)")
    model, extra = load_checkpoint(checkpoint)
    map_stats_images = int(model.map_stats_images) if model.config.map_normalisation == "position" else 0
    if model.config.map_normalisation == "position" and map_stats_images == 0:
        raise ValueError(f"{checkpoint}: the anomaly map's per-position statistics were never computed "
                         f"(training ends by computing them); finish training, or resume it with `cfrg train "
                         f"... --resume` so that it writes a complete model.pt")
    memory_images = int(model.memory.images) if model.memory is not None else 0
    if model.memory is not None and memory_images == 0:
        raise ValueError(f"{checkpoint}: the patch memory was never filled (training ends by filling it); finish "
                         f"training, or resume it with `cfrg train ... --resume` so that it writes a complete "
                         f"model.pt")
    if model.fine is not None and int(model.fine.images) == 0:
        raise ValueError(f"{checkpoint}: the fine-feature Gaussian (fine_weight {model.config.fine_weight:g}) was "
                         f"never fitted (training ends by fitting it); finish training, or resume it with `cfrg "
                         f"train ... --resume` so that it writes a complete model.pt")
    run = RunRecord.read(checkpoint.parent, data) if (checkpoint.parent / "config.json").is_file() else None
    # Inputs are checked before the slow export, so a mistake costs nothing and leaves no files behind.
    good_files = _good_threshold_images(checkpoint.parent, data, good_dir)
    root = data or (run.data if run else None)
    cat = category or (run.category if run else None)
    if defect_split and not (root and cat):
        raise ValueError(f"--defect-split {defect_split}: no dataset recorded beside {checkpoint} (config.json); "
                         f"pass --data ROOT and --category NAME")
    defect_set = AnomalyDataset(root, cat, defect_split) if defect_split else None  # scanned now: fail early
    if defect_set is not None and not any(smp.label for smp in defect_set.samples):
        raise ValueError(f"--defect-split {defect_split}: {root}/{cat}/{defect_split} holds no defect images, so no "
                         f"F1 threshold; name a split with defects or leave --defect-split out")
    if not 0.0 <= target_frr < 1.0:
        raise ValueError(f"--target-frr must be in [0, 1), e.g. 0.01 for 1% of good parts rejected; got {target_frr}")
    check_output_folder(out.parent)
    proto = export_onnx(model)
    h, w = model.config.image_size
    with atomic_output(out) as tmp:
        onnx.save(proto, str(tmp))
        predict = backend_predictor(OnnxRuntimeBackend(tmp), INPUT_NAME, model.config.colour_order)
        plan = model.config.tile_plan()  # a model trained on tiles: its thresholds are those of whole frames
        thresholds, good_scores = measure_thresholds(predict, (h, w), good_files, target_frr, defect_set,
                                                        f"{cat}/{defect_split}", progress, plan=plan)
        normalisation = score_normalisation(np.array(good_scores), thresholds["good_only"].image)
        info = ModelInfo(
            input=InputSpec(name=INPUT_NAME, height=h, width=w, colour_order=model.config.colour_order),
            outputs={"anomaly_map": f"float32 (N, H, W) at the input size: the {model.config.pixel_map} pixel map",
                     "score": _score_description(model)},
            normalisation={"inside_graph": True, "scale": 1 / 255.0, "mean": list(model.teacher.mean),
                           "std": list(model.teacher.std)},
            thresholds=thresholds,
            default_threshold="good_only",
            score_normalisation=normalisation,
            precision="fp32",
            provenance=Provenance.made_from(checkpoint, run.data_fingerprint if run else None,
                                            {**software_versions("torch", "onnx", "numpy"), "opset": OPSET}),
            training={"category": run.category if run else None,
                      "run_dir": str(checkpoint.parent.resolve()),
                      **{k: v for k, v in extra.get("train", {}).items() if k != "history"}},
            model=model.config.to_dict(),
            map_statistics={"normalisation": model.config.map_normalisation, "n_good_images": map_stats_images,
                            "memory_size": model.config.memory_size, "memory_images": memory_images},
            drift_reference=reference_from_files(good_files, good_scores, normalisation, (h, w)),
            tiling=({"scale": model.config.tile_scale, "tile": [h, w], "overlap": model.config.tile_overlap,
                     "margin": model.config.tile_margin, "score_top": model.config.tile_score_top,
                     "join": model.config.tile_join}
                    if plan is not None else {}),
        )
        save_with_description(proto, tmp, info)
    info.write_beside(out)
    from sdk.model_card import write_model_card

    write_model_card(out, good_files, run=run.raw if run else None, progress=progress)
    return info

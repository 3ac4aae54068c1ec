"""Export a CFRG checkpoint to one ONNX graph that does the whole numeric job.

Graph: frames uint8 NHWC at the model size (colour order recorded) -> Cast/Transpose/normalise ->
teacher, student, recovery, segmentation -> fused map -> fixed Gaussian -> outputs
`anomaly_map` (N,H,W) float32 and `score` (N,) float32. Dynamic batch. TorchScript exporter
(no onnxscript needed), then our constant folding.
"""
from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import numpy as np

import torch
from torch import nn

from .model import CFRG
from .onnx_utils import fold_constants

OPSET = 17  # parsed by TensorRT 8.6, 10.x (JetPack 6: 10.3) and 11
INPUT_NAME = "frames"
OUTPUT_NAMES = ("anomaly_map", "score")

# Operators of TensorRT's ONNX parser (onnx-tensorrt docs/operators.md) that this graph may use.
TENSORRT_OPS = frozenset({
    "Add", "ArgMax", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "Conv",
    "ConvTranspose", "Div", "Erf", "Exp", "Flatten", "Gather", "Gemm", "GlobalAveragePool", "Identity",
    "LeakyRelu", "Log", "MatMul", "Max", "MaxPool", "Min", "Mul", "Pad", "Pow", "ReduceL2", "ReduceMax", "ReduceMean",
    "ReduceSum", "Relu", "Reshape", "Resize", "Sigmoid", "Slice", "Softmax", "Sqrt", "Squeeze", "Sub",
    "Tanh", "Transpose", "Unsqueeze", "Upsample", "Expand", "Shape", "DequantizeLinear", "QuantizeLinear",
})


class DeployGraph(nn.Module):
    """uint8 NHWC frames in, (anomaly_map, score) out."""

    def __init__(self, model: CFRG):
        super().__init__()
        self.model = model
        self.eval()  # the exporter restores the wrapper's mode afterwards: keep it eval

    def forward(self, frames: torch.Tensor):
        x = frames.permute(0, 3, 1, 2).to(torch.float32) / 255.0  # as export.train._to_tensor
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


def graph_report(proto) -> dict:
    """Ops outside TensorRT's parser and int64 tensors that carry data (not shape arithmetic)."""
    import onnx

    ops = sorted({n.op_type for n in proto.graph.node})
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output)}
    int64 = [name for name, t in types.items() if t == onnx.TensorProto.INT64]
    return {"ops": ops, "unsupported_ops": [o for o in ops if o not in TENSORRT_OPS], "int64_tensors": int64}


def _versions() -> dict:
    import numpy
    import onnx

    import sdk

    return {"torch": torch.__version__, "onnx": onnx.__version__, "numpy": numpy.__version__,
            "sdk": sdk.__version__, "opset": OPSET}


def _good_calibration_images(ckpt_dir: Path, data: str | None, calib_dir: str | None) -> list[str]:
    """Held-back good images recorded at training, or every image of --calib-dir."""
    if calib_dir:
        from sdk.data import IMAGE_EXTENSIONS

        if not Path(calib_dir).is_dir():
            raise FileNotFoundError(f"--calib-dir {calib_dir} is not a folder; pass a folder of good images")
        files = sorted(str(p) for p in Path(calib_dir).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"--calib-dir {calib_dir} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return files
    cfg_path = ckpt_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: it lists the held-back good images for calibration; "
                                f"pass --calib-dir DIR with good images instead")
    cfg = json.loads(cfg_path.read_text())
    root = Path(data or cfg["train"]["data"])
    held = [str(root / rel) for rel in cfg.get("holdout", [])]
    if not held:
        raise ValueError(f"{cfg_path}: the model was trained with --holdout 0; pass --calib-dir DIR with good images")
    absent = [p for p in held if not Path(p).is_file()]
    if absent:
        raise FileNotFoundError(f"held-back good image {absent[0]} is missing ({len(absent)} in all): "
                                f"pass --data ROOT where the training data lives, or --calib-dir DIR")
    return held


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
                      calib_dir: str | None = None, target_frr: float = 0.01, defect_split: str | None = None,
                      progress: bool = True) -> dict:
    """Checkpoint -> out (.onnx) + model.json with calibrated thresholds; returns the model description."""
    import onnx

    from sdk.backends import OnnxRuntimeBackend
    from sdk.data import AnomalyDataset, read_image
    from sdk.detector import METADATA_FORMAT
    from sdk.evaluate import backend_predictor, frame_pairs, predict_dataset, resize_for_model

    from .calibrate import f1_thresholds, good_only_threshold, score_normalisation
    from .model import load_checkpoint

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
    cfg_path = checkpoint.parent / "config.json"
    train_cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    # Inputs are checked before the slow export, so a mistake costs nothing and leaves no files behind.
    good_files = _good_calibration_images(checkpoint.parent, data, calib_dir)
    root = data or train_cfg.get("train", {}).get("data")
    cat = category or train_cfg.get("train", {}).get("category")
    if defect_split and not (root and cat):
        raise ValueError(f"--defect-split {defect_split}: no dataset recorded in {cfg_path}; "
                         f"pass --data ROOT and --category NAME")
    defect_set = AnomalyDataset(root, cat, defect_split) if defect_split else None  # scanned now: fail early
    if defect_set is not None and not any(smp.label for smp in defect_set.samples):
        raise ValueError(f"--defect-split {defect_split}: {root}/{cat}/{defect_split} holds no defect images, so no "
                         f"F1 threshold; name a split with defects or leave --defect-split out")
    if not 0.0 <= target_frr < 1.0:
        raise ValueError(f"--target-frr must be in [0, 1), e.g. 0.01 for 1% of good parts rejected; got {target_frr}")
    out.parent.mkdir(parents=True, exist_ok=True)
    proto = export_onnx(model)
    tmp = out.with_name(f".{out.name}.tmp")
    onnx.save(proto, str(tmp))
    h, w = model.config.image_size
    predict = backend_predictor(OnnxRuntimeBackend(tmp), INPUT_NAME)

    good_scores, good_peaks = [], []  # image scores; map maxima (the same unless the score is "combined")
    for s in range(0, len(good_files), 8):
        frames = np.stack([resize_for_model(read_image(p, "rgb"), (h, w)) for p in good_files[s:s + 8]])
        maps, scores = predict(frames)
        good_scores.extend(scores.tolist())
        good_peaks.extend(maps.reshape(len(maps), -1).max(1).tolist())
    good = good_only_threshold(np.array(good_scores), target_frr)
    pixel = good_only_threshold(np.array(good_peaks), target_frr)  # about target_frr of good parts show a pixel
    thresholds = {"default": "good_only",
                  "good_only": {"image": good["value"], "pixel": pixel["value"], "target_frr": target_frr,
                                "n_images": good["n_images"], "observed_frr": good["observed_frr"]}}
    if defect_set is not None:
        preds = predict_dataset(predict, defect_set, (h, w), progress=progress)
        masks, maps = frame_pairs(preds, defect_set)
        f1 = f1_thresholds(preds.labels, preds.scores, masks, maps)
        thresholds["f1"] = {"image": f1["image"]["value"], "pixel": f1["pixel"]["value"],
                            "image_f1": f1["image"]["f1"], "pixel_f1": f1["pixel"]["f1"],
                            "n_images": f1["image"]["n_images"], "split": f"{cat}/{defect_split}"}
    info = {
        "format": METADATA_FORMAT,
        "input": {"name": INPUT_NAME, "height": h, "width": w, "channels": 3, "dtype": "uint8", "layout": "NHWC",
                  "colour_order": model.config.colour_order},
        "outputs": {"anomaly_map": "float32 (N, H, W) at the input size", "score": _score_description(model)},
        "normalisation": {"inside_graph": True, "scale": 1 / 255.0, "mean": list(model.teacher.mean),
                          "std": list(model.teacher.std)},
        "thresholds": thresholds,
        "score_normalisation": score_normalisation(np.array(good_scores), good["value"]),
        "data_fingerprint": train_cfg.get("data_fingerprint"),
        "training": {"category": train_cfg.get("train", {}).get("category"), **extra.get("train", {})},
        "model": model.config.to_dict(),
        "map_statistics": {"normalisation": model.config.map_normalisation, "n_good_images": map_stats_images,
                           "memory_size": model.config.memory_size, "memory_images": memory_images},
        "precision": "fp32",
        "versions": _versions(),
    }
    info["training"].pop("history", None)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = "cfrg", json.dumps(info, sort_keys=True)
    onnx.save(proto, str(tmp))
    os.replace(tmp, out)
    side = out.with_suffix(".json")
    side_tmp = side.with_name(f".{side.name}.tmp")
    side_tmp.write_text(json.dumps(info, indent=2, sort_keys=True))
    os.replace(side_tmp, side)
    return info

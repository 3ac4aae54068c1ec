"""One ONNX graph: TensorRT-parsable ops, no int64 data, parity with PyTorch on real images, model.json."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export.onnx_export import export_checkpoint
from sdk.build.onnx_utils import TENSORRT_OPS, graph_report
from export.train import TrainArgs, train
from export.predictor import torch_predictor
from sdk.data import AnomalyDataset
from sdk.backends.onnxruntime import OnnxRuntimeBackend
from sdk.evaluate import backend_predictor, evaluate, predict_dataset
from tests.conftest import DEMO_ROOT, EXPORT_SIZE

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
SIZE = EXPORT_SIZE


@pytest.fixture(scope="module")
def exported(exported_model):
    return exported_model


def test_graph_ops_are_tensorrt_parsable_and_int64_free(exported):
    _, path, _ = exported
    proto = onnx.load(str(path))
    report = graph_report(proto)
    assert report["unsupported_ops"] == [], report
    assert set(report["ops"]) <= TENSORRT_OPS
    assert report["int64_tensors"] == []
    assert not [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT64
                and i.name in {n.input[0] for n in proto.graph.node if n.input}]
    inp = proto.graph.input[0]
    assert inp.name == "frames" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", SIZE[0], SIZE[1], 3]
    assert [o.name for o in proto.graph.output] == ["anomaly_map", "score"]
    assert proto.opset_import[0].version == 17


def test_polygraphy_lint_passes(exported):
    pytest.importorskip("polygraphy")
    _, path, _ = exported
    cli = Path(sys.executable).with_name("polygraphy")
    run = subprocess.run([str(cli), "check", "lint", str(path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "PASSED" in run.stdout + run.stderr


def test_model_json_and_metadata_agree(exported):
    _, path, info = exported
    side = json.loads(path.with_suffix(".json").read_text())
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["cfrg"]) == side == json.loads(info.to_json())
    assert side["format"] == "cfrg-model-2" and side["precision"] == "fp32"
    assert side["input"]["colour_order"] == "RGB" and [side["input"]["height"], side["input"]["width"]] == list(SIZE)
    stats = side["map_statistics"]
    assert stats["memory_size"] == side["model"]["memory_size"] > 0 and stats["memory_images"] > 0
    t = side["thresholds"]
    assert t["default"] == "good_only" and t["good_only"]["n_images"] == 4
    assert np.isfinite(t["f1"]["image"]) and 0 <= t["f1"]["image_f1"] <= 1
    prov = side["provenance"]
    assert len(prov["data_fingerprint"]) == 64 and prov["versions"]["opset"] == 17
    assert prov["source_model"] == "model.pt" and len(prov["source_sha256"]) == 64 and prov["created"].endswith("Z")


def test_good_only_thresholds_come_from_the_held_back_images_scores_and_map_peaks(exported):
    """The image threshold is a quantile of the held-back good images' scores, the pixel threshold the
    same quantile of their map maxima (with the combined score the two differ): with 4 images and a 1 %
    target both are the maxima."""
    from sdk.data import read_image
    from sdk.evaluate import resize_for_model

    model, path, info = exported
    assert model.config.image_score == "combined" and "soft max" in info.outputs["score"]
    assert model.config.global_score and "global feature statistics" in info.outputs["score"]
    run = json.loads((path.parent / "run" / "config.json").read_text())
    frames = np.stack([resize_for_model(read_image(str(Path(run["train"]["data"]) / rel), "rgb"), SIZE)
                       for rel in run["holdout"]])
    maps, scores = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"frames": frames})
    good = info.thresholds["good_only"]
    assert good.image == pytest.approx(float(scores.max()), rel=1e-6)
    assert good.pixel == pytest.approx(float(maps.max()), rel=1e-6)
    assert good.image != pytest.approx(good.pixel, rel=1e-3)


@pytest.mark.parametrize("category", ["magnetic_tile", "ball_screw"])
def test_parity_pytorch_vs_onnxruntime_on_real_images(exported, data_root, category):
    model, path, _ = exported
    ds = AnomalyDataset(data_root, category, "test")
    sess_pred = backend_predictor(OnnxRuntimeBackend(path))
    torch_pred = torch_predictor(model)
    a = predict_dataset(sess_pred, ds, SIZE, progress=False, limit=24)
    b = predict_dataset(torch_pred, ds, SIZE, progress=False, limit=24)
    for ma, mb in zip(a.maps, b.maps):
        assert np.abs(ma - mb).max() <= 1e-4 * np.abs(mb).max()
    # the combined score is in good-image standard deviations: 1e-4 of one is far below any threshold's resolution
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-4)
    ra, rb = evaluate(a, ds), evaluate(b, ds)
    for k in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap"):
        assert round(ra[k], 3) == round(rb[k], 3), (k, ra[k], rb[k])


def test_dynamic_batch(exported):
    _, path, _ = exported
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).integers(0, 255, (5, *SIZE, 3), dtype=np.uint8)
    maps, scores = sess.run(None, {"frames": x})
    single = sess.run(None, {"frames": x[2:3]})
    assert maps.shape == (5, *SIZE) and scores.shape == (5,)
    np.testing.assert_allclose(single[0][0], maps[2], rtol=1e-5, atol=1e-6)


def test_export_without_good_images_is_a_clear_error(tmp_path):
    train(TrainArgs(data=str(DEMO_ROOT), category="ball_screw", scale="whole", out=str(tmp_path / "r"), image_size=(64, 64),
                    steps=1, time_budget=0, batch_size=2, progress=False, final_eval=False, holdout=0))
    with pytest.raises(ValueError, match="--good-dir"):
        export_checkpoint(tmp_path / "r" / "model.pt", tmp_path / "m.onnx", progress=False)
    assert not (tmp_path / "m.onnx").exists()


def test_export_of_a_checkpoint_without_map_statistics_is_a_clear_error(tmp_path):
    from export.model import CFRG, CFRGConfig
    from export.checkpoint import save_checkpoint

    save_checkpoint(CFRG(CFRGConfig(image_size=(64, 64), map_normalisation="position"), pretrained_teacher=False),
                    tmp_path / "model.pt")
    with pytest.raises(ValueError, match="per-position statistics"):
        export_checkpoint(tmp_path / "model.pt", tmp_path / "m.onnx", progress=False)
    assert not (tmp_path / "m.onnx").exists()


def test_export_of_a_checkpoint_with_an_empty_patch_memory_is_a_clear_error(tmp_path):
    from export.model import CFRG, CFRGConfig
    from export.checkpoint import save_checkpoint

    model = CFRG(CFRGConfig(image_size=(64, 64), memory_size=50), pretrained_teacher=False)  # memory never filled
    save_checkpoint(model, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="patch memory was never filled"):
        export_checkpoint(tmp_path / "model.pt", tmp_path / "m.onnx", progress=False)
    assert not (tmp_path / "m.onnx").exists()


def test_fine_branch_trains_exports_and_matches_pytorch_in_onnxruntime(tmp_path, data_root):
    """--fine-weight: training fits the fine-feature Gaussian and scales it on good images; the pixel map gains
    the branch, the score does not; the exported graph (TensorRT-parsable ops) matches PyTorch on real images.
    The weights are a few steps' (plumbing and numerics, not detection quality)."""
    import cv2
    import torch
    from export.checkpoint import load_checkpoint
    from export.model import to_tensor
    from export.fitting import with_map_fusion

    train(TrainArgs(data=str(DEMO_ROOT), category="ball_screw", scale="whole", out=str(tmp_path / "r"), image_size=SIZE,
                    steps=2, time_budget=0, batch_size=2, progress=False, final_eval=False, fine_weight=0.35))
    model, _ = load_checkpoint(tmp_path / "r" / "model.pt")
    fine = model.fine
    assert fine is not None and int(fine.images) > 0 and float(fine.scale) > 0
    ds = AnomalyDataset(data_root, "ball_screw", "test")
    frames = np.stack([ds.load_image(i, colour="rgb") for i in (0, 1)])
    x = to_tensor(np.stack([cv2.resize(f, SIZE[::-1], interpolation=cv2.INTER_AREA) for f in frames]))
    without = with_map_fusion(model, tmp_path / "r", fine_weight=0.0, progress=False)
    assert without.fine is None
    with torch.no_grad():
        (m1, s1), (m0, s0) = model.eval()(x), without.eval()(x)
        added = fine(model.teacher_features(x))
    torch.testing.assert_close(m1, m0 + added, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s1, s0)
    assert float(added.abs().max()) > 1e-3
    info = export_checkpoint(tmp_path / "r" / "model.pt", tmp_path / "m.onnx", progress=False)
    assert info is not None
    report = graph_report(onnx.load(str(tmp_path / "m.onnx")))
    assert report["unsupported_ops"] == [] and set(report["ops"]) <= TENSORRT_OPS
    a = predict_dataset(backend_predictor(OnnxRuntimeBackend(tmp_path / "m.onnx")), ds, SIZE, progress=False, limit=8)
    b = predict_dataset(torch_predictor(model), ds, SIZE, progress=False, limit=8)
    for ma, mb in zip(a.maps, b.maps):
        assert np.abs(ma - mb).max() <= 1e-4 * np.abs(mb).max()


def test_fine_weight_auto_takes_the_weight_from_the_fit_and_drops_the_branch_at_zero(tmp_path, monkeypatch):
    """--fine-weight auto (the default): training records the fit's spread and the weight auto_fine_weight gives
    it; the checkpoint holds that weight, and `cfrg eval --fine-weight auto` refits the same. A weight of 0 (a
    spread past the limit, forced here) leaves no branch, so the exported graph is the one without it. A few
    steps' weights on the demo images (plumbing, not detection quality)."""
    import export.fitting as fitting
    from export.gaussians import auto_fine_weight
    from export.checkpoint import load_checkpoint

    args = dict(data=str(DEMO_ROOT), category="ball_screw", scale="whole", image_size=SIZE, steps=2, time_budget=0, batch_size=2,
                progress=False, final_eval=False, fine_weight="auto")
    cfg = train(TrainArgs(out=str(tmp_path / "r"), **args))
    fit = cfg["summary"]["fine"]
    assert fit["spread"] > 1 and fit["weight"] == auto_fine_weight(fit["spread"]) > 0
    model, _ = load_checkpoint(tmp_path / "r" / "model.pt")
    assert model.config.fine_weight == cfg["model"]["fine_weight"] == fit["weight"] and float(model.fine.scale) > 0
    again = fitting.with_map_fusion(model, tmp_path / "r", fine_weight="auto", progress=False)
    assert again.config.fine_weight == fit["weight"]
    assert float(again.fine.scale) == pytest.approx(float(model.fine.scale), rel=1e-4)

    monkeypatch.setattr(fitting, "auto_fine_weight", lambda spread: 0.0)
    cfg = train(TrainArgs(out=str(tmp_path / "flat"), **args))
    assert cfg["summary"]["fine"]["weight"] == cfg["model"]["fine_weight"] == 0.0
    model, _ = load_checkpoint(tmp_path / "flat" / "model.pt")
    assert model.fine is None
    export_checkpoint(tmp_path / "flat" / "model.pt", tmp_path / "flat.onnx", progress=False)
    export_checkpoint(tmp_path / "r" / "model.pt", tmp_path / "fine.onnx", progress=False)
    nodes = [len(onnx.load(str(tmp_path / name)).graph.node) for name in ("flat.onnx", "fine.onnx")]
    assert nodes[0] < nodes[1]


def test_export_of_a_checkpoint_with_an_unfitted_fine_branch_is_a_clear_error(tmp_path):
    from export.model import CFRG, CFRGConfig
    from export.checkpoint import save_checkpoint

    save_checkpoint(CFRG(CFRGConfig(image_size=(64, 64), memory_size=0, fine_weight=0.3), pretrained_teacher=False),
                    tmp_path / "model.pt")
    with pytest.raises(ValueError, match="fine-feature Gaussian .* was never fitted"):
        export_checkpoint(tmp_path / "model.pt", tmp_path / "m.onnx", progress=False)
    assert not (tmp_path / "m.onnx").exists()

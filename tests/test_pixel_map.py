"""The output pixel map (fused, plain_fused, cfrg, plain) and the CFRG map's kind: the image score is the same for
every pixel map, each is the map its name says, each trains, re-evaluates and exports with ONNX Runtime parity."""
import json
import shutil

import numpy as np
import pytest
import torch

from export.config import PIXEL_MAPS
from export.checkpoint import load_checkpoint
from export.blocks import upsample
from export.train import TrainArgs, train
from export.fitting import with_map_fusion
from tests.conftest import DEMO_ROOT


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pixel_map")
    train(TrainArgs(data=str(DEMO_ROOT), category="ball_screw", scale="whole", out=str(root / "run"), image_size=(64, 128),
                    steps=3, time_budget=0, batch_size=4, progress=False, final_eval=False,
                    fine_weight=0.0))  # the pixel maps alone: the fine branch would be added to each
    return root / "run"


def test_every_pixel_map_keeps_the_image_score_and_is_the_map_it_names(trained_run):
    run = trained_run
    trained, _ = load_checkpoint(run / "model.pt")
    assert trained.config.pixel_map == "fused"  # the default
    x = torch.rand(3, 3, *trained.config.image_size)
    variants = {k: with_map_fusion(trained, run, pixel_map=k, progress=False) for k in PIXEL_MAPS}
    paper = with_map_fusion(trained, run, map_normalisation="none", memory_size=0, progress=False)
    no_memory = with_map_fusion(trained, run, memory_size=0, progress=False)
    with torch.no_grad():
        out = {k: m.eval()(x) for k, m in variants.items()}
        for k in PIXEL_MAPS:
            assert torch.allclose(out[k][1], out["fused"][1], atol=1e-4), k  # the same image score
            assert variants[k].config.pixel_map == k
        assert torch.allclose(out["fused"][0], trained(x)[0], atol=1e-5)
        assert torch.allclose(out["plain"][0], paper.eval()(x)[0], atol=1e-5)  # the paper's map
        assert torch.allclose(out["cfrg"][0], no_memory.eval()(x)[0], atol=1e-5)  # the CFRG map alone
        m = variants["plain_fused"]
        t_feats = m.teacher_features(x)
        memory_map = m.blur(upsample(m.memory(t_feats), m.memory.stride))
        plain_z = (out["plain"][0] - m.memory.plain_mean) / m.memory.plain_std
        assert torch.allclose(out["plain_fused"][0], torch.maximum(plain_z, memory_map), atol=1e-5)
    assert float(m.memory.plain_std) != 1.0  # measured on the held-back good images, not the default
    back = with_map_fusion(m, run, pixel_map="fused", progress=False)  # the plain statistics go again
    assert not hasattr(back.memory, "plain_mean") and torch.equal(back.memory.bank, trained.memory.bank)


def test_plain_fused_needs_a_memory_and_says_so(trained_run):
    trained, _ = load_checkpoint(trained_run / "model.pt")
    with pytest.raises(ValueError, match="plain_fused.*has none"):
        with_map_fusion(trained, trained_run, pixel_map="plain_fused", memory_size=0, progress=False)


def test_training_with_plain_fused_writes_it_into_the_checkpoint(tmp_path):
    cfg = train(TrainArgs(data=str(DEMO_ROOT), category="ball_screw", scale="whole", out=str(tmp_path / "run"), image_size=(64, 64),
                          steps=1, time_budget=0, batch_size=2, progress=False, final_eval=False,
                          pixel_map="plain_fused"))
    model, _ = load_checkpoint(tmp_path / "run" / "model.pt")
    assert cfg["model"]["pixel_map"] == model.config.pixel_map == "plain_fused"
    assert float(model.memory.plain_std) > 0 and float(model.memory.plain_std) != 1.0


@pytest.mark.parametrize("change", [{"pixel_map": "plain_fused"}, {"pixel_map": "plain"},
                                    {"map_normalisation": "position"},
                                    {"memory_edges": "zeros", "memory_fusion": "sum", "memory_weight": 2.0}])
def test_each_pixel_map_exports_with_onnx_runtime_parity(trained_run, tmp_path, change):
    """The default (map "sum", fused) is exported in test_export.py; here the other maps."""
    pytest.importorskip("onnx")
    from export.checkpoint import save_checkpoint
    from export.onnx_export import export_checkpoint
    from export.predictor import torch_predictor
    from sdk.backends.onnxruntime import OnnxRuntimeBackend
    from sdk.data import AnomalyDataset
    from sdk.evaluate import backend_predictor, predict_dataset

    trained, _ = load_checkpoint(trained_run / "model.pt")
    model = with_map_fusion(trained, trained_run, progress=False, **change)
    shutil.copy(trained_run / "config.json", tmp_path / "config.json")
    save_checkpoint(model, tmp_path / "model.pt")
    info = export_checkpoint(tmp_path / "model.pt", tmp_path / "model.onnx", progress=False)
    assert info.thresholds
    ds = AnomalyDataset(DEMO_ROOT, "ball_screw", "test")
    a = predict_dataset(backend_predictor(OnnxRuntimeBackend(tmp_path / "model.onnx")), ds, model.config.image_size,
                        progress=False, limit=8)
    b = predict_dataset(torch_predictor(model), ds, model.config.image_size, progress=False, limit=8)
    for ma, mb in zip(a.maps, b.maps):
        assert np.abs(ma - mb).max() <= 1e-4 * max(np.abs(mb).max(), 1e-6)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-4)


def test_cli_eval_with_another_pixel_map(trained_run, tmp_path):
    from sdk.cli import main

    js = tmp_path / "plain_fused.json"
    assert main(["eval", "--model", str(trained_run / "model.pt"), "--data", str(DEMO_ROOT), "--category",
                 "ball_screw", "--pixel-map", "plain_fused", "--json", str(js), "--no-progress"]) == 0
    assert 0.0 <= json.loads(js.read_text())["pixel_auroc"] <= 1.0
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(trained_run / "model.pt"), "--data", str(DEMO_ROOT), "--category",
              "ball_screw", "--pixel-map", "auto"])


def test_eval_with_another_smoothing_or_seg_weight_rebuilds_the_memory_statistics_and_keeps_the_bank(trained_run):
    """--gaussian-sigma, --seg-sigma and --sum-seg-weight on a checkpoint: the same weights and memory bank, the
    discrepancies (and the segmentation's probability) smoothed at the new sigma or the segmentation weighted
    anew (neither is part of training), the memory's z-score statistics measured again on that map."""
    from export.blocks import GaussianBlur

    trained, _ = load_checkpoint(trained_run / "model.pt")
    sharper = with_map_fusion(trained, trained_run, gaussian_sigma=2.0, progress=False)
    smoothed_seg = with_map_fusion(trained, trained_run, seg_sigma=4.0, progress=False)
    heavier_seg = with_map_fusion(trained, trained_run, sum_seg_weight=2.0, progress=False)
    assert sharper.config.gaussian_sigma == 2.0 and trained.config.gaussian_sigma == 3.0
    assert trained.config.seg_sigma == 0 and smoothed_seg.config.seg_sigma == 4.0
    assert trained.config.sum_seg_weight == 1.5 and heavier_seg.config.sum_seg_weight == 2.0
    for other in (sharper, smoothed_seg, heavier_seg):
        assert torch.equal(other.memory.bank, trained.memory.bank)
        assert float(other.memory.map_std) != float(trained.memory.map_std)
    x = torch.rand(2, 3, *trained.config.image_size)
    with torch.no_grad():
        heads = sharper.heads(x, sharper.teacher_features(x))
        raw = sum(upsample(ds + dr, s) for ds, dr, s in zip(heads["d_student"], heads["d_recovery"], sharper.strides))
        seg = torch.sigmoid(upsample(heads["seg_logit"], sharper.strides[0]))
        close = dict(rtol=1e-5, atol=1e-5)  # the default: sigma 3, segmentation weight 1.5, not smoothed
        torch.testing.assert_close(sharper.anomaly_map(x, heads), GaussianBlur(2.0)(raw) + 1.5 * seg, **close)
        torch.testing.assert_close(trained.anomaly_map(x, heads), GaussianBlur(3.0)(raw) + 1.5 * seg, **close)
        torch.testing.assert_close(smoothed_seg.anomaly_map(x, heads),
                                   GaussianBlur(3.0)(raw) + GaussianBlur(4.0)(1.5 * seg), **close)
        torch.testing.assert_close(heavier_seg.anomaly_map(x, heads), GaussianBlur(3.0)(raw) + 2.0 * seg, **close)

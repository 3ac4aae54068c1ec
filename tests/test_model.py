"""CFRG model: shapes, ranges, batching, checkpoint round trip, ablation switches."""
import numpy as np
import pytest
import torch

from export.model import CFRG, CFRGConfig, GaussianBlur, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CFRG(CFRGConfig(image_size=(128, 160))).eval()


def test_map_shape_range_and_score_is_max():
    """The paper's map: sum over 3 scales of a cosine distance (0..2) plus a sigmoid (0..1), smoothed."""
    torch.manual_seed(0)
    paper = CFRG(CFRGConfig(image_size=(128, 160), map_normalisation="none")).eval()
    x = torch.rand(3, 3, 128, 160)
    with torch.no_grad():
        amap, score = paper(x)
    assert amap.shape == (3, 1, 128, 160)
    assert score.shape == (3,)
    assert torch.isfinite(amap).all()
    assert amap.min() >= 0 and amap.max() <= 7
    assert torch.allclose(score, amap.flatten(1).amax(1))


def _demo_images(n, size):
    from export.train import load_train_images
    from sdk.data import AnomalyDataset
    from tests.conftest import DEMO_ROOT

    return load_train_images(AnomalyDataset(DEMO_ROOT, "ball_screw", "train"), size, progress=False)[:n]


def test_calibrate_map_matches_per_position_statistics():
    """On real good images: the stored mean/std are the per-position statistics of each discrepancy
    (std shrunk towards the global one), so the calibration images' z-scores average to zero."""
    from export.train import _to_tensor, calibrate_map

    torch.manual_seed(0)
    m = CFRG(CFRGConfig(image_size=(64, 128), use_segmentation=False)).eval()
    images = _demo_images(12, (64, 128))
    assert calibrate_map(m, images, batch=5) == 12 and int(m.map_stats_images) == 12
    with torch.no_grad():
        x = _to_tensor(images)
        scales = [torch.cat(ds, 1) for ds in m.discrepancies(m.heads(x, m.teacher_features(x)))]
        for k, d in enumerate(scales):
            mean, var = d.mean(0, keepdim=True), d.var(0, keepdim=True)
            global_var = d.transpose(0, 1).flatten(1).var(1, unbiased=False).view(1, -1, 1, 1)
            assert torch.allclose(getattr(m, f"map_mean{k}"), mean, atol=1e-5)
            std = torch.sqrt(var + 0.25 * global_var)
            assert torch.allclose(getattr(m, f"map_std{k}"), std, rtol=1e-3, atol=1e-6)
        amap, _ = m(x)
    assert abs(amap.mean().item()) < 1e-3  # the blur and upsampling are linear: mean z-score 0


def test_position_map_is_calibrated_z_score_plus_weighted_segmentation():
    """Calibration shifts the map: a constant per-position offset comes out of the discrepancies."""
    from export.train import _to_tensor, calibrate_map

    torch.manual_seed(0)
    m = CFRG(CFRGConfig(image_size=(64, 128))).eval()
    x = _to_tensor(_demo_images(8, (64, 128)))
    with torch.no_grad():
        before, _ = m(x)
        heads = m.heads(x, m.teacher_features(x))
        calibrate_map(m, _demo_images(8, (64, 128)))
        after, _ = m(x)
        seg = m.blur(torch.sigmoid(torch.nn.functional.interpolate(heads["seg_logit"], scale_factor=4.0,
                                                                    mode="bilinear", align_corners=False)))
    assert not torch.allclose(before, after)
    # with the images' own statistics the discrepancy part averages to 0: what is left is the segmentation
    assert abs((after - m.config.seg_weight * seg).mean().item()) < 1e-3


def test_checkpoint_from_before_map_normalisation_loads_with_the_paper_map(tmp_path):
    old = CFRG(CFRGConfig(image_size=(64, 64), map_normalisation="none")).eval()
    path = tmp_path / "old.pt"
    save_checkpoint(old, path)
    payload = torch.load(path, weights_only=True)
    del payload["config"]["map_normalisation"], payload["config"]["seg_weight"]
    torch.save(payload, path)
    loaded, _ = load_checkpoint(path)
    assert loaded.config.map_normalisation == "none"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x)[0], old(x)[0], atol=1e-6)


def test_unknown_map_normalisation_is_rejected():
    with pytest.raises(ValueError, match="map_normalisation"):
        CFRG(CFRGConfig(image_size=(64, 64), map_normalisation="global"), pretrained_teacher=False)


def test_batch_equals_single_images(model):
    x = torch.rand(4, 3, 128, 160)
    with torch.no_grad():
        batched, _ = model(x)
        singles = torch.cat([model(x[i:i + 1])[0] for i in range(4)])
    assert torch.allclose(batched, singles, atol=1e-5)


def test_teacher_frozen_and_not_trained(model):
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and not any(n.startswith("teacher.") for n in names)
    model.train()
    assert not model.teacher.training
    model.eval()


@pytest.mark.parametrize("use_recovery,use_segmentation", [(False, True), (True, False)])
def test_ablations_build_and_run(use_recovery, use_segmentation):
    m = CFRG(CFRGConfig(image_size=(64, 64), use_recovery=use_recovery, use_segmentation=use_segmentation)).eval()
    assert (m.recovery is None) == (not use_recovery)
    assert (m.seg is None) == (not use_segmentation)
    with torch.no_grad():
        amap, score = m(torch.rand(2, 3, 64, 64))
    assert amap.shape == (2, 1, 64, 64) and score.shape == (2,)


def test_gaussian_blur_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    img = np.random.default_rng(0).random((64, 80)).astype(np.float32)
    ours = GaussianBlur(4.0)(torch.from_numpy(img)[None, None])[0, 0].numpy()
    ref = ndimage.gaussian_filter(img, 4.0, mode="nearest", truncate=4.0)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_checkpoint_round_trip_weights_only(tmp_path, model):
    from export.train import calibrate_map

    calibrate_map(model, _demo_images(4, (128, 160)))
    path = tmp_path / "model.pt"
    save_checkpoint(model, path, extra={"note": "x"})
    torch.load(path, weights_only=True)  # loads without pickled code
    loaded, extra = load_checkpoint(path)
    x = torch.rand(1, 3, 128, 160)
    with torch.no_grad():
        assert torch.allclose(loaded(x)[0], model(x)[0], atol=1e-6)
    assert extra == {"note": "x"}
    assert loaded.config.image_size == (128, 160)
    assert int(loaded.map_stats_images) == 4 and torch.equal(loaded.map_std1, model.map_std1)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cfrg train"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable CFRG checkpoint"):
        load_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a CFRG checkpoint"):
        load_checkpoint(other)

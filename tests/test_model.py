"""CFRG model: shapes, ranges, batching, checkpoint round trip, ablation switches."""
import numpy as np
import pytest
import torch

from export.model import CFRG, CFRGConfig, GaussianBlur, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CFRG(CFRGConfig(image_size=(128, 160))).eval()


def test_map_shape_range_and_score_is_max(model):
    x = torch.rand(3, 3, 128, 160)
    with torch.no_grad():
        amap, score = model(x)
    assert amap.shape == (3, 1, 128, 160)
    assert score.shape == (3,)
    assert torch.isfinite(amap).all()
    # sum over 3 scales of a cosine distance (0..2) plus a sigmoid (0..1), smoothed
    assert amap.min() >= 0 and amap.max() <= 7
    assert torch.allclose(score, amap.flatten(1).amax(1))


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
    path = tmp_path / "model.pt"
    save_checkpoint(model, path, extra={"note": "x"})
    torch.load(path, weights_only=True)  # loads without pickled code
    loaded, extra = load_checkpoint(path)
    x = torch.rand(1, 3, 128, 160)
    with torch.no_grad():
        assert torch.allclose(loaded(x)[0], model(x)[0], atol=1e-6)
    assert extra == {"note": "x"}
    assert loaded.config.image_size == (128, 160)


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

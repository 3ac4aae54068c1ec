"""CFRG model: shapes, ranges, batching, checkpoint round trip, ablation switches."""
import numpy as np
import pytest
import torch

from export.model import CFRG, CFRGConfig
from export.blocks import GaussianBlur
from export.checkpoint import load_checkpoint, save_checkpoint
from sdk.backends import ModelFileError


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CFRG(CFRGConfig(image_size=(128, 160), map_normalisation="position")).eval()


def test_map_shape_range_and_score_is_max():
    """The paper's map: sum over 3 scales of a cosine distance (0..2) plus a sigmoid (0..1), smoothed."""
    torch.manual_seed(0)
    paper = CFRG(CFRGConfig(image_size=(128, 160), map_normalisation="none", memory_size=0)).eval()
    x = torch.rand(3, 3, 128, 160)
    with torch.no_grad():
        amap, score = paper(x)
    assert amap.shape == (3, 1, 128, 160)
    assert score.shape == (3,)
    assert torch.isfinite(amap).all()
    assert amap.min() >= 0 and amap.max() <= 7
    assert torch.allclose(score, amap.flatten(1).amax(1))


def _demo_images(n, size):
    from export.train_images import load_train_images
    from sdk.data import AnomalyDataset
    from tests.conftest import DEMO_ROOT

    return load_train_images(AnomalyDataset(DEMO_ROOT, "ball_screw", "train"), size, progress=False)[:n]


def test_fit_map_matches_per_position_statistics():
    """On real good images: the stored mean/std are the per-position statistics of each discrepancy
    (std shrunk towards the global one), so the fitting images' z-scores average to zero."""
    from export.model import to_tensor
    from export.fitting import fit_map

    torch.manual_seed(0)
    m = CFRG(CFRGConfig(image_size=(64, 128), use_segmentation=False, memory_size=0,
                        map_normalisation="position")).eval()
    images = _demo_images(12, (64, 128))
    assert fit_map(m, images, batch=5) == 12 and int(m.map_stats_images) == 12
    with torch.no_grad():
        x = to_tensor(images)
        scales = [torch.cat(ds, 1) for ds in m.discrepancies(m.heads(x, m.teacher_features(x)))]
        for k, d in enumerate(scales):
            mean, var = d.mean(0, keepdim=True), d.var(0, keepdim=True)
            global_var = d.transpose(0, 1).flatten(1).var(1, unbiased=False).view(1, -1, 1, 1)
            assert torch.allclose(getattr(m, f"map_mean{k}"), mean, atol=1e-5)
            std = torch.sqrt(var + 0.25 * global_var)
            assert torch.allclose(getattr(m, f"map_std{k}"), std, rtol=1e-3, atol=1e-6)
        amap, _ = m(x)
    assert abs(amap.mean().item()) < 1e-3  # the blur and upsampling are linear: mean z-score 0


def test_position_map_is_fitted_z_score_plus_weighted_segmentation():
    """Calibration shifts the map: a constant per-position offset comes out of the discrepancies."""
    from export.model import to_tensor
    from export.fitting import fit_map

    torch.manual_seed(0)
    m = CFRG(CFRGConfig(image_size=(64, 128), memory_size=0, map_normalisation="position")).eval()
    x = to_tensor(_demo_images(8, (64, 128)))
    with torch.no_grad():
        before, _ = m(x)
        heads = m.heads(x, m.teacher_features(x))
        fit_map(m, _demo_images(8, (64, 128)))
        after, _ = m(x)
        seg = torch.sigmoid(torch.nn.functional.interpolate(heads["seg_logit"], scale_factor=4.0, mode="bilinear",
                                                            align_corners=False))  # seg_sigma 0: not smoothed
    assert not torch.allclose(before, after)
    # with the images' own statistics the discrepancy part averages to 0: what is left is the segmentation
    assert abs((after - m.config.seg_weight * seg).mean().item()) < 1e-3


def test_sum_map_is_the_plain_sum_of_every_discrepancy_and_the_segmentation():
    """map_normalisation "sum": sum over scales of the upsampled student and recovery discrepancies, smoothed,
    plus sigmoid(seg) (seg_sigma 0: not smoothed again); no per-position statistics (nothing to fit, no
    buffers)."""
    from export.blocks import upsample
    from export.model import to_tensor
    from export.fitting import fit_map

    torch.manual_seed(0)
    m = CFRG(CFRGConfig(image_size=(64, 128), map_normalisation="sum", memory_size=0)).eval()
    images = _demo_images(4, (64, 128))
    assert fit_map(m, images) == 0 and not hasattr(m, "map_mean0")
    x = to_tensor(images)
    with torch.no_grad():
        heads = m.heads(x, m.teacher_features(x))
        parts = sum(upsample(ds + dr, s) for ds, dr, s in zip(heads["d_student"], heads["d_recovery"], m.strides))
        seg = torch.sigmoid(upsample(heads["seg_logit"], m.strides[0]))
        expected = m.blur(parts) + 1.5 * seg  # sum_seg_weight 1.5
        amap, score = m(x)
        paper = m.anomaly_map(x, heads, "none")
        m.config.seg_sigma = None  # as checkpoints from before seg_sigma: one blur of the sum
        smoothed_seg = m.anomaly_map(x, heads)
        m.config.seg_sigma, m.config.sum_seg_weight = 0.0, 2.0
        weighted_seg = m.anomaly_map(x, heads)
    torch.testing.assert_close(amap, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weighted_seg, m.blur(parts) + 2.0 * seg, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(smoothed_seg, m.blur(parts + 1.5 * seg), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(smoothed_seg, amap, atol=1e-3)
    assert CFRGConfig.from_dict({"gaussian_sigma": 3.0}).seg_sigma is None and CFRGConfig().seg_sigma == 0
    old = CFRGConfig.from_dict({})  # a checkpoint from before sum_seg_weight keeps its map
    assert (old.gaussian_sigma, old.sum_seg_weight) == (4.0, 1.0)
    assert (CFRGConfig().gaussian_sigma, CFRGConfig().sum_seg_weight) == (3.0, 1.5)
    assert torch.allclose(score, amap.flatten(1).amax(1))
    assert (amap > paper).all()  # the paper's map leaves the student discrepancies out
    with pytest.raises(ValueError, match="only 'position' has map statistics"):
        m.fit_map(iter([x]))


def test_checkpoint_from_before_map_normalisation_loads_with_the_paper_map(tmp_path):
    old = CFRG(CFRGConfig(image_size=(64, 64), map_normalisation="none", memory_size=0)).eval()
    path = tmp_path / "old.pt"
    save_checkpoint(old, path)
    payload = torch.load(path, weights_only=True)
    for key in ("map_normalisation", "seg_weight", "memory_size", "memory_pool"):
        del payload["config"][key]
    torch.save(payload, path)
    loaded, _ = load_checkpoint(path)
    assert loaded.config.map_normalisation == "none" and loaded.memory is None
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
    from export.fitting import fit_map

    fit_map(model, _demo_images(4, (128, 160)))
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
    with pytest.raises(ModelFileError, match="cfrg train"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable CFRG checkpoint"):
        load_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a CFRG checkpoint"):
        load_checkpoint(other)


def test_greedy_coreset_covers_every_cluster():
    """k-centre selection: with k equal to the number of well-separated clusters, one point from each."""
    from export.memory import greedy_coreset

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 32, generator=g) * 50
    points = (centres.repeat_interleave(100, 0) + torch.randn(600, 32, generator=g)).contiguous()
    chosen = greedy_coreset(points, 6, seed=1)
    assert sorted((chosen // 100).tolist()) == list(range(6))
    assert torch.equal(greedy_coreset(points, 700), torch.arange(600))  # k >= n: every point


def test_patch_memory_distance_is_the_nearest_neighbour_distance():
    """On real images: the MatMul + ReduceMax search equals a brute-force nearest-neighbour distance, and
    the memory map is that distance z-scored."""
    from export.model import to_tensor

    torch.manual_seed(0)
    m = CFRG(CFRGConfig(image_size=(64, 128), memory_size=300)).eval()
    images = _demo_images(6, (64, 128))
    with torch.no_grad():
        t_train = m.teacher_features(to_tensor(images[:4]))
        m.memory.fill(m.memory.embed(t_train))
        m.memory.dist_mean.fill_(2.0)
        m.memory.dist_std.fill_(4.0)
        t_test = m.teacher_features(to_tensor(images[4:]))
        emb = m.memory.embed(t_test)
        assert emb.shape == (2, 40 + 112, 4, 8)  # Lite0 stride 8 and 16 channels, on the stride-16 grid
        queries = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
        bank = m.memory.bank.flatten(1) + m.memory.center.flatten(1)
        brute = torch.cdist(queries.double(), bank.double()).amin(1).view(2, 1, 4, 8).float()
        z = m.memory(t_test)
    assert torch.allclose((z * 4.0 + 2.0), brute, rtol=1e-4, atol=1e-3)


def test_fused_map_is_the_max_of_both_z_scored_maps():
    """With a memory the map is max((CFRG map - mean) / std, smoothed memory z-score) per pixel; with
    image_score "max" the score is that map's max."""
    from export.blocks import upsample
    from export.model import to_tensor
    from export.fitting import fit_map, fit_memory

    torch.manual_seed(0)
    m = CFRG(CFRGConfig(image_size=(64, 128), memory_size=200, image_score="max")).eval()
    images = _demo_images(10, (64, 128))
    fit_map(m, images)
    assert fit_memory(m, images) == 10 and int(m.memory.images) == 10
    x = to_tensor(images[:3])
    with torch.no_grad():
        t_feats = m.teacher_features(x)
        cfrg_map = (m.anomaly_map(x, m.heads(x, t_feats)) - m.memory.map_mean) / m.memory.map_std
        memory_map = m.blur(upsample(m.memory(t_feats), m.memory.stride))
        fused, score = m(x)
    assert torch.allclose(fused, torch.maximum(cfrg_map, memory_map), atol=1e-5)
    assert (fused >= cfrg_map - 1e-5).all() and (fused >= memory_map - 1e-5).all()
    assert torch.allclose(score, fused.flatten(1).amax(1))


def test_combined_score_sums_branch_scores_z_scored_on_held_out_good_images():
    """image_score "combined": score = sum over the two branches of (branch score - good mean) / good std,
    the branches being the CFRG map's max and the log-mean-exp at score_temperature of the memory's
    z-scored distances on its grid; the good-image statistics are those of the held-out images, whose
    scores therefore average to 0."""
    import math

    from export.blocks import upsample
    from export.model import to_tensor
    from export.fitting import fit_map, fit_memory

    torch.manual_seed(0)
    m = CFRG(CFRGConfig(image_size=(64, 128), memory_size=200, global_score=False)).eval()
    assert m.config.image_score == "combined" and m.memory.score_temperature == 2.0
    assert m.global_gaussian is None
    images = _demo_images(18, (64, 128))
    fit_map(m, images[:10])
    fit_memory(m, images[:10], holdout=images[10:])
    x = to_tensor(images[10:])
    with torch.no_grad():
        t_feats = m.teacher_features(x)
        cfrg_map = (m.anomaly_map(x, m.heads(x, t_feats)) - m.memory.map_mean) / m.memory.map_std
        memory_z = m.memory(t_feats)
        fused, score = m(x)
    t = 2.0
    assert memory_z.shape[-2:] == (64 // 16, 128 // 16)
    flat = memory_z.flatten(1).double()
    soft = t * (torch.logsumexp(flat / t, 1) - math.log(flat.shape[1]))
    assert (soft <= flat.amax(1) + 1e-6).all() and (soft >= flat.mean(1) - 1e-6).all()
    branches = torch.stack([cfrg_map.flatten(1).amax(1).double(), soft], 1)
    assert torch.allclose(m.memory.score_mean.double(), branches.mean(0), rtol=1e-4, atol=1e-4)
    assert torch.allclose(m.memory.score_std.double(), branches.std(0), rtol=1e-3, atol=1e-4)
    expected = ((branches - branches.mean(0)) / branches.std(0)).sum(1)
    assert torch.allclose(score.double(), expected, atol=1e-3)
    assert abs(float(score.mean())) < 1e-3 and float(score.std()) > 0.5
    assert torch.allclose(fused, torch.maximum(cfrg_map, m.blur(upsample(memory_z, 16))))


def test_ledoit_wolf_matches_scikit_learn():
    from sklearn.covariance import LedoitWolf

    from export.gaussians import ledoit_wolf

    rng = np.random.default_rng(0)
    for n, p in ((50, 20), (30, 80)):  # more samples than dimensions, and fewer
        x = rng.normal(size=(n, p)) @ rng.normal(size=(p, p))
        ref = LedoitWolf().fit(x)
        cov, shrink = ledoit_wolf(torch.from_numpy(x))
        assert abs(shrink - ref.shrinkage_) < 1e-9 and 0 < shrink < 1
        assert np.allclose(cov.numpy(), ref.covariance_, rtol=1e-9, atol=1e-9)


def _global_descriptor_reference(t_feats) -> np.ndarray:
    """Per scale, each channel's spatial mean and log standard deviation, in NumPy."""
    out = []
    for f in t_feats:
        f = f.double().numpy().reshape(f.shape[0], f.shape[1], -1)
        out += [f.mean(2), 0.5 * np.log(f.var(2) + 1e-6)]
    return np.concatenate(out, 1)


def test_global_branch_adds_a_mahalanobis_distance_z_scored_on_held_out_good_images():
    """The combined score's global branch: the Mahalanobis distance of an image's global teacher statistics
    to a Ledoit-Wolf Gaussian of the standardised statistics of good training images (as scikit-learn
    computes it), z-scored on the held-out good images; it is added to the two memory branches when the
    Gaussian came from more images than it has dimensions."""
    from sklearn.covariance import LedoitWolf

    from export.model import to_tensor
    from export.fitting import fit_map, fit_memory

    torch.manual_seed(0)
    m = CFRG(CFRGConfig(image_size=(64, 128), memory_size=200)).eval()
    assert m.config.global_score and m.global_gaussian is not None
    images = _demo_images(18, (64, 128))
    fit_map(m, images[:10])
    fit_memory(m, images[:10], holdout=images[10:])
    assert int(m.global_gaussian.images) == 10
    with torch.no_grad():
        train_desc = _global_descriptor_reference(m.teacher_features(to_tensor(images[:10])))
        x = to_tensor(images[10:])
        t_feats = m.teacher_features(x)
        held_desc = _global_descriptor_reference(t_feats)
        assert np.allclose(m.global_gaussian.describe(t_feats).numpy(), held_desc, atol=1e-4)
        _, score = m(x)
        two_branches = m.memory.fuse(m.anomaly_map(x, m.heads(x, t_feats)), t_feats, m.blur)[1]
        global_z = m.global_gaussian(t_feats)
    mean, scale = train_desc.mean(0), train_desc.std(0, ddof=1) + 1e-6
    ref = LedoitWolf().fit((train_desc - mean) / scale)
    dist = np.sqrt(ref.mahalanobis((held_desc - mean) / scale))
    g = m.global_gaussian
    assert np.allclose(g.distance(torch.from_numpy(held_desc).float()).numpy(), dist, rtol=2e-3)
    z = (g.distance(torch.from_numpy(held_desc).float()) - g.dist_mean) / g.dist_std
    assert np.allclose(z.numpy(), (dist - dist.mean()) / dist.std(ddof=1), atol=5e-3)
    # 10 images for 352 dimensions: the branch is not used
    assert float(g.in_use()) == 0 and torch.equal(global_z, torch.zeros(8))
    assert torch.allclose(score, two_branches, atol=1e-5)
    g.images.fill_(g.whiten.shape[0] + 1)  # had it come from more images than dimensions, it would count
    with torch.no_grad():
        assert torch.allclose(m(x)[1], two_branches + z, atol=1e-4)


def test_global_branch_without_held_out_images_is_z_scored_by_cross_fitting():
    """Without held-out images each fifth of the training images is scored by a Gaussian of the other
    four fifths (in-sample distances would be too small); the final Gaussian uses all of them."""
    from export.gaussians import GlobalGaussian

    rng = np.random.default_rng(1)
    train = torch.from_numpy(rng.normal(size=(40, 12)))
    g = GlobalGaussian([3, 3])
    g.fit_with_z_scores(train)
    folds = torch.arange(40) % 5
    crossed = []
    for k in range(5):
        g_k = GlobalGaussian([3, 3])
        g_k.fit(train[folds != k])
        crossed.append(g_k.distance(train[folds == k].float()))
    crossed = torch.cat(crossed)
    in_sample = g.distance(train.float())
    assert abs(float(g.dist_mean) - float(crossed.mean())) < 1e-4
    assert float(g.dist_mean) > float(in_sample.mean())  # the in-sample distances are biased low
    assert int(g.images) == 40
    with pytest.raises(ValueError, match="at least 2 good images"):
        GlobalGaussian([3, 3]).fit(train[:1])
    tiny = GlobalGaussian([3, 3])  # two images: nothing to cross-fit, the in-sample distances are used
    tiny.fit_with_z_scores(train[:2])
    assert torch.isfinite(tiny.dist_mean) and int(tiny.images) == 2


def test_memory_statistics_leave_each_image_out():
    """Without held-out images, a training image's own patches are left out of its search: with every
    patch in the bank the distances would all be 0; left out, they are the distances to other images."""
    from export.model import to_tensor
    from export.fitting import fit_map, fit_memory

    torch.manual_seed(0)
    m = CFRG(CFRGConfig(image_size=(64, 128), memory_size=4 * 32)).eval()  # room for all 4 x 32 patches
    images = _demo_images(4, (64, 128))
    fit_map(m, images)
    fit_memory(m, images)
    with torch.no_grad():
        emb = m.memory.embed(m.teacher_features(to_tensor(images)))
        per_image = emb.permute(0, 2, 3, 1).reshape(4, -1, emb.shape[1]).double()
        nearest_other = [torch.cdist(per_image[i], torch.cat([per_image[j] for j in range(4) if j != i])).amin(1)
                         for i in range(4)]
    dist = torch.cat(nearest_other)
    assert float(m.memory.dist_mean) > 0.5
    assert abs(float(m.memory.dist_mean) - float(dist.mean())) < 1e-2 * float(dist.mean())
    assert abs(float(m.memory.dist_std) - float(dist.std(unbiased=False))) < 2e-2 * float(dist.std())


def test_sum_fusion_adds_the_weighted_memory_map_to_the_z_scored_map():
    """memory_fusion "sum": map z-score + memory_weight x memory map per pixel; "max" with a weight takes the max
    of the map and the weighted memory map. Same weights, same statistics: only the fusion differs."""
    from export.blocks import upsample
    from export.model import to_tensor
    from export.fitting import fit_map, fit_memory

    torch.manual_seed(0)
    images = _demo_images(10, (64, 128))
    m = CFRG(CFRGConfig(image_size=(64, 128), memory_size=200, image_score="max")).eval()
    fit_map(m, images)
    fit_memory(m, images)
    x = to_tensor(images[:3])
    with torch.no_grad():
        t_feats = m.teacher_features(x)
        cfrg_map = (m.anomaly_map(x, m.heads(x, t_feats)) - m.memory.map_mean) / m.memory.map_std
        memory_map = m.blur(upsample(m.memory(t_feats), m.memory.stride))
        for fusion, weight, expected in (("sum", 2.0, cfrg_map + 2 * memory_map),
                                         ("max", 0.5, torch.maximum(cfrg_map, 0.5 * memory_map))):
            other = CFRG(CFRGConfig(image_size=(64, 128), memory_size=200, image_score="max", memory_fusion=fusion,
                                    memory_weight=weight)).eval()
            other.load_state_dict(m.state_dict())
            fused, score = other(x)
            assert torch.allclose(fused, expected, atol=1e-4)
            assert torch.allclose(score, fused.flatten(1).amax(1))


def test_memory_edges_pool_the_border_cells_as_named():
    """"inside" averages the cells inside the input only, "zeros" counts the zero padding (a border cell is dimmed
    by the share of its window outside the input), "mirror" pools over the mirrored features; the middle cells agree."""
    torch.manual_seed(0)
    feats = None
    embs = {}
    for edges in ("inside", "zeros", "mirror"):
        m = CFRG(CFRGConfig(image_size=(64, 128), memory_size=50, memory_pool=3, memory_stride=8,
                            memory_edges=edges)).eval()
        with torch.no_grad():
            feats = feats or m.teacher_features(torch.rand(1, 3, 64, 128))
            embs[edges] = m.memory.embed(feats)
    f8 = feats[1].float()  # the stride-8 layer: the first 40 channels, on the memory's own grid
    inside, zeros = embs["inside"][:, :40], embs["zeros"][:, :40]
    assert torch.allclose(zeros[..., 0, 0], inside[..., 0, 0] * 4 / 9, atol=1e-5)  # a corner: 4 of 9 cells inside
    assert torch.allclose(zeros[..., 1:-1, 1:-1], inside[..., 1:-1, 1:-1], atol=1e-5)
    mirror = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(f8, (1,) * 4, mode="reflect"), 3, 1)
    assert torch.allclose(embs["mirror"][:, :40], mirror, atol=1e-5)
    with pytest.raises(ValueError, match="memory_edges must be one of"):
        CFRG(CFRGConfig(image_size=(64, 64), memory_edges="wrap"), pretrained_teacher=False)


def test_bad_memory_options_are_rejected():
    with pytest.raises(ValueError, match="memory_size"):
        CFRG(CFRGConfig(image_size=(64, 64), memory_size=-1), pretrained_teacher=False)
    with pytest.raises(ValueError, match="image_score must be one of"):
        CFRG(CFRGConfig(image_size=(64, 64), image_score="mean"), pretrained_teacher=False)
    with pytest.raises(ValueError, match="score_temperature must be > 0"):
        CFRG(CFRGConfig(image_size=(64, 64), score_temperature=0.0), pretrained_teacher=False)
    with pytest.raises(ValueError, match="memory_stride"):
        CFRG(CFRGConfig(image_size=(64, 64), memory_stride=4), pretrained_teacher=False)
    for pool in (0, 4):
        with pytest.raises(ValueError, match="memory_pool must be an odd number"):
            CFRG(CFRGConfig(image_size=(64, 64), memory_pool=pool), pretrained_teacher=False)
    with pytest.raises(ValueError, match="memory_fusion must be one of"):
        CFRG(CFRGConfig(image_size=(64, 64), memory_fusion="mean"), pretrained_teacher=False)
    with pytest.raises(ValueError, match="memory_weight must be >= 0"):
        CFRG(CFRGConfig(image_size=(64, 64), memory_weight=-1.0), pretrained_teacher=False)


def test_memory_on_the_stride_8_grid():
    """memory_stride 8: the same search on a grid 4x as fine (f16 pooled, then upsampled)."""
    torch.manual_seed(0)
    m = CFRG(CFRGConfig(image_size=(64, 128), memory_size=50, memory_stride=8)).eval()
    with torch.no_grad():
        emb = m.memory.embed(m.teacher_features(torch.rand(1, 3, 64, 128)))
        amap, _ = m(torch.rand(2, 3, 64, 128))
    assert emb.shape == (1, 152, 8, 16) and amap.shape == (2, 1, 64, 128)


def test_configs_from_before_an_option_keep_the_behaviour_they_were_trained_with():
    """A checkpoint's config without the later options reads as the model it was: the paper's map, no
    patch memory, the map's max as score."""
    old = CFRGConfig.from_dict({"image_size": [64, 64], "teacher": "efficientnet_lite0"})
    assert (old.map_normalisation, old.memory_size, old.image_score) == ("none", 0, "max")
    assert not old.global_score
    combined = CFRGConfig.from_dict({"image_size": [64, 64], "memory_size": 100, "image_score": "combined"})
    assert not combined.global_score  # combined score from before its global branch
    assert CFRG(combined, pretrained_teacher=False).global_gaussian is None
    assert (old.memory_edges, old.memory_fusion, old.memory_weight) == ("inside", "max", 1.0)
    assert CFRGConfig.from_dict({"image_size": [64, 64], "memory_mirrored": True}).memory_edges == "mirror"
    new = CFRGConfig.from_dict(CFRGConfig().to_dict())
    assert (new.map_normalisation, new.memory_size, new.image_score) == ("sum", 10000, "combined")
    assert new.global_score


def test_folded_batchnorm_gives_the_trained_models_map_and_score_on_real_images(exported_model):
    """The inference copy cfrg eval runs: every BatchNorm folded away, same outputs, original untouched."""
    from export.predictor import fold_batchnorm
    from export.model import to_tensor
    from export.train_images import load_train_images
    from sdk.data import AnomalyDataset
    from tests.conftest import DEMO_ROOT

    model = exported_model[0]
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    folded = fold_batchnorm(model)
    assert n_bn > 50 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == n_bn
    test = AnomalyDataset(DEMO_ROOT, "ball_screw", "test")
    x = to_tensor(load_train_images(test, model.config.image_size, False, np.arange(6)))
    with torch.inference_mode():
        (map_a, score_a), (map_b, score_b) = model(x), folded(x)
    assert float(score_a.std()) > 0
    assert (map_a - map_b).abs().max() <= 1e-4 * map_a.abs().max()
    torch.testing.assert_close(score_b, score_a, rtol=1e-5, atol=1e-4)


def test_fold_batchnorm_only_folds_a_convolution_read_by_nothing_else():
    from export.predictor import fold_batchnorm

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_a, self.bn_a = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
            self.conv_b, self.bn_b = torch.nn.Conv2d(8, 8, 1), torch.nn.BatchNorm2d(8)  # conv_b also feeds a sum
            self.bn_c = torch.nn.BatchNorm2d(8)  # reads a ReLU

        def forward(self, x):
            a = self.bn_a(self.conv_a(x))
            b = self.conv_b(a)
            return self.bn_c(torch.relu(self.bn_b(b) + b))

    torch.manual_seed(0)
    net = Net()
    net.train()
    for _ in range(3):  # non-trivial running statistics
        net(torch.randn(4, 3, 16, 16) * 3 + 1)
    net.eval()
    folded = fold_batchnorm(net)
    assert isinstance(folded.bn_a, torch.nn.Identity)
    assert isinstance(folded.bn_b, torch.nn.BatchNorm2d) and isinstance(folded.bn_c, torch.nn.BatchNorm2d)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("teacher,options", [
    ("efficientnet_lite2", {}), ("wide_resnet50_2", {}),
    ("efficientnet_lite0", {"use_recovery": False, "use_segmentation": False, "memory_size": 0}),
    ("efficientnet_lite0", {"map_normalisation": "none", "memory_stride": 8, "recovery_code_stride": 16})])
def test_fold_batchnorm_traces_every_teacher_and_variant(teacher, options):
    """Random weights and BatchNorm statistics: proves the fx trace and the folding arithmetic for each
    architecture, not detection quality."""
    from export.predictor import fold_batchnorm

    torch.manual_seed(0)
    model = CFRG(CFRGConfig(image_size=(64, 96), teacher=teacher, **options), pretrained_teacher=False).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        (map_a, score_a), (map_b, score_b) = model(x), folded(x)
    assert (map_a - map_b).abs().max() <= 1e-4 * map_a.abs().max()
    torch.testing.assert_close(score_b, score_a, rtol=1e-4, atol=1e-4)


def test_fine_gaussian_is_the_high_passed_mahalanobis_distance_scaled_to_the_maps_good_peaks():
    """FineGaussian: the distance of each cell's pooled stride-4/8 features to the fitted mean, whitened by the
    Ledoit-Wolf covariance; the good images' high-passed map has mean 0 after the offset, and its mean peak above
    that is `weight` times the pixel map's."""
    from export.gaussians import FineGaussian, ledoit_wolf
    from export.blocks import upsample
    g = torch.Generator().manual_seed(0)
    fine = FineGaussian([3, 2, 4], [4, 8, 16], sigma=2.0)
    feats = [torch.randn(6, 3, 16, 16, generator=g), torch.randn(6, 2, 8, 8, generator=g) * 3,
             torch.randn(6, 4, 4, 4, generator=g)]
    f = fine.features(feats)
    assert f.shape == (6, 5, 16, 16)
    rows = f.permute(0, 2, 3, 1).reshape(-1, 5)
    fine.fit(rows)
    cov = ledoit_wolf(rows)[0] + 1e-6 * torch.eye(5, dtype=torch.float64)
    centred = (f - rows.double().mean(0).float().view(1, 5, 1, 1)).double()
    d = torch.einsum("nihw,ij,njhw->nhw", centred, torch.linalg.inv(cov), centred).sqrt().unsqueeze(1)
    smoothed = fine.blur(upsample(d.float(), 4))
    local_mean = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(smoothed, (15,) * 4, mode="replicate"), 31, 1)
    torch.testing.assert_close(fine.distance_map(feats), smoothed - local_mean, rtol=1e-4, atol=1e-4)
    good = fine.distance_map(feats)
    pixel_maps = torch.rand(6, 1, 64, 64, generator=g) * 5
    fine.fit_scale(0.5, good, pixel_maps, images=6)
    added = fine(feats).double()
    assert abs(float(added.mean())) < 1e-5

    def peak(m):
        return float(m.double().flatten(1).amax(1).mean() - m.double().mean())

    assert peak(added) == pytest.approx(0.5 * peak(pixel_maps), rel=1e-4)
    with pytest.raises(ValueError, match="fine_weight must be >= 0"):
        CFRG(CFRGConfig(image_size=(64, 64), fine_weight=-1.0), pretrained_teacher=False)
    assert CFRG(CFRGConfig(image_size=(64, 64)), pretrained_teacher=False).fine is None  # the default: none


def test_fine_gaussian_spread_is_one_for_a_gaussian_cloud_and_grows_with_heavy_tails():
    """FineGaussian.spread: the squared distances' coefficient of variation in units of a Gaussian's sqrt(2 / D);
    fine_weight "auto" is 1 - spread / FINE_SPREAD_LIMIT, 0 from the limit on."""
    from export.config import FINE_SPREAD_LIMIT
    from export.gaussians import FineGaussian, auto_fine_weight
    g = torch.Generator().manual_seed(0)
    fine = FineGaussian([3, 2, 4], [4, 8, 16], sigma=2.0)
    mixing = torch.randn(5, 5, generator=g) + 3 * torch.eye(5)
    gaussian = torch.randn(50_000, 5, generator=g) @ mixing
    fine.fit(gaussian)
    assert fine.spread(gaussian) == pytest.approx(1.0, abs=0.03)
    heavy = gaussian * torch.exp(torch.randn(50_000, 1, generator=g))  # one scale per row: a heavy-tailed cloud
    fine.fit(heavy)
    assert fine.spread(heavy) > 2.5
    assert auto_fine_weight(0.0) == 1.0
    assert auto_fine_weight(FINE_SPREAD_LIMIT / 2) == 0.5
    assert auto_fine_weight(FINE_SPREAD_LIMIT) == auto_fine_weight(2 * FINE_SPREAD_LIMIT) == 0.0

"""Training on real images: the loss falls, checkpoints load, resume continues, the CLI works."""
import json

import numpy as np
import pytest
import torch

from export.checkpoint import load_checkpoint
from export.train import TrainArgs, train
from export.batches import cfrg_losses
from tests.conftest import DEMO_ROOT


def tiny_args(tmp_path, **kw):
    base = dict(data=str(DEMO_ROOT), category="ball_screw", scale="whole", out=str(tmp_path / "run"), image_size=(64, 128),
                steps=6, time_budget=0, batch_size=4, progress=False, final_eval=True, seed=0)
    base.update(kw)
    return TrainArgs(**base)


def test_loss_falls_on_real_images():
    """A fixed synthetic batch of real ball_screw images: 25 steps lower every loss term."""
    from export.model import CFRG, CFRGConfig
    from sdk.synthesis import DefectSynthesizer
    from export.model import to_tensor
    from export.train_images import load_train_images
    from export.fitting import teacher_cache
    from sdk.data import AnomalyDataset

    torch.manual_seed(0)
    ds = AnomalyDataset(DEMO_ROOT, "ball_screw", "train")
    model = CFRG(CFRGConfig(image_size=(64, 128))).train()
    images = load_train_images(ds, (64, 128), progress=False)[:6]
    cache = teacher_cache(model, images)
    synth = DefectSynthesizer(donor_images=list(images))
    rng = np.random.default_rng(0)
    xs, masks = [], []
    for img in images:
        a, m, _ = synth(img, rng)
        xs.append(a)
        masks.append(m)
    x = to_tensor(np.stack(xs))
    mask = torch.from_numpy(np.stack(masks)[:, None])
    t_clean = [c.float() for c in cache]
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=2e-3)
    first = None
    for _ in range(25):
        losses = cfrg_losses(model, x, t_clean, mask)
        first = first or {k: v.item() for k, v in losses.items()}
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
    last = {k: v.item() for k, v in cfrg_losses(model, x, t_clean, mask).items()}
    for k in ("student", "recovery", "seg", "total"):
        assert last[k] < first[k], (k, first[k], last[k])
    assert last["total"] < 0.8 * first["total"]


def _demo_batch(n=6, flip=False):
    """A CFRG, its clean-feature cache and one BatchMaker batch of real ball_screw images."""
    from export.model import CFRG, CFRGConfig
    from sdk.synthesis import DefectSynthesizer
    from export.batches import BatchMaker
    from export.train_images import load_train_images
    from export.fitting import teacher_cache
    from sdk.data import AnomalyDataset

    torch.manual_seed(0)
    model = CFRG(CFRGConfig(image_size=(64, 128))).train()
    images = load_train_images(AnomalyDataset(DEMO_ROOT, "ball_screw", "train"), (64, 128), progress=False)[:n]
    maker = BatchMaker(images, DefectSynthesizer(donor_images=list(images)), 8, 0.5, seed=3, flip=flip)
    try:
        batch = maker.make(0)
    finally:
        maker.close()
    return model, images, teacher_cache(model, images), batch


def test_training_reuses_cached_features_where_no_defect_was_drawn():
    """The training loop runs the BatchNorm-folded teacher only on images with a synthetic defect and takes the
    cached clean features for the rest: the losses match running model.teacher on the whole batch."""
    from export.predictor import fold_batchnorm
    from export.batches import step_inputs

    model, images, cache, (idx, xs, masks, flips) = _demo_batch()
    has_defect = torch.from_numpy(masks).flatten(1).amax(1) > 0
    assert 0 < int(has_defect.sum()) < len(idx) and not flips.any()
    x, t_clean, mask, t_in = step_inputs(fold_batchnorm(model.teacher), model, images, cache, idx, xs, masks, flips)
    reference = model.teacher_features(x)
    for got, want, clean, cached in zip(t_in, reference, t_clean, cache):
        assert torch.equal(clean, cached[torch.from_numpy(idx)].float())
        assert torch.allclose(got[has_defect], want[has_defect], atol=1e-4)
        assert torch.equal(got[~has_defect], clean[~has_defect])
        assert torch.allclose(got, want, atol=2e-2 * float(want.abs().max()))  # the cache is float16
    fast, slow = cfrg_losses(model, x, t_clean, mask, t_in), cfrg_losses(model, x, t_clean, mask)
    for k in slow:
        assert abs(fast[k].item() - slow[k].item()) < 1e-3 * abs(slow[k].item()) + 1e-5, k


def test_flip_augmentation_flips_images_and_their_clean_features():
    """--augment flip: BatchMaker flips three in four images before drawing a defect, and the clean targets of
    a flipped image are the teacher's features of the flipped clean image, not the cached unflipped ones."""
    from export.model import to_tensor
    from export.batches import flip_image, step_inputs

    model, images, cache, (idx, xs, masks, flips) = _demo_batch(flip=True)
    assert flips.any() and not flips.all() and set(flips.tolist()) <= {0, 1, 2, 3}
    for j, (i, code) in enumerate(zip(idx, flips)):
        untouched = masks[j, 0] == 0  # pixels outside the defect are the flipped clean image's
        assert np.array_equal(xs[j][untouched], flip_image(images[i], code)[untouched])
    assert np.array_equal(flip_image(images[0], 3), images[0][::-1, ::-1])
    x, t_clean, mask, t_in = step_inputs(model.teacher, model, images, cache, idx, xs, masks, flips)
    want_clean = model.teacher_features(to_tensor(np.stack([flip_image(images[i], f) for i, f in zip(idx, flips)])))
    for got, want in zip(t_clean, want_clean):
        assert torch.allclose(got, want, atol=2e-2 * float(want.abs().max()))
        assert torch.allclose(got[torch.from_numpy(flips != 0)], want[torch.from_numpy(flips != 0)], atol=1e-4)
    for got, want in zip(t_in, model.teacher_features(x)):
        assert torch.allclose(got, want, atol=2e-2 * float(want.abs().max()))
    assert torch.equal(mask, torch.from_numpy(masks))


def test_resume_refuses_another_augmentation(tmp_path):
    train(tiny_args(tmp_path, steps=2, final_eval=False))
    with pytest.raises(ValueError, match="augment: none then, flip now"):
        train(tiny_args(tmp_path, steps=4, final_eval=False, resume=True, augment="flip"))


def test_train_with_flips_writes_a_checkpoint(tmp_path):
    cfg = train(tiny_args(tmp_path, augment="flip", final_eval=False))
    assert cfg["summary"]["steps"] == 6 and cfg["train"]["augment"] == "flip"


def test_train_writes_checkpoint_config_and_metrics(tmp_path):
    cfg = train(tiny_args(tmp_path))
    out = tmp_path / "run"
    model, extra = load_checkpoint(out / "model.pt")
    assert extra["train"]["steps"] == 6
    n_train = cfg["n_train_images"]
    assert model.config.map_normalisation == "sum" and extra["train"]["map_stats_images"] == 0  # nothing to measure
    assert extra["train"]["memory_images"] == n_train == int(model.memory.images)
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["image_size"] == [64, 128]
    assert len(saved["data_fingerprint"]) == 64
    metrics = json.loads((out / "metrics.json").read_text())
    for k in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap"):
        assert 0.0 <= metrics[k] <= 1.0
    assert set(metrics["per_defect"]) == {"pitting"}
    assert cfg["metrics"]["image_auroc"] == metrics["image_auroc"]
    with torch.no_grad():
        amap, score = model(torch.rand(2, 3, 64, 128))
    assert amap.shape == (2, 1, 64, 128) and torch.isfinite(score).all()


def test_resume_continues_from_last_step(tmp_path):
    train(tiny_args(tmp_path, steps=3, final_eval=False))
    cfg = train(tiny_args(tmp_path, steps=5, final_eval=False, resume=True))
    assert cfg["summary"]["steps"] == 5


def test_ema_saves_the_weight_average_and_a_resumed_run_continues_it(tmp_path):
    """--ema: model.pt holds the moving average of the weights (BatchNorm statistics too), not the last weights;
    last.pt keeps both, and a resumed run continues the saved average (its update count goes on)."""
    run = tmp_path / "run"
    train(tiny_args(tmp_path, steps=3, final_eval=False, ema=0.5))
    first = torch.load(run / "last.pt", weights_only=True)["average"]
    with pytest.raises(ValueError, match="ema: 0.5 then, 0.0 now"):
        train(tiny_args(tmp_path, steps=5, final_eval=False, resume=True))
    train(tiny_args(tmp_path, steps=5, final_eval=False, ema=0.5, resume=True))
    state = torch.load(run / "last.pt", weights_only=True)
    saved, _ = load_checkpoint(run / "model.pt")
    average = state["average"]
    assert first["updates"] == 3 and average["updates"] == 5
    assert "student.stem.0.1.running_mean" in average["tensors"]
    for name, value in average["tensors"].items():
        assert torch.equal(saved.state_dict()[name], value), name
    name = "student.stem.0.0.weight"
    assert not torch.allclose(average["tensors"][name], state["model"][name])  # the average, not the last step
    assert not torch.allclose(average["tensors"][name], first["tensors"][name])  # and it moved on


def test_weight_average_swaps_in_and_back_out():
    """The periodic evaluation of an --ema run swaps the average in and back out: training goes on from its own
    weights."""
    from export.model import CFRG, CFRGConfig
    from export.train import WeightAverage

    model = CFRG(CFRGConfig(image_size=(64, 64)), pretrained_teacher=False)
    average = WeightAverage(model, 0.9)
    weight = model.student.stem[0][0].weight
    before = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)
    average.update()  # decay min(0.9, 2 / 11): the average moves 9/11 of the way
    assert torch.allclose(average.average[average.names.index("student.stem.0.0.weight")], before + 9 / 11)
    average.swap()
    assert torch.allclose(weight, before + 9 / 11)
    average.swap()
    assert torch.equal(weight, before + 1.0)
    assert not any(n.startswith("teacher.") for n in average.names)


def test_resume_without_previous_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="without --resume"):
        train(tiny_args(tmp_path, resume=True))


def test_cli_train_and_eval(tmp_path, capsys):
    from sdk.cli import main

    out = tmp_path / "cli"
    assert main(["train", "--data", str(DEMO_ROOT), "--category", "ball_screw", "--out", str(out), "--scale", "whole",
                 "--image-size", "64x128", "--steps", "2", "--time-budget", "0", "--batch-size", "2",
                 "--no-progress"]) == 0
    js = tmp_path / "m.json"
    maps = tmp_path / "maps"
    assert main(["eval", "--model", str(out / "model.pt"), "--data", str(DEMO_ROOT), "--category", "ball_screw",
                 "--json", str(js), "--save-maps", str(maps), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "pitting" in text and "overall" in text
    result = json.loads(js.read_text())
    assert {"image_auroc", "pixel_auroc", "aupro", "pixel_ap", "per_defect"} <= set(result)
    assert len(list(maps.glob("*.png"))) == 32


def test_eval_with_another_map_fusion_rebuilds_the_statistics_and_memory(tmp_path):
    """The same weights under the per-position map, then the paper's map without memory, and back: the map
    statistics and the patch memory rebuilt from the run's own good images are the same each time (the bank
    does not depend on the map; its z-score statistics do)."""
    from export.checkpoint import load_model
    from export.fitting import with_map_fusion
    from sdk.cli import main

    train(tiny_args(tmp_path, steps=2, final_eval=False, fine_weight=0.0))  # the map fusion alone (score = map max)
    run = tmp_path / "run"
    trained = load_model(run / "model.pt")
    assert trained.memory is not None and int(trained.memory.images) > 0
    position = with_map_fusion(trained, run, "position", progress=False)
    assert int(position.map_stats_images) > 0 and not torch.equal(position.memory.map_std, trained.memory.map_std)
    assert torch.equal(position.memory.bank, trained.memory.bank)
    no_memory = with_map_fusion(position, run, memory_size=0, progress=False)
    assert no_memory.memory is None and torch.equal(no_memory.map_std1, position.map_std1)  # carried over
    with pytest.raises(ValueError, match="memory_pool apply to a patch memory and this model has none"):
        with_map_fusion(no_memory, run, memory_pool=5, progress=False)  # not silently ignored
    paper = with_map_fusion(trained, run, "none", 0, progress=False)
    assert paper.config.map_normalisation == "none" and not hasattr(paper, "map_mean0") and paper.memory is None
    again = with_map_fusion(paper, run, "position", trained.config.memory_size, progress=False)
    for k in range(3):
        assert torch.allclose(getattr(again, f"map_mean{k}"), getattr(position, f"map_mean{k}"), atol=1e-5)
        assert torch.allclose(getattr(again, f"map_std{k}"), getattr(position, f"map_std{k}"), atol=1e-5)
    for name, value in position.memory.state_dict().items():
        assert torch.allclose(getattr(again.memory, name), value, rtol=1e-4, atol=1e-4), name
    peak = with_map_fusion(trained, run, image_score="max", progress=False)
    assert peak.config.image_score == "max" and not hasattr(peak.memory, "score_mean")
    assert torch.equal(peak.memory.bank, trained.memory.bank)
    x = torch.rand(2, 3, *trained.config.image_size)
    with torch.no_grad():
        fused, score = peak(x)
        assert torch.allclose(score, fused.flatten(1).amax(1))
        assert torch.allclose(trained(x)[0], fused, atol=1e-5)  # the map is the same, only the score differs
    assert trained.config.memory_pool == 3  # auto: 9 cells of a 256-pixel short side, 3 of this 64-pixel one
    assert with_map_fusion(trained, run, memory_pool="auto", progress=False) is trained  # auto is what it has
    wide = with_map_fusion(position, run, memory_pool=trained.config.memory_pool + 2, progress=False)
    assert wide.memory.pool == wide.config.memory_pool == trained.config.memory_pool + 2
    assert with_map_fusion(wide, run, memory_pool="auto", progress=False).memory.pool == 3
    assert not torch.equal(wide.memory.bank, trained.memory.bank)  # rebuilt from the wider neighbourhoods
    assert torch.equal(wide.map_std1, position.map_std1)  # the CFRG map is untouched
    assert trained.config.global_score and int(trained.global_gaussian.images) > 0
    assert peak.global_gaussian is None  # a branch of the combined score only
    two = with_map_fusion(trained, run, global_score=False, progress=False)
    assert two.global_gaussian is None and not two.config.global_score
    back = with_map_fusion(two, run, global_score=True, progress=False)
    for name, value in trained.global_gaussian.state_dict().items():
        assert torch.allclose(getattr(back.global_gaussian, name), value, rtol=1e-4, atol=1e-4), name
    with torch.no_grad():
        t_feats = trained.teacher_features(x)
        assert torch.allclose(trained(x)[1], two(x)[1] + trained.global_gaussian(t_feats), atol=1e-4)
    with pytest.raises(ValueError, match="global_score is a branch of the combined image score"):
        with_map_fusion(two, run, image_score="max", global_score=True, progress=False)
    js = tmp_path / "paper.json"
    assert main(["eval", "--model", str(run / "model.pt"), "--data", str(DEMO_ROOT), "--category", "ball_screw",
                 "--map-normalisation", "none", "--memory-size", "0", "--json", str(js), "--no-progress"]) == 0
    assert 0.0 <= json.loads(js.read_text())["pixel_auroc"] <= 1.0
    js_pool = tmp_path / "pool5.json"
    assert main(["eval", "--model", str(run / "model.pt"), "--data", str(DEMO_ROOT), "--category", "ball_screw",
                 "--memory-pool", "5", "--json", str(js_pool), "--no-progress"]) == 0
    assert 0.0 <= json.loads(js_pool.read_text())["pixel_auroc"] <= 1.0
    runs = {}
    for name, flags in (("as_trained", []), ("auto", ["--memory-pool", "auto"])):
        assert main(["eval", "--model", str(run / "model.pt"), "--data", str(DEMO_ROOT), "--category", "ball_screw",
                     *flags, "--json", str(tmp_path / f"{name}.json"), "--no-progress"]) == 0
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert runs["auto"]["pixel_auroc"] == runs["as_trained"]["pixel_auroc"]  # auto is the pool it was trained with
    js_two = tmp_path / "two.json"
    assert main(["eval", "--model", str(run / "model.pt"), "--data", str(DEMO_ROOT), "--category", "ball_screw",
                 "--no-global-score", "--json", str(js_two), "--no-progress"]) == 0
    assert 0.0 <= json.loads(js_two.read_text())["image_auroc"] <= 1.0
    assert main(["eval", "--model", str(run / "model.pt"), "--data", str(DEMO_ROOT), "--category", "ball_screw",
                 "--memory-size", "0", "--memory-pool", "5", "--no-progress"]) == 2  # no memory to pool
    for bad in (["--memory-size", "-5"], ["--memory-pool", "4"], ["--memory-pool", "0"], ["--memory-pool", "wide"]):
        with pytest.raises(SystemExit):
            main(["eval", "--model", str(run / "model.pt"), "--data", str(DEMO_ROOT), "--category", "ball_screw",
                  *bad])


def test_cli_rejects_bad_image_size():
    from sdk.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--data", "x", "--category", "y", "--out", "z", "--image-size", "250"])


def test_train_cli_memory_options_reach_the_model_config():
    """cfrg train's defaults are the recipe's (CFRGConfig; the memory pool auto, which is the recipe's at 256x256);
    --memory-pool gets to TrainArgs."""
    from export.config import CFRGConfig
    from export.options import train_args_from
    from sdk.cli import build_parser

    parser = build_parser()
    base = ["train", "--data", "d", "--category", "c", "--out", "o"]
    ns = parser.parse_args(base)
    args = train_args_from(ns)
    defaults = CFRGConfig()
    assert args.memory_pool == "auto" and args.model_config((256, 256), 0).memory_pool == defaults.memory_pool
    assert (args.memory_size, args.image_score, args.global_score) == (
        defaults.memory_size, defaults.image_score, defaults.global_score)
    ns = parser.parse_args(base + ["--memory-pool", "5", "--no-global-score"])
    assert train_args_from(ns).memory_pool == 5
    assert not train_args_from(ns).global_score


def test_image_size_auto_takes_the_training_images_aspect_ratio(tmp_path):
    cfg = train(tiny_args(tmp_path, image_size="auto", steps=2, final_eval=False))
    model, _ = load_checkpoint(tmp_path / "run" / "model.pt")
    assert model.config.image_size == (160, 416)  # ball_screw's 1130x460 images
    assert model.config.memory_pool == model.memory.pool == 5  # auto: in proportion to the 160-pixel short side
    assert cfg["model"]["image_size"] == [160, 416] and cfg["train"]["image_size"] == "auto"


def test_resume_from_a_last_pt_written_before_the_fine_branch_continues(tmp_path):
    """A last.pt whose run record predates `fine_weight` resumes as the default (no fine branch), and a different
    weight is refused as another run."""
    train(tiny_args(tmp_path, steps=2, final_eval=False))
    last = tmp_path / "run" / "last.pt"
    state = torch.load(last, weights_only=True)
    record = json.loads(state["run"])
    assert record.pop("model.fine_weight") == 0.0
    state["run"] = json.dumps(record)
    torch.save(state, last)
    cfg = train(tiny_args(tmp_path, steps=3, final_eval=False, resume=True))
    assert cfg["summary"]["steps"] == 3
    with pytest.raises(ValueError, match="model.fine_weight: 0.0 then, 0.5 now"):
        train(tiny_args(tmp_path, steps=4, final_eval=False, resume=True, fine_weight=0.5))

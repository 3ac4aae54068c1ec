"""benchmarks/quality.py's decisions: the peer bar (compare) and the leave-one-set-out rule (loso), on
eval JSON files written the way `cfrg eval --json` writes them."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import quality  # noqa: E402


def write(runs: Path, tag: str, table: dict[str, list[float]]) -> None:
    for name, values in table.items():
        (runs / name).mkdir(parents=True, exist_ok=True)
        result = dict(zip(("image_auroc", "pixel_auroc", "aupro", "pixel_ap"), (v / 100 for v in values)))
        (runs / name / f"eval_{tag}.json").write_text(json.dumps(result))


def test_compare_applies_the_bar_per_set_and_on_the_mean(tmp_path):
    ours, a, b = tmp_path / "ours", tmp_path / "patchcore", tmp_path / "padim"
    write(ours, "default", {"x": [90.5, 98, 90, 50], "y": [99, 97, 80, 40]})
    write(a, "default", {"x": [91.0, 97, 85, 45], "y": [99, 98, 70, 30]})  # x: I-AUROC within 1 point
    write(b, "default", {"x": [80, 96, 91, 20], "y": [90, 90, 60, 10]})  # x: PaDiM's AUPRO is higher
    text = quality.compare([ours], "default", [[a], [b]])
    rows = {line.split(" | ")[0].strip("| *"): line for line in text.splitlines()[2:]}
    assert rows["x"].endswith("no: AUPRO |") and "91.0 (padim)" in rows["x"]
    assert rows["y"].endswith("no: P-AUROC |")
    assert rows["mean"].endswith("no: I-AUROC, P-AUROC |")  # 94.75 against 95.0; 97.5 against 97.5 is not ahead


def test_compare_takes_each_group_of_seed_runs_on_its_mean_over_the_sets_every_run_has(tmp_path):
    ours0, ours1, pad0, pad1 = (tmp_path / n for n in ("ours0", "ours1", "s0/padim", "s1/padim"))
    write(ours0, "default", {"x": [100, 99.2, 89.0, 78], "y": [99, 97, 80, 40]})
    write(ours1, "default", {"x": [100, 99.4, 92.0, 80]})  # y has one seed only: left out
    write(pad0, "default", {"x": [100, 99.3, 91.0, 75], "y": [99, 98, 70, 30]})
    write(pad1, "default", {"x": [100, 99.1, 90.0, 74], "y": [99, 98, 70, 30]})
    single = quality.compare([ours0], "default", [[pad0]])
    assert "| x | 100.0 / 99.2 / 89.0 / 78.0 |" in single and "no: P-AUROC, AUPRO |" in single
    text = quality.compare([ours0, ours1], "default", [[pad0, pad1]])
    rows = {line.split(" | ")[0].strip("| *"): line for line in text.splitlines()[2:]}
    assert set(rows) == {"x", "mean"} and "means over 2 and 2 runs" in text.splitlines()[0]
    assert rows["x"].startswith("| x | 100.0 / 99.3 / 90.5 / 79.0 | 100.0 (padim) / 99.2 (padim) / 90.5 (padim)")
    assert rows["x"].endswith("| yes |")  # AUPRO 90.5 against 90.5: at least equal


def test_loso_takes_a_candidate_when_the_mean_gains_and_the_worst_gains_or_no_set_loses(tmp_path):
    runs = tmp_path / "runs"
    base = {"a": [90] * 4, "b": [80] * 4, "c": [60] * 4}
    write(runs, "base", base)
    write(runs, "lifts_worst", {"a": [88] * 4, "b": [80] * 4, "c": [70] * 4})  # mean and worst up on all three
    write(runs, "mean_only", {"a": [99] * 4, "b": [80] * 4, "c": [59] * 4})  # mean up, worst down (c)
    text = quality.leave_one_out(runs, "base", ["lifts_worst", "mean_only"])
    assert text.splitlines()[0] == "all 3 sets choose: lifts_worst"
    rows = {line.split(" | ")[0].strip("| *"): [c.strip("| *") for c in line.split(" | ")]
            for line in text.splitlines()[4:]}
    assert rows["a"][1:] == ["lifts_worst", "88.0", "90.0"]  # b and c choose it; it costs a
    assert rows["b"][1:] == ["lifts_worst", "80.0", "80.0"]
    # a and b: lifts_worst's mean falls; mean_only lifts a and costs b nothing, so they take it, and it costs c
    assert rows["c"][1:] == ["mean_only", "59.0", "60.0"]
    assert rows["mean over the sets left out"][-2:] == ["75.67", "76.67"]


def test_loso_takes_a_choice_that_lifts_some_sets_and_costs_none(tmp_path):
    runs = tmp_path / "runs"
    write(runs, "base", {"a": [90] * 4, "b": [80] * 4, "c": [60] * 4})
    write(runs, "lifts_two", {"a": [92] * 4, "b": [81] * 4, "c": [60] * 4})  # the worst set (c) unchanged
    write(runs, "costs_one", {"a": [95] * 4, "b": [79.9] * 4, "c": [60] * 4})  # b loses a little, worst unchanged
    text = quality.leave_one_out(runs, "base", ["lifts_two", "costs_one"])
    assert text.splitlines()[0] == "all 3 sets choose: lifts_two"
    rows = {line.split(" | ")[0].strip("| *"): line.split(" | ")[1] for line in text.splitlines()[4:]}
    assert [rows[s] for s in "abc"] == ["lifts_two", "costs_one", "lifts_two"]


def test_loso_reads_a_set_scored_again_with_float_noise_as_unchanged(tmp_path):
    """A candidate that rebuilds nothing on some sets scores them again a hair apart (1e-6 points): no loss."""
    runs = tmp_path / "runs"
    write(runs, "base", {"a": [90] * 4, "b": [80] * 4, "c": [60] * 4})
    write(runs, "lifts_a", {"a": [91] * 4, "b": [80 - 1e-6] * 4, "c": [60 - 1e-6] * 4})
    write(runs, "costs_c", {"a": [93] * 4, "b": [80] * 4, "c": [59.98] * 4})  # 0.02 down on the worst set
    text = quality.leave_one_out(runs, "base", ["lifts_a", "costs_c"])
    assert text.splitlines()[0] == "all 3 sets choose: lifts_a"


def test_map_variants_plain_weights_scale_each_discrepancy():
    """map_variants' `sw=` / `kw=` weights: zero drops a scale or kind, and the weights multiply what they name."""
    import torch
    import map_variants
    g = torch.Generator().manual_seed(0)
    part = {f"{kind}{k}": torch.rand(2, 1, 32 // s, 32 // s, generator=g)
            for kind in ("ds", "dr") for k, s in enumerate((4, 8, 16))}
    part["seg"] = torch.randn(2, 1, 8, 8, generator=g)
    v = map_variants.Variants.__new__(map_variants.Variants)
    v.c, v.strides, v.n_scales = {"sigma": 2.0, "seg_sigma": 0.0}, [4, 8, 16], 3
    both = ("ds", "dr")
    base = v.plain(part, both, seg=0.0)
    assert torch.allclose(v.plain(part, both, 0.0, [2, 2, 2]), 2 * base, atol=1e-5)
    assert torch.allclose(v.plain(part, both, 0.0, kind_weights=[3, 3]), 3 * base, atol=1e-5)
    finest_student = v.plain(part, both, 0.0, [1, 0, 0], [1, 0])
    assert torch.allclose(finest_student, map_variants.blur(map_variants.up(part["ds0"], 4), 2.0), atol=1e-6)
    assert torch.allclose(finest_student, v.plain(part, ("ds",), 0.0, [1, 0, 0]), atol=1e-6)
    assert not torch.allclose(finest_student, v.plain(part, ("ds",), 0.0), atol=1e-3)
    rooted = {k: t.sqrt() if k != "seg" else t for k, t in part.items()}  # pow=0.5 is the sum of the roots
    assert torch.allclose(v.plain(part, both, 0.0, power=0.5), v.plain(rooted, both, 0.0), atol=1e-6)


def test_map_variants_align_moves_each_scale_down_and_right_by_its_teacher_offset():
    """`align=A+B+C` moves each upsampled stride-s discrepancy A * (s - 1) / 2 pixels down and right (negative:
    up and left), linearly between whole pixels, the edge repeated; `alignkinds=` limits it to one kind."""
    import torch
    import map_variants
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 3, 4] = 1.0
    moved = map_variants.shift_down_right(x, 1.5)
    assert moved[0, 0, 4, 5] == 0.25 and moved[0, 0, 5, 6] == 0.25 and moved[0, 0, 4, 6] == 0.25
    back = map_variants.shift_down_right(x, -1.5)  # to (1.5, 2.5): rows 1-2, columns 2-3
    assert moved.sum() == 1.0 and back.sum() == 1.0 and (back[0, 0, 1:3, 2:4] == 0.25).all()
    assert torch.equal(map_variants.shift_down_right(torch.arange(4.).reshape(1, 1, 2, 2), 1)[0, 0],
                       torch.tensor([[0., 0.], [0., 0.]]))  # the top-left pixel repeated
    g = torch.Generator().manual_seed(0)
    part = {f"{kind}{k}": torch.rand(1, 1, 64 // s, 64 // s, generator=g)
            for kind in ("ds", "dr") for k, s in enumerate((4, 8, 16))}
    v = map_variants.Variants.__new__(map_variants.Variants)
    v.c, v.strides, v.n_scales = {"sigma": 2.0, "seg_sigma": 0.0}, [4, 8, 16], 3
    v.align, v.align_kinds = [1.0, 0.0, 0.0], ("dr",)
    expected = map_variants.shift_down_right(map_variants.up(part["dr0"], 4), 1.5) + map_variants.up(part["ds0"], 4)
    expected = expected + sum(map_variants.up(part[f"{kind}{k}"], s) for kind in ("ds", "dr") for k, s in ((1, 8), (2, 16)))
    assert torch.allclose(v.plain(part, ("ds", "dr"), 0.0), map_variants.blur(expected, 2.0), atol=1e-5)
    v.align = [1.0, 0.0]
    with pytest.raises(ValueError, match="one value or one per scale"):
        v.plain(part, ("ds", "dr"), 0.0)


def test_bench_train_step_times_both_loops_on_real_images(tmp_path):
    """benchmarks/bench_train_step.py runs both training loops on the built-in ball_screw subset and prints
    each one's seconds per step and their ratio (a run, not a speed claim: the figures are in docs/results.md)."""
    import re
    import subprocess

    from tests.conftest import DEMO_ROOT

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train_step.py"), "--data", str(DEMO_ROOT),
                          "--category", "ball_screw", "--steps", "2", "--augment", "flip"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr
    assert list(tmp_path.iterdir()) == []  # it writes nothing
    per_step = [float(x) for x in re.findall(r"([0-9.]+) s per step", out.stdout)]
    assert len(per_step) == 2 and all(t > 0 for t in per_step)
    assert re.search(r"now / before: [0-9.]+x", out.stdout)


def test_region_coverage_finds_the_halo_around_a_defect():
    """benchmarks/region_coverage.py: a map that covers a 4x4 defect and glows in a ring around it: the region is
    covered at every FPR, and at 1 % the false positives are the ring (within 5 px of the defect)."""
    import numpy as np
    import region_coverage

    rng = np.random.default_rng(0)
    masks = [np.zeros(shape, np.uint8) for shape in ((24, 40), (32, 32))]  # frames of two shapes
    masks[1][14:18, 14:18] = 1
    maps = [rng.uniform(0, 0.1, m.shape).astype(np.float32) for m in masks]
    maps[1][12:20, 12:20] = rng.uniform(0.5, 0.6, (8, 8))  # the halo: 48 good pixels, 2.4 % of them
    maps[1][14:18, 14:18] = 1.0
    text = region_coverage.coverage_report(masks, maps, np.array([0, 1]))
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines()[4:]}
    assert text.startswith("1 defect regions") and "[0, 25) 1" in text
    assert rows["1 %"][1] == "1.000" and rows["1 %"][3].startswith("0.00 / 1.00")
    assert rows["30 %"][1] == "1.000" and float(rows["30 %"][3].split(" / ")[0]) > 0.4  # then good images too


def test_map_variants_fine_gaussian_is_the_mahalanobis_distance_to_good_features():
    """`fine=`'s Gaussian: one mean and Ledoit-Wolf covariance of good feature rows; each cell's distance is
    sqrt((f - mean)^T cov^-1 (f - mean)), so a cell far from the good rows along a low-variance axis scores high
    and the good mean scores 0."""
    import torch
    import map_variants
    from export.gaussians import ledoit_wolf
    g = torch.Generator().manual_seed(0)
    mix = torch.tensor([[3.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, 0.0, 0.2]])
    rows = torch.randn(4000, 3, generator=g) @ mix + torch.tensor([1.0, -2.0, 0.5])
    gaussian = map_variants.FineGaussian(rows)
    cov = ledoit_wolf(rows)[0] + 1e-6 * torch.eye(3, dtype=torch.float64)
    cells = torch.randn(2, 3, 4, 5, generator=g) * 2
    expected = torch.einsum("nihw,ij,njhw->nhw", (cells - gaussian.mean.view(1, 3, 1, 1)).double(),
                            torch.linalg.inv(cov), (cells - gaussian.mean.view(1, 3, 1, 1)).double()).sqrt()
    assert torch.allclose(gaussian.distance(cells)[:, 0].double(), expected, rtol=1e-4)
    centre, low_var, high_var = ((gaussian.mean + torch.tensor(d)).view(1, 3, 1, 1)
                                 for d in ([0.0, 0, 0], [0, 0, 1.0], [1.0, 0, 0]))
    assert float(gaussian.distance(centre)) < 1e-3
    assert float(gaussian.distance(low_var)) > 10 * float(gaussian.distance(high_var))


def test_map_variants_fine_features_resample_to_the_finest_grid_and_high_pass_keeps_spots():
    """The fine features are the named teacher scales on the finest one's grid (channels concatenated), pooled;
    the high pass takes a flat map to 0 and keeps a spot's peak."""
    import numpy as np
    import torch
    import map_variants
    from export.config import CFRGConfig
    from export.model import CFRG
    model = CFRG(CFRGConfig(image_size=(64, 64)), pretrained_teacher=False).eval()
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    batches = list(map_variants.fine_features(model, images, (0, 1), 3, batch=2))
    t = model.teacher_features(map_variants.to_tensor(images[:2]))
    channels = t[0].shape[1] + t[1].shape[1]
    assert [tuple(b.shape) for b in batches] == [(2, channels, 16, 16), (1, channels, 16, 16)]
    unpooled = next(map_variants.fine_features(model, images, (0, 1), 1, batch=2))
    assert torch.allclose(unpooled[:, :t[0].shape[1]], t[0].float(), atol=1e-5)
    resampled = torch.nn.functional.interpolate(t[1].float(), size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(unpooled[:, t[0].shape[1]:], resampled, atol=1e-5)
    pooled = torch.nn.functional.avg_pool2d(unpooled, 3, 1, 1, count_include_pad=False)
    assert torch.allclose(batches[0], pooled, atol=1e-5) and not torch.allclose(batches[0], unpooled, atol=1e-3)
    flat = torch.full((1, 1, 40, 40), 7.0)
    assert torch.allclose(map_variants.high_pass(flat, 31), torch.zeros_like(flat), atol=1e-5)
    spot = flat.clone()
    spot[0, 0, 20, 20] = 17.0
    passed = map_variants.high_pass(spot, 31)
    assert float(passed[0, 0, 20, 20]) == pytest.approx(10 - 10 / 31 ** 2, abs=1e-4)
    assert float(passed.flatten().argmax()) == 20 * 40 + 20


def test_map_variants_writes_evals_that_quality_reads_back(tmp_path):
    """`table --write-evals` files: quality.py's `results` (behind table, compare and loso) reads the same four
    figures back."""
    import map_variants
    map_variants.write_eval(tmp_path / "tire" / "eval_fine35.json", [86.7, 99.02, 95.52, 48.85], "B:fine=0.35", "map")
    assert quality.results(tmp_path, "fine35") == {"tire": pytest.approx([86.7, 99.02, 95.52, 48.85])}


def test_map_variants_fine_adds_the_weighted_map_at_equal_good_peaks():
    """`fine=W` adds W times the fine map to the variant's map, both scaled to the same good-image mean peak above
    their mean (the good images' fine map is the scale, the test images' is what is added); even windows are
    refused."""
    import torch
    import map_variants
    g = torch.Generator().manual_seed(0)

    def part(n):
        p = {f"{kind}{k}": torch.rand(n, 1, 32 // s, 32 // s, generator=g)
             for kind in ("ds", "dr") for k, s in enumerate((4, 8, 16))}
        p.update(seg=torch.randn(n, 1, 8, 8, generator=g), mem=torch.rand(n, 1, 2, 2, generator=g), glob=torch.zeros(n))
        return p

    c = {"train": part(6), "holdout": part(8), "test": part(5), "strides": [4, 8, 16], "sigma": 2.0, "seg_sigma": 0.0,
         "seg_weight": 1.0, "memory_stride": 16, "temperature": 2.0, "dist_mean": 0.5, "dist_std": 0.3,
         "mem_score_mean": 0.0, "mem_score_std": 1.0}
    v = map_variants.Variants(c)
    distances = [torch.rand(8, 1, 8, 8, generator=g), torch.rand(5, 1, 8, 8, generator=g)]
    v.fine_cache[((0, 1), 5)] = (4, distances)  # as fine_maps stores a fitted Gaussian's distances
    base, _ = map_variants.build(v, "plain_fused:kinds=ds+dr")
    with_fine, _ = map_variants.build(v, "plain_fused:kinds=ds+dr:fine=0.4:finehp=0")
    good_base, _ = map_variants.build(map_variants.Variants({**c, "test": c["holdout"]}), "plain_fused:kinds=ds+dr")
    fg, ft = (map_variants.blur(map_variants.up(d, 4), 2.0) for d in distances)
    expected = base + 0.4 * map_variants.peak_above_mean(good_base) * (ft - fg.mean()) / map_variants.peak_above_mean(fg)
    assert torch.allclose(with_fine, expected.float(), atol=1e-4)
    assert not torch.allclose(with_fine, base, atol=1e-2)
    with pytest.raises(ValueError, match="odd windows"):
        map_variants.build(v, "plain_fused:kinds=ds+dr:fine=0.4:finepool=4")

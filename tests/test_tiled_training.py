"""Training on tiles at a chosen scale (cfrg train --scale): random crops with defects inside them, statistics
fitted on every tile, the scale, tile and overlap in model.json, and a Detector that tiles every frame as training
saw it without being told. The model here trains for a few steps: these tests prove the plumbing and the numbers'
agreement, not detection quality (benchmarks/tiles.py and docs/quality.md measure that)."""
import json

import cv2
import numpy as np
import pytest

from sdk import Detector
from sdk.backends import ModelFileError
from sdk.cli import main
from sdk.data import AnomalyDataset
from sdk.model_info import ModelInfo
from tests.conftest import DEMO_ROOT

SCALE, TILE, OVERLAP = 6.0, (64, 64), 32  # the demo's 1130x460 images: 188x77 model pixels, 6 x 3 tiles of margin 16
MARGIN, PER_IMAGE = OVERLAP // 2, 18


@pytest.fixture(scope="session")
def tiled_model(tmp_path_factory):
    """(run folder, model.onnx, its description): 4 steps on tiles of the demo ball_screw images, exported."""
    from export.onnx_export import export_checkpoint
    from export.train import TrainArgs, train

    out = tmp_path_factory.mktemp("tiled")
    train(TrainArgs(data=str(DEMO_ROOT), category="ball_screw", out=str(out / "run"), scale=SCALE, image_size=TILE,
                    tile_overlap=OVERLAP, steps=4, time_budget=0, batch_size=4, progress=False, final_eval=False))
    info = export_checkpoint(out / "run" / "model.pt", out / "model.onnx", defect_split="test", progress=False)
    return out / "run", out / "model.onnx", info


def test_the_scale_tile_and_overlap_travel_in_the_checkpoint_and_model_json(tiled_model):
    run, onnx_path, info = tiled_model
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["tile_scale"] == SCALE and config["model"]["image_size"] == list(TILE)
    assert config["summary"]["fit_tiles"] == PER_IMAGE * config["n_train_images"]  # every tile of every image
    assert info.tiling == {"scale": SCALE, "tile": list(TILE), "overlap": OVERLAP, "margin": MARGIN, "score_top": 2,
                           "join": "mean"}
    assert ModelInfo.read(onnx_path).tiling == info.tiling
    assert info.thresholds["good_only"].details["n_images"] == 4  # the held-back whole images, not their tiles


def test_a_tiled_run_gets_the_tile_memory_and_auto_keeps_it_when_refitted(tiled_model):
    """Training on tiles gives the tile memory (export.map_options.TILE_MEMORY); `cfrg eval --memory-fusion auto` on
    a tiled checkpoint means the tiles' choice, not the whole frames'."""
    from export.checkpoint import load_checkpoint
    from export.fitting import with_map_fusion
    from export.map_options import TILE_MEMORY

    run, _, _ = tiled_model
    model, _ = load_checkpoint(run / "model.pt")
    assert {k: getattr(model.config, k) for k in TILE_MEMORY} == TILE_MEMORY
    assert model.memory.pool == 3 and model.memory.fusion == "sum" and model.memory.weight == 2.0
    other = with_map_fusion(model, run, progress=False, memory_fusion="max", memory_weight=1.0)
    assert (other.config.memory_fusion, other.config.memory_weight) == ("max", 1.0)
    back = with_map_fusion(other, run, progress=False, memory_fusion="auto", memory_weight="auto")
    assert (back.config.memory_fusion, back.config.memory_weight) == ("sum", 2.0)


def test_the_detector_tiles_every_frame_as_training_did_without_being_told(tiled_model):
    from sdk.preprocess import preprocess

    _, onnx_path, info = tiled_model
    frame = cv2.imread(str(sorted((DEMO_ROOT / "ball_screw" / "test" / "pitting").glob("*.jpg"))[0]))
    det = Detector(onnx_path)
    r = det(frame)
    scaled = np.empty((1, round(frame.shape[0] / SCALE), round(frame.shape[1] / SCALE), 3), np.uint8)
    preprocess(frame, scaled, colour_in="bgr", colour_out="rgb")
    plan = info.tile_plan
    tiles, origins = plan.tiles_of(scaled[0])  # mirrored by the margin on every side, then cut
    maps, scores = Detector(onnx_path).infer(tiles)
    assert det.tiling and r.tiling["tiles"] == len(tiles) == PER_IMAGE and r.tiling["overlap"] == OVERLAP
    assert r.score == pytest.approx(float(np.sort(scores)[-2:].mean()), abs=1e-5)  # its two highest tiles' mean
    assert r.anomaly_map.shape == frame.shape[:2] and r.mask.shape == frame.shape[:2]
    from sdk.postprocess import map_to_frame

    joined = map_to_frame(plan.join(maps, origins, scaled.shape[1:3]), frame.shape[:2])
    np.testing.assert_allclose(joined, r.anomaly_map, atol=1e-4)
    with pytest.raises(ValueError, match="trained on 64x64 tiles at 6 frame pixels per model pixel"):
        Detector(onnx_path, tiling=False)


def test_a_frames_score_is_the_mean_of_its_highest_tiles_and_older_models_keep_the_highest(tiled_model, tmp_path):
    """score_top travels from the checkpoint to model.json; a model.json from before it (no score_top) scores a
    frame by its highest tile, as it did; `cfrg eval --tile-score-top` changes it on a checkpoint without a refit."""
    import shutil

    import torch

    from export.checkpoint import load_checkpoint
    from export.fitting import with_map_fusion
    from sdk.tiling import TilePlan

    run, onnx_path, info = tiled_model
    frames = [cv2.imread(str(p)) for p in sorted((DEMO_ROOT / "ball_screw" / "test" / "pitting").glob("*.jpg"))[:2]]
    old = tmp_path / "old.onnx"
    shutil.copy(onnx_path, old)
    d = info.to_dict()
    d["tiling"].pop("score_top")
    (tmp_path / "old.json").write_text(json.dumps(d))
    assert ModelInfo.read(old).tile_plan.score_top == 1
    new, before = Detector(onnx_path).batch(frames), Detector(old).batch(frames)
    for frame, a, b in zip(frames, new, before):
        tiles, _ = info.tile_plan.tiles_of(_scaled(frame))
        _, scores = Detector(onnx_path).infer(tiles)
        top = np.sort(scores)[::-1]
        assert a.score == pytest.approx(top[:2].mean(), abs=1e-5) and b.score == pytest.approx(top[0], abs=1e-5)
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)  # the map does not change
    assert TilePlan((64, 64), 32, 0.5, 16, score_top=3).frame_score([1.0, 5.0]) == 3.0  # fewer tiles: all of them
    with pytest.raises(ValueError, match="score_top"):
        TilePlan((64, 64), 32, 0.5, 16, score_top=0)
    model, _ = load_checkpoint(run / "model.pt")
    assert model.config.tile_score_top == 2 and model.config.tile_plan().score_top == 2
    one = with_map_fusion(model, run, progress=False, tile_score_top=1)
    assert one.config.tile_plan().score_top == 1
    for (k, a), b in zip(model.state_dict().items(), one.state_dict().values()):  # nothing refitted
        assert torch.equal(a, b), k


def _scaled(frame):
    from sdk.preprocess import preprocess

    scaled = np.empty((1, round(frame.shape[0] / SCALE), round(frame.shape[1] / SCALE), 3), np.uint8)
    preprocess(frame, scaled, colour_in="bgr", colour_out="rgb")
    return scaled[0]


def test_the_stitched_map_takes_no_pixel_from_a_tile_margin():
    """Each tile's margin is context only: a frame's map is made of the tiles' insides, which cover it exactly."""
    from sdk.tiling import TilePlan

    plan = TilePlan((64, 96), 32, 1.0, 16)
    for hw in ((32, 32), (64, 96), (77, 188), (200, 333)):
        tiles, origins = plan.tiles_of(np.zeros((*hw, 3), np.uint8))
        maps = np.full((len(tiles), 64, 96), 100.0, np.float32)  # the margins: 100
        maps[:, 16:-16, 16:-16] = 1 + np.arange(len(tiles), dtype=np.float32)[:, None, None]  # insides: 1, 2, ...
        joined = plan.join(maps, origins, hw)
        assert joined.shape == hw and joined.min() >= 1 and joined.max() <= len(tiles) and plan.count(hw) == len(tiles)
    with pytest.raises(ValueError, match="margin of 16 needs an overlap of 32"):
        TilePlan((64, 64), 16, 1.0, 16)


def test_overlapping_insides_take_the_mean_and_older_descriptions_the_max(tiled_model, tmp_path):
    """Where the last tile along an axis overlaps its neighbour's inside, the joined map is their mean (the maximum
    of two maps of a good part is higher than either: it read as a seam); a model.json without tiling.join (exported
    before the option) keeps the maximum."""
    import shutil

    from sdk.tiling import TilePlan

    hw = (40, 80)  # padded 72x112: tiles at x 0, 32, 48 (the last aligned with the end), y 0, 8
    for mode, expect in (("mean", lambda a, b: (a + b) / 2), ("max", max)):
        plan = TilePlan((64, 64), 32, 1.0, 16, join_mode=mode)
        tiles, origins = plan.tiles_of(np.zeros((*hw, 3), np.uint8))
        maps = np.zeros((len(tiles), 64, 64), np.float32)
        values = 1 + np.arange(len(tiles), dtype=np.float32)
        maps[:, 16:-16, 16:-16] = values[:, None, None]
        joined = plan.join(maps, origins, hw)
        assert joined[0, 0] == values[0] and joined[0, 79] == values[2]  # one tile's own share
        assert joined[0, 56] == expect(values[1], values[2])  # frame x 48-64: inside tiles 1 and 2
        assert joined[20, 56] == expect(expect(values[1], values[2]), expect(values[4], values[5]))  # and y 8-32
    with pytest.raises(ValueError, match="join_mode"):
        TilePlan((64, 64), 32, 1.0, 16, join_mode="median")
    run, onnx_path, info = tiled_model
    assert info.tile_plan.join_mode == "mean"
    old = tmp_path / "old.onnx"
    shutil.copy(onnx_path, old)
    d = info.to_dict()
    d["tiling"].pop("join")
    (tmp_path / "old.json").write_text(json.dumps(d))
    assert ModelInfo.read(old).tile_plan.join_mode == "max" and Detector(old).tile_plan.join_mode == "max"
    assert Detector(onnx_path).tile_plan.join_mode == "mean"


def test_the_tile_offset_levels_the_good_tiles_map_by_position_and_travels_in_the_graph(tiled_model):
    """After training on tiles, the good tiles' mean map by position in the tile (less its mean inside the margins)
    is subtracted from every tile's map: on the held-back tiles it was fitted on, the mean map is then flat, and the
    exported graph gives the checkpoint's map with the offset in it. A checkpoint from before the option has no
    offset, and `cfrg eval --no-tile-offset` takes it away."""
    import torch

    from export.blocks import inside
    from export.checkpoint import load_checkpoint
    from export.config import CFRGConfig
    from export.fitting import MIN_OFFSET_TILES, run_images, with_map_fusion
    from export.model import CFRG, to_tensor
    from sdk.evaluate import spread_indices

    run, onnx_path, _ = tiled_model
    model, _ = load_checkpoint(run / "model.pt")
    offset = model.tile_offset
    assert offset is not None and offset.shape == (1, 1, *TILE)
    assert float(offset.abs().max()) > 0 and abs(float(inside(offset, MARGIN).mean())) < 1e-5
    tiles, held, _ = run_images(run, None, TILE, False, plan=model.config.tile_plan())
    assert len(held) >= MIN_OFFSET_TILES  # the held-back images' tiles, whose patches are not in the memory
    tiles = held[np.array(spread_indices(len(held), 512))]  # the tiles the fit took

    @torch.no_grad()
    def mean_map():
        return torch.cat([model(to_tensor(tiles[s:s + 8]))[0] for s in range(0, len(tiles), 8)]).mean(0)

    level, saved = mean_map(), offset.clone()
    offset.zero_()
    before = mean_map()
    offset.copy_(saved)
    spread = float(before.std())
    assert spread > 0 and float((level - inside(level[None], MARGIN).mean()).abs().max()) < 1e-3 * spread + 1e-5
    graph_map, _ = Detector(onnx_path).infer(tiles[:4])
    with torch.no_grad():
        torch_map = model(to_tensor(tiles[:4]))[0][:, 0].numpy()
    graph_map = graph_map.reshape(torch_map.shape)
    off_by = np.abs(graph_map - torch_map).mean()  # the graph and torch agree to float tolerance, not exactly
    assert off_by < 0.1 * np.abs(graph_map - (torch_map + saved[0].numpy())).mean()  # the offset is in the graph
    without = with_map_fusion(model, run, progress=False, tile_offset=False)
    assert without.tile_offset is None and "tile_offset" not in without.state_dict()
    legacy = {k: v for k, v in model.config.to_dict().items() if k not in ("tile_offset", "tile_join")}
    old = CFRG(CFRGConfig.from_dict(legacy), pretrained_teacher=False)
    assert old.tile_offset is None and old.config.tile_join == "max"


def test_any_frame_size_down_to_a_single_tile(tiled_model):
    _, onnx_path, _ = tiled_model
    det = Detector(onnx_path)
    image = cv2.imread(str(sorted((DEMO_ROOT / "ball_screw" / "train" / "good").glob("*.jpg"))[0]))
    one_tile = np.ascontiguousarray(image[:192, :192])  # 32 x 32 model pixels, 64 x 64 with its margins: one tile
    strip = np.ascontiguousarray(np.concatenate([image] * 3, axis=1))  # 3390 x 460: a line-scan strip
    results = det.batch([one_tile, image, strip])
    assert [r.tiling["tiles"] for r in results] == [1, PER_IMAGE, 3 * 18]
    assert [r.anomaly_map.shape for r in results] == [one_tile.shape[:2], image.shape[:2], strip.shape[:2]]
    with pytest.raises(ValueError, match="needs at least 32 a side"):
        det(np.ascontiguousarray(image[:100, :100]))  # 17 model pixels: below the teacher's coarsest stride


def test_tiles_go_through_a_backend_in_batches_it_takes(tiled_model):
    """A backend with a largest batch (a TensorRT engine's --maxShapes) gets the tiles in batches it takes; faked
    here by an ONNX Runtime session whose run refuses more: it proves the batching, not TensorRT."""
    _, onnx_path, _ = tiled_model
    det, capped = Detector(onnx_path), Detector(onnx_path)
    run, sizes = capped.backend.run, []

    def run_at_most_3(feeds):
        sizes.append(len(feeds["frames"]))
        assert len(feeds["frames"]) <= 3
        return run(feeds)

    capped.backend.max_batch, capped.backend.run = 3, run_at_most_3
    image = cv2.imread(str(sorted((DEMO_ROOT / "ball_screw" / "test" / "good").glob("*.jpg"))[0]))
    a, b = det(image), capped(image)
    assert sizes == [3] * 6 and a.score == pytest.approx(b.score, abs=1e-5)
    np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-5)
    sizes.clear()  # the predictor that cfrg threshold and the build's reports run tiles through: the same parts
    tiles = capped.tile_plan.cut(image, "bgr", "rgb")[0]
    maps, scores = capped.predictor()(tiles)
    assert sizes == [3] * 6 and len(maps) == len(scores) == 18


def test_the_checkpoint_and_the_exported_graph_are_judged_alike_in_tiles(tiled_model, tmp_path):
    run, onnx_path, _ = tiled_model
    for model, name in ((run / "model.pt", "pt"), (onnx_path, "onnx")):
        assert main(["eval", "--model", str(model), "--data", str(DEMO_ROOT), "--category", "ball_screw",
                     "--json", str(tmp_path / f"{name}.json"), "--no-progress"]) == 0
    pt, onnx = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("pt", "onnx"))
    assert pt["tiling"] == onnx["tiling"] == {"overlap": OVERLAP, "tile": list(TILE),
                                              "model_pixels_per_frame_pixel": pytest.approx(1 / SCALE)}
    for key in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap"):
        assert pt[key] == pytest.approx(onnx[key], abs=1e-3)


def test_training_crops_hold_their_defects_and_come_from_the_scaled_images(tiled_model):
    from export.batches import CropBatchMaker
    from export.train_images import load_scaled_images
    from sdk.synthesis import DefectSynthesizer
    from sdk.tiling import TilePlan

    plan = TilePlan(TILE, OVERLAP, 1 / SCALE)
    scaled = load_scaled_images(AnomalyDataset(str(DEMO_ROOT), "ball_screw", "train"), plan, False, range(6))
    assert {im.shape for im in scaled} == {(77, 188, 3)}
    maker = CropBatchMaker(scaled, DefectSynthesizer(donor_images=scaled), 8, 1.0, seed=5, crop=TILE)
    try:
        idx, xs, masks, flips, clean = maker.make(3)
        again = maker.make(3)
    finally:
        maker.close()
    assert xs.shape == clean.shape == (8, *TILE, 3) and masks.shape == (8, 1, *TILE)
    assert all(np.array_equal(a, b) for a, b in zip((idx, xs, masks, clean), again[:3] + again[4:]))
    for j, i in enumerate(idx):  # each clean crop is a window of its scaled image
        found = cv2.matchTemplate(scaled[i][:, :, 0], np.ascontiguousarray(clean[j][:, :, 0]), cv2.TM_SQDIFF)
        y, x = np.unravel_index(int(found.argmin()), found.shape)
        assert np.array_equal(scaled[i][y:y + TILE[0], x:x + TILE[1]], clean[j])
        assert masks[j].max() > 0 and np.array_equal(xs[j][masks[j, 0] == 0], clean[j][masks[j, 0] == 0])


@pytest.mark.parametrize("tiling, problem", [
    ({"scale": 0, "tile": [64, 64], "overlap": 16}, "'tiling.scale' must be > 0"),
    ({"scale": 2, "tile": [32, 64], "overlap": 16}, "'tiling.tile' must be the input's [height, width]"),
    ({"scale": 2, "tile": [64, 64], "overlap": 64}, "'tiling.overlap' must be below the tile's short side 64"),
    ({"scale": 2, "tile": [64, 64], "overlap": 32, "margin": 8}, "'tiling.margin' must be half the overlap 32"),
    ({"scale": 2, "tile": [64, 64]}, "missing key 'tiling.overlap'"),
    ({"scale": 2, "tile": [64, 64], "overlap": 32, "margin": 16, "score_top": 0}, "'tiling.score_top' must be"),
    ({"scale": 2, "tile": [64, 64], "overlap": 32, "margin": 16, "join": "median"}, "'tiling.join' must be one of"),
])
def test_a_bad_tiling_description_is_refused_by_name(tiled_model, tiling, problem):
    d = tiled_model[2].to_dict()
    d["tiling"] = tiling
    with pytest.raises(ModelFileError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        ModelInfo.from_dict(d, "m.json")


def test_scale_auto_tiles_the_large_sets_and_keeps_small_images_whole(data_root):
    """The rule reads only the good training images' sizes: which sets it tiles follows from them."""
    from export.options import auto_scale

    def sizes(category):
        ds = AnomalyDataset(str(data_root), category, "train")
        return [ds.load_image(i).shape[:2] for i in range(0, len(ds), max(1, len(ds) // 16))]

    tiled = {c: auto_scale(sizes(c))[0] for c in ("ball_screw", "capsules", "tire", "paper_brg02", "magnetic_tile")}
    assert tiled["paper_brg02"] == 0 and tiled["magnetic_tile"] == 0  # about the input's size or smaller: whole
    assert all(1 <= tiled[c] <= 2 for c in ("ball_screw", "capsules", "tire"))


def test_scale_auto_is_the_default_of_the_python_api_and_the_command_line():
    """The default chosen over the six sets (docs/quality.md): `cfrg train` and TrainArgs decide from the images."""
    from export.options import TrainArgs, train_args_from
    from sdk.cli import build_parser

    assert TrainArgs("d", "c", "o").scale == "auto"
    argv = ["train", "--data", "d", "--category", "c", "--out", "o"]
    assert train_args_from(build_parser().parse_args(argv)).scale == "auto"
    with pytest.raises(ValueError, match="--scale auto is resolved from the training images"):
        TrainArgs("d", "c", "o").model_config((256, 256))


def test_per_position_statistics_are_refused_for_tiles():
    from export.config import CFRGConfig
    from export.model import CFRG

    with pytest.raises(ValueError, match="mean nothing for a tile"):
        CFRG(CFRGConfig(image_size=(64, 64), tile_scale=2.0, map_normalisation="position"), pretrained_teacher=False)


def test_precision_graphs_of_a_tiled_model_calibrate_and_measure_on_tiles(tiled_model, tmp_path):
    import shutil

    from sdk.build.precision import GoodFrames, precision_path, write_precision_graph
    from sdk.run_record import RunRecord

    run, onnx_path, info = tiled_model
    fp32 = tmp_path / "model.onnx"
    shutil.copy(onnx_path, fp32)
    shutil.copy(onnx_path.with_suffix(".json"), tmp_path / "model.json")
    calib = [str(p) for p in RunRecord.read(run).holdout_files]
    reader = GoodFrames(calib, TILE, "RGB", plan=info.tile_plan)
    feeds = []
    while (batch := reader.get_next()) is not None:
        feeds.append(batch["frames"])
    assert sum(len(b) for b in feeds) == PER_IMAGE * len(calib) and feeds[0].shape[1:] == (*TILE, 3)  # every tile
    graph = write_precision_graph(fp32, "int8", precision_path(fp32, "int8"), calib_files=calib, accept_drop=True,
                                  warn=lambda text: None)
    assert graph.tiling == info.tiling and graph.thresholds["good_only"].details["n_images"] == len(calib)
    r = Detector(precision_path(fp32, "int8"))(cv2.imread(calib[0]))
    assert r.tiling["tiles"] == PER_IMAGE


def test_rethresholding_a_tiled_model_scores_whole_frames_in_tiles(tiled_model, tmp_path):
    import shutil

    _, onnx_path, _ = tiled_model
    model = tmp_path / "model.onnx"
    shutil.copy(onnx_path, model)
    shutil.copy(onnx_path.with_suffix(".json"), tmp_path / "model.json")
    good = tmp_path / "good"
    good.mkdir()
    for p in sorted((DEMO_ROOT / "ball_screw" / "train" / "good").glob("*.jpg"))[:20]:
        shutil.copy(p, good / p.name)
    det = Detector(model, colour="rgb")
    from sdk.data import read_image

    frame_scores = sorted(det(read_image(p, "rgb")).score for p in sorted(good.glob("*.jpg")))
    assert main(["threshold", "--model", str(model), "--good", str(good), "--target-frr", "0.05", "--ignore-drift",
                 "--no-progress"]) == 0
    t = ModelInfo.read(model).thresholds["good_only"]
    from sdk.build.thresholds import good_only_threshold

    expected = good_only_threshold(np.array(frame_scores), 0.05)["value"]  # of the frames' scores, not the tiles'
    assert t.details["n_images"] == 20 and t.image == pytest.approx(expected, abs=1e-4)
    assert ModelInfo.read(model).tiling["scale"] == SCALE


def test_a_line_camera_delivers_real_parts_row_by_row_to_a_tiled_model(tiled_model, tmp_path):
    """examples/make_line_strips.py and line_camera.py --line-scan: every part comes out once, in order, with the
    tiled model's tiles and region boxes in frame pixels (the verdicts of a 4-step model mean nothing; the
    README's run uses a trained one)."""
    import csv
    import re
    import subprocess
    import sys

    from tests.conftest import ROOT

    lines = tmp_path / "lines"
    made = subprocess.run([sys.executable, ROOT / "examples" / "make_line_strips.py", "--data", DEMO_ROOT,
                           "--category", "ball_screw", "--good", "3", "--defect", "2", "--out", lines],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    truth = list(csv.DictReader(open(lines / "truth.csv")))
    assert [t["kind"] for t in truth] == ["good", "pitting", "good", "pitting", "good"]
    assert all(re.fullmatch(r"\d+,\d+ \d+x\d+", t["box"]) for t in truth if t["kind"] != "good")
    done = subprocess.run([sys.executable, ROOT / "examples" / "line_camera.py", "--model", tiled_model[1],
                           "--source", lines, "--line-scan", "460", "--threshold=-1e9"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    parts = [line for line in done.stdout.splitlines() if line.startswith("part")]
    assert [int(line.split()[1]) for line in parts] == list(range(5)) and "5 parts: 0 OK, 5 NG" in done.stdout
    for line in parts:  # a threshold below every score: every pixel passes, one region the size of the part
        assert "[0,0 1130x460]" in line


def test_the_tiled_graph_keeps_tensorrts_parser_rules(tiled_model):
    """The tiled model's own parts (the mirrored pooling of the memory, the margin's slices) against the rule file;
    it proves the rules as the file states them, not real TensorRT."""
    import onnx

    from sdk.build.tensorrt_rules import check, errors

    proto = onnx.load(str(tiled_model[1]))
    ops = {n.op_type for n in proto.graph.node}
    assert "Pad" in ops and "Slice" in ops
    for target in ("10.3", "10.x", "11.x"):
        assert errors(check(proto, target)) == [], target


def test_the_seam_figure_of_benchmarks_tiles_holds_for_maps_below_zero(tiled_model):
    """benchmarks/tiles.py's seam figure on the tiny tiled model's real stitched maps: the tiles' summed memory makes a
    z-scored map that goes below 0, where a ratio of means says nothing, so the difference in the map's standard
    deviations is reported beside it (and the ratio only where the map elsewhere is positive)."""
    from benchmarks.tiles import seam_ratio

    _, onnx_path, _ = tiled_model
    seams = seam_ratio(str(onnx_path), str(DEMO_ROOT), "ball_screw", 2)
    assert seams["images"] == 2 and np.isfinite(seams["excess_sd"])
    json.dumps(seams, allow_nan=False)  # what --json writes: plain numbers, no NaN
    assert (seams["ratio"] is None) == (seams["elsewhere_mean"] <= 0)
    assert isinstance(seams["shows"], bool) and (not seams["shows"] or seams["controls_above"] == 0)
    if seams["ratio"] is not None:
        assert seams["ratio"] == pytest.approx(seams["seam_mean"] / seams["elsewhere_mean"], rel=1e-2)


def test_the_seam_figure_tells_a_seam_from_the_lines_beside_it_on_constructed_maps():
    """benchmarks/tiles.py's control lines, on constructed maps over a real TilePlan's seams: over ten noise maps, a
    rise along the seams shows above every control line, the same noise without it gives a seam excess near 0 and
    does not show, and no control line lies on a seam or where two shares overlap. Noise alone could still show by
    chance (the seams significantly above each of 8 lines of the same kind: rare); the flat case's figure is the
    small excess.
    What it does not prove: that a model's seams are invisible (docs/quality.md measures that)."""
    from benchmarks.tiles import (CONTROL_SHIFTS, SEAM_HALF_WIDTH, control_edges, line_band, line_figures,
                                  mean_and_interval, seam_edges, seams_show, shared_spans)
    from sdk.tiling import TilePlan

    plan = TilePlan((256, 256), 64, 1 / 1.5, 32)
    shape = (307, 753)  # a 1130x460 ball_screw part at 1.5
    x_edges, y_edges = seam_edges(shape, plan)
    assert x_edges and y_edges and all(0 < e < shape[1] for e in x_edges)
    x_shared, y_shared = shared_spans(shape, plan)
    assert y_shared == [(115, 192)] and x_shared == [(561, 576)]  # the last tile along each axis meets the end
    for s in CONTROL_SHIFTS:
        for edges, spans, size in ((x_edges, x_shared, shape[1]), (y_edges, y_shared, shape[0])):
            for e in control_edges(edges, s, size, spans):
                assert min(abs(e - f) for f in edges) >= 3 * SEAM_HALF_WIDTH
                assert all(e + SEAM_HALF_WIDTH <= a or b <= e - SEAM_HALF_WIDTH for a, b in spans)
    seams = line_band(shape, x_edges, y_edges)
    rng = np.random.default_rng(0)
    noises = [rng.normal(size=shape) for _ in range(10)]
    flat = [line_figures(n, plan) for n in noises]
    raised = [line_figures(n + 0.5 * seams, plan) for n in noises]
    assert set(flat[0]["control_excess_sd"]) == set(CONTROL_SHIFTS)

    def summary(figures):
        seam = [f["excess_sd"] for f in figures]
        controls = {s: [f["control_excess_sd"][s] for f in figures] for s in CONTROL_SHIFTS}
        return seam, controls

    (flat_seam, flat_controls), (raised_seam, raised_controls) = summary(flat), summary(raised)
    assert abs(np.mean(flat_seam)) < 0.02 and not seams_show(flat_seam, flat_controls)
    assert abs(np.mean(raised_seam) - 0.5) < 0.05 and seams_show(raised_seam, raised_controls)
    assert max(abs(mean_and_interval(v)[0]) for v in raised_controls.values()) < 0.05  # the rise is on the seams only
    # the rule itself: above every control in pairs, image by image; one control level with it, or no pairs, no show
    assert seams_show([0.3, 0.32, 0.31], {16: [0.1, 0.12, 0.1], 32: [0.2, 0.21, 0.22]})
    assert not seams_show([0.3, 0.32, 0.31], {16: [0.1, 0.12, 0.1], 32: [0.31, 0.3, 0.32]})
    assert not seams_show([0.3], {16: [0.0]}) and not seams_show([0.3, 0.3], {})
    assert np.isnan(line_figures(np.ones(shape), plan)["excess_sd"])  # a flat map has no spread to measure in


def test_small_defects_bins_the_detectors_verdicts_by_defect_area(tiled_model):
    """benchmarks/small_defects.py on the tiny tiled model and the demo ball_screw test images: one row per image with
    the Detector's own verdict, each defect binned once by its mask's area, the bins' counts and I-AUROC consistent
    with the rows. What it does not prove: how well a trained model finds small defects (docs/quality.md)."""
    from benchmarks.small_defects import area_bins, bin_name, image_rows, peak, size_auroc, size_table
    from sdk.data import AnomalyDataset
    from sdk.metrics import image_auroc

    _, onnx_path, _ = tiled_model
    rows, det = image_rows(str(onnx_path), str(DEMO_ROOT), "ball_screw")
    test = AnomalyDataset(str(DEMO_ROOT), "ball_screw", "test")
    assert len(rows) == len(test) and det.frame_plan is not None
    defects = [r for r in rows if r["label"]]
    assert defects and all(r["area"] > 0 and isinstance(r["found"], bool) for r in defects)
    clear = [r for r in rows if abs(r["score"] - det.image_threshold) > 1e-3]  # scores are kept to 4 decimals
    assert clear and all(r["caught"] == (r["score"] > det.image_threshold) for r in clear)  # min_area 0: the score
    edges, table = size_table(rows)
    assert sum(t["images"] for t in table) == len(defects) and len(table) == 4
    assert all(t["caught"] <= t["caught_or_found"] <= t["images"] for t in table)
    good_scores = [r["score"] for r in rows if not r["label"]]
    for t, (lo, hi) in zip(table, area_bins([r["area"] for r in defects], edges)[1]):  # I-AUROC from the rows
        inside = [r["score"] for r in defects if lo <= r["area"] < hi]
        if inside:
            labels = np.r_[np.zeros(len(good_scores)), np.ones(len(inside))]
            assert t["i_auroc"] == pytest.approx(100 * image_auroc(labels, np.r_[good_scores, inside]), abs=0.01)
    # a defect image whose mask is empty has no area: it falls in no bin, and its peak inside is None
    empty = {**defects[0], "area": 0, "peak_inside": None}
    _, with_empty = size_table([*rows, empty], edges)
    assert [t["images"] for t in with_empty] == [t["images"] for t in table]
    assert peak(np.zeros((4, 4)), np.zeros((4, 4), bool), 1.0) is None
    assert bin_name(172.5, 878) == "172.5-<878" and bin_name(1910, np.inf) == ">=1910"
    # constructed scores: a bin whose defects all outscore every good image gets 100, one below them all 0
    aurocs = size_auroc([0.0, 1.0], [5.0, -1.0], [10, 1000], [100])
    assert [a["i_auroc"] for a in aurocs] == [100.0, 0.0] and [a["images"] for a in aurocs] == [1, 1]
    with pytest.raises(ValueError, match="no defect images"):
        area_bins([])

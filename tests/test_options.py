"""Training options are declared once (export.options.TrainArgs): the CLI's flags, their checks and the saved
config come from that declaration. And the shared writers never leave half a file."""
import argparse
import dataclasses
import os
import stat

import pytest

from export.config import CFRGConfig
from export.options import EVAL_OPTIONS, TrainArgs, flag_of, train_args_from
from export.map_options import auto_memory_pool, parse_pool, parse_weight
from sdk.cli import build_parser
from sdk.files import atomic_output, write_json

BASE = ["train", "--data", "d", "--category", "c", "--out", "o"]
CLI_FIELDS = [f for f in dataclasses.fields(TrainArgs) if f.metadata["cli"]]


def _actions(command: str) -> dict:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices[command]._actions}


def test_every_declared_option_is_a_train_flag_with_the_declared_default():
    actions = _actions("train")
    for f in CLI_FIELDS:
        assert f.name in actions and flag_of(f) in actions[f.name].option_strings
        if f.default is not dataclasses.MISSING:
            assert actions[f.name].default == f.default, f.name
    args = train_args_from(build_parser().parse_args(BASE))
    assert dataclasses.asdict(args) == {**dataclasses.asdict(TrainArgs("d", "c", "o")), "progress": True}


def test_the_demo_takes_the_same_options_with_its_own_budget():
    actions = _actions("demo")
    assert actions["time_budget"].default == 3.0 and actions["out"].default == "runs/demo"
    assert {f.name for f in CLI_FIELDS} - set(actions) == {"data", "category"}


def test_recipe_defaults_come_from_the_model_config():
    args, config = TrainArgs("d", "c", "o", scale="whole"), CFRGConfig()
    assert args.model_config(config.image_size) == config  # the size: auto, resolved from the training images
    assert set(EVAL_OPTIONS) == {"map_normalisation", "gaussian_sigma", "seg_sigma", "sum_seg_weight", "memory_size",
                                 "memory_pool", "memory_edges", "memory_fusion", "memory_weight", "image_score",
                                 "global_score", "pixel_map", "fine_weight", "tile_score_top", "tile_offset",
                                 "tile_join"}
    actions = _actions("eval")
    assert all(actions[name].default is None for name in EVAL_OPTIONS)


@pytest.mark.parametrize("size,pool", [((256, 256), 9), ((160, 416), 5), ((416, 160), 5), ((288, 224), 7),
                                       ((128, 128), 5), ((64, 128), 3), ((32, 32), 1), ((512, 512), 17)])
def test_memory_pool_auto_covers_the_same_share_of_the_short_side(size, pool):
    """auto: the recipe's 9 cells on a 256-pixel short side, the nearest odd window in proportion on others."""
    assert auto_memory_pool(size) == pool
    assert TrainArgs("d", "c", "o", scale="whole").model_config(size).memory_pool == pool
    # a given window is kept
    assert TrainArgs("d", "c", "o", scale="whole", memory_pool=7).model_config(size).memory_pool == 7
    assert train_args_from(build_parser().parse_args(BASE + ["--memory-pool", "AUTO"])).memory_pool == "auto"


def test_fine_weight_is_auto_by_default_and_takes_a_number():
    """auto: the model starts without the branch (its weight is resolved from the fit at the end of training)."""
    args = TrainArgs("d", "c", "o")
    assert args.fine_weight == "auto" and args.model_config((64, 64), 0).fine_weight == 0.0
    assert TrainArgs("d", "c", "o", scale="whole", fine_weight=0.35).model_config((64, 64)).fine_weight == 0.35
    assert parse_weight("AUTO") == "auto" and parse_weight("0.25") == 0.25
    assert train_args_from(build_parser().parse_args(BASE + ["--fine-weight", "0"])).fine_weight == 0.0
    with pytest.raises(argparse.ArgumentTypeError, match="give a number >= 0 or 'auto'"):
        parse_weight("heavy")
    for bad in (-0.1, "x"):
        with pytest.raises(ValueError, match="--fine-weight .*give a number >= 0 or 'auto'"):
            TrainArgs("d", "c", "o", steps=1, fine_weight=bad).validate()


def test_student_width_reaches_the_model():
    from export.model import CFRG

    args = train_args_from(build_parser().parse_args(BASE + ["--student-width", "16"]))
    config = args.model_config((64, 64), 0)
    assert config.student_width == 16
    assert TrainArgs("d", "c", "o", scale="whole").model_config((64, 64)).student_width == 32
    student = CFRG(config, pretrained_teacher=False).student
    assert [a.in_channels for a in student.adapters] == [16, 32, 64]  # doubled at each stride


@pytest.mark.parametrize("flag,value,words", [
    ("--steps", "-1", "whole number >= 0"), ("--time-budget", "nan", "finite"), ("--time-budget", "-2", "[0, 1e+06)"),
    ("--batch-size", "0", ">= 1"), ("--lr", "0", "(0, inf)"), ("--holdout", "1", "[0, 1)"),
    ("--memory-pool", "4", "odd"), ("--memory-pool", "wide", "or 'auto'"), ("--memory-size", "-3", ">= 0"),
    ("--recovery-width", "0", "multiple of 4"), ("--student-width", "7", "multiple of 2"),
    ("--recovery-width", "30", "multiple of 4"), ("--threads", "-1", ">= 0"), ("--eval-limit", "0", ">= 1"),
    ("--image-size", "250", "multiple of 32"), ("--batch-size", "two", "not a number"),
])
def test_bad_values_are_refused_by_the_flag_and_by_validate(flag, value, words, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(BASE + [flag, value])
    assert words in capsys.readouterr().err
    field = next(f for f in CLI_FIELDS if flag_of(f) == flag)
    if field.metadata["type"] in (int, float, parse_pool):
        try:
            bad = field.metadata["type"](value)
        except ValueError:
            bad = value
        with pytest.raises(ValueError, match=flag):
            dataclasses.replace(TrainArgs("d", "c", "o"), **{field.name: bad}).validate()


def test_validate_needs_a_bound_and_in_range_python_values():
    with pytest.raises(ValueError, match="nothing bounds training"):
        TrainArgs("d", "c", "o", steps=0, time_budget=0).validate()
    with pytest.raises(ValueError, match="--anomaly-prob 1.5"):
        TrainArgs("d", "c", "o", anomaly_prob=1.5).validate()
    with pytest.raises(ValueError, match="--teacher 'resnet'"):
        TrainArgs("d", "c", "o", teacher="resnet").validate()
    TrainArgs("d", "c", "o", steps=3, time_budget=0).validate()


def test_atomic_output_keeps_the_old_file_on_failure_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_output(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert path.read_text() == '{\n  "a": 1\n}' and os.listdir(tmp_path) == ["metrics.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # as a plain open() would make it


def test_auto_image_size_follows_the_training_images_aspect_ratio():
    from export.options import auto_image_size, parse_size

    assert parse_size("auto") == "auto" and parse_size("AUTO") == "auto"
    assert auto_image_size([(460, 1130)] * 4 + [(100, 100)]) == (160, 416)  # ball_screw: wide, the median aspect
    assert auto_image_size([(800, 600)]) == (288, 224)  # tire: tall
    assert auto_image_size([(128, 128)]) == (256, 256)  # paper: square, the default's pixels
    for h, w in [(460, 1130), (800, 600), (300, 9000)]:
        size = auto_image_size([(h, w)])
        assert size[0] % 32 == 0 and size[1] % 32 == 0 and 0.8 < size[0] * size[1] / 65536 < 1.25
    with pytest.raises(ValueError, match="no training images"):
        auto_image_size([])


def test_auto_image_size_is_square_when_the_training_images_have_no_one_shape():
    """Crops of many shapes (magnetic_tile's ROIs, 0.6 to 1.6 times as wide as high) are not all squashed to
    their median ratio; at least 80% of the images within 10% of the median count as one shape."""
    from export.options import TrainArgs, auto_image_size, shared_aspect

    assert TrainArgs.__dataclass_fields__["image_size"].default == "auto"
    crops = [(300, w) for w in range(180, 500, 10)]
    assert shared_aspect(crops) is None and auto_image_size(crops) == (256, 256)
    assert shared_aspect([(460, 1130)] * 3 + [(100, 100)]) is None  # one in four off: not one shape
    assert shared_aspect([(460, 1130)] * 4 + [(100, 100)]) == pytest.approx(1130 / 460)
    assert shared_aspect([(460, 1130), (470, 1130), (450, 1130), (460, 1100)]) == pytest.approx(1130 / 460)


def test_memory_auto_is_the_recipes_on_whole_frames_and_the_tile_memory_on_tiles():
    from export.map_options import TILE_MEMORY

    recipe = CFRGConfig()
    whole = TrainArgs("d", "c", "o", scale="whole").model_config((224, 288))
    assert (whole.memory_edges, whole.memory_fusion, whole.memory_weight, whole.memory_pool) == (
        recipe.memory_edges, recipe.memory_fusion, recipe.memory_weight, 7)
    tiled = TrainArgs("d", "c", "o", scale="1.5").model_config((256, 256))
    assert {k: getattr(tiled, k) for k in TILE_MEMORY} == TILE_MEMORY == {
        "memory_pool": 3, "memory_edges": "mirror", "memory_fusion": "sum", "memory_weight": 2.0}
    given = TrainArgs("d", "c", "o", scale="1.5", memory_edges="zeros", memory_pool=5, memory_fusion="max",
                      memory_weight=1.0).model_config((256, 256))
    assert (given.memory_edges, given.memory_pool, given.memory_fusion, given.memory_weight) == ("zeros", 5, "max", 1.0)
    args = train_args_from(build_parser().parse_args(BASE + ["--memory-weight", "AUTO", "--memory-fusion", "sum"]))
    assert (args.memory_weight, args.memory_fusion) == ("auto", "sum")
    with pytest.raises(SystemExit):
        build_parser().parse_args(BASE + ["--memory-edges", "wrap"])

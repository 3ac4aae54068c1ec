"""sdk.build.precision_check: a reduced-precision graph is compared with FP32 on held-back good images and their
synthetic-defect twins before cfrg build keeps it; one that does not hold is refused in one line (exit 9) unless
--accept-drop, and the figures go into its model.json."""
import json
import shutil

import numpy as np
import onnx
import pytest

from sdk.build.precision import PrecisionDropError, check_against
from sdk.build.precision_check import LIMITS, PrecisionCheck, ranks, spearman, synthetic_set
from sdk import cli
from sdk.backends.onnxruntime import OnnxRuntimeBackend
from sdk.cli import main


def test_spearman_matches_a_hand_computed_case_with_ties():
    assert list(ranks(np.array([3.0, 1.0, 3.0, 2.0]))) == [3.5, 1.0, 3.5, 2.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # d = rank differences (0, 0, 1, -1) of [1,2,3,4] against [1,2,4,3]: 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(0.8)


def test_synthetic_twins_change_only_inside_their_masks(precision_graphs):
    from sdk.data import read_image
    from sdk.evaluate import resize_for_model

    _, _, calib = precision_graphs
    good = np.stack([resize_for_model(read_image(p, "rgb"), (64, 128)) for p in calib])
    defects, masks = synthetic_set(good, seed=3)
    assert defects.shape == good.shape and masks.shape == good.shape[:3] and masks.any(axis=(1, 2)).all()
    assert np.array_equal(defects[masks == 0], good[masks == 0]) or (defects != good).any(axis=3)[masks == 0].mean() < 0.01


def _negated_score_graph(fp32, tmp_path):
    """The FP32 graph with its score negated: every rank reversed, as a collapsed precision graph would be."""
    proto = onnx.load(str(fp32))
    out = next(o for o in proto.graph.output if o.name == "score")
    producer = next(n for n in proto.graph.node if "score" in n.output)
    producer.output[list(producer.output).index("score")] = "score_before"
    proto.graph.node.append(onnx.helper.make_node("Neg", ["score_before"], ["score"], name="negate"))
    del proto.graph.value_info[:]
    path = tmp_path / "bad.onnx"
    onnx.save(proto, str(path))
    assert out.name == "score"
    return path


def test_a_graph_that_does_not_hold_is_refused_naming_the_numbers_and_accepted_on_request(precision_graphs, tmp_path):
    fp32, _, calib = precision_graphs
    bad = _negated_score_graph(fp32, tmp_path)
    args = (OnnxRuntimeBackend(fp32), OnnxRuntimeBackend(bad), calib, (64, 128), "RGB", "frames", (1.0, -1.0),
            "bad.onnx", "cpu-int8")
    with pytest.raises(PrecisionDropError, match="good-vs-synthetic AUROC") as info:  # 8 images: no rank test
        check_against(*args, accept_drop=False)
    assert "--accept-drop" in str(info.value)
    warned = []
    check = check_against(*args, accept_drop=True, warn=warned.append)
    assert check["accepted_drop"] and not check["passed"] and warned and check["limits"] == LIMITS


def test_a_graph_that_holds_passes_and_its_check_is_recorded(precision_graphs):
    fp32, infos, calib = precision_graphs
    fp16 = infos["fp16"].precision_check
    assert fp16["score_rank_correlation"] > 0.99 and fp16["n_good"] == len(calib) == fp16["n_synthetic"]
    assert set(fp16) >= {"auroc", "auroc_fp32", "pixel_auroc", "verdict_agreement", "map_difference", "passed"}
    same = PrecisionCheck("x", "fp16", 10, 10, 1.0, 0.9, 0.9, 0.95, 0.95, 1.0, 0.0)
    assert same.passed and PrecisionCheck("x", "int8", 10, 10, 1.0, 0.9, 0.85, 0.95, 0.95, 1.0, 0.0).failures()
    assert PrecisionCheck("x", "cpu-int8", 3, 3, 0.9, 0.9, 0.9, 0.95, 0.95, 1.0, 0.0).passed  # 6 images: no rank test
    assert "rank correlation 0.970" in PrecisionCheck("x", "cpu-int8", 30, 30, 0.97, 0.9, 0.9, 0.95, 0.95, 1.0,
                                                      0.0).failures()[0]


def test_cfrg_build_refuses_in_one_line_with_exit_9_and_writes_on_accept_drop(precision_graphs, tmp_path, capsys,
                                                                            monkeypatch):
    """cfrg build with the precision check failing (here: forced by an impossible limit on the real graph)."""
    import sdk.build.precision_check as pc

    fp32, _, calib = precision_graphs
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(fp32, folder / "model.onnx")
    shutil.copy(fp32.with_suffix(".json"), folder / "model.json")
    monkeypatch.setitem(pc.LIMITS, "min_score_rank_correlation", 1.01)  # checked on the run's held-back images
    monkeypatch.setitem(pc.LIMITS, "min_images_for_rank", 0)
    code = main(["build", "--onnx", str(folder / "model.onnx"), "--fp16", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_PRECISION and len(err) == 1 and "refused" in err[0] and "score rank correlation" in err[0]
    assert not (folder / "model.fp16.onnx").exists() and not list(folder.glob(".*"))
    code = main(["build", "--onnx", str(folder / "model.onnx"), "--fp16", "--accept-drop", "--no-progress"])
    assert code == cli.EXIT_NO_ENGINE and "written under --accept-drop" in capsys.readouterr().err
    recorded = json.loads((folder / "model.fp16.json").read_text())["precision_check"]
    assert recorded["accepted_drop"] and recorded["failures"] and recorded["n_good"] == len(calib)

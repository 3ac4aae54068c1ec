"""cfrg threshold (sdk/rethreshold.py): new thresholds from real good (and defect) images of the line, the model
description written again with the old values in its history, the Detector reading them, and the refusal when the
good images have drifted from the model's drift reference (a darker material batch made from real images)."""
import json
import shutil

import cv2
import pytest

from benchmarks.drift_figures import drifted
from sdk import Detector, ModelInfo
from sdk.cli import EXIT_DATA, EXIT_USAGE, main
from sdk.data import read_image
from sdk.files import image_files
from tests.test_tensorrt_backend_fake import _build, _install


@pytest.fixture()
def model(exported_model, tmp_path):
    for suffix in (".onnx", ".json"):
        shutil.copy(exported_model[1].with_suffix(suffix), tmp_path / f"model{suffix}")
    return tmp_path / "model.onnx"


@pytest.fixture()
def line_good(data_root, tmp_path):
    """40 good ball_screw test images (real), as collected on the line."""
    folder = tmp_path / "line_good"
    folder.mkdir()
    for p in image_files(data_root / "ball_screw" / "test" / "good")[:80:2]:
        shutil.copy(p, folder / p.name)
    return folder


def test_new_thresholds_from_the_line_keep_the_old_in_the_history(model, line_good, data_root, tmp_path, capsys):
    before = ModelInfo.read(model)
    assert main(["threshold", "--model", str(model), "--good", str(line_good), "--target-frr", "0.05",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "good_only: image" in out and "(was " in out and f"wrote {model.with_suffix('.json')}" in out
    after = ModelInfo.read(model)
    t = after.thresholds["good_only"]
    assert t.details["n_images"] == 40 and t.details["target_frr"] == 0.05 and t.details["observed_frr"] <= 0.05
    assert "40 good images (sha256 " in t.details["measured_on"]
    (entry,) = after.threshold_history
    assert entry["thresholds"] == {n: v.to_dict() for n, v in before.thresholds.items()}
    assert entry["default"] == before.default_threshold and entry["by"].startswith("cfrg threshold --good")
    assert entry["score_normalisation"]["offset"] == before.score_normalisation.offset
    assert after.provenance == before.provenance and after.drift_reference == before.drift_reference
    det = Detector(model)  # the embedded description still matches (same export), the new values are read
    assert det.image_threshold == t.image and det.pixel_threshold == t.pixel
    scores = [det(read_image(p, "bgr")).score for p in image_files(line_good)]
    assert sum(s >= t.image for s in scores) == round(t.details["observed_frr"] * 40)
    assert f"deploy {model.with_suffix('.json').name} beside it" in out
    alone = tmp_path / "alone" / model.name  # what the warning is about: the graph copied without model.json
    alone.parent.mkdir()
    shutil.copy(model, alone)
    old_default = before.thresholds[before.default_threshold]
    assert old_default.image != t.image
    with Detector(alone) as lone:
        assert (lone.image_threshold, lone.pixel_threshold) == (old_default.image, old_default.pixel)
    defects = tmp_path / "line_defects"
    defects.mkdir()
    kind = next(d for d in sorted((data_root / "ball_screw" / "test").iterdir()) if d.name != "good")
    for p in image_files(kind)[:10]:  # real defects of the set
        shutil.copy(p, defects / p.name)
    assert main(["threshold", "--model", str(model), "--good", str(line_good), "--defect", str(defects),
                 "--default", "f1", "--no-progress"]) == 0
    again = ModelInfo.read(model)
    assert again.default_threshold == "f1" and "f1" in again.thresholds
    assert [e["thresholds"] for e in again.threshold_history] == [entry["thresholds"],
                                                                  {n: v.to_dict() for n, v in after.thresholds.items()}]


def test_good_images_that_drifted_are_refused_and_nothing_is_written(model, line_good, tmp_path, capsys):
    info = ModelInfo.read(model)
    assert info.drift_reference  # cfrg export wrote one
    darker = tmp_path / "darker"
    darker.mkdir()
    for p in image_files(line_good):
        cv2.imwrite(str(darker / p.name), drifted(read_image(p, "bgr"), "batch", 1.0, (info.input.height,
                                                                                     info.input.width)))
    written = model.with_suffix(".json").read_bytes()
    assert main(["threshold", "--model", str(model), "--good", str(darker)]) == EXIT_DATA
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no longer look like the images model.onnx was exported with" in err
    assert "--ignore-drift" in err and model.with_suffix(".json").read_bytes() == written
    assert main(["threshold", "--model", str(model), "--good", str(darker), "--ignore-drift", "--no-progress"]) == 0
    assert ModelInfo.read(model).threshold_history[-1]["drift_check"].startswith("ignored: ")


def test_an_engine_gets_its_own_description_rethresholded_with_the_fake_tensorrt(model, line_good, monkeypatch):
    """The engine runs through the rule-enforcing fake TensorRT (tests/fake_tensorrt.py, the parsed graph in ONNX
    Runtime): this proves the engine's model.json is the one rewritten, not that a real engine scores the same."""
    _install(monkeypatch)
    code, engine = _build(model, "--fp16", "--maxShapes=frames:8x64x128x3")
    assert code == 0
    onnx_side = model.with_suffix(".json").read_bytes()
    assert main(["threshold", "--model", str(engine), "--good", str(line_good), "--ignore-drift",
                 "--no-progress"]) == 0
    described = json.loads(engine.with_suffix(".json").read_text())
    assert described["engine"] and len(described["threshold_history"]) == 1
    assert model.with_suffix(".json").read_bytes() == onnx_side  # the ONNX model's description untouched


def test_too_few_good_images_or_f1_without_defects_are_refused_in_one_line(model, line_good, tmp_path, capsys):
    few = tmp_path / "few"
    few.mkdir()
    for p in image_files(line_good)[:5]:
        shutil.copy(p, few / p.name)
    assert main(["threshold", "--model", str(model), "--good", str(few)]) == EXIT_USAGE
    assert "5 good images" in capsys.readouterr().err
    assert main(["threshold", "--model", str(model), "--good", str(line_good), "--default", "f1"]) == EXIT_USAGE
    assert "--default f1: choose good_only, or f1 with --defect DIR" in capsys.readouterr().err

"""sdk.model_info: the one owner of model.json. Round trip, the upgrade of older descriptions, and one clear
refusal for every kind of bad description (unknown format, missing key, value out of range, graph mismatch)."""
import json
import math
import shutil

import numpy as np
import pytest

from sdk import Detector, ModelFileError
from sdk.model_info import FORMAT, ModelInfo, sidecar_path
from tests.conftest import DEMO_ROOT


def _copy(tmp_path, exported_model, description: dict | str, name: str = "m.onnx"):
    """The exported graph with another model.json beside it."""
    path = tmp_path / name
    shutil.copy(exported_model[1], path)
    text = description if isinstance(description, str) else json.dumps(description)
    sidecar_path(path).write_text(text)
    return path


def test_round_trip_and_what_the_exporter_wrote(exported_model):
    _, path, info = exported_model
    side = json.loads(sidecar_path(path).read_text())
    again = ModelInfo.from_dict(side, "model.json")
    assert again == info and again.to_dict() == side
    assert side["format"] == FORMAT and side["precision"] == "fp32"
    assert set(side["provenance"]) == {"source_model", "source_sha256", "data_fingerprint", "versions", "created"}
    assert side["provenance"]["versions"]["sdk"] and side["provenance"]["versions"]["torch"]


def test_a_model_json_without_a_drift_reference_still_loads_and_runs(tmp_path, exported_model):
    """Files exported before the drift reference existed: the same thresholds and scores, no drift watch."""
    _, path, info = exported_model
    assert info.drift_reference["n_images"] >= 1
    older = info.to_dict()
    del older["drift_reference"]
    det, ref = Detector(_copy(tmp_path, exported_model, older)), Detector(path)
    assert det.info.drift_reference == {} and "drift_reference" not in det.info.to_dict()
    assert (det.image_threshold, det.pixel_threshold) == (ref.image_threshold, ref.pixel_threshold)
    frame = np.full((90, 120, 3), 128, np.uint8)
    assert det(frame).score == ref(frame).score


def test_a_format_1_description_is_read_and_upgraded(tmp_path, exported_model):
    """model.json files from before provenance existed keep working: the same thresholds, the same results."""
    _, path, info = exported_model
    v1 = info.to_dict()
    prov = v1.pop("provenance")
    v1.update(format="cfrg-model-1", data_fingerprint=prov["data_fingerprint"], versions=prov["versions"])
    old = _copy(tmp_path, exported_model, v1)
    det, ref = Detector(old), Detector(path)
    assert det.info.format == FORMAT and det.info.provenance.data_fingerprint == prov["data_fingerprint"]
    assert det.info.provenance.source_sha256 is None
    assert (det.image_threshold, det.pixel_threshold) == (ref.image_threshold, ref.pixel_threshold)
    frame = np.full((90, 120, 3), 128, np.uint8)
    assert det(frame).score == ref(frame).score


def _without(d: dict, dotted: str) -> dict:
    d = json.loads(json.dumps(d))
    *parents, last = dotted.split(".")
    node = d
    for p in parents:
        node = node[p]
    del node[last]
    return d


def _with(d: dict, dotted: str, value) -> dict:
    d = json.loads(json.dumps(d))
    *parents, last = dotted.split(".")
    node = d
    for p in parents:
        node = node[p]
    node[last] = value
    return d


BAD = [
    (lambda d: _with(d, "format", "cfrg-model-9"), "unknown format 'cfrg-model-9'"),
    (lambda d: _with(d, "format", None), "unknown format None"),
    (lambda d: _without(d, "thresholds"), "missing key 'thresholds'"),
    (lambda d: _without(d, "input.height"), "missing key 'input.height'"),
    (lambda d: _without(d, "score_normalisation.scale"), "missing key 'score_normalisation.scale'"),
    (lambda d: _without(d, "outputs.score"), "'outputs' lacks ['score']"),
    (lambda d: _with(d, "score_normalisation.scale", 0), "'score_normalisation.scale' must be > 0"),
    (lambda d: _with(d, "score_normalisation.offset", "1"), "'score_normalisation.offset' must be a finite number"),
    (lambda d: _with(d, "input.colour_order", "HSV"), "'input.colour_order' must be one of RGB, BGR"),
    (lambda d: _with(d, "input.height", 0), "'input.height' must be a whole number >= 1"),
    (lambda d: _with(d, "input.dtype", "float32"), "3-channel uint8 NHWC"),
    (lambda d: _with(d, "thresholds.good_only.image", math.nan), "'thresholds.good_only.image' must be a finite"),
    (lambda d: _with(d, "thresholds.default", "strict"), "'thresholds.default' is 'strict'"),
    (lambda d: _with(d, "precision", "fp8"), "'precision' must be one of fp32, fp16, int8"),
    (lambda d: _with(d, "normalisation.std", [0.2, 0.0, 0.2]), "'normalisation.std' must be > 0"),
    (lambda d: [d], "expected a JSON object"),
    (lambda d: _with(d, "drift_reference.version", 7), "'drift_reference' version 7 is not 1"),
    (lambda d: _with(d, "drift_reference.grid", [0, 64]), "'drift_reference' 'grid' must be [height, width]"),
    (lambda d: _without(d, "drift_reference.statistics.sharpness"), "'statistics.sharpness' is missing"),
    (lambda d: _with(d, "drift_reference.statistics.brightness.std", -1.0),
     "'statistics.brightness.std' must be a finite number >= 0"),
]


@pytest.mark.parametrize("change,words", BAD)
def test_a_bad_description_is_refused_with_one_message_naming_file_problem_and_fix(tmp_path, exported_model,
                                                                                    change, words):
    path = _copy(tmp_path, exported_model, change(exported_model[2].to_dict()))
    with pytest.raises(ModelFileError) as info:
        Detector(path)
    message = str(info.value)
    assert words in message and str(sidecar_path(path)) in message and "cfrg export" in message
    assert "\n" not in message


def test_a_description_of_another_graph_is_refused(tmp_path, exported_model):
    d = exported_model[2].to_dict()
    path = _copy(tmp_path, exported_model, _with(d, "input.name", "image"))
    with pytest.raises(ModelFileError, match="the graph has no input 'image'.*belongs to another model"):
        Detector(path)
    path = _copy(tmp_path, exported_model, _with(d, "input.width", d["input"]["width"] + 32), "w.onnx")
    with pytest.raises(ModelFileError, match="graph input is .* but w.json says .* do not match"):
        Detector(path)


def test_no_description_at_all(tmp_path, exported_model):
    """Neither model.json nor the ONNX metadata: the Detector says how to get one."""
    import onnx

    proto = onnx.load(str(exported_model[1]))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ModelFileError, match="no CFRG model description .*cfrg export"):
        Detector(bare)


@pytest.mark.parametrize("threshold,words", [(math.nan, "not a finite number"), (math.inf, "not a finite number"),
                                             ("strict", "this model has"), (None, "a name or a number")])
def test_detector_refuses_a_threshold_that_would_pass_everything(exported_model, threshold, words):
    with pytest.raises(ValueError, match=words):
        Detector(exported_model[1], threshold=threshold)


def test_the_exported_model_runs_the_demo_images_through_its_description(exported_model):
    """The description read through ModelInfo drives the Detector: size, colour order and thresholds."""
    det = Detector(exported_model[1], threshold="f1")
    info = exported_model[2]
    assert det.size == (info.input.height, info.input.width) and det.model_colour == "rgb"
    assert det.image_threshold == info.thresholds["f1"].image
    frame = __import__("cv2").imread(str(sorted((DEMO_ROOT / "ball_screw" / "test" / "pitting").glob("*.jpg"))[0]))
    r = det(frame)
    assert r.normalised_score == pytest.approx(info.normalise_score(r.score))
    assert r.normalized_score == r.normalised_score  # the older spelling, read-only
    with pytest.raises(AttributeError):
        r.normalized_score = 0.0


def test_a_model_json_of_another_export_beside_the_graph_is_refused(exported_model, tmp_path):
    """A crash between writing model.onnx and model.json (or a model.json copied from another export) would pair
    the graph with another export's thresholds: the provenance of the description inside the graph says so."""
    import json
    import shutil

    from sdk import Detector, ModelFileError

    shutil.copy(exported_model[1], tmp_path / "model.onnx")
    d = json.loads(exported_model[1].with_suffix(".json").read_text())
    d["provenance"]["created"] = "2020-01-01T00:00:00Z"
    (tmp_path / "model.json").write_text(json.dumps(d))
    with pytest.raises(ModelFileError, match="belongs to another export"):
        Detector(tmp_path / "model.onnx")
    (tmp_path / "model.json").unlink()
    assert Detector(tmp_path / "model.onnx").info.provenance.created != "2020-01-01T00:00:00Z"

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("CFRG_DATA", ROOT.parent / "shared" / "data"))
DEMO_ROOT = ROOT / "sdk" / "demo"


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "magnetic_tile").is_dir():
        pytest.skip(f"real data not found at {DATA_ROOT} (set CFRG_DATA)")
    return DATA_ROOT


EXPORT_SIZE = (64, 128)
# a batch of N against single calls: float32 convolutions may differ in the last bits, and the score is a sum
# of z-scores (divided by small good-image spreads), so scores agree to 1e-4, not 1e-5
BATCH_SCORE_TOLERANCE = dict(rel=1e-4, abs=1e-4)


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory):
    """A CFRG trained for a few steps on the built-in demo subset and exported (thresholds measured on
    its held-back good images).

    Returns (torch model, path of model.onnx, model description). Good for numerics and plumbing,
    not for detection quality.
    """
    from export.checkpoint import load_checkpoint
    from export.onnx_export import export_checkpoint
    from export.train import TrainArgs, train

    out = tmp_path_factory.mktemp("export")
    train(TrainArgs(data=str(DEMO_ROOT), category="ball_screw", scale="whole", out=str(out / "run"), image_size=EXPORT_SIZE,
                    steps=4, time_budget=0, batch_size=4, progress=False, final_eval=False))
    onnx_path = out / "model.onnx"
    info = export_checkpoint(out / "run" / "model.pt", onnx_path, defect_split="test", progress=False)
    model, _ = load_checkpoint(out / "run" / "model.pt")
    return model, onnx_path, info


@pytest.fixture(scope="session")
def precision_graphs(exported_model, tmp_path_factory):
    """The exported FP32 graph and its three precision graphs, calibrated on the run's held-back good images."""
    import shutil

    from sdk.build.precision import precision_path, write_precision_graph
    from sdk.run_record import RunRecord

    folder = tmp_path_factory.mktemp("precision")
    fp32 = folder / "model.onnx"
    shutil.copy(exported_model[1], fp32)
    shutil.copy(exported_model[1].with_suffix(".json"), folder / "model.json")
    run = RunRecord.read(exported_model[1].parent / "run")
    calib = [str(p) for p in run.holdout_files]
    # accept_drop: a model of 4 training steps scores parts alike, so its verdicts flip at any precision; the check
    # itself is tested in tests/test_precision_check.py
    infos = {p: write_precision_graph(fp32, p, precision_path(fp32, p), calib_files=calib, accept_drop=True,
                                      warn=lambda text: None) for p in ("fp16", "int8", "cpu-int8")}
    return fp32, infos, calib

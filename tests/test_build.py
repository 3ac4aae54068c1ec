"""`cfrg build` (trtexec flags, the plan, the precision graph, no engine without TensorRT, no torch needed) and
`cfrg bench`."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from sdk.run_record import RunRecord
from sdk import cli
from sdk.cli import main
from tests.conftest import DEMO_ROOT, ROOT


@pytest.fixture()
def model(exported_model, tmp_path):
    shutil.copy(exported_model[1], tmp_path / "model.onnx")
    shutil.copy(exported_model[1].with_suffix(".json"), tmp_path / "model.json")
    calib = tmp_path / "good"
    calib.mkdir()
    for p in RunRecord.read(exported_model[1].parent / "run").holdout_files:
        shutil.copy(p, calib / p.name)
    return tmp_path / "model.onnx", calib


def test_dry_run_prints_the_plan_and_the_trtexec_line_and_writes_nothing(model, capsys):
    onnx_path, _ = model
    before = sorted(p.name for p in onnx_path.parent.iterdir())
    assert main(["build", "--onnx", str(onnx_path), "--int8", "--useDLACore=0", "--allowGPUFallback",
                 "--minShapes=frames:4x64x128x3", "--maxShapes=frames:4x64x128x3", "--memPoolSize=workspace:2G",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "DLA core 0 with GPU fallback" in out and "max 4x64x128x3" in out and "2048 MiB" in out
    assert "TensorRT 10.3 (JetPack 6" in out and "TensorRT 11.x: refused" in out
    assert "patch-memory search and its soft max" in out and "model.int8-dla0.engine" in out
    [dla_line] = [line for line in out.splitlines() if "trtexec: trtexec" in line]
    assert f"--onnx={onnx_path} " in dla_line and "--int8 --fp16 --calib=" in dla_line and "--noTF32" in dla_line
    assert "--precisionConstraints=prefer '--layerPrecisions=*:fp32,/model/teacher/*:fp16" in dla_line
    assert "--useDLACore=0 --allowGPUFallback" in dla_line and "--stronglyTyped" not in dla_line
    assert sorted(p.name for p in onnx_path.parent.iterdir()) == before


@pytest.mark.parametrize("args,words", [
    (["--fp16", "--stronglyTyped"], "--stronglyTyped cannot be combined"),
    (["--fp16", "--calib", "x"], "--calib is for INT8"),
    (["--fp16", "--allowGPUFallback"], "--allowGPUFallback needs --useDLACore"),
    (["--useDLACore=0"], "DLA runs FP16 or INT8 only"),
    (["--fp16", "--minShapes=frames:1x64x64x3"], "the model takes frames:Nx64x128x3"),
    (["--fp16", "--minShapes=frames:4x64x128x3", "--maxShapes=frames:2x64x128x3"], "min <= opt <= max"),
    (["--fp16", "--builderOptimizationLevel=9"], "give 0 to 5"),
    (["--fp16", "--workspace=10"], "unknown option --workspace=10"),
    (["--int8", "--useDLACore=0", "--allowGPUFallback", "--maxShapes=frames:4x64x128x3"], "DLA needs static shapes"),
    (["--fp16", "--saveEngine={dir}/model.engine"], "would replace the one of model.onnx"),
    (["--fp16", "--useDLACore=0", "--stronglyTyped"], "--stronglyTyped cannot be combined"),
])
def test_conflicting_or_unknown_flags_are_trtexec_like_errors(model, args, words, capsys):
    onnx_path, _ = model
    args = [a.replace("{dir}", str(onnx_path.parent)) for a in args]
    try:
        code = main(["build", "--onnx", str(onnx_path), *args])
        err = capsys.readouterr().err
    except SystemExit as exc:
        code, err = exc.code, capsys.readouterr().err
    assert code == cli.EXIT_USAGE and words in err and "Traceback" not in err


def skip_where_tensorrt_is_installed() -> None:
    """The builds below end where TensorRT is missing (exit 8); where it is installed, tests/gpu builds engines."""
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here: tests/gpu builds real engines")
    except ImportError:
        pass


def test_build_without_tensorrt_writes_the_precision_graph_and_says_why_no_engine(model, capsys):
    skip_where_tensorrt_is_installed()
    onnx_path, calib = model
    code = main(["build", "--onnx", str(onnx_path), "--int8", f"--calib={calib}", "--no-progress"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_NO_ENGINE and "no engine built: TensorRT is not installed here" in err
    graph = onnx_path.with_name("model.int8.onnx")
    side = json.loads(graph.with_suffix(".json").read_text())
    assert side["precision"] == "int8" and not onnx_path.with_suffix(".engine").exists()
    assert onnx_path.with_name("model.int8.calib.json").is_file()  # reused by the next build
    code = main(["build", "--onnx", str(onnx_path), "--fp16", "--data", str(DEMO_ROOT), "--category", "ball_screw",
                 "--no-progress"])
    out = capsys.readouterr().out
    assert code == cli.EXIT_NO_ENGINE and "model.fp16.onnx" in out and "difference" in out


# a subprocess whose meta-path blocker, set before any import, refuses torch, torchvision and export
BLOCKED = ("torch", "torchvision", "export")
PARSER_DECLARATIONS = ("export", "export.options", "export.config", "export.map_options")

SCRIPT = """
import importlib, importlib.abc, json, pkgutil, sys

BLOCKED, PARSER_DECLARATIONS = %r, %r


class Blocker(importlib.abc.MetaPathFinder):
    tried, allowed = [], ()

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED and name not in self.allowed:
            self.tried.append(name)
            raise ModuleNotFoundError(f"{name} is blocked: a Jetson has no torch and no factory", name=name)
        return None


sys.meta_path.insert(0, Blocker())
for name in BLOCKED:
    try:
        importlib.import_module(name)
        raise SystemExit(f"the blocker let {name} through")
    except ImportError:
        pass
Blocker.tried.clear()

import sdk.build

modules = [f"sdk.build.{m.name}" for m in pkgutil.iter_modules(sdk.build.__path__)]
for name in modules:
    importlib.import_module(name)
loaded_by_build = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)

Blocker.allowed = PARSER_DECLARATIONS
from sdk.cli import main

onnx_path = sys.argv[1]
codes = [main(["build", "--onnx", onnx_path, "--int8", "--dry-run", "--no-progress"]),
         main(["build", "--onnx", onnx_path, "--fp16", "--no-progress"])]
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print("RESULT " + json.dumps({"modules": modules, "loaded_by_build": loaded_by_build, "codes": codes,
                              "loaded": loaded, "tried": Blocker.tried}))
""" % (BLOCKED, PARSER_DECLARATIONS)


def test_sdk_build_and_cfrg_build_run_where_torch_and_the_factory_cannot_be_imported(model):
    """The Jetson claim of sdk.build: without torch and without the factory (the `export` package), sdk.build and
    each of its modules import; `cfrg build --dry-run` then plans an INT8 build (its rule check makes the Q/DQ graph,
    calibrated on the held-back images the run recorded) and `cfrg build --fp16` writes the FP16 graph and checks it
    against FP32. For the two commands the blocker lets through only the plain-data option declarations that the
    `cfrg` parser reads for every command (export.options, export.config, export.map_options: no torch)."""
    skip_where_tensorrt_is_installed()
    onnx_path, _ = model
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(onnx_path)], cwd=onnx_path.parent, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(line[len("RESULT "):])
    assert {"sdk.build.command", "sdk.build.engine", "sdk.build.plan", "sdk.build.precision"} <= set(result["modules"])
    assert result["loaded_by_build"] == []  # sdk.build itself: no torch, nothing of export
    assert set(result["loaded"]) <= set(PARSER_DECLARATIONS)
    assert result["codes"] == [0, 8], done.stderr[-4000:]  # 8: the FP16 graph written, no TensorRT for the engine
    assert "trtexec: trtexec" in done.stdout and "calibrating and checking on the" in done.stdout
    assert "checked against FP32" in done.stdout and onnx_path.with_name("model.fp16.onnx").is_file()
    assert not onnx_path.with_name("model.int8.onnx").exists()  # the dry run wrote nothing


def test_bench_compares_models_in_one_run(model, tmp_path, capsys):
    onnx_path, calib = model
    assert main(["build", "--onnx", str(onnx_path), "--fp16", "--no-progress"]) == cli.EXIT_NO_ENGINE
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(onnx_path), "--model", str(onnx_path.with_name("model.fp16.onnx")),
                 "--batch", "2", "--iterations", "6", "--warmup", "1", "--json", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "latency ms: min" in text and "p99" in text and "speed-up against" in text
    rows = json.loads(out.read_text())
    assert [r["precision"] for r in rows] == ["fp32", "fp16"] and all(r["iterations"] == 6 for r in rows)
    assert all(r["min_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["p99_ms"] for r in rows)

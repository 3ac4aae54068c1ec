"""The field commands (`cfrg run`, `cfrg eval --model model.onnx`) run where PyTorch is not installed, as on
a Jetson that only deploys; the factory commands then say how to install it. Each command runs in a
subprocess whose Python cannot import torch."""
import json
import subprocess
import sys

import pytest

from tests.conftest import DEMO_ROOT, ROOT

NO_TORCH = (
    "import sys\n"
    "sys.modules['torch'] = None  # import torch now raises ImportError, as where it is not installed\n"
    "from sdk.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "assert not [m for m in sys.modules if m.startswith('torch.') or m in ('export.model', 'export.train')]\n"
    "sys.exit(code)\n"
)


def cfrg_without_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)


def test_run_and_eval_of_an_onnx_model_without_torch(tmp_path, exported_model):
    model = str(exported_model[1])
    folder = DEMO_ROOT / "ball_screw" / "test" / "pitting"
    run = cfrg_without_torch("run", "--model", model, "--source", str(folder), "--out", str(tmp_path / "out"),
                             "--no-progress")
    assert run.returncode == 0, run.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "out" / "verdicts.jsonl").read_text().splitlines()]
    assert len(records) == len(list(folder.glob("*.jpg"))) and all(r["status"] == "ok" for r in records)
    evaluation = cfrg_without_torch("eval", "--model", model, "--data", str(DEMO_ROOT), "--category", "ball_screw",
                                    "--json", str(tmp_path / "m.json"), "--no-progress")
    assert evaluation.returncode == 0, evaluation.stderr[-2000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and metrics["n_images"] == 32


@pytest.mark.parametrize("args", [
    ["train", "--data", str(DEMO_ROOT), "--category", "ball_screw", "--out", "unused"],
    ["export", "CHECKPOINT", "-o", "unused.onnx"],
    ["eval", "--model", "CHECKPOINT", "--data", str(DEMO_ROOT), "--category", "ball_screw"],
    ["demo", "--out", "unused"],
])
def test_factory_commands_without_torch_say_how_to_install_it(args, exported_model, tmp_path):
    checkpoint = str(exported_model[1].parent / "run" / "model.pt")
    done = cfrg_without_torch(*[checkpoint if a == "CHECKPOINT" else a for a in args])
    assert done.returncode == 5 and "Traceback" not in done.stderr  # 5: a dependency is missing
    assert "needs the factory side" in done.stderr and "pip install 'cfrg-inspect[train]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (ROOT / "unused").exists()


def test_help_lists_every_command_without_torch():
    done = cfrg_without_torch("--help")
    assert done.returncode == 0 and all(c in done.stdout for c in ("train", "eval", "export", "run", "demo"))


def test_build_dry_run_and_its_rule_check_run_without_torch(tmp_path, exported_model):
    """cfrg build on a Jetson: the plan, TensorRT's rules and the FP16 graph need onnx, not PyTorch."""
    import shutil

    shutil.copy(exported_model[1], tmp_path / "model.onnx")
    shutil.copy(exported_model[1].with_suffix(".json"), tmp_path / "model.json")
    done = cfrg_without_torch("build", "--onnx", str(tmp_path / "model.onnx"), "--fp16", "--useDLACore=0",
                              "--allowGPUFallback", "--tensorrt", "10.3", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "no violation of TensorRT's documented rules" in done.stdout and "run on the GPU, not DLA" in done.stdout
    done = cfrg_without_torch("build", "--onnx", str(tmp_path / "model.onnx"), "--int8", "--dry-run", "--no-progress")
    assert done.returncode == 0 and done.stdout.count("no violation") == 3, done.stderr

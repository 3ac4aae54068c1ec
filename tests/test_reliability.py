"""A factory tool never passes a bad part by mistake and never loses a result: each case below once ended in
lost output, a silently wrong verdict or a traceback, and now validates before acting, refuses in one line
with a distinct exit code, and keeps what was there."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch

from sdk import cli
from sdk.cli import main
from tests.conftest import DEMO_ROOT, ROOT

TEST_IMAGES = DEMO_ROOT / "ball_screw" / "test" / "pitting"


def _cfrg(capsys, *args) -> tuple[int, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's refusals exit from inside parse_args
        code = exc.code
    err = capsys.readouterr().err
    return code, err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_run_with_a_source_that_cannot_open_keeps_the_previous_run(tmp_path, exported_model, capsys):
    out = tmp_path / "out"
    assert main(["run", "--model", str(exported_model[1]), "--source", str(TEST_IMAGES), "--out", str(out),
                 "--video", "v.mp4", "--max-frames", "3", "--no-progress"]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert (out / "verdicts.jsonl").stat().st_size > 0 and (out / "v.mp4").is_file()
    code, err = _cfrg(capsys, "run", "--model", exported_model[1], "--source", tmp_path / "no_such_video.mp4",
                      "--out", out, "--video", "v.mp4", "--no-progress")
    assert code == cli.EXIT_DATA and "no_such_video.mp4" in _one_line(err)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # nothing emptied, no temporary video, no new folder
    fresh = tmp_path / "fresh"
    code, _ = _cfrg(capsys, "run", "--model", exported_model[1], "--source", tmp_path / "nope", "--out", fresh,
                    "--no-progress")
    assert code == cli.EXIT_DATA and not fresh.exists()


def test_max_frames_writes_exactly_that_many_records(tmp_path, exported_model, capsys):
    out = tmp_path / "out"
    assert main(["run", "--model", str(exported_model[1]), "--source", str(TEST_IMAGES), "--out", str(out),
                 "--max-frames", "5", "--batch-size", "2", "--no-progress"]) == 0
    lines = (out / "verdicts.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame_id"] for line in lines] == [0, 1, 2, 3, 4]
    assert len(list((out / "masks").glob("*.png"))) == 5 and "5 frames" in capsys.readouterr().out


@pytest.mark.parametrize("args,code,words", [
    (["run", "--threshold", "nan"], cli.EXIT_USAGE, "finite"),
    (["run", "--threshold", "inf"], cli.EXIT_USAGE, "finite"),
    (["run", "--threshold", "strict"], cli.EXIT_USAGE, "this model has"),
    (["run", "--batch-size", "0"], cli.EXIT_USAGE, ">= 1"),
    (["run", "--max-frames", "-5"], cli.EXIT_USAGE, ">= 1"),
    (["run", "--min-area", "-1"], cli.EXIT_USAGE, ">= 0"),
    (["run", "--video", "../x.mp4", "--out", "OUT"], cli.EXIT_USAGE, "file name"),
    (["eval", "--batch-size", "0"], cli.EXIT_USAGE, ">= 1"),
    (["eval", "--fpr-limit", "0"], cli.EXIT_USAGE, "(0, 1]"),
])
def test_bad_field_options_are_one_line_errors(args, code, words, tmp_path, exported_model, capsys):
    common = {"run": ["--model", exported_model[1], "--source", TEST_IMAGES, "--no-progress"],
              "eval": ["--model", exported_model[1], "--data", DEMO_ROOT, "--category", "ball_screw"]}
    argv = [args[0], *common[args[0]], *[str(tmp_path / "o") if a == "OUT" else a for a in args[1:]]]
    got, err = _cfrg(capsys, *argv)
    assert got == code and words in _one_line(err) and "usage:" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag,value", [("--threads", "-1"), ("--recovery-width", "0"), ("--time-budget", "nan"),
                                        ("--holdout", "1.5"), ("--steps", "1.5")])
def test_bad_training_options_stop_before_anything_is_written(tmp_path, flag, value, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", str(DEMO_ROOT), "--category", "ball_screw", "--out", str(out), flag, value])
    assert exc.value.code == cli.EXIT_USAGE and flag in capsys.readouterr().err and not out.exists()


def test_an_output_folder_that_is_a_file_is_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / "run"
    blocker.write_text("a file where the run folder should be")
    code, err = _cfrg(capsys, "train", "--data", DEMO_ROOT, "--category", "ball_screw", "--out", blocker,
                      "--steps", "2", "--no-progress")
    assert code == cli.EXIT_OUTPUT and str(blocker) in _one_line(err)
    assert blocker.read_text() == "a file where the run folder should be"


def test_eval_and_export_check_their_outputs_before_the_long_work(tmp_path, exported_model, capsys, monkeypatch):
    from sdk import evaluate

    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    predicted = []
    monkeypatch.setattr(evaluate, "predict_dataset", lambda *a, **k: predicted.append(1))
    code, err = _cfrg(capsys, "eval", "--model", exported_model[1], "--data", DEMO_ROOT, "--category", "ball_screw",
                      "--json", blocker / "m.json", "--no-progress")
    assert code == cli.EXIT_OUTPUT and "is a file, not a folder" in _one_line(err) and not predicted
    code, err = _cfrg(capsys, "export", exported_model[1].parent / "run" / "model.pt", "-o", blocker / "m.onnx",
                      "--no-progress")
    assert code == cli.EXIT_OUTPUT and "is a file, not a folder" in _one_line(err)


def _run_copy(tmp_path, exported_model) -> tuple:
    """A copy of the exported model's training run (model.pt and config.json) to damage."""
    run = tmp_path / "run"
    shutil.copytree(exported_model[1].parent / "run", run)
    return run / "model.pt", run / "config.json"


def test_held_back_paths_outside_the_data_root_are_refused(tmp_path, exported_model, capsys):
    """A crafted config.json could point the threshold measurement at any image (one that passes everything)."""
    checkpoint, config = _run_copy(tmp_path, exported_model)
    cfg = json.loads(config.read_text())
    for bad in (["../../../../etc/passwd"], ["/" + str(TEST_IMAGES / "x.jpg").lstrip("/")]):
        config.write_text(json.dumps(dict(cfg, holdout=bad)))
        code, err = _cfrg(capsys, "export", checkpoint, "-o", tmp_path / "m.onnx", "--no-progress")
        assert code == cli.EXIT_MODEL and "outside the data root" in _one_line(err)
        assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("damage,words", [
    (lambda ckpt: {**ckpt, "config": {**ckpt["config"], "recovery_width": 64}}, "does not match its weights"),
    (lambda ckpt: {k: v for k, v in ckpt.items() if k != "state_dict"}, "lacks ['state_dict']"),
    (lambda ckpt: {**ckpt, "config": {**ckpt["config"], "memory_size": "many"}}, "does not match its weights"),
])
def test_a_damaged_checkpoint_is_one_line(tmp_path, exported_model, damage, words, capsys):
    checkpoint, _ = _run_copy(tmp_path, exported_model)
    torch.save(damage(torch.load(checkpoint, weights_only=True)), checkpoint)
    for args in (["export", checkpoint, "-o", tmp_path / "m.onnx"],
                 ["eval", "--model", checkpoint, "--data", DEMO_ROOT, "--category", "ball_screw"]):
        code, err = _cfrg(capsys, *args, "--no-progress")
        assert code == cli.EXIT_MODEL and words in _one_line(err) and str(checkpoint) in err


@pytest.mark.parametrize("edit", [lambda c: {**c, "train": "not an object"}, lambda c: {**c, "holdout": 3},
                                  lambda c: {k: v for k, v in c.items() if k != "train"}, lambda c: "[1, 2"])
def test_a_damaged_run_record_is_one_line(tmp_path, exported_model, edit, capsys):
    checkpoint, config = _run_copy(tmp_path, exported_model)
    changed = edit(json.loads(config.read_text()))
    config.write_text(changed if isinstance(changed, str) else json.dumps(changed))
    code, err = _cfrg(capsys, "export", checkpoint, "-o", tmp_path / "m.onnx", "--no-progress")
    assert code == cli.EXIT_MODEL and "not a valid run record" in _one_line(err)


def test_export_or_eval_interrupted_leaves_nothing_half_written(tmp_path, exported_model, monkeypatch, capsys):
    from sdk.build import thresholds
    from sdk import evaluate

    checkpoint, _ = _run_copy(tmp_path, exported_model)
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.onnx").write_bytes(b"an earlier export")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(thresholds, "measure_thresholds", interrupted)
    code, _ = _cfrg(capsys, "export", checkpoint, "-o", out / "m.onnx", "--no-progress")
    assert code == cli.EXIT_INTERRUPTED and os.listdir(out) == ["m.onnx"]
    assert (out / "m.onnx").read_bytes() == b"an earlier export"
    monkeypatch.setattr(evaluate.metrics, "evaluate_all", interrupted)
    code, _ = _cfrg(capsys, "eval", "--model", exported_model[1], "--data", DEMO_ROOT, "--category", "ball_screw",
                    "--json", out / "metrics.json", "--no-progress")
    assert code == cli.EXIT_INTERRUPTED and os.listdir(out) == ["m.onnx"]


def _interrupt_training(tmp_path, signum: int) -> tuple[int, str, list[str]]:
    """A real `cfrg train` process, sent `signum` once its training loop runs; (exit code, stderr, argv)."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "sdk.cli", "train", "--data", str(DEMO_ROOT), "--category", "ball_screw",
            "--out", str(out), "--scale", "whole", "--image-size", "64x128", "--batch-size", "2", "--steps", "100000", "--threads", "1"]
    log = tmp_path / "train.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(argv, stderr=err, stdout=subprocess.DEVNULL, cwd=ROOT)
        deadline = time.monotonic() + 240
        while "train ball_screw" not in log.read_text() and time.monotonic() < deadline:  # the loop's progress bar
            time.sleep(0.2)
        time.sleep(2.0)
        proc.send_signal(signum)
        code = proc.wait(timeout=240)
    return code, log.read_text(), argv


def test_ctrl_c_during_training_keeps_the_finished_steps_and_resume_continues(tmp_path):
    """SIGINT to a real `cfrg train` process: it stops at a step boundary, saves last.pt and exits 130; the
    same command with --resume goes on from that step."""
    code, text, argv = _interrupt_training(tmp_path, signal.SIGINT)
    out = tmp_path / "run"
    assert code == cli.EXIT_INTERRUPTED and "SIGINT at step" in text and "--resume" in text, text[-2000:]
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] > 0 and not (out / "model.pt").exists()
    done = subprocess.run(argv[:-4] + ["--steps", str(state["step"] + 3), "--resume", "--no-progress"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from {out / 'last.pt'} at step {state['step']}" in done.stdout
    assert torch.load(out / "model.pt", weights_only=True)["extra"]["train"]["steps"] == state["step"] + 3


def test_sigterm_during_training_is_handled_like_ctrl_c(tmp_path):
    code, text, _ = _interrupt_training(tmp_path, signal.SIGTERM)
    assert code == cli.EXIT_INTERRUPTED and "SIGTERM at step" in text
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] > 0


def test_a_frame_of_nan_scores_is_never_a_verdict(exported_model):
    """A model output that is not finite (a broken engine, a damaged graph) gives an error record, not "ok"."""
    from sdk import Detector, Stream

    det = Detector(exported_model[1])
    frame = cv2.imread(str(sorted(TEST_IMAGES.glob("*.jpg"))[0]))
    maps, scores = det.infer(det.preprocess([frame]))
    with pytest.raises(ValueError, match="not finite"):
        det.postprocess([frame], (maps, np.full_like(scores, np.nan)))
    det.infer = lambda batch: (maps, np.full(len(batch), np.nan, np.float32))
    with Stream(det, [frame, frame]) as stream:
        records = list(stream)
    assert [r.status for r in records] == ["error", "error"] and "not finite" in records[0].error


def test_every_output_of_a_run_gets_the_usual_permissions(tmp_path, exported_model):
    """Files written through temporary names (mkstemp makes them 0600) end with the mode a plain open() gives."""
    out = tmp_path / "out"
    assert main(["run", "--model", str(exported_model[1]), "--source", str(TEST_IMAGES), "--out", str(out),
                 "--video", "v.mp4", "--max-frames", "2", "--no-progress"]) == 0
    mask = os.umask(0)
    os.umask(mask)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == 7 and {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~mask)}  # + RUN.json


@pytest.mark.parametrize("make,words", [
    (lambda d: __import__("sdk").VideoSink(d / "v.mp4", fps=float("nan")), "fps must be a finite number"),
    (lambda d: __import__("sdk").VideoSink(d / "v.mp4", alpha=2), "alpha must be a number in [0, 1]"),
    (lambda d: __import__("sdk").OverlaySink(d / "o", map_range=(1, float("inf"))), "two finite numbers"),
    (lambda d: __import__("sdk").OverlaySink(d / "o", map_range=(2, 1)), "lo < hi"),
    (lambda d: __import__("sdk").MaskSink(d / "file.txt" / "masks"), "is a file, not a folder"),
])
def test_sink_options_are_checked_when_the_sink_is_made(tmp_path, make, words):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises((ValueError, OSError)) as info:
        make(tmp_path)
    assert words in str(info.value) and sorted(os.listdir(tmp_path)) == ["file.txt"]


# -- the second reliability pass (issue: nothing lost when the disk fills or the process is stopped) ---------------


def _long_source(tmp_path, passes=4):
    folder = tmp_path / "frames"
    folder.mkdir()
    for n in range(passes):
        for k, image in enumerate(sorted(DEMO_ROOT.glob("ball_screw/test/*/*.jpg"))):
            (folder / f"{n}_{k:03d}_{image.name}").symlink_to(image)
    return folder


def _default_sigint():
    """A job started in the background of a shell inherits SIGINT ignored (POSIX); a person's terminal does not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_process(*args):
    return subprocess.Popen([sys.executable, "-m", "sdk.cli", *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def _run_until_masks(tmp_path, exported_model, out):
    """A real `cfrg run` of a long source into out, once its incomplete unit has its first masks."""
    proc = _run_process("run", "--model", exported_model[1], "--source", _long_source(tmp_path), "--out", out,
                        "--no-progress")
    partial = out.with_name(out.name + ".incomplete")
    deadline = time.monotonic() + 60
    while not (partial / "masks").is_dir() and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc, partial


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_run_keeps_the_previous_complete_unit_and_says_where_each_is(tmp_path, exported_model, signum):
    """Ctrl-C used to replace 200 whole verdict lines by 147; SIGTERM exited 143 with no message, left a hidden
    log and a folder of two runs' masks."""
    out = tmp_path / "out"
    assert main(["run", "--model", str(exported_model[1]), "--source", str(TEST_IMAGES), "--out", str(out),
                 "--max-frames", "4", "--no-progress"]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc, partial = _run_until_masks(tmp_path, exported_model, out)
    time.sleep(0.5)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    line = _one_line(err)
    assert proc.returncode == cli.EXIT_INTERRUPTED and "interrupted" in line
    assert f"previous complete run is still in {out}" in line and f"partial output is in {partial}" in line
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    state = json.loads((partial / "RUN.json").read_text())
    assert state["status"] == "incomplete" and "interrupted" in state["reason"]
    assert state["holds"]["records"] == len((partial / "verdicts.jsonl").read_text().splitlines()) > 0
    assert not list(tmp_path.rglob(".*"))  # no hidden temporary file anywhere
    code = main(["run", "--model", str(exported_model[1]), "--source", str(TEST_IMAGES), "--out", str(out),
                 "--max-frames", "2", "--no-progress"])
    assert code == 0 and not partial.exists() and json.loads((out / "RUN.json").read_text())["frames"] == 2


def test_a_sigkilled_run_leaves_a_running_unit_that_the_next_run_replaces(tmp_path, exported_model, capsys):
    out = tmp_path / "out"
    proc, partial = _run_until_masks(tmp_path, exported_model, out)
    proc.kill()
    proc.communicate(timeout=60)
    assert not out.exists() and json.loads((partial / "RUN.json").read_text())["status"] == "running"
    code = main(["run", "--model", str(exported_model[1]), "--source", str(TEST_IMAGES), "--out", str(out),
                 "--max-frames", "2", "--no-progress"])
    assert code == 0 and "replacing the incomplete run left in" in capsys.readouterr().err and not partial.exists()


def test_a_folder_of_other_files_is_never_replaced_by_a_run(tmp_path, exported_model, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, err = _cfrg(capsys, "run", "--model", exported_model[1], "--source", TEST_IMAGES, "--out", tmp_path,
                      "--no-progress")
    assert code == cli.EXIT_USAGE and "holds files a run did not write (notes.txt" in _one_line(err)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_sigterm_during_export_leaves_no_temporary_onnx_and_the_old_model(tmp_path, exported_model):
    checkpoint, _ = _run_copy(tmp_path, exported_model)
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.onnx").write_bytes(b"an earlier export")
    proc = _run_process("export", checkpoint, "-o", out / "m.onnx", "--no-progress")
    deadline = time.monotonic() + 120
    while not list(out.glob(".m.*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == cli.EXIT_INTERRUPTED and "interrupted (SIGTERM)" in _one_line(err), err
    assert os.listdir(out) == ["m.onnx"] and (out / "m.onnx").read_bytes() == b"an earlier export"


def test_numeric_options_are_bounded_where_the_library_below_is(tmp_path, exported_model, capsys):
    for flag, value, words in (("--min-area", "99999999999999999999999", "from 0 to 9223372036854775807"),
                               ("--batch-size", "100000", "from 1 to 4096"), ("--tile-scale", "1000", "(0, 64]")):
        code, err = _cfrg(capsys, "run", "--model", exported_model[1], "--source", TEST_IMAGES, flag, value)
        assert code == cli.EXIT_USAGE and words in _one_line(err) and "usage:" not in err


def test_a_tile_scale_that_leaves_no_model_pixels_is_an_error_not_a_verdict(exported_model):
    from sdk import Detector

    det = Detector(exported_model[1], tiling=True, tile_scale=0.001)
    frame = cv2.imread(str(sorted(TEST_IMAGES.glob("*.jpg"))[0]))
    with pytest.raises(ValueError, match="model needs at least 32 a side") as info:
        det(frame)
    assert "give a scale of at least 0.06957" in str(info.value)


def test_eval_of_a_split_without_defects_is_refused_and_undefined_metrics_are_null(tmp_path, exported_model, capsys):
    from sdk.evaluate import undefined_as_null

    root = tmp_path / "data"
    shutil.copytree(DEMO_ROOT / "ball_screw" / "train", root / "part" / "train")
    shutil.copytree(DEMO_ROOT / "ball_screw" / "test" / "good", root / "part" / "test" / "good")
    code, err = _cfrg(capsys, "eval", "--model", exported_model[1], "--data", root, "--category", "part",
                      "--json", tmp_path / "m.json", "--no-progress")
    assert code == cli.EXIT_DATA and "no defect images" in _one_line(err) and not (tmp_path / "m.json").exists()
    result = undefined_as_null({"image_auroc": float("nan"), "pixel_auroc": 0.9, "aupro": 0.8, "pixel_ap": 0.5,
                                "per_defect": {}}, n_good=0, n_defect=5)
    assert result["image_auroc"] is None and result["undefined"] == {"image_auroc": "the split has no good images"}
    json.dumps(result, allow_nan=False)


def test_a_recursive_glob_through_a_symlink_loop_gives_each_image_once(tmp_path):
    from sdk.sources import open_source

    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(sorted(TEST_IMAGES.glob("*.jpg"))[0], folder / "a.jpg")
    (folder / "loop").symlink_to(folder)
    source = open_source(str(tmp_path / "**" / "*.jpg"))
    assert [os.path.basename(p) for p in source.paths] == ["a.jpg"]


def test_training_on_too_few_images_is_refused_up_front_naming_the_minimum(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "part" / "train" / "good").mkdir(parents=True)
    shutil.copy(sorted((DEMO_ROOT / "ball_screw" / "train" / "good").glob("*.jpg"))[0],
                root / "part" / "train" / "good" / "one.jpg")
    code, err = _cfrg(capsys, "train", "--data", root, "--category", "part", "--out", tmp_path / "run",
                      "--steps", "2", "--no-progress")
    line = _one_line(err)
    assert code == cli.EXIT_DATA and "holds 1 good image(s); training needs at least 10" in line and "--holdout 0" in line
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "model.pt").exists()


def test_refusals_are_one_line_and_usage_comes_only_with_debug(exported_model, capsys):
    code, err = _cfrg(capsys, "run", "--model", exported_model[1])
    assert code == cli.EXIT_USAGE and "required: --source" in _one_line(err) and "usage:" not in err
    with pytest.raises(SystemExit):
        main(["run", "--model", str(exported_model[1]), "--debug"])
    assert "usage:" in capsys.readouterr().err


def test_a_broken_video_is_one_line_without_opencv_or_ffmpeg_noise(tmp_path, exported_model):
    video = tmp_path / "broken.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    proc = _run_process("run", "--model", exported_model[1], "--source", video, "--no-progress")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == cli.EXIT_DATA and "broken.mp4" in _one_line(err)


@pytest.mark.parametrize("command", ["run", "eval", "export", "build"])
def test_a_model_path_that_is_a_folder_says_so(command, tmp_path, exported_model, capsys):
    args = {"run": ["run", "--model", tmp_path, "--source", TEST_IMAGES],
            "eval": ["eval", "--model", tmp_path, "--data", DEMO_ROOT, "--category", "ball_screw"],
            "export": ["export", tmp_path, "-o", tmp_path / "m.onnx"],
            "build": ["build", "--onnx", tmp_path, "--fp16"]}[command]
    code, err = _cfrg(capsys, *args)
    assert code == cli.EXIT_MODEL and "is a folder" in _one_line(err)


def test_progress_into_a_log_is_a_plain_line_now_and_then(tmp_path, exported_model):
    log = tmp_path / "run.log"
    with open(log, "w") as stderr:
        done = subprocess.run([sys.executable, "-m", "sdk.cli", "run", "--model", str(exported_model[1]),
                               "--source", str(_long_source(tmp_path, passes=2))], cwd=ROOT, stderr=stderr,
                              stdout=subprocess.DEVNULL, timeout=120)
    text = log.read_text()
    assert done.returncode == 0 and "\r" not in text
    lines = [line for line in text.splitlines() if line.startswith("run:")]
    assert 1 <= len(lines) <= 4 and lines[-1].startswith("run: 64 frame, ")  # a start line, and the end

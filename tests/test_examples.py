"""Every example runs here on an image folder and a video made from ../shared/data, and its outputs are checked;
the HTML report is opened in a real headless Chromium (Debian's package, installed by .ci/run), which renders
it to a screenshot and a DOM. Not run here: Jetson.GPIO triggers and reject signals, CSI cameras and display
windows (no Jetson, no display): the examples' messages for their absence are checked instead."""
import csv
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT

EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def media(data_root, tmp_path_factory):
    """An image folder (12 ball_screw test images and one corrupt file) and a video of the same images."""
    folder = tmp_path_factory.mktemp("media")
    images = folder / "images"
    images.mkdir()
    files = sorted((data_root / "ball_screw" / "test").glob("*/*.jpg"))[::30][:12]
    for f in files:
        shutil.copy(f, images / f"{f.parent.name}_{f.name}")
    (images / "zz_corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    frames = [cv2.imread(str(f)) for f in files]
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(folder / "line.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (w, h))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return folder


def run(*args, stdin: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=600,
                          input=stdin, cwd=cwd or ROOT)


def test_folder_inspect_writes_csv_and_an_html_report_that_renders(media, exported_model, tmp_path):
    out = tmp_path / "report"
    done = run(EXAMPLES / "folder_inspect.py", "--model", exported_model[1], "--input", media / "images", "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"13 images: \d+ OK, \d+ NG, 1 errors", done.stdout)
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert len(rows) == 13 and rows[-1]["file"] == "zz_corrupt.jpg" and rows[-1]["status"] == "error"
    assert all(r["verdict"] in ("ok", "defect") and float(r["score"]) == float(r["score"]) for r in rows[:-1])
    assert len(list((out / "overlays").glob("*.png"))) == 12
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium here to open the report (apt-get install chromium; .ci/run installs it)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1400"]
    url = (out / "report.html").as_uri()
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert 'id="summary"' in dom and 'id="histogram"' in dom and 'id="threshold"' in dom
    assert dom.count('<tr class="row') == 13 and dom.count("<img ") == 12 and "13 images" in dom
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=120)
    picture = cv2.imread(str(shot))
    assert picture is not None and picture.shape[:2] == (1400, 1200)
    assert picture.std() > 20  # not blank: text, heat-map thumbnails and histogram bars
    red_bars = (picture[:, :, 2] > 200) & (picture[:, :, 1] < 90) & (picture[:, :, 0] < 90)
    green_bars = (picture[:, :, 1] > 150) & (picture[:, :, 2] < 120) & (picture[:, :, 0] < 120)
    assert red_bars.sum() + green_bars.sum() > 500  # the histogram's bars were drawn


def test_line_camera_logs_one_verdict_per_part_and_saves_crops(media, exported_model, tmp_path):
    log, crops = tmp_path / "verdicts.csv", tmp_path / "crops"
    done = run(EXAMPLES / "line_camera.py", "--model", exported_model[1], "--source", media / "line.mp4",
               "--log", log, "--crops", crops, "--threshold", "-1000", "--reject-pin", "12")
    assert done.returncode == 0, done.stderr[-2000:]
    parts = [line for line in done.stdout.splitlines() if line.startswith("part ")]
    assert len(parts) == 12 and all(" NG " in p for p in parts) and "12 parts: 0 OK, 12 NG" in done.stdout
    rows = list(csv.DictReader(open(log)))
    assert [int(r["part"]) for r in rows] == list(range(12)) and {r["verdict"] for r in rows} == {"NG"}
    assert len(list(crops.glob("part*_region*.png"))) >= 12  # every part has at least its one big region
    assert "reject signal off: Jetson.GPIO is not available here" in done.stderr


def test_line_camera_trigger_and_line_scan_modes(media, exported_model, tmp_path):
    done = run(EXAMPLES / "line_camera.py", "--model", exported_model[1], "--source", media / "line.mp4",
               "--trigger", "stdin", "--log", tmp_path / "v.jsonl", stdin="\n\n\n")
    assert done.returncode == 0 and "3 parts:" in done.stdout  # three triggers, three parts
    assert len((tmp_path / "v.jsonl").read_text().splitlines()) == 3
    strip = np.concatenate([cv2.resize(cv2.imread(str(p)), (400, 120)) for p in sorted((media / "images")
                                                                                         .glob("*.jpg"))[:8]])
    lines = tmp_path / "lines.mp4"
    writer = cv2.VideoWriter(str(lines), cv2.VideoWriter_fourcc(*"mp4v"), 10, (400, 40))
    for y in range(0, len(strip), 40):
        writer.write(np.ascontiguousarray(strip[y:y + 40]))
    writer.release()
    done = run(EXAMPLES / "line_camera.py", "--model", exported_model[1], "--source", lines, "--line-scan", "320")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "3 parts:" in done.stdout  # 960 rows in parts of 320
    gpio = run(EXAMPLES / "line_camera.py", "--model", exported_model[1], "--source", lines, "--trigger", "gpio:7")
    assert gpio.returncode != 0 and "Jetson.GPIO is not available here" in gpio.stderr


def test_inspect_camera_writes_an_annotated_video(media, exported_model, tmp_path):
    out = tmp_path / "annotated.mp4"
    done = run(EXAMPLES / "jetson" / "inspect_camera.py", exported_model[1], media / "line.mp4", out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "12 frames shown" in done.stdout and "FPS" in done.stdout
    capture, count = cv2.VideoCapture(str(out)), 0
    while capture.read()[0]:
        count += 1
    assert count == 12


def test_build_engine_script_checks_the_platform_and_prepares_the_graphs(exported_model, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(exported_model[1], folder / "model.onnx")
    shutil.copy(exported_model[1].with_suffix(".json"), folder / "model.json")
    calib = ROOT / "sdk" / "demo" / "ball_screw" / "train" / "good"
    done = subprocess.run(["bash", str(EXAMPLES / "jetson" / "build_engine.sh"), str(folder / "model.onnx"),
                           str(calib)], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "PATH": f"{sys.executable.rsplit('/', 1)[0]}:"
                                                                  f"{__import__('os').environ['PATH']}"})
    assert "not a Jetson" in done.stderr and done.stdout.count("cfrg build plan") == 2
    assert "--useDLACore=0 --allowGPUFallback" in done.stdout and "--stronglyTyped --noTF32" in done.stdout
    assert done.stdout.count("no violation of TensorRT's documented rules") == 2
    assert "min 1x64x128x3, opt 1x64x128x3, max 1x64x128x3" in done.stdout  # DLA: a static batch
    try:
        import tensorrt  # noqa: F401 - only whether it imports
    except ImportError:
        assert done.returncode == 8 and "no engine built" in done.stderr
        assert (folder / "model.fp16.onnx").is_file() and (folder / "model.int8.onnx").is_file()
        assert (folder / "model.int8.dla.calib").read_text().startswith("TRT-100300-EntropyCalibration2")

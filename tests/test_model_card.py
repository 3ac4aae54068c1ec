"""The model card (sdk/model_card.py): written by cfrg export beside model.json, written again by cfrg card with the
precision graphs of cfrg build beside the model, and opened in a real headless Chromium (Debian's package, which
.ci/run installs): its sections rendered, a screenshot that is not blank."""
import json
import re
import shutil
import subprocess

import cv2
import pytest

from sdk.cli import EXIT_DATA, main
from sdk.model_card import card_path

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1100,2400"]
SECTIONS = ("summary", "training", "score-histogram", "thresholds", "defect-kinds", "examples", "latency",
            "precisions", "drift-reference")


def _dom(page) -> str:
    if BROWSER is None:
        pytest.skip("no Chromium here to open the card (apt-get install chromium; .ci/run installs it)")
    return subprocess.run([BROWSER, *FLAGS, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                          timeout=120).stdout


def test_cfrg_export_writes_a_card_that_renders_offline(exported_model, tmp_path):
    _, onnx_path, info = exported_model
    page = card_path(onnx_path)
    assert page.name == "model_card.html" and page.is_file()
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)  # nothing to fetch: it opens offline
    dom = _dom(page)
    assert all(f'id="{s}"' in dom for s in SECTIONS)
    n_good = info.thresholds["good_only"].details["n_images"]
    assert f"held-back good ({n_good})" in dom and dom.count('class="example"') == 6
    assert dom.count('class="threshold"') == len(info.thresholds) and dom.count('class="bar"') >= 2
    shot = tmp_path / "card.png"
    subprocess.run([BROWSER, *FLAGS, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    picture = cv2.imread(str(shot))
    assert picture is not None and picture.shape[:2] == (2400, 1100) and picture.std() > 20
    green = (picture[:, :, 1] > 100) & (picture[:, :, 2] < 80) & (picture[:, :, 0] < 80)
    red = (picture[:, :, 2] > 150) & (picture[:, :, 1] < 70) & (picture[:, :, 0] < 70)
    assert green.sum() > 200 and red.sum() > 200  # the histogram's bars of both kinds were drawn


def test_cfrg_card_adds_the_precision_graphs_beside_the_model(precision_graphs, capsys):
    fp32, infos, calib = precision_graphs
    run_dir = json.loads(fp32.with_suffix(".json").read_text())["training"]["run_dir"]
    assert main(["card", "--model", str(fp32), "--no-progress"]) == 0  # the run's held-back images, by default
    assert f"wrote {card_path(fp32)} (" in capsys.readouterr().out and run_dir
    dom = _dom(card_path(fp32))
    table = dom[dom.index('id="precisions"'):]
    table = table[:table.index("</table>")]
    for name in infos:
        assert f"<td>{name}</td><td>model.{name}.onnx</td>" in table
    assert table.count("passed") + table.count("FAILED") == 3


def test_cfrg_card_without_the_run_or_good_images_says_what_to_pass(exported_model, tmp_path, capsys):
    model = tmp_path / "model.onnx"
    shutil.copy(exported_model[1], model)
    described = json.loads(exported_model[1].with_suffix(".json").read_text())
    described["training"]["run_dir"] = str(tmp_path / "gone")
    model.with_suffix(".json").write_text(json.dumps(described))
    assert main(["card", "--model", str(model)]) == EXIT_DATA
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pass --good-dir DIR" in err
    assert not card_path(model).exists()

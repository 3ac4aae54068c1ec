"""A real Triton Inference Server (`cfrg serve`: PyTriton's bundled server, the model in ONNX Runtime inside it),
started by the fixture in the server environment (make serve-venv) on loopback ports, and the SDK's Triton backend
talking to it over gRPC and HTTP: the same results as a local Detector, streams through it, a server killed and
restarted during a stream, and the wrong model refused."""
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from sdk import Detector
from sdk.backends import ModelFileError
from sdk.backends.triton import ServerUnavailable
from sdk.stream import Stream
from sdk.triton.process import ServerProcess, serve_python
from tests.conftest import ROOT
from tests.stream_helpers import real_images

SERVER_PYTHON = serve_python()


def _has_pytriton() -> bool:
    probe = subprocess.run([SERVER_PYTHON, "-c", "import pytriton, numpy; assert int(numpy.__version__[0]) < 2"],
                           capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _has_pytriton(), reason=f"no server environment ({SERVER_PYTHON} lacks PyTriton "
                                                             f"with numpy < 2): run `make serve-venv`")


@pytest.fixture(scope="module")
def server(exported_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "triton.log"
    with ServerProcess(exported_model[1], name="ball_screw", log_file=log, lifetime_s=900) as process:
        yield process


@pytest.fixture(scope="module")
def frames(data_root):
    return real_images(data_root, 8)


def test_a_served_model_gives_the_local_detectors_results_over_grpc_and_http(server, exported_model, frames):
    local = Detector(exported_model[1])
    expected = local.batch(frames)
    for scheme in ("grpc", "http"):
        with Detector(server.url(scheme)) as remote:
            assert remote.backend.name == "triton" and remote.info == local.info  # the description from the server
            assert (remote.image_threshold, remote.pixel_threshold) == (local.image_threshold, local.pixel_threshold)
            got = remote.batch(frames)  # one request of 8
            singles = [remote(f) for f in frames[:2]]
        for e, g in zip(expected, got):
            assert g.score == pytest.approx(e.score, rel=1e-5, abs=1e-5)
            np.testing.assert_allclose(g.anomaly_map, e.anomaly_map, rtol=1e-5, atol=1e-5)
            assert (g.verdict, g.normalised_score) == (e.verdict, pytest.approx(e.normalised_score, abs=1e-5))
            assert np.array_equal(g.mask, e.mask)
        assert [s.score for s in singles] == pytest.approx([e.score for e in expected[:2]], rel=1e-4, abs=1e-4)


def test_a_stream_through_the_server_gives_every_frame_its_record(server, exported_model, frames):
    det = Detector(server.url("grpc"))
    with Stream(det, frames * 3, batch_size=4, infer_workers=2) as stream:
        records = list(stream)
    assert [r.frame_id for r in records] == list(range(len(frames) * 3))
    assert all(r.status == "ok" for r in records), [r.error for r in records if r.status != "ok"]
    local = Detector(exported_model[1])
    expected = [r.score for r in local.batch(frames)] * 3
    # batches of 4 against one of 8: the last bits of float32 convolutions may differ
    assert [r.score for r in records] == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_four_cameras_through_one_stream_into_the_server_account_for_every_frame(server, exported_model, data_root,
                                                                                 tmp_path):
    """Four videos written by OpenCV from real images, of different lengths and sizes, as four cameras of one Stream
    whose batches (one frame per camera) go to the server as single requests."""
    from tests.stream_helpers import write_video

    cameras = {}
    for k, (n, size) in enumerate([(9, (160, 64)), (14, (96, 96)), (6, (200, 80)), (11, (128, 128))]):
        cameras[f"cam{k}"] = (write_video(tmp_path / f"cam{k}.mp4", real_images(data_root, n, size)), n)
    remote = Detector(server.url("grpc"))
    requests = []
    run = remote.backend.run
    remote.backend.run = lambda feeds: requests.append(len(next(iter(feeds.values())))) or run(feeds)
    with Stream(remote, {name: str(path) for name, (path, _) in cameras.items()}, infer_workers=1) as stream:
        records = list(stream)
    assert stream.batch_size == 4 and max(requests) == 4 and sum(requests) == len(records)
    assert all(r.status == "ok" for r in records), [r.error for r in records if r.status != "ok"]
    local = Detector(exported_model[1])
    for name, (_, n) in cameras.items():
        mine = [r for r in records if r.source == name]
        assert [r.frame.frame_id for r in mine] == list(range(n))  # every frame once, in the camera's order
        expected = [local(r.image).score for r in mine]
        assert [r.score for r in mine] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert {name: stats["ok"] for name, stats in stream.stats()["sources"].items()} == \
        {name: n for name, (_, n) in cameras.items()}


def test_a_model_the_server_does_not_serve_is_refused_in_one_line(server, exported_model, tmp_path):
    wrong = server.url("grpc").rsplit("/", 1)[0] + "/tire"
    with pytest.raises(ModelFileError, match=r"serves no model 'tire' that is ready.*check the name in the URL"):
        Detector(wrong)
    code = subprocess.run([sys.executable, "-m", "sdk.cli", "run", "--model", wrong, "--source",
                           str(ROOT / "sdk" / "demo"), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    lines = code.stderr.strip().splitlines()
    assert code.returncode == 4 and len(lines) == 1 and "serves no model 'tire'" in lines[0], code.stderr
    assert not (tmp_path / "out").exists()


def test_a_server_that_is_not_there_is_a_clear_error_and_backs_off(exported_model):
    port = ServerProcess(exported_model[1]).grpc_port  # free: nobody listens there
    with pytest.raises(ServerUnavailable, match=rf"grpc://127.0.0.1:{port}/m: connecting failed, the server is "
                                                r"unreachable .*start it \(cfrg serve"):
        Detector(f"grpc://127.0.0.1:{port}/m", timeout_s=2.0)


def test_cfrg_run_streams_a_source_through_the_server(server, tmp_path):
    out = tmp_path / "run"
    code = subprocess.run([sys.executable, "-m", "sdk.cli", "run", "--model", server.url("grpc"), "--source",
                           str(ROOT / "sdk" / "demo" / "ball_screw" / "test" / "*" / "*.jpg"), "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert code.returncode == 0, code.stderr
    verdicts = (out / "verdicts.jsonl").read_text().splitlines()
    assert len(verdicts) == len(list((ROOT / "sdk" / "demo" / "ball_screw" / "test").glob("*/*.jpg")))


def test_the_server_killed_and_restarted_during_a_stream_loses_no_frame(exported_model, data_root, tmp_path):
    """A camera at about 25 frames/s streams into a server that is killed (SIGKILL) after 40 frames and started again
    on the same ports: the frames while it is down give error records, the frames after give results again, and
    every frame gives exactly one record."""
    images = real_images(data_root, 8)
    total = 260
    server = ServerProcess(exported_model[1], name="line", log_file=tmp_path / "triton.log", lifetime_s=600).start()
    det = Detector(server.url("grpc"), timeout_s=2.0, retry_initial_s=0.2, retry_max_s=1.0)
    seen = []
    restarted = threading.Event()

    def camera():
        for i in range(total):
            time.sleep(0.04)
            yield images[i % len(images)]

    def fault():
        while len(seen) < 40:
            time.sleep(0.01)
        server.kill()
        time.sleep(1.0)
        server.start()
        restarted.set()

    killer = threading.Thread(target=fault, daemon=True)
    killer.start()
    try:
        with Stream(det, camera(), infer_workers=1) as stream:
            for record in stream:
                seen.append(record)
        killer.join(120)
    finally:
        server.stop()
    assert restarted.is_set()
    statuses = [r.status for r in seen]
    assert [r.frame_id for r in seen] == list(range(total))  # each frame once, in order
    first_error = statuses.index("error")
    last_error = len(statuses) - 1 - statuses[::-1].index("error")
    assert first_error >= 40 and all(s == "ok" for s in statuses[:first_error])
    assert statuses[last_error + 1:] and all(s == "ok" for s in statuses[last_error + 1:])
    errors = [r.error for r in seen if r.status == "error"]
    assert all("ServerUnavailable" in e and ("server is unreachable" in e or "does not serve 'line' now" in e)
               for e in errors), set(errors)
    print(f"\nfault case: {total} frames sent, {len(seen)} records, {statuses.count('ok')} ok, {len(errors)} errors "
          f"while the server was down (frames {first_error}..{last_error})")

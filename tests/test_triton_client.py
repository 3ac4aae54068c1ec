"""The Triton pieces that need no server: served-model URLs, the refusals of cfrg serve in the main environment, the
library search path the server's Python backend stub is given, and the message when tritonclient is missing.
(tests/test_triton_server.py runs a real server.)"""
import os
import subprocess
import sys
import sysconfig

import pytest

from sdk import Detector
from sdk.backends import backend_for, is_server_url
from sdk.backends.triton import ServerAddress
from sdk.cli import EXIT_MISSING, EXIT_USAGE, main
from sdk.triton.serve import libpython_search_path
from tests.conftest import ROOT


@pytest.mark.parametrize("url, parsed", [
    ("grpc://127.0.0.1:8001/line3", ("grpc", "127.0.0.1:8001", "line3", "")),
    ("grpc://rack-2/line3/4", ("grpc", "rack-2:8001", "line3", "4")),
    ("http://10.0.0.5/line3", ("http", "10.0.0.5:8000", "line3", "")),
    ("GRPC://[::1]:9001/m", ("grpc", "[::1]:9001", "m", "")),
])
def test_served_model_urls_name_the_server_the_model_and_its_version(url, parsed):
    assert is_server_url(url) and backend_for(url) == "triton"
    address = ServerAddress.parse(url)
    assert (address.scheme, address.host, address.model, address.version) == parsed


@pytest.mark.parametrize("url, match", [
    ("grpc://127.0.0.1:8001", "is not a model on a server: write grpc://HOST:PORT/NAME"),
    ("grpc://127.0.0.1:8001/a/b/c", "is not a model on a server"),
    ("grpc://127.0.0.1:99999/m", "the port is not a number in 1..65535"),
])
def test_a_malformed_server_url_says_how_to_write_one(url, match):
    with pytest.raises(ValueError, match=match):
        Detector(url)


def test_a_file_and_a_server_url_each_refuse_the_other_backend(tmp_path):
    with pytest.raises(ValueError, match="backend 'onnxruntime' runs a model file, not a model on a server"):
        backend_for("grpc://127.0.0.1:8001/m", "onnxruntime")
    with pytest.raises(ValueError, match="backend 'triton' runs a model on a server"):
        backend_for(str(tmp_path / "model.onnx"), "triton")
    assert not is_server_url(str(tmp_path / "model.onnx")) and not is_server_url("rtsp://camera/stream")


def test_without_tritonclient_a_served_model_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"needs tritonclient .*pip install 'cfrg-inspect\[triton\]'"):
        Detector("grpc://127.0.0.1:8001/m")


def test_import_sdk_and_a_local_detector_need_no_tritonclient():
    code = ("import sys; sys.modules['tritonclient'] = None; import sdk, sdk.backends; "
            "assert 'tritonclient.grpc' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_cfrg_serve_in_an_environment_with_numpy_2_says_where_to_install_it(exported_model, capsys):
    import numpy as np

    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip("this environment has numpy < 2: the server's own")
    assert main(["serve", "--model", str(exported_model[1])]) == EXIT_MISSING
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cfrg serve needs numpy < 2" in err and "make serve-venv" in err


def test_cfrg_serve_refuses_an_engine_and_clashing_ports(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "model.engine")]) == EXIT_USAGE
    assert "is a TensorRT engine: cfrg serve runs ONNX models" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path / "m.onnx"), "--grpc-port", "9000", "--http-port", "9000"]) == EXIT_USAGE
    assert "three different ports" in capsys.readouterr().err


def test_the_server_stub_finds_this_interpreters_libpython_first():
    """The loader would find the system's libpython of the same version for an interpreter built elsewhere (pyenv);
    the stub must get this interpreter's (what the served tests prove end to end when they start a server)."""
    libdir, library = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not os.path.exists(os.path.join(libdir, library)):
        assert libpython_search_path({}) is None  # a static interpreter: nothing to point at
        return
    assert libpython_search_path({}) == libdir
    assert libpython_search_path({"LD_LIBRARY_PATH": "/opt/a:" + libdir}) == f"{libdir}:/opt/a"
    assert libpython_search_path({"LD_LIBRARY_PATH": libdir + ":/opt/a"}) is None  # already first

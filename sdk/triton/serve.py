"""`cfrg serve`: one model served by Triton Inference Server through PyTriton (its bundled server and Python
backend), the model running in ONNX Runtime inside it, CPU or CUDA.

The served config carries the same input, outputs, dynamic batching and `cfrg_model_json` parameter as a
`cfrg triton` repository entry, so a client (sdk.Detector("grpc://host:port/NAME")) cannot tell them apart.

PyTriton 0.7 needs numpy < 2 (its Python backend stub reads numpy 1.x arrays), so the server lives in an
environment of its own: `make serve-venv`, or `python -m venv V && V/bin/pip install '.[serve]'`.
"""
from __future__ import annotations

import contextlib
import os
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..backends import ModelFileError, refuse_folder
from ..backends.triton import ServerUnavailable
from ..model_info import ModelInfo
from .repository import DESCRIPTION_PARAMETER, check_batching, check_name, preferred_batch_sizes

DEVICES = ("auto", "cpu", "cuda")
SERVE_INSTALL = ("python -m venv .venv-serve && .venv-serve/bin/pip install '.[serve]' (or `make serve-venv`), "
                 "then run .venv-serve/bin/cfrg serve")
PYTRITON_VERSION = "0.7."  # the version whose model config this module extends (see described_models)


@dataclass(frozen=True)
class ServeOptions:
    """What `cfrg serve` is asked for."""
    model: Path  # model.onnx (FP32 or a precision graph of cfrg build)
    name: str
    host: str = "127.0.0.1"  # 0.0.0.0 to serve the network
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    max_batch: int = 8
    preferred_batches: tuple[int, ...] = ()
    queue_delay_us: int = 500
    instances: int = 1
    device: str = "auto"  # auto: CUDA when this onnxruntime has it
    threads: int = 0  # ONNX Runtime threads per instance (0: its default)
    log_file: Path | None = None  # the server's own log (None: the terminal)

    def check(self) -> None:
        check_name(self.name)
        check_batching(self.max_batch, self.preferred_batches, self.instances)
        if self.device not in DEVICES:
            raise ValueError(f"--device {self.device!r}: choose one of {', '.join(DEVICES)}")
        ports = [self.grpc_port, self.http_port, self.metrics_port]
        if len(set(ports)) != 3 or not all(0 < p < 65536 for p in ports):
            raise ValueError(f"--grpc-port, --http-port and --metrics-port must be three different ports in "
                             f"1..65535, got {ports}")
        if self.model.suffix in (".engine", ".plan"):
            raise ValueError(f"{self.model.name} is a TensorRT engine: cfrg serve runs ONNX models; serve an engine "
                             f"with a Triton server of the same TensorRT version (`cfrg triton`, docs/deployment.md)")


def require_server_environment() -> None:
    """ImportError with the fix when PyTriton is missing or cannot run beside this numpy."""
    import numpy as np

    if int(np.__version__.split(".")[0]) >= 2:
        raise ImportError(f"cfrg serve needs numpy < 2 (PyTriton 0.7's Python backend stub reads numpy 1.x arrays; "
                          f"this environment has numpy {np.__version__}): {SERVE_INSTALL}")
    try:
        import pytriton
    except ImportError as exc:
        raise ImportError(f"cfrg serve needs PyTriton ({exc}): {SERVE_INSTALL}") from exc
    version = getattr(pytriton, "__version__", "")
    if not version.startswith(PYTRITON_VERSION):
        raise ImportError(f"cfrg serve is written for nvidia-pytriton {PYTRITON_VERSION}x, this environment has "
                          f"{version or 'an unknown version'}: {SERVE_INSTALL}")


def check_ports_free(options: ServeOptions) -> None:
    """ValueError naming the port another process holds (Triton would exit, and PyTriton wait for it)."""
    import socket

    for flag, port in (("--grpc-port", options.grpc_port), ("--http-port", options.http_port),
                       ("--metrics-port", options.metrics_port)):
        family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((options.host, port))
            except OSError as exc:
                raise ValueError(f"{flag} {port}: {options.host}:{port} cannot be listened on ({exc.strerror}); "
                                 f"another server holds it, or the address is not this machine's: pass another "
                                 f"{flag} or --host") from None


def libpython_search_path(environ: dict) -> str | None:
    """LD_LIBRARY_PATH with this interpreter's lib folder first, or None when the loader needs no help.

    Triton's Python backend stub links the libpython the dynamic loader finds; an interpreter built elsewhere
    (pyenv, conda) would meet the system's libpython of the same version and fail at model load."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    libdir, library = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if not libdir or not library or not (Path(libdir) / library).exists():
        return None
    paths = [p for p in environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if paths[:1] == [libdir]:
        return None
    return os.pathsep.join([libdir, *[p for p in paths if p != libdir]])


def providers_for(device: str) -> list[str]:
    import onnxruntime as ort

    cpu, cuda = "CPUExecutionProvider", "CUDAExecutionProvider"
    available = ort.get_available_providers()
    if device == "cuda" and cuda not in available:
        raise ValueError(f"--device cuda: this onnxruntime has no CUDA provider (it has {available}); install "
                         f"onnxruntime-gpu in the server environment, or pass --device cpu")
    return [cuda, cpu] if device == "cuda" or (device == "auto" and cuda in available) else [cpu]


def infer_function(backend, input_name: str) -> Callable:
    """A PyTriton inference callable: the batch Triton assembled, through one ONNX Runtime session."""
    from pytriton.decorators import batch

    @batch
    def infer(**inputs):
        out = backend.run({input_name: inputs[input_name]})
        return {"anomaly_map": out["anomaly_map"], "score": out["score"].reshape(-1, 1)}

    return infer


@contextlib.contextmanager
def described_models(parameters: dict[str, str]):
    """While binding, the models PyTriton configures also carry `parameters` (PyTriton has no option for a
    model's config parameters; its Model builds the config once and keeps it)."""
    from pytriton.models.model import Model

    original = Model._get_triton_model_config

    def with_parameters(model):
        config = original(model)
        config.backend_parameters.update(parameters)
        return config

    Model._get_triton_model_config = with_parameters
    try:
        yield
    finally:
        Model._get_triton_model_config = original


def open_model(options: ServeOptions) -> tuple[list, ModelInfo]:
    """One ONNX Runtime session per instance, and the description checked against the graph."""
    from ..backends.onnxruntime import OnnxRuntimeBackend

    refuse_folder(options.model)
    if not options.model.is_file():
        raise ModelFileError(f"model file {options.model} does not exist: pass a model.onnx from `cfrg export`")
    providers = providers_for(options.device)
    backends = [OnnxRuntimeBackend(options.model, providers=providers, threads=options.threads)
                for _ in range(options.instances)]
    return backends, ModelInfo.read(options.model, backends[0])


def serve(options: ServeOptions, announce: Callable[[str], None] = print) -> None:
    """Start the server, announce where it listens, serve until Ctrl-C / SIGTERM (KeyboardInterrupt, after the
    server is stopped); ServerUnavailable when the server dies by itself."""
    options.check()
    require_server_environment()
    check_ports_free(options)
    backends, info = open_model(options)
    search_path = libpython_search_path(os.environ)
    if search_path is not None:
        os.environ["LD_LIBRARY_PATH"] = search_path  # the server inherits the environment
    import numpy as np
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    h, w = info.input.height, info.input.width
    config = TritonConfig(grpc_address=options.host, grpc_port=options.grpc_port, http_address=options.host,
                          http_port=options.http_port, metrics_address=options.host, metrics_port=options.metrics_port,
                          exit_on_error=True, log_verbose=0, log_file=options.log_file)
    batcher = DynamicBatcher(max_queue_delay_microseconds=options.queue_delay_us,
                             preferred_batch_size=list(preferred_batch_sizes(options.max_batch,
                                                                             options.preferred_batches)))
    with Triton(config=config) as triton:
        with described_models({DESCRIPTION_PARAMETER: info.to_json(indent=None)}):
            triton.bind(model_name=options.name,
                        infer_func=[infer_function(b, info.input.name) for b in backends],
                        inputs=[Tensor(name=info.input.name, dtype=np.uint8, shape=(h, w, 3))],
                        outputs=[Tensor(name="anomaly_map", dtype=np.float32, shape=(h, w)),
                                 Tensor(name="score", dtype=np.float32, shape=(1,))],
                        config=ModelConfig(max_batch_size=options.max_batch, batcher=batcher), strict=True)
        triton.run()
        announce(f"serving {options.name} ({options.model.name}, {info.precision}, "
                 f"{backends[0].providers[0].replace('ExecutionProvider', '')}, {options.instances} instance(s), "
                 f"max batch {options.max_batch}) at grpc://{options.host}:{options.grpc_port}/{options.name} and "
                 f"http://{options.host}:{options.http_port}/{options.name}; metrics on port {options.metrics_port}"
                 + (f"; server log: {options.log_file}" if options.log_file else ""))
        sys.stdout.flush()
        while triton.is_alive():  # Ctrl-C / SIGTERM end the wait; leaving the block stops the server
            time.sleep(0.5)
    raise ServerUnavailable(f"the Triton server of {options.name} stopped by itself"
                            + (f"; see its log, {options.log_file}" if options.log_file else "; see its log above"))

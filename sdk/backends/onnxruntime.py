"""Inference backends: named arrays in, named arrays out.

Each backend is imported lazily; a missing runtime gives a message that says what to install.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Protocol

import numpy as np


class ModelFileError(ValueError):
    """A model file that is missing, corrupt or does not match what the SDK expects."""


class Backend(Protocol):
    name: str
    input_names: list[str]
    output_names: list[str]

    def input_shape(self, name: str) -> tuple: ...
    def metadata(self) -> dict[str, str]: ...
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class OnnxRuntimeBackend:
    """ONNX Runtime on the CPU by default; TensorRT/CUDA execution providers when the build has them."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("the ONNX backend needs onnxruntime: pip install onnxruntime "
                              "(onnxruntime-gpu on a CUDA machine)") from exc
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"model file {path} does not exist: export one with `cfrg export model.pt -o {path}`")
        available = ort.get_available_providers()
        auto = providers is None
        if providers is None:
            preferred = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
            providers = [p for p in preferred if p in available]
        missing = [p for p in providers if p not in available]
        if missing:
            raise ValueError(f"execution providers {missing} are not in this onnxruntime build (it has {available})")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            if auto and providers != ["CPUExecutionProvider"] and self._loads_on_cpu(ort, path, options):
                warnings.warn(f"{path}: the {providers[0]} could not start ({exc}); running on the CPU. "
                              f"Check the CUDA/TensorRT libraries or pass providers=['CPUExecutionProvider'].")
            else:
                raise ModelFileError(f"{path} is not a loadable ONNX model ({type(exc).__name__}: {exc}); "
                                     f"re-export it with `cfrg export`") from exc
        self.providers = self.session.get_providers()
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _loads_on_cpu(self, ort, path, options) -> bool:
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - the model itself is bad: report the original error
            return False
        return True

    def input_shape(self, name: str) -> tuple:
        return tuple(next(i.shape for i in self.session.get_inputs() if i.name == name))

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs))


BACKENDS = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt"}


def load_backend(path: str | Path, backend: str = "auto", **options) -> Backend:
    path = Path(path)
    if backend == "auto":
        backend = BACKENDS.get(path.suffix.lower())
        if backend is None:
            raise ModelFileError(f"cannot tell the backend from {path.name!r}: expected .onnx or .engine "
                                 f"(or pass backend='onnxruntime' / 'tensorrt')")
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(path, **options)
    if backend == "tensorrt":
        raise NotImplementedError("the TensorRT backend is not part of this release yet; "
                                  "use the .onnx model with backend='onnxruntime'")
    raise ValueError(f"unknown backend {backend!r}: choose 'auto', 'onnxruntime' or 'tensorrt'")

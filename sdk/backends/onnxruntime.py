"""ONNX Runtime backend: the CPU by default; CUDA or TensorRT execution providers when the build has them."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from . import ModelFileError, refuse_folder

CPU = "CPUExecutionProvider"


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
        refuse_folder(path)
        if not path.is_file():
            raise ModelFileError(f"model file {path} does not exist: export one with `cfrg export model.pt -o {path}`")
        available = ort.get_available_providers()
        auto = providers is None
        if providers is None:
            preferred = ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]
            providers = [p for p in preferred if p in available]
        missing = [p for p in providers if p not in available]
        if missing:
            raise ValueError(f"execution providers {missing} are not in this onnxruntime build (it has {available})")
        options = ort.SessionOptions()
        options.log_severity_level = int(os.environ.get("CFRG_ORT_LOG_LEVEL", "3"))  # errors only (0: verbose)
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            if auto and providers != [CPU] and self._loads_on_cpu(ort, path, options):
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
            self.session = ort.InferenceSession(str(path), options, providers=[CPU])
        except Exception:  # noqa: BLE001 - the model itself is bad: report the original error
            return False
        return True

    def input_shape(self, name: str) -> tuple:
        return tuple(next(i.shape for i in self.session.get_inputs() if i.name == name))

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.session is None:
            raise RuntimeError("this ONNX Runtime backend is closed")
        outputs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs))

    def preferred_workers(self) -> int:
        """Two single-thread sessions on a CPU with 2+ cores (they keep the cores busier than one session
        spread over both); one session on a GPU provider."""
        return 2 if self.providers == [CPU] and (os.cpu_count() or 1) >= 2 else 1

    def worker_options(self, workers: int) -> dict:
        if self.providers != [CPU]:
            return {"providers": list(self.providers)}
        return {"providers": [CPU], "threads": max(1, (os.cpu_count() or 1) // max(1, workers))}

    def close(self) -> None:
        self.session = None  # ONNX Runtime frees the session with its last reference

"""Inference backends: named arrays in, named arrays out; one module per runtime, imported when used.

    load_backend(path)   the backend for a model file, chosen by its suffix (.onnx: onnxruntime.py,
                         .engine / .plan: tensorrt.py), or for a served model's URL (grpc:// or http://: triton.py)
    Backend              what every backend offers (sdk.Detector and sdk.Stream use nothing else)
    ModelFileError       a model file that is missing, corrupt or does not match its description
"""
from __future__ import annotations

import os
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

    def preferred_workers(self) -> int:
        """How many inference sessions side by side keep this runtime busiest (sdk.Stream's "auto")."""
        ...

    def worker_options(self, workers: int) -> dict:
        """load_backend options for each of `workers` parallel sessions (e.g. threads)."""
        ...

    def close(self) -> None:
        """Release the session and its memory (idempotent); run() fails afterwards."""
        ...

    # optional: filled_input(name, batch), a context manager holding the backend's lock that yields a host
    # array the caller fills in place before calling run() inside it (or None when the batch does not fit)


def refuse_folder(path: str | os.PathLike) -> None:
    """ModelFileError when a model path names a folder (else it would read as "does not exist")."""
    if Path(path).is_dir():
        raise ModelFileError(f"model path {path} is a folder: give the model file inside it (model.onnx from "
                             f"`cfrg export`, or an engine from `cfrg build`)")


SERVER_SCHEMES = {"grpc": 8001, "http": 8000, "https": 443}  # and their default ports


def is_server_url(path) -> bool:
    """A model on an inference server (grpc://HOST:PORT/NAME, http://...), not a file."""
    return isinstance(path, str) and "://" in path and path.split("://", 1)[0].lower() in SERVER_SCHEMES


SUFFIXES = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt"}
NAMES = ("auto", "onnxruntime", "tensorrt", "triton")


def backend_for(path: str | os.PathLike, backend: str = "auto") -> str:
    """The runtime that runs `path`: `backend`, or with "auto" the one its suffix names."""
    if backend not in NAMES:
        raise ValueError(f"unknown backend {backend!r}: choose {', '.join(repr(n) for n in NAMES)}")
    served = is_server_url(path)
    if served != (backend == "triton") and backend != "auto":
        raise ValueError(f"backend {backend!r} runs " + ("a model file, not a model on a server (" if served else
                         "a model on a server, grpc://HOST:PORT/NAME, not a file (") + f"{path}); leave backend='auto'")
    if served:
        return "triton"
    refuse_folder(path)
    if backend != "auto":
        return backend
    name = SUFFIXES.get(Path(path).suffix.lower())
    if name is None:
        raise ModelFileError(f"cannot tell the backend from {Path(path).name!r}: expected .onnx or .engine "
                             f"(or pass backend='onnxruntime' / 'tensorrt')")
    return name


def load_backend(path: str | os.PathLike, backend: str = "auto", **options) -> Backend:
    name = backend_for(path, backend)
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, **options)
    if name == "triton":
        from .triton import TritonBackend

        return TritonBackend(str(path), **options)
    from .tensorrt import TensorRTBackend

    return TensorRTBackend(path, **options)

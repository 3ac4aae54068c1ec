"""TensorRT backend: a serialized engine (`cfrg build`) run with the name-based API (set_input_shape,
set_tensor_address, execute_async_v3), one CUDA stream and one execution context per backend, pinned host
buffers and asynchronous copies. CUDA through cuda-python (`cuda.bindings`, wheels on every platform) or
pycuda (the usual install on a Jetson), behind one small interface; `cuda="auto"` takes whichever imports.

Replicas for sdk.Stream share the deserialized engine; each has its own context, stream and buffers.
The engine's model.json is compared with the installed TensorRT and the GPU before deserializing, so an
engine built elsewhere is refused with a message instead of TensorRT aborting.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import threading
from pathlib import Path

import numpy as np

from . import ModelFileError, refuse_folder

INSTALL = ("the TensorRT backend needs TensorRT's Python bindings (JetPack ships them; elsewhere "
           "pip install tensorrt) and cuda-python (pip install cuda-python) or pycuda")


class CudaError(RuntimeError):
    """A CUDA call that failed; the message names the call and CUDA's error."""


class CudaPython:
    """CUDA runtime calls through cuda-python (cuda.bindings.runtime), each checked."""

    name = "cuda-python"

    def __init__(self):
        from cuda.bindings import runtime as cudart

        self.rt = cudart

    def _check(self, call: str, result):
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            _, text = self.rt.cudaGetErrorString(err)
            raise CudaError(f"{call} failed: {text.decode() if isinstance(text, bytes) else text} ({int(err)})")
        return values[0] if len(values) == 1 else values

    def stream(self):
        return self._check("cudaStreamCreate", self.rt.cudaStreamCreate())

    def stream_handle(self, stream) -> int:
        return int(stream)

    def malloc(self, nbytes: int) -> int:
        return int(self._check("cudaMalloc", self.rt.cudaMalloc(nbytes)))

    def free(self, ptr: int) -> None:
        self._check("cudaFree", self.rt.cudaFree(ptr))

    def pinned(self, shape, dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = int(self._check("cudaMallocHost", self.rt.cudaMallocHost(nbytes)))
        array = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr)).view(dtype).reshape(shape)
        return array

    def free_pinned(self, array: np.ndarray) -> None:
        self._check("cudaFreeHost", self.rt.cudaFreeHost(array.ctypes.data))

    def to_device(self, dst: int, src: np.ndarray, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check("cudaMemcpyAsync", self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream))

    def to_host(self, dst: np.ndarray, src: int, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check("cudaMemcpyAsync", self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream))

    def synchronize(self, stream) -> None:
        self._check("cudaStreamSynchronize", self.rt.cudaStreamSynchronize(stream))

    def destroy(self, stream) -> None:
        self._check("cudaStreamDestroy", self.rt.cudaStreamDestroy(stream))

    def device(self) -> dict:
        props = self._check("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties(0))
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return {"gpu": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}


class PyCuda:
    """The same calls through pycuda, in the device's primary context (pushed around each call, so any thread
    of sdk.Stream may run them)."""

    name = "pycuda"

    def __init__(self):
        import pycuda.driver as cuda

        cuda.init()
        self.cuda = cuda
        self.context = cuda.Device(0).retain_primary_context()
        self._lock = threading.Lock()

    def _in_context(self, fn):
        with self._lock:
            self.context.push()
            try:
                return fn()
            except self.cuda.Error as exc:
                raise CudaError(f"pycuda: {exc}") from exc
            finally:
                self.cuda.Context.pop()

    def stream(self):
        return self._in_context(self.cuda.Stream)

    def stream_handle(self, stream) -> int:
        return int(stream.handle)

    def malloc(self, nbytes: int):
        return self._in_context(lambda: self.cuda.mem_alloc(nbytes))

    def free(self, ptr) -> None:
        self._in_context(ptr.free)

    def pinned(self, shape, dtype) -> np.ndarray:
        return self._in_context(lambda: self.cuda.pagelocked_empty(shape, dtype))

    def free_pinned(self, array) -> None:
        self._in_context(lambda: array.base.free() if hasattr(array.base, "free") else None)

    def to_device(self, dst, src: np.ndarray, stream) -> None:
        self._in_context(lambda: self.cuda.memcpy_htod_async(dst, src, stream))

    def to_host(self, dst: np.ndarray, src, stream) -> None:
        self._in_context(lambda: self.cuda.memcpy_dtoh_async(dst, src, stream))

    def synchronize(self, stream) -> None:
        self._in_context(stream.synchronize)

    def destroy(self, stream) -> None:
        pass  # pycuda frees streams with the object

    def device(self) -> dict:
        dev = self.cuda.Device(0)
        major, minor = dev.compute_capability()
        return {"gpu": dev.name(), "compute_capability": f"{major}.{minor}"}


def cuda_runtime(choice: str = "auto"):
    """cuda-python or pycuda, as asked; "auto": cuda-python, else pycuda."""
    kinds = {"cuda-python": CudaPython, "pycuda": PyCuda}
    if choice not in ("auto", *kinds):
        raise ValueError(f"cuda must be 'auto', 'cuda-python' or 'pycuda', got {choice!r}")
    errors = []
    for name in (kinds if choice == "auto" else [choice]):
        try:
            return kinds[name]()
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise ImportError(f"{INSTALL} ({'; '.join(errors)})")


class Buffer:
    """One I/O tensor: a pinned host array and device memory for the profile's largest batch."""

    def __init__(self, cuda, shape: tuple[int, ...], dtype):
        self.cuda, self.shape, self.dtype = cuda, tuple(shape), np.dtype(dtype)
        self.host = cuda.pinned(self.shape, self.dtype)
        self.device = cuda.malloc(self.host.nbytes)

    @property
    def address(self) -> int:
        return int(self.device)

    def free(self) -> None:
        if self.host is not None:
            self.cuda.free(self.device)
            self.cuda.free_pinned(self.host)
            self.host = None


def _check_engine_here(path: Path, spec, trt, cuda) -> None:
    """Refuse an engine built for another TensorRT build or GPU before TensorRT sees it (it would fail with a
    generic error or abort). A plan runs only on the TensorRT build that made it, unless it was built
    version-compatible (then on that build or a later one of the same major); and on the GPU model it was
    built for."""
    built, here = spec.tensorrt, trt.__version__
    if spec.version_compatible:
        ok = _version(built)[0] == _version(here)[0] and _version(here) >= _version(built)
        rule = f"a version-compatible plan runs on TensorRT {built} or a later {_version(built)[0]}.x"
    else:
        ok = built == here
        rule = "a plan runs only on the TensorRT build that made it (unless built with --versionCompatible)"
    if not ok:
        raise ModelFileError(f"{path} was built with TensorRT {built}, this machine has {here}: {rule}; rebuild it "
                             f"here with `cfrg build --onnx model.onnx ...`")
    if spec.compute_capability:
        have = cuda.device()
        if have.get("compute_capability") != spec.compute_capability:
            raise ModelFileError(f"{path} was built for a GPU of compute capability {spec.compute_capability} "
                                 f"({spec.gpu}), this one is {have.get('compute_capability')} ({have.get('gpu')}): "
                                 f"rebuild it here")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


class TensorRTBackend:
    """One execution context, CUDA stream and set of pinned/device buffers; the engine shared with replicas.
    Batches shorter than the profile's minimum are padded up to it (the extra rows are dropped), longer than
    its maximum refused. Closed by close() (or Detector.close(), or `with Detector(...)`)."""

    name = "tensorrt"

    def __init__(self, path: str | Path, cuda: str = "auto", shared: "TensorRTBackend | None" = None):
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise ImportError(INSTALL) from exc
        from ..model_info import ModelInfo

        self.trt, self.path = trt, Path(path)
        refuse_folder(self.path)
        if not self.path.is_file():
            raise ModelFileError(f"engine file {self.path} does not exist: build one with "
                                 f"`cfrg build --onnx model.onnx --saveEngine={self.path}`")
        self.spec = ModelInfo.read(self.path).engine_spec(self.path)
        self.buffers, self.context, self.stream = {}, None, None
        self._lock = threading.RLock()
        self.cuda = shared.cuda if shared is not None else cuda_runtime(cuda)
        if shared is not None:
            self.runtime, self.engine = shared.runtime, shared.engine
        else:
            _check_engine_here(self.path, self.spec, trt, self.cuda)
            self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            if self.spec.dla_core is not None:  # before deserializing: the engine runs on that core
                self.runtime.DLA_core = self.spec.dla_core
            if self.spec.version_compatible:  # the plan carries its own lean runtime
                self.runtime.engine_host_code_allowed = True
            plan = self.path.read_bytes()
            if self.spec.plan_sha256 and hashlib.sha256(plan).hexdigest() != self.spec.plan_sha256:
                raise ModelFileError(f"{self.path} is not the plan its description {self.path.with_suffix('.json').name} "
                                     f"was written for (another build replaced one of the two): rebuild with `cfrg build`")
            self.engine = self.runtime.deserialize_cuda_engine(plan)
            if self.engine is None:
                raise ModelFileError(f"{self.path} is not an engine this TensorRT ({trt.__version__}) can load "
                                     f"(another TensorRT build or GPU, or a damaged file); rebuild it with `cfrg build`")
        try:
            self._open(trt)
        except BaseException:
            self.close()
            raise

    def _open(self, trt) -> None:
        engine = self.engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise ModelFileError(f"TensorRT could not create an execution context for {self.path.name} (out of GPU "
                                 f"memory?); close other detectors or use a smaller --maxShapes")
        self.stream = self.cuda.stream()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == inputs]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) != inputs]
        profiles = {n: engine.get_tensor_profile_shape(n, 0) for n in self.input_names}  # (min, opt, max)
        self.min_batch = max(int(p[0][0]) for p in profiles.values())
        self.max_batch = min(int(p[2][0]) for p in profiles.values())
        for n in names:
            shape = tuple(engine.get_tensor_shape(n))
            self.buffers[n] = Buffer(self.cuda, (self.max_batch, *shape[1:]), trt.nptype(engine.get_tensor_dtype(n)))
            self.context.set_tensor_address(n, self.buffers[n].address)

    def input_shape(self, name: str) -> tuple:
        return tuple(self.engine.get_tensor_shape(name))

    def metadata(self) -> dict[str, str]:
        return {}  # the description lies beside the engine (model.json)

    def _check_open(self) -> None:
        if self.context is None:
            raise RuntimeError(f"the TensorRT backend of {self.path.name} is closed")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self._check_open()
            n = None
            for name, array in feeds.items():
                buf = self.buffers[name]
                n = len(array)
                if not 1 <= n <= self.max_batch:
                    raise ValueError(f"batch of {n}: {self.path.name} was built for batches of up to {self.max_batch} "
                                     f"(cfrg build --maxShapes)")
                if array.dtype != buf.dtype or array.shape[1:] != buf.shape[1:]:
                    raise ValueError(f"{name}: got {array.dtype} {array.shape}, the engine takes {buf.dtype} "
                                     f"(N, {', '.join(map(str, buf.shape[1:]))})")
                if array.ctypes.data != buf.host.ctypes.data:  # filled in place by the caller: no copy
                    np.copyto(buf.host[:n], array)
                rows = max(n, self.min_batch)
                buf.host[n:rows] = buf.host[n - 1]  # up to the profile's minimum: repeat the last frame
                shape = (rows, *array.shape[1:])
                if not self.context.set_input_shape(name, shape):
                    raise ValueError(f"{name}: TensorRT refused the shape {shape} for {self.path.name} (its profile "
                                     f"takes batches of {self.min_batch} to {self.max_batch}); rebuild it with "
                                     f"--minShapes/--maxShapes that cover it")
                self.cuda.to_device(buf.device, buf.host[:rows], self.stream)
            rows = max(n, self.min_batch)
            if not self.context.execute_async_v3(self.cuda.stream_handle(self.stream)):
                raise RuntimeError(f"TensorRT could not run {self.path.name} on a batch of {rows}")
            for name in self.output_names:
                self.cuda.to_host(self.buffers[name].host[:rows], self.buffers[name].device, self.stream)
            self.cuda.synchronize(self.stream)
            return {name: self.buffers[name].host[:n].copy() for name in self.output_names}

    @contextlib.contextmanager
    def filled_input(self, name: str, batch: int):
        """The pinned host buffer of an input for a caller that fills it in place and then calls run(), under
        this backend's lock (another thread cannot overwrite it meanwhile); None when the batch does not fit."""
        with self._lock:
            self._check_open()
            yield self.buffers[name].host[:batch] if 1 <= batch <= self.max_batch else None

    def preferred_workers(self) -> int:
        return 1  # one GPU: more contexts seldom pay

    def worker_options(self, workers: int) -> dict:
        return {"shared": self}

    def close(self) -> None:
        """Release the context, stream and buffers (and this backend's hold on the engine); idempotent."""
        with self._lock:
            self.context = None
            for buf in self.buffers.values():
                buf.free()
            self.buffers = {}
            if self.stream is not None:
                self.cuda.destroy(self.stream)
                self.stream = None
            self.engine = self.runtime = None  # the engine goes when its last replica lets go of it

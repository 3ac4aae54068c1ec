"""Triton client backend: a model served by Triton Inference Server (`cfrg serve`, or a `cfrg triton` repository),
reached at grpc://HOST[:PORT]/NAME[/VERSION] or http://HOST[:PORT]/NAME[/VERSION].

The SDK pre- and post-processes on the client as with a local model; the server runs the graph. The model's
description (thresholds, score normalisation, colour order) comes from the server's `cfrg_model_json` config
parameter. A batch goes as one request. When the server is unreachable, run() fails at once for a back-off that
doubles from `retry_initial_s` to `retry_max_s`, then tries a fresh connection: a Stream gives error records while
the server is down and results again after, one record per frame.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

from ..sources import SourceError
from . import SERVER_SCHEMES as SCHEMES
from . import ModelFileError
TRITON_INSTALL = "pip install 'cfrg-inspect[triton]' (tritonclient[grpc,http])"


class ServerUnavailable(SourceError):
    """The inference server cannot be reached (down, restarting, wrong address) or did not answer in time."""


@dataclass(frozen=True)
class ServerAddress:
    scheme: str
    host: str  # host:port
    model: str
    version: str = ""  # "": the server's choice (its latest)

    @classmethod
    def parse(cls, url: str) -> "ServerAddress":
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        names = [p for p in parts.path.split("/") if p]
        if scheme not in SCHEMES or not parts.hostname or not 1 <= len(names) <= 2:
            raise ValueError(f"{url!r} is not a model on a server: write grpc://HOST:PORT/NAME or http://HOST:PORT/NAME "
                             f"(optionally /VERSION after the name)")
        try:
            port = parts.port or SCHEMES[scheme]
        except ValueError:
            raise ValueError(f"{url!r}: the port is not a number in 1..65535") from None
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return cls(scheme, f"{host}:{port}", names[0], names[1] if len(names) == 2 else "")

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}/{self.model}" + (f"/{self.version}" if self.version else "")


def _client_module(scheme: str):
    try:
        if scheme == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as exc:
        raise ImportError(f"a model on a Triton server needs tritonclient ({exc}): {TRITON_INSTALL}") from exc
    return module


class TritonBackend:
    """A served model behind the Backend protocol (sdk.backends)."""

    name = "triton"

    def __init__(self, url: str, timeout_s: float = 10.0, retry_initial_s: float = 0.5, retry_max_s: float = 10.0):
        if not (timeout_s > 0 and 0 < retry_initial_s <= retry_max_s):
            raise ValueError(f"timeout_s must be > 0 and 0 < retry_initial_s <= retry_max_s, got {timeout_s}, "
                             f"{retry_initial_s}, {retry_max_s}")
        self.address = ServerAddress.parse(url)
        self.url = str(self.address)
        self.timeout_s, self.retry_initial_s, self.retry_max_s = float(timeout_s), float(retry_initial_s), float(retry_max_s)
        self._module = _client_module(self.address.scheme)
        self._lock = threading.Lock()
        self._client = None
        self._closed = False
        self._backoff = 0.0
        self._retry_at = 0.0
        self._down_since: float | None = None
        self._why = ""
        self._describe()

    # -- connection ---------------------------------------------------------------------------

    def _connect(self):
        if self._client is None:
            if self.address.scheme == "grpc":
                self._client = self._module.InferenceServerClient(self.address.host)
            else:
                self._client = self._module.InferenceServerClient(
                    self.address.host, ssl=self.address.scheme == "https", connection_timeout=self.timeout_s,
                    network_timeout=self.timeout_s)
        return self._client

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped either way
                pass

    def _unavailable(self, exc: Exception) -> str | None:
        """Why the server is away (unreachable or timed out; up but the model not loaded, as while it restarts),
        or None when the server refused the request itself."""
        status = str(getattr(exc, "status", lambda: "")() or "")
        text = f"{status} {exc}".lower()
        if isinstance(exc, OSError) or any(word in text for word in (
                "unavailable", "deadline", "connect", "timed out", "timeout", "refused", "broken pipe",
                "reset by peer", "socket closed")):
            return "the server is unreachable"
        if any(word in text for word in ("unknown model", "not_found", "no available versions", "not ready")):
            return f"the server does not serve {self.address.model!r} now (restarting, or the model was unloaded)"
        return None

    def _call(self, what: str, fn):
        """fn(client) with the server's failures as ServerUnavailable / ModelFileError; the back-off kept."""
        if self._closed:
            raise RuntimeError("this Triton backend is closed")
        now = time.monotonic()
        if now < self._retry_at:
            raise ServerUnavailable(f"{self.url}: {self._why} (for {now - self._down_since:.1f} s); next try in "
                                    f"{self._retry_at - now:.1f} s")
        try:
            result = fn(self._connect())
        except Exception as exc:  # noqa: BLE001 - tritonclient raises its own exception types
            why = self._unavailable(exc)
            if why is None:
                raise
            self._drop_client()
            self._backoff = min(self.retry_max_s, self._backoff * 2 if self._backoff else self.retry_initial_s)
            self._retry_at = time.monotonic() + self._backoff
            self._down_since, self._why = self._down_since or now, why
            raise ServerUnavailable(f"{self.url}: {what} failed, {why} ({_one_line(exc)}); start it (cfrg serve / "
                                    f"tritonserver) or check the address; next try in {self._backoff:.1f} s") from None
        self._backoff, self._retry_at, self._down_since = 0.0, 0.0, None
        return result

    # -- description --------------------------------------------------------------------------

    def _describe(self) -> None:
        from ..triton.repository import DESCRIPTION_PARAMETER

        name, version = self.address.model, self.address.version
        exc_type = self._module.InferenceServerException

        def read(client):
            try:
                ready = client.is_model_ready(name, version)
            except exc_type as exc:
                if self._unavailable(exc):
                    raise
                ready = False
            if not ready:
                return None
            if self.address.scheme == "grpc":
                return (client.get_model_config(name, version, as_json=True)["config"],
                        client.get_model_metadata(name, version, as_json=True))
            return client.get_model_config(name, version), client.get_model_metadata(name, version)

        described = self._call("connecting", read)
        if described is None:
            raise ModelFileError(f"{self.url}: the server serves no model {name!r}"
                                 f"{' version ' + version if version else ''} that is ready "
                                 f"({self._served_models()}); check the name in the URL")
        config, metadata = described
        parameters = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        if DESCRIPTION_PARAMETER not in parameters:
            raise ModelFileError(f"{self.url}: the served model has no '{DESCRIPTION_PARAMETER}' parameter, so it is "
                                 f"not a CFRG model of cfrg serve / cfrg triton (or another model under this name); "
                                 f"serve the model with `cfrg serve --model model.onnx`")
        self._description = parameters[DESCRIPTION_PARAMETER]
        self.max_batch = int(config.get("max_batch_size", 0) or 0)
        self._inputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in metadata.get("inputs", [])}
        self._outputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in metadata.get("outputs", [])}
        self.input_names, self.output_names = list(self._inputs), list(self._outputs)
        for tensor, (dtype, _) in {**self._inputs, **self._outputs}.items():
            want = "UINT8" if tensor in self._inputs else "FP32"
            if dtype != want:
                raise ModelFileError(f"{self.url}: the served tensor {tensor!r} is {dtype}, a CFRG model's is {want}; "
                                     f"another model is served under this name")

    def _served_models(self) -> str:
        """What the server says it serves, for an error message (PyTriton restricts the repository index)."""
        try:
            client = self._connect()
            index = client.get_model_repository_index(as_json=True) if self.address.scheme == "grpc" else \
                {"models": client.get_model_repository_index()}
        except Exception:  # noqa: BLE001 - the list only adds to the message
            return "the server does not list its models"
        names = sorted({m["name"] for m in index.get("models", []) if m.get("state", "READY") == "READY"})
        return f"it serves: {', '.join(names) or 'none'}"

    # -- the Backend protocol -----------------------------------------------------------------

    def input_shape(self, name: str) -> tuple:
        return tuple(self._inputs[name][1])  # with batching, Triton gives the batch dimension as -1

    def metadata(self) -> dict[str, str]:
        from ..model_info import METADATA_KEY

        return {METADATA_KEY: self._description}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ((name, batch),) = feeds.items()
        batch = np.ascontiguousarray(batch)
        if self.max_batch and len(batch) > self.max_batch:  # the server's limit: several requests
            parts = [self.run({name: batch[s:s + self.max_batch]}) for s in range(0, len(batch), self.max_batch)]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        module = self._module

        def infer(client):
            tensor = module.InferInput(name, list(batch.shape), "UINT8")
            tensor.set_data_from_numpy(batch)
            outputs = [module.InferRequestedOutput(o) for o in self.output_names]
            kwargs = {"client_timeout": self.timeout_s} if self.address.scheme == "grpc" else {}
            return client.infer(self.address.model, [tensor], model_version=self.address.version, outputs=outputs,
                                **kwargs)

        with self._lock:  # one request at a time per backend (Detector.replicas gives each worker its own)
            response = self._call("inference", infer)
        n = len(batch)
        maps = response.as_numpy("anomaly_map").astype(np.float32, copy=False)
        scores = response.as_numpy("score").astype(np.float32, copy=False).reshape(n)  # (N,) or (N, 1)
        return {"anomaly_map": maps, "score": scores}

    def preferred_workers(self) -> int:
        """Two requests in flight: one is sent while the other is served, and the server batches across them."""
        return 2

    def worker_options(self, workers: int) -> dict:
        return {"timeout_s": self.timeout_s, "retry_initial_s": self.retry_initial_s, "retry_max_s": self.retry_max_s}

    def close(self) -> None:
        self._closed = True
        self._drop_client()


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__

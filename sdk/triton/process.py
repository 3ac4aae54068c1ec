"""A `cfrg serve` server as a child process (ServerProcess): started in the server environment's Python, ready
when it announces its address, stopped (or killed, for fault tests) with its whole process group.

    with ServerProcess("model.onnx", name="line3", python=".venv-serve/bin/python") as server:
        det = sdk.Detector(server.url("grpc"))

Each server runs under `timeout`, so it ends by itself even if its parent dies without stopping it.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Sequence


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports nobody listens on now (the OS's choice; several at once, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def serve_python() -> str:
    """The server environment's interpreter: $CFRG_SERVE_PYTHON, else .venv-serve beside this checkout, else
    this interpreter."""
    given = os.environ.get("CFRG_SERVE_PYTHON")
    if given:
        return given
    beside = Path(__file__).resolve().parents[2] / ".venv-serve" / "bin" / "python"
    return str(beside) if beside.exists() else sys.executable


class ServerProcess:
    """`cfrg serve --model MODEL --name NAME` on loopback ports of its own, as a child process."""

    def __init__(self, model: str | os.PathLike, name: str = "model", *, python: str | None = None,
                 host: str = "127.0.0.1", extra_args: Sequence[str] = (), start_timeout_s: float = 180.0,
                 lifetime_s: float = 1800.0, log_file: str | os.PathLike | None = None):
        self.model, self.name, self.host = Path(model), name, host
        self.python = python or serve_python()
        self.grpc_port, self.http_port, self.metrics_port = free_ports(3, host)
        self.extra_args, self.start_timeout_s, self.lifetime_s = list(extra_args), start_timeout_s, lifetime_s
        self.log_file = log_file
        self.process: subprocess.Popen | None = None
        self.output: deque[str] = deque(maxlen=200)  # the server's last lines, for error messages
        self.announcement: str | None = None

    def url(self, scheme: str = "grpc") -> str:
        port = self.grpc_port if scheme == "grpc" else self.http_port
        return f"{scheme}://{self.host}:{port}/{self.name}"

    def command(self) -> list[str]:
        return ["timeout", "-s", "INT", "-k", "30", str(int(self.lifetime_s)), self.python, "-m", "sdk.cli", "serve",
                "--model", str(self.model), "--name", self.name, "--host", self.host,
                "--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port),
                "--metrics-port", str(self.metrics_port), *(["--log-file", str(self.log_file)] if self.log_file else []),
                *self.extra_args]

    def start(self) -> "ServerProcess":
        """Start the server (again, on the same ports, after stop() or kill()) and wait until it serves."""
        if self.running:
            raise RuntimeError(f"the server of {self.name} is already running")
        ready = threading.Event()
        self.announcement = None
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]),
               "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=env, start_new_session=True)
        threading.Thread(target=self._read, args=(self.process, ready), daemon=True,
                         name=f"cfrg-serve-{self.name}-output").start()
        deadline = time.monotonic() + self.start_timeout_s
        while not ready.wait(0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                tail = "\n".join(list(self.output)[-15:])
                raise RuntimeError(f"cfrg serve did not start ({'exited' if self.process.returncode is not None else 'timed out'}"
                                   f"; command: {' '.join(self.command())}); its last output:\n{tail}")
        return self

    def _read(self, process: subprocess.Popen, ready: threading.Event) -> None:
        for line in process.stdout:
            line = line.rstrip("\n")
            self.output.append(line)
            if line.startswith(f"serving {self.name} "):
                self.announcement = line
                ready.set()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL to the server and its children (a crash, as a fault test wants it); waits for the exit."""
        if self.process is not None:
            self._signal_group(signal.SIGKILL)
            self.process.wait(30)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ctrl-C, as a user stops it; killed after timeout_s."""
        if not self.running:
            return
        self._signal_group(signal.SIGINT)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

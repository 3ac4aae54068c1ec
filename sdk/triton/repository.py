"""A Triton Inference Server model repository from our artifacts (`cfrg triton`): NAME/config.pbtxt and
NAME/VERSION/model.onnx (backend onnxruntime) or model.plan (backend tensorrt, an engine of `cfrg build`).

The config is written as Triton's ModelConfig in protobuf text format: the input and outputs with their
dtypes and dims from model.json (the batch dimension left to max_batch_size), dynamic batching with
preferred batch sizes and a queue delay, an instance group, and the model description (thresholds, score
normalisation, colour order, provenance) as the parameter `cfrg_model_json`, so a client reads it from the
server. No tritonclient needed to write it; the tests parse it with Triton's own schema.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..backends import ModelFileError, refuse_folder
from ..model_info import ModelInfo

DESCRIPTION_PARAMETER = "cfrg_model_json"
KINDS = ("auto", "cpu", "gpu")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class RepositoryOptions:
    """What `cfrg triton` is asked for."""
    model: Path  # model.onnx (FP32 or a precision graph) or an engine of cfrg build
    repository: Path
    name: str
    version: int = 1
    max_batch: int = 8
    preferred_batches: tuple[int, ...] = ()  # () -> the powers of two up to max_batch, from 2
    queue_delay_us: int = 500
    instances: int = 1
    kind: str = "auto"  # auto: GPU for an engine, CPU for ONNX

    def check(self) -> None:
        check_name(self.name)
        if self.kind not in KINDS:
            raise ValueError(f"--kind {self.kind!r}: choose one of {', '.join(KINDS)}")
        if self.is_engine and self.kind == "cpu":
            raise ValueError(f"--kind cpu: {self.model.name} is a TensorRT engine, which runs on a GPU only; serve "
                             f"the ONNX model on a CPU")
        check_batching(self.max_batch, self.preferred_batches, self.instances)

    @property
    def is_engine(self) -> bool:
        return self.model.suffix in (".engine", ".plan")

    @property
    def backend(self) -> str:
        return "tensorrt" if self.is_engine else "onnxruntime"

    @property
    def model_file(self) -> str:
        return "model.plan" if self.is_engine else "model.onnx"

    @property
    def preferred(self) -> tuple[int, ...]:
        return preferred_batch_sizes(self.max_batch, self.preferred_batches)


def check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"--name {name!r}: a Triton model name is one folder name of letters, digits, "
                         f"'_', '.' and '-' (at most 128), starting with a letter or digit")


def check_batching(max_batch: int, preferred_batches: tuple[int, ...], instances: int) -> None:
    if max_batch < 1 or instances < 1:
        raise ValueError(f"--max-batch and --instances must be at least 1, got {max_batch} and {instances}")
    bad = [b for b in preferred_batches if not 1 <= b <= max_batch]
    if bad:
        raise ValueError(f"--preferred-batch {bad[0]}: preferred batch sizes lie in 1..--max-batch ({max_batch})")


def preferred_batch_sizes(max_batch: int, given: tuple[int, ...] = ()) -> tuple[int, ...]:
    """The sizes the dynamic batcher aims for: those given, else the powers of two up to max_batch, from 2."""
    if given:
        return tuple(sorted(set(given)))
    powers, b = [], 2
    while b <= max_batch:
        powers.append(b)
        b *= 2
    return tuple(powers) or (1,)


def text_string(value: str) -> str:
    """A protobuf text-format string literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def config_text(info: ModelInfo, options: RepositoryOptions) -> str:
    """config.pbtxt for the model that `info` describes."""
    h, w, c = info.input.height, info.input.width, info.input.channels
    kind = "KIND_GPU" if options.kind == "gpu" or (options.kind == "auto" and options.is_engine) else "KIND_CPU"
    lines = [
        f"name: {text_string(options.name)}",
        f'backend: "{options.backend}"',
        f"max_batch_size: {options.max_batch}",
        "input [",
        f"  {{ name: {text_string(info.input.name)} data_type: TYPE_UINT8 dims: [ {h}, {w}, {c} ] }}",
        "]",
        "output [",
        f"  {{ name: \"anomaly_map\" data_type: TYPE_FP32 dims: [ {h}, {w} ] }},",
        # the score is (N,): with batching Triton takes it as dims [1] reshaped to the model's []
        "  { name: \"score\" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } }",
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(str(b) for b in options.preferred)} ]",
        f"  max_queue_delay_microseconds: {options.queue_delay_us}",
        "}",
        f"instance_group [ {{ count: {options.instances} kind: {kind} }} ]",
        "parameters {",
        f"  key: \"{DESCRIPTION_PARAMETER}\"",
        f"  value: {{ string_value: {text_string(info.to_json())} }}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def engine_batch_range(info: ModelInfo, model: Path) -> tuple[int, int]:
    shapes = info.engine_spec(model).shapes
    try:
        return int(shapes["min"][0]), int(shapes["max"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        raise ModelFileError(f"{model.with_suffix('.json')}: the engine's description has no batch range "
                             f"(engine.shapes min/max); rebuild it with `cfrg build`") from None


def write_repository(options: RepositoryOptions) -> tuple[Path, ModelInfo]:
    """REPOSITORY/NAME (config.pbtxt, VERSION/model.onnx or model.plan), written whole or not at all; returns
    the model folder and the description it carries."""
    options.check()
    refuse_folder(options.model)
    if not options.model.is_file():
        raise ModelFileError(f"model file {options.model} does not exist: pass a model.onnx from `cfrg export` or "
                             f"an engine from `cfrg build`")
    if options.is_engine:
        info = ModelInfo.read(options.model)
        low, high = engine_batch_range(info, options.model)
        if low != 1:
            raise ValueError(f"{options.model.name} was built for batches of {low} to {high} only (a DLA engine has "
                             f"one size): Triton sends any batch from 1 to --max-batch; serve a GPU engine built "
                             f"with --minShapes=...:1x... or the ONNX model")
        if options.max_batch > high:
            raise ValueError(f"--max-batch {options.max_batch}: {options.model.name} takes batches up to {high}; "
                             f"pass --max-batch {high} or rebuild with a larger --maxShapes")
    else:  # the graph checked against its description (which may be inside it)
        from ..backends.onnxruntime import OnnxRuntimeBackend

        info = ModelInfo.read(options.model, OnnxRuntimeBackend(options.model))
    folder = options.repository / options.name
    if folder.exists():
        raise FileExistsError(f"{folder} already exists: pass another --name, or remove it (a running Triton "
                              f"server reloads a model folder it polls)")
    options.repository.mkdir(parents=True, exist_ok=True)
    staging = options.repository / f".{options.name}.incomplete"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / str(options.version)).mkdir(parents=True)
        shutil.copyfile(options.model, staging / str(options.version) / options.model_file)
        (staging / "config.pbtxt").write_text(config_text(info, options), encoding="utf-8")
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder, info


def description_from_parameters(parameters: dict) -> ModelInfo:
    """The model description a server carries in its config's parameters ({key: string_value})."""
    text = parameters.get(DESCRIPTION_PARAMETER)
    if text is None:
        raise ModelFileError(f"the served model has no '{DESCRIPTION_PARAMETER}' parameter: it was not written by "
                             f"`cfrg triton`; write its repository with `cfrg triton`")
    return ModelInfo.from_dict(json.loads(text), f"the server's '{DESCRIPTION_PARAMETER}' parameter")

"""model.json: the description that travels beside every model file (and inside an ONNX file's metadata).

This module is its one owner: the ONNX exporter writes it, sdk.Detector reads it, the engine builder
will write its own through it, and every reader gets the same validation. A description with an
unknown format version, a missing key, a value out of range or a mismatch with the graph is refused
with one ModelFileError that names the file, the problem and the fix.

    {"format": "cfrg-model-2",
     "input": {"name", "height", "width", "channels": 3, "dtype": "uint8", "layout": "NHWC", "colour_order"},
     "outputs": {"anomaly_map": text, "score": text},
     "normalisation": {"inside_graph", "scale", "mean", "std"},
     "thresholds": {"default": name, name: {"image", "pixel", ...how they were measured}},
     "score_normalisation": {"method": "affine", "offset", "scale", "formula"},
     "precision": "fp32" | "fp16" | "int8",
     "provenance": {"source_model", "source_sha256", "data_fingerprint", "versions", "created"},
     "training": {...}, "model": {...}, "map_statistics": {...},
     "engine": {"tensorrt", "gpu", "compute_capability", "precision", "shapes", "source_onnx", ...},  (engines)
     "precision_check": {...},  (reduced-precision graphs and engines: sdk.build.precision_check against FP32)
     "threshold_history": [{"replaced", "by", "thresholds", "default", "score_normalisation"}, ...],  (cfrg threshold)
     "drift_reference": {...},  (optional: what the held-back good images looked like, sdk.drift; older files lack it)
     "tiling": {"scale", "tile": [h, w], "overlap", "margin", "score_top", "join"}}  (models trained on tiles,
         cfrg train --scale: frame pixels per model pixel, the tile (the input), the overlap and each tile's margin
         in model pixels, the highest tiles whose scores' mean is the frame's score (1 when absent), how
         overlapping insides combine ("max" when absent))

"cfrg-model-1" descriptions (before provenance existed) are read and upgraded.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import ModelFileError
from .files import atomic_write
from .tiling import TILE_JOINS

FORMAT = "cfrg-model-2"
FORMATS = ("cfrg-model-1", FORMAT)  # what this release reads
METADATA_KEY = "cfrg"  # the ONNX metadata entry that holds the same JSON
OUTPUT_NAMES = ("anomaly_map", "score")
COLOUR_ORDERS = ("RGB", "BGR")
PRECISIONS = ("fp32", "fp16", "int8")
REEXPORT = "re-export the model with `cfrg export`"


class _Invalid(Exception):
    """A problem found while validating; turned into one ModelFileError naming the file."""


def _finite(value: Any, what: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Invalid(f"{what} must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise _Invalid(f"{what} must be > 0, got {value!r}")
    return float(value)


def _int(value: Any, what: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _Invalid(f"{what} must be a whole number >= {low}, got {value!r}")
    return value


def _one_of(value: Any, what: str, choices: tuple[str, ...], fold=str.upper) -> str:
    folded = fold(value) if isinstance(value, str) else value
    if folded not in choices:
        raise _Invalid(f"{what} must be one of {', '.join(choices)}, got {value!r}")
    return folded


def _mapping(d: dict, key: str, where: str = "") -> dict:
    value = _key(d, key, where)
    if not isinstance(value, dict):
        raise _Invalid(f"'{where}{key}' must be an object, got {type(value).__name__}")
    return value


def _key(d: dict, key: str, where: str = "") -> Any:
    if key not in d:
        raise _Invalid(f"missing key '{where}{key}'")
    return d[key]


@dataclass(frozen=True)
class InputSpec:
    """The graph input: uint8 NHWC frames at the model size in `colour_order`."""

    name: str
    height: int
    width: int
    colour_order: str  # "RGB" or "BGR"
    channels: int = 3
    dtype: str = "uint8"
    layout: str = "NHWC"

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        name = _key(d, "name", "input.")
        if not isinstance(name, str) or not name:
            raise _Invalid(f"'input.name' must be a tensor name, got {name!r}")
        spec = cls(name=name, height=_int(_key(d, "height", "input."), "'input.height'"),
                   width=_int(_key(d, "width", "input."), "'input.width'"),
                   colour_order=_one_of(_key(d, "colour_order", "input."), "'input.colour_order'", COLOUR_ORDERS),
                   channels=d.get("channels", 3), dtype=d.get("dtype", "uint8"), layout=d.get("layout", "NHWC"))
        if (spec.channels, spec.dtype, spec.layout) != (3, "uint8", "NHWC"):
            raise _Invalid(f"input must be 3-channel uint8 NHWC frames, the description says {spec.channels}-channel "
                           f"{spec.dtype} {spec.layout}")
        return spec


@dataclass(frozen=True)
class Threshold:
    """An image-score threshold and a pixel threshold, with how they were measured."""

    image: float
    pixel: float
    details: dict = field(default_factory=dict)  # target_frr, n_images, f1, split, ...

    @classmethod
    def from_dict(cls, name: str, d: Any) -> "Threshold":
        if not isinstance(d, dict):
            raise _Invalid(f"'thresholds.{name}' must be an object with 'image' and 'pixel', got {d!r}")
        image = _finite(_key(d, "image", f"thresholds.{name}."), f"'thresholds.{name}.image'")
        pixel = _finite(_key(d, "pixel", f"thresholds.{name}."), f"'thresholds.{name}.pixel'")
        return cls(image, pixel, {k: v for k, v in d.items() if k not in ("image", "pixel")})

    def to_dict(self) -> dict:
        return {"image": self.image, "pixel": self.pixel, **self.details}


@dataclass(frozen=True)
class ScoreNormalisation:
    """normalised = (score - offset) / scale: 0 for a typical good part, 1.0 at the image threshold."""

    offset: float
    scale: float

    @classmethod
    def from_dict(cls, d: dict) -> "ScoreNormalisation":
        method = d.get("method", "affine")
        if method != "affine":
            raise _Invalid(f"'score_normalisation.method' must be 'affine', got {method!r}")
        return cls(_finite(_key(d, "offset", "score_normalisation."), "'score_normalisation.offset'"),
                   _finite(_key(d, "scale", "score_normalisation."), "'score_normalisation.scale'", positive=True))

    def to_dict(self) -> dict:
        return {"method": "affine", "offset": self.offset, "scale": self.scale,
                "formula": "(score - offset) / scale; 1.0 = image threshold"}


@dataclass(frozen=True)
class Provenance:
    """Where a model file came from: the file it was made from, the data, the software."""

    source_model: str | None = None  # file name of the checkpoint (or ONNX graph) it was made from
    source_sha256: str | None = None
    data_fingerprint: str | None = None
    versions: dict = field(default_factory=dict)
    created: str | None = None  # UTC, ISO 8601

    @classmethod
    def from_dict(cls, d: dict) -> "Provenance":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def made_from(cls, source: str | os.PathLike, data_fingerprint: str | None, versions: dict,
                  source_sha256: str | None = None) -> "Provenance":
        """A model file's provenance, made now from `source` (its SHA-256 computed unless given)."""
        return cls(source_model=Path(source).name, source_sha256=source_sha256 or file_sha256(source),
                   data_fingerprint=data_fingerprint, versions=versions, created=utc_now())


@dataclass(frozen=True)
class EngineSpec:
    """What a TensorRT engine needs from the machine that runs it (model.json's "engine", by cfrg build)."""

    tensorrt: str  # the exact TensorRT version that built it
    version_compatible: bool = False  # built with --versionCompatible: runs on that version or a later one
    gpu: str | None = None
    compute_capability: str | None = None
    dla_core: int | None = None  # the DLA core the runtime must select before deserializing
    shapes: dict = field(default_factory=dict)  # min / opt / max of the input
    plan_sha256: str | None = None  # the plan this description was written for

    @classmethod
    def from_dict(cls, d: dict) -> "EngineSpec":
        version = d.get("tensorrt")
        if not isinstance(version, str) or not version[:1].isdigit():
            raise _Invalid(f"'engine.tensorrt' must be the TensorRT version that built the engine, got {version!r}")
        dla = d.get("dla_core")
        return cls(tensorrt=version, version_compatible=bool(d.get("version_compatible", False)), gpu=d.get("gpu"),
                   compute_capability=d.get("compute_capability"),
                   dla_core=None if dla is None else _int(dla, "'engine.dla_core'", low=0),
                   shapes=dict(d.get("shapes") or {}), plan_sha256=d.get("plan_sha256"))


@dataclass(frozen=True)
class ModelInfo:
    input: InputSpec
    thresholds: dict[str, Threshold]
    default_threshold: str
    score_normalisation: ScoreNormalisation
    outputs: dict = field(default_factory=lambda: dict.fromkeys(OUTPUT_NAMES, ""))
    normalisation: dict = field(default_factory=dict)
    precision: str = "fp32"
    provenance: Provenance = field(default_factory=Provenance)
    training: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    map_statistics: dict = field(default_factory=dict)
    engine: dict = field(default_factory=dict)  # TensorRT engines: version, GPU, precision, shapes, source graph
    precision_check: dict = field(default_factory=dict)  # reduced precision: the check against FP32 (cfrg build)
    threshold_history: list = field(default_factory=list)  # thresholds replaced by cfrg threshold, oldest first
    drift_reference: dict = field(default_factory=dict)  # sdk.drift: good images' statistics and scores at export
    # trained on tiles: {"scale", "tile", "overlap", "margin", "score_top", "join"}; {}: whole frames
    tiling: dict = field(default_factory=dict)
    format: str = FORMAT

    # -- dict / JSON -----------------------------------------------------------------------

    def to_dict(self) -> dict:
        return copy.deepcopy({
            "format": self.format,
            "input": dataclasses.asdict(self.input),
            "outputs": dict(self.outputs),
            "normalisation": dict(self.normalisation),
            "thresholds": {"default": self.default_threshold,
                           **{name: t.to_dict() for name, t in self.thresholds.items()}},
            "score_normalisation": self.score_normalisation.to_dict(),
            "precision": self.precision,
            "provenance": dataclasses.asdict(self.provenance),
            "training": dict(self.training),
            "model": dict(self.model),
            "map_statistics": dict(self.map_statistics),
            **({"engine": dict(self.engine)} if self.engine else {}),
            **({"precision_check": dict(self.precision_check)} if self.precision_check else {}),
            **({"threshold_history": list(self.threshold_history)} if self.threshold_history else {}),
            **({"drift_reference": dict(self.drift_reference)} if self.drift_reference else {}),
            **({"tiling": dict(self.tiling)} if self.tiling else {}),
        })  # a copy all the way down: editing it leaves this description as it was

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, d: Any, source: str = "model description") -> "ModelInfo":
        """Validate and build; ModelFileError naming `source` for anything wrong."""
        try:
            return cls._from_dict(d)
        except _Invalid as exc:
            raise ModelFileError(f"{source}: {exc}; {REEXPORT}") from None

    @classmethod
    def _from_dict(cls, d: Any) -> "ModelInfo":
        if not isinstance(d, dict):
            raise _Invalid(f"expected a JSON object, got {type(d).__name__}")
        fmt = d.get("format")
        if fmt not in FORMATS:
            raise _Invalid(f"unknown format {fmt!r} (this release reads {', '.join(FORMATS)}): it was written by "
                           f"another version of the SDK; use that version, or")
        if fmt == "cfrg-model-1":  # provenance was spread over the top level then
            d = {**d, "provenance": {"data_fingerprint": d.get("data_fingerprint"), "versions": d.get("versions", {})}}
        table = _mapping(d, "thresholds")
        names = [k for k in table if k != "default"]
        if not names:
            raise _Invalid("'thresholds' holds no threshold")
        default = table.get("default", "good_only")
        if default not in names:
            raise _Invalid(f"'thresholds.default' is {default!r} but the thresholds are {names}")
        outputs = _mapping(d, "outputs")
        missing = [o for o in OUTPUT_NAMES if o not in outputs]
        if missing:
            raise _Invalid(f"'outputs' lacks {missing}")
        normalisation = d.get("normalisation", {})
        if not isinstance(normalisation, dict):
            raise _Invalid("'normalisation' must be an object")
        for key in ("mean", "std"):
            values = normalisation.get(key, [])
            if not isinstance(values, list) or len(values) not in (0, 3):
                raise _Invalid(f"'normalisation.{key}' must list 3 numbers, got {values!r}")
            for v in values:
                _finite(v, f"'normalisation.{key}'", positive=key == "std")
        provenance = d.get("provenance", {})
        for key in ("provenance", "training", "model", "map_statistics", "engine", "precision_check"):
            if not isinstance(d.get(key, {}), dict):
                raise _Invalid(f"'{key}' must be an object")
        drift_reference = d.get("drift_reference") or {}
        if drift_reference:
            from .drift import DriftReferenceError, check_reference
            try:
                check_reference(drift_reference)
            except DriftReferenceError as exc:
                raise _Invalid(f"'drift_reference' {exc}") from None
        return cls(
            format=FORMAT,
            input=InputSpec.from_dict(_mapping(d, "input")),
            outputs=dict(outputs),
            normalisation=dict(normalisation),
            thresholds={name: Threshold.from_dict(name, table[name]) for name in names},
            default_threshold=default,
            score_normalisation=ScoreNormalisation.from_dict(_mapping(d, "score_normalisation")),
            precision=_one_of(d.get("precision", "fp32"), "'precision'", PRECISIONS, fold=str.lower),
            provenance=Provenance.from_dict(provenance),
            training=dict(d.get("training", {})),
            model=dict(d.get("model", {})),
            map_statistics=dict(d.get("map_statistics", {})),
            precision_check=dict(d.get("precision_check", {})),
            threshold_history=_history(d.get("threshold_history", [])),
            engine=dict(d.get("engine", {})),
            drift_reference=copy.deepcopy(dict(drift_reference)),
            tiling=_tiling(d.get("tiling") or {}, _mapping(d, "input")),
        )

    @property
    def tile_plan(self):
        """The sdk.tiling.TilePlan a model trained on tiles was trained with (None for whole-frame models)."""
        if not self.tiling:
            return None
        from .tiling import TilePlan

        return TilePlan(tuple(self.tiling["tile"]), self.tiling["overlap"], 1.0 / self.tiling["scale"],
                        self.tiling.get("margin", 0), self.tiling.get("score_top", 1), self.tiling.get("join", "max"))

    # -- files -----------------------------------------------------------------------------

    def write_beside(self, model_path: str | os.PathLike) -> Path:
        """Writes model.json beside model_path (atomically); returns its path."""
        path = sidecar_path(model_path)
        atomic_write(path, self.to_json())
        return path

    @classmethod
    def read(cls, model_path: str | os.PathLike, backend=None) -> "ModelInfo":
        """The description beside `model_path` (model.json), else the same JSON in the backend's metadata;
        checked against the backend's graph when one is given."""
        from .backends import is_server_url

        side = None if is_server_url(model_path) else sidecar_path(model_path)
        model_path = model_path if side is None else Path(model_path)
        if side is not None and side.is_file():
            source = str(side)
            try:
                text = side.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError) as exc:
                raise ModelFileError(f"{source} cannot be read as UTF-8 text ({exc}); {REEXPORT}") from None
        else:
            meta = backend.metadata() if backend is not None else {}
            if METADATA_KEY not in meta:
                beside = "" if side is None else f"{side.name} beside it or "
                raise ModelFileError(f"{model_path}: no CFRG model description ({beside}'{METADATA_KEY}' metadata "
                                     f"inside); export the model with `cfrg export`")
            source, text = f"{model_path} (its '{METADATA_KEY}' metadata)", meta[METADATA_KEY]
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"{source} is not valid JSON ({exc}); {REEXPORT}") from exc
        info = cls.from_dict(d, source)
        if backend is not None:
            info.check_graph(backend, model_path, side)
            info.check_metadata(backend, model_path, side)
        return info

    def check_metadata(self, backend, model_path, side) -> None:
        """model.json and the description inside the graph come from the same export (a crash between the two
        writes, or a model.json copied from another export, would pair a graph with another's thresholds)."""
        if side is None or not Path(side).is_file():
            return
        inner = backend.metadata().get(METADATA_KEY)
        if inner is None:
            return
        try:
            theirs = json.loads(inner).get("provenance", {})
        except (json.JSONDecodeError, AttributeError):
            return
        ours = dataclasses.asdict(self.provenance)
        if ours.get("created") is None and ours.get("source_sha256") is None:
            return  # a cfrg-model-1 description (before provenance): nothing to compare
        if any(theirs.get(k) != ours.get(k) for k in ("source_sha256", "created")):
            raise ModelFileError(f"{side} belongs to another export than {Path(model_path).name} (its description "
                                 f"inside was created {theirs.get('created')}, {Path(side).name} {ours.get('created')}): "
                                 f"re-export the model, or remove {Path(side).name} to use the one inside")

    def check_graph(self, backend, model_path: str | os.PathLike, side: str | os.PathLike | None = None) -> None:
        """The graph's input and outputs are the ones described."""
        side_name = Path(side).name if side is not None else "its description"
        name = self.input.name
        if name not in backend.input_names:
            raise ModelFileError(f"{model_path}: the graph has no input {name!r} (it has {backend.input_names}); "
                                 f"{side_name} belongs to another model: {REEXPORT}")
        shape, want = list(backend.input_shape(name)[1:]), [self.input.height, self.input.width, 3]
        if shape != want:
            raise ModelFileError(f"{model_path}: graph input is {shape} but {side_name} says {want}; the model and "
                                 f"its description do not match: re-export both")
        missing = [o for o in OUTPUT_NAMES if o not in backend.output_names]
        if missing:
            raise ModelFileError(f"{model_path}: the graph lacks the outputs {missing} (it has {backend.output_names}); "
                                 f"it is not a CFRG model: {REEXPORT}")

    # -- use -------------------------------------------------------------------------------

    def threshold(self, choice: str | float = "default") -> tuple[float, float]:
        """(image, pixel) thresholds: a recorded name ("default", "good_only", "f1") or one number for both."""
        if isinstance(choice, bool) or not isinstance(choice, (str, int, float)):
            raise ValueError(f"threshold must be a name or a number, got {choice!r}")
        if not isinstance(choice, str):
            value = float(choice)
            if not math.isfinite(value):
                raise ValueError(f"threshold {choice!r} is not a finite number; give a score such as 1.5, or "
                                 f"one of {sorted(self.thresholds)}")
            return value, value
        name = self.default_threshold if choice == "default" else choice
        if name not in self.thresholds:
            raise ValueError(f"threshold {choice!r}: this model has {sorted(self.thresholds)} (or give a number)")
        entry = self.thresholds[name]
        return entry.image, entry.pixel

    def engine_spec(self, model_path: str | os.PathLike) -> EngineSpec:
        """The engine's requirements; ModelFileError where this is not an engine's description."""
        if not self.engine:
            raise ModelFileError(f"{sidecar_path(model_path)} describes no TensorRT engine (no 'engine' entry): it "
                                 f"belongs to an ONNX model; build the engine with `cfrg build`, which writes its own")
        try:
            return EngineSpec.from_dict(self.engine)
        except _Invalid as exc:
            raise ModelFileError(f"{sidecar_path(model_path)}: {exc}; rebuild the engine with `cfrg build`") from None

    def normalise_score(self, score: float) -> float:
        return (score - self.score_normalisation.offset) / self.score_normalisation.scale


def _history(entries: Any) -> list:
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("thresholds"), dict)
                                                for e in entries):
        raise _Invalid("'threshold_history' must list objects with the 'thresholds' they held")
    return [dict(e) for e in entries]


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """model.json beside model.onnx / model.engine."""
    return Path(model_path).with_suffix(".json")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def software_versions(*packages: str) -> dict:
    """Python's, the SDK's and each named package's version (None where it is not installed)."""
    import importlib
    import platform

    from . import __version__

    found = {"python": platform.python_version(), "sdk": __version__}
    for name in packages:
        try:
            found[name] = importlib.import_module(name).__version__
        except ImportError:
            found[name] = None
    return found


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _tiling(d: Any, model_input: dict) -> dict:
    """model.json's "tiling", validated: the scale (frame pixels per model pixel), the tile (the input's size),
    the overlap of neighbouring tiles and each tile's margin (half the overlap, or 0) in model pixels, and how
    many of its highest tiles' scores a frame's score averages (score_top; 1, the highest, when absent), and how
    the tiles' overlapping insides combine (join: sdk.tiling.TILE_JOINS; "max" when absent)."""
    if not isinstance(d, dict):
        raise _Invalid("'tiling' must be an object")
    if not d:
        return {}
    scale = _finite(_key(d, "scale", "tiling."), "'tiling.scale'", positive=True)
    tile = d.get("tile")
    size = [model_input.get("height"), model_input.get("width")]
    if tile != size:
        raise _Invalid(f"'tiling.tile' must be the input's [height, width] {size}, got {tile!r}")
    overlap = _int(_key(d, "overlap", "tiling."), "'tiling.overlap'", low=0)
    if overlap >= min(size):
        raise _Invalid(f"'tiling.overlap' must be below the tile's short side {min(size)}, got {overlap}")
    margin = _int(d.get("margin", 0), "'tiling.margin'", low=0)
    if margin and overlap != 2 * margin:
        raise _Invalid(f"'tiling.margin' must be half the overlap {overlap}, got {margin}")
    score_top = _int(d.get("score_top", 1), "'tiling.score_top'", low=1)
    join = d.get("join", "max")
    if join not in TILE_JOINS:
        raise _Invalid(f"'tiling.join' must be one of {list(TILE_JOINS)}, got {join!r}")
    return {"scale": scale, "tile": list(tile), "overlap": overlap, "margin": margin, "score_top": score_top,
            "join": join}

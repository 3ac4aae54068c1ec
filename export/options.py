"""Training options, declared once: `cfrg train` and `cfrg demo` build their flags from TrainArgs,
train() takes a TrainArgs, and config.json records it. Plain data: importable without torch.

Each field's metadata says how it appears on the command line (flag, type, choices, help) and what
values it takes (a check that returns the problem, or None); TrainArgs.validate() applies the same
checks to arguments built in Python. The map and score options come from their own declaration
(export.map_options.MAP_OPTIONS), which also gives `cfrg eval` its flags for checkpoints.
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Callable, Optional

from sdk.checks import Rule, checked_type, multiple_of, number, optional, whole

from .config import TEACHERS, CFRGConfig
from .map_options import MAP_OPTIONS

AUTO_SIZE_PIXELS = 256 * 256  # the pixel budget of --image-size auto: the latency of the 256x256 default


def auto_image_size(sizes: list[tuple[int, int]], pixels: int = AUTO_SIZE_PIXELS) -> tuple[int, int]:
    """(height, width), multiples of 32, of about `pixels` pixels: the training images' median aspect ratio when
    they share one shape (long or tall parts are not squashed into a square), else square (crops of many shapes
    have no one ratio to keep)."""
    aspect = shared_aspect(sizes) or 1.0
    height = max(32, round((pixels / aspect) ** 0.5 / 32) * 32)
    width = max(32, round(pixels / height / 32) * 32)
    return height, width


def shared_aspect(sizes: list[tuple[int, int]], share: float = 0.8, tolerance: float = 0.1) -> float | None:
    """The median aspect ratio (width / height) of the images (height, width) when at least `share` of them
    are within `tolerance` of it, else None."""
    if not sizes:
        raise ValueError("no training images to take the input size's aspect ratio from")
    aspects = sorted(w / h for h, w in sizes)
    median = aspects[len(aspects) // 2]
    near = sum(abs(a / median - 1) <= tolerance for a in aspects)
    return float(median) if near >= share * len(aspects) else None


def parse_size(text: str) -> tuple[int, int] | str:
    """'256' -> (256, 256); 'HxW' e.g. '192x448' -> (192, 448); 'auto' (from the training images' aspect
    ratio at training). Sides must be multiples of 32."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        parts = [int(p) for p in str(text).lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size {text!r}: give N or HxW, e.g. 256 or 192x448") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or any(p < 32 or p % 32 for p in parts):
        raise argparse.ArgumentTypeError(f"image size {text!r}: each side must be a multiple of 32 and >= 32")
    return parts[0], parts[1]


SCALES = ("whole", "auto")
TILE_SIDE = 256  # the tile's side for training on tiles, unless the scaled images are smaller
AUTO_MAX_TILES = 8  # --scale auto: the median image in at most this many tiles (about 8x a whole frame's latency)
AUTO_MIN_GAIN = 1.5  # --scale auto: tiles only when they see the part at >= 1.5x the whole-frame resolution


def parse_scale(text: str) -> float | str:
    """'whole' (every image squeezed into the input), 'auto' (auto_scale), or S > 0: frame pixels per model pixel
    (1 = the camera's own scale), the model trained on tiles."""
    folded = str(text).strip().lower()
    if folded in SCALES:
        return folded
    try:
        value = float(folded)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scale {text!r}: give 'whole', 'auto' or frame pixels per model pixel, "
                                         f"e.g. 1 (the camera's own scale) or 2") from None
    problem = scale_check(value)
    if problem:
        raise argparse.ArgumentTypeError(f"--scale {text!r}: {problem}")
    return value


def scale_check(v) -> Optional[str]:
    if v in SCALES:
        return None
    return number(0, 64, low_open=True, high_open=False)(v) and "give 'whole', 'auto' or a number in (0, 64]"


def auto_tile_size(sizes: list[tuple[int, int]], scale: float) -> tuple[int, int]:
    """(height, width) of the tiles for images of `sizes` at `scale`: TILE_SIDE a side, or where the median image
    is shorter at that scale, its side rounded up to a multiple of 32 (the frame is padded to it)."""
    h, w = _median_size(sizes)
    return tuple(min(TILE_SIDE, max(32, -(-round(side / scale) // 32) * 32)) for side in (h, w))


def _median_size(sizes: list[tuple[int, int]]) -> tuple[int, int]:
    if not sizes:
        raise ValueError("no training images to take the scale from")
    return (sorted(h for h, _ in sizes)[len(sizes) // 2], sorted(w for _, w in sizes)[len(sizes) // 2])


def auto_scale(sizes: list[tuple[int, int]], overlap: int = 64) -> tuple[float, str]:
    """--scale auto from the good training images' sizes: (0 for whole frames, or the scale; why). The smallest
    scale >= 1 (in steps of 0.05) at which the median image needs at most AUTO_MAX_TILES tiles; whole frames when
    those tiles would not see the part at AUTO_MIN_GAIN times the resolution the whole-frame input gives (small
    images, which the whole-frame input already shows at about their own scale)."""
    from sdk.tiling import TilePlan

    h, w = _median_size(sizes)
    whole_h, whole_w = auto_image_size(sizes)
    whole_resolution = min(whole_h / h, whole_w / w)  # model pixels per image pixel, whole frame
    for step in range(20, 20 * 64 + 1):
        scale = step / 20
        tile = auto_tile_size(sizes, scale)
        tiles = TilePlan(tile, overlap, 1 / scale, overlap // 2).count((h, w))
        if tiles <= AUTO_MAX_TILES:
            break
    gain = (1 / scale) / whole_resolution
    if gain < AUTO_MIN_GAIN:
        return 0.0, (f"whole frames: the median {w}x{h} image is {whole_resolution:.2f} model pixels per image "
                     f"pixel whole; {AUTO_MAX_TILES} tiles or fewer would see it at only {gain:.2f}x that")
    return scale, (f"tiles at {scale:g} image pixels per model pixel: the median {w}x{h} image in {tiles} tile(s) of "
                   f"{tile[1]}x{tile[0]}, {gain:.2f}x the resolution of the whole-frame {whole_w}x{whole_h} input")


def image_size_check(v) -> Optional[str]:
    ok = v == "auto" or (isinstance(v, (tuple, list)) and len(v) == 2
          and all(isinstance(p, int) and not isinstance(p, bool) and p >= 32 and p % 32 == 0 for p in v))
    return None if ok else "give (height, width), each side a multiple of 32 and >= 32, or 'auto'"


def option(default: Any = MISSING, help: str = "", *, flag: str | None = None, type: Callable | None = None,
           choices: tuple | None = None, check: Rule | None = None, action: str | None = None,
           cli: bool = True, demo: Any = MISSING) -> Any:
    """A TrainArgs field with its command-line form.

    flag: the option string (default --field-name); action: 'store_true', 'store_false' (a --no-X flag
    for a field that defaults to True) or 'toggle' (--X / --no-X); cli=False: Python only; demo: the
    default under `cfrg demo` (MISSING: the same; None: not a demo option).
    """
    meta = dict(help=help, flag=flag, type=type, choices=choices, check=check, action=action, cli=cli, demo=demo)
    return field(metadata=meta) if default is MISSING else field(default=default, metadata=meta)


def with_map_options(after: str):
    """Class decorator, under @dataclass: the fields of MAP_OPTIONS inserted after field `after`, in their order."""
    def insert(cls):
        annotations = {}
        for name, annotation in cls.__dict__["__annotations__"].items():
            annotations[name] = annotation
            if name == after:
                for o in MAP_OPTIONS.values():
                    annotations[o.name] = o.annotation
                    setattr(cls, o.name, option(o.default, o.help, type=o.type, choices=o.choices, check=o.check,
                                                action=o.action))
        cls.__annotations__ = annotations
        return cls

    return insert


_RECIPE = CFRGConfig()
AUGMENTS = ("none", "flip")


@dataclass
@with_map_options(after="recovery_width")
class TrainArgs:
    """The options of a training run; the map and score options (MAP_OPTIONS) follow recovery_width."""

    data: str = option(help="dataset root in MVTec AD / 3CAD layout", demo=None)
    category: str = option(help="category folder under the root", demo=None)
    out: str = option(help="output folder for model.pt and config.json", demo=None)
    image_size: tuple[int, int] | str = option("auto", "N or HxW, multiples of 32, or auto (default): about "
                                               "256x256 pixels at the training images' aspect ratio when they "
                                               "share one, else 256x256",
                                         type=parse_size, check=image_size_check)
    scale: float | str = option("auto", "train on tiles: image pixels per model pixel (1: the camera's own scale), "
                                "'auto' (default: from the training images' size, tiles for images much larger than "
                                "the input, else whole frames), or 'whole' (every image squeezed into the input)",
                                type=parse_scale, check=scale_check)
    tile_overlap: int = option(_RECIPE.tile_overlap, "with --scale: overlap of neighbouring tiles in model pixels, a "
                               "multiple of 32; half of it is each tile's margin, seen as context but neither "
                               "mapped nor scored (default 64)", type=int, check=multiple_of(32, 32, 224))
    teacher: str = option(_RECIPE.teacher, "frozen ImageNet teacher", choices=TEACHERS)
    teacher_weights: Optional[str] = option(None, "state dict file for wide_resnet50_2 (torchvision format)")
    steps: int = option(0, "stop after N steps (0: only the time budget)", type=int, check=whole(0, 10**9))
    time_budget: float = option(30.0, "minutes of training (evaluation not counted)", type=float,
                                check=number(0, 10**6), demo=3.0)
    batch_size: int = option(8, "synthetic images per step", type=int, check=whole(1, 1024))
    lr: float = option(2e-3, "AdamW learning rate (cosine schedule)", type=float, check=number(0, low_open=True))
    anomaly_prob: float = option(0.7, "share of training images that get a synthetic defect",
                                 check=number(0, 1, high_open=False), cli=False)
    seed: int = option(0, "random seed", type=int, check=whole(0, 2**32 - 1))
    eval_every: float = option(0.0, "minutes between evaluations (0: end only)", type=float, check=number(0))
    eval_limit: Optional[int] = option(None, "images per periodic evaluation (default: all)", type=int,
                                       check=optional(whole(1, 10**9)))
    resume: bool = option(False, "continue from OUT/last.pt", action="store_true")
    holdout: float = option(0.1, "fraction of good training images held back to measure the thresholds on "
                                 "(default 0.1)", type=float, check=number(0, 1))
    texture_dir: Optional[str] = option(None, "folder of texture images for defect synthesis")
    augment: str = option("none", "training images flipped at random: 'flip' (horizontally and/or vertically, "
                          "three in four images) or 'none' (default)", choices=AUGMENTS)
    ema: float = option(0.0, "decay of an exponential moving average of the trained weights (student, recovery, "
                        "segmentation), which is what is saved (0: off, the default; e.g. 0.999)", type=float,
                        check=number(0, 1))
    use_recovery: bool = option(True, "ablation: drop the recovery branch", flag="--no-recovery",
                                action="store_false")
    use_segmentation: bool = option(True, "ablation: drop the segmentation head", flag="--no-segmentation",
                                    action="store_false")
    recovery_code_stride: int = option(_RECIPE.recovery_code_stride, "stride of the recovery bottleneck "
                                       "(default 32)", flag="--recovery-stride", type=int, choices=(16, 32))
    student_width: int = option(_RECIPE.student_width, f"student width at stride 4, doubled at each stride "
                                f"(default {_RECIPE.student_width})", type=int, check=multiple_of(2, 2, 1024))
    recovery_width: int = option(_RECIPE.recovery_width, "recovery branch width (default 128)", type=int,
                                 check=multiple_of(4, 4, 4096))
    threads: int = option(0, "torch threads (0: default)", type=int, check=whole(0, 1024))
    progress: bool = option(True, "no progress bars", flag="--no-progress", action="store_false")
    final_eval: bool = option(True, "evaluate on the test split at the end", cli=False)

    def validate(self) -> None:
        """Every value in range, before anything is read or written; ValueError naming the option."""
        for f in fields(self):
            check = f.metadata.get("check")
            problem = check(getattr(self, f.name)) if check else None
            choices = f.metadata.get("choices")
            if problem is None and choices and getattr(self, f.name) not in choices:
                problem = f"choose one of {', '.join(map(str, choices))}"
            if problem:
                raise ValueError(f"{flag_of(f)} {getattr(self, f.name)!r}: {problem}")
        if self.steps == 0 and self.time_budget <= 0:
            raise ValueError("nothing bounds training: give --steps N (N >= 1) or --time-budget MINUTES (> 0)")

    def model_config(self, image_size: tuple[int, int] | None = None, tile_scale: float | None = None) -> CFRGConfig:
        """The model's configuration: the TrainArgs fields that are CFRGConfig fields, "auto" resolved for the input
        size (`image_size` resolves --image-size auto, `tile_scale` --scale auto (0: whole frames); --fine-weight
        auto starts at 0, see MAP_OPTIONS)."""
        size = image_size or self.image_size
        if size == "auto":
            raise ValueError("--image-size auto is resolved from the training images: pass image_size")
        scale = self.scale if tile_scale is None else tile_scale
        if scale == "auto":
            raise ValueError("--scale auto is resolved from the training images: pass tile_scale")
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name in CFRGConfig.__dataclass_fields__}
        scale = 0.0 if scale == "whole" else float(scale)
        values.update({name: o.config_value(values[name], size, tiles=bool(scale)) for name, o in MAP_OPTIONS.items()})
        if scale and values["tile_overlap"] >= min(size):
            raise ValueError(f"--tile-overlap {values['tile_overlap']}: must be below the tile's short side {min(size)}")
        margin = values["tile_overlap"] // 2 if scale else 0
        return CFRGConfig(**{**values, "image_size": tuple(size), "tile_scale": scale, "tile_margin": margin})

    def record(self) -> dict:
        """The options as config.json's "train" records them (JSON values)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


EVAL_OPTIONS = tuple(MAP_OPTIONS)  # `cfrg eval` flags for checkpoints


def flag_of(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def flag_names(names) -> list[str]:
    """The command-line flags of TrainArgs fields, by field name."""
    by_name = {f.name: f for f in fields(TrainArgs)}
    return [flag_of(by_name[n]) for n in names]


def add_train_options(parser: argparse.ArgumentParser, demo: bool = False) -> None:
    """`cfrg train` (or, with demo, `cfrg demo`) flags from TrainArgs."""
    for f in fields(TrainArgs):
        meta = f.metadata
        if not meta["cli"] or (demo and meta["demo"] is None):
            continue
        default = meta["demo"] if demo and meta["demo"] is not MISSING else f.default
        _add(parser, f, default, meta["help"], required=f.default is MISSING)


def add_eval_options(parser: argparse.ArgumentParser) -> None:
    """`cfrg eval` flags that rebuild a checkpoint's map or score with other values (default None: as trained)."""
    by_name = {f.name: f for f in fields(TrainArgs)}
    for name, o in MAP_OPTIONS.items():
        _add(parser, by_name[name], None, o.eval_help)


def _add(parser, f, default, help_text: str, required: bool = False) -> None:
    meta, flag = f.metadata, flag_of(f)
    action = meta["action"]
    if action == "toggle":
        parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
    elif action in ("store_true", "store_false"):
        parser.add_argument(flag, dest=f.name, action=action, help=help_text)
    else:
        parser.add_argument(flag, dest=f.name, type=checked_type(meta["type"], meta["check"]), choices=meta["choices"], default=default,
                            required=required, help=help_text)


def train_args_from(ns: argparse.Namespace, **overrides) -> TrainArgs:
    """TrainArgs from parsed `cfrg train` / `cfrg demo` flags (overrides for what the command sets itself)."""
    values = {f.name: getattr(ns, f.name) for f in fields(TrainArgs) if hasattr(ns, f.name)}
    return TrainArgs(**{**values, **overrides})

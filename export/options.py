"""Training options, declared once: `cfrg train` and `cfrg demo` build their flags from TrainArgs,
train() takes a TrainArgs, and config.json records it. Plain data: importable without torch.

Each field's metadata says how it appears on the command line (flag, type, choices, help) and what
values it takes (a check that returns the problem, or None); TrainArgs.validate() applies the same
checks to arguments built in Python.
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, Optional

from sdk.values import Check, checked_type, multiple_of, number, odd, optional, whole

from .config import FINE_SPREAD_LIMIT, IMAGE_SCORES, MAP_NORMALISATIONS, PIXEL_MAPS, TEACHERS, CFRGConfig

AUTO_SIZE_PIXELS = 256 * 256  # the pixel budget of --image-size auto: the latency of the 256x256 default
AUTO_POOL_SIDE = 256  # --memory-pool auto: CFRGConfig's pool on a short side of this many pixels, in proportion else


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


def auto_memory_pool(image_size, pool: int = CFRGConfig.memory_pool, side: int = AUTO_POOL_SIDE) -> int:
    """The odd memory pooling window (in feature cells) that covers the same share of the input's short side as
    `pool` cells do of a `side`-pixel one: 9 at 256x256, 7 at 288x224, 5 at 160x416. A fixed window would cover
    most of a long part's short side."""
    cells = pool * min(image_size) / side
    return max(1, 2 * round((cells - 1) / 2) + 1)


def parse_pool(text: str) -> int | str:
    """'auto' or a whole number (the memory pooling window)."""
    return "auto" if str(text).strip().lower() == "auto" else int(text)


def pool_check(v) -> Optional[str]:
    return None if v == "auto" or odd(v) is None else "give an odd whole number >= 1 (the window is centred) or 'auto'"


def parse_weight(text: str) -> float | str:
    """'auto' or a number >= 0 (the fine-feature Gaussian's weight)."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"weight {text!r}: give a number >= 0 or 'auto'") from None


def weight_check(v) -> Optional[str]:
    return None if v == "auto" or number(0)(v) is None else "give a number >= 0 or 'auto'"


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


def image_size_check(v) -> Optional[str]:
    ok = v == "auto" or (isinstance(v, (tuple, list)) and len(v) == 2
          and all(isinstance(p, int) and not isinstance(p, bool) and p >= 32 and p % 32 == 0 for p in v))
    return None if ok else "give (height, width), each side a multiple of 32 and >= 32, or 'auto'"


def option(default: Any = MISSING, help: str = "", *, flag: str | None = None, type: Callable | None = None,
           choices: tuple | None = None, check: Check | None = None, action: str | None = None,
           cli: bool = True, demo: Any = MISSING, eval_help: str | None = None) -> Any:
    """A TrainArgs field with its command-line form.

    flag: the option string (default --field-name); action: 'store_true', 'store_false' (a --no-X flag
    for a field that defaults to True) or 'toggle' (--X / --no-X); cli=False: Python only; demo: the
    default under `cfrg demo` (MISSING: the same; None: not a demo option); eval_help: the field is also
    a `cfrg eval` option that rebuilds a checkpoint's map or score with another value.
    """
    meta = dict(help=help, flag=flag, type=type, choices=choices, check=check, action=action, cli=cli, demo=demo,
                eval_help=eval_help)
    return field(metadata=meta) if default is MISSING else field(default=default, metadata=meta)


_RECIPE = CFRGConfig()
AUGMENTS = ("none", "flip")


@dataclass
class TrainArgs:
    data: str = option(help="dataset root in MVTec AD / 3CAD layout", demo=None)
    category: str = option(help="category folder under the root", demo=None)
    out: str = option(help="output folder for model.pt and config.json", demo=None)
    image_size: tuple[int, int] | str = option("auto", "N or HxW, multiples of 32, or auto (default): about "
                                               "256x256 pixels at the training images' aspect ratio when they "
                                               "share one, else 256x256",
                                         type=parse_size, check=image_size_check)
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
    holdout: float = option(0.1, "fraction of good training images held back for threshold calibration "
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
    map_normalisation: str = option(
        _RECIPE.map_normalisation, "anomaly map: 'sum' adds every student and recovery discrepancy and the "
        "segmentation (default); 'position' z-scores each discrepancy per position with good-image statistics; "
        "'none' is the paper's sum of the recovery discrepancies and the segmentation", choices=MAP_NORMALISATIONS,
        eval_help="checkpoints: evaluate the same weights with this map fusion (default: the trained one)")
    gaussian_sigma: float = option(
        _RECIPE.gaussian_sigma,
        f"sigma, in input pixels, of the Gaussian that smooths the maps (default {_RECIPE.gaussian_sigma:g})",
        type=float, check=number(0, 64, low_open=True, high_open=False),
        eval_help="checkpoints: evaluate the same weights with the maps smoothed at this sigma (the memory's "
                  "statistics rebuilt; default: the trained one)")
    seg_sigma: float = option(
        _RECIPE.seg_sigma, "sigma, in input pixels, of the Gaussian that smooths the segmentation's probability "
        "in the map (default 0: not smoothed)", type=float, check=number(0, 64, high_open=False),
        eval_help="checkpoints: evaluate the same weights with the segmentation's probability smoothed at this "
                  "sigma (0: not smoothed; the memory's statistics rebuilt; default: the trained one)")
    sum_seg_weight: float = option(
        _RECIPE.sum_seg_weight,
        f"weight of the segmentation's probability in the 'sum' map (default {_RECIPE.sum_seg_weight:g})",
        type=float, check=number(0),
        eval_help="checkpoints: evaluate the same weights with the segmentation's probability weighted so in the "
                  "'sum' map (the memory's statistics rebuilt; default: the trained one)")
    memory_size: int = option(
        _RECIPE.memory_size, "patches in the good-patch memory fused with the map (default 10000; 0: no memory)",
        type=int, check=whole(0, 10**7),
        eval_help="checkpoints: evaluate the same weights with a patch memory of this size, rebuilt from the run's "
                  "good images (0: none; default: the trained one)")
    memory_pool: int | str = option(
        "auto", f"neighbourhood, in feature cells, that each memory patch averages (odd), or auto (default): "
        f"{_RECIPE.memory_pool} on a {AUTO_POOL_SIDE}-pixel short side of the input, in proportion on others (5 at "
        f"160x416)", type=parse_pool, check=pool_check,
        eval_help="checkpoints with a patch memory: evaluate the same weights with this memory pooling (or auto, "
                  "from the model's input size), the memory rebuilt from the run's good images (default: the "
                  "trained one)")
    image_score: str = option(
        _RECIPE.image_score, "image score: 'combined' sums the CFRG map's max, a soft max of the memory distances "
        "and (--global-score) a Gaussian distance of the image's global statistics, each z-scored on held-out good "
        "images (default); 'max' is the fused map's max", choices=IMAGE_SCORES,
        eval_help="checkpoints with a patch memory: evaluate the same weights with this image score (its statistics "
                  "rebuilt from the run's good images; default: the trained one)")
    global_score: bool = option(
        _RECIPE.global_score, "add to the combined image score a Gaussian over each image's global feature "
        "statistics, z-scored on held-out good images (default on)", action="toggle",
        eval_help="checkpoints with a combined image score: evaluate the same weights with (or without) its global "
                  "branch, rebuilt from the run's good images (default: the trained one)")
    pixel_map: str = option(
        _RECIPE.pixel_map, "output pixel map: 'fused' (the CFRG map and the patch memory, per-pixel max of their "
        "z-scores), 'plain_fused' (the paper's plain map and the patch memory), 'cfrg' or 'plain' (either map "
        "alone); the image score is the same for all (default fused)", choices=PIXEL_MAPS,
        eval_help="checkpoints: evaluate the same weights with this pixel map (default: the trained one)")
    fine_weight: float | str = option(
        "auto", "weight in the pixel map of one Gaussian of the good images' fine (stride 4 and 8) teacher "
        "features, shared by every position, scaled to the map's good-image peaks; auto (default): from how well "
        f"one Gaussian fits those features, 1 - spread / {FINE_SPREAD_LIMIT:g}, so none on textured or structured "
        "surfaces (see docs/quality.md); 0: none", type=parse_weight, check=weight_check,
        eval_help="checkpoints: evaluate the same weights with the fine-feature Gaussian at this weight or auto, "
                  "fitted on the run's good images (0: none; default: the trained one)")
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

    def model_config(self, image_size: tuple[int, int] | None = None) -> CFRGConfig:
        """The model's configuration; `image_size` resolves --image-size auto."""
        size = image_size or self.image_size
        if size == "auto":
            raise ValueError("--image-size auto is resolved from the training images: pass image_size")
        pool = auto_memory_pool(size) if self.memory_pool == "auto" else self.memory_pool
        return CFRGConfig(image_size=tuple(size), teacher=self.teacher, use_recovery=self.use_recovery,
                          use_segmentation=self.use_segmentation, recovery_code_stride=self.recovery_code_stride,
                          recovery_width=self.recovery_width, student_width=self.student_width,
                          map_normalisation=self.map_normalisation,
                          gaussian_sigma=self.gaussian_sigma, seg_sigma=self.seg_sigma,
                          sum_seg_weight=self.sum_seg_weight,
                          memory_size=self.memory_size, memory_pool=pool, image_score=self.image_score,
                          global_score=self.global_score, pixel_map=self.pixel_map,
                          fine_weight=0.0 if self.fine_weight == "auto" else self.fine_weight)


EVAL_OPTIONS = tuple(f.name for f in fields(TrainArgs) if f.metadata.get("eval_help"))


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
    for name in EVAL_OPTIONS:
        f = next(f for f in fields(TrainArgs) if f.name == name)
        _add(parser, f, None, f.metadata["eval_help"])


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

"""The sixteen map and score options, declared once: each one's help, its check and what a change of it rebuilds.

From this table come TrainArgs' fields (so `cfrg train` and `cfrg demo` flags), `cfrg eval`'s flags for
checkpoints, the copy into CFRGConfig (TrainArgs.model_config), the arguments of with_map_fusion and what it
refits, and what a record from before an option means (CFRGConfig.from_dict, --resume). Plain data: no torch.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Optional

from sdk.checks import Rule, allows, number, odd, whole
from sdk.tiling import TILE_JOINS

from .config import (FINE_SPREAD_LIMIT, IMAGE_SCORES, MAP_NORMALISATIONS, MEMORY_EDGES, MEMORY_FUSIONS, PIXEL_MAPS,
                     CFRGConfig)

AUTO_POOL_SIDE = 256  # --memory-pool auto: CFRGConfig's pool on a short side of this many pixels, in proportion else
_RECIPE = CFRGConfig()
AS_CONFIG = object()  # a default that is CFRGConfig's

# the memory on tiles ("auto"): 3x3 pooling, mirrored at the edges, summed into the map with weight 2
# (docs/quality.md, "Tiles with the memory at 3x3, summed with weight 2")
TILE_MEMORY = {"memory_pool": 3, "memory_edges": "mirror", "memory_fusion": "sum", "memory_weight": 2.0}
# what a change refits from the run's good images, beyond the options' own values
MAP_STATISTICS, MEMORY, FINE = "map statistics", "memory", "fine"  # memory: bank, score statistics, global branch
TILE_OFFSET = "tile offset"  # refitted with any other refit too: it is measured on the output map


def auto_memory_pool(image_size, pool: int = _RECIPE.memory_pool, side: int = AUTO_POOL_SIDE) -> int:
    """The odd memory pooling window (in feature cells) that covers the same share of the input's short side as
    `pool` cells do of a `side`-pixel one: 9 at 256x256, 7 at 288x224, 5 at 160x416. A fixed window would cover
    most of a long part's short side."""
    cells = pool * min(image_size) / side
    return max(1, 2 * round((cells - 1) / 2) + 1)


def parse_pool(text: str) -> int | str:
    """'auto' or a whole number (the memory pooling window)."""
    return "auto" if str(text).strip().lower() == "auto" else int(text)


def pool_check(v) -> Optional[str]:
    return None if v == "auto" or allows(odd, v) else "give an odd whole number >= 1 (the window is centred) or 'auto'"


def parse_weight(text: str) -> float | str:
    """'auto' or a number >= 0 (the fine-feature Gaussian's weight)."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"weight {text!r}: give a number >= 0 or 'auto'") from None


def weight_check(v) -> Optional[str]:
    return None if v == "auto" or allows(number(0), v) else "give a number >= 0 or 'auto'"


@dataclass(frozen=True)
class MapOption:
    """One map or score option: a CFRGConfig field that `cfrg eval` can change on a trained checkpoint."""

    name: str  # the CFRGConfig field, the TrainArgs field, the with_map_fusion argument; flag --name-with-dashes
    annotation: str  # TrainArgs' type
    help: str  # `cfrg train`
    eval_help: str  # `cfrg eval` on a checkpoint
    type: Callable | None = None
    choices: tuple | None = None
    check: Rule | None = None
    action: str | None = None  # "toggle": --X / --no-X
    train_default: Any = AS_CONFIG  # AS_CONFIG: CFRGConfig's
    # the config's value for "auto", from the input size (None: CFRGConfig's; on tiles TILE_MEMORY's comes first)
    auto: Callable[[tuple[int, int]], Any] | None = None
    auto_refits: bool = False  # "auto" is decided by the refit itself, so it always refits
    rebuilds: frozenset = frozenset({MEMORY, FINE})  # what a change refits
    rebuilds_memory_with: tuple = ()  # values that, before or after a change, bring the memory's refit too
    needs_memory: bool = False  # applies to a patch memory only
    before: Any = AS_CONFIG  # what a record from before the option means (AS_CONFIG: CFRGConfig's default)

    @property
    def default(self) -> Any:
        return getattr(_RECIPE, self.name) if self.train_default is AS_CONFIG else self.train_default

    @property
    def legacy(self) -> Any:
        return getattr(_RECIPE, self.name) if self.before is AS_CONFIG else self.before

    def config_value(self, value, image_size, tiles: bool = False) -> Any:
        """The CFRGConfig value of an option value ("auto" resolved for the input size, and for tiles)."""
        if value != "auto":
            return value
        if tiles and self.name in TILE_MEMORY:
            return TILE_MEMORY[self.name]
        return self.auto(image_size) if self.auto is not None else getattr(_RECIPE, self.name)

    def refits(self, old, new) -> set:
        """What changing the option from `old` to `new` rebuilds."""
        memory = {MEMORY} if set(self.rebuilds_memory_with) & {old, new} else set()
        return set(self.rebuilds) | memory


_AS_TRAINED = "(default: the trained one)"
MAP_OPTIONS = {o.name: o for o in (
    MapOption(
        "map_normalisation", "str",
        "anomaly map: 'sum' adds every student and recovery discrepancy and the segmentation (default); 'position' "
        "z-scores each discrepancy per position with good-image statistics; 'none' is the paper's sum of the recovery "
        "discrepancies and the segmentation",
        f"checkpoints: evaluate the same weights with this map fusion {_AS_TRAINED}",
        choices=MAP_NORMALISATIONS, rebuilds=frozenset({MAP_STATISTICS, MEMORY, FINE}), before="none"),
    MapOption(
        "gaussian_sigma", "float",
        f"sigma, in input pixels, of the Gaussian that smooths the maps (default {_RECIPE.gaussian_sigma:g})",
        "checkpoints: evaluate the same weights with the maps smoothed at this sigma (the memory's statistics "
        f"rebuilt; {_AS_TRAINED[1:]}", type=float, check=number(0, 64, low_open=True, high_open=False),
        before=4.0),  # the default until sum_seg_weight came
    MapOption(
        "seg_sigma", "float",
        "sigma, in input pixels, of the Gaussian that smooths the segmentation's probability in the map (default 0: "
        "not smoothed)",
        "checkpoints: evaluate the same weights with the segmentation's probability smoothed at this sigma (0: not "
        f"smoothed; the memory's statistics rebuilt; {_AS_TRAINED[1:]}", type=float,
        check=number(0, 64, high_open=False),
        before=None),  # None there: smoothed with the discrepancies, one blur of the sum (CFRGConfig.seg_sigma)
    MapOption(
        "sum_seg_weight", "float",
        f"weight of the segmentation's probability in the 'sum' map (default {_RECIPE.sum_seg_weight:g})",
        "checkpoints: evaluate the same weights with the segmentation's probability weighted so in the 'sum' map "
        f"(the memory's statistics rebuilt; {_AS_TRAINED[1:]}", type=float, check=number(0), before=1.0),
    MapOption(
        "memory_size", "int",
        "patches in the good-patch memory fused with the map (default 10000; 0: no memory)",
        "checkpoints: evaluate the same weights with a patch memory of this size, rebuilt from the run's good images "
        f"(0: none; {_AS_TRAINED[1:]}", type=int, check=whole(0, 10**7), before=0),
    MapOption(
        "memory_pool", "int | str",
        f"neighbourhood, in feature cells, that each memory patch averages (odd), or auto (default): "
        f"{_RECIPE.memory_pool} on a {AUTO_POOL_SIDE}-pixel short side of the input, in proportion on others (5 at "
        f"160x416); {TILE_MEMORY['memory_pool']} on tiles",
        "checkpoints with a patch memory: evaluate the same weights with this memory pooling (or auto, from the "
        "model's input size), the memory rebuilt from the run's good images (default: the trained one)",
        type=parse_pool, check=pool_check, train_default="auto", auto=auto_memory_pool, needs_memory=True),
    MapOption(
        "memory_edges", "str",
        "the memory's pooling at the input's edges: 'inside' averages the cells inside the input only, 'zeros' "
        "counts the zero padding (PatchCore's), 'mirror' pools over mirrored features; auto (default): "
        f"{_RECIPE.memory_edges!r} on whole frames, 'mirror' on tiles (--scale)",
        "checkpoints with a patch memory: evaluate the same weights with this pooling at the edges (auto: as "
        f"training chooses for the model's frames or tiles), the memory rebuilt from the run's good images "
        f"{_AS_TRAINED}", choices=MEMORY_EDGES + ("auto",), train_default="auto", needs_memory=True,
        before="inside"),
    MapOption(
        "memory_fusion", "str",
        "how the pixel map takes the z-scored map and memory map: 'max' per pixel, or 'sum' (a pixel counts as much "
        f"as both maps say); auto (default): {_RECIPE.memory_fusion!r} on whole frames, "
        f"{TILE_MEMORY['memory_fusion']!r} on tiles",
        f"checkpoints with a patch memory: evaluate the same weights with this fusion (auto: as training chooses for "
        f"the model's frames or tiles) {_AS_TRAINED}",
        choices=MEMORY_FUSIONS + ("auto",), train_default="auto", rebuilds=frozenset({FINE}), needs_memory=True,
        before="max"),
    MapOption(
        "memory_weight", "float | str",
        f"the memory map's weight in that fusion; auto (default): {_RECIPE.memory_weight:g} on whole frames, "
        f"{TILE_MEMORY['memory_weight']:g} on tiles",
        f"checkpoints with a patch memory: evaluate the same weights with the memory map weighted so (or auto) "
        f"{_AS_TRAINED}", type=parse_weight, check=weight_check, train_default="auto", rebuilds=frozenset({FINE}),
        needs_memory=True, before=1.0),
    MapOption(
        "image_score", "str",
        "image score: 'combined' sums the CFRG map's max, a soft max of the memory distances and (--global-score) a "
        "Gaussian distance of the image's global statistics, each z-scored on held-out good images (default); 'max' "
        "is the fused map's max",
        "checkpoints with a patch memory: evaluate the same weights with this image score (its statistics rebuilt "
        f"from the run's good images; {_AS_TRAINED[1:]}", choices=IMAGE_SCORES, needs_memory=True, before="max"),
    MapOption(
        "global_score", "bool",
        "add to the combined image score a Gaussian over each image's global feature statistics, z-scored on "
        "held-out good images (default on)",
        "checkpoints with a combined image score: evaluate the same weights with (or without) its global branch, "
        f"rebuilt from the run's good images {_AS_TRAINED}", action="toggle", needs_memory=True, before=False),
    MapOption(
        "pixel_map", "str",
        "output pixel map: 'fused' (the CFRG map and the patch memory, per-pixel max of their z-scores), "
        "'plain_fused' (the paper's plain map and the patch memory), 'cfrg' or 'plain' (either map alone); the image "
        "score is the same for all (default fused)",
        f"checkpoints: evaluate the same weights with this pixel map {_AS_TRAINED}", choices=PIXEL_MAPS,
        rebuilds=frozenset({FINE}), rebuilds_memory_with=("plain_fused",)),  # the plain map's statistics
    MapOption(
        "fine_weight", "float | str",
        "weight in the pixel map of one Gaussian of the good images' fine (stride 4 and 8) teacher features, shared by "
        "every position, scaled to the map's good-image peaks; auto (default): from how well one Gaussian fits those "
        f"features, 1 - spread / {FINE_SPREAD_LIMIT:g}, so none on textured or structured surfaces (see "
        "docs/quality.md); 0: none",
        "checkpoints: evaluate the same weights with the fine-feature Gaussian at this weight or auto, fitted on the "
        f"run's good images (0: none; {_AS_TRAINED[1:]}", type=parse_weight, check=weight_check,
        # "auto": the model starts without the branch (0) and the fit at the end of training sets the weight
        train_default="auto", auto=lambda image_size: 0.0, auto_refits=True, rebuilds=frozenset({FINE})),
    MapOption(
        "tile_score_top", "int",
        f"with --scale: a frame's score is the mean of its this many highest tiles' scores (default "
        f"{_RECIPE.tile_score_top}; 1: the highest tile's)",
        f"checkpoints trained on tiles: evaluate the same weights with the frame's score the mean of this many "
        f"highest tiles' scores {_AS_TRAINED}", type=int, check=whole(1, 64), rebuilds=frozenset(), before=1),
    MapOption(
        "tile_offset", "bool",
        "with --scale: subtract from every tile's map the good tiles' mean map by position in the tile (less its "
        "mean inside the margins), fitted after training, so that the tiles' edges leave no seams (default on)",
        f"checkpoints trained on tiles: evaluate the same weights with (or without) that offset, fitted on the run's "
        f"good tiles {_AS_TRAINED}", action="toggle", rebuilds=frozenset({TILE_OFFSET}), before=False),
    MapOption(
        "tile_join", "str",
        f"with --scale: where two tiles' insides overlap (the last tile along an axis), take the 'mean' of their "
        f"maps or the 'max' (default {_RECIPE.tile_join})",
        f"checkpoints trained on tiles: evaluate the same weights with the overlaps so combined {_AS_TRAINED}",
        choices=TILE_JOINS, rebuilds=frozenset(), before="max"),
)}

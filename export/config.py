"""The model's configuration: plain data, importable without torch (the CLI declares its options from it)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

TEACHERS = ("efficientnet_lite0", "efficientnet_lite2", "wide_resnet50_2")
MAP_NORMALISATIONS = ("sum", "position", "none")
IMAGE_SCORES = ("combined", "max")
# the memory's pooling at the input's edges: "inside" averages the cells inside only, "zeros" counts the zero
# padding (an edge patch is dimmed the same way in every image), "mirror" pools over mirrored features (tiles)
MEMORY_EDGES = ("inside", "zeros", "mirror")
MEMORY_FUSIONS = ("max", "sum")  # how the pixel map takes the z-scored CFRG map and memory map
# the output map: the CFRG map or the paper's plain map, each fused with the patch memory or alone
PIXEL_MAPS = ("fused", "plain_fused", "cfrg", "plain")
# fine_weight "auto": 1 - spread / FINE_SPREAD_LIMIT, 0 (no branch) from there on (FineGaussian.spread)
FINE_SPREAD_LIMIT = 3.5


@dataclass
class CFRGConfig:
    image_size: tuple[int, int] = (256, 256)  # (height, width)
    teacher: str = "efficientnet_lite0"
    student_width: int = 32
    recovery_width: int = 128
    recovery_code_stride: int = 32  # 16 or 32: where the recovery bottleneck sits
    seg_width: int = 32
    use_recovery: bool = True
    use_segmentation: bool = True
    gaussian_sigma: float = 3.0
    # smoothing of the segmentation's probability in the map (0: none, it is already smooth; None: smoothed with
    # the discrepancies, one blur of the sum, as checkpoints from before the option)
    seg_sigma: float | None = 0.0
    colour_order: str = "RGB"
    map_normalisation: str = "sum"  # MAP_NORMALISATIONS: "sum" (every discrepancy), "position", "none" (paper)
    seg_weight: float = 3.0  # weight of sigmoid(seg) against the mean z-score ("position" only)
    sum_seg_weight: float = 1.5  # weight of sigmoid(seg) in the "sum" map
    memory_size: int = 10000  # patches in the good-patch memory (0: no memory)
    memory_pool: int = 9  # the memory features' average pooling, in feature cells (at 256x256; auto scales it)
    memory_stride: int = 16  # grid of the memory search: 16 (fast) or 8 (4x the cost)
    image_score: str = "combined"  # "combined" (branch scores z-scored and summed) or "max" (of the map)
    score_temperature: float = 2.0  # soft max of the memory distances, in good-patch standard deviations
    global_score: bool = True  # combined score: add a Gaussian over each image's global teacher statistics
    pixel_map: str = "fused"  # PIXEL_MAPS
    # the fine-feature Gaussian's weight in the pixel map (0: none; FineGaussian). Training's default, "auto",
    # starts the model at 0 and the fit at the end of training sets it (export.fitting.fit_fine)
    fine_weight: float = 0.0
    # training on tiles (cfrg train --scale): frame pixels per model pixel (0: whole frames, squeezed into
    # image_size, which is then the tile), the overlap of neighbouring tiles and each tile's margin (context only:
    # not in its map's share of the frame, nor in its score; half the overlap) in model pixels
    tile_scale: float = 0.0
    tile_overlap: int = 64
    tile_margin: int = 0
    tile_score_top: int = 2  # a frame's score: the mean of its this many highest tiles' scores (sdk.tiling.TilePlan)
    # on tiles: the good tiles' mean map by position in the tile (less its mean inside the margins) subtracted from
    # every tile's map, in the graph, so that a pixel near a tile's edge reads like one at its centre
    # (export.fitting.fit_tile_offset); and how overlapping insides combine (sdk.tiling.TILE_JOINS)
    tile_offset: bool = True
    tile_join: str = "mean"
    memory_edges: str = "inside"  # MEMORY_EDGES
    memory_fusion: str = "max"  # MEMORY_FUSIONS
    memory_weight: float = 1.0  # the memory map's weight in that fusion

    def tile_plan(self):
        """The sdk.tiling.TilePlan of a model trained on tiles (None: whole frames)."""
        if not self.tile_scale:
            return None
        from sdk.tiling import TilePlan

        return TilePlan(tuple(self.image_size), self.tile_overlap, 1.0 / self.tile_scale, self.tile_margin,
                        self.tile_score_top, self.tile_join)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CFRGConfig":
        known = {f for f in cls.__dataclass_fields__}
        if "memory_mirrored" in d and "memory_edges" not in d:  # the option before MEMORY_EDGES
            d = {**d, "memory_edges": "mirror" if d["memory_mirrored"] else "inside"}
        d = {k: v for k, v in d.items() if k in known}
        from .map_options import MAP_OPTIONS  # which declares what a record from before each option means

        for name, o in MAP_OPTIONS.items():
            d.setdefault(name, o.legacy)
        if "image_size" in d:
            d["image_size"] = tuple(int(v) for v in d["image_size"])
        return cls(**d)

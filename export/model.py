"""CFRG: coarse-to-fine anomaly detection with recovery guidance.

- teacher: frozen ImageNet CNN, features at strides 4/8/16
- student: a different, randomly initialised CNN family with 1x1 adapters to the teacher's channels
- recovery: bottleneck + decoder that rebuilds the teacher features of the normal image
- segmentation head: teacher features weighted by student and recovery discrepancies -> logit map
Test time (map_normalisation "none", the paper's): map = sum_s up(1 - cos(T_s, R_s)) + sigmoid(seg),
smoothed by a Gaussian of sigma gaussian_sigma (default 3; the paper's 4); score = max(map) (without a patch
memory).
map_normalisation "sum" (default): the same with the student discrepancies added,
sum_s up(1 - cos(T_s, S_s) + 1 - cos(T_s, R_s)) + sum_seg_weight * sigmoid(seg).
map_normalisation "position": each student and recovery discrepancy is z-scored per position
with statistics of good training images (fit_map), the z-scores are averaged over components and
scales, and seg_weight * sigmoid(seg) is added before the same smoothing.
memory_size > 0 (default) adds a patch memory (PatchMemory): the distance of each locally pooled stride-8/16
teacher feature to its nearest neighbour in a coreset of good training patches. Both maps are z-scored on
held-out good images and fused by a per-pixel max, so each one flags what the other misses (the memory
catches large texture changes that the student and recovery branch reproduce).
image_score "combined" (default, with a memory): the image score is the sum of branch scores, each
z-scored over held-out good images: the max of the z-scored CFRG map (small sharp defects), a soft max
(log-mean-exp at temperature score_temperature) of the memory distances on their grid, which also rises
with the extent of a texture change, and (global_score) the Mahalanobis distance of the image's global
teacher statistics (GlobalGaussian). "max" (and any model without a memory): score = max of the fused map.
fine_weight > 0 adds FineGaussian's map to the pixel map: a Gaussian of good stride-4/8 features, the same
for every position; the score does not use it. Training's default, "auto", starts the model at 0 and sets the
weight from that Gaussian's fit at the end of training (export.fitting.fit_fine; 0, no branch, on textured
or structured surfaces); CFRGConfig's own default is 0.

The parts live beside this module: blocks (student, recovery, segmentation head, map operations), memory
(PatchMemory), gaussians (GlobalGaussian, FineGaussian); fitting fits their statistics, checkpoint saves them.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .backbones import build_teacher
from .blocks import GaussianBlur, Recovery, SegHead, Student, cos_distance, inside, upsample
from .config import IMAGE_SCORES, MAP_NORMALISATIONS, PIXEL_MAPS, CFRGConfig
from .gaussians import FineGaussian, GlobalGaussian
from .memory import PatchMemory


def to_tensor(batch_u8: np.ndarray) -> torch.Tensor:
    """uint8 NHWC RGB -> float NCHW in [0, 1] (the model's input), channels_last memory."""
    x = torch.from_numpy(batch_u8).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)


class CFRG(nn.Module):
    """Input: float RGB in [0, 1], NCHW, at config.image_size. Normalisation is inside."""

    def __init__(self, config: CFRGConfig | None = None, pretrained_teacher: bool = True,
                 teacher_weights: str | None = None):
        super().__init__()
        self.config = config = config or CFRGConfig()
        self.teacher = build_teacher(config.teacher, config.image_size, teacher_weights, pretrained_teacher)
        channels = [fi.channels for fi in self.teacher.feature_info]
        self.strides = [fi.stride for fi in self.teacher.feature_info]
        self.register_buffer("mean", torch.tensor(self.teacher.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.teacher.std).view(1, 3, 1, 1), persistent=False)
        self.student = Student(channels, config.student_width)
        self.recovery = (Recovery(channels, config.recovery_width, config.recovery_code_stride)
                         if config.use_recovery else None)
        n_weights = 1 + int(config.use_recovery)
        self.seg = SegHead(channels, config.seg_width, n_weights) if config.use_segmentation else None
        self.blur = GaussianBlur(config.gaussian_sigma)
        self.seg_blur = GaussianBlur(config.seg_sigma) if config.seg_sigma else nn.Identity()
        if config.map_normalisation not in MAP_NORMALISATIONS:
            raise ValueError(f"map_normalisation must be one of {MAP_NORMALISATIONS}, got {config.map_normalisation!r}")
        if config.tile_scale and config.map_normalisation == "position":
            raise ValueError("map_normalisation 'position' keeps statistics per position of the whole image, which "
                             "mean nothing for a tile that may lie anywhere: train on tiles with map 'sum' (default)")
        if config.map_normalisation == "position":  # per-position discrepancy statistics on good images
            h, w = config.image_size
            n_comp = 1 + int(config.use_recovery)
            for k, s in enumerate(self.strides):
                self.register_buffer(f"map_mean{k}", torch.zeros(1, n_comp, h // s, w // s))
                self.register_buffer(f"map_std{k}", torch.ones(1, n_comp, h // s, w // s))
            self.register_buffer("map_stats_images", torch.zeros(()))  # 0: not fitted yet
        if config.pixel_map not in PIXEL_MAPS:
            raise ValueError(f"pixel_map must be one of {PIXEL_MAPS}, got {config.pixel_map!r}")
        if config.memory_size < 0:
            raise ValueError(f"memory_size must be >= 0 (0: no patch memory), got {config.memory_size}")
        if config.image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score must be one of {IMAGE_SCORES}, got {config.image_score!r}")
        if config.pixel_map == "plain_fused" and not config.memory_size:
            raise ValueError("pixel_map 'plain_fused' fuses the plain map with the patch memory and this model has "
                             "none: give a memory size, or pixel_map 'plain'")
        self.memory = (PatchMemory(channels, self.strides, config.memory_size, config.memory_pool,
                                   config.memory_stride,
                                   config.score_temperature if config.image_score == "combined" else None,
                                   plain_stats=config.pixel_map == "plain_fused", score_margin=config.tile_margin,
                                   edges=config.memory_edges, fusion=config.memory_fusion,
                                   weight=config.memory_weight)
                       if config.memory_size else None)
        self.global_gaussian = (GlobalGaussian(channels) if self.memory is not None and config.global_score
                                and config.image_score == "combined" else None)
        if not config.fine_weight >= 0:
            raise ValueError(f"fine_weight must be >= 0 (0: no fine-feature branch), got {config.fine_weight}")
        self.fine = self.new_fine_branch() if config.fine_weight > 0 else None
        # on tiles: subtracted from the output map (export.fitting.fit_tile_offset fits it; zeros until then)
        self.register_buffer("tile_offset", torch.zeros(1, 1, *config.image_size)
                             if config.tile_scale and config.tile_offset else None)

    def new_fine_branch(self) -> FineGaussian:
        """An unfitted FineGaussian for this teacher and smoothing (fit_fine fits and scales it)."""
        return FineGaussian([fi.channels for fi in self.teacher.feature_info], self.strides, self.config.gaussian_sigma)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen BN statistics
        return self

    def trainable_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("teacher.") and p.requires_grad]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @torch.no_grad()
    def teacher_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.teacher(self.normalise(x))

    def heads(self, x: torch.Tensor, t_feats: list[torch.Tensor]) -> dict:
        """Student, recovery and segmentation outputs for input x with teacher features t_feats."""
        s_feats = self.student(self.normalise(x))
        d_s = [cos_distance(t, s) for t, s in zip(t_feats, s_feats)]
        out = {"student": s_feats, "d_student": d_s}
        weights = [[d.detach()] for d in d_s]
        if self.recovery is not None:
            r_feats = self.recovery(t_feats)
            d_r = [cos_distance(t, r) for t, r in zip(t_feats, r_feats)]
            out.update(recovery=r_feats, d_recovery=d_r)
            for w, d in zip(weights, d_r):
                w.append(d.detach())
        if self.seg is not None:
            out["seg_logit"] = self.seg(t_feats, weights)
        return out

    def discrepancies(self, heads: dict) -> list[list[torch.Tensor]]:
        """Per scale: [student, recovery] discrepancy maps (N,1,h,w)."""
        parts = [heads["d_student"]] + ([heads["d_recovery"]] if self.recovery is not None else [])
        return [list(scale) for scale in zip(*parts)]

    def anomaly_map(self, x: torch.Tensor, heads: dict, normalisation: str | None = None) -> torch.Tensor:
        """(N,1,H,W) smoothed map at input resolution, normalised as configured (or as `normalisation` says:
        "none" is the paper's plain sum, which needs no statistics)."""
        seg_weight = 1.0
        kind = normalisation or self.config.map_normalisation
        if kind == "none":
            coarse = heads["d_recovery"] if self.recovery is not None else heads["d_student"]
            amap = sum(upsample(d, s) for d, s in zip(coarse, self.strides))
        elif kind == "sum":
            seg_weight = self.config.sum_seg_weight
            amap = sum(upsample(sum(ds), s) for ds, s in zip(self.discrepancies(heads), self.strides))
        else:
            seg_weight = self.config.seg_weight
            scales = self.discrepancies(heads)
            n = sum(len(ds) for ds in scales)
            amap = sum(upsample(sum((d - mean[:, c:c + 1]) / std[:, c:c + 1] for c, d in enumerate(ds)), s)
                       for ds, s, mean, std in zip(scales, self.strides, self.map_stats("mean"), self.map_stats("std")))
            amap = amap * (1.0 / n)
        if self.seg is None:
            return self.blur(amap)
        seg = seg_weight * torch.sigmoid(upsample(heads["seg_logit"], self.strides[0]))
        if self.config.seg_sigma is None:  # smoothed with the discrepancies (checkpoints from before the option)
            return self.blur(amap + seg)
        return self.blur(amap) + self.seg_blur(seg)

    def map_stats(self, kind: str) -> list[torch.Tensor]:
        return [getattr(self, f"map_{kind}{k}") for k in range(len(self.strides))]

    @torch.no_grad()
    def fit_map(self, batches, shrink: float = 0.5) -> int:
        """Per-position mean and std of each discrepancy over good images (batches of model inputs).

        std is sqrt(var_position + (shrink * std_global)^2): positions seen with little variation
        in a small training set do not turn into hair triggers. Returns the number of images used.
        """
        if self.config.map_normalisation != "position":
            raise ValueError(f"fit_map: this model's map_normalisation is {self.config.map_normalisation!r}; "
                             "only 'position' has map statistics")
        was_training = self.training
        self.eval()
        s1 = s2 = None
        n = 0
        for x in batches:
            scales = [torch.cat(ds, 1).double() for ds in self.discrepancies(self.heads(x, self.teacher_features(x)))]
            if s1 is None:
                s1, s2 = [torch.zeros_like(d[0:1]) for d in scales], [torch.zeros_like(d[0:1]) for d in scales]
            for k, d in enumerate(scales):
                s1[k] += d.sum(0, keepdim=True)
                s2[k] += (d * d).sum(0, keepdim=True)
            n += len(x)
        if n < 2:
            raise ValueError(f"fit_map needs at least 2 good images, got {n}")
        for k in range(len(self.strides)):
            mean = s1[k] / n
            var = (s2[k] / n - mean * mean).clamp_min(0) * (n / (n - 1))
            global_var = (s2[k].sum((2, 3), keepdim=True) / (n * mean[0, 0].numel())
                          - mean.mean((2, 3), keepdim=True) ** 2).clamp_min(0)
            std = torch.sqrt(var + shrink ** 2 * global_var + 1e-8)
            getattr(self, f"map_mean{k}").copy_(mean.float())
            getattr(self, f"map_std{k}").copy_(std.float())
        self.map_stats_images.fill_(float(n))
        self.train(was_training)
        return n

    def forward(self, x: torch.Tensor):
        """Returns (anomaly_map (N,1,H,W), score (N,))."""
        pixel_map, score, t_feats = self.map_before_fine(x)
        if self.fine is not None:
            pixel_map = pixel_map + self.fine(t_feats)
        return (pixel_map if self.tile_offset is None else pixel_map - self.tile_offset), score

    def map_before_fine(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(the pixel map without the fine branch, the score, the teacher features): what FineGaussian is scaled
        against."""
        t_feats = self.teacher_features(x)
        heads = self.heads(x, t_feats)
        amap = self.anomaly_map(x, heads)
        fused, score, memory_map = self.fuse(amap, t_feats)
        return self.pixel_map(x, heads, amap, fused, memory_map), score, t_feats

    def fuse(self, amap: torch.Tensor, t_feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor,
                                                                             torch.Tensor | None]:
        """(the map fused with the patch memory, the image score, the memory map (None without a memory)) of one
        CFRG map."""
        if self.memory is None:
            return amap, inside(amap, self.config.tile_margin).flatten(1).amax(1), None
        fused, score, memory_map = self.memory.fuse(amap, t_feats, self.blur)
        if self.global_gaussian is not None:
            score = score + self.global_gaussian(t_feats)
        return fused, score, memory_map

    def plain_map(self, x: torch.Tensor, heads: dict, amap: torch.Tensor) -> torch.Tensor:
        return amap if self.config.map_normalisation == "none" else self.anomaly_map(x, heads, "none")

    def pixel_map(self, x: torch.Tensor, heads: dict, amap: torch.Tensor, fused: torch.Tensor,
                  memory_map: torch.Tensor | None) -> torch.Tensor:
        """The output map config.pixel_map names (PIXEL_MAPS): the CFRG map fused with the patch memory, the
        paper's plain map fused with it, the CFRG map alone, or the plain map alone. The image score is the
        same for all."""
        kind = self.config.pixel_map
        if kind == "fused":
            return fused
        if kind == "cfrg":
            return amap
        plain = self.plain_map(x, heads, amap)
        return self.memory.fuse_plain(plain, memory_map) if kind == "plain_fused" else plain

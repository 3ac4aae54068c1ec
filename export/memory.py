"""The patch memory: a coreset of good training patches, the distance to the nearest one, and its fusion with
the CFRG map and the image score."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from .blocks import inside, soft_max, upsample
from .config import MEMORY_EDGES, MEMORY_FUSIONS


def greedy_coreset(x: torch.Tensor, k: int, proj_dim: int = 64, seed: int = 0,
                   progress: bool = False) -> torch.Tensor:
    """Indices of k rows of x chosen by greedy k-centre selection on a random projection (PatchCore's coreset)."""
    if k >= len(x):
        return torch.arange(len(x))
    g = torch.Generator().manual_seed(seed)
    proj = x.float() @ (torch.randn(x.shape[1], proj_dim, generator=g) / math.sqrt(proj_dim))
    chosen = torch.empty(k, dtype=torch.long)
    chosen[0] = int(torch.randint(len(x), (1,), generator=g))
    sq = (proj * proj).sum(1)

    def dist_to(j: int) -> torch.Tensor:  # |p - p_j|^2 as one matrix-vector product, no (n, d) temporary
        return sq - 2 * (proj @ proj[j]) + sq[j]

    min_d = dist_to(int(chosen[0]))
    steps = range(1, k)
    if progress:
        from sdk.progress import progress_bar

        steps = progress_bar(steps, desc="memory coreset", unit="patch", leave=False, mininterval=0.5)
    for i in steps:
        j = int(min_d.argmax())
        chosen[i] = j
        torch.minimum(min_d, dist_to(j), out=min_d)
    return chosen



class PatchMemory(nn.Module):
    """Distance of each pooled stride-8/16 teacher feature to its nearest good training patch, z-scored,
    on the stride-`stride` grid.

    The nearest-neighbour search is Transpose + MatMul + ReduceMax over the last axis in ONNX (no
    reshapes, TensorRT-friendly): |q - b|^2 = |q|^2 - 2 (q.b - |b|^2 / 2), with q and b centred on the
    bank's mean so that the cancellation loses few digits (FP16 engines too).
    """
    candidates_per_slot = 16  # the coreset is chosen among up to this many random patches per bank slot

    def __init__(self, channels: Sequence[int], strides: Sequence[int], size: int, pool: int = 9,
                 stride: int = 16, score_temperature: float | None = None, plain_stats: bool = False,
                 score_margin: int = 0, edges: str = "inside", fusion: str = "max", weight: float = 1.0):
        super().__init__()
        if fusion not in MEMORY_FUSIONS:
            raise ValueError(f"memory_fusion must be one of {MEMORY_FUSIONS}, got {fusion!r}")
        if not weight >= 0:
            raise ValueError(f"memory_weight must be >= 0, got {weight}")
        self.fusion, self.weight = fusion, float(weight)
        if edges not in MEMORY_EDGES:
            raise ValueError(f"memory_edges must be one of {MEMORY_EDGES}, got {edges!r}")
        self.edges = edges  # the pooling at the input's edges (MEMORY_EDGES)
        if score_margin % stride:
            raise ValueError(f"the tile margin {score_margin} must be a multiple of the memory's stride {stride}")
        self.score_margin = score_margin  # a tile's margin in pixels: context only, not scored
        if stride not in (8, 16):
            raise ValueError(f"memory_stride must be 8 or 16, got {stride}")
        if pool < 1 or pool % 2 == 0:  # an even window would shift the grid by one cell
            raise ValueError(f"memory_pool must be an odd number >= 1, got {pool}")
        if score_temperature is not None and not score_temperature > 0:
            raise ValueError(f"score_temperature must be > 0, got {score_temperature}")
        self.score_temperature = score_temperature  # None: the image score is the fused map's max
        self.layers = [k for k, s in enumerate(strides) if s in (8, 16)]
        self.layer_strides = [strides[k] for k in self.layers]
        self.pool = pool
        self.stride = stride
        dim = sum(channels[k] for k in self.layers)
        self.register_buffer("center", torch.zeros(1, dim, 1, 1))
        self.register_buffer("bank", torch.zeros(size, dim, 1, 1))
        self.register_buffer("bank_sq", torch.zeros(1, size, 1, 1))
        self.register_buffer("dist_mean", torch.zeros(()))
        self.register_buffer("dist_std", torch.ones(()))
        self.register_buffer("map_mean", torch.zeros(()))  # the other (CFRG) map's statistics on good images
        self.register_buffer("map_std", torch.ones(()))
        self.register_buffer("images", torch.zeros(()))  # good images the bank came from (0: not built)
        self.plain_stats = plain_stats
        if plain_stats:  # the paper's plain map's statistics on good images (pixel map "plain_fused")
            self.register_buffer("plain_mean", torch.zeros(()))
            self.register_buffer("plain_std", torch.ones(()))
        if score_temperature is not None:  # good-image mean and std of the two branch scores
            self.register_buffer("score_mean", torch.zeros(2))
            self.register_buffer("score_std", torch.ones(2))

    def embed(self, t_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        out = []
        for k, s in zip(self.layers, self.layer_strides):  # each layer pooled on its own grid, then on ours
            step, half = max(self.stride // s, 1), self.pool // 2
            if self.edges == "mirror":
                f = F.avg_pool2d(F.pad(t_feats[k].float(), (half,) * 4, mode="reflect"), self.pool, step, 0)
            else:
                f = F.avg_pool2d(t_feats[k].float(), self.pool, step, half, count_include_pad=self.edges == "zeros")
            out.append(upsample(f, max(s // self.stride, 1)))
        return torch.cat(out, 1)

    def nearest_sq(self, emb: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 1, h, w) squared distance to the nearest bank patch (bank entries where `exclude`, a boolean
        (N, size, h, w) mask, left out). min_b |q - b|^2 = |q|^2 - 2 max_b (q.b - |b|^2 / 2): one matrix
        product and one max over its contiguous last axis (a channel-axis max was 15x slower in ONNX Runtime)."""
        q = (emb - self.center).permute(0, 2, 3, 1)  # (N, h, w, D): the bank axis comes last and contiguous
        # in place: a second (N, h, w, size) temporary took twice the matrix product's time on CPU
        similarity = torch.matmul(q, self.bank.flatten(1).t()).sub_(0.5 * self.bank_sq.flatten())
        if exclude is not None:
            similarity.masked_fill_(exclude.permute(0, 2, 3, 1), -math.inf)
        return ((q * q).sum(-1) - 2 * similarity.amax(-1)).clamp_min(0).unsqueeze(1)

    def forward(self, t_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        d = self.nearest_sq(self.embed(t_feats)).sqrt()
        return (d - self.dist_mean) / self.dist_std

    def branch_scores(self, map_z: torch.Tensor, memory_z: torch.Tensor, map_peaks: bool = False) -> torch.Tensor:
        """(N, 2): the max of the z-scored CFRG map; the log-mean-exp at score_temperature of the z-scored
        memory distances on the memory's grid (between their max and their mean: a wide texture change
        counts, not only its peak; on the coarse grid the sum of exponentials stays small enough for FP16)."""
        m = self.score_margin  # map_peaks: map_z holds each tile's peak inside its margin already
        map_z, memory_z = (map_z if map_peaks else inside(map_z, m)), inside(memory_z, m // self.stride)
        return torch.cat([map_z.flatten(1).amax(1, keepdim=True), soft_max(memory_z, self.score_temperature)], 1)

    def fuse(self, amap: torch.Tensor, t_feats: Sequence[torch.Tensor], blur: nn.Module):
        """(map, score, memory map): the z-scored CFRG map fused with the memory map (the smoothed, z-scored memory
        distance at input resolution; fused_map); the sum of the z-scored branch scores (or, without a
        score temperature, the map's max)."""
        map_z, memory_z = (amap - self.map_mean) / self.map_std, self(t_feats)
        memory_map = blur(upsample(memory_z, self.stride))
        fused = self.fused_map(map_z, memory_map)
        if self.score_temperature is None:
            return fused, inside(fused, self.score_margin).flatten(1).amax(1), memory_map
        return fused, ((self.branch_scores(map_z, memory_z) - self.score_mean) / self.score_std).sum(1), memory_map

    def fused_map(self, map_z: torch.Tensor, memory_map: torch.Tensor) -> torch.Tensor:
        """The pixel map of two z-scored maps: their per-pixel max or sum, the memory map weighted."""
        weighted = memory_map if self.weight == 1 else memory_map * self.weight
        return torch.maximum(map_z, weighted) if self.fusion == "max" else map_z + weighted

    def fuse_plain(self, plain: torch.Tensor, memory_map: torch.Tensor) -> torch.Tensor:
        """The z-scored plain map fused with the memory map."""
        return self.fused_map((plain - self.plain_mean) / self.plain_std, memory_map)

    @torch.no_grad()
    def fit_z_scores(self, batches) -> None:
        """z-score statistics of the CFRG map, of the memory distances, (combined score) of the two branch
        scores and (plain_stats) of the plain map, from good images: `batches` yields (CFRG map (N,1,H,W),
        nearest-patch distance (N,1,h,w), plain map (N,1,H,W) or None)."""
        sums = torch.zeros(6, dtype=torch.float64)  # sum and sum of squares: map, distance, plain map
        n_map = n_dist = 0
        map_peaks, distances = [], []  # per image, for the branch-score statistics once the z-scores are known
        for amap, dist, plain in batches:
            amap, dist = amap.double(), dist.double()
            plain = plain.double() if self.plain_stats else torch.zeros(())
            sums += torch.stack([amap.sum(), (amap * amap).sum(), dist.sum(), (dist * dist).sum(), plain.sum(),
                                 (plain * plain).sum()])
            n_map += amap.numel()
            n_dist += dist.numel()
            map_peaks.append(inside(amap, self.score_margin).flatten(1).amax(1))
            distances.append(dist.float())
        if n_map == 0:
            raise ValueError("the patch memory's statistics need at least one good image")
        pairs = [((self.map_mean, self.map_std), (sums[0], sums[1], n_map)),
                 ((self.dist_mean, self.dist_std), (sums[2], sums[3], n_dist))]
        if self.plain_stats:
            pairs.append(((self.plain_mean, self.plain_std), (sums[4], sums[5], n_map)))
        for (mean, std), (s1, s2, n) in pairs:
            m = s1 / n
            mean.fill_(float(m))
            std.fill_(float(torch.sqrt((s2 / n - m * m).clamp_min(0)) + 1e-6))
        if self.score_temperature is not None:
            scores = torch.cat([self.branch_scores(((peak - self.map_mean) / self.map_std).float().view(-1, 1),
                                                   (d - self.dist_mean) / self.dist_std, map_peaks=True)
                                for peak, d in zip(map_peaks, distances)]).double()
            self.score_mean.copy_(scores.mean(0).float())
            self.score_std.copy_((scores.std(0) if len(scores) > 1 else torch.ones(2)).float() + 1e-6)

    @torch.no_grad()
    def fill(self, embeddings: torch.Tensor, seed: int = 0, progress: bool = False) -> torch.Tensor:
        """Coreset of the patches of embeddings (N, D, h, w); returns each bank row's source image."""
        n, dim, h, w = embeddings.shape
        size = self.bank.shape[0]
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(n * h * w, generator=g)[:self.candidates_per_slot * size]
        patches = embeddings.permute(0, 2, 3, 1).reshape(-1, dim)[pick].float()
        chosen = greedy_coreset(patches, size, seed=seed, progress=progress)
        rows = patches[chosen]
        if len(rows) < size:  # fewer patches than bank slots: repeat (duplicates do not change the minimum)
            rows = rows[torch.arange(size) % len(rows)]
            chosen = chosen[torch.arange(size) % len(chosen)]
        self.center.copy_(rows.mean(0).view(1, dim, 1, 1))
        rows = rows - self.center.view(1, dim)
        self.bank.copy_(rows.view(size, dim, 1, 1))
        self.bank_sq.copy_((rows * rows).sum(1).view(1, size, 1, 1))
        self.images.fill_(float(n))
        return pick[chosen] // (h * w)

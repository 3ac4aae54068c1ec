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
with statistics of good training images (calibrate_map), the z-scores are averaged over components and
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
fine_weight > 0 (default 0) adds FineGaussian's map to the pixel map: a Gaussian of good stride-4/8 features,
the same for every position; the score does not use it.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from sdk.backends import ModelFileError
from sdk.files import atomic_output

from .backbones import build_teacher
from .config import FINE_SPREAD_LIMIT, IMAGE_SCORES, MAP_NORMALISATIONS, PIXEL_MAPS, CFRGConfig


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = conv_bn_relu(c, c)
        self.conv2 = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.conv2(self.conv1(x)))


class Student(nn.Module):
    """Plain ResNet-style student (full convs, ReLU): heterogeneous to the MBConv teacher."""

    def __init__(self, teacher_channels: Sequence[int], width: int = 32):
        super().__init__()
        w = width
        self.stem = nn.Sequential(conv_bn_relu(3, w // 2, 3, 2), conv_bn_relu(w // 2, w, 3, 2))
        self.stage4 = _ResBlock(w)
        self.down8 = conv_bn_relu(w, 2 * w, 3, 2)
        self.stage8 = _ResBlock(2 * w)
        self.down16 = conv_bn_relu(2 * w, 4 * w, 3, 2)
        self.stage16 = _ResBlock(4 * w)
        self.adapters = nn.ModuleList(
            nn.Conv2d(c_in, c_t, 1) for c_in, c_t in zip((w, 2 * w, 4 * w), teacher_channels)
        )

    def forward(self, x):
        f4 = self.stage4(self.stem(x))
        f8 = self.stage8(self.down8(f4))
        f16 = self.stage16(self.down16(f8))
        return [a(f) for a, f in zip(self.adapters, (f4, f8, f16))]


class Recovery(nn.Module):
    """Reverse-distillation style: fuse teacher scales into a compact code at stride 32, decode back."""

    def __init__(self, teacher_channels: Sequence[int], width: int = 128, code_stride: int = 32):
        super().__init__()
        if code_stride not in (16, 32):
            raise ValueError(f"recovery code stride must be 16 or 32, got {code_stride}")
        c4, c8, c16 = teacher_channels
        w = width
        self.code_up = code_stride // 16
        self.in4 = conv_bn_relu(c4, w // 4, 3, 4)
        self.in8 = conv_bn_relu(c8, w // 4, 3, 2)
        self.in16 = conv_bn_relu(c16, w // 2, 1, 1)
        self.fuse = nn.Sequential(conv_bn_relu(w, w), conv_bn_relu(w, 2 * w, 3, self.code_up))
        self.up16 = nn.Sequential(conv_bn_relu(2 * w, w), _ResBlock(w))
        self.up8 = nn.Sequential(conv_bn_relu(w, w // 2), _ResBlock(w // 2))
        self.up4 = nn.Sequential(conv_bn_relu(w // 2, w // 4), _ResBlock(w // 4))
        self.out = nn.ModuleList(nn.Conv2d(c, ct, 1) for c, ct in zip((w // 4, w // 2, w), teacher_channels))

    def forward(self, feats):
        f4, f8, f16 = feats
        code = self.fuse(torch.cat([self.in4(f4), self.in8(f8), self.in16(f16)], 1))
        d16 = self.up16(upsample(code, self.code_up))
        d8 = self.up8(upsample(d16, 2))
        d4 = self.up4(upsample(d8, 2))
        return [o(d) for o, d in zip(self.out, (d4, d8, d16))]


class SegHead(nn.Module):
    """Light decoder on discrepancy-weighted teacher features; logits at stride 4."""

    def __init__(self, teacher_channels: Sequence[int], width: int = 32, n_weights: int = 2):
        super().__init__()
        self.proj = nn.ModuleList(
            conv_bn_relu(c * n_weights + n_weights, width, 1) for c in teacher_channels
        )
        self.fuse = conv_bn_relu(3 * width, width)
        self.logit = nn.Conv2d(width, 1, 1)

    def forward(self, t_feats, discrepancies):
        """discrepancies: per scale, a list of (N,1,h,w) maps in [0, 2]."""
        parts = []
        for k, (proj, t, ds) in enumerate(zip(self.proj, t_feats, discrepancies)):
            x = proj(torch.cat([t * d for d in ds] + list(ds), 1))
            parts.append(upsample(x, 2 ** k))
        return self.logit(self.fuse(torch.cat(parts, 1)))


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bilinear upsampling by a static integer factor (a constant-scale Resize in ONNX)."""
    if factor == 1:
        return x
    return F.interpolate(x, scale_factor=float(factor), mode="bilinear", align_corners=False)


def cos_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity over channels, (N,1,H,W)."""
    return 1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-6).unsqueeze(1)


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = int(math.ceil(4 * sigma))  # as scipy.ndimage.gaussian_filter (truncate=4)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class GaussianBlur(nn.Module):
    """Fixed separable Gaussian as two convolutions with replicate (edge) padding (ONNX/TensorRT friendly)."""

    def __init__(self, sigma: float):
        super().__init__()
        k = gaussian_kernel1d(sigma)
        self.radius = (k.numel() - 1) // 2
        self.register_buffer("kx", k.view(1, 1, 1, -1), persistent=False)
        self.register_buffer("ky", k.view(1, 1, -1, 1), persistent=False)

    def forward(self, x):
        r = self.radius
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), self.kx)
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), self.ky)


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


def soft_max(x: torch.Tensor, t: float) -> torch.Tensor:
    """(N, 1): the log-mean-exp at temperature t of each sample's values, computed from their peak."""
    m = x.flatten(1)
    peak = m.amax(1, keepdim=True)
    return peak + t * torch.log(torch.exp((m - peak) * (1.0 / t)).mean(1, keepdim=True))


class PatchMemory(nn.Module):
    """Distance of each pooled stride-8/16 teacher feature to its nearest good training patch, z-scored,
    on the stride-`stride` grid.

    The nearest-neighbour search is Transpose + MatMul + ReduceMax over the last axis in ONNX (no
    reshapes, TensorRT-friendly): |q - b|^2 = |q|^2 - 2 (q.b - |b|^2 / 2), with q and b centred on the
    bank's mean so that the cancellation loses few digits (FP16 engines too).
    """
    candidates_per_slot = 16  # the coreset is chosen among up to this many random patches per bank slot

    def __init__(self, channels: Sequence[int], strides: Sequence[int], size: int, pool: int = 9,
                 stride: int = 16, score_temperature: float | None = None, plain_stats: bool = False):
        super().__init__()
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
            step = max(self.stride // s, 1)
            f = F.avg_pool2d(t_feats[k].float(), self.pool, step, self.pool // 2, count_include_pad=False)
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

    def branch_scores(self, map_z: torch.Tensor, memory_z: torch.Tensor) -> torch.Tensor:
        """(N, 2): the max of the z-scored CFRG map; the log-mean-exp at score_temperature of the z-scored
        memory distances on the memory's grid (between their max and their mean: a wide texture change
        counts, not only its peak; on the coarse grid the sum of exponentials stays small enough for FP16)."""
        return torch.cat([map_z.flatten(1).amax(1, keepdim=True), soft_max(memory_z, self.score_temperature)], 1)

    def fuse(self, amap: torch.Tensor, t_feats: Sequence[torch.Tensor], blur: nn.Module):
        """(map, score, memory map): the per-pixel max of the z-scored CFRG map and the memory map (the smoothed,
        z-scored memory distance at input resolution); the sum of the z-scored branch scores (or, without a
        score temperature, the map's max)."""
        map_z, memory_z = (amap - self.map_mean) / self.map_std, self(t_feats)
        memory_map = blur(upsample(memory_z, self.stride))
        fused = torch.maximum(map_z, memory_map)
        if self.score_temperature is None:
            return fused, fused.flatten(1).amax(1), memory_map
        return fused, ((self.branch_scores(map_z, memory_z) - self.score_mean) / self.score_std).sum(1), memory_map

    def fuse_plain(self, plain: torch.Tensor, memory_map: torch.Tensor) -> torch.Tensor:
        """The per-pixel max of the z-scored plain map and the memory map."""
        return torch.maximum((plain - self.plain_mean) / self.plain_std, memory_map)

    @torch.no_grad()
    def calibrate(self, batches) -> None:
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
            map_peaks.append(amap.flatten(1).amax(1))
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
                                                   (d - self.dist_mean) / self.dist_std)
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


def ledoit_wolf(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Ledoit-Wolf shrunk covariance of the rows of x (centred here) and its shrinkage: (1 - a) S + a mu I,
    mu = trace(S) / dim, with a estimated from the data (Ledoit & Wolf 2004, as scikit-learn computes it)."""
    x = x.double() - x.double().mean(0)
    n, p = x.shape
    s = x.t() @ x / n
    trace, sum_sq = float(torch.trace(s)), float((s * s).sum())
    mu = trace / p
    x2 = x * x
    beta = (float((x2.t() @ x2).sum()) / n - sum_sq) / (p * n)
    delta = (sum_sq - 2 * mu * trace + p * mu * mu) / p
    shrink = 0.0 if delta <= 0 else min(beta, delta) / delta
    return (1 - shrink) * s + shrink * mu * torch.eye(p, dtype=s.dtype), shrink


def inverse_cholesky(cov: torch.Tensor) -> torch.Tensor:
    """L^-1 for cov + 1e-6 I = L L^T (positive definite even from few samples): |L^-1 z|^2 = z^T cov^-1 z."""
    return torch.linalg.inv(torch.linalg.cholesky(cov + 1e-6 * torch.eye(len(cov), dtype=cov.dtype)))


def high_pass(x: torch.Tensor, k: int) -> torch.Tensor:
    """x (N, 1, H, W) minus its k x k mean (odd k, the edge repeated)."""
    r = k // 2
    return x - F.avg_pool2d(F.pad(x, (r, r, r, r), mode="replicate"), k, 1)


def peak_above_mean(maps: torch.Tensor) -> float:
    """The mean over images of each map's peak, above the mean of all pixels (N, 1, H, W)."""
    m = maps.double()
    return float(m.flatten(1).amax(1).mean() - m.mean())


class GlobalGaussian(nn.Module):
    """Image-level branch of the combined score: the Mahalanobis distance of an image's global teacher
    statistics (per channel, at each scale, the spatial mean and log standard deviation) to a Gaussian
    fitted on good training images (standardised, Ledoit-Wolf covariance), z-scored on held-out good
    images. It sees a whole-part change in texture or tone that no single place shows strongly enough.
    It is used only when fitted on more good images than the descriptor has dimensions (352 for Lite0)."""

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        dim = 2 * sum(channels)
        self.register_buffer("shift", torch.zeros(1, dim))
        # y = (descriptor - shift) @ whiten.T / sqrt(dim): |y| * sqrt(dim) is the distance; the scale keeps
        # the sum of squares far from FP16's range limit
        self.register_buffer("whiten", torch.eye(dim) / math.sqrt(dim))
        self.register_buffer("dist_mean", torch.zeros(()))
        self.register_buffer("dist_std", torch.ones(()))
        self.register_buffer("images", torch.zeros(()))  # good images the Gaussian came from (0: not fitted)

    @staticmethod
    def describe(t_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N, 2 * channels): per scale, the spatial mean and log standard deviation of each channel."""
        out = []
        for f in t_feats:  # reductions over (2, 3), no reshape: the graph stays free of shape arithmetic
            f = f.float()
            mean = f.mean((2, 3), keepdim=True)
            var = ((f - mean) * (f - mean)).mean((2, 3))
            out += [mean[:, :, 0, 0], 0.5 * torch.log(var + 1e-6)]
        return torch.cat(out, 1)

    def distance(self, descriptors: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(descriptors - self.shift, self.whiten.t())
        return (y * y).sum(1).sqrt() * math.sqrt(self.whiten.shape[0])

    def in_use(self) -> torch.Tensor:
        """1 when the Gaussian came from more good images than it has dimensions (a full-rank sample
        covariance), else 0: fitted on fewer, its distances were mostly noise and the branch adds nothing."""
        return (self.images > self.whiten.shape[0]).float()

    def forward(self, t_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        return (self.distance(self.describe(t_feats)) - self.dist_mean) / self.dist_std * self.in_use()

    @torch.no_grad()
    def fit(self, descriptors: torch.Tensor) -> float:
        """Gaussian of good images' descriptors (N, dim); returns the Ledoit-Wolf shrinkage."""
        d = descriptors.double()
        if len(d) < 2:
            raise ValueError(f"the global image statistics need at least 2 good images, got {len(d)}")
        mean, scale = d.mean(0), d.std(0) + 1e-6
        cov, shrink = ledoit_wolf((d - mean) / scale)
        inv_chol = inverse_cholesky(cov)  # |inv_chol z|^2 = z^T cov^-1 z
        self.shift.copy_(mean.view(1, -1).float())
        self.whiten.copy_((inv_chol / scale.view(1, -1) / math.sqrt(len(mean))).float())
        self.images.fill_(float(len(d)))
        return shrink

    @torch.no_grad()
    def calibrate(self, distances: torch.Tensor) -> None:
        """z-score statistics from the distances of good images the Gaussian was not fitted on."""
        d = distances.double()
        self.dist_mean.fill_(float(d.mean()))
        self.dist_std.fill_(float(d.std()) + 1e-6 if len(d) > 1 else 1.0)

    @torch.no_grad()
    def fit_and_calibrate(self, train: torch.Tensor, held_out: torch.Tensor | None = None, folds: int = 5) -> float:
        """Fit on `train` descriptors; z-score statistics on `held_out` or, without it, on each of `folds`
        parts of `train` scored by a Gaussian fitted on the other parts (with fewer than 3 images, on the
        training images themselves)."""
        distances = []
        if held_out is None:
            parts = torch.arange(len(train)) % folds
            for k in range(folds):
                if (parts == k).any() and (parts != k).sum() >= 2:
                    self.fit(train[parts != k])
                    distances.append(self.distance(train[parts == k].float()))
        shrink = self.fit(train)
        if held_out is not None:
            distances = [self.distance(held_out.float())]
        self.calibrate(torch.cat(distances) if distances else self.distance(train.float()))
        return shrink


def auto_fine_weight(spread: float, limit: float = FINE_SPREAD_LIMIT) -> float:
    """fine_weight "auto": 1 - spread / limit, and 0 (no branch) from the limit on (FineGaussian.spread)."""
    return round(max(0.0, 1.0 - spread / limit), 3)


class FineGaussian(nn.Module):
    """Pixel-map branch (config.fine_weight > 0): each stride-4 cell's distance to one Gaussian of good training
    images' fine teacher features, the same for every position (a D x D matrix whatever the image size).

    The features are the stride-4 and stride-8 teacher features, the latter upsampled to stride 4, averaged over
    `pool` x `pool` cells. Their Mahalanobis distance is upsampled to the input, smoothed like the map, and
    high-passed (the map minus its `high_pass` x `high_pass` mean), then scaled so that its good images' mean
    peak above their mean is `weight` times the pixel map's. `forward` gives what is added to the pixel map.
    """
    pool, high_pass = 5, 31

    def __init__(self, channels: Sequence[int], strides: Sequence[int], sigma: float):
        super().__init__()
        self.layers = [strides.index(4), strides.index(8)]
        dim = sum(channels[k] for k in self.layers)
        self.blur = GaussianBlur(sigma)
        self.register_buffer("center", torch.zeros(1, dim, 1, 1))
        self.register_buffer("whiten", torch.eye(dim).view(dim, dim, 1, 1))  # |whiten (f - center)|^2 = d^2
        self.register_buffer("offset", torch.zeros(()))  # the good images' mean of the high-passed map
        self.register_buffer("scale", torch.zeros(()))  # 0 until calibrated: the branch adds nothing
        self.register_buffer("images", torch.zeros(()))  # good images the Gaussian came from (0: not fitted)

    def features(self, t_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        f = torch.cat([t_feats[self.layers[0]].float(), upsample(t_feats[self.layers[1]].float(), 2)], 1)
        return F.avg_pool2d(f, self.pool, 1, self.pool // 2, count_include_pad=False)

    def distance_map(self, t_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N, 1, H, W): the smoothed, high-passed Mahalanobis distance at input resolution."""
        y = F.conv2d(self.features(t_feats) - self.center, self.whiten)
        return high_pass(self.blur(upsample((y * y).sum(1, keepdim=True).sqrt(), 4)), self.high_pass)

    def forward(self, t_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        return (self.distance_map(t_feats) - self.offset) * self.scale

    @torch.no_grad()
    def fit(self, rows: torch.Tensor) -> None:
        """Mean and Ledoit-Wolf covariance of good feature rows (M, D)."""
        self.center.copy_(rows.double().mean(0).view(1, -1, 1, 1).float())
        self.whiten.copy_(inverse_cholesky(ledoit_wolf(rows)[0]).float().view(*self.whiten.shape))

    @torch.no_grad()
    def spread(self, rows: torch.Tensor) -> float:
        """How far one Gaussian is from describing good feature rows (M, D) it was fitted on: the coefficient of
        variation of their squared distances, in units of a true Gaussian's (sqrt(2 / D), chi-squared with D
        degrees of freedom). Near 1 the surface's fine features are one Gaussian cloud; heavy tails (texture,
        structure that one Gaussian cannot hold) raise it."""
        dim = rows.shape[1]
        y = (rows.float() - self.center.view(1, dim)) @ self.whiten.view(dim, dim).t()
        d2 = (y * y).sum(1).double()
        return float(d2.std() / d2.mean().clamp_min(1e-12)) / math.sqrt(2.0 / dim)

    @torch.no_grad()
    def calibrate(self, weight: float, good_maps: torch.Tensor, good_pixel_maps: torch.Tensor, images: int) -> None:
        """From good images' distance maps and pixel maps (N, 1, H, W; without this branch)."""
        self.offset.fill_(float(good_maps.double().mean()))
        self.scale.fill_(weight * peak_above_mean(good_pixel_maps) / max(peak_above_mean(good_maps), 1e-6))
        self.images.fill_(float(images))


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
        if config.map_normalisation == "position":  # per-position discrepancy statistics on good images
            h, w = config.image_size
            n_comp = 1 + int(config.use_recovery)
            for k, s in enumerate(self.strides):
                self.register_buffer(f"map_mean{k}", torch.zeros(1, n_comp, h // s, w // s))
                self.register_buffer(f"map_std{k}", torch.ones(1, n_comp, h // s, w // s))
            self.register_buffer("map_stats_images", torch.zeros(()))  # 0: not calibrated yet
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
                                   plain_stats=config.pixel_map == "plain_fused")
                       if config.memory_size else None)
        self.global_gaussian = (GlobalGaussian(channels) if self.memory is not None and config.global_score
                                and config.image_score == "combined" else None)
        if not config.fine_weight >= 0:
            raise ValueError(f"fine_weight must be >= 0 (0: no fine-feature branch), got {config.fine_weight}")
        self.fine = self.new_fine_branch() if config.fine_weight > 0 else None

    def new_fine_branch(self) -> FineGaussian:
        """An unfitted FineGaussian for this teacher and smoothing (calibrate_fine fits and scales it)."""
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
    def calibrate_map(self, batches, shrink: float = 0.5) -> int:
        """Per-position mean and std of each discrepancy over good images (batches of model inputs).

        std is sqrt(var_position + (shrink * std_global)^2): positions seen with little variation
        in a small training set do not turn into hair triggers. Returns the number of images used.
        """
        if self.config.map_normalisation != "position":
            raise ValueError(f"calibrate_map: this model's map_normalisation is {self.config.map_normalisation!r}; "
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
            raise ValueError(f"calibrate_map needs at least 2 good images, got {n}")
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
        return (pixel_map if self.fine is None else pixel_map + self.fine(t_feats)), score

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
            return amap, amap.flatten(1).amax(1), None
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


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of `model` with each BatchNorm2d that reads only a Conv2d's output folded into
    that convolution (and replaced by Identity): the same outputs, 10-20 % less time in eager PyTorch.
    The pairs come from a torch.fx trace of the model's forward."""
    import copy

    import torch.fx
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    class ConvLeafTracer(torch.fx.Tracer):  # convolutions with their own padding (SameConv2d) stay whole
        def is_leaf_module(self, m, qualname):
            return isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) or super().is_leaf_module(m, qualname)

    model = copy.deepcopy(model).eval()
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}  # how often each module is called: a shared one is not folded
    pairs = []
    for node in ConvLeafTracer().trace(model).nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
            src = node.args[0] if node.args else None
            if (isinstance(modules.get(node.target), nn.BatchNorm2d) and isinstance(src, torch.fx.Node)
                    and src.op == "call_module" and isinstance(modules.get(src.target), nn.Conv2d)
                    and len(src.users) == 1):
                pairs.append((src.target, node.target))
    for conv_name, bn_name in pairs:
        if calls[conv_name] != 1 or calls[bn_name] != 1:  # a shared module: folding would change its other uses
            continue
        conv, bn = modules[conv_name], modules[bn_name]
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                            bn.weight, bn.bias)
        conv.weight, conv.bias = weight, bias
        parent, _, attr = bn_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
    return model


def save_checkpoint(model: CFRG, path, extra: dict | None = None) -> None:
    """model.pt: plain tensors and JSON-able values only (loads with weights_only=True)."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("teacher.")}
    payload = {"format": "cfrg-checkpoint-1", "config": model.config.to_dict(), "state_dict": state,
               "teacher_state_dict": model.teacher.state_dict(), "extra": extra or {}}
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path, map_location="cpu") -> tuple[CFRG, dict]:
    """The model in a model.pt; ModelFileError (one line: the file, the problem, the fix) for a bad one."""
    if os.path.isdir(path):
        raise ModelFileError(f"checkpoint {path} is a folder: pass the model.pt inside it "
                             f"({os.path.join(path, 'model.pt')})")
    if not os.path.isfile(path):
        raise ModelFileError(f"checkpoint {path} does not exist: train one with `cfrg train ... --out DIR` "
                             f"and pass DIR/model.pt")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise ModelFileError(f"{path} is not a readable CFRG checkpoint ({type(exc).__name__}: {exc}); "
                             f"train again or copy the file again") from exc
    if not isinstance(payload, dict) or payload.get("format") != "cfrg-checkpoint-1":
        raise ModelFileError(f"{path} is not a CFRG checkpoint (no 'cfrg-checkpoint-1' format tag); pass the "
                             f"model.pt that `cfrg train` wrote")
    missing_keys = [k for k in ("config", "state_dict", "teacher_state_dict") if k not in payload]
    if missing_keys:
        raise ModelFileError(f"{path}: the checkpoint lacks {missing_keys}; it is incomplete, train again")
    try:
        model = CFRG(CFRGConfig.from_dict(payload["config"]), pretrained_teacher=False)
        model.teacher.load_state_dict(payload["teacher_state_dict"])
        missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: the checkpoint's config does not match its weights "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); train again") from exc
    missing = [k for k in missing if not k.startswith("teacher.")]
    if missing or unexpected:
        raise ModelFileError(f"{path}: checkpoint does not match its config (missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]}); train again")
    model.eval()
    return model, payload.get("extra", {}) if isinstance(payload.get("extra"), dict) else {}

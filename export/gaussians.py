"""The two Gaussians of good images' teacher features: GlobalGaussian (a branch of the combined image score) and
FineGaussian (a branch of the pixel map, fine_weight), with the covariance estimate they share."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from .blocks import GaussianBlur, high_pass, upsample
from .config import FINE_SPREAD_LIMIT


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
    def fit_z_scores(self, distances: torch.Tensor) -> None:
        """z-score statistics from the distances of good images the Gaussian was not fitted on."""
        d = distances.double()
        self.dist_mean.fill_(float(d.mean()))
        self.dist_std.fill_(float(d.std()) + 1e-6 if len(d) > 1 else 1.0)

    @torch.no_grad()
    def fit_with_z_scores(self, train: torch.Tensor, held_out: torch.Tensor | None = None, folds: int = 5) -> float:
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
        self.fit_z_scores(torch.cat(distances) if distances else self.distance(train.float()))
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
        self.register_buffer("scale", torch.zeros(()))  # 0 until fitted: the branch adds nothing
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
    def fit_scale(self, weight: float, good_maps: torch.Tensor, good_pixel_maps: torch.Tensor, images: int) -> None:
        """From good images' distance maps and pixel maps (N, 1, H, W; without this branch)."""
        self.offset.fill_(float(good_maps.double().mean()))
        self.scale.fill_(weight * peak_above_mean(good_pixel_maps) / max(peak_above_mean(good_maps), 1e-6))
        self.images.fill_(float(images))

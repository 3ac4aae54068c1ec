"""The CFRG model's building blocks: the student, the recovery branch, the segmentation head, and the
map operations they share (upsampling, cosine distance, Gaussian smoothing, soft max, high pass)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F


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



def inside(x: torch.Tensor, margin: int) -> torch.Tensor:
    """x (N, C, H, W) without its outer `margin` rows and columns (a tile's margin: context, not scored)."""
    return x[:, :, margin:-margin, margin:-margin] if margin else x


def soft_max(x: torch.Tensor, t: float) -> torch.Tensor:
    """(N, 1): the log-mean-exp at temperature t of each sample's values, computed from their peak."""
    m = x.flatten(1)
    peak = m.amax(1, keepdim=True)
    return peak + t * torch.log(torch.exp((m - peak) * (1.0 / t)).mean(1, keepdim=True))



def high_pass(x: torch.Tensor, k: int) -> torch.Tensor:
    """x (N, 1, H, W) minus its k x k mean (odd k, the edge repeated)."""
    r = k // 2
    return x - F.avg_pool2d(F.pad(x, (r, r, r, r), mode="replicate"), k, 1)

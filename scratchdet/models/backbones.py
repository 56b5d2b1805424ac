"""Backbones, built from scratch: ResNet-18/34 with the paper's stem variants, Root-ResNet, VGG16(-BN).

Every backbone returns its source feature maps (a list, shallow to deep) and
knows their sizes and channels for a given input size, so the SSD can lay out
its priors without a dummy forward pass.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import BasicBlock, ConvNormAct, L2Norm

__all__ = ["RESNET_BLOCKS", "STEMS", "ResNetBackbone", "VGG16Backbone", "conv_out_size"]

RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
# stem name -> description; (a)-(c) are the paper's ResNet-18 ablations, "root" is Root-ResNet (d)
STEMS = {
    "a": "7x7 conv stride 2 + 3x3 max-pool stride 2 (ResNet as published)",
    "b": "7x7 conv stride 2, max-pool removed",
    "c": "7x7 conv stride 1 + 3x3 max-pool stride 2",
    "root": "root block: three 3x3 stride-1 convs + 2x2 max-pool stride 2",
}


def conv_out_size(n: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1,
                  ceil_mode: bool = False) -> int:
    """Spatial output size of a conv or pool along one axis."""
    span = n + 2 * padding - dilation * (kernel - 1) - 1
    return (-(-span // stride) if ceil_mode else span // stride) + 1


class ResNetBackbone(nn.Module):
    """ResNet with BasicBlocks; ``stem`` picks (a)/(b)/(c) or the Root-ResNet root block.

    Stages have ``width * (1, 2, 4, 8)`` channels and strides 1, 2, 2, 2. The root
    block's three full-resolution convs have ``root_width`` channels (default
    ``width``); a narrower root is the cheap way to keep Root-ResNet's stride-1 input on a CPU.
    ``source_stages`` (1-based) are the stages whose outputs are SSD sources. ``root_stride`` 2
    makes the root block's first conv stride 2: a quarter of the root's cost, at the price of the
    full-resolution input the paper's root keeps.
    """

    def __init__(self, blocks: Sequence[int] = (2, 2, 2, 2), stem: str = "root", width: int = 64,
                 source_stages: Sequence[int] = (3, 4), norm: str = "bn", root_width: int | None = None,
                 root_stride: int = 1):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; expected one of {sorted(STEMS)}")
        if len(blocks) != 4 or not source_stages or not all(1 <= s <= 4 for s in source_stages):
            raise ValueError(f"expected 4 stages and source_stages in 1..4, got blocks={tuple(blocks)}, "
                             f"source_stages={tuple(source_stages)}")
        if root_stride not in (1, 2) or (root_stride != 1 and stem != "root"):
            raise ValueError(f"root_stride must be 1 or 2, and 1 unless stem='root'; got {root_stride} (stem {stem!r})")
        self.stem_name = stem
        self.root_stride = root_stride
        self.source_stages = tuple(sorted(source_stages))
        stem_width = width
        if stem == "root":
            stem_width = root_width or width
            self.stem = nn.Sequential(ConvNormAct(3, stem_width, 3, root_stride, norm=norm),
                                      ConvNormAct(stem_width, stem_width, 3, 1, norm=norm),
                                      ConvNormAct(stem_width, stem_width, 3, 1, norm=norm))
        else:
            self.stem = nn.Sequential(ConvNormAct(3, width, 7, 1 if stem == "c" else 2, padding=3, norm=norm))
        self.stage_channels = [width * m for m in (1, 2, 4, 8)]
        stages, in_ch = [], stem_width
        for i, (n, out_ch) in enumerate(zip(blocks[:max(self.source_stages)], self.stage_channels)):
            stride = 1 if i == 0 else 2
            layers = [BasicBlock(in_ch, out_ch, stride, norm=norm)]
            layers += [BasicBlock(out_ch, out_ch, 1, norm=norm) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem_name == "root":
            return F.max_pool2d(x, 2, 2)
        if self.stem_name == "b":
            return x
        return F.max_pool2d(x, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self._pool(self.stem(x))
        feats = []
        for i, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if i in self.source_stages:
                feats.append(x)
        return feats

    @property
    def out_channels(self) -> list[int]:
        return [self.stage_channels[s - 1] for s in self.source_stages]

    def feature_sizes(self, image_size: int) -> list[int]:
        n = image_size
        if self.stem_name == "root":
            n = conv_out_size(conv_out_size(n, 3, self.root_stride, 1), 2, 2)
        else:
            n = conv_out_size(n, 7, 1 if self.stem_name == "c" else 2, 3)
            if self.stem_name != "b":
                n = conv_out_size(n, 3, 2, 1)
        sizes = []
        for i in range(1, len(self.stages) + 1):
            if i > 1:
                n = conv_out_size(n, 3, 2, 1)
            if i in self.source_stages:
                sizes.append(n)
        return sizes


# VGG16 conv layers; "M" = 2x2 max-pool, "C" = 2x2 max-pool with ceil_mode (75 -> 38 at 300 px)
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512)


class VGG16Backbone(nn.Module):
    """SSD's VGG16: conv1_1..conv5_3, pool5 3x3/1, dilated fc6 (1024), fc7 1x1 (1024).

    Sources are conv4_3 (through L2Norm, as in SSD) and fc7. ``norm`` (e.g. "bn", the paper's
    "BN in backbone", or "none") is the normalisation after every conv. ``width`` scales the
    channels (64 = the published network).
    """

    def __init__(self, norm: str = "bn", width: int = 64):
        super().__init__()
        scale = width / 64
        layers, in_ch = [], 3
        self.conv4_3_index = None
        for v in _VGG16_CFG:
            if v in ("M", "C"):
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=v == "C"))
                continue
            out_ch = max(1, int(round(v * scale)))
            layers.append(ConvNormAct(in_ch, out_ch, 3, 1, norm=norm))
            in_ch = out_ch
            if sum(isinstance(m, ConvNormAct) for m in layers) == 10 and self.conv4_3_index is None:
                self.conv4_3_index = len(layers)          # conv4_3 is the tenth conv
        self.features = nn.Sequential(*layers)
        fc_ch = int(round(1024 * scale))
        self.conv4_3_channels = in_ch
        self.l2norm = L2Norm(in_ch)
        self.fc = nn.Sequential(nn.MaxPool2d(3, 1, 1), ConvNormAct(in_ch, fc_ch, 3, 1, padding=6, dilation=6, norm=norm),
                                ConvNormAct(fc_ch, fc_ch, 1, 1, norm=norm))
        self.fc_channels = fc_ch

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.features[:self.conv4_3_index](x)
        source1 = self.l2norm(x)
        x = self.features[self.conv4_3_index:](x)
        return [source1, self.fc(x)]

    @property
    def out_channels(self) -> list[int]:
        return [self.conv4_3_channels, self.fc_channels]

    def feature_sizes(self, image_size: int) -> list[int]:
        n, sizes = image_size, []
        for i, v in enumerate(_VGG16_CFG):
            if v in ("M", "C"):
                n = conv_out_size(n, 2, 2, ceil_mode=v == "C")
            if i == 12:                     # conv4_3
                sizes.append(n)
        return sizes + [n]                  # conv5, pool5 (3x3/1) and fc6/fc7 keep the size

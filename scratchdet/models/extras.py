"""SSD extra layers: they continue the backbone's pyramid below its last source."""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from .layers import BasicBlock, ConvNormAct

__all__ = ["residual_extras", "vgg_extras", "extra_out_size"]


def residual_extras(in_channels: int, channels: int, paddings: Sequence[int], norm: str = "bn") -> nn.ModuleList:
    """The ResNet family's extra layers: one stride-2 BasicBlock per extra source.

    Padding 1 halves the size (19 -> 10 -> 5 -> 3); padding 0 takes 3 -> 1.
    """
    layers = []
    for p in paddings:
        layers.append(BasicBlock(in_channels, channels, stride=2, norm=norm, padding=p))
        in_channels = channels
    return nn.ModuleList(layers)


def vgg_extras(in_channels: int, paddings: Sequence[int] = (1, 1, 0, 0), norm: str = "bn",
               scale: float = 1.0) -> nn.ModuleList:
    """SSD300's VGG extras: 1x1 reduce then 3x3 (stride 2 with padding 1, else stride 1 valid)."""
    spec = [(256, 512), (128, 256), (128, 256), (128, 256)]
    layers = []
    for (mid, out), p in zip(spec, paddings):
        mid, out = int(round(mid * scale)), int(round(out * scale))
        layers.append(nn.Sequential(ConvNormAct(in_channels, mid, 1, 1, norm=norm),
                                    ConvNormAct(mid, out, 3, 2 if p == 1 else 1, padding=p, norm=norm)))
        in_channels = out
    return nn.ModuleList(layers)


def extra_out_size(n: int, padding: int, residual: bool) -> int:
    """Output side of one extra layer on an ``n`` x ``n`` input: a residual extra is always
    stride 2; a VGG extra is stride 2 with padding 1, else a stride-1 valid 3x3."""
    stride = 2 if (residual or padding == 1) else 1
    return (n + 2 * padding - 3) // stride + 1

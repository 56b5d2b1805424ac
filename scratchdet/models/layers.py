"""Building blocks shared by every backbone, extra layer and head.

``scratchdet.models.fuse`` relies on the attribute names here: a ``ConvBNAct``
has ``conv`` (nn.Conv2d), ``bn`` (nn.BatchNorm2d or None) and ``act`` (bool,
ReLU after); a ``BasicBlock`` has ``conv1`` (act=True), ``conv2`` (act=False),
``shortcut`` (ConvBNAct with act=False, or None for identity) and a ReLU after
the residual add.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ConvBNAct", "BasicBlock", "L2Norm", "init_weights"]


class ConvBNAct(nn.Module):
    """Conv2d, then optional BatchNorm, then optional ReLU.

    The conv has a bias only when there is no BN (BN's beta plays that role).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, bn: bool = True, act: bool = True):
        super().__init__()
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, bias=not bn)
        self.bn = nn.BatchNorm2d(out_channels) if bn else None
        self.act = bool(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.act:
            x = F.relu(x, inplace=True)
        return x


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 ConvBNAct, a projection shortcut when the shape changes, ReLU after the add.

    ``padding`` applies to ``conv1`` only; with ``padding=0`` (an SSD extra layer
    going 3x3 -> 1x1) the projection shortcut is a 3x3 valid conv so both paths
    keep the same output size.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, bn: bool = True,
                 padding: int = 1):
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, out_channels, 3, stride, padding=padding, bn=bn, act=True)
        self.conv2 = ConvBNAct(out_channels, out_channels, 3, 1, padding=1, bn=bn, act=False)
        if stride != 1 or in_channels != out_channels or padding != 1:
            k = 1 if padding == 1 else 3
            self.shortcut = ConvBNAct(in_channels, out_channels, k, stride, padding=padding - 1 + (k == 3),
                                      bn=bn, act=False)
        else:
            self.shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.conv2(self.conv1(x)) + identity, inplace=True)


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale (SSD's conv4_3 norm)."""

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return x / norm * self.weight.view(1, -1, 1, 1)


def init_weights(module: nn.Module, zero_init_residual: bool = False) -> None:
    """Kaiming-normal (fan_out, ReLU) convs with zero bias, BN weight 1 bias 0.

    ``zero_init_residual`` zeroes the last BN gamma of every BasicBlock, so each
    block starts as the identity (Goyal et al.).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in module.modules():
            if isinstance(m, BasicBlock) and m.conv2.bn is not None:
                nn.init.zeros_(m.conv2.bn.weight)

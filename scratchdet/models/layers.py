"""Building blocks shared by every backbone, extra layer and head, and the normalisation choices.

``scratchdet.models.fuse`` relies on the attribute names here: a ``ConvNormAct`` has
``conv`` (nn.Conv2d), ``norm`` (the normalisation layer or None) and ``act`` (bool, ReLU
after); a ``BasicBlock`` has ``conv1`` (act=True), ``conv2`` (act=False), ``shortcut``
(ConvNormAct with act=False, or None for identity) and a ReLU after the residual add.

Normalisation (``norm=``), as the paper's conclusion lists the options:

- ``"bn"``: BatchNorm, the paper's choice (a :class:`~scratchdet.models.bn_relu.BNReLU2d`: the
  layer's residual add and ReLU run fused with it in training; :func:`use_fused_batch_norm`);
- ``"syncbn"``: BatchNorm whose statistics are synchronised over the GPUs under DDP
  (``nn.SyncBatchNorm``; a single process computes plain BatchNorm);
- ``"gn"``: GroupNorm with 32 groups, or the most groups up to 32 that divide the channels;
  it needs no batch statistics, so it suits small per-GPU batches;
- ``"none"``: no normalisation; the conv gets a bias instead.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bn_relu import BNReLU2d

__all__ = ["NORMS", "ConvNormAct", "BasicBlock", "L2Norm", "Bias2d", "BNReLU2d", "make_norm", "group_count",
           "init_weights", "convert_norms", "is_norm", "use_fused_batch_norm"]

NORMS = ("bn", "syncbn", "gn", "none")
GN_GROUPS = 32


def check_norm(norm: str, what: str = "norm") -> str:
    if norm not in NORMS:
        raise ValueError(f"{what} must be one of {', '.join(NORMS)}, got {norm!r}")
    return norm


def group_count(channels: int, max_groups: int = GN_GROUPS) -> int:
    """GroupNorm's group count: ``max_groups``, or the largest count below it that divides ``channels``."""
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


def make_norm(norm: str, channels: int) -> nn.Module | None:
    """The normalisation layer ``norm`` (see the module docstring) for ``channels``; None for "none"."""
    check_norm(norm)
    if norm == "bn":
        return BNReLU2d(channels)   # nn.BatchNorm2d, with the add and ReLU after it fused in training
    if norm == "syncbn":
        return nn.SyncBatchNorm(channels)
    if norm == "gn":
        return nn.GroupNorm(group_count(channels), channels)
    return None


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer ``init_weights``, weight decay and ``fuse`` treat as one."""
    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm))


class Bias2d(nn.Module):
    """A learned per-channel bias: what ``convert_norms(..., "none")`` puts where a BatchNorm was, so
    the conv before it keeps an effective bias (as a conv without BN has one)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias.view(1, -1, 1, 1).to(x.dtype)


class ConvNormAct(nn.Module):
    """Conv2d, then optional normalisation, then optional ReLU.

    The conv has a bias only without normalisation (BN's and GN's beta plays that role).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, norm: str = "bn", act: bool = True):
        super().__init__()
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, bias=check_norm(norm) == "none")
        self.norm = make_norm(norm, out_channels)
        self.act = bool(act)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, relu: bool | None = None):
        """``relu?(norm(conv(x)) + residual?)``; ``relu`` defaults to ``act`` (a residual block asks
        for the ReLU after its add)."""
        relu = self.act if relu is None else relu
        x = self._conv(x)
        if isinstance(self.norm, BNReLU2d):
            return self.norm(x, residual, relu)
        if self.norm is not None:
            x = self.norm(x)
        if residual is not None:
            x = x + residual
        return F.relu(x, inplace=True) if relu else x

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if (c.kernel_size == (1, 1) and c.stride != (1, 1) and c.padding == (0, 0) and c.in_channels < 16
                and c.weight.requires_grad and torch.is_grad_enabled() and x.device.type == "cpu"):
            # oneDNN's weight gradient of a strided 1x1 conv on channels_last input with few input
            # channels writes past its workspace (a heap corruption: uxlfoundation/oneDNN#6035).
            # The same conv on the subsampled input at stride 1 is the same arithmetic and avoids it.
            return F.conv2d(x[:, :, ::c.stride[0], ::c.stride[1]], c.weight, c.bias, 1, 0, 1, c.groups)
        return c(x)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints from before the norm choice call the layer "bn"
        for key in [k for k in state_dict if k.startswith(prefix + "bn.")]:
            state_dict[prefix + "norm." + key[len(prefix) + 3:]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 ConvNormAct, a projection shortcut when the shape changes, ReLU after the add.

    ``padding`` applies to ``conv1`` only; with ``padding=0`` (an SSD extra layer
    going 3x3 -> 1x1) the projection shortcut is a 3x3 valid conv so both paths
    keep the same output size.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, norm: str = "bn", padding: int = 1):
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels, 3, stride, padding=padding, norm=norm, act=True)
        self.conv2 = ConvNormAct(out_channels, out_channels, 3, 1, padding=1, norm=norm, act=False)
        if stride != 1 or in_channels != out_channels or padding != 1:
            k = 1 if padding == 1 else 3
            self.shortcut = ConvNormAct(in_channels, out_channels, k, stride, padding=padding - 1 + (k == 3),
                                        norm=norm, act=False)
        else:
            self.shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.conv2(self.conv1(x), residual=identity, relu=True)


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
    """Kaiming-normal (fan_out, ReLU) convs with zero bias, norm weight 1 bias 0.

    ``zero_init_residual`` zeroes the last norm gamma of every BasicBlock, so each
    block starts as the identity (Goyal et al.).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif is_norm(m) and getattr(m, "weight", None) is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in module.modules():
            if isinstance(m, BasicBlock) and m.conv2.norm is not None:
                nn.init.zeros_(m.conv2.norm.weight)


def _replacement(bn: nn.Module, norm: str) -> nn.Module:
    channels = bn.num_features
    new = Bias2d(channels) if norm == "none" else make_norm(norm, channels)
    # timm's BatchNormAct2d is a BatchNorm with dropout and an activation after it: keep those
    extra = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if isinstance(m, nn.Module)]
    return nn.Sequential(new, *extra) if extra else new


def convert_norms(module: nn.Module, norm: str) -> int:
    """Replace, in place, every BatchNorm of a user or timm module by the ``norm`` kind (see the
    module docstring; "none" puts a :class:`Bias2d` there). Returns how many were replaced."""
    check_norm(norm)
    if norm == "bn":
        return 0
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not (
                norm == "syncbn" and isinstance(child, nn.SyncBatchNorm)):
            if child.num_features is None or isinstance(child, (nn.BatchNorm1d, nn.BatchNorm3d)):
                raise ValueError(f"convert_norms: {name} is a {type(child).__name__}; only 2-d BatchNorms convert")
            setattr(module, name, _replacement(child, norm))
            count += 1
        else:
            count += convert_norms(child, norm)
    return count


def use_fused_batch_norm(model: nn.Module, enabled: bool = True) -> int:
    """Switch the fused training path of every :class:`BNReLU2d` in ``model`` on or off (off: the
    stock ``nn.BatchNorm2d`` + add + ReLU ops). Returns how many layers were switched."""
    layers = [m for m in model.modules() if isinstance(m, BNReLU2d)]
    for m in layers:
        m.fused = bool(enabled)
    return len(layers)

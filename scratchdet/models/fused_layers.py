"""The modules of a fused (inference-only) network, as :func:`scratchdet.models.fuse.fuse` builds them.

- :class:`FusedConvAct`: ``relu?(conv(x) + bias + residual?)`` in one call, a conv with its
  BatchNorm already folded into ``weight`` and ``bias``; which kernel runs it is decided in
  :mod:`scratchdet.models.conv_backends` (its base :class:`~scratchdet.models.conv_backends.BackendConv`);
- :class:`FusedBasicBlock`: a ResNet BasicBlock as two or three of them, the second conv doing
  the residual add and the ReLU after it in the same call.

Both refuse ``train()``: their BatchNorm is gone.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .conv_backends import BackendConv

__all__ = ["FusedConvAct", "FusedBasicBlock"]


class _InferenceOnly(nn.Module):
    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(f"{type(self).__name__} is inference-only (BatchNorm is folded into its weights); "
                               "train the original, unfused model instead")
        return super().train(False)


class FusedConvAct(_InferenceOnly, BackendConv):
    """``relu?(conv(x) + bias + residual?)`` through :func:`scratchdet.ops.conv_bn_act` (or a faster
    backend, :mod:`scratchdet.models.conv_backends`).

    ``weight`` and ``bias`` are frozen parameters (so ``.to()``/``.half()`` and
    ``model.parameters()`` see them). ``scratchdet.models.fuse`` builds them from a conv and the
    BatchNorm after it.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding, dilation, groups: int,
                 relu: bool):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)
        self.groups, self.relu = int(groups), bool(relu)
        self.training = False

    def extra_repr(self) -> str:
        o, i, kh, kw = self.weight.shape
        return (f"{i * self.groups}, {o}, kernel_size=({kh}, {kw}), stride={tuple(self.stride)}, "
                f"padding={tuple(self.padding)}, dilation={tuple(self.dilation)}, groups={self.groups}, "
                f"relu={self.relu}")


class FusedBasicBlock(_InferenceOnly):
    """BasicBlock in (2 or 3) op calls: conv1+ReLU, [shortcut], conv2 + add + ReLU.

    ``conv2`` carries the ReLU that follows the residual add (``relu=True``)."""

    def __init__(self, conv1: FusedConvAct, conv2: FusedConvAct, shortcut: FusedConvAct | None = None):
        super().__init__()
        self.conv1, self.conv2, self.shortcut = conv1, conv2, shortcut
        self.training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.conv2(self.conv1(x), residual=identity)

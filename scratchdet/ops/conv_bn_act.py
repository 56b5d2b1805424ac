"""conv_bn_act: the public function (kernel, fake and fallback: ``_registrations.py``)."""
from __future__ import annotations

import torch

from . import _registrations
from .reference import conv_pair


def conv_bn_act(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                residual: torch.Tensor | None = None, stride=1, padding=0, dilation=1, groups: int = 1,
                relu: bool = False) -> torch.Tensor:
    """``relu?(conv2d(input, weight, bias, ...) + residual?)`` in one op call.

    The inference form of Conv-BN(-add)(-ReLU) once BatchNorm is folded into
    ``weight`` and ``bias`` (see :func:`scratchdet.models.fuse.fold_batch_norm`).
    ``residual`` has the output's shape. The output keeps the input's dtype and
    memory format (NCHW or channels_last). CPU: oneDNN conv with the bias inside,
    then one vectorised in-place pass (add, ReLU). CUDA: cuDNN conv, then one
    fused epilogue kernel (bias, add, ReLU); no host synchronisation. Under
    autocast everything runs in the autocast dtype, as ``conv2d`` does.
    """
    return _registrations.conv_bn_act(input, weight, bias, residual, conv_pair(stride), conv_pair(padding),
                                      conv_pair(dilation), int(groups), bool(relu))

"""conv_bn_act: the public op, its fake kernel and its fallback."""
from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format

from . import reference
from ._extension import has_op, warn_fallback

_HAS_KERNEL = has_op("conv_bn_act")

if _HAS_KERNEL:
    @torch.library.register_fake("scratchdet::conv_bn_act")
    def _conv_bn_act_fake(input, weight, bias, residual, stride, padding, dilation, groups, relu):
        shape = reference.check_conv_bn_act_args(input, weight, bias, residual, stride, padding, dilation, groups)
        return input.new_empty(shape).contiguous(memory_format=suggest_memory_format(input))


def _pair(v, name):
    return list(reference._pair(v, name))


def conv_bn_act(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                residual: torch.Tensor | None = None, stride=1, padding=0, dilation=1, groups: int = 1,
                relu: bool = False) -> torch.Tensor:
    """``relu?(conv2d(input, weight, bias, ...) + residual?)`` in one op call.

    The inference form of Conv-BN(-add)(-ReLU) once BatchNorm is folded into
    ``weight`` and ``bias`` (see :func:`scratchdet.ops.reference.fold_batch_norm`).
    ``residual`` has the output's shape. The output keeps the input's dtype and
    memory format (NCHW or channels_last). CPU: oneDNN conv with the bias inside,
    then one vectorised in-place pass (add, ReLU). CUDA: cuDNN conv, then one
    fused epilogue kernel (bias, add, ReLU); no host synchronisation. Under
    autocast everything runs in the autocast dtype, as ``conv2d`` does.
    """
    stride, padding, dilation = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if _HAS_KERNEL:
        return torch.ops.scratchdet.conv_bn_act(input, weight, bias, residual, stride, padding, dilation,
                                                int(groups), bool(relu))
    warn_fallback("conv_bn_act")
    return reference.conv_bn_act(input, weight, bias, residual, stride, padding, dilation, groups, relu)

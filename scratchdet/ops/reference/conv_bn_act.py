"""conv_bn_act: ``relu?(conv2d(input, weight, bias) + residual?)``, Conv-BN(-add)(-ReLU) once BatchNorm
is folded into the conv (the folding itself: ``scratchdet.models.fuse.fold_batch_norm``)."""
from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format

from .._checks import (ANY_SIZE, check_bias_and_residual, check_floating, check_same_device, check_same_dtype,
                       check_shape)

__all__ = ["conv_pair", "check_conv_bn_act_args", "conv_bn_act"]


def conv_pair(v) -> list:
    """stride, padding or dilation as a list: an int ``v`` is ``[v, v]``; the length is checked later."""
    return [v, v] if isinstance(v, int) else list(v)


def _check_conv_pair(v, min_value: int, name: str) -> None:
    """stride, padding or dilation: two values (h, w), each >= min_value."""
    if len(v) != 2:
        raise RuntimeError(f"conv_bn_act: expected {name} to have 2 values (h, w), got {list(v)}")
    if any(x < min_value for x in v):
        raise RuntimeError(f"conv_bn_act: expected every {name} value >= {min_value}, got {list(v)}")


def check_conv_bn_act_args(input, weight, bias, residual, stride, padding, dilation, groups) -> list:
    """Returns the output shape [N, C_out, H_out, W_out]."""
    op = "conv_bn_act"
    check_shape(input, 4, ANY_SIZE, op, "input", "[N, C_in, H, W]")
    check_shape(weight, 4, ANY_SIZE, op, "weight", "[C_out, C_in / groups, kH, kW]")
    check_floating(input, op, "input")
    check_same_dtype(input, weight, op, "input", "weight")
    check_same_device(input, weight, op, "input", "weight")
    _check_conv_pair(stride, 1, "stride")
    _check_conv_pair(padding, 0, "padding")
    _check_conv_pair(dilation, 1, "dilation")
    if groups < 1:
        raise RuntimeError(f"{op}: expected groups >= 1, got {groups}")
    c_in, c_out = input.shape[1], weight.shape[0]
    if c_in % groups or c_out % groups or weight.shape[1] * groups != c_in:
        raise RuntimeError(f"{op}: expected weight of shape [C_out, C_in / groups, kH, kW] with C_in = {c_in} "
                           f"and groups = {groups}, got weight shape {list(weight.shape)}")
    out_shape = [input.shape[0], c_out]
    for d in range(2):
        extent = dilation[d] * (weight.shape[2 + d] - 1) + 1
        padded = input.shape[2 + d] + 2 * padding[d]
        if padded < extent:
            raise RuntimeError(f"{op}: the kernel ({list(weight.shape)}, dilation {list(dilation)}) is larger than "
                               f"the padded input ({list(input.shape)}, padding {list(padding)})")
        out_shape.append((padded - extent) // stride[d] + 1)
    check_bias_and_residual(input, bias, residual, out_shape, op)
    return out_shape


def conv_bn_act(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                residual: torch.Tensor | None = None, stride=1, padding=0, dilation=1, groups: int = 1,
                relu: bool = False) -> torch.Tensor:
    """``relu?(conv2d(input, weight, bias) + residual?)``: Conv-BN(-add)(-ReLU) after folding.

    The output has the input's memory format (NCHW or channels_last) and dtype. Half
    precision rounds as the unfused ops do: after the biased conv, then after the add.
    """
    stride, padding, dilation = conv_pair(stride), conv_pair(padding), conv_pair(dilation)
    check_conv_bn_act_args(input, weight, bias, residual, stride, padding, dilation, groups)
    out = torch.nn.functional.conv2d(input, weight, bias, stride, padding, dilation, groups)
    if residual is not None:
        out = out + residual
    if relu:
        out = torch.relu(out)
    return out.contiguous(memory_format=suggest_memory_format(input))

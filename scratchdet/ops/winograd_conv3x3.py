"""winograd_conv3x3 / winograd_f43_pack / winograd_f63_pack: the public functions (kernels, fakes and
fallbacks: ``_registrations.py``).

The CPU algorithm the fused network uses for its 3x3 stride-1 convs (``FusedConvAct`` with
``winograd=True``): Winograd F(4x4, 3x3) needs 36 multiplies per 4 x 4 outputs where a direct
conv needs 144, so the GEMM stage does a quarter of the arithmetic; F(6x6, 3x3) needs 64 per
6 x 6 outputs, a fifth fewer again, for about 1.5x the rounding error. float32, CPU only.
"""
from __future__ import annotations

import torch

from . import _registrations


def is_winograd_conv(weight_shape, stride, padding, dilation, groups: int) -> bool:
    """True for the convs ``winograd_conv3x3`` computes: 3x3, stride 1, padding 1, dilation 1, groups 1."""
    return (tuple(weight_shape[2:]) == (3, 3) and list(stride) == [1, 1] and list(padding) == [1, 1]
            and list(dilation) == [1, 1] and int(groups) == 1)


def winograd_f43_pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight [C_out, C_in, 3, 3]`` (float32/64, CPU) -> its Winograd F(4x4, 3x3) transform
    ``[36, C_in, C_out]`` float32, computed in float64. Do it once per frozen weight."""
    return _registrations.winograd_f43_pack(weight)


def winograd_f63_pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight [C_out, C_in, 3, 3]`` (float32/64, CPU) -> its Winograd F(6x6, 3x3) transform
    ``[64, C_in, C_out]`` float32, computed in float64. Do it once per frozen weight."""
    return _registrations.winograd_f63_pack(weight)


def winograd_conv3x3(input: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None = None,
                     residual: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """``relu?(conv2d(input, weight, bias, stride=1, padding=1) + residual?)`` with
    ``packed_weight = winograd_f43_pack(weight)`` (tiles of 4x4 outputs) or
    ``winograd_f63_pack(weight)`` (6x6), float32 on CPU.

    The bias, residual add and ReLU run in the output transform, so the output is written once.
    It differs from ``conv2d`` by rounding only: about 1e-5 relative per layer
    (tests/test_winograd_conv3x3.py). The
    output has the input's memory format; channels_last input is the fast case (NCHW is converted).
    Non-finite input stays non-finite (a NaN propagates through ReLU), but an ``inf`` may come
    out as NaN where a direct conv gives ``inf``: the transforms subtract neighbouring pixels.
    Under autocast it runs on the tensors it is given (it has no autocast kernel).
    """
    return _registrations.winograd_conv3x3(input, packed_weight, bias, residual, bool(relu))

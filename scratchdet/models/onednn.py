"""oneDNN-prepacked convolutions for the fused CPU inference path.

``scratchdet.ops.conv_bn_act`` hands oneDNN a plain weight on every call, and
oneDNN reorders it into its blocked layout each time. For a frozen, fused
network the reorder can be done once: ``torch.ops.mkldnn._reorder_convolution_weight``
prepacks the weight, and ``torch.ops.mkldnn._convolution_pointwise`` runs conv +
bias (+ residual add) (+ ReLU) with the epilogue fused into oneDNN's post-ops, the
same kernels TorchScript's ``optimize_for_inference`` and Inductor's CPU freezing
use (speed: benchmarks/RESULTS.md, "fused inference").
"""
from __future__ import annotations

import torch

__all__ = ["available", "pack_weight", "conv_pointwise"]


def available() -> bool:
    """True when this torch build has oneDNN (mkldnn) and its pointwise-fused conv ops."""
    if not torch.backends.mkldnn.is_available():
        return False
    mkldnn = getattr(torch.ops, "mkldnn", None)
    try:
        return (mkldnn is not None and hasattr(mkldnn, "_convolution_pointwise")
                and hasattr(mkldnn, "_reorder_convolution_weight"))
    except RuntimeError:  # torch.ops namespaces raise for missing ops on some builds
        return False


def pack_weight(weight: torch.Tensor, padding, stride, dilation, groups: int, input_shape) -> torch.Tensor:
    """The weight in oneDNN's blocked layout for inputs shaped like ``input_shape`` (a hint:
    other shapes still run, with the same result)."""
    return torch.ops.mkldnn._reorder_convolution_weight(weight.detach(), list(padding), list(stride),
                                                        list(dilation), int(groups), list(input_shape))


def conv_pointwise(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, padding, stride, dilation,
                   groups: int, relu: bool, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``relu?(conv(x, packed) + bias + residual?)`` in one oneDNN call (CPU, float32)."""
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(x, packed, bias, padding, stride, dilation, groups,
                                                       "relu" if relu else "none", [], "")
    return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, packed, bias, padding, stride, dilation,
                                                          groups, "add", 1.0, "relu" if relu else None, [], "")

"""Which kernel a fused conv (:class:`scratchdet.models.fuse.FusedConvAct`) runs on.

By default every fused conv calls :func:`scratchdet.ops.conv_bn_act`. On CPU in float32 two
faster paths can be switched on for a fused model, each caching a weight packed once:

- :func:`use_winograd`: the 3x3 stride-1 convs through Winograd F(4x4, 3x3)
  (:func:`scratchdet.ops.winograd_conv3x3`); it takes precedence where it applies;
- :func:`use_onednn_prepack`: the other convs through weights prepacked for oneDNN
  (:mod:`scratchdet.models.onednn`), bias / residual / ReLU as oneDNN post-ops.

Anything unusual (another dtype or device, autograd, tracing, a wrong channel count) goes
through the op, which checks its inputs and names what is wrong.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .. import ops
from . import onednn

__all__ = ["select", "use_onednn_prepack", "use_winograd", "winograd_by_default"]


def winograd_by_default() -> bool:
    """Whether FastPredictor routes 3x3 stride-1 convs through Winograd unless told otherwise.

    Our F(4x4, 3x3) kernel beats oneDNN's direct conv where oneDNN runs AVX2 code, but oneDNN's
    AVX-512 (brgconv) kernels beat it on every layer (benchmarks/RESULTS.md, "fused inference"
    and "CPU runtimes"), so the default follows torch's CPU capability.
    """
    return not torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _cpu_fp32_inference(conv, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
    w = conv.weight
    return (x.device.type == "cpu" and w.device.type == "cpu" and x.dtype == w.dtype == torch.float32
            and x.dim() == 4 and x.shape[1] == w.shape[1] * conv.groups
            and (conv.bias is None or conv.bias.dtype == torch.float32)
            and (residual is None or (residual.dtype == torch.float32 and residual.device.type == "cpu"))
            and not (torch.is_grad_enabled() and (x.requires_grad or (residual is not None
                                                                      and residual.requires_grad)))
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling())


def _weight_key(conv):
    return (conv.weight.data_ptr(), conv.weight._version)   # an in-place change or .to() repacks


def _run_winograd(conv, x, residual):
    if conv._wino_packed is None or conv._wino_packed[0] != _weight_key(conv):
        conv._wino_packed = (_weight_key(conv), ops.winograd_f43_pack(conv.weight))
    return ops.winograd_conv3x3(x, conv._wino_packed[1], conv.bias, residual, conv.relu)


def _run_onednn(conv, x, residual):
    if conv._packed is None or conv._packed[0] != _weight_key(conv):
        conv._packed = (_weight_key(conv), onednn.pack_weight(conv.weight, conv.padding, conv.stride,
                                                              conv.dilation, conv.groups, x.shape))
    return onednn.conv_pointwise(x, conv._packed[1], conv.bias, conv.padding, conv.stride, conv.dilation,
                                 conv.groups, conv.relu, residual)


def select(conv, x: torch.Tensor, residual: torch.Tensor | None) -> Callable | None:
    """The backend ``conv(x, residual)`` runs on, or None for :func:`scratchdet.ops.conv_bn_act`."""
    if not (conv.winograd or conv.prepack) or not _cpu_fp32_inference(conv, x, residual):
        return None
    return _run_winograd if conv.winograd else _run_onednn


def _fused_convs(fused_model: nn.Module):
    from .fuse import FusedConvAct

    return [m for m in fused_model.modules() if isinstance(m, FusedConvAct)]


def use_onednn_prepack(fused_model: nn.Module, enabled: bool = True) -> int:
    """Route the fused convs of ``fused_model`` through prepacked oneDNN weights on CPU float32;
    other devices and dtypes keep using the op.

    Returns how many convs were switched. Raises ``RuntimeError`` if ``enabled`` and this
    torch build has no oneDNN.
    """
    if enabled and not onednn.available():
        raise RuntimeError("use_onednn_prepack: this torch build has no oneDNN (torch.backends.mkldnn)")
    convs = _fused_convs(fused_model)
    for conv in convs:
        conv.prepack, conv._packed = bool(enabled), None
    return len(convs)


def use_winograd(fused_model: nn.Module, enabled: bool = True) -> int:
    """Route the 3x3 stride-1 fused convs of ``fused_model`` (``FusedConvAct.winograd_eligible``)
    through :func:`scratchdet.ops.winograd_conv3x3` on CPU float32; other convs, devices and dtypes
    are unaffected. It takes precedence over :func:`use_onednn_prepack` for the convs it covers.

    The result differs from the direct conv by rounding only (about 1e-5 relative per layer).
    Returns how many convs were switched.
    """
    count = 0
    for conv in _fused_convs(fused_model):
        conv.winograd = bool(enabled) and conv.winograd_eligible
        conv._wino_packed = None
        count += conv.winograd
    return count

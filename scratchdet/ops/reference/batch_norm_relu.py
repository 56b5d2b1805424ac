"""batch_norm_relu: training-mode BatchNorm2d with the residual add and the ReLU after it, and its
gradient (the fused BatchNorm of scratchdet.models.BNReLU2d)."""
from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format

from .._checks import ANY_SIZE, check_floating, check_same_device, check_same_dtype, check_shape, fmt_float

__all__ = ["check_batch_norm_relu_args", "check_batch_norm_relu_backward_args", "batch_norm_relu",
           "batch_norm_relu_backward"]


def _check_channel_param(input, p, op: str, name: str) -> None:
    c = input.shape[1]
    if p.dim() != 1 or p.shape[0] != c:
        raise RuntimeError(f"{op}: expected {name} of shape [{c}], got shape {list(p.shape)}")
    reduced = input.dtype in (torch.float16, torch.bfloat16)
    if p.dtype != input.dtype and not (reduced and p.dtype == torch.float32):
        raise RuntimeError(f"{op}: expected {name} of dtype {input.dtype}" + (" or torch.float32" if reduced else "")
                           + f" (the input's), got {p.dtype}")
    check_same_device(input, p, op, "input", name)


def check_batch_norm_relu_args(input, weight, bias, residual, eps) -> None:
    op = "batch_norm_relu"
    check_shape(input, 4, ANY_SIZE, op, "input", "[N, C, H, W]")
    check_floating(input, op, "input")
    if weight is not None:
        _check_channel_param(input, weight, op, "weight")
    if bias is not None:
        _check_channel_param(input, bias, op, "bias")
    if residual is not None:
        if list(residual.shape) != list(input.shape):
            raise RuntimeError(f"{op}: expected residual of the input's shape {list(input.shape)}, "
                               f"got shape {list(residual.shape)}")
        check_same_dtype(input, residual, op, "input", "residual")
        check_same_device(input, residual, op, "input", "residual")
    if not float(eps) > 0:
        raise RuntimeError(f"{op}: expected eps > 0, got {fmt_float(eps)}")
    if not (input.shape[1] > 0 and input.numel() // input.shape[1] > 1):
        raise RuntimeError(f"{op}: expected more than 1 value per channel when training, got input of shape "
                           f"{list(input.shape)}")


def check_batch_norm_relu_backward_args(grad_out, out, input, weight, save_mean, save_invstd) -> None:
    op = "batch_norm_relu_backward"
    check_shape(input, 4, ANY_SIZE, op, "input", "[N, C, H, W]")
    check_floating(input, op, "input")
    for t, name in ((grad_out, "grad_out"), (out, "out")):
        if list(t.shape) != list(input.shape):
            raise RuntimeError(f"{op}: expected {name} of the input's shape {list(input.shape)}, "
                               f"got shape {list(t.shape)}")
        check_same_dtype(input, t, op, "input", name)
        check_same_device(input, t, op, "input", name)
    if weight is not None:
        _check_channel_param(input, weight, op, "weight")
    for t, name in ((save_mean, "save_mean"), (save_invstd, "save_invstd")):
        if t.dim() != 1 or t.shape[0] != input.shape[1]:
            raise RuntimeError(f"{op}: expected {name} of shape [{input.shape[1]}], got shape {list(t.shape)}")
        check_same_device(input, t, op, "input", name)


def _channel(v: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, 1, 1)


def batch_norm_relu(input: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                    residual: torch.Tensor | None, eps: float, relu: bool):
    """Training-mode BatchNorm2d, then ``+ residual`` and ReLU: ``(out, save_mean, save_invstd)``.

    The batch statistics (mean, and the biased variance the normalisation uses) are computed in
    float64, ``out = relu?(x * scale + shift + residual?)`` with ``scale = weight * invstd`` and
    ``shift = bias - mean * scale``. ``save_mean`` / ``save_invstd`` ([C], float32 for reduced
    precision input) are what the backward needs and what a module updates its running
    statistics from (``var = invstd**-2 - eps``). The output has the input's memory format.
    """
    check_batch_norm_relu_args(input, weight, bias, residual, eps)
    stat_dtype = torch.promote_types(input.dtype, torch.float32)
    x = input.double()
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=False)
    invstd = (var + eps).rsqrt()
    w = weight.double() if weight is not None else torch.ones_like(mean)
    b = bias.double() if bias is not None else torch.zeros_like(mean)
    y = (x - _channel(mean)) * _channel(invstd * w) + _channel(b)
    if residual is not None:
        y = y + residual.double()
    if relu:
        y = torch.relu(y)
    out = y.to(input.dtype).contiguous(memory_format=suggest_memory_format(input))
    return out, mean.to(stat_dtype), invstd.to(stat_dtype)


def batch_norm_relu_backward(grad_out: torch.Tensor, out: torch.Tensor, input: torch.Tensor,
                             weight: torch.Tensor | None, save_mean: torch.Tensor, save_invstd: torch.Tensor,
                             relu: bool, residual: bool):
    """The gradient of :func:`batch_norm_relu`: ``(grad_input, grad_weight, grad_bias, grad_residual)``,
    with the ReLU's gradient taken from its output (zero where ``out <= 0``, as torch's), and
    ``grad_residual`` an empty tensor unless ``residual``; grad_weight / grad_bias in the weight's
    dtype (save_mean's without one). Computed in float64."""
    check_batch_norm_relu_backward_args(grad_out, out, input, weight, save_mean, save_invstd)
    g = grad_out.double()
    if relu:
        g = torch.where(out > 0, g, torch.zeros_like(g))
    x, mean, invstd = input.double(), save_mean.double(), save_invstd.double()
    w = weight.double() if weight is not None else torch.ones_like(mean)
    n = input.numel() // input.shape[1]
    xhat = (x - _channel(mean)) * _channel(invstd)
    grad_bias = g.sum(dim=(0, 2, 3))
    grad_weight = (g * xhat).sum(dim=(0, 2, 3))
    dx = _channel(w * invstd) * (g - _channel(grad_bias / n) - xhat * _channel(grad_weight / n))
    fmt = suggest_memory_format(input)
    param_dtype = weight.dtype if weight is not None else save_mean.dtype
    grad_residual = g.to(input.dtype).contiguous(memory_format=fmt) if residual else input.new_empty((0,))
    return (dx.to(input.dtype).contiguous(memory_format=fmt), grad_weight.to(param_dtype), grad_bias.to(param_dtype),
            grad_residual)

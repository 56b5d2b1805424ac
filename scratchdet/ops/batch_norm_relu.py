"""batch_norm_relu: the public functions (kernels, fakes, autograd and fallback: ``_registrations.py``)."""
from __future__ import annotations

import torch

from . import _registrations


def batch_norm_relu(input: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                    residual: torch.Tensor | None = None, eps: float = 1e-5, relu: bool = True):
    """Training-mode BatchNorm2d with the residual add and the ReLU after it fused:
    ``(relu?(batch_norm(input) + residual?), save_mean, save_invstd)``, differentiable.

    Batch statistics; the running statistics are the caller's to update (``scratchdet.models.BNReLU2d``
    does it exactly as ``nn.BatchNorm2d``). CPU: float32 / float64, two passes over the activations
    forward and two backward, vectorised over the channels in channels_last (an NCHW input is
    converted), deterministic whatever the thread count. CUDA: ATen's batch norm plus one fused
    elementwise pass; no host synchronisation.
    """
    return _registrations.batch_norm_relu(input, weight, bias, residual, float(eps), bool(relu))


def batch_norm_relu_backward(grad_out: torch.Tensor, out: torch.Tensor, input: torch.Tensor,
                             weight: torch.Tensor | None, save_mean: torch.Tensor, save_invstd: torch.Tensor,
                             relu: bool = True, residual: bool = False):
    """The gradient of :func:`batch_norm_relu` (what its autograd formula calls):
    ``(grad_input, grad_weight, grad_bias, grad_residual)``, grad_residual empty unless ``residual``."""
    return _registrations.batch_norm_relu_backward(grad_out, out, input, weight, save_mean, save_invstd,
                                                   bool(relu), bool(residual))

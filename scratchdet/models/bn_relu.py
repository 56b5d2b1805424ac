"""BNReLU2d: nn.BatchNorm2d with the residual add and the ReLU after it fused into one op in training.

A drop-in for ``nn.BatchNorm2d`` (+ ``add``) (+ ``nn.ReLU``): the same parameters and buffers
(so a state dict loads either way), the same running-statistics update (momentum, or a
cumulative average with ``momentum=None``; unbiased variance), the same eval mode. In training,
on float32 CPU tensors in channels_last and on CUDA tensors, it runs
:func:`scratchdet.ops.batch_norm_relu`: the statistics, normalisation, residual add and ReLU in
two passes over the activations forward and two backward, where the stock layers make about
twice as many. Everything else (eval mode, other dtypes or layouts, the extension missing) runs
the stock ``F.batch_norm`` + add + ReLU, so the result never depends on which path ran beyond
rounding. SyncBN: ``norm="syncbn"`` builds ``nn.SyncBatchNorm`` instead, which this does not replace.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..ops._extension import has_op

__all__ = ["BNReLU2d"]

_HAS_KERNEL = has_op("batch_norm_relu")


class BNReLU2d(nn.BatchNorm2d):
    """``relu?(batch_norm(x) + residual?)``; ``forward(x, residual=None, relu=None)``, ``relu`` default
    from the constructor. ``fused`` (class default True) switches the fused op off, e.g. to compare."""

    fused = True

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, relu: bool = False, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.relu = bool(relu)

    def _use_kernel(self, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
        batch_stats = self.training or not self.track_running_stats
        if not (self.fused and _HAS_KERNEL and batch_stats) or torch.jit.is_scripting():
            return False
        if x.dim() != 4 or x.numel() == 0 or x.numel() // x.shape[1] <= 1:
            return False                      # the stock path raises its own error for these
        if x.device.type == "cuda":
            return True
        return (x.device.type == "cpu" and x.dtype == torch.float32
                and x.is_contiguous(memory_format=torch.channels_last)
                and (residual is None or residual.dtype == x.dtype))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, relu: bool | None = None):
        relu = self.relu if relu is None else bool(relu)
        if not self._use_kernel(x, residual):
            y = super().forward(x)
            if residual is not None:
                y = y + residual
            return F.relu(y, inplace=True) if relu else y
        y, save_mean, save_invstd = ops.batch_norm_relu(x, self.weight, self.bias, residual, self.eps, relu)
        if self.training and self.track_running_stats:
            self._update_running_stats(save_mean, save_invstd, x.numel() // x.shape[1])
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, invstd: torch.Tensor, n: int) -> None:
        """As nn.BatchNorm2d: the counter, then running = (1 - f) running + f batch, f = momentum or
        1 / count, with the unbiased batch variance."""
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        var = invstd.double().pow(-2) - self.eps
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_((var * (n / (n - 1))).to(self.running_var.dtype), alpha=factor)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", relu={self.relu}"

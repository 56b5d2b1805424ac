"""box_iou: the public op, its fake kernel and its fallback."""
from __future__ import annotations

import torch

from . import reference
from ._extension import has_op, warn_fallback

_HAS_KERNEL = has_op("box_iou")

if _HAS_KERNEL:
    @torch.library.register_fake("scratchdet::box_iou")
    def _box_iou_fake(boxes1, boxes2):
        torch._check(boxes1.dim() == 2 and boxes1.shape[-1] == 4, lambda: "box_iou: boxes1 must be [N, 4]")
        torch._check(boxes2.dim() == 2 and boxes2.shape[-1] == 4, lambda: "box_iou: boxes2 must be [M, 4]")
        return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (x1, y1, x2, y2) boxes: ``[N, 4] x [M, 4] -> [N, M]``.

    A drop-in for ``torchvision.ops.box_iou`` on valid boxes; where the union of
    two boxes is not positive the IoU is 0 instead of NaN. Under autocast, half
    inputs are computed in float32.
    """
    if _HAS_KERNEL:
        return torch.ops.scratchdet.box_iou(boxes1, boxes2)
    warn_fallback("box_iou")
    return reference.box_iou(boxes1, boxes2)

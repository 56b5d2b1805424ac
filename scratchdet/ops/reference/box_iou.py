"""box_iou: pairwise IoU of (x1, y1, x2, y2) boxes."""
from __future__ import annotations

import torch

from .._checks import check_floating, check_same_device, check_same_dtype, check_shape

__all__ = ["check_box_iou_args", "box_iou"]


def check_box_iou_args(boxes1, boxes2) -> None:
    op = "box_iou"
    check_shape(boxes1, 2, 4, op, "boxes1", "[N, 4]")
    check_shape(boxes2, 2, 4, op, "boxes2", "[M, 4]")
    check_floating(boxes1, op, "boxes1")
    check_same_dtype(boxes1, boxes2, op, "boxes1", "boxes2")
    check_same_device(boxes1, boxes2, op, "boxes1", "boxes2")


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (x1, y1, x2, y2) boxes, ``[N, 4] x [M, 4] -> [N, M]``.

    Same formula as ``torchvision.ops.box_iou`` (no +1), computed in at least
    float32; where the union is not positive the IoU is 0 (torchvision: NaN).
    """
    check_box_iou_args(boxes1, boxes2)
    acc = torch.promote_types(boxes1.dtype, torch.float32)
    a, b = boxes1.to(acc), boxes2.to(acc)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = (torch.minimum(a[:, None, 2:], b[None, :, 2:]) - torch.maximum(a[:, None, :2], b[None, :, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    iou = torch.where(union > 0, inter / union, torch.zeros_like(inter))
    return iou.to(boxes1.dtype)

"""nms: greedy NMS with torchvision's CPU semantics, on the host; the NMS of batched_nms and detect."""
from __future__ import annotations

import torch

from .._checks import ANY_SIZE, check_shape

__all__ = ["nms"]


_NMS_BLOCK = 512  # candidates per step of nms(): bounds the IoU matrix, not the result


def _nms_overlap(a: torch.Tensor, area_a: torch.Tensor, b: torch.Tensor, area_b: torch.Tensor) -> torch.Tensor:
    """IoU of each kept box ``a [k, 4]`` (the higher-scoring one) with each later box ``b [m, 4]``,
    ``[k, m]``, op for op as torchvision's CPU nms_kernel in the boxes' dtype: std::max / std::min
    with their argument order (so NaN coordinates behave alike), then ``inter / (area_a + area_b - inter)``."""
    a = a[:, None, :]
    zero = torch.zeros((), dtype=b.dtype)
    xx1 = torch.where(a[..., 0] < b[:, 0], b[:, 0], a[..., 0])   # std::max(ix1, x1[j])
    yy1 = torch.where(a[..., 1] < b[:, 1], b[:, 1], a[..., 1])
    xx2 = torch.where(b[:, 2] < a[..., 2], b[:, 2], a[..., 2])   # std::min(ix2, x2[j])
    yy2 = torch.where(b[:, 3] < a[..., 3], b[:, 3], a[..., 3])
    w = torch.where(zero < xx2 - xx1, xx2 - xx1, zero)           # std::max(0, xx2 - xx1)
    h = torch.where(zero < yy2 - yy1, yy2 - yy1, zero)
    inter = w * h
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS with torchvision's CPU semantics, on every device: the kept indices (int64, on the
    boxes' device) by decreasing score.

    Boxes are visited in ``torch.sort(scores, descending=True, stable=True)`` order (NaN first,
    equal scores by lower index); a box is removed when its IoU with a kept box, computed as
    torchvision's CPU kernel does in the boxes' dtype (fp16 rounds every step), widened to float64
    is ``> iou_threshold``. It runs on the host whatever the input's device, so the answer never
    depends on a device's sort (torchvision's CUDA nms sorts with an unstable sort, a bitonic one
    up to 32 elements) or arithmetic (its CUDA IoU is in float for fp16 and is compared with
    ``(float)iou_threshold``). Equals ``torchvision.ops.nms`` on the CPU wherever no two scores tie.
    """
    check_shape(boxes, 2, 4, "nms", "boxes", "[N, 4]")
    check_shape(scores, 1, ANY_SIZE, "nms", "scores", "[N]")
    device = boxes.device
    order = torch.sort(scores.cpu(), descending=True, stable=True).indices
    b = boxes.cpu()[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    kept: list[int] = []                       # positions in `order`
    for start in range(0, len(order), _NMS_BLOCK):
        blk, blk_area = b[start:start + _NMS_BLOCK], area[start:start + _NMS_BLOCK]
        alive = torch.ones(len(blk), dtype=torch.bool)
        if kept:                               # against the boxes kept in earlier blocks
            k = torch.tensor(kept)
            alive &= ~(_nms_overlap(b[k], area[k], blk, blk_area).double() > iou_threshold).any(0)
        # inside the block, in order: row i holds the later boxes box i would remove
        removes = torch.triu(_nms_overlap(blk, blk_area, blk, blk_area).double() > iou_threshold, 1).numpy()
        alive = alive.numpy()
        for i in range(len(blk)):
            if alive[i]:
                kept.append(start + i)
                alive &= ~removes[i]
    return order[torch.tensor(kept, dtype=torch.int64)].to(device)

"""batched_nms: the public function (kernel, fake and fallback: ``_registrations.py``)."""
from __future__ import annotations

import torch

from . import _registrations


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """A drop-in for ``torchvision.ops.batched_nms``: the same indices, in the same order.

    ``boxes [N, 4]`` (x1, y1, x2, y2) and ``scores [N]`` in float16/32/64,
    ``idxs [N]`` integer classes; boxes of different classes never suppress
    each other. Returns the kept indices (int64) by decreasing score, equal
    scores by increasing index. On CUDA the result's length depends on the
    data, so this op synchronises with the host once (unlike ``detect``).
    """
    return _registrations.batched_nms(boxes, scores, idxs, float(iou_threshold))

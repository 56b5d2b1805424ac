"""batched_nms: the public function (kernel, fake and fallback: ``_registrations.py``)."""
from __future__ import annotations

import torch

from . import _registrations


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """``torchvision.ops.batched_nms`` with torchvision's CPU semantics on every device.

    ``boxes [N, 4]`` (x1, y1, x2, y2) and ``scores [N]`` in float16/32/64,
    ``idxs [N]`` integer classes; boxes of different classes never suppress
    each other. Returns the kept indices (int64) by decreasing score, equal
    scores by increasing index (above torchvision's size switch, in the order
    an unstable ``torch.sort`` on that device leaves them, as torchvision).
    On CPU this is torchvision's answer. On CUDA it is still the CPU
    arithmetic (IoU in the boxes' dtype, ``float64(iou) > iou_threshold``, a
    stable score order), where torchvision's CUDA kernel computes fp16 IoUs in
    float, compares with ``(float)iou_threshold`` and sorts up to 32 boxes
    unstably; the two agree wherever no score ties and no IoU lies within
    rounding of the threshold. See :func:`scratchdet.ops.reference.batched_nms`.
    On CUDA the result's length depends on the data, so this op synchronises
    with the host once (unlike ``detect``).
    """
    return _registrations.batched_nms(boxes, scores, idxs, float(iou_threshold))

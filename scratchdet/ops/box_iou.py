"""box_iou: the public function (kernel, fake and fallback: ``_registrations.py``)."""
from __future__ import annotations

import torch

from . import _registrations


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (x1, y1, x2, y2) boxes: ``[N, 4] x [M, 4] -> [N, M]``.

    A drop-in for ``torchvision.ops.box_iou`` on valid boxes; where the union of
    two boxes is not positive the IoU is 0 instead of NaN. Under autocast, half
    inputs are computed in float32.
    """
    return _registrations.box_iou(boxes1, boxes2)

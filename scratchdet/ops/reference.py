"""Pure-PyTorch reference implementations of every scratchdet op.

This file is the executable spec: each compiled kernel must agree with the
function of the same name here (see tests/). They are written the obvious way,
for clarity rather than speed.
"""
from __future__ import annotations

import torch

from ._checks import check_floating, check_same_device, check_same_dtype, check_shape

__all__ = ["box_iou", "point_form", "encode", "decode"]


# --------------------------------------------------------------------------- box_iou
def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (x1, y1, x2, y2) boxes, ``[N, 4] x [M, 4] -> [N, M]``.

    Same formula as ``torchvision.ops.box_iou`` (no +1), computed in at least
    float32; where the union is not positive the IoU is 0 (torchvision: NaN).
    """
    check_shape(boxes1, 2, 4, "box_iou", "boxes1", "[N, 4]")
    check_shape(boxes2, 2, 4, "box_iou", "boxes2", "[M, 4]")
    check_floating(boxes1, "box_iou", "boxes1")
    check_same_dtype(boxes1, boxes2, "box_iou", "boxes1", "boxes2")
    check_same_device(boxes1, boxes2, "box_iou", "boxes1", "boxes2")
    acc = torch.promote_types(boxes1.dtype, torch.float32)
    a, b = boxes1.to(acc), boxes2.to(acc)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = (torch.minimum(a[:, None, 2:], b[None, :, 2:]) - torch.maximum(a[:, None, :2], b[None, :, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    iou = torch.where(union > 0, inter / union, torch.zeros_like(inter))
    return iou.to(boxes1.dtype)


# --------------------------------------------------------------------------- box math
def point_form(priors: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2), in the operation order of box_math.h."""
    return torch.cat((priors[..., :2] - priors[..., 2:] / 2, priors[..., :2] + priors[..., 2:] / 2), dim=-1)


def encode(matched: torch.Tensor, priors: torch.Tensor, variances=(0.1, 0.2)) -> torch.Tensor:
    """Encode (x1, y1, x2, y2) boxes against (cx, cy, w, h) priors (SSD)."""
    v0, v1 = variances
    g_cxcy = ((matched[..., :2] + matched[..., 2:]) / 2 - priors[..., :2]) / (v0 * priors[..., 2:])
    g_wh = torch.log((matched[..., 2:] - matched[..., :2]) / priors[..., 2:]) / v1
    return torch.cat((g_cxcy, g_wh), dim=-1)


def decode(loc: torch.Tensor, priors: torch.Tensor, variances=(0.1, 0.2)) -> torch.Tensor:
    """Decode SSD offsets against (cx, cy, w, h) priors to (x1, y1, x2, y2)."""
    v0, v1 = variances
    cxcy = priors[..., :2] + loc[..., :2] * v0 * priors[..., 2:]
    wh = priors[..., 2:] * torch.exp(loc[..., 2:] * v1)
    x1y1 = cxcy - wh / 2
    return torch.cat((x1y1, x1y1 + wh), dim=-1)


# --------------------------------------------------------------------------- match_priors
# (issue: prior matching)


# --------------------------------------------------------------------------- batched_nms / detect
# (issue: batched NMS and detection output)


# --------------------------------------------------------------------------- conv_bn_act
# (issue: fused BN-conv inference)

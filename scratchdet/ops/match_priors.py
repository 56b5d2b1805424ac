"""match_priors: the public op (compiled kernel or reference fallback)."""
from __future__ import annotations

import torch

from . import reference
from ._extension import has_op, warn_fallback

_HAS_KERNEL = has_op("match_priors")


def match_priors(priors: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                 iou_threshold: float = 0.5, variances=(0.1, 0.2)):
    """SSD prior matching; see :func:`scratchdet.ops.reference.match_priors` for the exact rules."""
    if _HAS_KERNEL:
        return torch.ops.scratchdet.match_priors(priors, gt_boxes, gt_labels, float(iou_threshold),
                                                 [float(v) for v in variances])
    warn_fallback("match_priors")
    return reference.match_priors(priors, gt_boxes, gt_labels, iou_threshold, variances)

"""batched_nms: the public op, its fake kernel and its fallback."""
from __future__ import annotations

import torch

from . import reference
from ._extension import has_op, warn_fallback

_HAS_KERNEL = has_op("batched_nms")

if _HAS_KERNEL:
    @torch.library.register_fake("scratchdet::batched_nms")
    def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
        torch._check(boxes.dim() == 2 and boxes.shape[-1] == 4, lambda: "batched_nms: boxes must be [N, 4]")
        torch._check(scores.dim() == 1 and idxs.dim() == 1, lambda: "batched_nms: scores and idxs must be [N]")
        # How many boxes survive depends on the data.
        num_kept = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((num_kept,), dtype=torch.int64)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """A drop-in for ``torchvision.ops.batched_nms``: the same indices, in the same order.

    ``boxes [N, 4]`` (x1, y1, x2, y2) and ``scores [N]`` in float16/32/64,
    ``idxs [N]`` integer classes; boxes of different classes never suppress
    each other. Returns the kept indices (int64) by decreasing score, equal
    scores by increasing index. On CUDA the result's length depends on the
    data, so this op synchronises with the host once (unlike ``detect``).
    """
    if _HAS_KERNEL:
        return torch.ops.scratchdet.batched_nms(boxes, scores, idxs, float(iou_threshold))
    warn_fallback("batched_nms")
    return reference.batched_nms(boxes, scores, idxs, iou_threshold)

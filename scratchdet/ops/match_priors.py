"""match_priors: the public op (compiled kernel or reference fallback)."""
from __future__ import annotations

import torch

from . import reference
from ._extension import has_op, warn_fallback

_HAS_KERNEL = has_op("match_priors")

if _HAS_KERNEL:
    @torch.library.register_fake("scratchdet::match_priors")
    def _match_priors_fake(priors, gt_boxes, gt_labels, iou_threshold=0.5, variances=(0.1, 0.2)):
        torch._check(priors.dim() == 2 and priors.shape[-1] == 4, lambda: "match_priors: priors must be [P, 4]")
        torch._check(gt_boxes.dim() == 3 and gt_boxes.shape[-1] == 4,
                     lambda: "match_priors: gt_boxes must be [B, G, 4]")
        torch._check(gt_labels.dim() == 2, lambda: "match_priors: gt_labels must be [B, G]")
        torch._check(gt_labels.dtype == torch.int64, lambda: "match_priors: gt_labels must be int64")
        torch._check(gt_labels.shape[0] == gt_boxes.shape[0] and gt_labels.shape[1] == gt_boxes.shape[1],
                     lambda: "match_priors: gt_labels must match gt_boxes' [B, G]")
        dtype = torch.promote_types(torch.promote_types(priors.dtype, gt_boxes.dtype), torch.float32)
        B, P = gt_boxes.shape[0], priors.shape[0]
        return (priors.new_empty((B, P, 4), dtype=dtype),
                gt_labels.new_empty((B, P)),
                priors.new_empty((B, P), dtype=dtype))


def match_priors(priors: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                 iou_threshold: float = 0.5, variances=(0.1, 0.2)):
    """SSD prior matching; see :func:`scratchdet.ops.reference.match_priors` for the exact rules.

    Returns ``loc_t [B, P, 4]``, ``conf_t [B, P]`` (int64, 0 = background) and
    ``matched_iou [B, P]``, in float32 (float64 if priors or gt_boxes is float64).

    CPU: one fused pass, parallel over images and chunks of priors.
    CUDA: three launches for the whole batch (a validation scan, the fused
    matching kernel, the forced-assignment kernel); ties are settled by ordered
    reductions, so results do not depend on thread order. The matching itself
    never synchronises with the host, but the data checks (finite priors, valid
    GT boxes, labels < 2^31) need one device->host copy of a 3-element summary.
    That copy is skipped while the current stream is being captured into a CUDA
    graph, or when the environment variable ``SCRATCHDET_SKIP_INPUT_CHECKS=1`` is
    set; invalid input then gives meaningless (but in-bounds) results instead of
    an error.
    """
    if _HAS_KERNEL:
        return torch.ops.scratchdet.match_priors(priors, gt_boxes, gt_labels, float(iou_threshold),
                                                 [float(v) for v in variances])
    warn_fallback("match_priors")
    return reference.match_priors(priors, gt_boxes, gt_labels, iou_threshold, variances)

"""match_priors: the public function (kernel, fake and fallback: ``_registrations.py``)."""
from __future__ import annotations

import torch

from . import _registrations


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
    return _registrations.match_priors(priors, gt_boxes, gt_labels, float(iou_threshold),
                                       [float(v) for v in variances])

"""match_priors: SSD's assignment of a ground-truth box and class to each prior."""
from __future__ import annotations

import torch

from .._checks import ANY_SIZE, check_floating, check_same_device, check_shape, fmt_float, fmt_floats
from .box_iou import box_iou
from .box_math import encode, point_form

__all__ = ["MAX_MATCH_INDEX", "check_match_priors_args", "check_match_priors_data", "match_priors"]


MAX_MATCH_INDEX = 2**31 - 1  # the largest label, prior count and GT count the kernels take (C++: kMaxMatchLabel)


def check_match_priors_args(priors, gt_boxes, gt_labels, iou_threshold, variances) -> None:
    """The shape, dtype, device and scalar checks of match_priors; no tensor data is read."""
    op = "match_priors"
    check_shape(priors, 2, 4, op, "priors", "[P, 4]")
    check_shape(gt_boxes, 3, 4, op, "gt_boxes", "[B, G, 4]")
    check_shape(gt_labels, 2, ANY_SIZE, op, "gt_labels", "[B, G]")
    check_floating(priors, op, "priors")
    check_floating(gt_boxes, op, "gt_boxes")
    if gt_labels.dtype != torch.int64:
        raise RuntimeError(f"{op}: expected gt_labels to be int64, got {gt_labels.dtype}")
    if tuple(gt_labels.shape) != tuple(gt_boxes.shape[:2]):
        raise RuntimeError(f"{op}: expected gt_labels of shape [B, G] = {list(gt_boxes.shape[:2])} "
                           f"to match gt_boxes, got shape {list(gt_labels.shape)}")
    check_same_device(priors, gt_boxes, op, "priors", "gt_boxes")
    check_same_device(gt_boxes, gt_labels, op, "gt_boxes", "gt_labels")
    if not (0.0 <= float(iou_threshold) <= 1.0):
        raise RuntimeError(f"{op}: expected iou_threshold in [0, 1], got {fmt_float(iou_threshold)}")
    if len(variances) != 2 or not all(float(v) > 0 for v in variances):
        raise RuntimeError(f"{op}: expected two positive variances, got {fmt_floats(variances)}")
    if priors.shape[0] > MAX_MATCH_INDEX or gt_boxes.shape[1] > MAX_MATCH_INDEX:
        raise RuntimeError(f"{op}: expected fewer than 2^31 priors and GTs per image, got P = {priors.shape[0]} "
                           f"and G = {gt_boxes.shape[1]}")


def check_match_priors_data(priors, gt_boxes, gt_labels) -> None:
    """The checks of match_priors that read the values: finite priors with positive size, labels
    < 2^31, and valid boxes for the real GTs (label > 0). After check_match_priors_args."""
    op = "match_priors"
    if priors.numel() and not (torch.isfinite(priors).all() and (priors[:, 2:] > 0).all()):
        raise RuntimeError(f"{op}: priors must be finite with positive width and height")
    if gt_labels.numel() and int(gt_labels.max()) > MAX_MATCH_INDEX:
        raise RuntimeError(f"{op}: gt_labels must be < 2^31, got {int(gt_labels.max())}")
    valid = gt_labels > 0
    bad = valid & ~(torch.isfinite(gt_boxes).all(-1) & (gt_boxes[..., 2] > gt_boxes[..., 0])
                    & (gt_boxes[..., 3] > gt_boxes[..., 1]))
    if bad.any():
        b, g = (int(i) for i in bad.nonzero()[0])
        raise RuntimeError(f"{op}: invalid ground-truth box {fmt_floats(gt_boxes[b, g].tolist())} at image {b}, "
                           f"box {g}: coordinates must be finite with x2 > x1 and y2 > y1")


def match_priors(priors: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                 iou_threshold: float = 0.5, variances=(0.1, 0.2)):
    """Assign each prior a ground-truth box and class, as the original SSD does.

    Args:
        priors: ``[P, 4]`` (cx, cy, w, h).
        gt_boxes: ``[B, G, 4]`` (x1, y1, x2, y2), padded.
        gt_labels: ``[B, G]`` int64; 1..C-1 for a real box, <= 0 for padding.
    Returns:
        ``loc_t [B, P, 4]`` (encoded offsets; zero for background priors),
        ``conf_t [B, P]`` int64 (matched label, 0 = background),
        ``matched_iou [B, P]`` (IoU of each prior with its assigned GT; 0 when the image has none).

    Rules: best GT per prior is the argmax of IoU (ties: lowest GT index); best
    prior per GT is the argmax (ties: lowest prior index); each GT j is forced
    onto its best prior in increasing j (a later GT wins a shared prior); a
    prior is foreground when its overlap (2.0 if forced) is >= iou_threshold.
    fp16/bf16 inputs are computed in float32.
    """
    check_match_priors_args(priors, gt_boxes, gt_labels, iou_threshold, variances)
    check_match_priors_data(priors, gt_boxes, gt_labels)
    dtype = torch.promote_types(torch.promote_types(priors.dtype, gt_boxes.dtype), torch.float32)
    priors, gt_boxes = priors.to(dtype), gt_boxes.to(dtype)
    B, G = gt_labels.shape
    P = priors.shape[0]
    loc_t = priors.new_zeros((B, P, 4))
    conf_t = torch.zeros((B, P), dtype=torch.int64, device=priors.device)
    matched_iou = priors.new_zeros((B, P))
    if P == 0:
        return loc_t, conf_t, matched_iou
    prior_boxes = point_form(priors)
    arange_p = torch.arange(P, device=priors.device)
    for b in range(B):
        idx = (gt_labels[b] > 0).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        truths, labels = gt_boxes[b, idx], gt_labels[b, idx]
        overlaps = box_iou(truths, prior_boxes)                      # [g, P]
        best_prior = overlaps.argmax(dim=1)                          # first max: lowest prior index
        best_truth = overlaps.argmax(dim=0)                          # first max: lowest GT index
        best_truth_overlap = overlaps[best_truth, arange_p]
        for j in range(idx.numel()):                                 # in increasing j: later GT wins
            best_truth[best_prior[j]] = j
            best_truth_overlap[best_prior[j]] = 2.0
        foreground = best_truth_overlap >= iou_threshold
        conf_t[b] = torch.where(foreground, labels[best_truth], torch.zeros_like(labels[best_truth]))
        loc = encode(truths[best_truth], priors, variances)
        loc_t[b] = torch.where(foreground[:, None], loc, torch.zeros_like(loc))
        matched_iou[b] = overlaps[best_truth, arange_p]
    return loc_t, conf_t, matched_iou

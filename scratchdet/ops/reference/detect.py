"""detect: SSD detection output (softmax, decode, per-class NMS, top-k) over :func:`nms`."""
from __future__ import annotations

import torch

from .._checks import ANY_SIZE, check_floating, check_same_device, check_shape, fmt_float, fmt_floats
from .box_math import decode
from .nms import nms

__all__ = ["check_detect_args", "detect"]


def check_detect_args(loc, logits, priors, variances, score_threshold, nms_threshold, top_k, keep_top_k) -> None:
    """Any score_threshold is fine (every score fails one above 1 and passes one below 0)."""
    op = "detect"
    check_shape(loc, 3, 4, op, "loc", "[B, P, 4]")
    check_shape(logits, 3, ANY_SIZE, op, "logits", "[B, P, C]")
    check_shape(priors, 2, 4, op, "priors", "[P, 4]")
    for t, name in ((loc, "loc"), (logits, "logits"), (priors, "priors")):
        check_floating(t, op, name)
    if loc.shape[:2] != logits.shape[:2] or loc.shape[1] != priors.shape[0]:
        raise RuntimeError(f"{op}: expected loc [B, P, 4], logits [B, P, C] and priors [P, 4] to agree on B and P, "
                           f"got {list(loc.shape)}, {list(logits.shape)} and {list(priors.shape)}")
    if logits.shape[2] < 2:
        raise RuntimeError(f"{op}: expected logits with C >= 2 classes (0 = background), got C = {logits.shape[2]}")
    check_same_device(loc, logits, op, "loc", "logits")
    check_same_device(loc, priors, op, "loc", "priors")
    if len(variances) != 2 or not all(float(v) > 0 for v in variances):
        raise RuntimeError(f"{op}: expected two positive variances, got {fmt_floats(variances)}")
    if not 0.0 <= float(nms_threshold) <= 1.0:
        raise RuntimeError(f"{op}: expected nms_threshold in [0, 1], got {fmt_float(nms_threshold)}")
    if top_k < 1 or keep_top_k < 1:
        raise RuntimeError(f"{op}: expected top_k >= 1 and keep_top_k >= 1, got {top_k} and {keep_top_k}")


def detect(loc: torch.Tensor, logits: torch.Tensor, priors: torch.Tensor, variances=(0.1, 0.2),
           score_threshold: float = 0.01, nms_threshold: float = 0.45, top_k: int = 400,
           keep_top_k: int = 200, clip: bool = True):
    """SSD detection output, per image and per class, over :func:`nms`.

    Returns ``boxes [B, K, 4]``, ``scores [B, K]``, ``labels [B, K]`` (int64),
    ``num_detections [B]`` (int64), K = keep_top_k, padded with score 0 and
    label -1 (boxes 0). Rows are by score descending; equal scores go to the
    lower prior index, then the lower class.

    Non-finite input: a prior whose logits are not all finite, or whose decoded
    (and clipped) box is not finite, yields no detection, whatever the
    threshold, so NaN/inf never reach the output.

    NMS runs per class with :func:`nms` on the decoded boxes (torchvision's CPU
    NMS with a stable order, on every device: among equal scores the lower prior
    is kept), not with ``batched_nms``, whose class offsets round coordinates and
    can move an IoU sitting on the threshold. The softmax and exp come from ATen
    on the input's device, as in the kernels.
    """
    check_detect_args(loc, logits, priors, variances, score_threshold, nms_threshold, top_k, keep_top_k)

    dtype = torch.promote_types(torch.promote_types(loc.dtype, priors.dtype), torch.float32)
    B, P, C = logits.shape
    device = loc.device
    scores = torch.softmax(logits.to(dtype), dim=-1)
    boxes = decode(loc.to(dtype), priors.to(dtype), variances)
    if clip:
        boxes = boxes.clamp(min=0.0, max=1.0)
    finite = torch.isfinite(logits).all(-1) & torch.isfinite(boxes).all(-1)       # [B, P]
    scores = torch.where(finite[..., None], scores, torch.zeros_like(scores))

    out_boxes = torch.zeros((B, keep_top_k, 4), dtype=dtype, device=device)
    out_scores = torch.zeros((B, keep_top_k), dtype=dtype, device=device)
    out_labels = torch.full((B, keep_top_k), -1, dtype=torch.int64, device=device)
    num = torch.zeros(B, dtype=torch.int64, device=device)
    for b in range(B):
        cand_prior, cand_class = [], []
        for c in range(1, C):
            s = scores[b, :, c]
            idx = ((s > score_threshold) & finite[b]).nonzero().squeeze(1)
            order = torch.sort(s[idx], descending=True, stable=True).indices[:top_k]
            keep = nms(boxes[b, idx[order]], s[idx[order]], nms_threshold)
            cand_prior.append(idx[order][keep])
            cand_class.append(torch.full((keep.numel(),), c, dtype=torch.int64, device=device))
        prior_idx, cls = torch.cat(cand_prior), torch.cat(cand_class)
        if prior_idx.numel() == 0:
            continue
        sc = scores[b, prior_idx, cls]
        # score descending, then lower prior index, then lower class: stable sorts, last key first
        order = torch.sort(cls, stable=True).indices
        order = order[torch.sort(prior_idx[order], stable=True).indices]
        order = order[torch.sort(sc[order], descending=True, stable=True).indices][:keep_top_k]
        n = order.numel()
        out_boxes[b, :n] = boxes[b, prior_idx[order]]
        out_scores[b, :n] = sc[order]
        out_labels[b, :n] = cls[order]
        num[b] = n
    return out_boxes, out_scores, out_labels, num

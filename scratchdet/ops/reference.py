"""Pure-PyTorch reference implementations of every scratchdet op.

This file is the executable spec: each compiled kernel must agree with the
function of the same name here (see tests/). They are written the obvious way,
for clarity rather than speed.

Each op's argument checks are a function of their own, ``check_<op>_args``: the
checks of the C++ header ``csrc/ops/<op>.h``, in the same order with the same
wording. They read no tensor data, so the fake kernels (``_registrations.py``)
call them too; match_priors' checks of the values themselves are apart, in
``check_match_priors_data``.
"""
from __future__ import annotations

import math

import torch

from ._checks import (ANY_SIZE, check_bias_and_residual, check_floating, check_same_device, check_same_dtype,
                      check_shape, fmt_float, fmt_floats)

__all__ = ["box_iou", "point_form", "encode", "decode", "match_priors", "nms", "batched_nms", "detect",
           "check_box_iou_args", "check_match_priors_args", "check_match_priors_data", "check_batched_nms_args",
           "check_detect_args"]


# --------------------------------------------------------------------------- box_iou
def check_box_iou_args(boxes1, boxes2) -> None:
    op = "box_iou"
    check_shape(boxes1, 2, 4, op, "boxes1", "[N, 4]")
    check_shape(boxes2, 2, 4, op, "boxes2", "[M, 4]")
    check_floating(boxes1, op, "boxes1")
    check_same_dtype(boxes1, boxes2, op, "boxes1", "boxes2")
    check_same_device(boxes1, boxes2, op, "boxes1", "boxes2")


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (x1, y1, x2, y2) boxes, ``[N, 4] x [M, 4] -> [N, M]``.

    Same formula as ``torchvision.ops.box_iou`` (no +1), computed in at least
    float32; where the union is not positive the IoU is 0 (torchvision: NaN).
    """
    check_box_iou_args(boxes1, boxes2)
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


# --------------------------------------------------------------------------- batched_nms / detect
# torchvision.ops.batched_nms runs one NMS over class-offset boxes up to this
# many box coordinates (boxes.numel()) and a per-class loop above it; the
# offsets round the coordinates, so the spec follows the same switch.
TORCHVISION_VANILLA_NUMEL = {"cpu": 4000, "cuda": 100_000}


_NMS_BLOCK = 512  # candidates per step of nms(): bounds the IoU matrix, not the result


def _nms_overlap(a: torch.Tensor, area_a: torch.Tensor, b: torch.Tensor, area_b: torch.Tensor) -> torch.Tensor:
    """IoU of each kept box ``a [k, 4]`` (the higher-scoring one) with each later box ``b [m, 4]``,
    ``[k, m]``, op for op as torchvision's CPU nms_kernel in the boxes' dtype: std::max / std::min
    with their argument order (so NaN coordinates behave alike), then ``inter / (area_a + area_b - inter)``."""
    a = a[:, None, :]
    zero = torch.zeros((), dtype=b.dtype)
    xx1 = torch.where(a[..., 0] < b[:, 0], b[:, 0], a[..., 0])   # std::max(ix1, x1[j])
    yy1 = torch.where(a[..., 1] < b[:, 1], b[:, 1], a[..., 1])
    xx2 = torch.where(b[:, 2] < a[..., 2], b[:, 2], a[..., 2])   # std::min(ix2, x2[j])
    yy2 = torch.where(b[:, 3] < a[..., 3], b[:, 3], a[..., 3])
    w = torch.where(zero < xx2 - xx1, xx2 - xx1, zero)           # std::max(0, xx2 - xx1)
    h = torch.where(zero < yy2 - yy1, yy2 - yy1, zero)
    inter = w * h
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS with torchvision's CPU semantics, on every device: the kept indices (int64, on the
    boxes' device) by decreasing score.

    Boxes are visited in ``torch.sort(scores, descending=True, stable=True)`` order (NaN first,
    equal scores by lower index); a box is removed when its IoU with a kept box, computed as
    torchvision's CPU kernel does in the boxes' dtype (fp16 rounds every step), widened to float64
    is ``> iou_threshold``. It runs on the host whatever the input's device, so the answer never
    depends on a device's sort (torchvision's CUDA nms sorts with an unstable sort, a bitonic one
    up to 32 elements) or arithmetic (its CUDA IoU is in float for fp16 and is compared with
    ``(float)iou_threshold``). Equals ``torchvision.ops.nms`` on the CPU wherever no two scores tie.
    """
    check_shape(boxes, 2, 4, "nms", "boxes", "[N, 4]")
    check_shape(scores, 1, ANY_SIZE, "nms", "scores", "[N]")
    device = boxes.device
    order = torch.sort(scores.cpu(), descending=True, stable=True).indices
    b = boxes.cpu()[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    kept: list[int] = []                       # positions in `order`
    for start in range(0, len(order), _NMS_BLOCK):
        blk, blk_area = b[start:start + _NMS_BLOCK], area[start:start + _NMS_BLOCK]
        alive = torch.ones(len(blk), dtype=torch.bool)
        if kept:                               # against the boxes kept in earlier blocks
            k = torch.tensor(kept)
            alive &= ~(_nms_overlap(b[k], area[k], blk, blk_area).double() > iou_threshold).any(0)
        # inside the block, in order: row i holds the later boxes box i would remove
        removes = torch.triu(_nms_overlap(blk, blk_area, blk, blk_area).double() > iou_threshold, 1).numpy()
        alive = alive.numpy()
        for i in range(len(blk)):
            if alive[i]:
                kept.append(start + i)
                alive &= ~removes[i]
    return order[torch.tensor(kept, dtype=torch.int64)].to(device)


# The dtypes C++'s isIntegralType(t, includeBool=false) accepts.
_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32,
                   torch.uint64)


def check_batched_nms_args(boxes, scores, idxs, iou_threshold) -> None:
    op = "batched_nms"
    check_shape(boxes, 2, 4, op, "boxes", "[N, 4]")
    check_shape(scores, 1, ANY_SIZE, op, "scores", "[N]")
    check_shape(idxs, 1, ANY_SIZE, op, "idxs", "[N]")
    if boxes.dtype not in (torch.float16, torch.float32, torch.float64):
        raise RuntimeError(f"{op}: expected boxes to be float16, float32 or float64, got {boxes.dtype}")
    check_same_dtype(boxes, scores, op, "boxes", "scores")
    if idxs.dtype not in _INTEGER_DTYPES:
        raise RuntimeError(f"{op}: expected idxs to be an integer tensor, got {idxs.dtype}")
    if not (scores.shape[0] == idxs.shape[0] == boxes.shape[0]):
        raise RuntimeError(f"{op}: expected boxes [N, 4], scores [N] and idxs [N] to agree on N, got "
                           f"{list(boxes.shape)}, {list(scores.shape)} and {list(idxs.shape)}")
    check_same_device(boxes, scores, op, "boxes", "scores")
    check_same_device(boxes, idxs, op, "boxes", "idxs")
    if math.isnan(float(iou_threshold)):
        raise RuntimeError(f"{op}: expected a number as iou_threshold, got NaN")


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Per-class greedy NMS: torchvision.ops.batched_nms with torchvision's CPU semantics on every device.

    Boxes of different ``idxs`` never suppress each other; a box is removed when its IoU with a
    kept, higher-scoring box of its class is > ``iou_threshold``. Returns the kept indices (int64)
    by decreasing score. As torchvision: one NMS over class-offset boxes up to 4000 box
    coordinates (numel) on CPU and 100 000 on CUDA, one NMS per class above (the offsets round the
    coordinates, so the switch is part of the answer). Each NMS is :func:`nms`: stable score order
    (equal scores by increasing index), torchvision's CPU IoU in the boxes' dtype (fp16 rounds
    every step) and ``float64(iou) > iou_threshold`` -- also on CUDA, where torchvision itself
    differs (IoU in float for fp16, compared with ``(float)iou_threshold``, unstable sort up to 32
    boxes). Above the switch the kept indices are ordered as torchvision orders them, by an
    unstable ``torch.sort`` of their scores on the input's device, so equal scores there come in
    that device's sort order.
    """
    check_batched_nms_args(boxes, scores, idxs, iou_threshold)
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    if boxes.numel() <= TORCHVISION_VANILLA_NUMEL.get(boxes.device.type, 100_000):
        offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
        return nms(boxes + offsets[:, None], scores, iou_threshold)
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for c in torch.unique(idxs):
        members = torch.where(idxs == c)[0]
        keep_mask[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    kept = torch.where(keep_mask)[0]
    # Not stable, as in torchvision: equal scores come in torch.sort's order on this device.
    return kept[torch.sort(scores[kept], descending=True).indices]


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


# --------------------------------------------------------------------------- conv_bn_act
# (issue: fused BN-conv inference)
__all__ += ["conv_bn_act", "fold_batch_norm", "check_conv_bn_act_args", "conv_pair"]


def conv_pair(v) -> list:
    """stride, padding or dilation as a list: an int ``v`` is ``[v, v]``; the length is checked later."""
    return [v, v] if isinstance(v, int) else list(v)


def _check_conv_pair(v, min_value: int, name: str) -> None:
    """stride, padding or dilation: two values (h, w), each >= min_value."""
    if len(v) != 2:
        raise RuntimeError(f"conv_bn_act: expected {name} to have 2 values (h, w), got {list(v)}")
    if any(x < min_value for x in v):
        raise RuntimeError(f"conv_bn_act: expected every {name} value >= {min_value}, got {list(v)}")


def check_conv_bn_act_args(input, weight, bias, residual, stride, padding, dilation, groups) -> list:
    """Returns the output shape [N, C_out, H_out, W_out]."""
    op = "conv_bn_act"
    check_shape(input, 4, ANY_SIZE, op, "input", "[N, C_in, H, W]")
    check_shape(weight, 4, ANY_SIZE, op, "weight", "[C_out, C_in / groups, kH, kW]")
    check_floating(input, op, "input")
    check_same_dtype(input, weight, op, "input", "weight")
    check_same_device(input, weight, op, "input", "weight")
    _check_conv_pair(stride, 1, "stride")
    _check_conv_pair(padding, 0, "padding")
    _check_conv_pair(dilation, 1, "dilation")
    if groups < 1:
        raise RuntimeError(f"{op}: expected groups >= 1, got {groups}")
    c_in, c_out = input.shape[1], weight.shape[0]
    if c_in % groups or c_out % groups or weight.shape[1] * groups != c_in:
        raise RuntimeError(f"{op}: expected weight of shape [C_out, C_in / groups, kH, kW] with C_in = {c_in} "
                           f"and groups = {groups}, got weight shape {list(weight.shape)}")
    out_shape = [input.shape[0], c_out]
    for d in range(2):
        extent = dilation[d] * (weight.shape[2 + d] - 1) + 1
        padded = input.shape[2 + d] + 2 * padding[d]
        if padded < extent:
            raise RuntimeError(f"{op}: the kernel ({list(weight.shape)}, dilation {list(dilation)}) is larger than "
                               f"the padded input ({list(input.shape)}, padding {list(padding)})")
        out_shape.append((padded - extent) // stride[d] + 1)
    check_bias_and_residual(input, bias, residual, out_shape, op)
    return out_shape


def conv_bn_act(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                residual: torch.Tensor | None = None, stride=1, padding=0, dilation=1, groups: int = 1,
                relu: bool = False) -> torch.Tensor:
    """``relu?(conv2d(input, weight, bias) + residual?)``: Conv-BN(-add)(-ReLU) after folding.

    The output has the input's memory format (NCHW or channels_last) and dtype. Half
    precision rounds as the unfused ops do: after the biased conv, then after the add.
    """
    stride, padding, dilation = conv_pair(stride), conv_pair(padding), conv_pair(dilation)
    check_conv_bn_act_args(input, weight, bias, residual, stride, padding, dilation, groups)
    out = torch.nn.functional.conv2d(input, weight, bias, stride, padding, dilation, groups)
    if residual is not None:
        out = out + residual
    if relu:
        out = torch.relu(out)
    from torch._prims_common import suggest_memory_format

    return out.contiguous(memory_format=suggest_memory_format(input))


def fold_batch_norm(weight: torch.Tensor, bias: torch.Tensor | None, running_mean: torch.Tensor,
                    running_var: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None,
                    eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the conv before it: ``w' = w*g/sqrt(var+eps)`` and
    ``b' = (b - mu)*g/sqrt(var+eps) + beta``. Computed in float64, returned in weight's dtype."""
    dtype = weight.dtype
    var, mean = running_var.double(), running_mean.double()
    g = gamma.double() if gamma is not None else torch.ones_like(var)
    bt = beta.double() if beta is not None else torch.zeros_like(var)
    b = bias.double() if bias is not None else torch.zeros_like(var)
    scale = g / torch.sqrt(var + eps)
    w = weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    return w.to(dtype), ((b - mean) * scale + bt).to(dtype)


# --------------------------------------------------------------------------- winograd_conv3x3
# (issue: fused BN-conv inference; the CPU algorithm for the fused network's 3x3 stride-1 convs)
__all__ += ["WINOGRAD_F43", "check_winograd_conv3x3_args", "check_winograd_f43_pack_args", "winograd_f43_pack",
            "winograd_conv3x3"]

# Winograd F(4x4, 3x3) (Lavin & Gray 2016; points 0, +-1, +-2, inf): Y = A^T [(G g G^T) . (B^T d B)] A
WINOGRAD_F43 = {
    "BT": [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
           [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
    "G": [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
          [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
    "AT": [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
}


def _wino(name: str, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(WINOGRAD_F43[name], dtype=like.dtype, device=like.device)


def check_winograd_conv3x3_args(input, packed_weight, bias, residual) -> list:
    """Returns the output shape [N, C_out, H, W]."""
    op = "winograd_conv3x3"
    check_shape(input, 4, ANY_SIZE, op, "input", "[N, C_in, H, W]")
    check_shape(packed_weight, 3, ANY_SIZE, op, "packed_weight", "[36, C_in, C_out] (from winograd_f43_pack)")
    if input.dtype != torch.float32:
        raise RuntimeError(f"{op}: expected input of dtype float32, got {input.dtype} (the Winograd path is "
                           "float32-only; use conv_bn_act for other dtypes)")
    check_same_dtype(input, packed_weight, op, "input", "packed_weight")
    check_same_device(input, packed_weight, op, "input", "packed_weight")
    if packed_weight.shape[0] != 36 or packed_weight.shape[1] != input.shape[1]:
        raise RuntimeError(f"{op}: expected packed_weight of shape [36, C_in, C_out] with C_in = {input.shape[1]} "
                           f"(from winograd_f43_pack), got shape {list(packed_weight.shape)}")
    out_shape = [input.shape[0], packed_weight.shape[2], input.shape[2], input.shape[3]]
    check_bias_and_residual(input, bias, residual, out_shape, op)
    max_channels = (2**31 - 1) // 36  # the kernel hands channel counts to BLAS as 32-bit ints
    if input.shape[1] > max_channels or packed_weight.shape[2] > max_channels:
        raise RuntimeError(f"{op}: expected fewer than 2^31 / 36 channels (BLAS takes 32-bit sizes), "
                           f"got C_in = {input.shape[1]} and C_out = {packed_weight.shape[2]}")
    return out_shape


def check_winograd_f43_pack_args(weight) -> None:
    op = "winograd_f43_pack"
    check_shape(weight, 4, ANY_SIZE, op, "weight", "[C_out, C_in, 3, 3]")
    if weight.shape[2:] != (3, 3):
        raise RuntimeError(f"{op}: expected a 3x3 weight [C_out, C_in, 3, 3], got shape {list(weight.shape)}")
    if weight.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"{op}: expected weight of dtype float32 or float64, got {weight.dtype}")


def winograd_f43_pack(weight: torch.Tensor) -> torch.Tensor:
    """``G g G^T`` of every 3x3 filter of ``weight [C_out, C_in, 3, 3]``, computed in float64:
    float32 ``[36, C_in, C_out]`` (transform position ``6*i + j`` first, as the GEMMs take it)."""
    check_winograd_f43_pack_args(weight)
    w = weight.double()
    g = _wino("G", w)
    u = torch.einsum("ak,oikl,bl->abio", g, w, g)            # [6, 6, C_in, C_out]
    return u.reshape(36, weight.shape[1], weight.shape[0]).float().contiguous()


def winograd_conv3x3(input: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None = None,
                     residual: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """``relu?(conv2d(input, weight, bias, stride=1, padding=1) + residual?)`` by Winograd F(4x4, 3x3)
    with ``packed_weight = winograd_f43_pack(weight)``, written out in tensor ops: 4x4 output
    tiles, 6x6 input tiles with zero padding past the edges. float32 in and out; it differs from
    ``conv2d`` by rounding only (about 1e-5 relative per layer). Output in the input's memory format."""
    check_winograd_conv3x3_args(input, packed_weight, bias, residual)
    n, c, h, w = input.shape
    c_out = packed_weight.shape[2]
    th, tw = -(-h // 4), -(-w // 4)
    x = torch.nn.functional.pad(input, (1, 1 + 4 * tw - w, 1, 1 + 4 * th - h))   # [N, C, 4*th+2, 4*tw+2]
    tiles = x.unfold(2, 6, 4).unfold(3, 6, 4)                                      # [N, C, th, tw, 6, 6]
    bt, at = _wino("BT", input), _wino("AT", input)
    v = torch.einsum("ak,ncyxkl,bl->abnyxc", bt, tiles, bt).reshape(36, -1, c)    # [36, tiles, C]
    m = torch.bmm(v, packed_weight).reshape(6, 6, n, th, tw, c_out)                # [6, 6, N, th, tw, C_out]
    y = torch.einsum("ia,abnyxo,jb->noyixj", at, m, at).reshape(n, c_out, 4 * th, 4 * tw)[:, :, :h, :w]
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    if residual is not None:
        y = y + residual
    if relu:
        y = torch.relu(y)
    from torch._prims_common import suggest_memory_format

    return y.contiguous(memory_format=suggest_memory_format(input))


# --------------------------------------------------------------------------- batch_norm_relu
# (issue: faster training from scratch; the fused training-mode BatchNorm of scratchdet.models.BNReLU2d)
__all__ += ["check_batch_norm_relu_args", "check_batch_norm_relu_backward_args", "batch_norm_relu",
            "batch_norm_relu_backward"]


def _check_channel_param(input, p, op: str, name: str) -> None:
    c = input.shape[1]
    if p.dim() != 1 or p.shape[0] != c:
        raise RuntimeError(f"{op}: expected {name} of shape [{c}], got shape {list(p.shape)}")
    reduced = input.dtype in (torch.float16, torch.bfloat16)
    if p.dtype != input.dtype and not (reduced and p.dtype == torch.float32):
        raise RuntimeError(f"{op}: expected {name} of dtype {input.dtype}" + (" or torch.float32" if reduced else "")
                           + f" (the input's), got {p.dtype}")
    check_same_device(input, p, op, "input", name)


def check_batch_norm_relu_args(input, weight, bias, residual, eps) -> None:
    op = "batch_norm_relu"
    check_shape(input, 4, ANY_SIZE, op, "input", "[N, C, H, W]")
    check_floating(input, op, "input")
    if weight is not None:
        _check_channel_param(input, weight, op, "weight")
    if bias is not None:
        _check_channel_param(input, bias, op, "bias")
    if residual is not None:
        if list(residual.shape) != list(input.shape):
            raise RuntimeError(f"{op}: expected residual of the input's shape {list(input.shape)}, "
                               f"got shape {list(residual.shape)}")
        check_same_dtype(input, residual, op, "input", "residual")
        check_same_device(input, residual, op, "input", "residual")
    if not float(eps) > 0:
        raise RuntimeError(f"{op}: expected eps > 0, got {fmt_float(eps)}")
    if not (input.shape[1] > 0 and input.numel() // input.shape[1] > 1):
        raise RuntimeError(f"{op}: expected more than 1 value per channel when training, got input of shape "
                           f"{list(input.shape)}")


def check_batch_norm_relu_backward_args(grad_out, out, input, weight, save_mean, save_invstd) -> None:
    op = "batch_norm_relu_backward"
    check_shape(input, 4, ANY_SIZE, op, "input", "[N, C, H, W]")
    check_floating(input, op, "input")
    for t, name in ((grad_out, "grad_out"), (out, "out")):
        if list(t.shape) != list(input.shape):
            raise RuntimeError(f"{op}: expected {name} of the input's shape {list(input.shape)}, "
                               f"got shape {list(t.shape)}")
        check_same_dtype(input, t, op, "input", name)
        check_same_device(input, t, op, "input", name)
    if weight is not None:
        _check_channel_param(input, weight, op, "weight")
    for t, name in ((save_mean, "save_mean"), (save_invstd, "save_invstd")):
        if t.dim() != 1 or t.shape[0] != input.shape[1]:
            raise RuntimeError(f"{op}: expected {name} of shape [{input.shape[1]}], got shape {list(t.shape)}")
        check_same_device(input, t, op, "input", name)


def _channel(v: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, 1, 1)


def batch_norm_relu(input: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                    residual: torch.Tensor | None, eps: float, relu: bool):
    """Training-mode BatchNorm2d, then ``+ residual`` and ReLU: ``(out, save_mean, save_invstd)``.

    The batch statistics (mean, and the biased variance the normalisation uses) are computed in
    float64, ``out = relu?(x * scale + shift + residual?)`` with ``scale = weight * invstd`` and
    ``shift = bias - mean * scale``. ``save_mean`` / ``save_invstd`` ([C], float32 for reduced
    precision input) are what the backward needs and what a module updates its running
    statistics from (``var = invstd**-2 - eps``). The output has the input's memory format.
    """
    check_batch_norm_relu_args(input, weight, bias, residual, eps)
    stat_dtype = torch.promote_types(input.dtype, torch.float32)
    x = input.double()
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=False)
    invstd = (var + eps).rsqrt()
    w = weight.double() if weight is not None else torch.ones_like(mean)
    b = bias.double() if bias is not None else torch.zeros_like(mean)
    y = (x - _channel(mean)) * _channel(invstd * w) + _channel(b)
    if residual is not None:
        y = y + residual.double()
    if relu:
        y = torch.relu(y)
    from torch._prims_common import suggest_memory_format

    out = y.to(input.dtype).contiguous(memory_format=suggest_memory_format(input))
    return out, mean.to(stat_dtype), invstd.to(stat_dtype)


def batch_norm_relu_backward(grad_out: torch.Tensor, out: torch.Tensor, input: torch.Tensor,
                             weight: torch.Tensor | None, save_mean: torch.Tensor, save_invstd: torch.Tensor,
                             relu: bool, residual: bool):
    """The gradient of :func:`batch_norm_relu`: ``(grad_input, grad_weight, grad_bias, grad_residual)``,
    with the ReLU's gradient taken from its output (zero where ``out <= 0``, as torch's), and
    ``grad_residual`` an empty tensor unless ``residual``; grad_weight / grad_bias in the weight's
    dtype (save_mean's without one). Computed in float64."""
    check_batch_norm_relu_backward_args(grad_out, out, input, weight, save_mean, save_invstd)
    g = grad_out.double()
    if relu:
        g = torch.where(out > 0, g, torch.zeros_like(g))
    x, mean, invstd = input.double(), save_mean.double(), save_invstd.double()
    w = weight.double() if weight is not None else torch.ones_like(mean)
    n = input.numel() // input.shape[1]
    xhat = (x - _channel(mean)) * _channel(invstd)
    grad_bias = g.sum(dim=(0, 2, 3))
    grad_weight = (g * xhat).sum(dim=(0, 2, 3))
    dx = _channel(w * invstd) * (g - _channel(grad_bias / n) - xhat * _channel(grad_weight / n))
    from torch._prims_common import suggest_memory_format

    fmt = suggest_memory_format(input)
    param_dtype = weight.dtype if weight is not None else save_mean.dtype
    grad_residual = g.to(input.dtype).contiguous(memory_format=fmt) if residual else input.new_empty((0,))
    return (dx.to(input.dtype).contiguous(memory_format=fmt), grad_weight.to(param_dtype), grad_bias.to(param_dtype),
            grad_residual)

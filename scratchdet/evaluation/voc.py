"""Pascal VOC detection metric with the devkit's semantics (VOCevaldet.m).

Per class: detections of all images are sorted by score (stable, so ties keep
input order) and taken greedily. Each is compared with every GT box of its image
and class, difficult and already-matched ones included; the GT with the highest
IoU (the first on ties) decides:

- IoU >= ``iou_threshold`` and the GT is difficult: neither TP nor FP (ignored);
- IoU >= threshold, GT not yet matched: TP, and the GT becomes matched;
- IoU >= threshold, GT already matched: FP (a duplicate);
- otherwise FP.

Recall is over the non-difficult GTs. AP is the 11-point interpolated precision
(VOC07: mean over recall thresholds 0, 0.1, ..., 1 of the best precision at
recall >= t) or the area under the monotone precision envelope (VOC10+). mAP
averages the classes that have at least one non-difficult GT.

Box convention: with ``pixel_inclusive=True`` (the devkit's) boxes are inclusive
pixel indices, so a box's width is ``x2 - x1 + 1``; the VOC reader's boxes are of
this kind. Use ``pixel_inclusive=False`` for continuous or normalised coordinates
(COCO-style boxes, or model outputs in [0, 1]).
"""
from __future__ import annotations

import warnings

import numpy as np


def _array(value, dtype, shape_tail=()):
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value, dtype=dtype)
    return arr.reshape((-1, *shape_tail)) if shape_tail else arr.reshape(-1)


def _iou(boxes, gts, offset):
    """IoU matrix [N, M] with the devkit's +offset on widths and heights."""
    iw = np.minimum(boxes[:, None, 2], gts[None, :, 2]) - np.maximum(boxes[:, None, 0], gts[None, :, 0]) + offset
    ih = np.minimum(boxes[:, None, 3], gts[None, :, 3]) - np.maximum(boxes[:, None, 1], gts[None, :, 1]) + offset
    valid = (iw > 0) & (ih > 0)
    inter = np.where(valid, iw * ih, 0.0)
    area_d = (boxes[:, 2] - boxes[:, 0] + offset) * (boxes[:, 3] - boxes[:, 1] + offset)
    area_g = (gts[:, 2] - gts[:, 0] + offset) * (gts[:, 3] - gts[:, 1] + offset)
    union = area_d[:, None] + area_g[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(valid, inter / union, -np.inf)  # the devkit skips non-overlapping pairs
    return iou


def average_precision(recall, precision, use_07_metric=True):
    """AP from cumulative recall/precision arrays (detections in score order)."""
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if use_07_metric:
        total = 0.0
        for t in np.arange(11) / 10.0:  # 0, 0.1, ..., 1 as exact decimal fractions
            above = precision[recall >= t]
            total += above.max() if above.size else 0.0
        return float(total / 11.0)  # sum first, so perfect detections give exactly 1.0
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))


def voc_eval(detections, annotations, iou_threshold=0.5, use_07_metric=True, pixel_inclusive=True,
             return_curves=False):
    """VOC mAP.

    Args:
        detections: one dict per image with ``boxes`` [N,4] (x1,y1,x2,y2), ``scores`` [N], ``labels`` [N],
            and optionally ``ignore`` [N] (bool): such a detection counts as neither TP nor FP when it
            matches no GT (COCO's rule for detections outside an evaluated size range).
        annotations: one dict per image, same order, with ``boxes`` [M,4], ``labels`` [M] and
            optionally ``difficult`` [M] (default all False).
        iou_threshold: a detection matches a GT at IoU >= this.
        use_07_metric: 11-point AP (VOC07) if True, else area under the curve.
        pixel_inclusive: the devkit's +1 on widths (see the module docstring).
        return_curves: also return {"curves": {label: (recall, precision)}}.

    Returns ``{"map": float, "ap": {label: float}}`` over labels with at least one
    non-difficult GT (mAP is 0.0 when there are none).
    """
    if len(detections) != len(annotations):
        raise ValueError(f"voc_eval: {len(detections)} detection entries but {len(annotations)} annotation "
                         "entries; give one of each per image, in the same order")
    offset = 1.0 if pixel_inclusive else 0.0
    gts, dets = [], []
    looks_normalised = True
    for i, (det, ann) in enumerate(zip(detections, annotations)):
        g_boxes = _array(ann["boxes"], np.float64, (4,))
        g_labels = _array(ann["labels"], np.int64)
        g_diff = _array(ann.get("difficult", np.zeros(len(g_labels), bool)), bool)
        d_boxes = _array(det["boxes"], np.float64, (4,))
        d_scores = _array(det["scores"], np.float64)
        d_labels = _array(det["labels"], np.int64)
        d_ignore = _array(det.get("ignore", np.zeros(len(d_labels), bool)), bool)
        if not (len(g_boxes) == len(g_labels) == len(g_diff)):
            raise ValueError(f"voc_eval: annotation {i}: boxes, labels and difficult differ in length")
        if not (len(d_boxes) == len(d_scores) == len(d_labels) == len(d_ignore)):
            raise ValueError(f"voc_eval: detection {i}: boxes, scores, labels (and ignore) differ in length")
        if not (np.isfinite(d_boxes).all() and np.isfinite(d_scores).all()):
            raise ValueError(f"voc_eval: detection {i} has non-finite boxes or scores")
        if g_boxes.size and g_boxes.max() > 1.0:
            looks_normalised = False
        gts.append((g_boxes, g_labels, g_diff))
        dets.append((d_boxes, d_scores, d_labels, d_ignore))
    if pixel_inclusive and looks_normalised and any(len(g[0]) for g in gts):
        warnings.warn("voc_eval: every GT coordinate is <= 1, so the boxes look normalised, but "
                      "pixel_inclusive=True adds 1 to widths; pass pixel_inclusive=False for normalised boxes")

    labels = sorted(set(np.concatenate([g[1] for g in gts]).tolist()) if gts else set())
    ap, curves = {}, {}
    for label in labels:
        npos = sum(int(np.sum((g[1] == label) & ~g[2])) for g in gts)
        if npos == 0:
            continue
        # Per image: each detection's best GT (and its IoU); vectorised, then the greedy pass below.
        scores, best_iou, best_gt, image_of = [], [], [], []
        difficult_of, ignore_of = [], []
        for img, ((g_boxes, g_labels, g_diff), (d_boxes, d_scores, d_labels, d_ignore)) in enumerate(zip(gts, dets)):
            dm = d_labels == label
            if not dm.any():
                continue
            gm = g_labels == label
            boxes = d_boxes[dm]
            scores.append(d_scores[dm])
            ignore_of.append(d_ignore[dm])
            image_of.append(np.full(len(boxes), img))
            if gm.any():
                iou = _iou(boxes, g_boxes[gm], offset)
                j = np.argmax(iou, axis=1)  # first maximum, as the devkit's strict '>' scan
                best_iou.append(iou[np.arange(len(boxes)), j])
                best_gt.append(j)
            else:
                best_iou.append(np.full(len(boxes), -np.inf))
                best_gt.append(np.zeros(len(boxes), np.int64))
            difficult_of.append(g_diff[gm])
        if not scores:
            ap[label] = 0.0
            curves[label] = (np.zeros(0), np.zeros(0))
            continue
        scores, best_iou = np.concatenate(scores), np.concatenate(best_iou)
        best_gt, image_of = np.concatenate(best_gt), np.concatenate(image_of)
        ignore_unmatched = np.concatenate(ignore_of)
        order = np.argsort(-scores, kind="stable")
        tp = np.zeros(len(order))
        fp = np.zeros(len(order))
        matched = {}
        gt_difficult = {img: g_diff[g_labels == label] for img, (_, g_labels, g_diff) in enumerate(gts)}
        for rank, d in enumerate(order):
            if best_iou[d] >= iou_threshold:
                img, j = int(image_of[d]), int(best_gt[d])
                if gt_difficult[img][j]:
                    continue
                key = (img, j)
                if key in matched:
                    fp[rank] = 1
                else:
                    matched[key] = True
                    tp[rank] = 1
            elif not ignore_unmatched[d]:
                fp[rank] = 1
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / npos
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap[label] = average_precision(recall, precision, use_07_metric)
        curves[label] = (recall, precision)
    result = {"map": float(np.mean(list(ap.values()))) if ap else 0.0, "ap": ap}
    if return_curves:
        result["curves"] = curves
    return result


def format_ap_table(result, class_names=None, title=None) -> str:
    """A Markdown table of per-class AP (in %) and the mAP.

    ``class_names[label - 1]`` names a label (e.g. ``dataset.classes``).
    """
    rows = []
    for label, value in sorted(result["ap"].items()):
        name = class_names[label - 1] if class_names and 0 < label <= len(class_names) else str(label)
        rows.append((name, f"{100 * value:.1f}"))
    width = max([len("class"), len("mAP")] + [len(n) for n, _ in rows])
    lines = [f"**{title}**", ""] if title else []
    lines += [f"| {'class':<{width}} | AP (%) |", f"|{'-' * (width + 2)}|-------:|"]
    lines += [f"| {name:<{width}} | {value:>6} |" for name, value in rows]
    lines.append(f"| {'mAP':<{width}} | {100 * result['map']:>6.1f} |")
    return "\n".join(lines)
